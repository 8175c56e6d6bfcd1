//! BinaryCrossEntropyLoss: `torch.nn.BCEWithLogitsLoss` on one logit per (a, b) pair
//! (sentence-transformers `cross_encoder/losses/binary_cross_entropy.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, labels_per_row, pairwise_plan, sigmoid, softplus, Activation,
    Reduction,
};

/// Config of [`BinaryCrossEntropyLoss`]; keys are the reference constructor's arguments.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BinaryCrossEntropyConfig {
    /// Applied to the logit before the sigmoid inside BCE (reference default: identity).
    #[serde(default)]
    pub activation_fn: Activation,
    /// Weight of the positive term, for unbalanced data (torch's `pos_weight`); null = 1.
    #[serde(default)]
    pub pos_weight: Option<f64>,
    /// `mean` over the batch (default) or `sum` (torch's `reduction` keyword).
    #[serde(default)]
    pub reduction: Reduction,
}

/// `ℓ_i = −[w·y_i·log σ(a_i) + (1−y_i)·log(1−σ(a_i))]` with `a = act(s)`, averaged over rows.
#[derive(Debug, Clone)]
pub struct BinaryCrossEntropyLoss {
    config: BinaryCrossEntropyConfig,
}

impl LossPlugin for BinaryCrossEntropyLoss {
    type Config = BinaryCrossEntropyConfig;
    const NAME: &'static str = "BinaryCrossEntropyLoss";
    const SUMMARY: &'static str =
        "Binary cross-entropy on one logit per (query, document) pair with a 0/1 or soft label.";

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::pair_binary_label()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        if let Some(weight) = config.pos_weight {
            if !(weight.is_finite() && weight > 0.0) {
                return Err(LossError::new(format!(
                    "BinaryCrossEntropyLoss: pos_weight must be a positive number, got {weight}"
                )));
            }
        }
        Ok(Self { config })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "activation_fn": self.config.activation_fn.reference_name(),
            "pos_weight": self.config.pos_weight,
        })
    }

    fn plan(&self, shape: &BatchShape, _seed: u64) -> LossResult<PairPlan> {
        pairwise_plan(Self::NAME, shape)
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput> {
        check_logits(Self::NAME, plan, logits, num_labels, Some(1))?;
        check_finite(Self::NAME, logits)?;
        let targets = labels_per_row(Self::NAME, labels, plan.rows as usize)?;
        let pos_weight = self.config.pos_weight.unwrap_or(1.0);
        let scale = match self.config.reduction {
            Reduction::Mean => 1.0 / plan.len().max(1) as f64,
            Reduction::Sum => 1.0,
        };
        let activation = self.config.activation_fn;
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(plan.len());
        for (pair, &logit) in plan.pairs.iter().zip(logits) {
            let y = targets[pair.text_a.row as usize];
            let s = f64::from(logit);
            let a = activation.apply(s);
            // −log σ(a) = softplus(−a); −log(1 − σ(a)) = softplus(a).
            loss += pos_weight * y * softplus(-a) + (1.0 - y) * softplus(a);
            let d_a = (pos_weight * y + 1.0 - y) * sigmoid(a) - pos_weight * y;
            grad.push(d_a * activation.derivative(s) * scale);
        }
        Ok(LossOutput::new(loss * scale, grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    #[test]
    fn matches_the_closed_form_of_bce_with_logits() {
        // torch.nn.BCEWithLogitsLoss()(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
        // = mean(log 2, 2 + log(1 + e^-2)) = 1.41246...
        let loss = build_loss::<BinaryCrossEntropyLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(2, 2), 0).unwrap();
        let output = loss
            .compute(&plan, &[0.0, 2.0], 1, &Labels::per_row(vec![1.0, 0.0]))
            .unwrap();
        let expected = (2f64.ln() + 2.0 + (-2f64).exp().ln_1p()) / 2.0;
        assert!((output.loss - expected).abs() < 1e-12);
        assert!((output.grad[0] - (-0.25)).abs() < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(1);
        for config in [
            r#"{}"#,
            r#"{"pos_weight": 3.0}"#,
            r#"{"activation_fn": "sigmoid", "reduction": "sum"}"#,
            r#"{"activation_fn": "tanh"}"#,
        ] {
            let loss = build_loss::<BinaryCrossEntropyLoss>(config).unwrap();
            let plan = loss.plan(&BatchShape::texts(6, 2), 0).unwrap();
            let labels = Labels::per_row(vec![1.0, 0.0, 0.3, 1.0, 0.0, 0.75]);
            assert_gradient_matches(&loss, &plan, &rng.logits(6), 1, &labels);
        }
    }

    #[test]
    fn rejects_bad_batches() {
        let loss = build_loss::<BinaryCrossEntropyLoss>("{}").unwrap();
        assert!(loss.plan(&BatchShape::texts(2, 3), 0).is_err());
        let plan = loss.plan(&BatchShape::texts(2, 2), 0).unwrap();
        let error = loss
            .compute(&plan, &[0.0, 1.0], 1, &Labels::per_row(vec![1.0]))
            .unwrap_err();
        assert!(error.to_string().contains("expected 2 labels"), "{error}");
        assert!(loss
            .compute(
                &plan,
                &[0.0, 1.0, 2.0, 3.0],
                2,
                &Labels::per_row(vec![1.0, 0.0])
            )
            .is_err());
        assert!(loss
            .compute(&plan, &[f32::NAN, 1.0], 1, &Labels::per_row(vec![1.0, 0.0]))
            .is_err());
        assert!(build_loss::<BinaryCrossEntropyLoss>(r#"{"pos_weight": -1}"#).is_err());
        assert!(build_loss::<BinaryCrossEntropyLoss>(r#"{"activation": "sigmoid"}"#).is_err());
    }
}
