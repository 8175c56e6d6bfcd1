//! Paths and directories: tidy paths for messages, and the atomic directory write (which
//! lives in the model crate, since saving a model needs it too).

use std::path::{Path, PathBuf};

pub use crosstrain_model::atomic::write_dir_atomically;

/// `path` with `.` and `dir/..` removed without touching the file system, so messages show
/// `target/out` rather than `examples/x/../../target/out`.
pub fn tidy_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut tidy = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(tidy.components().next_back(), Some(Component::Normal(_))) =>
            {
                tidy.pop();
            }
            other => tidy.push(other),
        }
    }
    if tidy.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        tidy
    }
}

/// `path` made absolute and resolved through symbolic links as far as it exists (the rest is
/// appended as written, tidied of `.` and `..`), so two spellings of one folder compare equal.
pub fn resolved_path(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("."))
            .join(path)
    };
    let absolute = tidy_path(&absolute);
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut full = real;
            for part in missing.iter().rev() {
                full.push(part);
            }
            return full;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(std::path::Component::Normal(name))) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output file that is one of `inputs` (each named by its flag, e.g. `--data`):
/// writing it, with `--overwrite` too, would destroy what the command reads.
pub fn check_output_is_no_input(output: &Path, inputs: &[(&str, &Path)]) -> Result<(), String> {
    let output_resolved = resolved_path(output);
    for (flag, input) in inputs {
        if resolved_path(input) == output_resolved {
            return Err(format!(
                "--output {} is the {flag} file this command reads; write to another file \
                 (--overwrite never replaces an input)",
                output.display()
            ));
        }
    }
    Ok(())
}

/// Whether `dir` exists and holds anything.
pub fn is_non_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// The process id in a staging name (`.checkpoint-4.partial-1234`, `.x.arrow.partial-99`),
/// if it is one: a dot file ending in `.partial-PID`.
pub fn staging_owner(name: &str) -> Option<u32> {
    let (stem, pid) = name.rsplit_once(".partial-")?;
    if !stem.starts_with('.') {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is running (Linux: `/proc`); elsewhere only this process counts as
/// running, so a staging file is kept only while the process that writes it is this one.
pub fn is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    cfg!(target_os = "linux") && Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_paths() {
        assert_eq!(tidy_path(Path::new("a/./b/../../c")), PathBuf::from("c"));
        assert_eq!(tidy_path(Path::new("../x/..")), PathBuf::from(".."));
        assert_eq!(tidy_path(Path::new("/a/b/..")), PathBuf::from("/a"));
        assert_eq!(tidy_path(Path::new("./")), PathBuf::from("."));
    }

    #[test]
    fn non_empty_dirs() {
        let root = tempfile::tempdir().unwrap();
        assert!(!is_non_empty_dir(root.path()));
        assert!(!is_non_empty_dir(&root.path().join("missing")));
        std::fs::write(root.path().join("a"), "x").unwrap();
        assert!(is_non_empty_dir(root.path()));
    }
}
