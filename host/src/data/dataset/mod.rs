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
mod cache;
mod format_check;
mod readers;
mod spec;
mod storage;
#[cfg(test)]
mod tests;

pub use cache::{cache_dir, CACHE_ENV};
pub use readers::parse_jsonl_dataset;
pub use spec::{DatasetSpec, FileFormat, Storage, LABEL_COLUMNS};
pub use storage::{TextList, TextLists, Texts};

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
    Texts(Texts),
    /// A list of documents per row.
    Lists(TextLists),
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
    pub(crate) origins: Origins,
    /// The memory-mapped cache file the texts are read from (`storage = "disk"`), if any.
    pub cache: Option<PathBuf>,
}

/// The file and line (row, for Parquet) each row was read from, in 4 bytes a row: a file's
/// rows are consecutive, so the file is a range and only the line number is per row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Origins {
    /// One past each file's last row (cumulative), for the files that gave rows so far.
    file_ends: Vec<usize>,
    /// Whether each file is Parquet (its locations are rows, not lines).
    parquet: Vec<bool>,
    /// The line (or row) number of every row.
    numbers: Vec<u32>,
}

impl Origins {
    /// Records that the next row came from file `file` (files in order) at `location`.
    fn push(&mut self, file: usize, location: Location) {
        while self.file_ends.len() <= file {
            self.file_ends.push(self.numbers.len());
            self.parquet.push(location.parquet);
        }
        self.numbers.push(location.number);
        self.file_ends[file] = self.numbers.len();
    }

    /// The file index and location of `row`.
    fn get(&self, row: usize) -> Option<(usize, Location)> {
        let number = *self.numbers.get(row)?;
        let file = self.file_ends.partition_point(|&end| end <= row);
        Some((
            file,
            Location {
                number,
                parquet: *self.parquet.get(file)?,
            },
        ))
    }

    /// Number of rows recorded.
    pub(crate) fn len(&self) -> usize {
        self.numbers.len()
    }
}

/// Reads a dataset, into memory or through the on-disk cache as `spec.storage` says.
pub fn read_dataset(spec: &DatasetSpec) -> Result<Dataset, DatasetError> {
    read_dataset_cached_in(spec, &cache_dir())
}

/// [`read_dataset`] with the cache in `cache_dir`.
fn read_dataset_cached_in(spec: &DatasetSpec, cache_dir: &Path) -> Result<Dataset, DatasetError> {
    spec.check()?;
    if !cache::wants_disk(spec) {
        return build_dataset(spec, |path, progress| read_file(spec, path, progress), None);
    }
    let entry = cache::CacheEntry::for_spec(spec, cache_dir)?;
    if let Some(dataset) = entry.open_if_current()? {
        return Ok(dataset);
    }
    let writer = entry.writer()?;
    build_dataset(
        spec,
        |path, progress| read_file(spec, path, progress),
        Some(writer),
    )
}

/// The raw rows of one of `spec`'s files, by its format.
fn read_file<'a>(
    spec: &'a DatasetSpec,
    path: &'a Path,
    progress: &indicatif::ProgressBar,
) -> Result<Rows<'a>, DatasetError> {
    match file_format(spec, path)? {
        FileFormat::Jsonl => read_jsonl(path, progress),
        FileFormat::Csv => read_delimited(path, spec, b',', progress),
        FileFormat::Tsv => read_delimited(path, spec, b'\t', progress),
        FileFormat::Parquet => read_parquet(path, progress),
    }
}

/// The format of one of `spec`'s files: `spec.format`, else its extension.
fn file_format(spec: &DatasetSpec, path: &Path) -> Result<FileFormat, DatasetError> {
    spec.format
        .or_else(|| FileFormat::from_path(path))
        .ok_or_else(|| DatasetError::Columns {
            path: path.to_path_buf(),
            message: "unknown file type; use .jsonl, .csv, .tsv or .parquet, or set `format`"
                .into(),
        })
}

