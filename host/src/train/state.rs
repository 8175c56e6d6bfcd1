//! Checkpoint directories of a run. The run's record (`trainer_state.json`) lives in
//! [`crate::trainer_state`], which the model card reads too.

use std::path::{Path, PathBuf};

pub use crate::trainer_state::{LogEntry, LossSums, OnnxReport, StateFileError, TrainerState};
pub use crosstrain_rng::derive_seed;

/// The checkpoint directories under `output`, by step.
pub fn checkpoints(output: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(output)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            entry.path().is_dir().then(|| (step, entry.path()))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_sorted_by_step() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["checkpoint-10", "checkpoint-2", "checkpoint-x", "other"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let steps: Vec<usize> = checkpoints(dir.path())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![2, 10]);
    }
}
