//! PListMLELoss and PListMLELambdaWeight: the Plackett-Luce likelihood of the target ranking
//! with position weights (sentence-transformers `cross_encoder/losses/plist_mle.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::lambda_loss::default_identity;
use crosstrain_plugin_api::helpers::listwise::{descending_order, listwise_loss, QueryTerm};
use crosstrain_plugin_api::helpers::{listwise_plan, Activation};

/// The reference's fixed normaliser guard.
const EPS: f64 = 1e-10;

/// A position discount for [`PListMLELambdaWeight`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RankDiscount {
    /// `1 / ln(1 + rank)`, the docstring's example `rank_discount_fn`.
    InverseLog1pRank,
}

/// Position weights; `{"name": "PListMLELambdaWeight", "rank_discount_fn": null}` is the
/// default `w_r = 2^(n−r) − 1`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum LambdaWeight {
    /// The reference's `PListMLELambdaWeight(rank_discount_fn)`.
    #[serde(rename = "PListMLELambdaWeight")]
    PListMleLambdaWeight {
        /// Null: `2^(n−r) − 1` (rescaled by 2^-(n−127) for lists longer than 127).
        #[serde(default)]
        rank_discount_fn: Option<RankDiscount>,
    },
}

impl LambdaWeight {
    /// Unnormalised weights for positions 1..n of a list of `n` documents.
    fn weights(self, n: usize) -> Vec<f64> {
        let LambdaWeight::PListMleLambdaWeight { rank_discount_fn } = self;
        (1..=n)
            .map(|rank| match rank_discount_fn {
                Some(RankDiscount::InverseLog1pRank) => 1.0 / (1.0 + rank as f64).ln(),
                None if n > 127 => {
                    let shift = (n - 127) as i32;
                    2f64.powi(n as i32 - rank as i32 - shift) - 2f64.powi(-shift)
                }
                None => 2f64.powi((n - rank) as i32) - 1.0,
            })
            .collect()
    }
}

/// The (P)ListMLE maths shared by [`PListMLELoss`] and ListMLELoss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListMleParameters {
    /// Position weights; None is plain ListMLE.
    pub lambda_weight: Option<LambdaWeight>,
    /// True: the input order is the target ranking and label values are ignored.
    pub respect_input_order: bool,
}

impl ListMleParameters {
    /// One query: `−Σ_r ŵ_r (u_r − logsumexp_{t≥r} u_t)` over the target order.
    pub fn query_term(&self, scores: &[f64], labels: &[f64]) -> QueryTerm {
        let n = scores.len();
        let order: Vec<usize> = if self.respect_input_order {
            (0..n).collect()
        } else {
            descending_order(labels)
        };
        let ordered: Vec<f64> = order.iter().map(|&i| scores[i]).collect();
        // Suffix log-sum-exp: lse[r] = log Σ_{t ≥ r} e^{u_t}.
        let mut suffix_lse = vec![0.0; n];
        let mut running = f64::NEG_INFINITY;
        for r in (0..n).rev() {
            let high = running.max(ordered[r]);
            running = high + ((running - high).exp() + (ordered[r] - high).exp()).ln();
            suffix_lse[r] = running;
        }
        let coefficients: Vec<f64> = match self.lambda_weight {
            None => vec![1.0; n],
            Some(lambda_weight) => {
                let weights = lambda_weight.weights(n);
                let total: f64 = weights.iter().sum::<f64>() + EPS;
                weights.iter().map(|w| w / total).collect()
            }
        };
        let numerator = -(0..n)
            .map(|r| coefficients[r] * (ordered[r] - suffix_lse[r]))
            .sum::<f64>();
        let mut grad = vec![0.0; n];
        for j in 0..n {
            let spread: f64 = (0..=j)
                .map(|r| coefficients[r] * (ordered[j] - suffix_lse[r]).exp())
                .sum();
            grad[order[j]] = spread - coefficients[j];
        }
        QueryTerm {
            numerator,
            denominator: 1.0,
            grad,
        }
    }

    /// The batch loss; a constant 0 without gradient when every query's loss is exactly 0, as
    /// the reference returns.
    pub fn compute(
        &self,
        loss: &str,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
        activation: Activation,
    ) -> LossResult<LossOutput> {
        let (output, all_zero) = listwise_loss(
            loss,
            plan,
            logits,
            num_labels,
            labels,
            activation,
            |scores, labels| self.query_term(scores, labels),
        )?;
        if all_zero {
            return Ok(LossOutput::new(0.0, vec![0.0; logits.len()]));
        }
        Ok(output)
    }
}

/// Config of [`PListMLELoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PListMleConfig {
    /// Position weights; default `{"name": "PListMLELambdaWeight"}` (the reference's real
    /// default, though its docstring says None). Null = plain ListMLE.
    #[serde(default = "default_lambda_weight")]
    pub lambda_weight: Option<LambdaWeight>,
    /// Applied to the logits first (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching.
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
    /// True (default): the documents' input order is the target ranking and label values are
    /// not used. False: sort by label, descending (ties keep input order).
    #[serde(default = "default_true")]
    pub respect_input_order: bool,
}

