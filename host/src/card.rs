//! The model card (`README.md`) of a trained model directory, generated from what the run
//! wrote: `training_args.json` (the recipe), `trainer_state.json` (logs, metrics, ONNX
//! parity) and `training_summary.json` (loss, data statistics, evaluators, versions). Because
//! everything comes from those files, `crosstrain card` can rebuild the card after a user
//! edits its metadata.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cite::{CROSSTRAIN_CITATION, SENTENCE_BERT_CITATION};
use crate::train::state::TrainerState;

/// Metadata a user may set or change when rebuilding the card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardMetadata {
    /// Language code(s), e.g. `en`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub language: Vec<String>,
    /// License id, e.g. `apache-2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Training dataset name or hub id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    /// The model's name (the card's title).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
}

impl CardMetadata {
    /// `other`'s values where set, else ours.
    pub fn merged(&self, other: &CardMetadata) -> CardMetadata {
        CardMetadata {
            language: if other.language.is_empty() {
                self.language.clone()
            } else {
                other.language.clone()
            },
            license: other.license.clone().or_else(|| self.license.clone()),
            dataset_name: other
                .dataset_name
                .clone()
                .or_else(|| self.dataset_name.clone()),
            model_name: other.model_name.clone().or_else(|| self.model_name.clone()),
        }
    }
}

/// The loss as the card shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSummary {
    /// Its name.
    pub name: String,
    /// `library/name`.
    pub qualified_name: String,
    /// The plugin library.
    pub library: String,
    /// Its version.
    pub library_version: String,
    /// One line.
    pub summary: String,
    /// The effective config (the reference's `get_config_dict`).
    pub config: Value,
    /// BibTeX.
    pub citation: Option<String>,
    /// The data format the training data matched.
    pub format: String,
}

/// Min/mean/max of a column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// Stats of some values (`None` when empty).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        Some(Stats {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One column of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    /// Its name.
    pub name: String,
    /// `string`, `list of strings`, `float`, `list of floats`.
    pub kind: String,
    /// Tokens per text (first ≤ 100 rows), for text columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Stats>,
    /// Values (first ≤ 100 rows), for the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Stats>,
}

/// One dataset split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    /// `train`, `eval`, or an evaluator's name.
    pub split: String,
    /// Its files.
    pub files: Vec<String>,
    /// Rows.
    pub rows: usize,
    /// Rows skipped as malformed.
    pub skipped_rows: usize,
    /// Columns, label last.
    pub columns: Vec<ColumnSummary>,
    /// The first rows, column → value.
    pub samples: Vec<BTreeMap<String, Value>>,
}

/// An evaluator and its final metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluatorSummary {
    /// `reranking`, `classification`, `correlation`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: Value,
    /// Metric key (without `eval_`) → value.
    pub metrics: BTreeMap<String, f64>,
    /// The primary metric's key.
    pub primary_metric: String,
}

/// `training_summary.json`: what the card needs beyond the recipe and the trainer state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// The start model as given.
    pub base_model: String,
    /// Whether it was trained from scratch.
    pub from_scratch: bool,
    /// Whether `base_model` is a local directory rather than a hub id (the front matter's
    /// `base_model` must be a hub id).
    #[serde(default)]
    pub base_model_is_local: bool,
    /// `BertForSequenceClassification`.
    pub architecture: String,
    /// Layers, hidden size, heads.
    pub architecture_details: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Truncation length.
    pub max_length: usize,
    /// Outputs per pair.
    pub num_labels: usize,
    /// The loss.
    pub loss: LossSummary,
    /// The data.
    pub datasets: Vec<DatasetSummary>,
    /// The evaluators.
    pub evaluators: Vec<EvaluatorSummary>,
    /// Name → version of crosstrain, candle, tokenizers, ort, ONNX Runtime and the plugins.
    pub versions: BTreeMap<String, String>,
    /// First pairs of the evaluation (else training) data with the trained model's scores.
    pub example_scores: Vec<(String, String, f32)>,
    /// The card's metadata.
    #[serde(default)]
    pub metadata: CardMetadata,
}

