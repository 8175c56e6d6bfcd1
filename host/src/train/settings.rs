//! The values a recipe's enumerated settings take (transformers' and sentence-transformers'
//! names for schedules, strategies and samplers), with their parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The learning-rate schedule (transformers' `lr_scheduler_type`, with its definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Linear warm-up, then linear decay to 0 at the last step (the reference's default).
    Linear,
    /// The peak rate throughout: no warm-up, as transformers' `constant` (warm-up settings
    /// are ignored; use `constant_with_warmup`).
    Constant,
    /// Linear warm-up, then the peak rate.
    ConstantWithWarmup,
    /// Linear warm-up, then a cosine from the peak to 0 over `num_cycles` (0.5) periods.
    Cosine,
    /// Linear warm-up, then `num_cycles` (1) cosine decays to 0, each restarting at the peak.
    CosineWithRestarts,
    /// Linear warm-up, then a polynomial decay of `power` (1.0) to `lr_end` (1e-7).
    Polynomial,
    /// `cosine` ending at `min_lr` (or `min_lr_rate` × the peak) instead of 0.
    CosineWithMinLr,
    /// Warm-up from `warmup_lr_rate` × the peak (default: counting from step 1), then a
    /// cosine to `min_lr` (or `min_lr_rate` × the peak) that reaches it at the last step.
    CosineWarmupWithMinLr,
    /// Warm-up (`warmup_type`: linear, cosine, 1-sqrt), the peak for `num_stable_steps`
    /// (default: what the warm-up and `num_decay_steps` leave), then a `decay_type` decay
    /// (cosine) to `min_lr_ratio` × the peak.
    WarmupStableDecay,
    /// Linear warm-up, then peak / sqrt((step + timescale − warm-up) / timescale), the
    /// timescale defaulting to the warm-up (else 10,000).
    InverseSqrt,
    /// torch's `ReduceLROnPlateau` on `metric_for_best_model` (default `eval_loss`) after
    /// each evaluation: the rate times `factor` (0.1) once `patience` (10) evaluations in a
    /// row fail to improve it by `threshold` (1e-4, `threshold_mode` rel) in `mode` (min),
    /// then `cooldown` (0) evaluations of rest, never below `min_lr` (0). No warm-up.
    #[serde(rename = "reduce_lr_on_plateau")]
    ReduceLrOnPlateau,
}

/// The schedules' parameters (transformers' `lr_scheduler_kwargs`); each has the default of
/// the transformers schedule that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LrSchedulerKwargs {
    /// Cosine periods (`cosine`: 0.5, `cosine_with_restarts`: 1).
    #[serde(default)]
    pub num_cycles: Option<f64>,
    /// `polynomial`: the exponent (1.0).
    #[serde(default = "default_power")]
    pub power: f64,
    /// `polynomial`: the final learning rate (1e-7).
    #[serde(default = "default_lr_end")]
    pub lr_end: f64,
    /// `cosine_with_min_lr`, `cosine_warmup_with_min_lr`: the final learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// The same as a fraction of the peak (one of the two is needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_rate: Option<f64>,
    /// `cosine_warmup_with_min_lr`: where the warm-up starts, as a fraction of the peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_lr_rate: Option<f64>,
    /// `warmup_stable_decay`: steps of the decay (needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_decay_steps: Option<usize>,
    /// `warmup_stable_decay`: steps at the peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_stable_steps: Option<usize>,
    /// `warmup_stable_decay`: `linear` (default), `cosine` or `1-sqrt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_type: Option<Shape>,
    /// `warmup_stable_decay`: `cosine` (default), `linear` or `1-sqrt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_type: Option<Shape>,
    /// `warmup_stable_decay`: the floor, as a fraction of the peak (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    /// `inverse_sqrt`: the decay's timescale in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<usize>,
    /// `reduce_lr_on_plateau`: `min` (default, as torch) or `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PlateauMode>,
    /// `reduce_lr_on_plateau`: the cut's factor (0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// `reduce_lr_on_plateau`: evaluations without improvement before a cut (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// `reduce_lr_on_plateau`: the improvement that counts (1e-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// `reduce_lr_on_plateau`: `rel` (default) or `abs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_mode: Option<ThresholdMode>,
    /// `reduce_lr_on_plateau`: evaluations of rest after a cut (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<usize>,
    /// `reduce_lr_on_plateau`: a cut smaller than this is skipped (1e-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
}

/// Which way `reduce_lr_on_plateau`'s metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlateauMode {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

/// How `reduce_lr_on_plateau` measures an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdMode {
    /// Relative to the best: best × (1 ∓ threshold).
    Rel,
    /// Absolute: best ∓ threshold.
    Abs,
}

/// The curve of a warm-up or decay phase of `warmup_stable_decay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Shape {
    /// A straight line.
    #[serde(rename = "linear")]
    Linear,
    /// Half a cosine.
    #[serde(rename = "cosine")]
    Cosine,
    /// 1 − sqrt(progress) (the warm-up: 1 − sqrt(1 − progress)).
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