fn default_lambda_weight() -> Option<LambdaWeight> {
    Some(LambdaWeight::PListMleLambdaWeight {
        rank_discount_fn: None,
    })
}

/// Default `respect_input_order`.
pub fn default_true() -> bool {
    true
}

impl Default for PListMleConfig {
    fn default() -> Self {
        Self {
            lambda_weight: default_lambda_weight(),
            activation_fn: default_identity(),
            mini_batch_size: None,
            respect_input_order: true,
        }
    }
}

/// Position-aware ListMLE.
#[derive(Debug, Clone)]
pub struct PListMLELoss {
    parameters: ListMleParameters,
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{lan2014position,
  title={Position-Aware ListMLE: A Sequential Learning Process for Ranking},
  author={Lan, Yanyan and Zhu, Yadong and Guo, Jiafeng and Niu, Shuzi and Cheng, Xueqi},
  booktitle={UAI},
  volume={14},
  pages={449--458},
  year={2014}
}"#;

impl LossPlugin for PListMLELoss {
    type Config = PListMleConfig;
    const NAME: &'static str = "PListMLELoss";
    const SUMMARY: &'static str =
        "Position-weighted Plackett-Luce likelihood of the target ranking (listwise).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        Ok(Self {
            parameters: ListMleParameters {
                lambda_weight: config.lambda_weight,
                respect_input_order: config.respect_input_order,
            },
            activation: config.activation_fn.unwrap_or_default(),
            mini_batch_size: config.mini_batch_size,
        })
    }

    /// As the reference reports it: a custom `rank_discount_fn` is not shown.
    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "lambda_weight": self.parameters.lambda_weight.map(|_| {
                "sentence_transformers.cross_encoder.losses.plist_mle.PListMLELambdaWeight"
            }),
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
    fn default_weights_and_their_rescaling_for_long_lists() {
        let weight = default_lambda_weight().unwrap();
        assert_eq!(weight.weights(3), vec![3.0, 1.0, 0.0]);
        let long = weight.weights(130);
        let short = weight.weights(127);
        // Rescaled by 2^-3: same normalised weights as the unscaled formula.
        assert!((long[0] - (2f64.powi(126) - 0.125)).abs() / long[0] < 1e-15);
        assert_eq!(*long.last().unwrap(), 0.0);
        assert_eq!(short[0], 2f64.powi(126) - 1.0);
    }

    #[test]
    fn lists_of_one_give_a_constant_zero() {
        let loss = build_loss::<PListMLELoss>("{}").unwrap();
        let plan = loss
            .plan(&BatchShape::query_documents(vec![1, 1]), 0)
            .unwrap();
        let output = loss
            .compute(
                &plan,
                &[0.3, -2.0],
                1,
                &Labels::per_row_lists(&[[1.0f32], [0.0]]),
            )
            .unwrap();
        assert_eq!(output.loss, 0.0);
        assert_eq!(output.grad.to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(9);
        let labels =
            Labels::per_row_lists(&[vec![1.0f32, 0.0, 2.0, 2.0], vec![1.0], vec![0.5, 1.5, 3.0]]);
        for config in [
            r#"{}"#,
            r#"{"lambda_weight": null}"#,
            r#"{"respect_input_order": false}"#,
            r#"{"lambda_weight": {"name": "PListMLELambdaWeight", "rank_discount_fn": "inverse_log1p_rank"}, "activation_fn": "sigmoid"}"#,
        ] {
            let loss = build_loss::<PListMLELoss>(config).unwrap();
            let plan = loss
                .plan(&BatchShape::query_documents(vec![4, 1, 3]), 0)
                .unwrap();
            assert_gradient_matches(&loss, &plan, &rng.logits(plan.len()), 1, &labels);
        }
    }

    #[test]
    fn surprises_of_the_reference_hold() {
        let shape = BatchShape::query_documents(vec![3]);
        let logits = [0.2f32, 1.0, -0.4];
        let compute = |config: &str, labels: [f32; 3]| {
            let loss = build_loss::<PListMLELoss>(config).unwrap();
            let plan = loss.plan(&shape, 0).unwrap();
            loss.compute(&plan, &logits, 1, &Labels::per_row_lists(&[labels]))
                .unwrap()
                .loss
        };
        // §1.13.1: the default turns the position weights on (the docstring says None).
        assert!(
            compute("{}", [1.0, 0.0, 0.0])
                != compute(r#"{"lambda_weight": null}"#, [1.0, 0.0, 0.0])
        );
        // §1.13.6: label values are ignored unless respect_input_order is false.
        assert_eq!(
            compute("{}", [1.0, 0.0, 0.0]),
            compute("{}", [0.0, 5.0, -1.0])
        );
        assert!(
            compute(r#"{"respect_input_order": false}"#, [1.0, 0.0, 0.0])
                != compute(r#"{"respect_input_order": false}"#, [0.0, 5.0, -1.0])
        );
    }
}
