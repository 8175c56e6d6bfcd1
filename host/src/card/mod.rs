//! The model card (`README.md`) of a trained model directory, generated from what the run
//! wrote: `training_args.json` (the recipe), `trainer_state.json` (logs, metrics, ONNX
//! parity) and `training_summary.json` (loss, data statistics, evaluators, versions). Because
//! everything comes from those files, `crosstrain card` can rebuild the card after a user
//! edits its metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use serde_json::Map;

use crate::trainer_state::TrainerState;

mod body;
mod front_matter;
mod svg;

pub use body::render;
pub use svg::loss_curve_svg;

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
    /// The dataset's name, when the run had several by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The loss this dataset trained, when the run had several named datasets (otherwise
    /// the summary's `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossSummary>,
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

impl TrainingSummary {
    /// Every distinct loss the run trained (by qualified name): the summary's, then those of
    /// the named datasets.
    pub fn losses(&self) -> Vec<&LossSummary> {
        let mut losses = vec![&self.loss];
        for loss in self.datasets.iter().filter_map(|d| d.loss.as_ref()) {
            if !losses
                .iter()
                .any(|l| l.qualified_name == loss.qualified_name)
            {
                losses.push(loss);
            }
        }
        losses
    }
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
    /// The int8 export (`export-onnx --quantize int8 --check`) and how it agreed with the
    /// float32 model, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_onnx: Option<QuantizedOnnxSummary>,
    /// A LoRA run's adapter: the model directory is a PEFT adapter on `base_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSummary>,
}

/// What a LoRA-trained model's card says of its adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSummary {
    /// The adapter's `LoraConfig` (the recipe's `[peft]` table, resolved).
    pub config: crosstrain_model::lora::LoraConfig,
    /// Numbers that trained (adapter matrices and `modules_to_save`).
    pub trainable_parameters: usize,
    /// Numbers of base and adapter together.
    pub total_parameters: usize,
}

/// A quantized ONNX export and its measured agreement with the float32 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedOnnxSummary {
    /// The file, relative to the model directory.
    pub file: String,
    /// Pairs compared.
    pub pairs: usize,
    /// Largest |logit difference| against candle's float32 logits.
    pub max_abs_logit_diff: f64,
    /// Spearman rank correlation with candle's float32 logits.
    pub spearman: f64,
}

/// Records a quantized export in a trained model directory's `training_summary.json` and
/// rebuilds its card; `Ok(false)` when `dir` was not written by `crosstrain train` (nothing
/// to update).
pub fn record_quantized_export(
    dir: &Path,
    export: QuantizedOnnxSummary,
    defaults: &Map<String, Value>,
) -> Result<bool, CardError> {
    let summary_path = dir.join("training_summary.json");
    if !summary_path.is_file() || !dir.join("trainer_state.json").is_file() {
        return Ok(false);
    }
    let mut summary: TrainingSummary = read_json(&summary_path)?;
    summary.quantized_onnx = Some(export);
    write_summary(&summary_path, &summary)?;
    rebuild(dir, &CardMetadata::default(), defaults)?;
    Ok(true)
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
/// `defaults` are the recipe's default values: the card lists the hyperparameters that
/// differ from them.
pub fn rebuild(
    dir: &Path,
    metadata: &CardMetadata,
    defaults: &Map<String, Value>,
) -> Result<(), CardError> {
    let args: Value = read_json(&dir.join("training_args.json"))?;
    let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
    let summary_path = dir.join("training_summary.json");
    let mut summary: TrainingSummary = read_json(&summary_path)?;
    summary.metadata = summary.metadata.merged(metadata);
    write_files(dir, &args, &state, &summary, defaults)?;
    write_summary(&summary_path, &summary)
}

fn write_summary(path: &Path, summary: &TrainingSummary) -> Result<(), CardError> {
    let error = |message: String| CardError {
        path: path.to_path_buf(),
        message,
    };
    let text = serde_json::to_string_pretty(summary).map_err(|e| error(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| error(e.to_string()))
}

/// Writes `README.md` and `loss_curve.svg` into `dir`; `defaults` as in [`rebuild`].
pub fn write_files(
    dir: &Path,
    args: &Value,
    state: &TrainerState,
    summary: &TrainingSummary,
    defaults: &Map<String, Value>,
) -> Result<(), CardError> {
    let svg = loss_curve_svg(state);
    if let Some(svg) = &svg {
        let path = dir.join("loss_curve.svg");
        std::fs::write(&path, svg).map_err(|e| CardError {
            path,
            message: e.to_string(),
        })?;
    }
    let card = render(args, state, summary, svg.is_some(), defaults);
    let path = dir.join("README.md");
    std::fs::write(&path, card).map_err(|e| CardError {
        path,
        message: e.to_string(),
    })
}
