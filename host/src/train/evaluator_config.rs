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
    pub data: DatasetSpec,
    /// Metric key prefix, as the reference's `name` (e.g. `sts-dev`).
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
        if !names.insert(evaluator.name.as_str()) {
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
