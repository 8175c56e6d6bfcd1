//! Reading the corpus and writing mined rows as JSONL, in the reference's four layouts.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::corpus::Corpus;
use super::select::is_found;
use super::{MineError, MineOptions, Mined, MiningInput};

/// The layout of the mined dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `(anchor, positive, negative)`, one row per found negative.
    Triplet,
    /// `(anchor, positive, negative_1..negative_N)`, only rows with all N negatives.
    NTuple,
    /// `(anchor, <positive column>, label)`: 1 for positives, 0 for negatives.
    LabeledPair,
    /// `(anchor, <positive column>: [pos, neg..], labels: [1, 0..])`, one row per positive.
    LabeledList,
}

super::named_values!(
    OutputFormat,
    "output format",
    [
        (Triplet, "triplet"),
        (NTuple, "n-tuple"),
        (LabeledPair, "labeled-pair"),
        (LabeledList, "labeled-list")
    ]
);

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Written {
    /// Rows in the output file.
    pub rows: usize,
    /// Rows the reference would call possible (its "could not find enough negatives"
    /// count is `possible − rows`).
    pub possible_rows: usize,
    /// The negatives' scores, once per row they appear in (for the statistics).
    #[serde(skip)]
    pub negative_scores: Vec<f32>,
    /// Positive minus negative score per (positive, negative) written.
    #[serde(skip)]
    pub differences: Vec<f32>,
}

