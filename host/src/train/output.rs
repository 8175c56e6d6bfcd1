//! The output directory's rules, so that no run loses earlier work: the output may not be or
//! hold one of the run's inputs, `--overwrite` moves the previous output aside (never deletes
//! it) until the new run has a checkpoint or its final model, and staging folders that a
//! killed run left behind are cleared.

use std::path::{Path, PathBuf};

use crate::fsutil::resolved_path as resolved;

use super::{io_error, TrainError};

/// Refuses an output directory that is one of `inputs` or holds one: `--overwrite` would
/// delete it, and the final model would be written over it.
pub(super) fn check_output_holds_no_input(
    output: &Path,
    inputs: &[(String, PathBuf)],
) -> Result<(), TrainError> {
    let output_resolved = resolved(output);
    for (what, input) in inputs {
        let input_resolved = resolved(input);
        let relation = if input_resolved == output_resolved {
            "is"
        } else if input_resolved.starts_with(&output_resolved) {
            "holds"
        } else {
            continue;
        };
        return Err(TrainError::OutputHoldsInput {
            output: output.to_path_buf(),
            relation,
            what: what.clone(),
            input: input.clone(),
        });
    }
    Ok(())
}

/// Refuses an output that is a file (the model is a directory), and one whose folder cannot
/// be written: found at the start rather than at the first checkpoint, steps later.
pub(super) fn check_output_writable(output: &Path) -> Result<(), TrainError> {
    if output.exists() && !output.is_dir() {
        return Err(TrainError::Io {
            path: output.to_path_buf(),
            message: "is a file; --output names the directory the model is written to".into(),
        });
    }
    // The output itself, else the nearest path above it that exists (where it is made),
    // which must be a folder.
    let folder = output
        .ancestors()
        .find(|path| !path.as_os_str().is_empty() && path.exists())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(TrainError::Io {
            path: folder.to_path_buf(),
            message: format!(
                "is a file, so the output {} cannot be written below it",
                output.display()
            ),
        });
    }
    let probe = folder.join(format!(".crosstrain-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(error) => Err(TrainError::Io {
            path: folder.to_path_buf(),
            message: format!(
                "cannot be written ({error}), so no checkpoint or model could be saved in {}",
                output.display()
            ),
        }),
    }
}

/// The previous contents of an output directory that `--overwrite` replaces. They are moved
/// to a sibling folder when the new run starts writing, removed once the new run has
/// something to resume from (its first checkpoint) or its final model, and put back if it
/// fails before that.
#[derive(Debug)]
pub(super) struct PreviousOutput {
    output: PathBuf,
    aside: PathBuf,
}

impl PreviousOutput {
    /// Moves `output` to `OUTPUT.previous` (or `.previous-2`, ... if that exists).
    pub(super) fn move_aside(output: &Path) -> Result<Self, TrainError> {
        let name = output
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        let aside = (1..)
            .map(|n| {
                let suffix = if n == 1 {
                    ".previous".to_string()
                } else {
                    format!(".previous-{n}")
                };
                output.with_file_name(format!("{name}{suffix}"))
            })
            .find(|candidate| !candidate.exists())
            .expect("some numbered name is free");
        std::fs::rename(output, &aside).map_err(|e| io_error(output, e))?;
        tracing::info!(
            "--overwrite: moved the previous {} to {} until this run has its first checkpoint",
            output.display(),
            aside.display()
        );
        Ok(Self {
            output: output.to_path_buf(),
            aside,
        })
    }

    /// Where the previous contents are now.
    pub(super) fn aside(&self) -> &Path {
        &self.aside
    }

    /// The new run has a checkpoint or its final model: the previous contents go.
    pub(super) fn discard(self) -> Result<(), TrainError> {
        std::fs::remove_dir_all(&self.aside).map_err(|e| io_error(&self.aside, e))?;
        tracing::info!("removed the previous output {}", self.aside.display());
        Ok(())
    }

    /// The new run failed before it had anything to keep: its folder goes and the previous
    /// contents return to their place.
    pub(super) fn restore(self) -> Result<(), TrainError> {
        if self.output.exists() {
            std::fs::remove_dir_all(&self.output).map_err(|e| io_error(&self.output, e))?;
        }
        std::fs::rename(&self.aside, &self.output).map_err(|e| io_error(&self.aside, e))?;
        tracing::warn!(
            "the run ended before its first checkpoint; the previous contents of {} are back \
             in place",
            self.output.display()
        );
        Ok(())
    }
}

