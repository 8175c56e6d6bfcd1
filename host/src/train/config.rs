//! The training recipe: one config struct with the reference trainer's defaults, read from
//! TOML (every key can also be set on the command line), checked against its own schema and
//! rules before anything runs.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::datasets::Datasets;

/// What can be wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown or mistyped keys.
    #[error("{origin}: {message}")]
    Parse {
        /// The file or flag.
        origin: String,
        /// What is wrong (toml names the key and line).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid training config: {field}: {message}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn default_true() -> bool {
    true
}

pub use super::evaluator_config::{check_evaluators, EvaluatorConfig, EvaluatorKind};
pub use super::prompts::Prompts;
pub use super::recipe_keys::{canonical_key, set_key, set_value, twin_key, KEY_ALIASES};
pub use super::settings::{
    BatchSampler, Epochs, IntervalStrategy, LrScheduler, LrSchedulerKwargs,
    MultiDatasetBatchSampler, SaveStrategy, Steps, TrainSamplingStrategy,
};

/// A training run. Defaults are those of the reference (`CrossEncoderTrainingArguments`,
/// i.e. transformers' `TrainingArguments`) unless noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Start model: a model directory or a Hugging Face model id.
    pub model: String,
    /// Initialise every weight from `seed` instead of reading `model.safetensors` (the model
    /// directory then needs only `config.json` and `tokenizer.json`).
    #[serde(default)]
    pub from_scratch: bool,
    /// The base model of a LoRA adapter directory given as `model`, instead of the base its
    /// `adapter_config.json` names (`base_model_name_or_path`).
    #[serde(default)]
    pub base_model: Option<String>,
    /// Train a LoRA adapter instead of the whole model, with PEFT's `LoraConfig` keys
    /// (`[peft] type = "lora"`, `r`, `lora_alpha`, `lora_dropout`, `target_modules` (names, a
    /// regex or `"all-linear"`), `modules_to_save`, `bias = "none"`, `use_rslora`,
    /// `init_lora_weights`). Only the adapter and `modules_to_save` train; the output is a
    /// PEFT adapter directory. A `model` that is an adapter directory trains that adapter and
    /// needs no table.
    #[serde(default)]
    pub peft: Option<crosstrain_model::lora::LoraConfig>,
    /// The dtype a LoRA run keeps the frozen base in: `f32` (default) or `bf16` (half the
    /// memory; the adapter, the loss and the optimiser stay f32).
    #[serde(default)]
    pub base_dtype: Option<String>,
    /// Where the model, its backward pass and the optimiser run: `cpu`, `cuda` or `cuda:N`
    /// (CUDA needs a build with `--features cuda`). Only the logits and their gradient
    /// (`pairs × num_labels` floats) cross to the CPU for the loss plugin.
    #[serde(default = "default_device")]
    pub device: String,
    /// Outputs per pair; default: the model's.
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// Truncation length; default: the model's (`model_max_length`, capped at 512 positions).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// The output directory: the trained model directory, its logs and checkpoints.
    pub output: PathBuf,
    /// The loss: a name from `crosstrain losses list` (or `library/name`). Left out (and for
    /// a named dataset without its own): the reference trainer's default,
    /// `BinaryCrossEntropyLoss` for a model of one output, else `CrossEntropyLoss`.
    #[serde(default)]
    pub loss: String,
    /// The loss's config (see `crosstrain losses show NAME`); default: the loss's defaults.
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub loss_config: Value,
    /// The training data: a data spec (`files`, ...), or several named ones
    /// (`[train.NAME]`, each with an optional `loss` and `loss_config`); each batch comes
    /// from one dataset and goes to its loss.
    #[schemars(with = "super::datasets::DatasetsSchema")]
    pub train: Datasets,
    /// Data for the evaluation loss (`eval_loss`, or `eval_NAME_loss` per named set), in the
    /// format of the training data (of the same name).
    #[serde(default)]
    #[schemars(with = "Option<super::datasets::DatasetsSchema>")]
    pub eval: Option<Datasets>,
    /// Evaluators run every `eval_steps` and after training.
    #[serde(default)]
    pub evaluators: Vec<EvaluatorConfig>,
    /// Prompts in training (`CrossEncoderTrainingArguments.prompts`): one string for every
    /// dataset, or a table of named dataset → prompt (a dataset left out gets none). It goes
    /// to the training and evaluation-loss batches as the reference's losses pass `prompt=`:
    /// a decoder reranker's leading system message, an encoder's prefix of the query. The
    /// model's own default prompt is not applied in training (nor by the reference); the
    /// evaluators score with the model's prompts, as `predict` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Prompts>,
    /// Passes over the training data (3); a fraction trains ceil(epochs × steps per epoch)
    /// steps, as transformers. Also read as `epochs`.
    #[serde(rename = "num_train_epochs", default = "default_epochs")]
    #[schemars(with = "f64")]
    pub epochs: Epochs,
    /// Stop after this many optimiser steps, overriding `epochs` (`max_steps`).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Rows per batch (8). Also read as `batch_size`.
    #[serde(rename = "per_device_train_batch_size", default = "default_batch_size")]
    pub batch_size: usize,
    /// Pairs per forward pass when scoring for evaluation (TrainingArguments' default is 8;
    /// the evaluators' own is 32, which we use for both). Also read as `eval_batch_size`.
    #[serde(
        rename = "per_device_eval_batch_size",
        default = "default_eval_batch_size"
    )]
    pub eval_batch_size: usize,
    /// Peak learning rate (5e-5). Also read as `lr`.
    #[serde(rename = "learning_rate", default = "default_lr")]
    pub lr: f64,
    /// Other learning rates by parameter name (sentence-transformers'
    /// `learning_rate_mapping`): regular expression → rate, searched in the name the
    /// reference's trainer uses (`model.0.model.` + the Hugging Face name, e.g.
    /// `classifier\\.` or `score`); the schedule scales every rate alike.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub learning_rate_mapping: std::collections::BTreeMap<String, f64>,
    /// Decoupled weight decay of AdamW, not applied to biases and LayerNorm weights (0).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW β1 (0.9).
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    /// AdamW β2 (0.999).
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    /// AdamW ε (1e-8).
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    /// Warm-up as a fraction of all optimiser steps, rounded up (0). Deprecated in
    /// transformers 5, which reads a fractional `warmup_steps` instead.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warm-up in optimiser steps, or below 1 a fraction of them (transformers 5); overrides
    /// `warmup_ratio`.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub warmup_steps: Option<Steps>,
    /// The schedule (`linear`; also `constant`, `constant_with_warmup`, `cosine`,
    /// `cosine_with_restarts`, `polynomial`, as transformers defines them). Also read as
    /// `lr_scheduler`.
    #[serde(rename = "lr_scheduler_type", default = "default_scheduler")]
    pub lr_scheduler: LrScheduler,
    /// The schedule's parameters: `num_cycles`, `power`, `lr_end`.
    #[serde(default)]
    pub lr_scheduler_kwargs: LrSchedulerKwargs,
    /// Clip the global gradient norm to this (1.0; 0 turns clipping off).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Batches whose gradients are summed into one optimiser step (1).
    #[serde(default = "default_one")]
    pub gradient_accumulation_steps: usize,
    /// Score a batch's pairs in chunks of this many with gradient caching, for any loss;
    /// the loss's own `mini_batch_size` is used when this is unset.
    #[serde(default)]
    pub mini_batch_size: Option<usize>,
    /// Group rows of similar length into batches (within shuffled windows of 50 batches) so
    /// that batches pad less: faster, but batches are less random (transformers'
    /// `group_by_length`, default false).
    #[serde(default)]
    pub group_by_length: bool,
    /// The order of the rows before batching (transformers 5, which replaces
    /// `group_by_length` with it): `random` (default), `sequential` or `group_by_length`.
    /// (`batch_rebalance`, for data-parallel runs in transformers, is not implemented.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_sampling_strategy: Option<TrainSamplingStrategy>,
    /// How rows are cut into batches: `batch_sampler` (default), `no_duplicates` (no text
    /// twice in a batch) or `group_by_label`.
    #[serde(default = "default_batch_sampler")]
    pub batch_sampler: BatchSampler,
    /// How several training datasets share the epoch: `proportional` (default) or
    /// `round_robin`.
    #[serde(default = "default_multi_dataset_batch_sampler")]
    pub multi_dataset_batch_sampler: MultiDatasetBatchSampler,
    /// Seed of shuffling, dropout, in-batch negatives and new weights (42).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Log the mean training loss every this many steps (500, as the reference); below 1, a
    /// fraction of the run's steps (rounded up), as transformers 5.
    #[serde(default = "default_steps")]
    #[schemars(with = "f64")]
    pub logging_steps: Steps,
    /// When to evaluate during training: `no`, `steps` (every `eval_steps`; its default is
    /// `logging_steps`, as in transformers) or `epoch`. Unset: `steps` when `eval_steps` is
    /// set, else `no`. There is always an evaluation after training.
    #[serde(default)]
    pub eval_strategy: Option<IntervalStrategy>,
    /// Evaluate every this many steps (with `eval_strategy = "steps"`); below 1, a fraction
    /// of the run's steps.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub eval_steps: Option<Steps>,
    /// Also evaluate before the first step, to log the untrained model's metrics.
    #[serde(default)]
    pub eval_on_start: bool,
    /// When to checkpoint: `steps` (every `save_steps`, the default), `epoch` or `no`.
    #[serde(default = "default_save_strategy")]
    pub save_strategy: SaveStrategy,
    /// Write a checkpoint every this many steps (500); below 1, a fraction of the run's
    /// steps; 0 turns checkpoints off.
    #[serde(default = "default_steps")]
    #[schemars(with = "f64")]
    pub save_steps: Steps,
    /// Keep at most this many checkpoints (oldest deleted first; the best is kept).
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// After training, load the checkpoint with the best `metric_for_best_model`.
    #[serde(default)]
    pub load_best_model_at_end: bool,
    /// The metric that picks the best checkpoint; default: the first evaluator's primary
    /// metric, else `eval_loss`.
    #[serde(default)]
    pub metric_for_best_model: Option<String>,
    /// Whether a larger metric is better; default: false for names ending in `loss`.
    #[serde(default)]
    pub greater_is_better: Option<bool>,
    /// Stop training after this many evaluations in a row that do not improve
    /// `metric_for_best_model` (transformers' `EarlyStoppingCallback`); unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<usize>,
    /// How much the metric must improve on the best so far to count (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub early_stopping_threshold: f64,
    /// Where the run's log also goes (transformers' `report_to`): `tensorboard` writes event
    /// files to `logging_dir`; `none` (or nothing): only `metrics.jsonl`, which is always
    /// written. `all` is `tensorboard`, the one integration crosstrain has; others
    /// (`wandb`, `mlflow`, ...) are refused by name.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::data::one_or_many"
    )]
    pub report_to: Vec<String>,
    /// TensorBoard's folder; default `OUTPUT/runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_dir: Option<PathBuf>,
    /// Export `onnx/model.onnx` after training and check it in ONNX Runtime when available.
    #[serde(default = "default_true")]
    pub export_onnx: bool,
    /// ONNX opset of the export (17).
    #[serde(default = "default_opset")]
    pub onnx_opset: i64,
    /// Model-card metadata: `language` (list), `license`, `dataset_name`, `model_name`.
    #[serde(default)]
    pub card: crate::card::CardMetadata,
    /// Stop right after the checkpoint of this step, as an interruption would (resume with
    /// `--resume`); for time-boxed runs and for testing resumption.
    #[serde(default)]
    pub stop_at_step: Option<usize>,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}
