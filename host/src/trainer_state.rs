//! `trainer_state.json`, the record of a run: what a checkpoint holds besides the model (the
//! trainer's position, the dropout stream, the running loss sums and the log history, so that
//! a resumed run continues exactly where the interrupted one stopped). The trainer writes it;
//! the model card reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl` and one entry of `trainer_state.json`'s `log_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Optimiser steps done.
    pub step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean training loss since the previous log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Mean of each named loss component since the previous log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loss_components: BTreeMap<String, f64>,
    /// With several named training datasets: each one's mean batch loss since the previous
    /// log (datasets without a batch in that span are left out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dataset_losses: BTreeMap<String, f64>,
    /// Learning rate of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Gradient norm (before clipping) of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Evaluation metrics (`eval_loss`, `eval_<evaluator>_<metric>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// Running sums between logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSums {
    /// Sum of batch losses.
    pub loss: f64,
    /// Sums of named components.
    pub components: BTreeMap<String, f64>,
    /// Batches summed.
    pub batches: usize,
    /// Per named dataset: the sum of its batch losses and its batch count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<String, (f64, usize)>,
}

impl LossSums {
    /// Adds one batch (of the named dataset `dataset`, when the run has several).
    pub fn add(&mut self, loss: f64, components: &[(String, f64)], dataset: Option<&str>) {
        self.loss += loss;
        for (name, value) in components {
            *self.components.entry(name.clone()).or_default() += value;
        }
        self.batches += 1;
        if let Some(name) = dataset {
            let entry = self.datasets.entry(name.to_string()).or_default();
            entry.0 += loss;
            entry.1 += 1;
        }
    }

    /// Each named dataset's mean batch loss.
    pub fn dataset_means(&self) -> BTreeMap<String, f64> {
        self.datasets
            .iter()
            .filter(|(_, (_, batches))| *batches > 0)
            .map(|(name, (sum, batches))| (name.clone(), sum / *batches as f64))
            .collect()
    }

    /// The means, or `None` without batches.
    pub fn means(&self) -> Option<(f64, BTreeMap<String, f64>)> {
        (self.batches > 0).then(|| {
            let n = self.batches as f64;
            (
                self.loss / n,
                self.components
                    .iter()
                    .map(|(k, v)| (k.clone(), v / n))
                    .collect(),
            )
        })
    }
}

/// The ONNX export's check after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxReport {
    /// The file, relative to the output directory.
    pub file: String,
    /// Opset.
    pub opset: i64,
    /// Largest |logit difference| between candle and ONNX Runtime on the parity pairs, or
    /// `None` when ONNX Runtime was not available.
    pub max_abs_logit_diff: Option<f64>,
    /// Pairs compared.
    pub pairs: usize,
    /// Why there is no figure, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_checked: Option<String>,
}

/// transformers' `EarlyStoppingCallback` over the run's evaluations: the best value of the
/// metric so far (updated by every evaluation after a step, as the trainer's `best_metric`)
/// and how many evaluations in a row failed to beat it by more than the threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// The best value of the metric among the evaluations after a step.
    pub best: Option<f64>,
    /// Evaluations since the last improvement.
    pub patience_counter: usize,
    /// The step after which the run stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<usize>,
}

impl EarlyStopping {
    fn is_unused(&self) -> bool {
        self == &Self::default()
    }

    /// One evaluation's `value` after a step (`greater` is better, or smaller): the
    /// callback's check against the best so far, then the trainer's best update. (The
    /// evaluation before the first step only resets the counter, which is 0 then.) Returns
    /// whether the patience is spent.
    pub fn observe(&mut self, value: f64, greater: bool, threshold: f64, patience: usize) -> bool {
        let beats = |best: f64| if greater { value > best } else { value < best };
        match self.best {
            Some(best) if !(beats(best) && (value - best).abs() > threshold) => {
                self.patience_counter += 1
            }
            _ => self.patience_counter = 0,
        }
        if self.best.is_none_or(beats) {
            self.best = Some(value);
        }
        self.patience_counter >= patience
    }
}

/// torch's `ReduceLROnPlateau` state (`lr_scheduler_type = "reduce_lr_on_plateau"`): the
/// learning rate in force and what decides the next cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// The learning rate in force.
    pub lr: f64,
    /// The best metric so far (by the scheduler's own mode and threshold).
    pub best: Option<f64>,
    /// Evaluations since the best.
    pub num_bad_epochs: usize,
    /// Evaluations left in the cool-down after a cut.
    pub cooldown_counter: usize,
}

/// `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub global_step: usize,
    /// All optimiser steps of the run.
    pub max_steps: usize,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// Batches per epoch.
    pub batches_per_epoch: usize,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already consumed.
    pub batch_in_epoch: usize,
    /// Position of the dropout stream (rank 0's in a job of several ranks).
    pub dropout_state: Option<u64>,
    /// Every rank's dropout stream position, in rank order, when the run has several ranks
    /// (each draws its own masks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_dropout_states: Vec<Option<u64>>,
    /// Sums since the last log.
    pub since_log: LossSums,
    /// Sums over the whole run.
    pub total: LossSums,
    /// Pairs scored in training.
    pub pairs_seen: usize,
    /// Training wall time so far, seconds.
    pub train_seconds: f64,
    /// Everything logged.
    pub log_history: Vec<LogEntry>,
    /// The metric that picks the best checkpoint.
    pub best_metric_name: String,
    /// Its best value.
    pub best_metric: Option<f64>,
    /// The checkpoint that had it.
    pub best_checkpoint: Option<String>,
    /// Early stopping's record (transformers' `EarlyStoppingCallback` state), kept in
    /// checkpoints so a resumed run stops where the whole run would have.
    #[serde(default, skip_serializing_if = "EarlyStopping::is_unused")]
    pub early_stopping: EarlyStopping,
    /// `reduce_lr_on_plateau`'s state, in runs that use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plateau: Option<Plateau>,
    /// The ONNX export, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxReport>,
    /// A digest (hex SHA-256) of each training dataset's rows, labels and texts, by dataset
    /// name, so that `--resume` on a file that changed under the same path is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_digests: BTreeMap<String, String>,
    /// The crosstrain version that wrote the state.
    pub crosstrain_version: String,
}

impl TrainerState {
    /// Epochs done, fractional, as the reference logs them.
    pub fn epoch_fraction(&self) -> f64 {
        if self.batches_per_epoch == 0 {
            return self.epoch as f64;
        }
        self.epoch as f64 + self.batch_in_epoch as f64 / self.batches_per_epoch as f64
    }

    /// The dropout stream position of `rank` to resume from.
    pub fn dropout_state_of(&self, rank: usize) -> Option<u64> {
        match self.rank_dropout_states.get(rank) {
            Some(state) => *state,
            None => self.dropout_state,
        }
    }

    /// Reads a state file.
    pub fn read(path: &Path) -> Result<Self, StateFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StateFileError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A `trainer_state.json` that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a trainer state.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_sums_average() {
        let mut sums = LossSums::default();
        assert!(sums.means().is_none());
        sums.add(1.0, &[("a".into(), 0.25)], None);
        sums.add(3.0, &[("a".into(), 0.75)], None);
        let (loss, components) = sums.means().unwrap();
        assert_eq!(loss, 2.0);
        assert_eq!(components["a"], 0.5);
    }
}