impl Default for LrSchedulerKwargs {
    fn default() -> Self {
        Self {
            num_cycles: None,
            power: default_power(),
            lr_end: default_lr_end(),
            min_lr: None,
            min_lr_rate: None,
            warmup_lr_rate: None,
            num_decay_steps: None,
            num_stable_steps: None,
            warmup_type: None,
            decay_type: None,
            min_lr_ratio: None,
            timescale: None,
            mode: None,
            factor: None,
            patience: None,
            threshold: None,
            threshold_mode: None,
            cooldown: None,
            eps: None,
        }
    }
}

fn default_power() -> f64 {
    1.0
}
fn default_lr_end() -> f64 {
    1e-7
}

/// When to evaluate or save (transformers' `IntervalStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    /// Never during training (evaluation still runs once after it).
    No,
    /// Every `eval_steps` / `save_steps` optimiser steps.
    Steps,
    /// At the end of every epoch.
    Epoch,
}

/// When to write checkpoints (transformers' `SaveStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SaveStrategy {
    /// Never.
    No,
    /// Every `save_steps` optimiser steps.
    Steps,
    /// At the end of every epoch.
    Epoch,
    /// After an evaluation whose `metric_for_best_model` is a new best.
    Best,
}

impl SaveStrategy {
    /// The same schedule as an evaluation strategy, if it is one.
    pub fn as_interval(self) -> Option<IntervalStrategy> {
        match self {
            SaveStrategy::No => Some(IntervalStrategy::No),
            SaveStrategy::Steps => Some(IntervalStrategy::Steps),
            SaveStrategy::Epoch => Some(IntervalStrategy::Epoch),
            SaveStrategy::Best => None,
        }
    }
}

/// The order of the rows before batching (transformers 5's `train_sampling_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainSamplingStrategy {
    /// A seeded shuffle every epoch (the default).
    Random,
    /// The data's own order every epoch (the reference's batch samplers shuffle anyway).
    Sequential,
    /// Rows of similar length together (transformers' `LengthGroupedSampler`; the same as
    /// `group_by_length = true`).
    GroupByLength,
}

/// How a dataset's rows are cut into batches (sentence-transformers' `batch_sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchSampler {
    /// Consecutive rows of the seeded epoch order (the default).
    BatchSampler,
    /// No text twice in a batch (what in-batch negatives need): a row whose texts are
    /// already in the batch waits for a later one.
    NoDuplicates,
    /// Batches of rows with the same label, several labels per batch (batch-hard triplet
    /// losses).
    GroupByLabel,
}

/// How batches of several datasets are interleaved (`multi_dataset_batch_sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MultiDatasetBatchSampler {
    /// Every batch of every dataset once per epoch, in a seeded order proportional to the
    /// datasets' batch counts (the default).
    Proportional,
    /// One batch of each dataset in turn, until the smallest is exhausted.
    RoundRobin,
}

/// A number of optimiser steps, or, below 1, a fraction of the run's steps (rounded up): how
/// transformers 5 reads `logging_steps`, `eval_steps`, `save_steps` and `warmup_steps`.
/// Written back as given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Steps {
    /// Steps.
    Count(usize),
    /// A fraction of the run in (0, 1), or a whole number of steps written as a float.
    Fraction(f64),
}

impl Steps {
    /// The steps this is in a run of `max_steps`.
    pub fn resolve(self, max_steps: usize) -> usize {
        match self {
            Steps::Count(count) => count,
            Steps::Fraction(fraction) if fraction < 1.0 => {
                (max_steps as f64 * fraction).ceil() as usize
            }
            Steps::Fraction(steps) => steps as usize,
        }
    }

    /// Whether this is a fraction of the run.
    pub fn is_fraction(self) -> bool {
        matches!(self, Steps::Fraction(f) if f < 1.0)
    }

    /// transformers' rules: a fraction in (0, 1), else a whole number of steps; zero only
    /// where `zero_allowed`.
    pub fn check(self, zero_allowed: bool) -> Result<(), String> {
        match self {
            Steps::Count(0) if !zero_allowed => Err("must be at least 1".into()),
            Steps::Count(_) => Ok(()),
            Steps::Fraction(f) if !(f.is_finite() && f >= 0.0) => Err(format!(
                "{f} is neither a step count nor a fraction of the run in (0, 1)"
            )),
            Steps::Fraction(f) if f == 0.0 && !zero_allowed => Err("must be at least 1".into()),
            Steps::Fraction(f) if f > 1.0 && f.fract() != 0.0 => Err(format!(
                "{f}: above 1 it counts steps and must be a whole number (below 1 it is a \
                 fraction of the run)"
            )),
            Steps::Fraction(_) => Ok(()),
        }
    }
}

/// `num_train_epochs`: whole passes, or a fractional number (transformers trains
/// ceil(epochs × steps per epoch) steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Epochs {
    /// Whole passes.
    Whole(usize),
    /// A fractional number of passes.
    Fraction(f64),
}

impl Epochs {
    /// Optimiser steps for `updates_per_epoch` per epoch.
    pub fn steps(self, updates_per_epoch: usize) -> usize {
        match self {
            Epochs::Whole(epochs) => epochs * updates_per_epoch,
            Epochs::Fraction(epochs) => (epochs * updates_per_epoch as f64).ceil() as usize,
        }
    }

    /// Whether this trains nothing.
    pub fn is_zero(self) -> bool {
        match self {
            Epochs::Whole(epochs) => epochs == 0,
            Epochs::Fraction(epochs) => !(epochs > 0.0 && epochs.is_finite()),
        }
    }
}
