//! `crosstrain eval`: the reference's evaluators on a model's predictions.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use crosstrain::data::eval_sets::read_reranking_samples;
use crosstrain::data::pairs::read_labeled_pairs;
use crosstrain::eval::nanobeir::NanoBeirEvaluator;
use crosstrain::eval::reranking::RerankingEvaluator;
use crosstrain::eval::{run, Metrics};

use super::predict::ModelArgs;

/// Which evaluator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvaluatorKind {
    /// MAP, MRR@k, NDCG@k over JSONL samples.
    Reranking,
    /// Accuracy/F1/precision/recall/AP (one output) or macro/micro/weighted F1 (several).
    Classification,
    /// Pearson and Spearman against gold scores.
    Correlation,
    /// The reranking metrics on NanoBEIR's BM25 top `--rerank-k` per dataset, and their means.
    Nanobeir,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The evaluator.
    #[arg(long, value_enum)]
    evaluator: EvaluatorKind,
    /// Reranking: JSONL {query, positive, negative|documents} or {query, documents, labels}.
    /// Classification and correlation: any file `train` reads (.jsonl, .csv, .tsv, .parquet),
    /// the first two text columns under any names and a label/score column.
    #[arg(long, required_unless_present = "dataset_id")]
    data: Option<PathBuf>,
    /// NanoBEIR: a hub dataset id or a local directory in the hub's layout
    /// (`{corpus,queries,qrels,bm25}/Nano{Name}-*.parquet`).
    #[arg(long, conflicts_with = "data")]
    dataset_id: Option<String>,
    /// NanoBEIR: the datasets (`msmarco,nq,...`); default: all but arguana and touche2020.
    #[arg(long, value_delimiter = ',')]
    dataset_names: Vec<String>,
    /// NanoBEIR: BM25 documents reranked per query.
    #[arg(long, default_value_t = 100)]
    rerank_k: usize,
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

pub fn run(args: EvalArgs, out: &mut String) -> anyhow::Result<()> {
    let scorer = args.model.scorer()?;
    let batch_size = args.model.batch_size;
    let num_labels = scorer.num_labels();
    if (args.evaluator == EvaluatorKind::Nanobeir) != args.dataset_id.is_some() {
        anyhow::bail!(
            "--evaluator nanobeir reads --dataset-id (a hub id or a local directory); the other \
             evaluators read --data"
        );
    }
    if args.rerank_k == 0 || args.at_k == 0 {
        anyhow::bail!("--rerank-k and --at-k must be at least 1");
    }
    let data = args.data.clone().unwrap_or_default();
    let origin = data.display().to_string();
    let metrics: Metrics = match args.evaluator {
        EvaluatorKind::Nanobeir => {
            let names = if args.dataset_names.is_empty() {
                crosstrain::data::nanobeir::default_dataset_names()
            } else {
                args.dataset_names.clone()
            };
            let evaluator = NanoBeirEvaluator {
                dataset_names: names,
                rerank_k: args.rerank_k,
                at_k: args.at_k,
                always_rerank_positives: !args.no_rerank_positives,
            };
            let dataset_id = args.dataset_id.as_deref().unwrap_or_default();
            let datasets = crosstrain::data::nanobeir::load_nanobeir(
                dataset_id,
                &evaluator.dataset_names,
                evaluator.rerank_k,
            )?;
            run::nanobeir(&evaluator, &datasets, scorer.as_ref(), batch_size)?
        }
        EvaluatorKind::Reranking => {
            let samples = read_reranking_samples(&data)?;
            let evaluator = RerankingEvaluator {
                at_k: args.at_k,
                always_rerank_positives: !args.no_rerank_positives,
                name: args.name.clone(),
            };
            run::reranking(&evaluator, &samples, scorer.as_ref(), batch_size)?
        }
        EvaluatorKind::Classification | EvaluatorKind::Correlation => {
            let rows = read_labeled_pairs(&data)?;
            let pairs: Vec<(&str, &str)> = rows
                .iter()
                .map(|(p, _)| (p.query.as_str(), p.document.as_str()))
                .collect();
            let gold: Vec<f64> = rows.iter().map(|(_, l)| *l).collect();
            if args.evaluator == EvaluatorKind::Classification {
                run::classification(
                    &args.name,
                    &pairs,
                    &gold,
                    num_labels,
                    &origin,
                    scorer.as_ref(),
                    batch_size,
                )
            } else {
                run::correlation(&args.name, &pairs, &gold, scorer.as_ref(), batch_size)
            }?
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
            writeln!(out, "{key:<36} {value:.6}{marker}")?;
        }
    }
    Ok(())
}