/// Removes the staging folders (`.checkpoint-N.partial-PID`, `.final.partial-PID`) that a run
/// killed mid-write left in `output`; a folder whose process still runs is left alone.
/// Returns how many were removed.
pub(super) fn remove_stale_partials(output: &Path) -> Result<usize, TrainError> {
    let Ok(entries) = std::fs::read_dir(output) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = crate::fsutil::staging_owner(&name) else {
            continue;
        };
        if crate::fsutil::is_running(pid) {
            continue;
        }
        let path = entry.path();
        std::fs::remove_dir_all(&path).map_err(|e| io_error(&path, e))?;
        tracing::info!("removed {}, left by an interrupted run", path.display());
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_or_hold_an_input_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        let data = root.path().join("data/train.jsonl");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, "{}").unwrap();
        let inputs = vec![
            ("model".to_string(), model.clone()),
            ("training data".to_string(), data.clone()),
        ];
        let message = |output: &Path| {
            check_output_holds_no_input(output, &inputs)
                .unwrap_err()
                .to_string()
        };
        assert!(
            message(&model).contains(" is the model "),
            "{}",
            message(&model)
        );
        // Another spelling of the same folder.
        let spelled = root.path().join("data/../model/.");
        assert!(message(&spelled).contains(" is the model "));
        let holder = root.path().join("data");
        assert!(message(&holder).contains(" holds the training data "));
        // A folder beside or below an input is fine, existing or not.
        for fine in [root.path().join("out"), model.join("finetuned")] {
            check_output_holds_no_input(&fine, &inputs).unwrap();
        }
    }

    /// Issue 31, items 11 and 12: an output that is a file, or under a folder that cannot be
    /// written, is refused at the start instead of at the first checkpoint.
    #[test]
    fn outputs_that_cannot_be_written_are_refused_at_the_start() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("model.txt");
        std::fs::write(&file, "x").unwrap();
        let message = check_output_writable(&file).unwrap_err().to_string();
        assert!(message.contains("is a file"), "{message}");
        // Below a file: nothing can be made there.
        let message = check_output_writable(&file.join("out"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("cannot be written below it"), "{message}");
        // A folder no one may write in, root included (a read-only output, as root sees it).
        #[cfg(target_os = "linux")]
        {
            let message = check_output_writable(Path::new("/proc/self/out"))
                .unwrap_err()
                .to_string();
            assert!(message.contains("cannot be written"), "{message}");
        }
        check_output_writable(&root.path().join("new/out")).unwrap();
        check_output_writable(root.path()).unwrap();
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn previous_output_is_moved_aside_and_restored_or_discarded() {
        let root = tempfile::tempdir().unwrap();
        let output = root.path().join("out");
        std::fs::create_dir(&output).unwrap();
        std::fs::write(output.join("model.safetensors"), "old").unwrap();
        std::fs::create_dir(root.path().join("out.previous")).unwrap();
        let previous = PreviousOutput::move_aside(&output).unwrap();
        assert_eq!(previous.aside(), root.path().join("out.previous-2"));
        assert!(!output.exists());
        std::fs::create_dir(&output).unwrap();
        std::fs::write(output.join("metrics.jsonl"), "new").unwrap();
        previous.restore().unwrap();
        assert_eq!(
            std::fs::read_to_string(output.join("model.safetensors")).unwrap(),
            "old"
        );
        assert!(!output.join("metrics.jsonl").exists());
        let previous = PreviousOutput::move_aside(&output).unwrap();
        std::fs::create_dir(&output).unwrap();
        previous.discard().unwrap();
        assert!(!root.path().join("out.previous-2").exists());
        assert!(root.path().join("out.previous").exists());
    }

    #[test]
    fn stale_staging_folders_go_and_live_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let own = format!(".checkpoint-3.partial-{}", std::process::id());
        // Process ids this high are not handed out (Linux caps them at 2^22).
        let stale = [
            ".checkpoint-2.partial-4294967295",
            ".final.partial-4294967294",
        ];
        for name in stale.iter().copied().chain([own.as_str(), "checkpoint-2"]) {
            std::fs::create_dir(root.path().join(name)).unwrap();
        }
        assert_eq!(remove_stale_partials(root.path()).unwrap(), 2);
        assert!(root.path().join(&own).exists());
        assert!(root.path().join("checkpoint-2").exists());
        for name in stale {
            assert!(!root.path().join(name).exists());
        }
        assert_eq!(crate::fsutil::staging_owner("checkpoint-2.partial-5"), None);
        assert_eq!(crate::fsutil::staging_owner(".final.partial-x"), None);
    }
}
