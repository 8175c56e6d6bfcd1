//! The trainer: a dataset and a loss plugin in, a fine-tuned model directory out. It owns
//! batching, seeded shuffling, the optimiser and schedule, gradient caching, evaluation,
//! checkpoints with exact resumption, the metrics log and the final ONNX export.

pub mod config;
pub mod datasets;
pub mod optim;
mod recipe_keys;
pub mod schedule;
mod settings;
pub mod state;
pub mod step;
pub mod summary;
pub mod tensorboard;

mod evaluation;
mod evaluator_config;
mod finish;
mod order;
mod output;
mod prompts;
mod resume;
mod sources;
mod training_loop;
mod world;

pub use order::{epoch_batches, epoch_order, length_grouped_order};

use evaluation::{load_evaluator, LoadedEvaluator};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use crosstrain_plugin_api::rng::SeededRng;
use serde_json::{json, Value};

use crate::data::dataset::{read_dataset, Dataset, DatasetError, LabelValues};
use crate::data::eval_sets::read_reranking_samples;
use crate::eval::nanobeir::NanoBeirEvaluator;
use crate::eval::reranking::{RerankingEvaluator, RerankingSample};
use crate::eval::run as eval_run;
use crate::fsutil::{is_non_empty_dir, write_dir_atomically};
use crate::plugins::{Loss, LossRegistry, PluginError};
use crosstrain_model::{CrossEncoder, LoadOptions, ModelError, PairScorer};

use config::{EvaluatorConfig, EvaluatorKind, TrainConfig};
use optim::AdamW;
use schedule::{clip_grad_norm, learning_rate};
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
    /// The ranks could not set up their communication.
    #[error("distributed training: {message}")]
    Distributed {
        /// What failed.
        message: String,
    },
    /// A rank of a distributed job was started with other inputs than rank 0.
    #[error(
        "rank {rank} of {ranks} has another {what} than rank 0 ({detail}); every rank must \
         start with the same recipe, model and data"
    )]
    RankMismatch {
        /// The rank that differs.
        rank: usize,
        /// The ranks.
        ranks: usize,
        /// `recipe`, `model` or `data`.
        what: &'static str,
        /// Which part, when known.
        detail: String,
    },
    /// A checkpoint cannot be used.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint's `optimizer.safetensors` does not fit the model.
    #[error("{path}: {source}")]
    OptimizerState {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        source: optim::OptimizerStateError,
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
    /// The output directory is, or holds, one of the run's inputs.
    #[error(
        "output {output} {relation} the {what} {input}; choose an output directory apart from \
         the run's inputs (--overwrite would delete it, the final model would be written over it)"
    )]
    OutputHoldsInput {
        /// The output directory.
        output: PathBuf,
        /// `is` or `holds`.
        relation: &'static str,
        /// What the input is (`model`, `training data`, ...).
        what: String,
        /// The input.
        input: PathBuf,
    },
    /// `--resume` with settings that differ from the checkpoint's.
    #[error(
        "checkpoint {path} was trained with {changes}; resume with the same settings, or allow \
         a change on purpose with --allow-change KEY"
    )]
    ResumeChanged {
        /// The checkpoint.
        path: PathBuf,
        /// `key = old (this run: new)`, joined.
        changes: String,
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
    /// Files the run reads that the config does not name (the recipe file itself): like the
    /// config's inputs, the output may not be or hold them.
    pub other_inputs: Vec<PathBuf>,
    /// Settings (top-level config keys) that `--resume` may change from the checkpoint's;
    /// each change is logged. Any other change is refused.
    pub allowed_changes: Vec<String>,
    /// Set to a signal's number when the process is asked to stop (SIGINT, SIGTERM). The loop
    /// looks after every optimizer step: it writes a checkpoint and returns
    /// [`TrainReport::interrupted`]. The library installs no handler; the binary does.
    pub stop_signal: Option<&'static std::sync::atomic::AtomicI32>,
    /// Told where `--overwrite` moved the previous output (`Some`) and when that place is
    /// gone again (`None`: discarded or put back), so that a stop which cannot wait for the
    /// trainer (a second Ctrl-C) can still say where the previous output is.
    pub previous_output_note: Option<fn(Option<&Path>)>,
    /// The ranks of a data-parallel job (a world of one unless launched by MPI): each takes
    /// its share of every global batch, gradients are averaged across ranks, and rank 0
    /// alone writes the output.
    pub world: crate::distributed::World,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("overwrite", &self.overwrite)
            .field("resume", &self.resume)
            .field("progress", &self.progress.is_some())
            .field("other_inputs", &self.other_inputs)
            .field("allowed_changes", &self.allowed_changes)
            .field("stop_signal", &self.stop_signal)
            .field("previous_output_note", &self.previous_output_note.is_some())
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
    /// The signal that stopped the run before its end, if one did.
    pub interrupted: Option<i32>,
    /// The run's last checkpoint (the one to resume from after a stop).
    pub last_checkpoint: Option<PathBuf>,
    /// Where `--overwrite` moved the previous output, when a signal stopped the run before
    /// its first scheduled checkpoint (the previous output is then neither deleted nor put
    /// back over the new run's checkpoint).
    pub previous_output_kept: Option<PathBuf>,
    /// Metrics of the last evaluation.
    pub final_metrics: BTreeMap<String, f64>,
    /// Where training time went (tokenize/forward/loss/backward), summed.
    pub times: PhaseTimes,
    /// Optimiser time, summed (seconds).
    pub optimizer_seconds: f64,
    /// The datasets the run read, training sets first.
    pub datasets: Vec<DatasetRead>,
    /// Seconds from the start of [`train`] to its first step (model, plugins and data
    /// loaded, the dataset cache written or opened).
    pub startup_seconds: f64,
}