fn default_device() -> String {
    "cpu".into()
}

fn default_epochs() -> Epochs {
    Epochs::Whole(3)
}
fn default_batch_size() -> usize {
    8
}
fn default_eval_batch_size() -> usize {
    32
}
fn default_lr() -> f64 {
    5e-5
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_scheduler() -> LrScheduler {
    LrScheduler::Linear
}
fn default_save_strategy() -> SaveStrategy {
    SaveStrategy::Steps
}
fn default_batch_sampler() -> BatchSampler {
    BatchSampler::BatchSampler
}
fn default_multi_dataset_batch_sampler() -> MultiDatasetBatchSampler {
    MultiDatasetBatchSampler::Proportional
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_steps() -> Steps {
    Steps::Count(500)
}
fn default_opset() -> i64 {
    17
}

impl TrainConfig {
    /// Parses TOML text (`origin` names it in errors); relative paths are resolved against
    /// `base`.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        Self::from_table(table, origin, base)
    }

    /// Builds the config from a TOML table after command-line overrides were merged in.
    pub fn from_table(
        mut table: toml::Table,
        origin: &str,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        for (short, long) in KEY_ALIASES {
            if table.contains_key(short) && table.contains_key(long) {
                return Err(ConfigError::Parse {
                    origin: origin.to_string(),
                    message: format!(
                        "both `{short}` and `{long}` are given; they are one setting (crosstrain's \
                         name and TrainingArguments'): keep one"
                    ),
                });
            }
            if let Some(value) = table.remove(short) {
                table.insert(long.to_string(), value);
            }
        }
        let mut config: TrainConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.train.resolve_paths(base);
        if let Some(eval) = &mut self.eval {
            eval.resolve_paths(base);
        }
        for evaluator in &mut self.evaluators {
            if let Some(data) = &mut evaluator.data {
                data.resolve_paths(base);
            }
            if let Some(id) = &mut evaluator.dataset_id {
                let local = base.join(id.as_str());
                if Path::new(id.as_str()).is_relative() && local.is_dir() {
                    *id = crate::fsutil::tidy_path(&local).display().to_string();
                }
            }
        }
        if self.output.is_relative() {
            self.output = base.join(&self.output);
        }
        self.output = crate::fsutil::tidy_path(&self.output);
        if let Some(dir) = &mut self.logging_dir {
            if dir.is_relative() {
                *dir = crate::fsutil::tidy_path(&base.join(&*dir));
            }
        }
        let model = Path::new(&self.model);
        if model.is_relative() && base.join(model).is_dir() {
            self.model = crate::fsutil::tidy_path(&base.join(model))
                .display()
                .to_string();
        }
    }

    /// Checks ranges and combinations the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, message: String| Err(ConfigError::Invalid { field, message });
        if !crosstrain_model::is_device_spec(&self.device) {
            return invalid(
                "device",
                format!("unknown device {:?}; use cpu, cuda or cuda:N", self.device),
            );
        }
        if self.batch_size == 0 {
            return invalid("per_device_train_batch_size", "must be at least 1".into());
        }
        if let Some(peft) = &self.peft {
            peft.validate()
                .or_else(|message| invalid("peft", message))?;
        }
        if let Some(dtype) = &self.base_dtype {
            if !matches!(dtype.as_str(), "f32" | "bf16") {
                return invalid("base_dtype", format!("{dtype:?}: use f32 or bf16"));
            }
        }
        if let Some(prompts) = &self.prompts {
            prompts
                .check(&self.train, self.eval.as_ref())
                .or_else(|message| invalid("prompts", message))?;
        }
        if self.eval_batch_size == 0 {
            return invalid("per_device_eval_batch_size", "must be at least 1".into());
        }
        if self.epochs.is_zero() && self.max_steps.is_none() {
            return invalid(
                "num_train_epochs",
                "must be at least 1 (or set max_steps)".into(),
            );
        }
        if self.max_steps == Some(0) {
            return invalid("max_steps", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(
                "learning_rate",
                format!("{} is not a positive number", self.lr),
            );
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return invalid(
                "warmup_ratio",
                format!("{} is not in [0, 1)", self.warmup_ratio),
            );
        }
        for integration in &self.report_to {
            if !["tensorboard", "none", "all"].contains(&integration.as_str()) {
                return invalid(
                    "report_to",
                    format!(
                        "{integration:?} is not an integration crosstrain has: use \
                         \"tensorboard\" (metrics.jsonl is always written)"
                    ),
                );
            }
        }
        for (pattern, rate) in &self.learning_rate_mapping {
            if !(rate.is_finite() && *rate > 0.0) {
                return invalid(
                    "learning_rate_mapping",
                    format!("{pattern:?}: {rate} is not a positive number"),
                );
            }
            if let Err(error) = regex::Regex::new(pattern) {
                return invalid(
                    "learning_rate_mapping",
                    format!("{pattern:?} is not a regular expression: {error}"),
                );
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid("weight_decay", format!("{} is negative", self.weight_decay));
        }
        for (field, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return invalid(field, format!("{beta} is not in [0, 1)"));
            }
        }
        if self.adam_epsilon.is_nan() || self.adam_epsilon <= 0.0 {
            return invalid("adam_epsilon", "must be positive".into());
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return invalid("max_grad_norm", "must be 0 (off) or positive".into());
        }
        if self.gradient_accumulation_steps == 0 {
            return invalid("gradient_accumulation_steps", "must be at least 1".into());
        }
        if self.mini_batch_size == Some(0) {
            return invalid("mini_batch_size", "must be at least 1".into());
        }
        for (field, steps, zero_allowed) in [
            ("logging_steps", Some(self.logging_steps), false),
            ("eval_steps", self.eval_steps, false),
            ("save_steps", Some(self.save_steps), true),
            ("warmup_steps", self.warmup_steps, true),
        ] {
            if let Some(steps) = steps {
                steps
                    .check(zero_allowed)
                    .or_else(|message| invalid(field, message))?;
            }
        }
        if self.save_total_limit == Some(0) {
            return invalid("save_total_limit", "must be at least 1".into());
        }
        if !(crate::onnx::MIN_OPSET..=crate::onnx::MAX_OPSET).contains(&self.onnx_opset) {
            return invalid(
                "onnx_opset",
                crate::onnx::ExportError::Opset(self.onnx_opset).to_string(),
            );
        }
        if self.num_labels == Some(0) {
            return invalid("num_labels", "must be at least 1".into());
        }
        if !self.loss_config.is_object() {
            return invalid("loss_config", "must be a table".into());
        }
        if let Some(cycles) = self.lr_scheduler_kwargs.num_cycles {
            if !(cycles.is_finite() && cycles > 0.0) {
                return invalid(
                    "lr_scheduler_kwargs",
                    format!("num_cycles = {cycles} is not positive"),
                );
            }
        }
        let kwargs = &self.lr_scheduler_kwargs;
        if !(kwargs.power.is_finite() && kwargs.power > 0.0) {
            return invalid(
                "lr_scheduler_kwargs",
                format!("power = {} is not positive", kwargs.power),
            );
        }
        if self.lr_scheduler == LrScheduler::Polynomial
            && !(kwargs.lr_end >= 0.0 && kwargs.lr_end < self.lr)
        {
            return invalid(
                "lr_scheduler_kwargs",
                format!(
                    "lr_end = {} must be in [0, learning_rate = {})",
                    kwargs.lr_end, self.lr
                ),
            );
        }
        if self.group_by_length
            && self
                .train_sampling_strategy
                .is_some_and(|s| s != TrainSamplingStrategy::GroupByLength)
        {
            return invalid(
                "train_sampling_strategy",
                "group_by_length = true asks for another order; keep one of the two".into(),
            );
        }
        if self.save_strategy == SaveStrategy::Best
            && self.effective_eval_strategy() == IntervalStrategy::No
        {
            return invalid(
                "save_strategy",
                "\"best\" saves after evaluations that improve metric_for_best_model: set \
                 eval_strategy or eval_steps"
                    .into(),
            );
        }
        if self.lr_scheduler == LrScheduler::ReduceLrOnPlateau {
            if self.effective_eval_strategy() == IntervalStrategy::No {
                return invalid(
                    "lr_scheduler_type",
                    "reduce_lr_on_plateau needs evaluations during training (eval_strategy or \
                     eval_steps), as transformers requires"
                        .into(),
                );
            }
            if self.metric_for_best_model.is_none() && self.eval.is_none() {
                return invalid(
                    "lr_scheduler_type",
                    "reduce_lr_on_plateau watches eval_loss unless metric_for_best_model names \
                     another metric: add `eval` data or set metric_for_best_model"
                        .into(),
                );
            }
        }
        if let Some(patience) = self.early_stopping_patience {
            if patience == 0 {
                return invalid("early_stopping_patience", "must be at least 1".into());
            }
            if self.effective_eval_strategy() == IntervalStrategy::No {
                return invalid(
                    "early_stopping_patience",
                    "needs evaluations during training (eval_strategy or eval_steps)".into(),
                );
            }
        }
        if !(self.early_stopping_threshold >= 0.0 && self.early_stopping_threshold.is_finite()) {
            return invalid(
                "early_stopping_threshold",
                format!(
                    "{} is not a non-negative number",
                    self.early_stopping_threshold
                ),
            );
        }
        if matches!(
            self.lr_scheduler,
            LrScheduler::CosineWithMinLr | LrScheduler::CosineWarmupWithMinLr
        ) && kwargs.min_lr.is_some() == kwargs.min_lr_rate.is_some()
        {
            return invalid(
                "lr_scheduler_kwargs",
                "set exactly one of min_lr and min_lr_rate for this schedule, as transformers \
                 requires"
                    .into(),
            );
        }
        if self.lr_scheduler == LrScheduler::WarmupStableDecay && kwargs.num_decay_steps.is_none() {
            return invalid(
                "lr_scheduler_kwargs",
                "warmup_stable_decay needs num_decay_steps".into(),
            );
        }
        if let Err((field, message)) = check_evaluators(&self.evaluators) {
            return invalid(field, message);
        }
        if self.effective_eval_strategy() != IntervalStrategy::No
            && self.eval.is_none()
            && self.evaluators.is_empty()
        {
            return invalid(
                "eval_strategy",
                format!(
                    "{:?} evaluates, but there is nothing to evaluate: add `eval` data \
                     (--eval) or an evaluator",
                    self.effective_eval_strategy()
                )
                .to_lowercase(),
            );
        }
        if self.load_best_model_at_end {
            let (eval, save) = (
                self.effective_eval_strategy(),
                self.effective_save_strategy(),
            );
            if save == SaveStrategy::No {
                return invalid(
                    "load_best_model_at_end",
                    "needs checkpoints (save_strategy \"steps\" with save_steps > 0, \"epoch\" \
                     or \"best\")"
                        .into(),
                );
            }
            if eval == IntervalStrategy::No {
                return invalid(
                    "load_best_model_at_end",
                    "needs evaluations during training (eval_strategy or eval_steps)".into(),
                );
            }
            if save != SaveStrategy::Best && save.as_interval() != Some(eval) {
                return invalid(
                    "load_best_model_at_end",
                    format!(
                        "needs the same eval_strategy and save_strategy, as transformers does \
                         (they are {eval:?} and {save:?})"
                    ),
                );
            }
            if self.eval.is_none() && self.evaluators.is_empty() {
                return invalid(
                    "load_best_model_at_end",
                    "needs `eval` data or an evaluator".into(),
                );
            }
            if eval == IntervalStrategy::Steps && save == SaveStrategy::Steps {
                let eval_steps = self.eval_steps.unwrap_or(self.logging_steps);
                let multiple = match (self.save_steps, eval_steps) {
                    (Steps::Count(save), Steps::Count(eval)) => Some(save % eval == 0),
                    (save, eval) if save.is_fraction() && eval.is_fraction() => {
                        let scale = |steps: Steps| (steps.resolve(1_000_000_000)) as u64;
                        Some(scale(save) % scale(eval) == 0)
                    }
                    (save, eval) if save.is_fraction() || eval.is_fraction() => None,
                    (save, eval) => Some(save.resolve(0) % eval.resolve(0).max(1) == 0),
                };
                match multiple {
                    Some(true) => {}
                    Some(false) => {
                        return invalid(
                            "save_steps",
                            format!(
                                "with load_best_model_at_end, must be a multiple of eval_steps \
                                 ({eval_steps:?}), so every checkpoint has metrics"
                            ),
                        )
                    }
                    None => {
                        return invalid(
                            "save_steps",
                            "with load_best_model_at_end, save_steps and eval_steps must both \
                             be step counts or both fractions of the run, as transformers requires"
                                .into(),
                        )
                    }
                }
            }
        }
        Ok(())
    }

    /// TensorBoard's folder when the run reports to it.
    pub fn tensorboard_dir(&self) -> Option<PathBuf> {
        let wanted = self
            .report_to
            .iter()
            .any(|r| r == "tensorboard" || r == "all");
        wanted.then(|| {
            self.logging_dir
                .clone()
                .unwrap_or_else(|| self.output.join("runs"))
        })
    }

    /// The metric `reduce_lr_on_plateau` watches: `metric_for_best_model`, else the eval
    /// loss (transformers' default for it).
    pub fn plateau_metric(&self) -> &str {
        self.metric_for_best_model.as_deref().unwrap_or("eval_loss")
    }

    /// The row order in force: `train_sampling_strategy`, else `group_by_length`'s.
    pub fn sampling_strategy(&self) -> TrainSamplingStrategy {
        self.train_sampling_strategy
            .unwrap_or(if self.group_by_length {
                TrainSamplingStrategy::GroupByLength
            } else {
                TrainSamplingStrategy::Random
            })
    }

    /// The evaluation strategy in force: `eval_strategy`, else `steps` when `eval_steps` is
    /// set, else `no`.
    pub fn effective_eval_strategy(&self) -> IntervalStrategy {
        self.eval_strategy.unwrap_or(if self.eval_steps.is_some() {
            IntervalStrategy::Steps
        } else {
            IntervalStrategy::No
        })
    }

    /// Steps between evaluations under `steps` in a run of `max_steps`: `eval_steps`, else
    /// `logging_steps` (as transformers).
    pub fn eval_every(&self, max_steps: usize) -> usize {
        self.eval_steps
            .unwrap_or(self.logging_steps)
            .resolve(max_steps)
            .max(1)
    }

    /// Steps between loss logs in a run of `max_steps`.
    pub fn log_every(&self, max_steps: usize) -> usize {
        self.logging_steps.resolve(max_steps).max(1)
    }

    /// The checkpoint strategy in force (`steps` with `save_steps = 0` is `no`).
    pub fn effective_save_strategy(&self) -> SaveStrategy {
        match self.save_strategy {
            SaveStrategy::Steps if self.save_steps.resolve(1) == 0 => SaveStrategy::No,
            strategy => strategy,
        }
    }

    /// Whether to evaluate after optimiser step `step` (1-based) of `max_steps`,
    /// `epoch_done` when it ended an epoch. The last step's evaluation is the final one, so it
    /// is not counted here.
    pub fn evaluates_after(&self, step: usize, epoch_done: bool, max_steps: usize) -> bool {
        match self.effective_eval_strategy() {
            IntervalStrategy::No => false,
            IntervalStrategy::Steps => step % self.eval_every(max_steps) == 0,
            IntervalStrategy::Epoch => epoch_done,
        }
    }

    /// Whether to checkpoint after optimiser step `step` (1-based) of `max_steps` on the
    /// schedule (`best` decides after each evaluation, so never here).
    pub fn saves_after(&self, step: usize, epoch_done: bool, max_steps: usize) -> bool {
        match self.effective_save_strategy() {
            SaveStrategy::No | SaveStrategy::Best => false,
            SaveStrategy::Steps => step % self.save_steps.resolve(max_steps).max(1) == 0,
            SaveStrategy::Epoch => epoch_done,
        }
    }

    /// The JSON schema of the config file.
    pub fn schema() -> Value {
        serde_json::to_value(schemars::schema_for!(TrainConfig)).unwrap_or(Value::Null)
    }
}

/// Every key's default value, for the model card's "non-default hyperparameters".
pub fn default_values() -> serde_json::Map<String, Value> {
    let minimal = "model = \"\"\noutput = \"\"\nloss = \"\"\ntrain = { files = [] }\n";
    toml::from_str::<TrainConfig>(minimal)
        .ok()
        .and_then(|config| serde_json::to_value(config).ok())
        .and_then(|value| match value {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

/// The key a metric has in the evaluation log: `eval_` + its name.
pub fn eval_metric_key(name: &str) -> String {
    if name.starts_with("eval_") {
        name.to_string()
    } else {
        format!("eval_{name}")
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
