//! The trainer: a dataset and a loss plugin in, a fine-tuned model directory out. It owns
//! batching, seeded shuffling, the optimiser and schedule, gradient caching, evaluation,
//! checkpoints with exact resumption, the metrics log and the final ONNX export.

pub mod config;
pub mod optim;
pub mod state;
pub mod step;
pub mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use crosstrain_plugin_api::rng::SeededRng;
use serde_json::{json, Value};

use crate::data::dataset::{read_dataset, Dataset, DatasetError, LabelValues};
use crate::data::eval_sets::read_reranking_samples;
use crate::eval::reranking::{RerankingEvaluator, RerankingSample};
use crate::eval::run as eval_run;
use crate::fsutil::{is_non_empty_dir, write_dir_atomically};
use crate::plugins::{Loss, LossRegistry, PluginError};
use crosstrain_model::{CrossEncoder, LoadOptions, ModelError, PairScorer};

use config::{EvaluatorConfig, EvaluatorKind, TrainConfig};
use optim::{clip_grad_norm, learning_rate, AdamW};
use state::{checkpoints, derive_seed, LogEntry, LossSums, OnnxReport, TrainerState};
use step::{accumulate_batch, batch_loss, GradAccumulator, PhaseTimes, StepError};

/// Seed purposes.
const SHUFFLE: u64 = 1;
const DROPOUT: u64 = 2;
const PLAN: u64 = 3;
const EVAL_PLAN: u64 = 4;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A dataset is unreadable or does not fit the loss.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The loss plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A step failed.
    #[error("step {step}: {source}")]
    Step {
        /// The optimiser step being computed (1-based).
        step: usize,
        /// The failure.
        source: StepError,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The loss is NaN or infinite.
    #[error(
        "step {step} (epoch {epoch}, batch {batch}): the loss is {value}, or the logits it was computed from are; training stopped. {kept}"
    )]
    NonFinite {
        /// The optimiser step being computed (1-based).
        step: usize,
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (1-based).
        batch: usize,
        /// The value.
        value: f64,
        /// Which checkpoint is the last good one.
        kept: String,
    },
    /// The output directory is in the way.
    #[error(
        "{path} exists and is not empty; pass --overwrite to replace it or --resume to continue it"
    )]
    OutputExists {
        /// The directory.
        path: PathBuf,
    },
    /// A checkpoint directory is in the way.
    #[error(
        "checkpoint {path} already exists; a resumed run must start from the latest checkpoint"
    )]
    CheckpointExists {
        /// The directory.
        path: PathBuf,
    },
    /// A checkpoint cannot be used.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint's `trainer_state.json` is unreadable.
    #[error(transparent)]
    StateFile(#[from] state::StateFileError),
    /// An evaluator's data could not be loaded.
    #[error("evaluator {name}: {message}")]
    EvaluatorData {
        /// Its name or kind.
        name: String,
        /// What failed.
        message: String,
    },
    /// An evaluator failed while evaluating.
    #[error("evaluator {name}: {source}")]
    Evaluator {
        /// Its name or kind.
        name: String,
        /// What failed.
        source: crate::eval::run::EvalRunError,
    },
    /// A file could not be written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// How to start a run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Replace a non-empty output directory.
    pub overwrite: bool,
    /// Continue from a checkpoint: `Some(None)` takes the latest under the output directory.
    pub resume: Option<Option<PathBuf>>,
    /// Told where the run stands after every step; the command line draws its progress bar
    /// from it (the library draws nothing).
    pub progress: Option<std::sync::Arc<dyn Fn(TrainProgress) + Send + Sync>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("overwrite", &self.overwrite)
            .field("resume", &self.resume)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Where a run stands, as the progress callback is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainProgress {
    /// The loop starts (or resumes) at `step` of `max_steps`.
    Started {
        /// Steps already done.
        step: usize,
        /// Steps in the whole run.
        max_steps: usize,
    },
    /// An optimizer step finished.
    Step {
        /// Steps done.
        step: usize,
        /// The step's loss.
        loss: f64,
        /// The learning rate it used.
        learning_rate: f64,
        /// Training pairs per second since the loop started.
        pairs_per_second: f64,
    },
    /// The run stopped on purpose before its end (`stop_at_step`).
    Stopped {
        /// Steps done.
        step: usize,
    },
    /// The loop ran to its end.
    Finished,
}

/// What a finished (or deliberately stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The output directory.
    pub output: PathBuf,
    /// The final state.
    pub state: TrainerState,
    /// Whether the run stopped at `stop_at_step` before the end.
    pub stopped_early: bool,
    /// Metrics of the last evaluation.
    pub final_metrics: BTreeMap<String, f64>,
    /// Where training time went (tokenize/forward/loss/backward), summed.
    pub times: PhaseTimes,
    /// Optimiser time, summed (seconds).
    pub optimizer_seconds: f64,
}

