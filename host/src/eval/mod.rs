//! Evaluation metrics with sentence-transformers' key names and numbers
//! (`cross_encoder/evaluation/`; the reference's METRICS.md is the specification). Each
//! evaluator works on scores that are already computed, as float32 values after the model's
//! activation, exactly what the reference's `predict` hands its evaluators.

pub mod classification;
pub mod correlation;
pub mod nanobeir;
pub mod reranking;
pub mod run;

use std::collections::BTreeMap;

/// Metric values by key (`map`, `mrr@10`, ..., prefixed `name_` when the evaluator is named).
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// The values.
    pub values: BTreeMap<String, f64>,
    /// The key of the metric that selects the best checkpoint.
    pub primary_metric: String,
}

impl Metrics {
    /// Builds the key set with the evaluator's name prefix.
    pub fn new(name: &str, values: Vec<(String, f64)>, primary: &str) -> Self {
        let key = |metric: &str| {
            if name.is_empty() {
                metric.to_string()
            } else {
                format!("{name}_{metric}")
            }
        };
        Self {
            values: values.into_iter().map(|(k, v)| (key(&k), v)).collect(),
            primary_metric: key(primary),
        }
    }

    /// The primary metric's value.
    pub fn primary(&self) -> Option<f64> {
        self.values.get(&self.primary_metric).copied()
    }
}

/// Groups of equal scores, highest first: `(score, indices)`. Ties form one group, as in
/// sklearn's tie-aware metrics and the reference's threshold searches.
pub(crate) fn descending_tie_groups(scores: &[f32]) -> Vec<(f32, Vec<usize>)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut groups: Vec<(f32, Vec<usize>)> = Vec::new();
    for index in order {
        match groups.last_mut() {
            Some((score, members)) if *score == scores[index] => members.push(index),
            _ => groups.push((scores[index], vec![index])),
        }
    }
    groups
}

/// sklearn's `average_precision_score`: Σ over tie groups (highest first) of
/// (positives in group / all positives) · (positives so far / documents so far); 0 without
/// positives.
pub fn average_precision(relevant: &[bool], scores: &[f32]) -> f64 {
    let positives = relevant.iter().filter(|&&r| r).count();
    if positives == 0 {
        return 0.0;
    }
    let mut seen = 0usize;
    let mut true_positives = 0usize;
    let mut total = 0.0;
    for (_, members) in descending_tie_groups(scores) {
        let group_positives = members.iter().filter(|&&i| relevant[i]).count();
        seen += members.len();
        true_positives += group_positives;
        total += group_positives as f64 / positives as f64 * (true_positives as f64 / seen as f64);
    }
    total
}