/// A card that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CardError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CardError> {
    let text = std::fs::read_to_string(path).map_err(|e| CardError {
        path: path.to_path_buf(),
        message: format!("{e} (is this a directory written by `crosstrain train`?)"),
    })?;
    serde_json::from_str(&text).map_err(|e| CardError {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Rebuilds `README.md` and `loss_curve.svg` in a trained model directory from its files,
/// with `metadata` overriding what was stored (and stored for the next rebuild).
pub fn rebuild(dir: &Path, metadata: &CardMetadata) -> Result<(), CardError> {
    let args: Value = read_json(&dir.join("training_args.json"))?;
    let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
    let summary_path = dir.join("training_summary.json");
    let mut summary: TrainingSummary = read_json(&summary_path)?;
    summary.metadata = summary.metadata.merged(metadata);
    write_files(dir, &args, &state, &summary)?;
    let text = serde_json::to_string_pretty(&summary).map_err(|e| CardError {
        path: summary_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&summary_path, text + "\n").map_err(|e| CardError {
        path: summary_path,
        message: e.to_string(),
    })
}

/// Writes `README.md` and `loss_curve.svg` into `dir`.
pub fn write_files(
    dir: &Path,
    args: &Value,
    state: &TrainerState,
    summary: &TrainingSummary,
) -> Result<(), CardError> {
    let svg = loss_curve_svg(state);
    if let Some(svg) = &svg {
        let path = dir.join("loss_curve.svg");
        std::fs::write(&path, svg).map_err(|e| CardError {
            path,
            message: e.to_string(),
        })?;
    }
    let card = render(args, state, summary, svg.is_some());
    let path = dir.join("README.md");
    std::fs::write(&path, card).map_err(|e| CardError {
        path,
        message: e.to_string(),
    })
}

/// A JSON string, which is also a valid YAML scalar.
fn yaml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

fn pretty_metric_name(key: &str) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn task_type(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "reranking" => ("cross-encoder-reranking", "Cross Encoder Reranking"),
        "classification" => (
            "cross-encoder-classification",
            "Cross Encoder Classification",
        ),
        _ => ("cross-encoder-correlation", "Cross Encoder Correlation"),
    }
}

fn front_matter(summary: &TrainingSummary) -> String {
    let meta = &summary.metadata;
    let mut yaml = String::from("---\n");
    if !meta.language.is_empty() {
        yaml.push_str("language:\n");
        for language in &meta.language {
            let _ = writeln!(yaml, "- {}", yaml_string(language));
        }
    }
    if let Some(license) = &meta.license {
        let _ = writeln!(yaml, "license: {}", yaml_string(license));
    }
    yaml.push_str("tags:\n");
    let train_rows = summary
        .datasets
        .iter()
        .find(|d| d.split == "train")
        .map_or(0, |d| d.rows);
    for tag in [
        "cross-encoder".to_string(),
        "reranker".to_string(),
        "crosstrain".to_string(),
        "generated_from_trainer".to_string(),
        format!("dataset_size:{train_rows}"),
        format!("loss:{}", summary.loss.name),
    ] {
        let _ = writeln!(yaml, "- {}", yaml_string(&tag));
    }
    let pipeline = if summary.num_labels == 1 {
        "text-ranking"
    } else {
        "text-classification"
    };
    let _ = writeln!(yaml, "pipeline_tag: {pipeline}");
    yaml.push_str("library_name: sentence-transformers\n");
    if !summary.from_scratch && !summary.base_model_is_local {
        let _ = writeln!(yaml, "base_model: {}", yaml_string(&summary.base_model));
    }
    if let Some(dataset) = &meta.dataset_name {
        let _ = writeln!(yaml, "datasets:\n- {}", yaml_string(dataset));
    }
    let metric_names: Vec<String> = {
        let mut names: Vec<String> = Vec::new();
        for evaluator in &summary.evaluators {
            for key in evaluator.metrics.keys() {
                let bare = bare_metric(key, &evaluator.name);
                if !names.contains(&bare) {
                    names.push(bare);
                }
            }
        }
        names
    };
    if !metric_names.is_empty() {
        yaml.push_str("metrics:\n");
        for name in &metric_names {
            let _ = writeln!(yaml, "- {}", yaml_string(name));
        }
        let title = meta
            .model_name
            .clone()
            .unwrap_or_else(|| default_title(summary));
        let _ = writeln!(
            yaml,
            "model-index:\n- name: {}\n  results:",
            yaml_string(&title)
        );
        for evaluator in &summary.evaluators {
            let (task, task_name) = task_type(&evaluator.kind);
            let dataset = if evaluator.name.is_empty() {
                "eval".to_string()
            } else {
                evaluator.name.clone()
            };
            let _ = writeln!(
                yaml,
                "  - task:\n      type: {task}\n      name: {task_name}\n    dataset:\n      name: {}\n      type: {}\n    metrics:",
                yaml_string(&dataset.replace(['-', '_'], " ")),
                yaml_string(&dataset)
            );
            for (key, value) in &evaluator.metrics {
                let bare = bare_metric(key, &evaluator.name);
                let _ = writeln!(
                    yaml,
                    "    - type: {}\n      value: {}\n      name: {}",
                    yaml_string(&bare),
                    json_number(*value),
                    yaml_string(&pretty_metric_name(&bare))
                );
            }
        }
    }
    yaml.push_str("---\n");
    yaml
}

fn json_number(value: f64) -> String {
    serde_json::Number::from_f64(value).map_or_else(|| "null".to_string(), |n| n.to_string())
}

fn bare_metric(key: &str, name: &str) -> String {
    if name.is_empty() {
        key.to_string()
    } else {
        key.strip_prefix(&format!("{name}_"))
            .unwrap_or(key)
            .to_string()
    }
}

fn default_title(summary: &TrainingSummary) -> String {
    if summary.from_scratch {
        "CrossEncoder trained from scratch".to_string()
    } else {
        let name = if summary.base_model_is_local {
            Path::new(&summary.base_model).file_name().map_or_else(
                || summary.base_model.clone(),
                |n| n.to_string_lossy().into_owned(),
            )
        } else {
            summary.base_model.clone()
        };
        format!("CrossEncoder based on {name}")
    }
}

fn code_json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A Markdown table cell: pipes escaped, newlines flattened, long text shortened.
fn cell(text: &str) -> String {
    let flat: String = text
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .chars()
        .take(160)
        .collect();
    if text.chars().count() > 160 {
        format!("{flat}…")
    } else {
        flat
    }
}

fn sample_value(value: &Value) -> String {
    match value {
        Value::String(text) => cell(text),
        Value::Array(items) => cell(
            &items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        other => cell(&other.to_string()),
    }
}

/// The card's Markdown.
pub fn render(
    args: &Value,
    state: &TrainerState,
    summary: &TrainingSummary,
    has_loss_curve: bool,
) -> String {
    let meta = &summary.metadata;
    let mut md = front_matter(summary);
    let title = meta
        .model_name
        .clone()
        .unwrap_or_else(|| default_title(summary));
    let task = if summary.num_labels == 1 {
        "text reranking and semantic search"
    } else {
        "text pair classification"
    };
    let _ = writeln!(md, "\n# {title}\n");
    let origin = if summary.from_scratch {
        "trained from scratch".to_string()
    } else {
        format!("finetuned from `{}`", summary.base_model)
    };
    let on_data = meta
        .dataset_name
        .as_ref()
        .map(|d| format!(" on the {d} dataset"))
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "This is a Cross Encoder model {origin}{on_data} with \
         [crosstrain](#citation), using {} from {}. It computes scores for pairs of texts, \
         which can be used for {task}. The directory loads in crosstrain, in \
         sentence-transformers (`CrossEncoder`) and in transformers \
         (`AutoModelForSequenceClassification`).\n",
        summary.loss.name, summary.loss.library
    );

    md.push_str("## Model Details\n\n### Model Description\n");
    let _ = writeln!(md, "- **Model Type:** Cross Encoder");
    if summary.from_scratch {
        md.push_str("- **Base model:** none (trained from scratch)\n");
    } else {
        let _ = writeln!(md, "- **Base model:** `{}`", summary.base_model);
    }
    let _ = writeln!(
        md,
        "- **Architecture:** {} ({})",
        summary.architecture, summary.architecture_details
    );
    let _ = writeln!(
        md,
        "- **Parameters:** {} ({:.1} M)",
        summary.parameters,
        summary.parameters as f64 / 1e6
    );
    let _ = writeln!(
        md,
        "- **Maximum Sequence Length:** {} tokens",
        summary.max_length
    );
    let _ = writeln!(
        md,
        "- **Number of Output Labels:** {} label{}",
        summary.num_labels,
        if summary.num_labels == 1 { "" } else { "s" }
    );
    md.push_str("- **Supported Modality:** Text\n");
    match &meta.dataset_name {
        Some(dataset) => {
            let _ = writeln!(md, "- **Training Dataset:** {dataset}");
        }
        None => md.push_str("<!-- - **Training Dataset:** Unknown -->\n"),
    }
    if meta.language.is_empty() {
        md.push_str("<!-- - **Language:** Unknown -->\n");
    } else {
        let _ = writeln!(md, "- **Language:** {}", meta.language.join(", "));
    }
    match &meta.license {
        Some(license) => {
            let _ = writeln!(md, "- **License:** {license}");
        }
        None => md.push_str("<!-- - **License:** Unknown -->\n"),
    }

    md.push_str("\n## Usage\n\n### crosstrain\n\n```sh\n");
    md.push_str("crosstrain predict --model path/to/this/model --pairs pairs.jsonl   # {\"query\", \"document\"} per line\n");
    md.push_str("crosstrain rank --model path/to/this/model --query \"...\" --documents documents.txt\n```\n\n");
    md.push_str("### Sentence Transformers\n\n```sh\npip install -U sentence-transformers\n```\n\n```python\nfrom sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder(\"path/to/this/model\")\npairs = [\n");
    for (query, document, _) in &summary.example_scores {
        let _ = writeln!(
            md,
            "    ({}, {}),",
            Value::String(query.clone()),
            Value::String(document.clone())
        );
    }
    md.push_str("]\nscores = model.predict(pairs)\nprint(scores.shape)\n");
    let _ = writeln!(md, "# ({},)", summary.example_scores.len());
    if summary.num_labels == 1 {
        if let Some((query, _, _)) = summary.example_scores.first() {
            let documents: Vec<String> = summary
                .example_scores
                .iter()
                .filter(|(q, _, _)| q == query)
                .map(|(_, d, _)| Value::String(d.clone()).to_string())
                .collect();
            let _ = writeln!(
                md,
                "\n# Or rank documents for one query:\nranks = model.rank({}, [{}])",
                Value::String(query.clone()),
                documents.join(", ")
            );
        }
    }
    md.push_str("```\n\n");
    if !summary.example_scores.is_empty() {
        md.push_str("Scores of the trained model for these pairs (after its activation):\n\n| text A | text B | score |\n|:--|:--|--:|\n");
        for (query, document, score) in &summary.example_scores {
            let _ = writeln!(md, "| {} | {} | {score:.4} |", cell(query), cell(document));
        }
        md.push('\n');
    }

    if !summary.evaluators.is_empty() {
        md.push_str("## Evaluation\n\n### Metrics\n");
        for evaluator in &summary.evaluators {
            let (_, task_name) = task_type(&evaluator.kind);
            let dataset = if evaluator.name.is_empty() {
                "eval"
            } else {
                evaluator.name.as_str()
            };
            let _ = writeln!(
                md,
                "\n#### {task_name}\n\n* Dataset: `{dataset}`\n* Evaluated with crosstrain's `{}` evaluator (sentence-transformers' \
                 `CrossEncoder{}Evaluator` metrics) with these parameters:\n\n```json\n{}\n```\n",
                evaluator.kind,
                pretty_metric_name(&evaluator.kind),
                code_json(&evaluator.config)
            );
            md.push_str("| Metric | Value |\n|:--|:--|\n");
            for (key, value) in &evaluator.metrics {
                let bare = bare_metric(key, &evaluator.name);
                if *key == evaluator.primary_metric {
                    let _ = writeln!(md, "| **{bare}** | **{value:.4}** |");
                } else {
                    let _ = writeln!(md, "| {bare} | {value:.4} |");
                }
            }
        }
        md.push('\n');
    }

    md.push_str("## Training Details\n");
    for dataset in &summary.datasets {
        let heading = match dataset.split.as_str() {
            "train" => "Training Dataset".to_string(),
            "eval" => "Evaluation Dataset".to_string(),
            other => format!("Evaluator Dataset `{other}`"),
        };
        let files: Vec<String> = dataset.files.iter().map(|f| format!("`{f}`")).collect();
        let _ = writeln!(
            md,
            "\n### {heading}\n\n* Files: {}\n* Size: {} rows{}\n* Columns: {}\n* Approximate statistics based on the first {} rows:\n",
            files.join(", "),
            dataset.rows,
            if dataset.skipped_rows > 0 {
                format!(" ({} malformed rows skipped)", dataset.skipped_rows)
            } else {
                String::new()
            },
            dataset
                .columns
                .iter()
                .map(|c| format!("<code>{}</code>", c.name))
                .collect::<Vec<_>>()
                .join(", "),
            dataset.rows.min(100)
        );
        let header: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
        let _ = writeln!(md, "|         | {} |", header.join(" | "));
        let _ = writeln!(
            md,
            "|:--------|{}",
            header.iter().map(|_| ":--|").collect::<String>()
        );
        let types: Vec<String> = dataset.columns.iter().map(|c| c.kind.clone()).collect();
        let _ = writeln!(md, "| type    | {} |", types.join(" | "));
        let details: Vec<String> = dataset
            .columns
            .iter()
            .map(|c| match (&c.tokens, &c.values) {
                (Some(t), _) => format!(
                    "<ul><li>min: {} tokens</li><li>mean: {:.2} tokens</li><li>max: {} tokens</li></ul>",
                    t.min, t.mean, t.max
                ),
                (None, Some(v)) => format!(
                    "<ul><li>min: {:.4}</li><li>mean: {:.4}</li><li>max: {:.4}</li></ul>",
                    v.min, v.mean, v.max
                ),
                _ => String::new(),
            })
            .collect();
        let _ = writeln!(md, "| details | {} |", details.join(" | "));
        if !dataset.samples.is_empty() {
            md.push_str("* Samples:\n\n");
            let _ = writeln!(md, "| {} |", header.join(" | "));
            let _ = writeln!(md, "|{}", header.iter().map(|_| ":--|").collect::<String>());
            for sample in &dataset.samples {
                let row: Vec<String> = header
                    .iter()
                    .map(|name| sample.get(name).map(sample_value).unwrap_or_default())
                    .collect();
                let _ = writeln!(md, "| {} |", row.join(" | "));
            }
        }
        if dataset.split == "train" {
            let _ = writeln!(
                md,
                "* Loss: `{}` from `{}` {} (data format `{}`) with these parameters:\n\n```json\n{}\n```",
                summary.loss.name,
                summary.loss.library,
                summary.loss.library_version,
                summary.loss.format,
                code_json(&summary.loss.config)
            );
        }
    }

    md.push_str("\n### Training Hyperparameters\n#### Non-Default Hyperparameters\n\n");
    let (changed, all) = hyperparameters(args);
    for (key, value) in &changed {
        let _ = writeln!(md, "- `{key}`: {value}");
    }
    md.push_str("\n#### All Hyperparameters\n<details><summary>Click to expand</summary>\n\n");
    for (key, value) in &all {
        let _ = writeln!(md, "- `{key}`: {value}");
    }
    md.push_str("\n</details>\n\n### Training Logs\n");
    md.push_str(&training_log_table(state));
    if has_loss_curve {
        md.push_str("\n![Training loss per logging step](loss_curve.svg)\n");
    }
    let _ = writeln!(
        md,
        "\n### Training Time\n- **Training**: {:.1} seconds ({} optimiser steps, {} pairs scored)",
        state.train_seconds, state.global_step, state.pairs_seen
    );
    if let Some(onnx) = &state.onnx {
        md.push_str("\n### ONNX\n");
        match onnx.max_abs_logit_diff {
            Some(diff) => {
                let _ = writeln!(
                    md,
                    "- `{}` (opset {}): largest absolute logit difference between ONNX Runtime and \
                     crosstrain (candle) on {} reference pairs: **{diff:.2e}**",
                    onnx.file, onnx.opset, onnx.pairs
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "- `{}` (opset {}); not checked in ONNX Runtime: {}",
                    onnx.file,
                    onnx.opset,
                    onnx.not_checked.as_deref().unwrap_or("no runtime")
                );
            }
        }
    }
    md.push_str("\n### Framework Versions\n");
    for (name, version) in &summary.versions {
        let _ = writeln!(md, "- {name}: {version}");
    }

    md.push_str("\n## Citation\n\n### BibTeX\n\n#### crosstrain\n```bibtex\n");
    md.push_str(CROSSTRAIN_CITATION);
    md.push_str("\n```\n\n#### Sentence Transformers\n```bibtex\n");
    md.push_str(SENTENCE_BERT_CITATION);
    md.push_str("\n```\n");
    if let Some(citation) = &summary.loss.citation {
        let _ = writeln!(
            md,
            "\n#### {}\n```bibtex\n{}\n```",
            summary.loss.name,
            citation.trim()
        );
    }
    md
}

/// Hyperparameters as `(key, value)` text.
type Settings = Vec<(String, String)>;

/// `(changed, all)` hyperparameters; "changed" compares with the defaults of the recipe (the
/// reference trainer's).
fn hyperparameters(args: &Value) -> (Settings, Settings) {
    let defaults = crate::train::config::default_values();
    let skip = [
        "model",
        "output",
        "train",
        "eval",
        "evaluators",
        "loss",
        "loss_config",
        "crosstrain_version",
    ];
    let mut changed = Vec::new();
    let mut all = Vec::new();
    if let Value::Object(map) = args {
        for (key, value) in map {
            if skip.contains(&key.as_str()) {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => "None".to_string(),
                other => other.to_string(),
            };
            if defaults.get(key) != Some(value) {
                changed.push((key.clone(), text.clone()));
            }
            all.push((key.clone(), text));
        }
    }
    (changed, all)
}

fn training_log_table(state: &TrainerState) -> String {
    let metric_keys: Vec<String> = {
        let mut keys: Vec<String> = Vec::new();
        for entry in &state.log_history {
            for key in entry.metrics.keys() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
        keys
    };
    // One row per step: the training loss and any metrics logged at that step.
    type Row = (f64, Option<f64>, BTreeMap<String, f64>);
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for entry in &state.log_history {
        let row = rows
            .entry(entry.step)
            .or_insert((entry.epoch, None, BTreeMap::new()));
        if entry.loss.is_some() {
            row.1 = entry.loss;
        }
        row.2.extend(entry.metrics.clone());
    }
    let mut md = String::new();
    let mut header = vec![
        "Epoch".to_string(),
        "Step".to_string(),
        "Training Loss".to_string(),
    ];
    header.extend(metric_keys.iter().cloned());
    if rows.len() > 100 {
        md.push_str("<details><summary>Click to expand</summary>\n\n");
    }
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        header.iter().map(|_| ":--:|").collect::<String>()
    );
    for (step, (epoch, loss, metrics)) in &rows {
        let bold = state.best_checkpoint.as_deref() == Some(&format!("checkpoint-{step}"));
        let mut cells = vec![
            format!("{epoch:.4}"),
            step.to_string(),
            loss.map_or("-".to_string(), |l| format!("{l:.4}")),
        ];
        for key in &metric_keys {
            cells.push(
                metrics
                    .get(key)
                    .map_or("-".to_string(), |v| format!("{v:.4}")),
            );
        }
        if bold {
            cells = cells.into_iter().map(|c| format!("**{c}**")).collect();
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    if rows.len() > 100 {
        md.push_str("\n</details>\n");
    }
    if state.best_checkpoint.is_some() {
        md.push_str("\n* The bold row denotes the saved checkpoint.\n");
    }
    md
}

/// The training loss per logged step as a small SVG line chart (no external assets).
pub fn loss_curve_svg(state: &TrainerState) -> Option<String> {
    let points: Vec<(f64, f64)> = state
        .log_history
        .iter()
        .filter_map(|e| e.loss.map(|l| (e.step as f64, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    if points.len() < 2 {
        return None;
    }
    let (width, height, margin) = (640.0, 320.0, 48.0);
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let y_max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let x_span = (x_max - x_min).max(1e-12);
    let y_span = (y_max - y_min).max(1e-12);
    let x = |v: f64| margin + (v - x_min) / x_span * (width - 2.0 * margin);
    let y = |v: f64| height - margin - (v - y_min) / y_span * (height - 2.0 * margin);
    let path: Vec<String> = points
        .iter()
        .map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{margin}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" "),
        b = height - margin,
        r = width - margin,
    );
    let label = |svg: &mut String, x: f64, y: f64, anchor: &str, text: String| {
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"{anchor}\">{text}</text>"
        );
    };
    label(
        &mut svg,
        margin - 6.0,
        margin + 4.0,
        "end",
        format!("{y_max:.3}"),
    );
    label(
        &mut svg,
        margin - 6.0,
        height - margin,
        "end",
        format!("{y_min:.3}"),
    );
    label(
        &mut svg,
        margin,
        height - margin + 16.0,
        "middle",
        format!("{x_min}"),
    );
    label(
        &mut svg,
        width - margin,
        height - margin + 16.0,
        "middle",
        format!("{x_max}"),
    );
    label(
        &mut svg,
        width / 2.0,
        height - 10.0,
        "middle",
        "step".into(),
    );
    label(
        &mut svg,
        width / 2.0,
        20.0,
        "middle",
        "training loss".into(),
    );
    svg.push_str("</svg>\n");
    Some(svg)
}