/// A score as JSON, printed with f32's shortest representation (0.3, not 0.30000001).
fn score_value(score: f32) -> Value {
    format!("{score}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Writes the mined rows to `path` as JSON lines (see [`write_jsonl`]).
pub fn write_output(
    path: &Path,
    input: &MiningInput,
    corpus: &Corpus,
    mined: &Mined,
    options: &MineOptions,
    overwrite: bool,
) -> Result<Written, MineError> {
    write_jsonl(path, overwrite, &mut |emit| {
        write_rows(input, corpus, mined, options, emit)
    })
}

/// Receives one output row at a time.
pub type RowSink<'a> = dyn FnMut(Map<String, Value>) -> Result<(), MineError> + 'a;

/// Writes JSON lines to `path` through a temporary file renamed into place, so a failed run
/// never leaves half a file. An existing file is an error unless `overwrite`; a path without
/// a `.jsonl` (or `.json`) extension is refused rather than written in a layout its name
/// does not suggest. `rows` hands each row to the emitter it is given.
pub fn write_jsonl<T>(
    path: &Path,
    overwrite: bool,
    rows: &mut dyn FnMut(&mut RowSink<'_>) -> Result<T, MineError>,
) -> Result<T, MineError> {
    let is_jsonl = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    if !is_jsonl {
        return Err(MineError::Options(format!(
            "{}: the output is written as JSON lines; give it a .jsonl extension",
            path.display()
        )));
    }
    if path.exists() && !overwrite {
        return Err(MineError::Options(format!(
            "{} already exists; pass --overwrite to replace it",
            path.display()
        )));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MineError::Io { path, source }
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rows.jsonl".into());
    let temporary = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        let mut writer = BufWriter::new(file);
        let value = rows(&mut |row| {
            serde_json::to_writer(&mut writer, &Value::Object(row))
                .map_err(std::io::Error::from)
                .and_then(|()| writer.write_all(b"\n"))
                .map_err(io(&temporary))
        })?;
        let file = writer
            .into_inner()
            .map_err(|e| io(&temporary)(e.into_error()))?;
        file.sync_all().map_err(io(&temporary))?;
        std::fs::rename(&temporary, path).map_err(io(path))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Builds the rows of the chosen layout, in the reference's order, and hands each to `emit`.
pub fn write_rows(
    input: &MiningInput,
    corpus: &Corpus,
    mined: &Mined,
    options: &MineOptions,
    emit: &mut RowSink<'_>,
) -> Result<Written, MineError> {
    let anchor = input.anchor_column.as_str();
    let positive = input.positive_column.as_str();
    let scores = options.output_scores;
    let num_negatives = mined.selection.num_negatives;
    let mut written = Written::default();
    let mut pair = 0usize;
    for (query, positives) in input.positives.iter().enumerate() {
        let query_text = input.queries[query].as_str();
        let negatives = &mined.negatives[query];
        let found: Vec<_> = negatives.iter().filter(|c| is_found(c)).collect();
        let pair_scores = &mined.positive_scores[pair..pair + positives.len()];
        pair += positives.len();
        let mut row = |pairs: Vec<(&str, Value)>| -> Result<(), MineError> {
            written.rows += 1;
            emit(
                pairs
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value))
                    .collect(),
            )
        };
        match options.effective_format() {
            super::OutputFormat::Triplet => {
                for (&document, &positive_score) in positives.iter().zip(pair_scores) {
                    for negative in &found {
                        let mut fields = vec![
                            (anchor, Value::from(query_text)),
                            (positive, Value::from(corpus.get(document))),
                            ("negative", Value::from(corpus.get(negative.document))),
                        ];
                        if scores {
                            fields.push((
                                "scores",
                                Value::Array(vec![
                                    score_value(positive_score),
                                    score_value(negative.score),
                                ]),
                            ));
                        }
                        row(fields)?;
                        written.negative_scores.push(negative.score);
                        written.differences.push(positive_score - negative.score);
                    }
                }
                written.possible_rows += positives.len() * num_negatives;
            }
            super::OutputFormat::LabeledPair => {
                let (key, positive_value): (&str, fn(f32) -> Value) = if scores {
                    ("score", score_value)
                } else {
                    ("label", |_| Value::from(1))
                };
                for (&document, &positive_score) in positives.iter().zip(pair_scores) {
                    row(vec![
                        (anchor, Value::from(query_text)),
                        (positive, Value::from(corpus.get(document))),
                        (key, positive_value(positive_score)),
                    ])?;
                }
                for negative in &found {
                    let value = if scores {
                        score_value(negative.score)
                    } else {
                        Value::from(0)
                    };
                    row(vec![
                        (anchor, Value::from(query_text)),
                        (positive, Value::from(corpus.get(negative.document))),
                        (key, value),
                    ])?;
                }
                for &positive_score in pair_scores {
                    for negative in &found {
                        written.negative_scores.push(negative.score);
                        written.differences.push(positive_score - negative.score);
                    }
                }
                written.possible_rows += positives.len() + num_negatives;
            }
            super::OutputFormat::NTuple => {
                for (&document, &positive_score) in positives.iter().zip(pair_scores) {
                    if found.len() < num_negatives {
                        continue;
                    }
                    let mut fields = vec![
                        (anchor, Value::from(query_text)),
                        (positive, Value::from(corpus.get(document))),
                    ];
                    let names: Vec<String> = (1..=num_negatives)
                        .map(|i| format!("negative_{i}"))
                        .collect();
                    for (name, negative) in names.iter().zip(&found) {
                        fields.push((name.as_str(), Value::from(corpus.get(negative.document))));
                    }
                    if scores {
                        let mut values = vec![score_value(positive_score)];
                        values.extend(found.iter().map(|n| score_value(n.score)));
                        fields.push(("scores", Value::Array(values)));
                    }
                    row(fields)?;
                    for negative in &found {
                        written.negative_scores.push(negative.score);
                        written.differences.push(positive_score - negative.score);
                    }
                }
                written.possible_rows += positives.len();
            }
            super::OutputFormat::LabeledList => {
                for (&document, &positive_score) in positives.iter().zip(pair_scores) {
                    if found.is_empty() {
                        continue;
                    }
                    let mut documents = vec![Value::from(corpus.get(document))];
                    documents.extend(found.iter().map(|n| Value::from(corpus.get(n.document))));
                    let labels = if scores {
                        let mut values = vec![score_value(positive_score)];
                        values.extend(found.iter().map(|n| score_value(n.score)));
                        ("scores", Value::Array(values))
                    } else {
                        let mut values = vec![Value::from(1)];
                        values.extend(found.iter().map(|_| Value::from(0)));
                        ("labels", Value::Array(values))
                    };
                    row(vec![
                        (anchor, Value::from(query_text)),
                        (positive, Value::Array(documents)),
                        labels,
                    ])?;
                    for negative in &found {
                        written.negative_scores.push(negative.score);
                        written.differences.push(positive_score - negative.score);
                    }
                }
                written.possible_rows += positives.len();
            }
        }
    }
    Ok(written)
}
