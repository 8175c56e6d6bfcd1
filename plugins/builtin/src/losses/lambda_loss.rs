//! LambdaLoss and its weighting schemes (sentence-transformers
//! `cross_encoder/losses/lambda_loss.py`, after allRank): a pairwise logistic loss over the
//! predicted ranking, weighted by how much swapping a pair changes NDCG.

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::listwise::{descending_order, listwise_loss, QueryTerm};
use crosstrain_plugin_api::helpers::{
    listwise_plan, sigmoid, softplus, Activation, PairwiseLogistic,
};

/// How a pair of predicted ranks (r, t) is weighted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum WeightingScheme {
    /// Weight 1 for every pair with y_r > y_t (RankNet).
    NoWeightingScheme,
    /// G_r / D(r) for every pair of documents, including r = t and reversed pairs (allRank).
    #[serde(rename = "NDCGLoss1Scheme")]
    NdcgLoss1Scheme,
    /// δ_|r−t| · |G_r − G_t|.
    #[serde(rename = "NDCGLoss2Scheme")]
    NdcgLoss2Scheme,
    /// |1/D(r) − 1/D(t)| · |G_r − G_t| (LambdaRank).
    LambdaRankScheme,
    /// mu · NDCGLoss2 + LambdaRank; the reference default.
    #[serde(rename = "NDCGLoss2PPScheme")]
    NdcgLoss2PpScheme {
        /// Weight of the NDCGLoss2 term.
        #[serde(default = "default_mu")]
        mu: f64,
    },
}

fn default_mu() -> f64 {
    10.0
}

impl WeightingScheme {
    fn reference_name(self) -> &'static str {
        match self {
            WeightingScheme::NoWeightingScheme => {
                "sentence_transformers.cross_encoder.losses.lambda_loss.NoWeightingScheme"
            }
            WeightingScheme::NdcgLoss1Scheme => {
                "sentence_transformers.cross_encoder.losses.lambda_loss.NDCGLoss1Scheme"
            }
            WeightingScheme::NdcgLoss2Scheme => {
                "sentence_transformers.cross_encoder.losses.lambda_loss.NDCGLoss2Scheme"
            }
            WeightingScheme::LambdaRankScheme => {
                "sentence_transformers.cross_encoder.losses.lambda_loss.LambdaRankScheme"
            }
            WeightingScheme::NdcgLoss2PpScheme { .. } => {
                "sentence_transformers.cross_encoder.losses.lambda_loss.NDCGLoss2PPScheme"
            }
        }
    }
}

/// Which logarithm turns probabilities into the loss.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReductionLog {
    /// ln.
    Natural,
    /// log2 (the reference default).
    #[default]
    Binary,
}

/// The parameters LambdaLoss and RankNetLoss share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambdaParameters {
    /// The pair weighting.
    pub scheme: WeightingScheme,
    /// Only pairs with at least one document in the predicted top k count.
    pub k: Option<u32>,
    /// Steepness of the pairwise sigmoid.
    pub sigma: f64,
    /// Floor for probabilities and the ideal DCG.
    pub eps: f64,
    /// ln or log2.
    pub reduction_log: ReductionLog,
}

