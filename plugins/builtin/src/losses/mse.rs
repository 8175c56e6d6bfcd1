//! MSELoss: mean squared error between `act(logit)` and a float target per pair, for
//! distillation from a teacher's scores (sentence-transformers `cross_encoder/losses/mse.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, labels_per_row, pairwise_plan, Activation, Reduction,
};

/// Config of [`MSELoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MseConfig {
    /// Applied to the logit before the squared error (reference default: identity).
    #[serde(default)]
    pub activation_fn: Activation,
    /// `mean` over the rows (default) or `sum` (torch's `reduction` keyword).
    #[serde(default)]
    pub reduction: Reduction,
}

/// `L = mean_i (act(s_i) − y_i)²`.
#[derive(Debug, Clone)]
pub struct MSELoss {
    config: MseConfig,
}

impl LossPlugin for MSELoss {
    type Config = MseConfig;
    const NAME: &'static str = "MSELoss";
    const SUMMARY: &'static str =
        "Mean squared error between the pair's score and a target score (distillation).";

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::pair_score()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        Ok(Self { config })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({ "activation_fn": self.config.activation_fn.reference_name() })
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
        let scale = match self.config.reduction {
            Reduction::Mean => 1.0 / plan.len().max(1) as f64,
            Reduction::Sum => 1.0,
        };
        let activation = self.config.activation_fn;
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(plan.len());
        for (pair, &logit) in plan.pairs.iter().zip(logits) {
            let s = f64::from(logit);
            let error = activation.apply(s) - targets[pair.text_a.row as usize];
            loss += error * error;
            grad.push(2.0 * error * activation.derivative(s) * scale);
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
    fn squared_error_and_gradient() {
        let loss = build_loss::<MSELoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(2, 2), 0).unwrap();
        let output = loss
            .compute(&plan, &[1.0, -1.0], 1, &Labels::per_row(vec![0.0, 1.0]))
            .unwrap();
        assert!((output.loss - 2.5).abs() < 1e-12);
        assert_eq!(output.grad.to_vec(), vec![1.0, -2.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(3);
        for config in [
            r#"{}"#,
            r#"{"activation_fn": "sigmoid", "reduction": "sum"}"#,
        ] {
            let loss = build_loss::<MSELoss>(config).unwrap();
            let plan = loss.plan(&BatchShape::texts(4, 2), 0).unwrap();
            let labels = Labels::per_row(vec![0.2, 0.9, -1.0, 3.0]);
            assert_gradient_matches(&loss, &plan, &rng.logits(4), 1, &labels);
        }
    }
}
