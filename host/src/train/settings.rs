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
}

impl Default for LrSchedulerKwargs {
    fn default() -> Self {
        Self {
            num_cycles: None,
            power: default_power(),
            lr_end: default_lr_end(),
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
