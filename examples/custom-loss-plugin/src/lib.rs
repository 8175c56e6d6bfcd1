//! An example third-party crosstrain loss plugin: the focal loss for binary relevance
//! (Lin et al., 2017), which sentence-transformers does not have.
#![deny(unsafe_op_in_unsafe_fn)]

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, labels_per_row, log_sigmoid, pairwise_plan, sigmoid,
};
use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Config of [`FocalBinaryLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FocalBinaryConfig {
    /// Focusing parameter γ ≥ 0: how strongly easy pairs are down-weighted (0 = plain BCE).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Weight α in [0, 1] of the positive term (1 − α for the negative term); null = no
    /// class weighting. torchvision's `sigmoid_focal_loss` default is 0.25.
    #[serde(default = "default_alpha")]
    pub alpha: Option<f64>,
}

fn default_gamma() -> f64 {
    2.0
}

fn default_alpha() -> Option<f64> {
    Some(0.25)
}

impl Default for FocalBinaryConfig {
    fn default() -> Self {
        Self {
            gamma: default_gamma(),
            alpha: default_alpha(),
        }
    }
}

/// `ℓ = −[α·y·(1−p)^γ·log p + (1−α)·(1−y)·p^γ·log(1−p)]` with `p = σ(s)`, averaged over pairs.
#[derive(Debug, Clone)]
pub struct FocalBinaryLoss {
    config: FocalBinaryConfig,
}

const CITATION: &str = r#"@inproceedings{lin2017focal,
    title={Focal Loss for Dense Object Detection},
    author={Lin, Tsung-Yi and Goyal, Priya and Girshick, Ross and He, Kaiming and Doll{\'a}r, Piotr},
    booktitle={Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
    pages={2980--2988},
    year={2017}
}"#;

impl FocalBinaryLoss {
    /// The loss of one pair and its derivative with respect to the logit.
    fn pair_loss(&self, logit: f64, label: f64) -> (f64, f64) {
        let gamma = self.config.gamma;
        let (positive_weight, negative_weight) = match self.config.alpha {
            Some(alpha) => (alpha, 1.0 - alpha),
            None => (1.0, 1.0),
        };
        let p = sigmoid(logit);
        let log_p = log_sigmoid(logit);
        let log_not_p = log_sigmoid(-logit);
        let positive = positive_weight * label;
        let negative = negative_weight * (1.0 - label);
        let loss = -positive * (1.0 - p).powf(gamma) * log_p - negative * p.powf(gamma) * log_not_p;
        // d/ds of each term, using dp/ds = p(1 − p).
        let d_positive = -positive * (1.0 - p).powf(gamma) * ((1.0 - p) - gamma * p * log_p);
        let d_negative = -negative * p.powf(gamma) * (gamma * (1.0 - p) * log_not_p - p);
        (loss, d_positive + d_negative)
    }
}

impl LossPlugin for FocalBinaryLoss {
    type Config = FocalBinaryConfig;
    const NAME: &'static str = "FocalBinaryLoss";
    const SUMMARY: &'static str =
        "Binary cross-entropy that down-weights easy pairs by (1 - p_t)^gamma (focal loss).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::pair_binary_label()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        if !(config.gamma.is_finite() && config.gamma >= 0.0) {
            return Err(LossError::new(format!(
                "FocalBinaryLoss: gamma must be ≥ 0, got {}",
                config.gamma
            )));
        }
        if let Some(alpha) = config.alpha {
            if !(0.0..=1.0).contains(&alpha) {
                return Err(LossError::new(format!(
                    "FocalBinaryLoss: alpha must be in [0, 1], got {alpha}"
                )));
            }
        }
        Ok(Self { config })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({ "gamma": self.config.gamma, "alpha": self.config.alpha })
    }

    fn plan(&self, shape: &BatchShape, _seed: u64) -> LossResult<PairPlan> {
        // One (query, document) pair per row, as the built-in pointwise losses score them.
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
        let labels = labels_per_row(Self::NAME, labels, plan.rows as usize)?;
        let count = plan.len().max(1) as f64;
        let mut total = 0.0;
        let mut grad = Vec::with_capacity(plan.len());
        for (pair, &logit) in plan.pairs.iter().zip(logits) {
            let (loss, d_logit) =
                self.pair_loss(f64::from(logit), labels[pair.text_a.row as usize]);
            total += loss;
            grad.push(d_logit / count);
        }
        Ok(LossOutput::new(total / count, grad))
    }
}

crosstrain_plugin_api::export_losses! {
    library: "crosstrain-example-plugin",
    version: env!("CARGO_PKG_VERSION"),
    losses: [FocalBinaryLoss],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    fn batch(loss: &FocalBinaryLoss, rows: u32) -> PairPlan {
        loss.plan(&BatchShape::texts(rows, 2), 0).unwrap()
    }

    #[test]
    fn gamma_zero_without_alpha_is_binary_cross_entropy() {
        let loss = build_loss::<FocalBinaryLoss>(r#"{"gamma": 0, "alpha": null}"#).unwrap();
        let plan = batch(&loss, 2);
        let output = loss
            .compute(&plan, &[0.0, 2.0], 1, &Labels::per_row(vec![1.0, 0.0]))
            .unwrap();
        // BCEWithLogits: mean(log 2, 2 + log(1 + e^-2)).
        let expected = (2f64.ln() + 2.0 + (-2f64).exp().ln_1p()) / 2.0;
        assert!((output.loss - expected).abs() < 1e-12);
    }

    #[test]
    fn easy_pairs_weigh_less_than_hard_ones() {
        let loss = build_loss::<FocalBinaryLoss>("{}").unwrap();
        let (easy, _) = loss.pair_loss(4.0, 1.0);
        let (hard, _) = loss.pair_loss(-4.0, 1.0);
        assert!(hard > 1000.0 * easy, "hard {hard} easy {easy}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for config in [
            r#"{}"#,
            r#"{"gamma": 0.5, "alpha": null}"#,
            r#"{"gamma": 3, "alpha": 0.9}"#,
        ] {
            let loss = build_loss::<FocalBinaryLoss>(config).unwrap();
            for (logit, label) in [(-2.0, 1.0), (0.3, 0.0), (1.7, 0.4), (5.0, 1.0)] {
                let h = 1e-6;
                let numeric = (loss.pair_loss(logit + h, label).0
                    - loss.pair_loss(logit - h, label).0)
                    / (2.0 * h);
                let analytic = loss.pair_loss(logit, label).1;
                assert!(
                    (numeric - analytic).abs() < 1e-7 * (1.0 + analytic.abs()),
                    "{config} at {logit}: {analytic} vs {numeric}"
                );
            }
        }
    }

    #[test]
    fn compute_gradient_matches_finite_differences_of_the_batch_loss() {
        let mut rng = TestRng::new(7);
        for config in [r#"{}"#, r#"{"gamma": 1.5, "alpha": null}"#] {
            let loss = build_loss::<FocalBinaryLoss>(config).unwrap();
            let plan = batch(&loss, 6);
            let logits = rng.logits(6);
            let labels = Labels::per_row(vec![1.0, 0.0, 1.0, 0.0, 0.5, 1.0]);
            assert_gradient_matches(&loss, &plan, &logits, 1, &labels);
        }
    }

    #[test]
    fn malformed_batches_are_errors_naming_the_loss() {
        let loss = build_loss::<FocalBinaryLoss>("{}").unwrap();
        let plan = batch(&loss, 2);
        let labels = Labels::per_row(vec![1.0, 0.0]);
        for error in [
            loss.compute(&plan, &[0.0], 1, &labels).unwrap_err(),
            loss.compute(&plan, &[0.0, f32::NAN], 1, &labels)
                .unwrap_err(),
            loss.compute(&plan, &[0.0, 1.0], 1, &Labels::per_row(vec![1.0]))
                .unwrap_err(),
            loss.plan(&BatchShape::texts(2, 3), 0).unwrap_err(),
        ] {
            assert!(error.to_string().contains("FocalBinaryLoss"), "{error}");
        }
    }

    #[test]
    fn rejects_out_of_range_parameters_and_unknown_fields() {
        assert!(build_loss::<FocalBinaryLoss>(r#"{"gamma": -1}"#).is_err());
        assert!(build_loss::<FocalBinaryLoss>(r#"{"alpha": 1.5}"#).is_err());
        assert!(build_loss::<FocalBinaryLoss>(r#"{"beta": 1}"#).is_err());
    }
}
