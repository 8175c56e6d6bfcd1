//! Checks a shared library before it is handed to the dynamic loader (loss plugins, ONNX
//! Runtime). The loader maps a library's segments straight from the file, so a truncated copy
//! passes `dlopen`'s header checks and then kills the process with SIGBUS when a page past
//! the end of the file is touched. Parsing the headers with the `object` crate and checking
//! that every segment lies inside the file turns that into an error naming the file.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment};

/// Why a file is not a library crosstrain will load.
#[derive(Debug, thiserror::Error)]
pub enum LibraryFileError {
    /// Nothing at that path.
    #[error("{path}: no such file")]
    NotFound {
        /// The path, resolved against the working directory.
        path: PathBuf,
    },
    /// A directory or another non-file.
    #[error("{path}: not a file (a shared library is expected)")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not an object file the platform's loader reads, or one cut short or damaged in its
    /// headers.
    #[error("{path}: not a loadable shared library ({reason})")]
    NotAnObject {
        /// The path.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// A segment reaches past the end of the file: the file was cut short.
    #[error(
        "{path}: truncated shared library: a segment spans bytes {start}..{end} but the file \
         has {length} bytes"
    )]
    Truncated {
        /// The path.
        path: PathBuf,
        /// Where the segment starts in the file.
        start: u64,
        /// Where it ends.
        end: u64,
        /// The file's length.
        length: u64,
    },
}

/// `path` resolved against the working directory (never through the loader's search path:
/// a bare `libc.so.6` means `./libc.so.6`), checked to be a complete shared library.
pub fn checked_library_path(path: &Path) -> Result<PathBuf, LibraryFileError> {
    let path = std::path::absolute(path).map_err(|source| LibraryFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(LibraryFileError::NotFound { path })
        }
        Err(source) => return Err(LibraryFileError::Io { path, source }),
    };
    if !metadata.is_file() {
        return Err(LibraryFileError::NotAFile { path });
    }
    let bytes = std::fs::read(&path).map_err(|source| LibraryFileError::Io {
        path: path.clone(),
        source,
    })?;
    let file = object::File::parse(&*bytes).map_err(|error| LibraryFileError::NotAnObject {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let length = bytes.len() as u64;
    for segment in file.segments() {
        let (start, size) = segment.file_range();
        let end = start.saturating_add(size);
        if end > length {
            return Err(LibraryFileError::Truncated {
                path,
                start,
                end,
                length,
            });
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is itself a complete object file with segments.
    fn own_executable() -> PathBuf {
        std::env::current_exe().unwrap()
    }

    #[test]
    fn a_complete_library_passes_and_relative_paths_resolve_against_the_working_directory() {
        let path = checked_library_path(&own_executable()).unwrap();
        assert!(path.is_absolute());
        let error = checked_library_path(Path::new("libc.so.6")).unwrap_err();
        let expected = std::env::current_dir().unwrap().join("libc.so.6");
        assert!(
            matches!(&error, LibraryFileError::NotFound { path } if *path == expected),
            "{error}"
        );
    }

    #[test]
    fn truncated_files_directories_and_text_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(own_executable()).unwrap();
        let cut = dir.path().join("libcut.so");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let error = checked_library_path(&cut).unwrap_err().to_string();
        assert!(
            error.contains("libcut.so")
                && (error.contains("truncated") || error.contains("not a loadable shared library")),
            "{error}"
        );
        let error = checked_library_path(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not a file"), "{error}");
        let text = dir.path().join("notes.so");
        std::fs::write(&text, "not a library").unwrap();
        let error = checked_library_path(&text).unwrap_err().to_string();
        assert!(
            error.contains("notes.so") && error.contains("not a loadable shared library"),
            "{error}"
        );
    }
}
