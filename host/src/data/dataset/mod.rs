//! Training and evaluation datasets from JSONL, CSV/TSV and Parquet files, with the
//! reference's column rules: columns are the loss's inputs in order, the label is the first of
//! `label`, `labels`, `score`, `scores`, and a list-valued column is a document list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crosstrain_plugin_api::{BatchShape, ColumnShape, DataFormat, LabelKind, Labels, TextRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod builder;
mod format_check;
mod readers;
mod spec;
#[cfg(test)]
mod tests;

pub use readers::parse_jsonl_dataset;
pub use spec::{DatasetSpec, FileFormat, LABEL_COLUMNS};

use builder::*;
use readers::*;
use spec::*;

/// A dataset that could not be read or does not fit the loss.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A row is malformed.
    #[error("{path}:{location}: column {column:?}: {message}")]
    Row {
        /// The file.
        path: PathBuf,
        /// `line N` or `row N` (Parquet).
        location: String,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// The columns are wrong as a whole.
    #[error("{path}: {message}")]
    Columns {
        /// The (first) file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The dataset does not fit the loss.
    #[error("{0}")]
    Format(String),
}

/// The texts of one input column.
#[derive(Debug, Clone, PartialEq)]
pub enum TextValues {
    /// One text per row.
    Texts(Vec<String>),
    /// A list of documents per row.
    Lists(Vec<Vec<String>>),
}

/// One input column.
#[derive(Debug, Clone, PartialEq)]
pub struct TextColumn {
    /// Its name.
    pub name: String,
    /// Its values.
    pub values: TextValues,
}

/// The label column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValues {
    /// One number per row.
    Scalars(Vec<f32>),
    /// A list of numbers per row.
    Lists(Vec<Vec<f32>>),
}

/// The label column.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelColumn {
    /// Its name.
    pub name: String,
    /// Its values.
    pub values: LabelValues,
}

/// A dataset in memory: text columns in order, and the label column if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The files it was read from.
    pub files: Vec<PathBuf>,
    /// The loss's inputs, in order.
    pub columns: Vec<TextColumn>,
    /// The label.
    pub label: Option<LabelColumn>,
    /// Malformed rows skipped with `skip_invalid_rows`.
    pub skipped_rows: usize,
    /// Where each row came from, so a row-level error names its own file and line.
    pub(crate) origins: Vec<RowOrigin>,
}

/// The file (index into [`Dataset::files`]) and line (row, for Parquet) a row was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowOrigin {
    file: u32,
    location: Location,
}

/// Reads a dataset.
pub fn read_dataset(spec: &DatasetSpec) -> Result<Dataset, DatasetError> {
    build_dataset(spec, |path| {
        let format = match spec.format.or_else(|| FileFormat::from_path(path)) {
            Some(format) => format,
            None => {
                return Err(DatasetError::Columns {
                    path: path.to_path_buf(),
                    message: "unknown file type; use .jsonl, .csv, .tsv or .parquet, or set \
                              `format`"
                        .into(),
                })
            }
        };
        match format {
            FileFormat::Jsonl => read_jsonl(path, spec),
            FileFormat::Csv => read_delimited(path, spec, b','),
            FileFormat::Tsv => read_delimited(path, spec, b'\t'),
            FileFormat::Parquet => read_parquet(path),
        }
    })
}

/// Builds a dataset from the raw rows `rows_of` gives for each of `spec.files`, applying the
/// spec's selection, renames, label scale, row skipping and limit.
fn build_dataset(
    spec: &DatasetSpec,
    mut rows_of: impl FnMut(&Path) -> Result<Vec<RowResult>, DatasetError>,
) -> Result<Dataset, DatasetError> {
    let first_file = spec
        .files
        .first()
        .cloned()
        .ok_or_else(|| DatasetError::Columns {
            path: PathBuf::from("<dataset>"),
            message: "no files given".into(),
        })?;
    let mut builder: Option<Builder> = None;
    let mut skipped = SkippedRows::default();
    let mut rows_read = 0usize;
    let mut origins = Vec::new();
    'files: for (file_index, path) in spec.files.iter().enumerate() {
        for row in rows_of(path)? {
            let row = match row {
                Ok(row) => row,
                Err(bad) if spec.skip_invalid_rows => {
                    skipped.add(bad.error, bad.lines);
                    continue;
                }
                Err(bad) => return Err(bad.error),
            };
            let mut cells = rename_and_select(row.cells, spec, path, row.location)?;
            cells.retain(|(name, _)| !DROPPED_COLUMNS.contains(&name.as_str()));
            let builder = match &mut builder {
                Some(builder) => builder,
                None => builder.insert(Builder::new(&cells, path, row.location)?),
            };
            match builder.push(cells, spec.label_scale, path, row.location) {
                Ok(()) => {
                    rows_read += 1;
                    origins.push(RowOrigin {
                        file: file_index as u32,
                        location: row.location,
                    });
                }
                Err(error) if spec.skip_invalid_rows => skipped.add(error, 1),
                Err(error) => return Err(error),
            }
            if spec.limit.is_some_and(|limit| rows_read >= limit) {
                break 'files;
            }
        }
    }
    skipped.report();
    let skipped = skipped.rows;
    let builder = builder.ok_or_else(|| DatasetError::Columns {
        path: first_file.clone(),
        message: "no rows".into(),
    })?;
    Ok(builder.finish(spec.files.clone(), skipped, origins))
}

/// The rows `skip_invalid_rows` dropped: counted as rows of the file (a record that ran on
/// over several lines counts each), with the first few errors kept to show.
#[derive(Default)]
struct SkippedRows {
    rows: usize,
    first: Vec<String>,
    errors: usize,
}

