//! (query, document) pairs for `predict`, `eval` and the ONNX check, and document lists for
//! `rank`, read with the training reader's column rule: the first two text columns under any
//! names (`query`/`document`, `sentence1`/`sentence2`, `text_a`/`text_b`, ...), in JSONL,
//! CSV/TSV (with a header) or Parquet, so a file that trains also scores and evaluates.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::dataset::{
    parse_jsonl_dataset, read_dataset, Dataset, DatasetError, DatasetSpec, LabelValues,
};

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
    /// The file was read by the training reader and failed there, or its columns do not fit.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}

/// One pair to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    /// The query (text_a).
    pub query: String,
    /// The document (text_b).
    pub document: String,
}

/// Reads pairs: the first two text columns of each row, whatever their names, from any file
/// the training reader takes (`.jsonl`, `.csv`, `.tsv` with a header row, `.parquet`). A label
/// column may be present and is ignored.
pub fn read_pairs(path: &Path) -> Result<Vec<TextPair>, DataError> {
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path.to_path_buf()]))?;
    Ok(pairs_of(&dataset)?)
}

/// Parses pairs from JSONL text (built-in pair sets); `origin` names it in errors.
pub fn parse_pairs(text: &str, origin: &Path) -> Result<Vec<TextPair>, DataError> {
    Ok(pairs_of(&parse_jsonl_dataset(text, origin)?)?)
}

/// Reads pairs with a number each (the gold label or score of `eval`): the first two text
/// columns and the label column (the first of `label`, `labels`, `score`, `scores`).
pub fn read_labeled_pairs(path: &Path) -> Result<Vec<(TextPair, f64)>, DataError> {
    let dataset = read_dataset(&DatasetSpec::from_files(vec![path.to_path_buf()]))?;
    let pairs = pairs_of(&dataset)?;
    match dataset.label.as_ref().map(|l| &l.values) {
        Some(LabelValues::Scalars(values)) => Ok(pairs
            .into_iter()
            .zip(values.iter().map(|&v| f64::from(v)))
            .collect()),
        _ => Err(DatasetError::Columns {
            path: path.to_path_buf(),
            message: format!(
                "needs a label column (label, labels, score or scores) with one number per \
                 row; it has {}",
                dataset.describe()
            ),
        }
        .into()),
    }
}

/// The first two text columns of every row.
fn pairs_of(dataset: &Dataset) -> Result<Vec<TextPair>, DatasetError> {
    let columns_error = |message: String| DatasetError::Columns {
        path: dataset.files.first().cloned().unwrap_or_default(),
        message,
    };
    let [query, document, rest @ ..] = dataset.columns.as_slice() else {
        return Err(columns_error(format!(
            "needs two text columns (query, document), has {}",
            dataset.describe()
        )));
    };
    if let Some(list) = [query, document].into_iter().find(|c| c.is_list()) {
        return Err(columns_error(format!(
            "column {:?} holds lists; pairs need one query and one document text per row \
             (it has {})",
            list.name,
            dataset.describe()
        )));
    }
    if !rest.is_empty() {
        let names: Vec<&str> = rest.iter().map(|c| c.name.as_str()).collect();
        tracing::warn!(
            "{}: scoring columns {:?} and {:?}; ignoring {}",
            dataset.origin(),
            query.name,
            document.name,
            names.join(", ")
        );
    }
    Ok((0..dataset.len())
        .map(|row| TextPair {
            query: query.text(row, 0).unwrap_or_default().to_string(),
            document: document.text(row, 0).unwrap_or_default().to_string(),
        })
        .collect())
}

/// Reads documents for `rank`: the first text column of a `.jsonl`, `.csv`, `.tsv` or
/// `.parquet` file (JSONL lines may also be bare JSON strings), otherwise one document per
/// line of plain text. Blank lines are skipped; a file with no document is an error.
pub fn read_documents(path: &Path) -> Result<Vec<String>, DataError> {
    use super::dataset::FileFormat;
    let documents = match FileFormat::from_path(path) {
        None => read(path)?
            .lines()
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect(),
        Some(FileFormat::Jsonl) => {
            let text = read(path)?;
            if first_line_is_a_string(&text) {
                json_strings(&text, path)?
            } else {
                first_text_column(&parse_jsonl_dataset(&text, path)?)?
            }
        }
        Some(_) => first_text_column(&read_dataset(&DatasetSpec::from_files(vec![
            path.to_path_buf()
        ]))?)?,
    };
    if documents.is_empty() {
        return Err(DatasetError::Columns {
            path: path.to_path_buf(),
            message: "no documents to rank".into(),
        }
        .into());
    }
    Ok(documents)
}