impl LambdaParameters {
    /// Checks ranges the schema cannot express.
    pub fn validate(&self, loss: &str) -> LossResult<()> {
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(LossError::new(format!(
                "{loss}: sigma must be > 0, got {}",
                self.sigma
            )));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(LossError::new(format!(
                "{loss}: eps must be > 0, got {}",
                self.eps
            )));
        }
        if self.k == Some(0) {
            return Err(LossError::new(format!(
                "{loss}: k must be at least 1 (or null)"
            )));
        }
        Ok(())
    }

    /// One query: −Σ over kept pairs of `w_rt · log σ(sigma·(s_π(r) − s_π(t)))`, and the number
    /// of kept pairs (the batch-wide normaliser).
    pub fn query_term(&self, scores: &[f64], labels: &[f64]) -> QueryTerm {
        let n = scores.len();
        let order = descending_order(scores);
        let ranked_labels: Vec<f64> = order.iter().map(|&i| labels[i]).collect();
        let ranked_scores: Vec<f64> = order.iter().map(|&i| scores[i]).collect();
        let logistic = PairwiseLogistic::new(&ranked_scores, self.sigma);
        // 1/D at 0-based rank r, with D(rank) = log2(1 + rank).
        let inverse_discount: Vec<f64> = (0..n).map(|r| 1.0 / (2.0 + r as f64).log2()).collect();
        let mut ideal: Vec<f64> = labels.iter().map(|y| y.max(0.0)).collect();
        ideal.sort_unstable_by(|a, b| b.total_cmp(a));
        let cutoff = self.k.map_or(n, |k| (k as usize).min(n));
        let max_dcg = ideal[..cutoff]
            .iter()
            .zip(&inverse_discount)
            .map(|(&y, inverse)| (y.exp2() - 1.0) * inverse)
            .sum::<f64>()
            .max(self.eps);
        let gains: Vec<f64> = ranked_labels
            .iter()
            .map(|&y| (y.max(0.0).exp2() - 1.0) / max_dcg)
            .collect();
        // δ_d = |1/log2(1 + d) − 1/log2(2 + d)| for rank distance d ≥ 1; δ_0 = 0.
        let delta: Vec<f64> = (0..n)
            .map(|d| {
                if d == 0 {
                    0.0
                } else {
                    (inverse_discount[d - 1] - inverse_discount[d]).abs()
                }
            })
            .collect();
        let log_base = match self.reduction_log {
            ReductionLog::Natural => 1.0,
            ReductionLog::Binary => std::f64::consts::LN_2,
        };
        let log_eps = self.eps.ln();
        // Divisions are slow next to the rest of the pair loop: hoist them.
        let gradient_factor = self.sigma / log_base;
        let mut log_likelihood = 0.0;
        let mut kept = 0usize;
        let mut grad = vec![0.0; n];
        // Positions sorted by label, ascending: for the schemes that keep y_r > y_t, the t of
        // a given r are a prefix of this list, so the inner loop has no unpredictable branch.
        let mut by_label: Vec<usize> = (0..n).collect();
        by_label.sort_unstable_by(|&a, &b| ranked_labels[a].total_cmp(&ranked_labels[b]));
        let sorted_labels: Vec<f64> = by_label.iter().map(|&p| ranked_labels[p]).collect();
        for r in 0..n {
            let candidates = match self.scheme {
                WeightingScheme::NdcgLoss1Scheme => &by_label[..],
                _ => {
                    let lower = sorted_labels.partition_point(|&y| ranked_labels[r] - y > 0.0);
                    &by_label[..lower]
                }
            };
            for &t in candidates {
                if let Some(k) = self.k {
                    if r >= k as usize && t >= k as usize {
                        continue;
                    }
                }
                kept += 1;
                let gain_gap = (gains[r] - gains[t]).abs();
                let lambda_rank = (inverse_discount[r] - inverse_discount[t]).abs() * gain_gap;
                let weight = match self.scheme {
                    WeightingScheme::NoWeightingScheme => 1.0,
                    WeightingScheme::NdcgLoss1Scheme => gains[r] * inverse_discount[r],
                    WeightingScheme::NdcgLoss2Scheme => delta[r.abs_diff(t)] * gain_gap,
                    WeightingScheme::LambdaRankScheme => lambda_rank,
                    WeightingScheme::NdcgLoss2PpScheme { mu } => {
                        mu * delta[r.abs_diff(t)] * gain_gap + lambda_rank
                    }
                };
                // allRank computes log((σ(sigma·clamp(diff, ±1e8)).clamp(min=eps) ** w)
                // .clamp(min=eps)); the same in the log domain.
                let diff = ranked_scores[r] - ranked_scores[t];
                let (log_probability, complement) = if diff.abs() <= 1e8 {
                    logistic.log_sigmoid_and_complement(r, t)
                } else {
                    let x = self.sigma * diff.clamp(-1e8, 1e8);
                    (-softplus(-x), sigmoid(-x))
                };
                let weighted = weight * log_probability.max(log_eps);
                log_likelihood += weighted.max(log_eps);
                // Gradients stop where a clamp is active, as in torch.
                if log_probability >= log_eps && weighted >= log_eps && diff.abs() <= 1e8 {
                    let d_diff = -weight * complement * gradient_factor;
                    grad[order[r]] += d_diff;
                    grad[order[t]] -= d_diff;
                }
            }
        }
        QueryTerm {
            numerator: -log_likelihood / log_base,
            denominator: kept as f64,
            grad,
        }
    }
}

