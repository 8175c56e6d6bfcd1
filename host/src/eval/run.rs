//! Running an evaluator end to end on any scorer (candle or ONNX Runtime): build the pairs the
//! reference scores, score them once, and turn the scores into metrics. Shared by
//! `crosstrain eval` and the trainer.

use std::collections::HashMap;

use super::classification::{binary_metrics, multiclass_metrics};
use super::correlation::correlation_metrics;
use super::reranking::{scored_documents, RerankingEvaluator, RerankingSample};
use super::Metrics;

/// Scores pairs: float32 values after the model's own activation, one row per pair, as the
/// reference's `predict` hands them to its evaluators.
pub type ScoreFn<'a> = dyn FnMut(&[(&str, &str)]) -> Result<Vec<Vec<f32>>, String> + 'a;

/// Reranking metrics: every (query, document) the evaluator needs is scored in one call.
pub fn reranking(
    evaluator: &RerankingEvaluator,
    samples: &[RerankingSample],
    score: &mut ScoreFn<'_>,
) -> Result<Metrics, String> {
    let mut documents_per_sample = Vec::with_capacity(samples.len());
    for (index, sample) in samples.iter().enumerate() {
        let scored = scored_documents(sample, evaluator.always_rerank_positives, index)
            .map_err(|e| e.to_string())?;
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
    let scores = score(&pairs)?;
    let mut lookup = HashMap::new();
    let mut cursor = 0;
    for (index, documents) in documents_per_sample.iter().enumerate() {
        for document in documents {
            lookup.insert((index, document.as_str()), scores[cursor][0]);
            cursor += 1;
        }
    }
    evaluator
        .evaluate(samples, |index, document| lookup[&(index, document)])
        .map_err(|e| e.to_string())
}

/// Classification metrics: binary (one output, labels 0/1) or multi-class (class ids).
/// `origin` names the data in errors.
pub fn classification(
    name: &str,
    pairs: &[(&str, &str)],
    labels: &[f64],
    num_labels: usize,
    origin: &str,
    score: &mut ScoreFn<'_>,
) -> Result<Metrics, String> {
    let scores = score(pairs)?;
    if num_labels == 1 {
        let labels = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| match l {
                l if l == 0.0 || l == 1.0 => Ok(l as u8),
                l => Err(format!("{origin}: row {}: label {l} is not 0 or 1", i + 1)),
            })
            .collect::<Result<Vec<u8>, String>>()?;
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
                    Err(format!(
                        "{origin}: row {}: label {l} is not a class id below {num_labels}",
                        i + 1
                    ))
                }
            })
            .collect::<Result<Vec<usize>, String>>()?;
        Ok(multiclass_metrics(name, &labels, &scores))
    }
}

/// Pearson and Spearman of the first output against gold scores.
pub fn correlation(
    name: &str,
    pairs: &[(&str, &str)],
    gold: &[f64],
    score: &mut ScoreFn<'_>,
) -> Result<Metrics, String> {
    let scores = score(pairs)?;
    let predicted: Vec<f32> = scores.iter().map(|r| r[0]).collect();
    Ok(correlation_metrics(name, gold, &predicted))
}