/// An evaluator with its data loaded.
enum LoadedEvaluator {
    Reranking {
        evaluator: RerankingEvaluator,
        samples: Vec<RerankingSample>,
    },
    Pairs {
        kind: EvaluatorKind,
        name: String,
        dataset: Dataset,
        gold: Vec<f64>,
    },
}

fn load_evaluator(config: &EvaluatorConfig) -> Result<LoadedEvaluator, TrainError> {
    let label = match config.kind {
        EvaluatorKind::Reranking => "reranking",
        EvaluatorKind::Classification => "classification",
        EvaluatorKind::Correlation => "correlation",
    };
    let evaluator_error = |message: String| TrainError::EvaluatorData {
        name: if config.name.is_empty() {
            label.to_string()
        } else {
            config.name.clone()
        },
        message,
    };
    match config.kind {
        EvaluatorKind::Reranking => {
            let mut samples = Vec::new();
            for file in &config.data.files {
                samples.extend(
                    read_reranking_samples(file).map_err(|e| evaluator_error(e.to_string()))?,
                );
            }
            if let Some(limit) = config.data.limit {
                samples.truncate(limit);
            }
            Ok(LoadedEvaluator::Reranking {
                evaluator: RerankingEvaluator {
                    at_k: config.at_k,
                    always_rerank_positives: config.always_rerank_positives,
                    name: config.name.clone(),
                },
                samples,
            })
        }
        kind => {
            let dataset = read_dataset(&config.data)?;
            if dataset.columns.len() < 2 || dataset.columns.iter().any(|c| c.is_list()) {
                return Err(evaluator_error(format!(
                    "{}: needs two text columns and a label, has {}",
                    dataset.origin(),
                    dataset.describe()
                )));
            }
            let gold = match dataset.label.as_ref().map(|l| &l.values) {
                Some(LabelValues::Scalars(values)) => {
                    values.iter().map(|&v| f64::from(v)).collect()
                }
                _ => {
                    return Err(evaluator_error(format!(
                        "{}: needs a label column with one number per row, has {}",
                        dataset.origin(),
                        dataset.describe()
                    )))
                }
            };
            Ok(LoadedEvaluator::Pairs {
                kind,
                name: config.name.clone(),
                dataset,
                gold,
            })
        }
    }
}

/// Rows per "megabatch" in `group_by_length`, in batches (transformers' LengthGroupedSampler
/// uses 50).
const LENGTH_GROUP_BATCHES: usize = 50;

/// The order of the rows in an epoch with `group_by_length`: the shuffled order cut into
/// megabatches of 50 batches, each sorted by length, longest first, so that a batch holds rows
/// of similar length and pads little. The shuffle still decides which rows meet.
pub fn length_grouped_order(
    lengths: &[usize],
    seed: u64,
    epoch: usize,
    batch_size: usize,
) -> Vec<usize> {
    let mut order = epoch_order(lengths.len(), seed, epoch);
    for group in order.chunks_mut(batch_size.max(1) * LENGTH_GROUP_BATCHES) {
        // Stable: equal lengths keep their shuffled order.
        group.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    }
    order
}

/// The order of the rows in an epoch: a seeded Fisher-Yates shuffle.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = SeededRng::new(derive_seed(seed, SHUFFLE, epoch as u64));
    for i in (1..rows).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A training run in progress.
struct Run<'a> {
    config: &'a TrainConfig,
    model: CrossEncoder,
    loss: Loss,
    vars: Vec<Var>,
    optimizer: AdamW,
    train: Dataset,
    eval: Option<Dataset>,
    evaluators: Vec<LoadedEvaluator>,
    state: TrainerState,
    metrics_log: PathBuf,
    /// Characters per row, for `group_by_length`.
    row_lengths: Option<Vec<usize>>,
    loss_library: crate::plugins::LibraryInfo,
    plugin_versions: Vec<(String, String)>,
    format_name: String,
    primaries: Vec<String>,
    last_checkpoint: Option<PathBuf>,
    last_metrics: BTreeMap<String, f64>,
    times: PhaseTimes,
    optimizer_seconds: f64,
}

