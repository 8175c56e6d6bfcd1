//! (query, document) pairs for `predict`, and document lists for `rank`: JSONL with
//! `query`/`document` (or `text_a`/`text_b`) per line, or two tab-separated columns.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A data file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// One pair to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    /// The query (text_a).
    pub query: String,
    /// The document (text_b).
    pub document: String,
}

fn read(path: &Path) -> Result<String, DataError> {
    super::read_text(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn is_tsv(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
}

/// Reads pairs from JSONL (`{"query", "document"}` or `{"text_a", "text_b"}`) or, for a
/// `.tsv` file, two tab-separated columns. Blank lines are skipped.
pub fn read_pairs(path: &Path) -> Result<Vec<TextPair>, DataError> {
    parse_pairs(&read(path)?, path)
}

/// Parses pairs from text in the layout `read_pairs` reads; `path` names the origin in errors
/// and selects TSV by its extension.
pub fn parse_pairs(text: &str, path: &Path) -> Result<Vec<TextPair>, DataError> {
    let malformed = |line: usize, message: String| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if is_tsv(path) {
            let columns: Vec<&str> = line.split('\t').collect();
            if columns.len() != 2 {
                return Err(malformed(
                    number,
                    format!(
                        "expected 2 tab-separated columns (query, document), found {}",
                        columns.len()
                    ),
                ));
            }
            pairs.push(TextPair {
                query: columns[0].to_string(),
                document: columns[1].to_string(),
            });
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| malformed(number, format!("not valid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| malformed(number, "expected a JSON object".into()))?;
        let field = |names: [&str; 2]| -> Result<String, DataError> {
            for name in names {
                if let Some(value) = object.get(name) {
                    return value.as_str().map(str::to_string).ok_or_else(|| {
                        malformed(
                            number,
                            format!("field \"{name}\" must be a string, found {value}"),
                        )
                    });
                }
            }
            Err(malformed(
                number,
                format!("missing field \"{}\" (or \"{}\")", names[0], names[1]),
            ))
        };
        pairs.push(TextPair {
            query: field(["query", "text_a"])?,
            document: field(["document", "text_b"])?,
        });
    }
    Ok(pairs)
}

/// Reads documents for `rank`: one per line as plain text, or, for `.jsonl`/`.json` files,
/// a JSON string or an object with `document` or `text` per line.
pub fn read_documents(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read(path)?;
    let json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    let mut documents = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if !json {
            documents.push(line.to_string());
            continue;
        }
        let malformed = |message: String| DataError::Malformed {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| malformed(format!("not valid JSON: {e}")))?;
        let document = match &value {
            Value::String(text) => text.clone(),
            Value::Object(object) => object
                .get("document")
                .or_else(|| object.get("text"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    malformed("expected a string field \"document\" or \"text\"".into())
                })?,
            other => {
                return Err(malformed(format!(
                    "expected a string or an object, found {other}"
                )))
            }
        };
        documents.push(document);
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_jsonl_in_both_spellings_and_tsv() {
        let (_d, path) = file(
            "pairs.jsonl",
            "{\"query\": \"q1\", \"document\": \"d1\"}\n\n{\"text_a\": \"q2\", \"text_b\": \"d2\"}\n",
        );
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].document, "d2");
        let (_d, path) = file("pairs.tsv", "q\td\r\nq2\td2\n");
        assert_eq!(read_pairs(&path).unwrap()[0].document, "d");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let (_d, path) = file(
            "pairs.jsonl",
            "{\"query\": \"q\", \"document\": \"d\"}\n{\"query\": \"q\"}\n",
        );
        let message = read_pairs(&path).unwrap_err().to_string();
        assert!(
            message.ends_with("pairs.jsonl:2: missing field \"document\" (or \"text_b\")"),
            "{message}"
        );
        let (_d, path) = file("pairs.jsonl", "{\"query\": 3, \"document\": \"d\"}\n");
        assert!(read_pairs(&path)
            .unwrap_err()
            .to_string()
            .contains(":1: field \"query\" must be a string"));
        let (_d, path) = file("pairs.tsv", "a\tb\tc\n");
        assert!(read_pairs(&path)
            .unwrap_err()
            .to_string()
            .contains(":1: expected 2 tab-separated columns"));
        let (_d, path) = file("docs.jsonl", "\"one\"\n{\"text\": \"two\"}\n[1]\n");
        assert!(read_documents(&path)
            .unwrap_err()
            .to_string()
            .contains(":3: expected a string or an object"));
    }
}