/// One dataset a run read: how many rows, and where its texts were kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetRead {
    /// `train` or `eval`.
    pub split: &'static str,
    /// The dataset's name (`train`/`eval` for an unnamed one).
    pub name: String,
    /// Its rows.
    pub rows: usize,
    /// Rows `skip_invalid_rows` dropped.
    pub skipped_rows: usize,
    /// The memory-mapped cache file, when `storage` put it on disk.
    pub cache: Option<PathBuf>,
}

/// A training run in progress.
struct Run<'a> {
    config: &'a TrainConfig,
    model: CrossEncoder,
    vars: Vec<Var>,
    optimizer: AdamW,
    /// The training datasets with their losses.
    sources: Vec<sources::TrainSource>,
    /// The evaluation-loss datasets with their losses.
    eval_sources: Vec<sources::EvalSource>,
    evaluators: Vec<LoadedEvaluator>,
    /// Each evaluator's prompt (its `prompt_name`, looked up in the model's prompts), or
    /// `None` for the model's current prompt.
    evaluator_prompts: Vec<Option<String>>,
    state: TrainerState,
    metrics_log: PathBuf,
    /// The TensorBoard event file (`report_to = ["tensorboard"]`, rank 0).
    tensorboard: Option<tensorboard::TensorBoard>,
    plugin_versions: Vec<(String, String)>,
    primaries: Vec<String>,
    last_checkpoint: Option<PathBuf>,
    /// What `--overwrite` moved aside, until this run has a checkpoint or its final model.
    previous_output: Option<output::PreviousOutput>,
    /// [`RunOptions::previous_output_note`].
    previous_output_note: Option<fn(Option<&Path>)>,
    last_metrics: BTreeMap<String, f64>,
    /// The step of this run's last evaluation in the loop, so the end of the run does not
    /// repeat an evaluation of the same weights.
    evaluated_step: Option<usize>,
    times: PhaseTimes,
    optimizer_seconds: f64,
    /// The job's ranks (a world of one unless launched by MPI).
    world: crate::distributed::World,
    /// Gradient sums on the GPU (NCCL), when the ranks train on CUDA devices.
    device_sum: Option<crate::distributed::DeviceSum>,
    /// Rows of a global batch: `batch_size` for each rank.
    batch_size: usize,
}

/// The device a rank trains on: a bare `cuda` in a job of several ranks is the GPU of the
/// rank's place on its machine (`cuda:LOCAL_RANK`), so that `mpirun -np 8` on an 8-GPU machine
/// uses all eight.
fn rank_device(device: &str, world: &crate::distributed::World) -> String {
    match crate::distributed::local_rank() {
        Some(local) if device == "cuda" && world.is_distributed() => format!("cuda:{local}"),
        _ => device.to_string(),
    }
}

