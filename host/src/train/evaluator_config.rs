//! The `[[evaluators]]` of a recipe: which evaluator, on which data, and the checks that
//! keep their metric keys meaningful and apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::data::dataset::DatasetSpec;

/// Which evaluator runs during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatorKind {
    /// MAP, MRR@k, NDCG@k over reranking samples (JSONL).
    Reranking,
    /// Accuracy, F1, precision, recall, AP (one output) or F1 averages (several).
    Classification,
    /// Pearson and Spearman against gold scores.
    Correlation,
    /// The reranking metrics on NanoBEIR's BM25 top `rerank_k` per dataset, and their means
    /// (sentence-transformers' `CrossEncoderNanoBEIREvaluator`).
    Nanobeir,
}

/// One evaluator run every `eval_steps` and at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// The evaluator.
    pub kind: EvaluatorKind,
    /// Its data. Reranking: a JSONL file of `{query, positive, negative|documents}` or
    /// `{query, documents, labels}` samples. Classification/correlation: a dataset whose
    /// first two text columns are the pair and whose label column is the gold value.
    /// NanoBEIR: none (`dataset_id` says where its data is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DatasetSpec>,
    /// Metric key prefix, as the reference's `name` (e.g. `sts-dev`). NanoBEIR takes none:
    /// its keys are `Nano{Name}_R{rerank_k}_*` and `NanoBEIR_R{rerank_k}_mean_*`.
    #[serde(default)]
    pub name: String,
    /// Cut-off for MRR and NDCG (reranking).
    #[serde(default = "default_at_k")]
    pub at_k: usize,
    /// Reranking with `documents`: also score positives the retriever missed.
    #[serde(default = "default_true")]
    pub always_rerank_positives: bool,
    /// One of the model's saved prompts to score with, by name (the reference evaluators'
    /// `prompt_name`); default: the model's default prompt, as `predict` applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_name: Option<String>,
    /// Pairs per forward pass; default: the recipe's `per_device_eval_batch_size` (32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// NanoBEIR: the datasets, by short name (`msmarco`, `nq`, ...); default: all 13 but
    /// `arguana` and `touche2020`, as the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_names: Option<Vec<String>>,
    /// NanoBEIR: a hub dataset id (downloaded into the hub cache) or a local directory in
    /// the hub's layout (`{corpus,queries,qrels,bm25}/Nano{Name}-*.parquet`); default
    /// `sentence-transformers/NanoBEIR-en`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// NanoBEIR: BM25 documents reranked per query (100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank_k: Option<usize>,
}

/// The reference's NanoBEIR dataset.
pub const DEFAULT_NANOBEIR_ID: &str = "sentence-transformers/NanoBEIR-en";

impl EvaluatorConfig {
    /// The name its metric keys start with: `name`, or NanoBEIR's `NanoBEIR_R{k}_mean`.
    pub fn key_name(&self) -> String {
        match self.kind {
            EvaluatorKind::Nanobeir => format!("NanoBEIR_R{}_mean", self.rerank_k.unwrap_or(100)),
            _ => self.name.clone(),
        }
    }

    /// NanoBEIR's dataset names in force.
    pub fn nanobeir_datasets(&self) -> Vec<String> {
        self.dataset_names
            .clone()
            .unwrap_or_else(crate::data::nanobeir::default_dataset_names)
    }
}

fn default_at_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

/// Refuses evaluators whose metrics would mean nothing (`at_k = 0`) or share keys (two of one
/// `name`): the field and what is wrong.
pub fn check_evaluators(evaluators: &[EvaluatorConfig]) -> Result<(), (&'static str, String)> {
    for evaluator in evaluators {
        let label = evaluator.key_name();
        let refuse =
            |message: String| Err(("evaluators", format!("evaluator {label:?}: {message}")));
        let nanobeir = evaluator.kind == EvaluatorKind::Nanobeir;
        if nanobeir {
            if evaluator.data.is_some() {
                return refuse("nanobeir reads `dataset_id`, not `data`".into());
            }
            if !evaluator.name.is_empty() {
                return refuse(
                    "nanobeir takes no `name`: its keys are Nano{Name}_R{rerank_k}_* and \
                     NanoBEIR_R{rerank_k}_mean_*"
                        .into(),
                );
            }
            if evaluator.rerank_k == Some(0) {
                return refuse("rerank_k = 0 reranks nothing; set at least 1".into());
            }
            let names = evaluator.nanobeir_datasets();
            if names.is_empty() {
                return refuse(
                    "dataset_names is empty; leave it out for the default datasets".into(),
                );
            }
            for name in &names {
                if let Err(error) = crate::data::nanobeir::split_name(name) {
                    return refuse(format!("dataset_names: {error}"));
                }
            }
        } else {
            if evaluator.data.is_none() {
                return refuse("`data` is missing".into());
            }
            for (key, given) in [
                ("dataset_names", evaluator.dataset_names.is_some()),
                ("dataset_id", evaluator.dataset_id.is_some()),
                ("rerank_k", evaluator.rerank_k.is_some()),
            ] {
                if given {
                    return refuse(format!("`{key}` is a nanobeir setting"));
                }
            }
        }
        if evaluator.batch_size == Some(0) {
            return refuse("batch_size must be at least 1".into());
        }
        if evaluator.at_k == 0 {
            return Err((
                "evaluators",
                format!(
                    "evaluator {:?}: at_k = 0 ranks no document; set at least 1",
                    evaluator.name
                ),
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for evaluator in evaluators {
        if !names.insert(evaluator.key_name()) {
            let which = if evaluator.name.is_empty() {
                "two evaluators have no `name`".to_string()
            } else {
                format!("two evaluators are named {:?}", evaluator.name)
            };
            return Err((
                "evaluators",
                format!(
                    "{which}; their metrics would share keys (eval_<name>_<metric>), so \
                     give each its own `name`"
                ),
            ));
        }
    }
    Ok(())
}

/// Each evaluator's prompt: the model's saved prompt its `prompt_name` names, or `None` (the
/// model's current prompt). A name the model lacks is refused before training.
pub(super) fn evaluator_prompts(
    evaluators: &[EvaluatorConfig],
    model: &crosstrain_model::CrossEncoder,
) -> Result<Vec<Option<String>>, super::config::ConfigError> {
    let prompts = model.prompts();
    evaluators
        .iter()
        .map(|evaluator| {
            let Some(name) = &evaluator.prompt_name else {
                return Ok(None);
            };
            prompts.get(name).cloned().map(Some).ok_or_else(|| {
                let known: Vec<&str> = prompts.keys().map(String::as_str).collect();
                super::config::ConfigError::Invalid {
                    field: "evaluators",
                    message: format!(
                        "evaluator {:?}: prompt_name {name:?} is none of the model's prompts ({})",
                        evaluator.name,
                        if known.is_empty() {
                            "it has none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                }
            })
        })
        .collect()
}
