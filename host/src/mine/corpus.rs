//! The de-duplicated candidate corpus, held once in memory.
//!
//! The reference builds `list(dict.fromkeys(corpus + positives))` and a `{text: index}` dict,
//! which keeps every text twice (list and dict keys) plus Python object overhead. Here the
//! texts live in one arena string and the index maps a 64-bit hash to a position, so a corpus
//! costs its bytes plus about 20 bytes per document.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::MineError;
use crate::data::dataset::{read_dataset, DatasetSpec, FileFormat, TextValues};

/// De-duplicated texts in first-seen order.
#[derive(Debug, Default)]
pub struct Corpus {
    arena: String,
    ends: Vec<usize>,
    by_hash: HashMap<u64, u32>,
    /// Texts whose hash collided with a different text (practically never used).
    collisions: HashMap<String, u32>,
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

impl Corpus {
    /// An empty corpus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct texts.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text at `index`.
    pub fn get(&self, index: u32) -> &str {
        let index = index as usize;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.arena[start..self.ends[index]]
    }

    /// Every text in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|i| self.get(i))
    }

    /// The index of `text`, if present.
    pub fn position(&self, text: &str) -> Option<u32> {
        match self.by_hash.get(&hash_of(text)) {
            Some(&index) if self.get(index) == text => Some(index),
            Some(_) => self.collisions.get(text).copied(),
            None => None,
        }
    }

    /// Adds `text` unless present; returns its index either way.
    pub fn insert(&mut self, text: &str) -> u32 {
        let hash = hash_of(text);
        match self.by_hash.get(&hash) {
            Some(&index) if self.get(index) == text => return index,
            Some(_) => {
                if let Some(&index) = self.collisions.get(text) {
                    return index;
                }
                let index = self.push(text);
                self.collisions.insert(text.to_string(), index);
                return index;
            }
            None => {}
        }
        let index = self.push(text);
        self.by_hash.insert(hash, index);
        index
    }

    fn push(&mut self, text: &str) -> u32 {
        self.arena.push_str(text);
        self.ends.push(self.arena.len());
        u32::try_from(self.ends.len() - 1).expect("a corpus of more than 4 billion texts")
    }

    /// Bytes held (texts and index), for the memory report.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.by_hash.capacity() * (8 + 4 + 8)
    }
}

/// Reads a corpus file into `corpus`, one document per line (`.txt`), per JSON line (a
/// string, or an object whose `column` — default `text`, else `document` — holds it), or
/// from a column of a CSV/TSV/Parquet file. Text and JSONL files are streamed: only the
/// de-duplicated texts are kept. Returns the number of documents read.
pub fn read_corpus(
    path: &Path,
    column: Option<&str>,
    corpus: &mut Corpus,
) -> Result<usize, MineError> {
    let io = |source| MineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let malformed = |line: usize, message: String| MineError::Input {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    match extension.as_str() {
        "txt" | "jsonl" | "json" => {
            let json = extension != "txt";
            let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
            let mut read = 0usize;
            for (index, line) in reader.lines().enumerate() {
                let line = line.map_err(|error| match error.kind() {
                    std::io::ErrorKind::InvalidData => malformed(index + 1, "invalid UTF-8".into()),
                    _ => io(error),
                })?;
                let line = crate::data::strip_byte_order_mark(&line, index == 0);
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                if !json {
                    corpus.insert(line);
                    read += 1;
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| malformed(index + 1, format!("not valid JSON: {e}")))?;
                let text = match &value {
                    Value::String(text) => text.as_str(),
                    Value::Object(object) => {
                        let keys: Vec<&str> = match column {
                            Some(column) => vec![column],
                            None => vec!["text", "document"],
                        };
                        let found = keys.iter().find_map(|k| object.get(*k));
                        match found {
                            Some(Value::String(text)) => text.as_str(),
                            Some(other) => {
                                return Err(malformed(
                                    index + 1,
                                    format!("column {:?}: expected a string, got {other}", keys[0]),
                                ))
                            }
                            None => {
                                return Err(malformed(
                                    index + 1,
                                    format!(
                                        "no column {}; this line has {}",
                                        keys.iter()
                                            .map(|k| format!("{k:?}"))
                                            .collect::<Vec<_>>()
                                            .join(" or "),
                                        object.keys().cloned().collect::<Vec<_>>().join(", ")
                                    ),
                                ))
                            }
                        }
                    }
                    _ => {
                        return Err(malformed(
                            index + 1,
                            "expected a string or an object with a text column".into(),
                        ))
                    }
                };
                corpus.insert(text);
                read += 1;
            }
            Ok(read)
        }
        _ => {
            if FileFormat::from_path(path).is_none() {
                return Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: "unknown corpus format; use .txt (one document per line), .jsonl, \
                              .csv, .tsv or .parquet"
                        .into(),
                });
            }
            let mut spec = DatasetSpec::from_files(vec![path.to_path_buf()]);
            if let Some(column) = column {
                spec.columns = Some(vec![column.to_string()]);
            }
            let dataset = read_dataset(&spec)?;
            let Some(first) = dataset.columns.first() else {
                return Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: "no text column".into(),
                });
            };
            match &first.values {
                TextValues::Texts(texts) => {
                    for text in texts {
                        corpus.insert(text);
                    }
                    Ok(texts.len())
                }
                TextValues::Lists(_) => Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: format!("column {:?} holds lists, not texts", first.name),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_occurrence_order() {
        let mut corpus = Corpus::new();
        assert_eq!(corpus.insert("b"), 0);
        assert_eq!(corpus.insert("a"), 1);
        assert_eq!(corpus.insert("b"), 0);
        assert_eq!(corpus.insert(""), 2);
        assert_eq!(corpus.insert("ab"), 3);
        assert_eq!(corpus.len(), 4);
        assert_eq!(corpus.iter().collect::<Vec<_>>(), ["b", "a", "", "ab"]);
        assert_eq!(corpus.position("a"), Some(1));
        assert_eq!(corpus.position("c"), None);
    }
}
