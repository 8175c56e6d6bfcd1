//! CrossEncoderRerankingEvaluator as sentence-transformers 6.3 computes it: MAP, MRR@k and
//! NDCG@k per query, averaged over every query; and the `base_*` metrics of a retriever's
//! given order. Since 6.3 a query's positives the list lacks still count: in NDCG's ideal
//! (over min(positives, k)) and as AP's factor retrieved/positives; the base metrics are those
//! of the retriever's list alone.

use super::{average_precision, descending_tie_groups, Metrics};

pub use crate::data::eval_sets::RerankingSample;

/// A query the reference cannot evaluate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RerankingError {
    /// Neither or both of `negative` and `documents`.
    #[error(
        "sample {index} (query {query:?}) must have exactly one of \"negative\" or \"documents\""
    )]
    Format {
        /// 0-based sample index.
        index: usize,
        /// The query.
        query: String,
    },
}

/// The per-query metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueryMetrics {
    /// Average precision over the list, times retrieved/all positives.
    pub average_precision: f64,
    /// Reciprocal rank of the first relevant document in the top k.
    pub reciprocal_rank: f64,
    /// Tie-averaged DCG@k with linear gains over the ideal DCG of the query's positives.
    pub ndcg: f64,
}

/// MRR@k, NDCG@k and AP of one scored list whose query has `total_positives` relevant
/// documents in all (at least those in the list). A list without a relevant document scores
/// 0 everywhere. Ties in MRR (undefined in the reference, whose numpy sort is unstable) put
/// relevant documents last; NDCG and AP are tie-aware as sklearn.
pub fn query_metrics(
    relevant: &[bool],
    scores: &[f32],
    total_positives: usize,
    at_k: usize,
) -> QueryMetrics {
    let retrieved = relevant.iter().filter(|&&r| r).count();
    if retrieved == 0 {
        return QueryMetrics::default();
    }
    let positives = total_positives.max(retrieved);
    let mut order: Vec<usize> = (0..relevant.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .total_cmp(&scores[a])
            .then(relevant[a].cmp(&relevant[b]))
    });
    let reciprocal_rank = order
        .iter()
        .take(at_k)
        .position(|&i| relevant[i])
        .map_or(0.0, |position| 1.0 / (position as f64 + 1.0));
    let discount = |position: usize| {
        if position < at_k {
            1.0 / (position as f64 + 2.0).log2()
        } else {
            0.0
        }
    };
    let mut dcg = 0.0;
    let mut start = 0;
    for (_, members) in descending_tie_groups(scores) {
        let gain = members.iter().filter(|&&i| relevant[i]).count() as f64 / members.len() as f64;
        let discounts: f64 = (start..start + members.len()).map(discount).sum();
        dcg += gain * discounts;
        start += members.len();
    }
    let ideal: f64 = (0..positives.min(at_k)).map(discount).sum();
    QueryMetrics {
        average_precision: average_precision(relevant, scores) * retrieved as f64
            / positives as f64,
        reciprocal_rank,
        ndcg: dcg / ideal,
    }
}

/// The reranking evaluator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankingEvaluator {
    /// Cut-off of MRR and NDCG.
    pub at_k: usize,
    /// With `documents`: score the positives even when the retriever missed them.
    pub always_rerank_positives: bool,
    /// Key prefix.
    pub name: String,
}

impl Default for RerankingEvaluator {
    fn default() -> Self {
        Self {
            at_k: 10,
            always_rerank_positives: true,
            name: String::new(),
        }
    }
}

/// The documents the evaluator scores for a sample, with their relevance.
pub fn scored_documents(
    sample: &RerankingSample,
    always_rerank_positives: bool,
    index: usize,
) -> Result<Vec<(String, bool)>, RerankingError> {
    match (&sample.negative, sample.documents.as_ref()) {
        (Some(negative), None) => Ok(sample
            .positive
            .iter()
            .map(|p| (p.clone(), true))
            .chain(negative.iter().map(|n| (n.clone(), false)))
            .collect()),
        (None, Some(documents)) if always_rerank_positives => Ok(sample
            .positive
            .iter()
            .map(|p| (p.clone(), true))
            .chain(
                documents
                    .iter()
                    .filter(|d| !sample.positive.contains(d))
                    .map(|d| (d.clone(), false)),
            )
            .collect()),
        (None, Some(documents)) => Ok(documents
            .iter()
            .map(|d| (d.clone(), sample.positive.contains(d)))
            .collect()),
        _ => Err(RerankingError::Format {
            index,
            query: sample.query.clone(),
        }),
    }
}

impl RerankingEvaluator {
    /// Evaluates samples whose documents `score(sample index, document)` scores (float32,
    /// after the model's activation).
    pub fn evaluate(
        &self,
        samples: &[RerankingSample],
        mut score: impl FnMut(usize, &str) -> f32,
    ) -> Result<Metrics, RerankingError> {
        let k = self.at_k;
        let mut sums = [0.0f64; 3];
        let mut base_sums = [0.0f64; 3];
        let mut base_count = 0usize;
        let add = |sums: &mut [f64; 3], metrics: QueryMetrics| {
            sums[0] += metrics.average_precision;
            sums[1] += metrics.reciprocal_rank;
            sums[2] += metrics.ndcg;
        };
        for (index, sample) in samples.iter().enumerate() {
            let positives = sample.positive.len();
            if let Some(documents) = &sample.documents {
                base_count += 1;
                let relevant: Vec<bool> = documents
                    .iter()
                    .map(|d| sample.positive.contains(d))
                    .collect();
                let n = relevant.len();
                let scores: Vec<f32> = (0..n).map(|i| (n - i) as f32).collect();
                add(
                    &mut base_sums,
                    query_metrics(&relevant, &scores, positives, k),
                );
            }
            let scored = scored_documents(sample, self.always_rerank_positives, index)?;
            if scored.iter().any(|(_, relevant)| *relevant) {
                let relevant: Vec<bool> = scored.iter().map(|(_, r)| *r).collect();
                let scores: Vec<f32> = scored.iter().map(|(d, _)| score(index, d)).collect();
                add(&mut sums, query_metrics(&relevant, &scores, positives, k));
            }
        }
        let count = samples.len().max(1) as f64;
        let mut values = vec![
            ("map".to_string(), sums[0] / count),
            (format!("mrr@{k}"), sums[1] / count),
            (format!("ndcg@{k}"), sums[2] / count),
        ];
        if base_count > 0 {
            let base = base_count as f64;
            values.push(("base_map".to_string(), base_sums[0] / base));
            values.push((format!("base_mrr@{k}"), base_sums[1] / base));
            values.push((format!("base_ndcg@{k}"), base_sums[2] / base));
        }
        Ok(Metrics::new(&self.name, values, &format!("ndcg@{k}")))
    }
}