impl SkippedRows {
    /// How many errors are shown.
    const SHOWN: usize = 3;

    fn add(&mut self, error: DatasetError, lines: usize) {
        self.rows += lines;
        self.errors += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push(error.to_string());
        }
    }

    /// One warning for them all, with the first few errors.
    fn report(&self) {
        if self.rows == 0 {
            return;
        }
        let more = if self.errors > self.first.len() {
            format!("; and {} more", self.errors - self.first.len())
        } else {
            String::new()
        };
        tracing::warn!(
            skipped = self.rows,
            "skip_invalid_rows: skipped {} malformed row{}: {}{more}",
            self.rows,
            if self.rows == 1 { "" } else { "s" },
            self.first.join("; ")
        );
    }
}

fn rename_and_select(
    cells: Vec<(String, Cell)>,
    spec: &DatasetSpec,
    path: &Path,
    location: Location,
) -> Result<Vec<(String, Cell)>, DatasetError> {
    let renamed: Vec<(String, Cell)> = cells
        .into_iter()
        .map(|(name, cell)| (spec.rename.get(&name).cloned().unwrap_or(name), cell))
        .collect();
    let Some(selection) = &spec.columns else {
        return Ok(renamed);
    };
    let mut by_name: BTreeMap<String, Cell> = renamed.into_iter().collect();
    selection
        .iter()
        .map(|name| match by_name.remove(name) {
            Some(cell) => Ok((name.clone(), cell)),
            None => Err(DatasetError::Row {
                path: path.to_path_buf(),
                location: location.to_string(),
                column: name.clone(),
                message: format!(
                    "missing; the row has {}",
                    quoted_list(by_name.keys().map(String::as_str))
                ),
            }),
        })
        .collect()
}

fn quoted_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        "no other columns".into()
    } else {
        names.join(", ")
    }
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> DatasetError {
    DatasetError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

impl TextColumn {
    /// The text at `(row, item)`.
    pub fn text(&self, row: usize, item: usize) -> Option<&str> {
        match &self.values {
            TextValues::Texts(values) => values.get(row).map(String::as_str),
            TextValues::Lists(values) => values.get(row)?.get(item).map(String::as_str),
        }
    }

    /// Whether the column holds document lists.
    pub fn is_list(&self) -> bool {
        matches!(self.values, TextValues::Lists(_))
    }

    /// Every text of a row (one, or the row's list).
    pub fn row_texts(&self, row: usize) -> Vec<&str> {
        match &self.values {
            TextValues::Texts(values) => values.get(row).map(String::as_str).into_iter().collect(),
            TextValues::Lists(values) => values
                .get(row)
                .map(|l| l.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        }
    }
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self.columns.first().map(|c| &c.values) {
            Some(TextValues::Texts(values)) => values.len(),
            Some(TextValues::Lists(values)) => values.len(),
            None => match self.label.as_ref().map(|l| &l.values) {
                Some(LabelValues::Scalars(values)) => values.len(),
                Some(LabelValues::Lists(values)) => values.len(),
                None => 0,
            },
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Characters of text per row (all columns, all documents): a cheap proxy of its token
    /// count, for length-grouped batching.
    pub fn row_lengths(&self) -> Vec<usize> {
        (0..self.len())
            .map(|row| {
                self.columns
                    .iter()
                    .flat_map(|column| column.row_texts(row))
                    .map(|text| text.chars().count())
                    .sum()
            })
            .collect()
    }

    /// `FILE:line N` (or `row N` for Parquet) of dataset row `row` (0-based), as row errors
    /// write it.
    pub fn row_location(&self, row: usize) -> String {
        match self.origins.get(row) {
            Some(origin) => {
                let file = self
                    .files
                    .get(origin.file as usize)
                    .map_or_else(|| "<dataset>".to_string(), |f| f.display().to_string());
                format!("{file}:{}", origin.location)
            }
            None => format!("{}:row {}", self.origin(), row + 1),
        }
    }

    /// The first file, for messages.
    pub fn origin(&self) -> String {
        match self.files.as_slice() {
            [] => "<dataset>".into(),
            [one] => one.display().to_string(),
            [first, rest @ ..] => format!("{} (+{} files)", first.display(), rest.len()),
        }
    }

    /// The loss's view of the rows `rows`: its shape.
    pub fn batch_shape(&self, rows: &[usize]) -> BatchShape {
        BatchShape {
            rows: rows.len() as u32,
            columns: self
                .columns
                .iter()
                .map(|column| match &column.values {
                    TextValues::Texts(_) => ColumnShape::texts(),
                    TextValues::Lists(values) => {
                        ColumnShape::lists(rows.iter().map(|&r| values[r].len() as u32).collect())
                    }
                })
                .collect(),
        }
    }

    /// The labels of the rows `rows`.
    pub fn batch_labels(&self, rows: &[usize]) -> Labels {
        match self.label.as_ref().map(|l| &l.values) {
            None => Labels::none(),
            Some(LabelValues::Scalars(values)) => {
                Labels::per_row(rows.iter().map(|&r| values[r]).collect())
            }
            Some(LabelValues::Lists(values)) => {
                let lists: Vec<&[f32]> = rows.iter().map(|&r| values[r].as_slice()).collect();
                Labels::per_row_lists(&lists)
            }
        }
    }

    /// The text a plan refers to, for a batch made of `rows`.
    pub fn text(&self, rows: &[usize], reference: TextRef) -> Option<&str> {
        let row = *rows.get(reference.row as usize)?;
        self.columns
            .get(reference.column as usize)?
            .text(row, reference.item as usize)
    }
}