/// Config of [`LambdaLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LambdaLossConfig {
    /// The pair weighting, e.g. `{"name": "NDCGLoss2PPScheme", "mu": 10.0}` (the default);
    /// null means NoWeightingScheme.
    #[serde(default = "default_scheme")]
    pub weighting_scheme: Option<WeightingScheme>,
    /// Only pairs with at least one document in the predicted top k count; null = all.
    #[serde(default)]
    pub k: Option<u32>,
    /// Steepness of the pairwise sigmoid.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// Floor for probabilities and for the ideal DCG.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// `binary` (log2, default) or `natural` (ln).
    #[serde(default)]
    pub reduction_log: ReductionLog,
    /// Applied to the logits before ranking (default identity; null = identity).
    #[serde(default = "default_identity")]
    pub activation_fn: Option<Activation>,
    /// A positive value scores the pairs in chunks of that many with gradient caching; null,
    /// 0 or negative scores them at once (same numbers either way).
    #[serde(default)]
    pub mini_batch_size: Option<i64>,
}

fn default_scheme() -> Option<WeightingScheme> {
    Some(WeightingScheme::NdcgLoss2PpScheme { mu: default_mu() })
}

/// Default `sigma`.
pub fn default_sigma() -> f64 {
    1.0
}

/// Default `eps`.
pub fn default_eps() -> f64 {
    1e-10
}

/// Default listwise activation.
pub fn default_identity() -> Option<Activation> {
    Some(Activation::Identity)
}

impl Default for LambdaLossConfig {
    fn default() -> Self {
        Self {
            weighting_scheme: default_scheme(),
            k: None,
            sigma: default_sigma(),
            eps: default_eps(),
            reduction_log: ReductionLog::Binary,
            activation_fn: default_identity(),
            mini_batch_size: None,
        }
    }
}

/// LambdaLoss over `(query, [documents])` with one score per document.
#[derive(Debug, Clone)]
pub struct LambdaLoss {
    parameters: LambdaParameters,
    activation: Activation,
    mini_batch_size: Option<i64>,
}

const CITATION: &str = r#"@inproceedings{wang2018lambdaloss,
  title={The LambdaLoss Framework for Ranking Metric Optimization},
  author={Wang, Xuanhui and Li, Cheng and Golbandi, Nadav and Bendersky, Michael and Najork, Marc},
  booktitle={Proceedings of the 27th ACM international conference on information and knowledge management},
  pages={1313--1322},
  year={2018}
}"#;

impl LossPlugin for LambdaLoss {
    type Config = LambdaLossConfig;
    const NAME: &'static str = "LambdaLoss";
    const SUMMARY: &'static str =
        "Pairwise logistic loss over the predicted ranking, weighted by NDCG changes (listwise).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::query_documents_scores()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        let parameters = LambdaParameters {
            scheme: config
                .weighting_scheme
                .unwrap_or(WeightingScheme::NoWeightingScheme),
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

    /// As the reference reports it: `mu` is not shown.
    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "weighting_scheme": self.parameters.scheme.reference_name(),
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

    fn batch() -> (BatchShape, Labels) {
        // Ragged lists, ties, a -1 label, a query without positive, a 1-document list.
        let labels = vec![
            vec![2.0f32, 0.0, 1.0, 1.0, -1.0],
            vec![0.0, 0.0, 0.0],
            vec![1.0],
            vec![3.0, 0.0, 2.0, 1.0, 0.0, 1.0, 0.5],
        ];
        let lengths = labels.iter().map(|l| l.len() as u32).collect();
        (
            BatchShape::query_documents(lengths),
            Labels::per_row_lists(&labels),
        )
    }