/// Trains as `config` says. See [`RunOptions`] for resuming and overwriting.
pub fn train(
    config: &TrainConfig,
    registry: &LossRegistry,
    options: &RunOptions,
) -> Result<TrainReport, TrainError> {
    let output = config.output.clone();
    let resume_from = match &options.resume {
        None => {
            if is_non_empty_dir(&output) {
                if !options.overwrite {
                    return Err(TrainError::OutputExists { path: output });
                }
                std::fs::remove_dir_all(&output).map_err(|e| io_error(&output, e))?;
            }
            None
        }
        Some(Some(path)) => Some(path.clone()),
        Some(None) => Some(
            checkpoints(&output)
                .pop()
                .map(|(_, path)| path)
                .ok_or_else(|| TrainError::Checkpoint {
                    path: output.clone(),
                    message: "no checkpoint-N directory to resume from".into(),
                })?,
        ),
    };

    let loss = registry.build(&config.loss, &config.loss_config)?;
    let loss_library = registry.library_of(registry.find(&config.loss)?).clone();
    let plugin_versions: Vec<(String, String)> = registry
        .libraries()
        .iter()
        .map(|l| (l.name.clone(), l.version.clone()))
        .collect();
    let load_options = LoadOptions {
        max_length: config.max_length,
        num_labels: config.num_labels,
        seed: config.seed,
        from_scratch: config.from_scratch && resume_from.is_none(),
        device: crosstrain_model::parse_device(&config.device)?,
        ..LoadOptions::default()
    };
    let model = match &resume_from {
        Some(checkpoint) => CrossEncoder::load_dir(checkpoint, &load_options)?,
        None => CrossEncoder::load(&config.model, &load_options)?,
    };

    let train = read_dataset(&config.train)?;
    let description = loss.description().clone();
    let format = train
        .check_format(
            loss.qualified_name(),
            &description.formats,
            description.num_labels,
            model.num_labels(),
        )?
        .clone();
    tracing::info!(
        rows = train.len(),
        format = %format.name,
        "training data {}: {}",
        train.origin(),
        train.describe()
    );
    let eval = match &config.eval {
        Some(spec) => {
            let eval = read_dataset(spec)?;
            eval.check_format(
                loss.qualified_name(),
                &description.formats,
                description.num_labels,
                model.num_labels(),
            )
            .map_err(|e| DatasetError::Format(format!("evaluation data: {e}")))?;
            Some(eval)
        }
        None => None,
    };
    let evaluators = config
        .evaluators
        .iter()
        .map(load_evaluator)
        .collect::<Result<Vec<_>, _>>()?;

    let batches_per_epoch = train.len().div_ceil(config.batch_size);
    let updates_per_epoch = batches_per_epoch
        .div_ceil(config.gradient_accumulation_steps)
        .max(1);
    let max_steps = config
        .max_steps
        .unwrap_or(updates_per_epoch * config.epochs);
    let warmup_steps = config
        .warmup_steps
        .unwrap_or_else(|| (config.warmup_ratio * max_steps as f64).ceil() as usize);
    // Without an explicit metric, the first evaluation picks it (the first evaluator's
    // primary metric, else the eval loss).
    let best_metric_name = config
        .metric_for_best_model
        .as_deref()
        .map(config::eval_metric_key)
        .unwrap_or_default();

    let named = model.named_parameters();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut optimizer = AdamW::new(
        named,
        config.adam_beta1,
        config.adam_beta2,
        config.adam_epsilon,
        config.weight_decay,
    )?;

    let state =
        match &resume_from {
            Some(checkpoint) => {
                let state = TrainerState::read(&checkpoint.join("trainer_state.json"))?;
                if state.batches_per_epoch != batches_per_epoch || state.max_steps != max_steps {
                    return Err(TrainError::Checkpoint {
                        path: checkpoint.clone(),
                        message: format!(
                        "it was written for {} batches per epoch and {} steps, this config gives \
                         {batches_per_epoch} and {max_steps}; resume with the same data and \
                         settings",
                        state.batches_per_epoch, state.max_steps
                    ),
                    });
                }
                let optimizer_file = checkpoint.join("optimizer.safetensors");
                let tensors = candle_core::safetensors::load(&optimizer_file, model.device())
                    .map_err(|e| TrainError::Checkpoint {
                        path: checkpoint.clone(),
                        message: e.to_string(),
                    })?;
                optimizer
                    .load_state(&tensors, state.global_step as u64)
                    .map_err(|message| TrainError::Checkpoint {
                        path: checkpoint.clone(),
                        message,
                    })?;
                model.dropout().restore(state.dropout_state);
                tracing::info!(
                    step = state.global_step,
                    "resuming from {}",
                    checkpoint.display()
                );
                state
            }
            None => {
                model.dropout().train(derive_seed(config.seed, DROPOUT, 0));
                TrainerState {
                    global_step: 0,
                    max_steps,
                    warmup_steps,
                    batches_per_epoch,
                    epoch: 0,
                    batch_in_epoch: 0,
                    dropout_state: None,
                    since_log: LossSums::default(),
                    total: LossSums::default(),
                    pairs_seen: 0,
                    train_seconds: 0.0,
                    log_history: Vec::new(),
                    best_metric_name,
                    best_metric: None,
                    best_checkpoint: None,
                    onnx: None,
                    crosstrain_version: env!("CARGO_PKG_VERSION").to_string(),
                }
            }
        };

    std::fs::create_dir_all(&output).map_err(|e| io_error(&output, e))?;
    let metrics_log = output.join("metrics.jsonl");
    // The log mirrors the state's history, so a resumed run's log has no lines from after
    // its checkpoint.
    let mut lines = String::new();
    for entry in &state.log_history {
        lines.push_str(&serde_json::to_string(entry).unwrap_or_default());
        lines.push('\n');
    }
    std::fs::write(&metrics_log, lines).map_err(|e| io_error(&metrics_log, e))?;

    let row_lengths = config.group_by_length.then(|| train.row_lengths());
    let mut run = Run {
        config,
        model,
        loss,
        vars,
        optimizer,
        train,
        eval,
        evaluators,
        state,
        metrics_log,
        row_lengths,
        loss_library,
        plugin_versions,
        format_name: format.name.to_string(),
        primaries: Vec::new(),
        last_checkpoint: resume_from,
        last_metrics: BTreeMap::new(),
        times: PhaseTimes::default(),
        optimizer_seconds: 0.0,
    };
    let stopped_early = run.train_loop(options.progress.as_deref())?;
    if !stopped_early {
        run.finish()?;
    }
    Ok(TrainReport {
        output,
        state: run.state,
        stopped_early,
        final_metrics: run.last_metrics,
        times: run.times,
        optimizer_seconds: run.optimizer_seconds,
    })
}