/// Trains as `config` says. See [`RunOptions`] for resuming and overwriting.
pub fn train(
    config: &TrainConfig,
    registry: &LossRegistry,
    options: &RunOptions,
) -> Result<TrainReport, TrainError> {
    let started = std::time::Instant::now();
    let world = &options.world;
    let output = config.output.clone();
    output::check_output_holds_no_input(&output, &run_inputs(config, registry, options))?;
    if world.is_main() {
        output::check_output_writable(&output)?;
    }
    let mut replace_previous = false;
    let resume_from = match &options.resume {
        // Only rank 0 writes the output, so only rank 0 decides about an existing one (the
        // others would see it half moved aside).
        None if !world.is_main() => None,
        None => {
            if is_non_empty_dir(&output) {
                if !options.overwrite {
                    return Err(TrainError::OutputExists { path: output });
                }
                // Moved aside only once everything below has loaded and checked out.
                replace_previous = true;
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
    if let Some(checkpoint) = &resume_from {
        resume::check_unchanged(config, checkpoint, &options.allowed_changes, world.size())?;
    }

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
        device: crosstrain_model::parse_device(&rank_device(&config.device, world))?,
        base_model: config.base_model.clone(),
        // A checkpoint of a LoRA run is an adapter directory already.
        adapter: config.peft.clone().filter(|_| resume_from.is_none()),
        base_dtype: match config.base_dtype.as_deref() {
            Some("bf16") => Some(candle_core::DType::BF16),
            _ => None,
        },
        ..LoadOptions::default()
    };
    let model = match &resume_from {
        Some(checkpoint) => CrossEncoder::load_dir(checkpoint, &load_options)?,
        None => CrossEncoder::load(&config.model, &load_options)?,
    };

    let train_sources = sources::load_train_sources(config, registry, model.num_labels())?;
    let eval_sources = sources::load_eval_sources(config, registry, model.num_labels())?;
    let evaluators = config
        .evaluators
        .iter()
        .map(load_evaluator)
        .collect::<Result<Vec<_>, _>>()?;
    evaluation::check_best_metric(config, &eval_sources, &evaluators, model.num_labels())?;
    let evaluator_prompts = evaluator_config::evaluator_prompts(&config.evaluators, &model)?;

    world::check_same_job(world, config, &model, &train_sources, &eval_sources)?;
    let device_sum = crate::distributed::DeviceSum::for_device(world, model.device())
        .map_err(|message| TrainError::Distributed { message })?;

    // The sampler's length, as the reference's trainer counts steps from it (which for
    // group_by_label also checks, before any work, that the data suits it). A global batch
    // is `batch_size` rows for each rank.
    let batch_size = config.batch_size * world.size();
    let batches_per_epoch = sources::batches_per_epoch(config, &train_sources, batch_size)?;
    let updates_per_epoch = batches_per_epoch
        .div_ceil(config.gradient_accumulation_steps)
        .max(1);
    let max_steps = config
        .max_steps
        .unwrap_or_else(|| config.epochs.steps(updates_per_epoch));
    // transformers 5: `warmup_steps` below 1 is a fraction of the run, rounded up.
    let warmup_steps = config.warmup_steps.map_or_else(
        || (config.warmup_ratio * max_steps as f64).ceil() as usize,
        |steps| steps.resolve(max_steps),
    );
    // Without an explicit metric, the first evaluation picks it (the first evaluator's
    // primary metric, else the eval loss).
    let best_metric_name = config
        .metric_for_best_model
        .as_deref()
        .map(config::eval_metric_key)
        .unwrap_or_default();

    let trainables = model.trainable_parameters().to_vec();
    let vars: Vec<Var> = trainables.iter().map(|t| t.var.clone()).collect();
    let mut optimizer = AdamW::new(
        trainables,
        config.adam_beta1,
        config.adam_beta2,
        config.adam_epsilon,
        config.weight_decay,
    )?;
    if !config.learning_rate_mapping.is_empty() {
        let scales = optim::learning_rate_scales(
            &config.learning_rate_mapping,
            config.lr,
            model.trainable_parameters(),
        )
        .map_err(|message| config::ConfigError::Invalid {
            field: "learning_rate_mapping",
            message,
        })?;
        optimizer.set_learning_rate_scales(&|name| scales.get(name).copied().unwrap_or(1.0))?;
    }

    // What the rows are, so that a resume on changed data under the same path is refused.
    let data_digests: BTreeMap<String, String> = train_sources
        .iter()
        .map(|source| {
            let digest = world::dataset_digest(&source.name, &source.dataset);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            (source.name.clone(), hex)
        })
        .collect();
    let state = match &resume_from {
        Some(checkpoint) => {
            let mut state = TrainerState::read(&checkpoint.join("trainer_state.json"))?;
            resume::check_same_data(checkpoint, &state, &data_digests, &train_sources, options)?;
            state.data_digests = data_digests;
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
            let tensors =
                candle_core::safetensors::load(&optimizer_file, model.device()).map_err(|e| {
                    TrainError::Checkpoint {
                        path: checkpoint.clone(),
                        message: format!(
                            "{}: unreadable ({e}); resume from an earlier checkpoint",
                            optimizer_file.display()
                        ),
                    }
                })?;
            optimizer
                .load_state(&tensors, state.global_step as u64)
                .map_err(|source| TrainError::OptimizerState {
                    path: optimizer_file.clone(),
                    source,
                })?;
            model
                .dropout()
                .restore(state.dropout_state_of(world.rank()));
            tracing::info!(
                step = state.global_step,
                "resuming from {}",
                checkpoint.display()
            );
            state
        }
        None => {
            // Each rank draws its own masks (rank 0 the single-process stream).
            model
                .dropout()
                .train(derive_seed(config.seed, DROPOUT, world.rank() as u64));
            TrainerState {
                global_step: 0,
                max_steps,
                warmup_steps,
                batches_per_epoch,
                epoch: 0,
                batch_in_epoch: 0,
                dropout_state: None,
                rank_dropout_states: Vec::new(),
                since_log: LossSums::default(),
                total: LossSums::default(),
                pairs_seen: 0,
                train_seconds: 0.0,
                log_history: Vec::new(),
                best_metric_name,
                best_metric: None,
                best_checkpoint: None,
                early_stopping: Default::default(),
                plateau: (config.lr_scheduler == config::LrScheduler::ReduceLrOnPlateau).then_some(
                    crate::trainer_state::Plateau {
                        lr: config.lr,
                        best: None,
                        num_bad_epochs: 0,
                        cooldown_counter: 0,
                    },
                ),
                onnx: None,
                data_digests,
                crosstrain_version: env!("CARGO_PKG_VERSION").to_string(),
            }
        }
    };

    let previous_output = if replace_previous {
        let previous = output::PreviousOutput::move_aside(&output)?;
        if let Some(note) = options.previous_output_note {
            note(Some(previous.aside()));
        }
        Some(previous)
    } else {
        None
    };
    let metrics_log = output.join("metrics.jsonl");
    if world.is_main() {
        std::fs::create_dir_all(&output).map_err(|e| io_error(&output, e))?;
        output::remove_stale_partials(&output)?;
        // The log mirrors the state's history, so a resumed run's log has no lines from after
        // its checkpoint.
        let mut lines = String::new();
        for entry in &state.log_history {
            lines.push_str(&serde_json::to_string(entry).unwrap_or_default());
            lines.push('\n');
        }
        std::fs::write(&metrics_log, lines).map_err(|e| io_error(&metrics_log, e))?;
    }
    let tensorboard = match config.tensorboard_dir() {
        Some(dir) if world.is_main() => Some(
            tensorboard::TensorBoard::start(&dir, &state.log_history)
                .map_err(|e| io_error(&dir, e))?,
        ),
        _ => None,
    };
    if world.is_distributed() {
        tracing::info!(
            rank = world.rank(),
            ranks = world.size(),
            "rank {} of {} on {}: {} rows of each global batch of {batch_size}",
            world.rank(),
            world.size(),
            world.engine(),
            config.batch_size
        );
    }

    let mut run = Run {
        config,
        model,
        vars,
        optimizer,
        sources: train_sources,
        eval_sources,
        evaluators,
        evaluator_prompts,
        state,
        metrics_log,
        tensorboard,
        plugin_versions,
        primaries: Vec::new(),
        last_checkpoint: resume_from,
        previous_output,
        previous_output_note: options.previous_output_note,
        last_metrics: BTreeMap::new(),
        evaluated_step: None,
        times: PhaseTimes::default(),
        optimizer_seconds: 0.0,
        world: world.clone(),
        device_sum,
        batch_size,
    };
    let startup_seconds = started.elapsed().as_secs_f64();
    let ended = run
        .train_loop(options.progress.as_deref(), options.stop_signal)
        .and_then(|ended| {
            if ended == LoopEnd::Finished {
                run.finish()?;
            }
            Ok(ended)
        });
    let ended = match ended {
        Ok(ended) => ended,
        Err(error) => {
            if let Some(previous) = run.previous_output.take() {
                let aside = previous.aside().to_path_buf();
                let restored = previous.restore();
                if let (Ok(()), Some(note)) = (&restored, run.previous_output_note) {
                    note(None);
                }
                if let Err(restore_error) = restored {
                    tracing::error!(
                        "the previous output is kept at {}: {restore_error}",
                        aside.display()
                    );
                }
            }
            return Err(error);
        }
    };
    let mut previous_output_kept = None;
    if let Some(previous) = run.previous_output.take() {
        if run.state.global_step > 0 && matches!(ended, LoopEnd::Interrupted(_)) {
            // A signal stopped the run before its first scheduled checkpoint, after the
            // checkpoint of its last step: both are kept, the previous output where it was
            // moved (the stop message says where).
            previous_output_kept = Some(previous.aside().to_path_buf());
        } else {
            // Stopped before its first step: nothing of the new run is worth more than what
            // it would replace.
            previous.restore()?;
            if let Some(note) = run.previous_output_note {
                note(None);
            }
        }
    }
    let datasets = run
        .sources
        .iter()
        .map(|source| ("train", source.name.clone(), &source.dataset))
        .chain(
            run.eval_sources
                .iter()
                .map(|source| ("eval", source.name.clone(), &source.dataset)),
        )
        .map(|(split, name, dataset)| DatasetRead {
            split,
            name,
            rows: dataset.len(),
            skipped_rows: dataset.skipped_rows,
            cache: dataset.cache.clone(),
        })
        .collect();
    Ok(TrainReport {
        output,
        datasets,
        startup_seconds,
        state: run.state,
        stopped_early: ended == LoopEnd::StoppedAtStep,
        interrupted: match ended {
            LoopEnd::Interrupted(signal) => Some(signal),
            _ => None,
        },
        last_checkpoint: run.last_checkpoint,
        previous_output_kept,
        final_metrics: run.last_metrics,
        times: run.times,
        optimizer_seconds: run.optimizer_seconds,
    })
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    /// It ran every step; the final model is still to write.
    Finished,
    /// It stopped at `stop_at_step`, after that step's checkpoint.
    StoppedAtStep,
    /// A signal stopped it, after a checkpoint of the last finished step (if any).
    Interrupted(i32),
}

/// Every file and folder the run reads, named for messages: the output may hold none.
fn run_inputs(
    config: &TrainConfig,
    registry: &LossRegistry,
    options: &RunOptions,
) -> Vec<(String, PathBuf)> {
    let mut inputs = Vec::new();
    if Path::new(&config.model).exists() {
        inputs.push(("model".to_string(), PathBuf::from(&config.model)));
    }
    let train = config
        .train
        .entries
        .iter()
        .map(|e| ("training data".to_string(), &e.spec));
    let eval = config
        .eval
        .iter()
        .flat_map(|e| &e.entries)
        .map(|e| ("evaluation data".to_string(), &e.spec));
    let evaluators = config
        .evaluators
        .iter()
        .filter_map(|e| e.data.as_ref())
        .map(|data| ("evaluator data".to_string(), data));
    for (what, spec) in train.chain(eval).chain(evaluators) {
        inputs.extend(spec.files.iter().map(|f| (what.clone(), f.clone())));
    }
    for library in registry.libraries() {
        if let crate::plugins::LibrarySource::File(path) = &library.source {
            inputs.push(("loss plugin".to_string(), path.clone()));
        }
    }
    inputs.extend(
        options
            .other_inputs
            .iter()
            .map(|f| ("recipe".to_string(), f.clone())),
    );
    inputs
}
