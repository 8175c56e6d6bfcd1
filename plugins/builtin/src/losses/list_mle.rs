//! ListMLELoss: PListMLELoss without position weights (sentence-transformers
//! `cross_encoder/losses/list_mle.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::lambda_loss::default_identity;
use crate::losses::plist_mle::{default_true, ListMleParameters};
use crosstrain_plugin_api::helpers::{listwise_plan, Activation};

/// Config of [`ListMLELoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListMleConfig {
    /// Applied to the logits first (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching.
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
    /// True (default): the input order is the target ranking; label values are not used.
    #[serde(default = "default_true")]
    pub respect_input_order: bool,
}

impl Default for ListMleConfig {
    fn default() -> Self {
        Self {
            activation_fn: default_identity(),
            mini_batch_size: None,
            respect_input_order: true,
        }
    }
}

/// `ℓ_i = −Σ_r (u_r − logsumexp_{t≥r} u_t)` over the target order, averaged over queries.
#[derive(Debug, Clone)]
pub struct ListMLELoss {
    parameters: ListMleParameters,
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{10.1145/1390156.1390306,
    title = {Listwise Approach to Learning to Rank - Theory and Algorithm},
    author = {Xia, Fen and Liu, Tie-Yan and Wang, Jue and Zhang, Wensheng and Li, Hang},
    booktitle = {Proceedings of the 25th International Conference on Machine Learning},
    pages = {1192-1199},
    year = {2008},
    url = {https://doi.org/10.1145/1390156.1390306},
}"#;

impl LossPlugin for ListMLELoss {
    type Config = ListMleConfig;
    const NAME: &'static str = "ListMLELoss";
    const SUMMARY: &'static str = "Plackett-Luce likelihood of the target ranking (listwise).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        Ok(Self {
            parameters: ListMleParameters {
                lambda_weight: None,
                respect_input_order: config.respect_input_order,
            },
            activation: config.activation_fn.unwrap_or_default(),
            mini_batch_size: config.mini_batch_size,
        })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "activation_fn": self.activation.reference_name(),
            "mini_batch_size": self.mini_batch_size,
            "respect_input_order": self.parameters.respect_input_order,
        })
    }

    fn plan(&self, shape: &BatchShape, _seed: u64) -> LossResult<PairPlan> {
        listwise_plan(Self::NAME, shape, self.mini_batch_size)
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput> {
        self.parameters.compute(
            Self::NAME,
            plan,
            logits,
            num_labels,
            labels,
            self.activation,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    #[test]
    fn two_documents_in_input_order() {
        let loss = build_loss::<ListMLELoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![2]), 0).unwrap();
        // Labels are ignored by default: −(u_1 − log(e^u_1 + e^u_2)) − 0.
        let output = loss
            .compute(
                &plan,
                &[1.0, 0.0],
                1,
                &Labels::per_row_lists(&[[0.0f32, 5.0]]),
            )
            .unwrap();
        assert!((output.loss - (1.0 + (-1f64).exp()).ln()).abs() < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(10);
        let labels = Labels::per_row_lists(&[
            vec![1.0f32, 0.0, 2.0],
            vec![0.0, 1.0],
            vec![3.0, 1.0, 2.0, 0.0],
        ]);
        for config in [
            r#"{}"#,
            r#"{"respect_input_order": false, "activation_fn": "sigmoid"}"#,
        ] {
            let loss = build_loss::<ListMLELoss>(config).unwrap();
            let plan = loss
                .plan(&BatchShape::query_documents(vec![3, 2, 4]), 0)
                .unwrap();
            assert_gradient_matches(&loss, &plan, &rng.logits(plan.len()), 1, &labels);
        }
    }
}
