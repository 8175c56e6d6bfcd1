//! ADRMSELoss: squared error between a differentiable approximate rank and the target rank,
//! discounted like DCG (sentence-transformers `cross_encoder/losses/adr_mse.py`, Rank-DistiLLM).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::lambda_loss::default_identity;
use crosstrain_plugin_api::helpers::listwise::{listwise_loss, QueryTerm};
use crosstrain_plugin_api::helpers::{listwise_plan, Activation, PairwiseLogistic};

/// Config of [`ADRMSELoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdrMseConfig {
    /// Steepness of the sigmoid in the approximate rank.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Applied to the logits first (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching.
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
}

fn default_alpha() -> f64 {
    1.0
}

impl Default for AdrMseConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            activation_fn: default_identity(),
            mini_batch_size: None,
        }
    }
}

/// `L = Σ_queries Σ_r (t_r − â_r)² / log2(1 + t_r)  /  Σ_i n_i`, with the approximate rank
/// `â_r = 1 + Σ_{j≠r} σ(alpha·(a_j − a_r))` and the target rank `t_r` (tied labels share the
/// mean of their positions).
#[derive(Debug, Clone)]
#[allow(clippy::upper_case_acronyms)]
pub struct ADRMSELoss {
    alpha: f64,
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{schlatt2025rankdistillm,
    title={Rank-DistiLLM: Closing the Effectiveness Gap Between Cross-Encoders and LLMs for Passage Re-ranking},
    author={Schlatt, Ferdinand and Fröbe, Maik and Scells, Harrisen and Zhuang, Shengyao and Koopman, Bevan and Zuccon, Guido and Stein, Benno and Potthast, Martin and Hagen, Matthias},
    booktitle={Advances in Information Retrieval (ECIR 2025)},
    year={2025},
    doi={10.1007/978-3-031-88714-7_31},
}"#;

impl ADRMSELoss {
    fn query_term(&self, scores: &[f64], labels: &[f64]) -> QueryTerm {
        let n = scores.len();
        let alpha = self.alpha;
        let target: Vec<f64> = labels
            .iter()
            .map(|&y| {
                let above = labels.iter().filter(|&&other| other > y).count() as f64;
                let tied = labels.iter().filter(|&&other| other == y).count() as f64;
                above + (tied + 1.0) / 2.0
            })
            .collect();
        let weight: Vec<f64> = target.iter().map(|t| 1.0 / (1.0 + t).log2()).collect();
        // sigmoids[k·n + j] = σ(alpha·(a_j − a_k)); σ(−x) = 1 − σ(x) halves the work.
        let logistic = PairwiseLogistic::new(scores, alpha);
        let mut sigmoids = vec![0.0; n * n];
        for k in 0..n {
            for j in k + 1..n {
                let s = logistic.sigmoid(j, k);
                sigmoids[k * n + j] = s;
                sigmoids[j * n + k] = 1.0 - s;
            }
        }
        let error: Vec<f64> = (0..n)
            .map(|r| {
                let approx_rank = 1.0
                    + (0..n)
                        .filter(|&j| j != r)
                        .map(|j| sigmoids[r * n + j])
                        .sum::<f64>();
                approx_rank - target[r]
            })
            .collect();
        let numerator = (0..n).map(|r| weight[r] * error[r] * error[r]).sum();
        let weighted_error: Vec<f64> = (0..n).map(|r| weight[r] * error[r]).collect();
        let grad = (0..n)
            .map(|k| {
                2.0 * alpha
                    * (0..n)
                        .filter(|&j| j != k)
                        .map(|j| {
                            let s = sigmoids[k * n + j];
                            s * (1.0 - s) * (weighted_error[j] - weighted_error[k])
                        })
                        .sum::<f64>()
            })
            .collect();
        QueryTerm {
            numerator,
            denominator: n as f64,
            grad,
        }
    }
}

impl LossPlugin for ADRMSELoss {
    type Config = AdrMseConfig;
    const NAME: &'static str = "ADRMSELoss";
    const SUMMARY: &'static str =
        "Approximate-rank MSE against the labels' ranks, DCG-discounted (listwise distillation).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        if !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(LossError::new(format!(
                "ADRMSELoss: alpha must be > 0, got {}",
                config.alpha
            )));
        }
        Ok(Self {
            alpha: config.alpha,
            activation: config.activation_fn.unwrap_or_default(),
            mini_batch_size: config.mini_batch_size,
        })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "alpha": self.alpha,
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
            |scores, labels| self.query_term(scores, labels),
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
    fn one_document_lists_add_zero_but_count() {
        let loss = build_loss::<ADRMSELoss>("{}").unwrap();
        let plan = loss
            .plan(&BatchShape::query_documents(vec![1, 2]), 0)
            .unwrap();
        let labels = Labels::per_row_lists(&[vec![1.0f32], vec![1.0, 0.0]]);
        let output = loss.compute(&plan, &[5.0, 0.0, 0.0], 1, &labels).unwrap();
        // Second query: equal scores, â = 1.5 for both, targets 1 and 2.
        let expected = (0.25 / 2f64.log2() + 0.25 / 3f64.log2()) / 3.0;
        assert!((output.loss - expected).abs() < 1e-12);
        assert_eq!(output.grad[0], 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(11);
        let labels = Labels::per_row_lists(&[
            vec![1.0f32, 0.0, 2.0, 2.0, -1.0],
            vec![0.3],
            vec![0.5, 0.5, 0.5],
        ]);
        for config in [r#"{}"#, r#"{"alpha": 2.5, "activation_fn": "tanh"}"#] {
            let loss = build_loss::<ADRMSELoss>(config).unwrap();
            let plan = loss
                .plan(&BatchShape::query_documents(vec![5, 1, 3]), 0)
                .unwrap();
            assert_gradient_matches(&loss, &plan, &rng.logits(plan.len()), 1, &labels);
        }
    }

    #[test]
    fn all_single_document_lists_give_zero_with_a_zero_gradient() {
        let loss = build_loss::<ADRMSELoss>(r#"{"activation_fn": null}"#).unwrap();
        assert_eq!(
            loss.effective_config()["activation_fn"],
            "torch.nn.modules.linear.Identity"
        );
        let plan = loss
            .plan(&BatchShape::query_documents(vec![1, 1]), 0)
            .unwrap();
        let output = loss
            .compute(
                &plan,
                &[3.0, -1.0],
                1,
                &Labels::per_row_lists(&[[1.0f32], [0.0]]),
            )
            .unwrap();
        assert_eq!(output.loss, 0.0);
        assert_eq!(output.grad.to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn tied_labels_share_the_mean_of_their_positions() {
        let loss = build_loss::<ADRMSELoss>("{}").unwrap();
        let term = loss.query_term(&[0.0, 0.0, 0.0], &[1.0, 1.0, 0.0]);
        // Targets 1.5, 1.5, 3; equal scores give approximate ranks of 2 each.
        let expected = 2.0 * 0.25 / 2.5f64.log2() + 1.0 / 4f64.log2();
        assert!((term.numerator - expected).abs() < 1e-12);
    }
}