/// The first text column of a file the training reader takes, one document per row.
fn first_text_column(dataset: &Dataset) -> Result<Vec<String>, DataError> {
    let column = dataset
        .columns
        .first()
        .filter(|c| !c.is_list())
        .ok_or_else(|| DatasetError::Columns {
            path: dataset.files.first().cloned().unwrap_or_default(),
            message: format!(
                "needs a text column with one document per row, has {}",
                dataset.describe()
            ),
        })?;
    Ok((0..dataset.len())
        .map(|row| column.text(row, 0).unwrap_or_default().to_string())
        .collect())
}

fn read(path: &Path) -> Result<String, DataError> {
    super::read_text(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn first_line_is_a_string(text: &str) -> bool {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.trim_start().starts_with('"'))
}

/// A JSONL file of bare strings, one document per line.
fn json_strings(text: &str, path: &Path) -> Result<Vec<String>, DataError> {
    let mut documents = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |message: String| DataError::Malformed {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        match serde_json::from_str::<Value>(line) {
            Ok(Value::String(document)) => documents.push(document),
            Ok(other) => {
                return Err(malformed(format!(
                    "expected a JSON string like the first line, found {other}"
                )))
            }
            Err(e) => return Err(malformed(format!("not valid JSON: {e}"))),
        }
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
    fn pairs_take_the_first_two_text_columns_under_any_names() {
        let (_d, path) = file(
            "pairs.jsonl",
            "{\"query\": \"q1\", \"document\": \"d1\"}\n\n{\"query\": \"q2\", \"document\": \"d2\"}\n",
        );
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].document, "d2");
        // STS-B as users have it: sentence1, sentence2, score.
        let (_d, path) = file(
            "sts.csv",
            "sentence1,sentence2,score\nA man plays.,A man is playing.,4.5\nA cat.,A car.,0.5\n",
        );
        let labeled = read_labeled_pairs(&path).unwrap();
        assert_eq!(labeled.len(), 2);
        assert_eq!(labeled[0].0.document, "A man is playing.");
        assert_eq!(labeled[1].1, 0.5);
        let (_d, path) = file("pairs.tsv", "question\tanswer\r\nq\td\r\nq2\td2\n");
        let pairs = read_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].document, "d");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let (_d, path) = file(
            "pairs.jsonl",
            "{\"query\": \"q\", \"document\": \"d\"}\n{\"query\": \"q\"}\n",
        );
        let message = read_pairs(&path).unwrap_err().to_string();
        assert!(
            message.contains("pairs.jsonl:line 2: column \"document\""),
            "{message}"
        );
        let (_d, path) = file("one.jsonl", "{\"query\": \"q\"}\n");
        let message = read_pairs(&path).unwrap_err().to_string();
        assert!(message.contains("needs two text columns"), "{message}");
        let (_d, path) = file("pairs.jsonl", "{\"query\": \"q\", \"document\": \"d\"}\n");
        let message = read_labeled_pairs(&path).unwrap_err().to_string();
        assert!(message.contains("needs a label column"), "{message}");
        let (_d, path) = file("empty.jsonl", "\n\n");
        let message = read_pairs(&path).unwrap_err().to_string();
        assert!(message.contains("empty.jsonl: no rows"), "{message}");
    }

    #[test]
    fn documents_in_every_layout() {
        let (_d, path) = file("docs.txt", "one\n\ntwo\r\n");
        assert_eq!(read_documents(&path).unwrap(), ["one", "two"]);
        let (_d, path) = file("docs.jsonl", "\"one\"\n\"two\"\n");
        assert_eq!(read_documents(&path).unwrap(), ["one", "two"]);
        let (_d, path) = file(
            "docs.jsonl",
            "{\"passage\": \"one\"}\n{\"passage\": \"two\"}\n",
        );
        assert_eq!(read_documents(&path).unwrap(), ["one", "two"]);
        let (_d, path) = file("docs.csv", "text\none\ntwo\n");
        assert_eq!(read_documents(&path).unwrap(), ["one", "two"]);
        let (_d, path) = file("docs.jsonl", "\"one\"\n[1]\n");
        assert!(read_documents(&path)
            .unwrap_err()
            .to_string()
            .contains(":2: expected a JSON string"));
        let (_d, path) = file("docs.txt", "\n");
        assert!(read_documents(&path)
            .unwrap_err()
            .to_string()
            .contains("no documents to rank"));
    }
}
