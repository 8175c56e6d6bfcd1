//! `crosstrain eval`: the reference's evaluators on a model's predictions.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use crosstrain::data::eval_sets::{read_labeled_pairs, read_reranking_samples};
use crosstrain::eval::classification::{binary_metrics, multiclass_metrics};
use crosstrain::eval::correlation::correlation_metrics;
use crosstrain::eval::reranking::{scored_documents, RerankingEvaluator};
use crosstrain::eval::Metrics;
use crosstrain::model::DefaultActivation;

use super::predict::{activate, ModelArgs, OutputActivation, Scorer};

/// Which evaluator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvaluatorKind {
    /// MAP, MRR@k, NDCG@k over JSONL samples.
    Reranking,
    /// Accuracy/F1/precision/recall/AP (one output) or macro/micro/weighted F1 (several).
    Classification,
    /// Pearson and Spearman against gold scores.
    Correlation,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The evaluator.
    #[arg(long, value_enum)]
    evaluator: EvaluatorKind,
    /// JSONL: reranking {query, positive, negative|documents} or {query, documents, labels};
    /// classification {query, document, label}; correlation {query, document, score}.
    #[arg(long)]
    data: PathBuf,
    /// Cut-off for MRR and NDCG (reranking).
    #[arg(long, default_value_t = 10)]
    at_k: usize,
    /// With `documents`, score only the retrieved list (positives it missed are not reranked).
    #[arg(long)]
    no_rerank_positives: bool,
    /// Prefix for the metric keys.
    #[arg(long, default_value = "")]
    name: String,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// float32 scores after the model's own activation, as the reference's `predict` gives them.
fn activated_scores(
    model: &mut Scorer,
    pairs: &[(&str, &str)],
    batch_size: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let activation = match model.default_activation() {
        DefaultActivation::Sigmoid => OutputActivation::Sigmoid,
        DefaultActivation::Identity => OutputActivation::None,
    };
    let logits = model.predict(pairs, batch_size)?;
    Ok(logits.iter().map(|row| activate(row, activation)).collect())
}

pub fn run(args: EvalArgs, out: &mut String) -> anyhow::Result<()> {
    let mut model = args.model.scorer()?;
    let batch_size = args.model.batch_size;
    let metrics: Metrics = match args.evaluator {
        EvaluatorKind::Reranking => {
            let samples = read_reranking_samples(&args.data)?;
            let evaluator = RerankingEvaluator {
                at_k: args.at_k,
                always_rerank_positives: !args.no_rerank_positives,
                name: args.name.clone(),
            };
            // Score every (query, document) once, in one predict call, as the reference does.
            let mut pairs: Vec<(&str, &str)> = Vec::new();
            let mut documents_per_sample = Vec::with_capacity(samples.len());
            for (index, sample) in samples.iter().enumerate() {
                let scored = scored_documents(sample, evaluator.always_rerank_positives, index)?;
                documents_per_sample.push(scored.into_iter().map(|(d, _)| d).collect::<Vec<_>>());
            }
            for (sample, documents) in samples.iter().zip(&documents_per_sample) {
                pairs.extend(
                    documents
                        .iter()
                        .map(|d| (sample.query.as_str(), d.as_str())),
                );
            }
            let scores = activated_scores(&mut model, &pairs, batch_size)?;
            let mut lookup = std::collections::HashMap::new();
            let mut cursor = 0;
            for (index, documents) in documents_per_sample.iter().enumerate() {
                for document in documents {
                    lookup.insert((index, document.as_str()), scores[cursor][0]);
                    cursor += 1;
                }
            }
            evaluator.evaluate(&samples, |index, document| lookup[&(index, document)])?
        }
        EvaluatorKind::Classification => {
            let rows = read_labeled_pairs(&args.data, &["label", "labels"])?;
            let pairs: Vec<(&str, &str)> = rows
                .iter()
                .map(|(p, _)| (p.query.as_str(), p.document.as_str()))
                .collect();
            let scores = activated_scores(&mut model, &pairs, batch_size)?;
            if model.num_labels() == 1 {
                let labels = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (_, l))| match *l {
                        l if l == 0.0 || l == 1.0 => Ok(l as u8),
                        l => anyhow::bail!(
                            "{}: row {}: label {l} is not 0 or 1",
                            args.data.display(),
                            i + 1
                        ),
                    })
                    .collect::<anyhow::Result<Vec<u8>>>()?;
                let flat: Vec<f32> = scores.iter().map(|r| r[0]).collect();
                binary_metrics(&args.name, &labels, &flat)
            } else {
                let labels = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (_, l))| {
                        if l.fract() == 0.0 && *l >= 0.0 && (*l as usize) < model.num_labels() {
                            Ok(*l as usize)
                        } else {
                            anyhow::bail!(
                                "{}: row {}: label {l} is not a class id below {}",
                                args.data.display(),
                                i + 1,
                                model.num_labels()
                            )
                        }
                    })
                    .collect::<anyhow::Result<Vec<usize>>>()?;
                multiclass_metrics(&args.name, &labels, &scores)
            }
        }
        EvaluatorKind::Correlation => {
            let rows = read_labeled_pairs(&args.data, &["score", "label", "scores", "labels"])?;
            let pairs: Vec<(&str, &str)> = rows
                .iter()
                .map(|(p, _)| (p.query.as_str(), p.document.as_str()))
                .collect();
            let scores = activated_scores(&mut model, &pairs, batch_size)?;
            let gold: Vec<f64> = rows.iter().map(|(_, s)| *s).collect();
            let predicted: Vec<f32> = scores.iter().map(|r| r[0]).collect();
            correlation_metrics(&args.name, &gold, &predicted)
        }
    };
    if args.json {
        let mut object = serde_json::Map::new();
        for (key, value) in &metrics.values {
            object.insert(key.clone(), serde_json::json!(value));
        }
        object.insert(
            "primary_metric".into(),
            metrics.primary_metric.clone().into(),
        );
        writeln!(out, "{}", serde_json::Value::Object(object))?;
    } else {
        for (key, value) in &metrics.values {
            let marker = if *key == metrics.primary_metric {
                "  (primary)"
            } else {
                ""
            };
            writeln!(out, "{key:<28} {value:.6}{marker}")?;
        }
    }
    Ok(())
}