/// Builds a dataset from the raw rows `rows_of` gives for each of `spec.files`, applying the
/// spec's selection, renames, label scale, row skipping and limit. With a cache writer, the
/// rows go to the cache file a chunk at a time and the dataset is read back from it mapped.
fn build_dataset<'a>(
    spec: &'a DatasetSpec,
    mut rows_of: impl FnMut(&'a Path, &indicatif::ProgressBar) -> Result<Rows<'a>, DatasetError>,
    mut cache: Option<cache::CacheWriter>,
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
    let mut origins = Origins::default();
    'files: for (file_index, path) in spec.files.iter().enumerate() {
        let progress = cache
            .as_ref()
            .map_or_else(indicatif::ProgressBar::hidden, |cache| {
                cache.progress_for(path)
            });
        for row in rows_of(path, &progress)? {
            let row = match row? {
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
                    origins.push(file_index, row.location);
                    if let Some(cache) = &mut cache {
                        if builder.chunk_is_full() {
                            cache.write_chunk(builder, &origins)?;
                        }
                    }
                }
                Err(error) if spec.skip_invalid_rows => skipped.add(error, 1),
                Err(error) => return Err(error),
            }
            if spec.limit.is_some_and(|limit| rows_read >= limit) {
                progress.finish_and_clear();
                break 'files;
            }
        }
        progress.finish_and_clear();
    }
    let skipped_report = skipped.report();
    let mut builder = builder.ok_or_else(|| DatasetError::Columns {
        path: first_file.clone(),
        message: "no rows".into(),
    })?;
    match cache {
        None => Ok(builder.finish(spec.files.clone(), skipped.rows, origins)),
        Some(mut cache) => {
            cache.write_chunk(&mut builder, &origins)?;
            cache.finish(&builder, &origins, skipped.rows, skipped_report)
        }
    }
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

    /// One warning for them all, with the first few errors; returns it (the cache keeps it
    /// to repeat when the dataset is read from there).
    fn report(&self) -> Option<String> {
        if self.rows == 0 {
            return None;
        }
        let more = if self.errors > self.first.len() {
            format!("; and {} more", self.errors - self.first.len())
        } else {
            String::new()
        };
        let report = format!(
            "skip_invalid_rows: skipped {} malformed row{}: {}{more}",
            self.rows,
            if self.rows == 1 { "" } else { "s" },
            self.first.join("; ")
        );
        tracing::warn!(skipped = self.rows, "{report}");
        Some(report)
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
    // A rename onto a column the file already has would leave two of one name.
    if !spec.rename.is_empty() {
        for (index, (name, _)) in renamed.iter().enumerate() {
            if renamed[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location: location.to_string(),
                    column: name.clone(),
                    message: "two columns have this name after `rename`; rename the other \
                              one too, or select columns with `columns`"
                        .into(),
                });
            }
        }
    }
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
            TextValues::Texts(values) => values.get(row),
            TextValues::Lists(values) => values.get(row)?.get(item),
        }
    }

    /// Whether the column holds document lists.
    pub fn is_list(&self) -> bool {
        matches!(self.values, TextValues::Lists(_))
    }

    /// Every text of a row (one, or the row's list).
    pub fn row_texts(&self, row: usize) -> Vec<&str> {
        match &self.values {
            TextValues::Texts(values) => values.get(row).into_iter().collect(),
            TextValues::Lists(values) => values
                .get(row)
                .map(|list| list.iter().collect())
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
            Some((file, location)) => {
                let file = self
                    .files
                    .get(file)
                    .map_or_else(|| "<dataset>".to_string(), |f| f.display().to_string());
                format!("{file}:{location}")
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
                    TextValues::Lists(values) => ColumnShape::lists(
                        rows.iter()
                            .map(|&r| values.get(r).map_or(0, |list| list.len() as u32))
                            .collect(),
                    ),
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