    #[test]
    fn gradients_match_finite_differences_for_every_scheme() {
        let mut rng = TestRng::new(6);
        for config in [
            r#"{}"#,
            r#"{"weighting_scheme": null}"#,
            r#"{"weighting_scheme": {"name": "NDCGLoss1Scheme"}}"#,
            r#"{"weighting_scheme": {"name": "NDCGLoss2Scheme"}, "k": 2}"#,
            r#"{"weighting_scheme": {"name": "LambdaRankScheme"}, "reduction_log": "natural"}"#,
            r#"{"weighting_scheme": {"name": "NDCGLoss2PPScheme", "mu": 3.0}, "sigma": 2.0}"#,
            r#"{"activation_fn": "sigmoid", "k": 3, "mini_batch_size": 4}"#,
        ] {
            let loss = build_loss::<LambdaLoss>(config).unwrap();
            let (shape, labels) = batch();
            let plan = loss.plan(&shape, 0).unwrap();
            assert_gradient_matches(&loss, &plan, &rng.separated_logits(plan.len()), 1, &labels);
        }
    }

    #[test]
    fn all_equal_labels_keep_no_pair_and_give_zero() {
        let loss = build_loss::<LambdaLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![3]), 0).unwrap();
        let output = loss
            .compute(
                &plan,
                &[0.1, 0.5, -0.2],
                1,
                &Labels::per_row_lists(&[[1.0f32, 1.0, 1.0]]),
            )
            .unwrap();
        assert_eq!(output.loss, 0.0);
        assert!(output.grad.iter().all(|&g| g == 0.0));
    }

    #[test]
    fn mismatched_labels_are_errors() {
        let loss = build_loss::<LambdaLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::query_documents(vec![3]), 0).unwrap();
        let error = loss
            .compute(
                &plan,
                &[0.1, 0.5, -0.2],
                1,
                &Labels::per_row_lists(&[[1.0f32, 0.0]]),
            )
            .unwrap_err();
        assert!(error.to_string().contains("document 2"), "{error}");
        assert!(build_loss::<LambdaLoss>(r#"{"weighting_scheme": {"name": "Nope"}}"#).is_err());
        assert!(build_loss::<LambdaLoss>(r#"{"sigma": 0}"#).is_err());
    }

    #[test]
    fn surprises_of_the_reference_hold() {
        let shape = BatchShape::query_documents(vec![2, 3]);
        let labels = Labels::per_row_lists(&[vec![0.0f32, -1.0], vec![2.0, 1.0, 0.0]]);
        let logits = [0.3f32, 0.9, 1.0, 0.0, -1.0];
        let ranknet =
            build_loss::<LambdaLoss>(r#"{"weighting_scheme": null, "reduction_log": "natural"}"#)
                .unwrap();
        let plan = ranknet.plan(&shape, 0).unwrap();
        let output = ranknet.compute(&plan, &logits, 1, &labels).unwrap();
        // §1.13.5: label −1 is a real document: (0, −1) is a kept pair. §1.13.4: the mean is
        // over all kept pairs of the batch (1 + 3), not a mean of per-query means.
        let nll = |d: f64| (1.0 + (-d).exp()).ln();
        let expected = (nll(0.3 - 0.9) + nll(1.0) + nll(2.0) + nll(1.0)) / 4.0;
        assert!(
            (output.loss - expected).abs() < 1e-6,
            "{} vs {expected}",
            output.loss
        );
        // NDCGLoss1 keeps every pair, i = j and reversed ones included: n² per query.
        let parameters = LambdaParameters {
            scheme: WeightingScheme::NdcgLoss1Scheme,
            k: None,
            sigma: 1.0,
            eps: 1e-10,
            reduction_log: ReductionLog::Binary,
        };
        assert_eq!(
            parameters
                .query_term(&[0.1, 0.5, 0.2], &[1.0, 0.0, 0.0])
                .denominator,
            9.0
        );
        // §1.13.8: mu is not reported.
        let loss = build_loss::<LambdaLoss>(
            r#"{"weighting_scheme": {"name": "NDCGLoss2PPScheme", "mu": 3}}"#,
        )
        .unwrap();
        assert!(!loss.effective_config().to_string().contains("mu"));
    }
}
