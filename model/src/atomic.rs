//! Atomic directory writes: a model or checkpoint directory appears complete or not at all.

use std::path::{Path, PathBuf};

/// Writes a directory by filling a hidden staging directory beside `target` with `fill` and
/// renaming it into place. `target` must not exist or be empty; on any error the staging
/// directory is removed and `target` is left as it was.
pub fn write_dir_atomically<E>(
    target: &Path,
    io_error: impl Fn(&Path, std::io::Error) -> E,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
    if let Err(error) = fill(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    if target.exists() {
        // An empty directory: replace it (remove_dir fails on a non-empty one).
        if let Err(e) = std::fs::remove_dir(target) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(io_error(target, e));
        }
    }
    std::fs::rename(&staging, target).map_err(|e| io_error(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("model");
        let result: Result<(), String> = write_dir_atomically(
            &target,
            |p, e| format!("{}: {e}", p.display()),
            |staging| {
                std::fs::write(staging.join("a"), "x").unwrap();
                Err("boom".into())
            },
        );
        assert_eq!(result.unwrap_err(), "boom");
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn fill_appears_at_target() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("nested/model");
        write_dir_atomically(
            &target,
            |_, e| e.to_string(),
            |staging| std::fs::write(staging.join("a"), "x").map_err(|e| e.to_string()),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "x");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    }
}
