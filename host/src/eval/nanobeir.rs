//! CrossEncoderNanoBEIREvaluator: the reranking evaluator on each NanoBEIR dataset's BM25 top
//! `rerank_k` (named `Nano{Name}_R{rerank_k}`), and the mean of every metric over the
//! datasets (`NanoBEIR_R{rerank_k}_mean_{metric}`, primary `..._ndcg@{at_k}`).

use std::collections::BTreeMap;

use super::Metrics;

/// The evaluator's settings, with the reference's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NanoBeirEvaluator {
    /// Short dataset names (`msmarco`, `nq`, ...).
    pub dataset_names: Vec<String>,
    /// BM25 documents reranked per query (100).
    pub rerank_k: usize,
    /// Cut-off of MRR and NDCG (10).
    pub at_k: usize,
    /// Score the positives BM25 missed too (true).
    pub always_rerank_positives: bool,
}

impl NanoBeirEvaluator {
    /// The aggregate's key prefix: `NanoBEIR_R{rerank_k}_mean`.
    pub fn name(&self) -> String {
        format!("NanoBEIR_R{}_mean", self.rerank_k)
    }

    /// A dataset's evaluator name: `Nano{Readable}_R{rerank_k}` for its split `Nano{Readable}`.
    pub fn dataset_name(&self, split: &str) -> String {
        format!("{split}_R{}", self.rerank_k)
    }

    /// The primary metric's key.
    pub fn primary_metric(&self) -> String {
        format!("{}_ndcg@{}", self.name(), self.at_k)
    }

    /// Every dataset's metrics (keys `Nano{Name}_R{k}_{metric}`) and their means over the
    /// datasets (`NanoBEIR_R{k}_mean_{metric}`), as the reference's `aggregate_fn=np.mean`.
    pub fn aggregate(&self, per_dataset: &[Metrics]) -> Metrics {
        let mut by_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut values = BTreeMap::new();
        for metrics in per_dataset {
            for (key, value) in &metrics.values {
                // `Nano{Name}_R{k}_{metric}`: the metric is what follows the second `_`.
                let metric = key.splitn(3, '_').nth(2).unwrap_or(key);
                by_metric
                    .entry(metric.to_string())
                    .or_default()
                    .push(*value);
                values.insert(key.clone(), *value);
            }
        }
        let name = self.name();
        for (metric, list) in by_metric {
            let mean = list.iter().sum::<f64>() / list.len() as f64;
            values.insert(format!("{name}_{metric}"), mean);
        }
        Metrics {
            values,
            primary_metric: self.primary_metric(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_are_means_under_the_references_keys() {
        let evaluator = NanoBeirEvaluator {
            dataset_names: vec!["msmarco".into(), "nq".into()],
            rerank_k: 50,
            at_k: 5,
            always_rerank_positives: true,
        };
        let one = Metrics::new(
            "NanoMSMARCO_R50",
            vec![
                ("map".into(), 0.5),
                ("ndcg@5".into(), 0.25),
                ("base_map".into(), 0.1),
            ],
            "ndcg@5",
        );
        let two = Metrics::new(
            "NanoNQ_R50",
            vec![
                ("map".into(), 1.0),
                ("ndcg@5".into(), 0.75),
                ("base_map".into(), 0.3),
            ],
            "ndcg@5",
        );
        let metrics = evaluator.aggregate(&[one, two]);
        assert_eq!(metrics.primary_metric, "NanoBEIR_R50_mean_ndcg@5");
        assert_eq!(metrics.primary(), Some(0.5));
        assert_eq!(metrics.values["NanoBEIR_R50_mean_map"], 0.75);
        assert!((metrics.values["NanoBEIR_R50_mean_base_map"] - 0.2).abs() < 1e-15);
        assert_eq!(metrics.values["NanoNQ_R50_ndcg@5"], 0.75);
        assert_eq!(metrics.values.len(), 9);
    }
}