impl Run<'_> {
    /// The loop; returns whether it stopped at `stop_at_step`.
    fn train_loop(
        &mut self,
        progress: Option<&(dyn Fn(TrainProgress) + Send + Sync)>,
    ) -> Result<bool, TrainError> {
        let report = |event: TrainProgress| {
            if let Some(progress) = progress {
                progress(event);
            }
        };
        let config = self.config;
        report(TrainProgress::Started {
            step: self.state.global_step,
            max_steps: self.state.max_steps,
        });
        let mut grads = GradAccumulator::new(self.vars.len());
        let accumulation = config.gradient_accumulation_steps;
        let scale = 1.0 / accumulation as f64;
        let started = Instant::now();
        let seconds_before = self.state.train_seconds;
        let pairs_before = self.state.pairs_seen;
        let mut micro = 0usize;
        if config.eval_on_start && self.state.global_step == 0 {
            self.evaluate_and_log()?;
        }
        while self.state.global_step < self.state.max_steps {
            let order = match &self.row_lengths {
                Some(lengths) => {
                    length_grouped_order(lengths, config.seed, self.state.epoch, config.batch_size)
                }
                None => epoch_order(self.train.len(), config.seed, self.state.epoch),
            };
            let batches: Vec<&[usize]> = order.chunks(config.batch_size).collect();
            if batches.is_empty() {
                break;
            }
            let epoch = self.state.epoch;
            while self.state.epoch == epoch
                && self.state.batch_in_epoch < batches.len()
                && self.state.global_step < self.state.max_steps
            {
                let batch_index = self.state.batch_in_epoch;
                let rows = batches[batch_index];
                let step = self.state.global_step + 1;
                let plan_seed = derive_seed(
                    config.seed,
                    PLAN,
                    (self.state.epoch * self.state.batches_per_epoch + batch_index) as u64,
                );
                let outcome = accumulate_batch(
                    &self.model,
                    &self.vars,
                    &self.loss,
                    &self.train,
                    rows,
                    plan_seed,
                    config.mini_batch_size,
                    scale,
                    &mut grads,
                );
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(StepError::NonFiniteLogit { value }) => {
                        return Err(self.non_finite(step, batch_index, f64::from(value)))
                    }
                    Err(source) => return Err(TrainError::Step { step, source }),
                };
                if !outcome.loss.is_finite() {
                    return Err(self.non_finite(step, batch_index, outcome.loss));
                }
                self.times += outcome.times;
                self.state.since_log.add(outcome.loss, &outcome.components);
                self.state.total.add(outcome.loss, &outcome.components);
                self.state.pairs_seen += outcome.pairs;
                self.state.batch_in_epoch += 1;
                micro += 1;
                let epoch_done = self.state.batch_in_epoch == batches.len();
                if micro < accumulation && !epoch_done {
                    continue;
                }
                micro = 0;

                let optimizer_started = Instant::now();
                let lr = learning_rate(
                    config.lr_scheduler,
                    config.lr,
                    self.state.global_step,
                    self.state.warmup_steps,
                    self.state.max_steps,
                );
                let mut step_grads = grads.take();
                let grad_norm = clip_grad_norm(&mut step_grads, config.max_grad_norm)?;
                self.optimizer.step(&step_grads, lr)?;
                self.optimizer_seconds += optimizer_started.elapsed().as_secs_f64();
                self.state.global_step += 1;
                if epoch_done {
                    self.state.epoch += 1;
                    self.state.batch_in_epoch = 0;
                }
                self.state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
                report(TrainProgress::Step {
                    step: self.state.global_step,
                    loss: outcome.loss,
                    learning_rate: lr,
                    pairs_per_second: (self.state.pairs_seen - pairs_before) as f64
                        / started.elapsed().as_secs_f64().max(1e-9),
                });
                let global_step = self.state.global_step;
                let last = global_step == self.state.max_steps;
                if global_step % config.logging_steps == 0 || last {
                    if let Some((loss, components)) = self.state.since_log.means() {
                        self.log(LogEntry {
                            step: global_step,
                            epoch: self.state.epoch_fraction(),
                            loss: Some(loss),
                            loss_components: components,
                            learning_rate: Some(lr),
                            grad_norm: Some(grad_norm),
                            metrics: BTreeMap::new(),
                        })?;
                        self.state.since_log = LossSums::default();
                    }
                }
                let evaluated = match config.eval_steps {
                    Some(every) if global_step % every == 0 && !last => {
                        self.evaluate_and_log()?;
                        true
                    }
                    _ => false,
                };
                let stop_here = config.stop_at_step == Some(global_step) && !last;
                if (config.save_steps > 0 && global_step % config.save_steps == 0 && !last)
                    || stop_here
                {
                    self.save_checkpoint(evaluated)?;
                }
                if stop_here {
                    report(TrainProgress::Stopped { step: global_step });
                    return Ok(true);
                }
            }
        }
        report(TrainProgress::Finished);
        Ok(false)
    }

    /// The error for a NaN or infinite value at `step`, naming the last good checkpoint.
    fn non_finite(&self, step: usize, batch_index: usize, value: f64) -> TrainError {
        TrainError::NonFinite {
            step,
            epoch: self.state.epoch + 1,
            batch: batch_index + 1,
            value,
            kept: match &self.last_checkpoint {
                Some(path) => format!(
                    "The last good checkpoint is {}; lower the learning rate or check the \
                     data, then --resume.",
                    path.display()
                ),
                None => "No checkpoint was written before it.".into(),
            },
        }
    }

    fn log(&mut self, entry: LogEntry) -> Result<(), TrainError> {
        let line = serde_json::to_string(&entry).map_err(|e| io_error(&self.metrics_log, e))?;
        tracing::info!(target: "crosstrain::train", "{line}");
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.metrics_log)
            .map_err(|e| io_error(&self.metrics_log, e))?;
        writeln!(file, "{line}").map_err(|e| io_error(&self.metrics_log, e))?;
        self.state.log_history.push(entry);
        Ok(())
    }

    /// Runs the eval loss and every evaluator in eval mode; also returns each evaluator's
    /// primary metric key.
    fn evaluate(&self) -> Result<(BTreeMap<String, f64>, Vec<String>), TrainError> {
        let mut metrics = BTreeMap::new();
        let mut primaries = Vec::new();
        let dropout = self.model.dropout();
        let saved = dropout.snapshot();
        dropout.eval();
        let result = (|| {
            if let Some(eval) = &self.eval {
                let order: Vec<usize> = (0..eval.len()).collect();
                let mut weighted = 0.0;
                for (index, rows) in order.chunks(self.config.batch_size).enumerate() {
                    let seed = derive_seed(self.config.seed, EVAL_PLAN, index as u64);
                    let value = batch_loss(
                        &self.model,
                        &self.loss,
                        eval,
                        rows,
                        seed,
                        self.config.eval_batch_size,
                    )
                    .map_err(|source| TrainError::Step {
                        step: self.state.global_step,
                        source,
                    })?;
                    weighted += value * rows.len() as f64;
                }
                metrics.insert("eval_loss".to_string(), weighted / eval.len().max(1) as f64);
            }
            let batch_size = self.config.eval_batch_size;
            let scorer: &dyn PairScorer = &self.model;
            for evaluator in &self.evaluators {
                let (name, result) = match evaluator {
                    LoadedEvaluator::Reranking { evaluator, samples } => (
                        evaluator.name.clone(),
                        eval_run::reranking(evaluator, samples, scorer, batch_size),
                    ),
                    LoadedEvaluator::Pairs {
                        kind,
                        name,
                        dataset,
                        gold,
                    } => {
                        let pairs: Vec<(&str, &str)> = (0..dataset.len())
                            .map(|row| {
                                (
                                    dataset.columns[0].text(row, 0).unwrap_or_default(),
                                    dataset.columns[1].text(row, 0).unwrap_or_default(),
                                )
                            })
                            .collect();
                        let result = if *kind == EvaluatorKind::Classification {
                            eval_run::classification(
                                name,
                                &pairs,
                                gold,
                                self.model.num_labels(),
                                &dataset.origin(),
                                scorer,
                                batch_size,
                            )
                        } else {
                            eval_run::correlation(name, &pairs, gold, scorer, batch_size)
                        };
                        (name.clone(), result)
                    }
                };
                let values = result.map_err(|source| TrainError::Evaluator { name, source })?;
                primaries.push(values.primary_metric.clone());
                for (key, value) in values.values {
                    metrics.insert(format!("eval_{key}"), value);
                }
            }
            Ok((metrics, primaries))
        })();
        dropout.restore(saved);
        result
    }

    fn evaluate_and_log(&mut self) -> Result<(), TrainError> {
        if self.eval.is_none() && self.evaluators.is_empty() {
            return Ok(());
        }
        let (metrics, primaries) = self.evaluate()?;
        if self.state.best_metric_name.is_empty() {
            self.state.best_metric_name = primaries
                .first()
                .map_or_else(|| "eval_loss".into(), |p| format!("eval_{p}"));
        }
        self.primaries = primaries;
        self.last_metrics = metrics.clone();
        self.log(LogEntry {
            step: self.state.global_step,
            epoch: self.state.epoch_fraction(),
            loss: None,
            loss_components: BTreeMap::new(),
            learning_rate: None,
            grad_norm: None,
            metrics,
        })
    }

    fn save_checkpoint(&mut self, evaluated: bool) -> Result<(), TrainError> {
        let step = self.state.global_step;
        let name = format!("checkpoint-{step}");
        let target = self.config.output.join(&name);
        if target.exists() {
            return Err(TrainError::CheckpointExists { path: target });
        }
        if evaluated {
            let metric = &self.state.best_metric_name;
            let greater = self
                .config
                .greater_is_better
                .unwrap_or(!metric.ends_with("loss"));
            if let Some(&value) = self.last_metrics.get(metric) {
                let better = match self.state.best_metric {
                    None => true,
                    Some(best) if greater => value > best,
                    Some(best) => value < best,
                };
                if better {
                    self.state.best_metric = Some(value);
                    self.state.best_checkpoint = Some(name.clone());
                }
            }
        }
        self.state.dropout_state = self.model.dropout().snapshot();
        let state_json =
            serde_json::to_string_pretty(&self.state).map_err(|e| io_error(&target, e))?;
        let optimizer_tensors: std::collections::HashMap<String, Tensor> =
            self.optimizer.state_tensors()?.into_iter().collect();
        write_dir_atomically(&target, io_error, |staging| {
            self.model.write_to(staging)?;
            let optimizer_file = staging.join("optimizer.safetensors");
            candle_core::safetensors::save(&optimizer_tensors, &optimizer_file)
                .map_err(|e| io_error(&optimizer_file, e))?;
            let state_file = staging.join("trainer_state.json");
            std::fs::write(&state_file, state_json + "\n").map_err(|e| io_error(&state_file, e))?;
            write_training_args(self.config, staging)
        })?;
        tracing::info!(step, "wrote {}", target.display());
        self.last_checkpoint = Some(target);
        if let Some(limit) = self.config.save_total_limit {
            let mut existing = checkpoints(&self.config.output);
            let best = self.state.best_checkpoint.clone();
            while existing.len() > limit {
                let position = existing
                    .iter()
                    .position(|(_, path)| {
                        best.as_deref() != path.file_name().map(|n| n.to_string_lossy()).as_deref()
                    })
                    .unwrap_or(0);
                let (_, path) = existing.remove(position);
                std::fs::remove_dir_all(&path).map_err(|e| io_error(&path, e))?;
            }
        }
        Ok(())
    }

    /// Final evaluation, best-model reload, and the output directory.
    fn finish(&mut self) -> Result<(), TrainError> {
        let config = self.config;
        if self.eval.is_some() || !self.evaluators.is_empty() {
            self.evaluate_and_log()?;
        }
        if config.load_best_model_at_end {
            if let Some(best) = self.state.best_checkpoint.clone() {
                let path = config.output.join(&best);
                self.load_weights(&path)?;
                tracing::info!("loaded the best checkpoint {best}");
                if self.eval.is_some() || !self.evaluators.is_empty() {
                    self.last_metrics = self.evaluate()?.0;
                }
            }
        }
        let output = config.output.clone();
        let staging = output.join(format!(".final.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        let written = self.write_final(&staging);
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
        // Move each finished file into place (each rename is atomic); checkpoints and the
        // metrics log stay.
        for entry in std::fs::read_dir(&staging).map_err(|e| io_error(&staging, e))? {
            let entry = entry.map_err(|e| io_error(&staging, e))?;
            let target = output.join(entry.file_name());
            if target.is_dir() {
                std::fs::remove_dir_all(&target).map_err(|e| io_error(&target, e))?;
            }
            std::fs::rename(entry.path(), &target).map_err(|e| io_error(&target, e))?;
        }
        std::fs::remove_dir(&staging).map_err(|e| io_error(&staging, e))?;
        Ok(())
    }

    fn write_final(&mut self, staging: &Path) -> Result<(), TrainError> {
        let config = self.config;
        self.model.write_to(staging)?;
        write_training_args(config, staging)?;
        if config.export_onnx {
            let onnx_dir = staging.join("onnx");
            std::fs::create_dir_all(&onnx_dir).map_err(|e| io_error(&onnx_dir, e))?;
            let onnx_file = onnx_dir.join("model.onnx");
            let bytes = crate::onnx::export_onnx(&self.model, config.onnx_opset)
                .map_err(|e| io_error(&onnx_file, e))?;
            std::fs::write(&onnx_file, bytes).map_err(|e| io_error(&onnx_file, e))?;
            let pairs = crate::onnx::parity_pairs().map_err(|e| io_error(&onnx_file, e))?;
            let (figure, not_checked) = match crate::onnx::library_path() {
                Err(missing) => (None, Some(missing.to_string())),
                Ok(_) => match crate::onnx::parity(&self.model, &onnx_file, &pairs) {
                    Ok(diff) => (Some(diff), None),
                    Err(error) => (None, Some(error.to_string())),
                },
            };
            match (figure, &not_checked) {
                (Some(diff), _) => tracing::info!(
                    "ONNX export: max |logit difference| vs candle {diff:.3e} on {} pairs",
                    pairs.len()
                ),
                (None, Some(why)) => tracing::warn!("ONNX export not checked: {why}"),
                _ => {}
            }
            self.state.onnx = Some(OnnxReport {
                file: "onnx/model.onnx".into(),
                opset: config.onnx_opset,
                max_abs_logit_diff: figure,
                pairs: pairs.len(),
                not_checked,
            });
        }
        let state_file = staging.join("trainer_state.json");
        let text =
            serde_json::to_string_pretty(&self.state).map_err(|e| io_error(&state_file, e))?;
        std::fs::write(&state_file, text + "\n").map_err(|e| io_error(&state_file, e))?;

        let summary = self.training_summary()?;
        let summary_file = staging.join("training_summary.json");
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| io_error(&summary_file, e))?;
        std::fs::write(&summary_file, text + "\n").map_err(|e| io_error(&summary_file, e))?;
        let args = serde_json::to_value(config).map_err(|e| io_error(&summary_file, e))?;
        crate::card::write_files(
            staging,
            &args,
            &self.state,
            &summary,
            &config::default_values(),
        )
        .map_err(|e| TrainError::Io {
            path: e.path,
            message: e.message,
        })
    }

    /// What the model card needs beyond the recipe and the state.
    fn training_summary(&self) -> Result<crate::card::TrainingSummary, TrainError> {
        use crate::card::{EvaluatorSummary, LossSummary, TrainingSummary};
        let config = self.config;
        let description = self.loss.description();
        let tokenizer = self.model.tokenizer();
        let mut datasets = vec![summary::summarize_dataset("train", &self.train, tokenizer)];
        if let Some(eval) = &self.eval {
            datasets.push(summary::summarize_dataset("eval", eval, tokenizer));
        }
        let mut evaluators = Vec::new();
        for (index, loaded) in self.evaluators.iter().enumerate() {
            let (kind, name, settings) = match loaded {
                LoadedEvaluator::Reranking { evaluator, .. } => (
                    "reranking",
                    evaluator.name.clone(),
                    json!({
                        "at_k": evaluator.at_k,
                        "always_rerank_positives": evaluator.always_rerank_positives,
                    }),
                ),
                LoadedEvaluator::Pairs {
                    kind,
                    name,
                    dataset,
                    ..
                } => {
                    let split = if name.is_empty() { "evaluator" } else { name };
                    datasets.push(summary::summarize_dataset(split, dataset, tokenizer));
                    let kind = if *kind == EvaluatorKind::Classification {
                        "classification"
                    } else {
                        "correlation"
                    };
                    (kind, name.clone(), json!({}))
                }
            };
            // Keys of this evaluator: `eval_<name>_<metric>` (or `eval_<metric>` unnamed).
            let prefix = if name.is_empty() {
                "eval_".to_string()
            } else {
                format!("eval_{name}_")
            };
            let metrics: BTreeMap<String, f64> = self
                .last_metrics
                .iter()
                .filter(|(key, _)| key.starts_with(&prefix) && key.as_str() != "eval_loss")
                .map(|(key, value)| (key["eval_".len()..].to_string(), *value))
                .collect();
            evaluators.push(EvaluatorSummary {
                kind: kind.to_string(),
                name,
                config: settings,
                metrics,
                primary_metric: self.primaries.get(index).cloned().unwrap_or_default(),
            });
        }
        let pairs = summary::example_pairs(self.eval.as_ref().unwrap_or(&self.train), 5);
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let logits = self.model.predict(&borrowed, config.eval_batch_size)?;
        let scores = self.model.default_activation().apply(logits);
        let example_scores = pairs
            .into_iter()
            .zip(scores)
            .map(|((a, b), score)| (a, b, score.first().copied().unwrap_or(f32::NAN)))
            .collect();
        Ok(TrainingSummary {
            base_model: config.model.clone(),
            from_scratch: config.from_scratch,
            base_model_is_local: Path::new(&config.model).exists(),
            architecture: self.model.family().architecture().to_string(),
            architecture_details: self.model.config().description(),
            parameters: self.vars.iter().map(|v| v.elem_count()).sum(),
            max_length: self.model.max_length(),
            num_labels: self.model.num_labels(),
            loss: LossSummary {
                name: description.name.clone(),
                qualified_name: self.loss.qualified_name().to_string(),
                library: self.loss_library.name.clone(),
                library_version: self.loss_library.version.clone(),
                summary: description.summary.clone(),
                config: self.loss.effective_config(),
                citation: description.citation.clone(),
                format: self.format_name.clone(),
            },
            datasets,
            evaluators,
            versions: summary::framework_versions(&self.plugin_versions),
            example_scores,
            metadata: config.card.clone(),
        })
    }

    fn load_weights(&self, checkpoint: &Path) -> Result<(), TrainError> {
        let file = checkpoint.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&file, self.model.device()).map_err(|e| {
            TrainError::Checkpoint {
                path: checkpoint.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        for (name, var) in self.model.named_parameters() {
            let tensor = tensors.get(&name).ok_or_else(|| TrainError::Checkpoint {
                path: checkpoint.to_path_buf(),
                message: format!("model.safetensors has no {name}"),
            })?;
            var.set(&tensor.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// `training_args.json`: the resolved config, as the run used it.
fn write_training_args(config: &TrainConfig, dir: &Path) -> Result<(), TrainError> {
    let path = dir.join("training_args.json");
    let mut value = serde_json::to_value(config).map_err(|e| io_error(&path, e))?;
    if let Value::Object(map) = &mut value {
        map.insert(
            "crosstrain_version".into(),
            json!(env!("CARGO_PKG_VERSION")),
        );
    }
    let text = serde_json::to_string_pretty(&value).map_err(|e| io_error(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grouped_batches_pad_little() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 3).collect();
        let order = length_grouped_order(&lengths, 5, 0, 4);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        // Within each megabatch of 200 rows, lengths never increase.
        for group in order.chunks(200) {
            assert!(group.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        // Padding (Σ over batches of max length × rows) drops against the plain shuffle.
        let padded = |order: &[usize]| -> usize {
            order
                .chunks(4)
                .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len())
                .sum()
        };
        assert!(padded(&order) * 10 < padded(&epoch_order(1000, 5, 0)) * 8);
        assert_eq!(order, length_grouped_order(&lengths, 5, 0, 4));
        assert_ne!(order, length_grouped_order(&lengths, 5, 1, 4));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 12, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 12, 0));
        assert_ne!(a, epoch_order(50, 12, 1));
        assert_ne!(a, epoch_order(50, 13, 0));
    }
}
