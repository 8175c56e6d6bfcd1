//! ListNetLoss: cross-entropy between the softmax of the labels and the softmax of the scores
//! (sentence-transformers `cross_encoder/losses/list_net.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::lambda_loss::default_identity;
use crosstrain_plugin_api::helpers::listwise::{listwise_loss, QueryTerm};
use crosstrain_plugin_api::helpers::{listwise_plan, log_sum_exp, softmax, Activation};

/// Config of [`ListNetLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListNetConfig {
    /// Applied to the logits before the softmax (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching.
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
}

impl Default for ListNetConfig {
    fn default() -> Self {
        Self {
            activation_fn: default_identity(),
            mini_batch_size: None,
        }
    }
}

/// `L = (1/B) Σ_i Σ_j −softmax(y_i)_j · log softmax(act(s_i))_j`. Binary labels [1, 0, 0] give
/// targets [e/(e+2), 1/(e+2), 1/(e+2)], as in the reference; a −1 label is a low score.
#[derive(Debug, Clone)]
pub struct ListNetLoss {
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{cao2007learning,
    title={Learning to Rank: From Pairwise Approach to Listwise Approach},
    author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang},
    booktitle={Proceedings of the 24th international conference on Machine learning},
    pages={129--136},
    year={2007}
}"#;

/// One query of ListNet: the cross-entropy and its gradient `softmax(a) − softmax(y)`.
fn query_term(scores: &[f64], labels: &[f64]) -> QueryTerm {
    let targets = softmax(labels);
    let lse = log_sum_exp(scores);
    let numerator = -targets
        .iter()
        .zip(scores)
        .map(|(p, a)| p * (a - lse))
        .sum::<f64>();
    let grad = softmax(scores)
        .iter()
        .zip(&targets)
        .map(|(q, p)| q - p)
        .collect();
    QueryTerm {
        numerator,
        denominator: 1.0,
        grad,
    }
}

impl LossPlugin for ListNetLoss {
    type Config = ListNetConfig;
    const NAME: &'static str = "ListNetLoss";
    const SUMMARY: &'static str =
        "Cross-entropy between the top-one distributions of labels and scores (listwise).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        Ok(Self {
            activation: config.activation_fn.unwrap_or_default(),
            mini_batch_size: config.mini_batch_size,
        })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
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
            query_term,
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
    fn equal_scores_against_one_hot_labels() {
        let loss = build_loss::<ListNetLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![3]), 0).unwrap();
        let output = loss
            .compute(
                &plan,
                &[0.0, 0.0, 0.0],
                1,
                &Labels::per_row_lists(&[[1.0f32, 0.0, 0.0]]),
            )
            .unwrap();
        // Uniform predictions: the cross-entropy is log 3 whatever the targets.
        assert!((output.loss - 3f64.ln()).abs() < 1e-12);
        let e = 1f64.exp();
        assert!((output.grad[0] - (1.0 / 3.0 - e / (e + 2.0))).abs() < 1e-7);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(8);
        let labels =
            Labels::per_row_lists(&[vec![1.0f32, 0.0, 0.0, -1.0], vec![2.0], vec![0.5, 1.5, 3.0]]);
        for config in [
            r#"{}"#,
            r#"{"activation_fn": "sigmoid", "mini_batch_size": 2}"#,
        ] {
            let loss = build_loss::<ListNetLoss>(config).unwrap();
            let plan = loss
                .plan(&BatchShape::query_documents(vec![4, 1, 3]), 0)
                .unwrap();
            assert_gradient_matches(&loss, &plan, &rng.logits(plan.len()), 1, &labels);
        }
    }

    #[test]
    fn a_minus_one_label_is_a_low_score_not_padding() {
        let loss = build_loss::<ListNetLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![2]), 0).unwrap();
        let output = loss
            .compute(
                &plan,
                &[0.0, 0.0],
                1,
                &Labels::per_row_lists(&[[0.0f32, -1.0]]),
            )
            .unwrap();
        let p = softmax(&[0.0, -1.0]);
        assert!((output.grad[1] - (0.5 - p[1])).abs() < 1e-12);
        assert!(output.grad[1] != 0.0);
    }

    #[test]
    fn a_batch_equals_the_mean_of_its_queries_one_by_one() {
        let loss = build_loss::<ListNetLoss>("{}").unwrap();
        let mut rng = TestRng::new(12);
        let queries = 40;
        let lengths: Vec<u32> = (0..queries).map(|i| 2 + (i % 5)).collect();
        let labels: Vec<Vec<f32>> = lengths
            .iter()
            .map(|&n| (0..n).map(|_| rng.range(0.0, 3.0).floor() as f32).collect())
            .collect();
        let plan = loss
            .plan(&BatchShape::query_documents(lengths.clone()), 0)
            .unwrap();
        let logits = rng.logits(plan.len());
        let whole = loss
            .compute(&plan, &logits, 1, &Labels::per_row_lists(&labels))
            .unwrap();
        let mut offset = 0;
        let mut mean = 0.0;
        for (row, &n) in lengths.iter().enumerate() {
            let single = loss.plan(&BatchShape::query_documents(vec![n]), 0).unwrap();
            let part = &logits[offset..offset + n as usize];
            let output = loss
                .compute(
                    &single,
                    part,
                    1,
                    &Labels::per_row_lists(&labels[row..row + 1]),
                )
                .unwrap();
            mean += output.loss / queries as f64;
            for (i, g) in output.grad.iter().enumerate() {
                assert!((whole.grad[offset + i] - g / queries as f64).abs() < 1e-15);
            }
            offset += n as usize;
        }
        assert!((whole.loss - mean).abs() < 1e-12);
    }
}
