//! RankNetLoss: LambdaLoss without weighting (sentence-transformers
//! `cross_encoder/losses/rank_net.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::lambda_loss::{
    default_eps, default_identity, default_sigma, LambdaParameters, ReductionLog, WeightingScheme,
};
use crosstrain_plugin_api::helpers::listwise::listwise_loss;
use crosstrain_plugin_api::helpers::{listwise_plan, Activation};

/// Config of [`RankNetLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RankNetConfig {
    /// Only pairs with at least one document in the predicted top k count; null = all.
    #[serde(default)]
    pub k: Option<u32>,
    /// Steepness of the pairwise sigmoid.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// Floor for probabilities.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// `binary` (log2, default) or `natural` (ln).
    #[serde(default)]
    pub reduction_log: ReductionLog,
    /// Applied to the logits before ranking (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching.
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
}

impl Default for RankNetConfig {
    fn default() -> Self {
        Self {
            k: None,
            sigma: default_sigma(),
            eps: default_eps(),
            reduction_log: ReductionLog::Binary,
            activation_fn: default_identity(),
            mini_batch_size: None,
        }
    }
}

/// `L = −(1/|P|) Σ_{(r,t)∈P} log σ(sigma·(s_r − s_t))` over pairs with `y_r > y_t`.
#[derive(Debug, Clone)]
pub struct RankNetLoss {
    parameters: LambdaParameters,
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{burges2005learning,
  title={Learning to Rank using Gradient Descent},
  author={Burges, Chris and Shaked, Tal and Renshaw, Erin and Lazier, Ari and Deeds, Matt and Hamilton, Nicole and Hullender, Greg},
  booktitle={Proceedings of the 22nd international conference on Machine learning},
  pages={89--96},
  year={2005}
}"#;

impl LossPlugin for RankNetLoss {
    type Config = RankNetConfig;
    const NAME: &'static str = "RankNetLoss";
    const SUMMARY: &'static str =
        "Pairwise logistic loss on every pair of documents with different labels (listwise).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        let parameters = LambdaParameters {
            scheme: WeightingScheme::NoWeightingScheme,
            k: config.k,
            sigma: config.sigma,
            eps: config.eps,
            reduction_log: config.reduction_log,
        };
        parameters.validate(Self::NAME)?;
        Ok(Self {
            parameters,
            activation: config.activation_fn.unwrap_or_default(),
            mini_batch_size: config.mini_batch_size,
        })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "k": self.parameters.k,
            "sigma": self.parameters.sigma,
            "eps": self.parameters.eps,
            "reduction_log": self.parameters.reduction_log,
            "activation_fn": self.activation.reference_name(),
            "mini_batch_size": self.mini_batch_size,
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
        let (output, _) = listwise_loss(
            Self::NAME,
            plan,
            logits,
            num_labels,
            labels,
            self.activation,
            |scores, labels| self.parameters.query_term(scores, labels),
        )?;
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    #[test]
    fn two_documents_give_the_logistic_loss() {
        let loss = build_loss::<RankNetLoss>(r#"{"reduction_log": "natural"}"#).unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![2]), 0).unwrap();
        let output = loss
            .compute(
                &plan,
                &[0.5, 1.5],
                1,
                &Labels::per_row_lists(&[[1.0f32, 0.0]]),
            )
            .unwrap();
        // −log σ(0.5 − 1.5)
        assert!((output.loss - (1.0 + 1f64.exp()).ln()).abs() < 1e-12);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(7);
        let labels =
            Labels::per_row_lists(&[vec![1.0f32, 0.0, 2.0, -1.0], vec![0.0], vec![1.0, 1.0, 0.0]]);
        for config in [
            r#"{}"#,
            r#"{"k": 2, "sigma": 1.5}"#,
            r#"{"activation_fn": "tanh"}"#,
        ] {
            let loss = build_loss::<RankNetLoss>(config).unwrap();
            let plan = loss
                .plan(&BatchShape::query_documents(vec![4, 1, 3]), 0)
                .unwrap();
            assert_gradient_matches(&loss, &plan, &rng.separated_logits(plan.len()), 1, &labels);
        }
    }
}
