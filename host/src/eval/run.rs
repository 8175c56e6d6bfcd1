//! Running an evaluator end to end on any [`PairScorer`] (candle or ONNX Runtime): build the
//! pairs the reference scores, score them once (float32 values after the model's own
//! activation, as the reference's `predict` hands them to its evaluators), and turn the scores
//! into metrics. Shared by `crosstrain eval` and the trainer.

use std::collections::HashMap;

use crosstrain_model::{PairScorer, ScoreError};

use super::classification::{binary_metrics, multiclass_metrics};
use super::correlation::correlation_metrics;
use super::reranking::{scored_documents, RerankingError, RerankingEvaluator, RerankingSample};
use super::Metrics;

/// What can go wrong running an evaluator.
#[derive(Debug, thiserror::Error)]
pub enum EvalRunError {
    /// The model failed to score the pairs.
    #[error("scoring: {0}")]
    Score(#[from] ScoreError),
    /// A reranking sample is unusable.
    #[error(transparent)]
    Reranking(#[from] RerankingError),
    /// A gold label does not fit the model's outputs.
    #[error("{origin}: row {row}: label {label} {expected}")]
    Label {
        /// The data's name (its file).
        origin: String,
        /// 1-based row.
        row: usize,
        /// The label found.
        label: f64,
        /// What it should have been.
        expected: String,
    },
}

/// The scores the reference's evaluators see: `scorer`'s logits after its activation.
fn scores(
    scorer: &dyn PairScorer,
    pairs: &[(&str, &str)],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>, EvalRunError> {
    Ok(scorer.activated_scores(pairs, batch_size)?)
}

/// Reranking metrics: every (query, document) the evaluator needs is scored in one call.
pub fn reranking(
    evaluator: &RerankingEvaluator,
    samples: &[RerankingSample],
    scorer: &dyn PairScorer,
    batch_size: usize,
) -> Result<Metrics, EvalRunError> {
    let mut documents_per_sample = Vec::with_capacity(samples.len());
    for (index, sample) in samples.iter().enumerate() {
        let scored = scored_documents(sample, evaluator.always_rerank_positives, index)?;
        documents_per_sample.push(scored.into_iter().map(|(d, _)| d).collect::<Vec<_>>());
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for (sample, documents) in samples.iter().zip(&documents_per_sample) {
        pairs.extend(
            documents
                .iter()
                .map(|d| (sample.query.as_str(), d.as_str())),
        );
    }
    let scores = scores(scorer, &pairs, batch_size)?;
    let mut lookup = HashMap::new();
    let mut cursor = 0;
    for (index, documents) in documents_per_sample.iter().enumerate() {
        for document in documents {
            lookup.insert((index, document.as_str()), scores[cursor][0]);
            cursor += 1;
        }
    }
    Ok(evaluator.evaluate(samples, |index, document| lookup[&(index, document)])?)
}

/// Classification metrics: binary (one output, labels 0/1) or multi-class (class ids).
/// `origin` names the data in errors.
pub fn classification(
    name: &str,
    pairs: &[(&str, &str)],
    labels: &[f64],
    num_labels: usize,
    origin: &str,
    scorer: &dyn PairScorer,
    batch_size: usize,
) -> Result<Metrics, EvalRunError> {
    let label_error = |row: usize, label: f64, expected: String| EvalRunError::Label {
        origin: origin.to_string(),
        row: row + 1,
        label,
        expected,
    };
    let scores = scores(scorer, pairs, batch_size)?;
    if num_labels == 1 {
        let labels = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| match l {
                l if l == 0.0 || l == 1.0 => Ok(l as u8),
                l => Err(label_error(i, l, "is not 0 or 1".into())),
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let flat: Vec<f32> = scores.iter().map(|r| r[0]).collect();
        Ok(binary_metrics(name, &labels, &flat))
    } else {
        let labels = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                if l.fract() == 0.0 && l >= 0.0 && (l as usize) < num_labels {
                    Ok(l as usize)
                } else {
                    Err(label_error(
                        i,
                        l,
                        format!("is not a class id below {num_labels}"),
                    ))
                }
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok(multiclass_metrics(name, &labels, &scores))
    }
}

/// Pearson and Spearman of the first output against gold scores.
pub fn correlation(
    name: &str,
    pairs: &[(&str, &str)],
    gold: &[f64],
    scorer: &dyn PairScorer,
    batch_size: usize,
) -> Result<Metrics, EvalRunError> {
    let scores = scores(scorer, pairs, batch_size)?;
    let predicted: Vec<f32> = scores.iter().map(|r| r[0]).collect();
    Ok(correlation_metrics(name, gold, &predicted))
}

/// NanoBEIR: the reranking evaluator on each dataset's samples (`(split, samples)`, the split
/// `Nano{Name}`), one scoring call per dataset as the reference, then the means.
pub fn nanobeir(
    evaluator: &super::nanobeir::NanoBeirEvaluator,
    datasets: &[(String, Vec<RerankingSample>)],
    scorer: &dyn PairScorer,
    batch_size: usize,
) -> Result<Metrics, EvalRunError> {
    let mut per_dataset = Vec::with_capacity(datasets.len());
    for (split, samples) in datasets {
        let dataset_evaluator = RerankingEvaluator {
            at_k: evaluator.at_k,
            always_rerank_positives: evaluator.always_rerank_positives,
            name: evaluator.dataset_name(split),
        };
        per_dataset.push(reranking(&dataset_evaluator, samples, scorer, batch_size)?);
    }
    Ok(evaluator.aggregate(&per_dataset))
}
