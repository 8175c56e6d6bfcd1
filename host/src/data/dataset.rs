//! Training and evaluation datasets from JSONL, CSV/TSV and Parquet files, with the
//! reference's column rules: columns are the loss's inputs in order, the label is the first of
//! `label`, `labels`, `score`, `scores`, and a list-valued column is a document list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crosstrain_plugin_api::{BatchShape, ColumnShape, DataFormat, LabelKind, Labels, TextRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The label column's possible names, in the reference's order of preference.
pub const LABEL_COLUMNS: [&str; 4] = ["label", "labels", "score", "scores"];

/// A column the reference's collator drops.
const DROPPED_COLUMNS: [&str; 1] = ["dataset_name"];

/// Where a dataset comes from and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// One or more files, read in order and concatenated. The format follows the extension
    /// (`.jsonl`/`.json`, `.csv`, `.tsv`, `.parquet`) unless `format` is set.
    #[serde(deserialize_with = "super::one_or_many")]
    #[schemars(with = "Vec<PathBuf>")]
    pub files: Vec<PathBuf>,
    /// `jsonl`, `csv`, `tsv` or `parquet`; default: from each file's extension.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// The columns to use, in this order (after `rename`); default: every column in file
    /// order. The label column may be anywhere.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Renames applied when reading, `{old = "new"}`, e.g. `{score = "label"}`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// CSV/TSV: whether the first line names the columns (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// CSV/TSV without a header: the column names, in file order.
    #[serde(default)]
    pub column_names: Option<Vec<String>>,
    /// CSV/TSV: whether `"` quotes fields (default true). STS-B's files need `false`.
    #[serde(default = "default_true")]
    pub quoting: bool,
    /// CSV/TSV: ignore fields beyond the named columns instead of failing on them.
    #[serde(default)]
    pub ignore_extra_fields: bool,
    /// Every label is multiplied by this (e.g. 0.2 turns STS-B's 0..5 scores into 0..1).
    #[serde(default = "default_one")]
    pub label_scale: f64,
    /// Skip malformed rows (counted in the log) instead of failing on the first one.
    #[serde(default)]
    pub skip_invalid_rows: bool,
    /// Use only the first this many rows.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_true() -> bool {
    true
}

fn default_one() -> f64 {
    1.0
}

impl DatasetSpec {
    /// A spec for files read with every default.
    pub fn from_files(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            format: None,
            columns: None,
            rename: BTreeMap::new(),
            header: true,
            column_names: None,
            quoting: true,
            ignore_extra_fields: false,
            label_scale: 1.0,
            skip_invalid_rows: false,
            limit: None,
        }
    }

    /// Resolves relative file paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for file in &mut self.files {
            if file.is_relative() {
                *file = crate::fsutil::tidy_path(&base.join(&*file));
            }
        }
    }
}

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format an extension implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "jsonl" | "json" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

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
}

/// One cell before typing.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Number(f64),
    Texts(Vec<String>),
    Numbers(Vec<f64>),
    Other(&'static str),
}

impl Cell {
    fn describe(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Text(_) => "a string",
            Cell::Number(_) => "a number",
            Cell::Texts(_) => "a list of strings",
            Cell::Numbers(_) => "a list of numbers",
            Cell::Other(what) => what,
        }
    }

    fn from_json(value: &Value) -> Cell {
        match value {
            Value::Null => Cell::Null,
            Value::String(text) => Cell::Text(text.clone()),
            Value::Number(n) => n.as_f64().map_or(Cell::Other("a number"), Cell::Number),
            Value::Bool(b) => Cell::Number(if *b { 1.0 } else { 0.0 }),
            Value::Array(items) => {
                if let Some(texts) = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                {
                    if !items.is_empty() {
                        return Cell::Texts(texts);
                    }
                }
                if let Some(numbers) = items.iter().map(Value::as_f64).collect::<Option<Vec<_>>>() {
                    return Cell::Numbers(numbers);
                }
                Cell::Other("a list of mixed values")
            }
            Value::Object(_) => Cell::Other("an object"),
        }
    }
}

/// One raw row with where it came from.
struct RawRow {
    location: String,
    cells: Vec<(String, Cell)>,
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
    let mut skipped = 0usize;
    let mut rows_read = 0usize;
    'files: for path in &spec.files {
        for row in rows_of(path)? {
            let row = match row {
                Ok(row) => row,
                Err(error) if spec.skip_invalid_rows => {
                    tracing::warn!("skipping a malformed row: {error}");
                    skipped += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut cells = rename_and_select(row.cells, spec, path, &row.location)?;
            cells.retain(|(name, _)| !DROPPED_COLUMNS.contains(&name.as_str()));
            let builder = match &mut builder {
                Some(builder) => builder,
                None => builder.insert(Builder::new(&cells, path, &row.location)?),
            };
            match builder.push(cells, spec.label_scale, path, &row.location) {
                Ok(()) => rows_read += 1,
                Err(error) if spec.skip_invalid_rows => {
                    tracing::warn!("skipping a malformed row: {error}");
                    skipped += 1;
                }
                Err(error) => return Err(error),
            }
            if spec.limit.is_some_and(|limit| rows_read >= limit) {
                break 'files;
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "skipped {skipped} malformed rows in {}",
            first_file.display()
        );
    }
    let builder = builder.ok_or_else(|| DatasetError::Columns {
        path: first_file.clone(),
        message: "no rows".into(),
    })?;
    Ok(builder.finish(spec.files.clone(), skipped))
}

fn rename_and_select(
    cells: Vec<(String, Cell)>,
    spec: &DatasetSpec,
    path: &Path,
    location: &str,
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

type RowResult = Result<RawRow, DatasetError>;

fn read_jsonl(path: &Path, _spec: &DatasetSpec) -> Result<Vec<RowResult>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    Ok(parse_jsonl(&text, path))
}

fn parse_jsonl(text: &str, path: &Path) -> Vec<RowResult> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let location = format!("line {}", index + 1);
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(object)) => Ok(RawRow {
                    location,
                    cells: object
                        .iter()
                        .map(|(name, value)| (name.clone(), Cell::from_json(value)))
                        .collect(),
                }),
                Ok(_) => Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location,
                    column: "<row>".into(),
                    message: "expected a JSON object".into(),
                }),
                Err(e) => Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location,
                    column: "<row>".into(),
                    message: format!("not valid JSON: {e}"),
                }),
            }
        })
        .collect()
}

/// A dataset from JSONL text (built-in workloads); `origin` names it in errors.
pub fn parse_jsonl_dataset(text: &str, origin: &Path) -> Result<Dataset, DatasetError> {
    build_dataset(
        &DatasetSpec::from_files(vec![origin.to_path_buf()]),
        |path| Ok(parse_jsonl(text, path)),
    )
}

fn read_delimited(
    path: &Path,
    spec: &DatasetSpec,
    delimiter: u8,
) -> Result<Vec<RowResult>, DatasetError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .quoting(spec.quoting)
        .flexible(true)
        .from_path(path)
        .map_err(|e| io_error(path, e))?;
    let mut records = reader.records();
    let names: Vec<String> = match (&spec.column_names, spec.header) {
        (Some(names), false) => names.clone(),
        (None, true) => match records.next() {
            Some(Ok(header)) => header.iter().map(|s| s.trim().to_string()).collect(),
            Some(Err(e)) => return Err(io_error(path, e)),
            None => return Ok(Vec::new()),
        },
        (Some(_), true) => {
            return Err(DatasetError::Columns {
                path: path.to_path_buf(),
                message: "`column_names` is for files without a header; set `header = false`"
                    .into(),
            })
        }
        (None, false) => {
            return Err(DatasetError::Columns {
                path: path.to_path_buf(),
                message: "a file without a header needs `column_names`".into(),
            })
        }
    };
    let label_names: Vec<String> = LABEL_COLUMNS
        .iter()
        .map(|label| {
            // A label may arrive under another name that `rename` maps to a label name.
            spec.rename
                .iter()
                .find(|(_, new)| new.as_str() == *label)
                .map_or_else(|| label.to_string(), |(old, _)| old.clone())
        })
        .collect();
    Ok(records
        .map(|record| {
            let record = record.map_err(|e| io_error(path, e))?;
            let line = record.position().map_or(0, |p| p.line());
            let location = format!("line {line}");
            if record.len() < names.len() {
                return Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location,
                    column: names[record.len()].clone(),
                    message: format!(
                        "missing: the line has {} fields, the header {}",
                        record.len(),
                        names.len()
                    ),
                });
            }
            if record.len() > names.len() && !spec.ignore_extra_fields {
                return Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location,
                    column: format!("#{}", names.len() + 1),
                    message: format!(
                        "the line has {} fields but there are {} columns (set \
                         `ignore_extra_fields = true` to drop the rest)",
                        record.len(),
                        names.len()
                    ),
                });
            }
            let cells = names
                .iter()
                .zip(record.iter())
                .map(|(name, field)| {
                    let field = field.trim_end_matches('\r');
                    let cell = if label_names.contains(name) {
                        parse_label_field(field)
                    } else {
                        Cell::Text(field.to_string())
                    };
                    (name.clone(), cell)
                })
                .collect();
            Ok(RawRow { location, cells })
        })
        .collect())
}

/// A CSV label: a number, or a JSON list of numbers.
fn parse_label_field(field: &str) -> Cell {
    let trimmed = field.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Value>(trimmed)
            .map_or(Cell::Text(field.to_string()), |v| Cell::from_json(&v));
    }
    trimmed
        .parse::<f64>()
        .map_or(Cell::Text(field.to_string()), Cell::Number)
}

fn read_parquet(path: &Path) -> Result<Vec<RowResult>, DatasetError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| io_error(path, e))?;
    let rows = reader.get_row_iter(None).map_err(|e| io_error(path, e))?;
    fn number(field: &Field) -> Option<f64> {
        Some(match field {
            Field::Bool(b) => f64::from(u8::from(*b)),
            Field::Byte(v) => f64::from(*v),
            Field::Short(v) => f64::from(*v),
            Field::Int(v) => f64::from(*v),
            Field::Long(v) => *v as f64,
            Field::UByte(v) => f64::from(*v),
            Field::UShort(v) => f64::from(*v),
            Field::UInt(v) => f64::from(*v),
            Field::ULong(v) => *v as f64,
            Field::Float(v) => f64::from(*v),
            Field::Double(v) => *v,
            _ => return None,
        })
    }
    fn cell(field: &Field) -> Cell {
        match field {
            Field::Null => Cell::Null,
            Field::Str(text) => Cell::Text(text.clone()),
            Field::ListInternal(list) => {
                let elements = list.elements();
                if let Some(texts) = elements
                    .iter()
                    .map(|e| match e {
                        Field::Str(text) => Some(text.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                {
                    if !elements.is_empty() {
                        return Cell::Texts(texts);
                    }
                }
                elements
                    .iter()
                    .map(number)
                    .collect::<Option<Vec<_>>>()
                    .map_or(Cell::Other("a list of mixed values"), Cell::Numbers)
            }
            other => number(other).map_or(Cell::Other("an unsupported Parquet type"), Cell::Number),
        }
    }
    Ok(rows
        .enumerate()
        .map(|(index, row)| {
            let row = row.map_err(|e| io_error(path, e))?;
            Ok(RawRow {
                location: format!("row {}", index + 1),
                cells: row
                    .get_column_iter()
                    .map(|(name, field)| (name.clone(), cell(field)))
                    .collect(),
            })
        })
        .collect())
}

/// Typed columns, filled row by row; the first row fixes the column set and types.
struct Builder {
    names: Vec<String>,
    label_index: Option<usize>,
    text_kinds: Vec<bool>,
    texts: Vec<TextValues>,
    label_is_list: bool,
    labels: LabelValues,
}

impl Builder {
    fn new(cells: &[(String, Cell)], path: &Path, location: &str) -> Result<Self, DatasetError> {
        let names: Vec<String> = cells.iter().map(|(n, _)| n.clone()).collect();
        let label_index = LABEL_COLUMNS
            .iter()
            .find_map(|label| names.iter().position(|n| n == label));
        let mut text_kinds = Vec::new();
        for (index, (name, cell)) in cells.iter().enumerate() {
            if Some(index) == label_index {
                continue;
            }
            let is_list = match cell {
                Cell::Text(_) => false,
                Cell::Texts(_) => true,
                other => {
                    return Err(DatasetError::Row {
                        path: path.to_path_buf(),
                        location: location.to_string(),
                        column: name.clone(),
                        message: format!(
                            "an input column must hold a string or a list of strings, got {}",
                            other.describe()
                        ),
                    })
                }
            };
            text_kinds.push(is_list);
        }
        let label_is_list = label_index.is_some_and(|i| matches!(cells[i].1, Cell::Numbers(_)));
        Ok(Self {
            texts: text_kinds
                .iter()
                .map(|&is_list| {
                    if is_list {
                        TextValues::Lists(Vec::new())
                    } else {
                        TextValues::Texts(Vec::new())
                    }
                })
                .collect(),
            names,
            label_index,
            text_kinds,
            label_is_list,
            labels: if label_is_list {
                LabelValues::Lists(Vec::new())
            } else {
                LabelValues::Scalars(Vec::new())
            },
        })
    }

    fn push(
        &mut self,
        cells: Vec<(String, Cell)>,
        label_scale: f64,
        path: &Path,
        location: &str,
    ) -> Result<(), DatasetError> {
        let row_error = |column: &str, message: String| DatasetError::Row {
            path: path.to_path_buf(),
            location: location.to_string(),
            column: column.to_string(),
            message,
        };
        let names: Vec<&str> = cells.iter().map(|(n, _)| n.as_str()).collect();
        if names != self.names.iter().map(String::as_str).collect::<Vec<_>>() {
            let missing: Vec<&str> = self
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !names.contains(n))
                .collect();
            let unknown: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !self.names.iter().any(|m| m == n))
                .collect();
            let (column, message) = match (missing.first(), unknown.first()) {
                (Some(first), _) => (*first, "missing in this row".to_string()),
                (None, Some(first)) => (
                    *first,
                    format!(
                        "unknown column; the first row has {} (use `columns` to select)",
                        quoted_list(self.names.iter().map(String::as_str))
                    ),
                ),
                (None, None) => (
                    "<row>",
                    "columns in another order than the first row".into(),
                ),
            };
            return Err(row_error(column, message));
        }
        // Type-check everything before storing anything, so a bad row leaves no trace.
        let mut text_cells = Vec::with_capacity(self.text_kinds.len());
        let mut label_cell = None;
        for (index, (name, cell)) in cells.into_iter().enumerate() {
            if Some(index) == self.label_index {
                let label = match (cell, self.label_is_list) {
                    (Cell::Number(v), false) => LabelCell::Scalar(v),
                    (Cell::Numbers(v), true) => LabelCell::List(v),
                    (other, is_list) => {
                        return Err(row_error(
                            &name,
                            format!(
                                "the label must be {}, got {}",
                                if is_list {
                                    "a list of numbers"
                                } else {
                                    "a number"
                                },
                                other.describe()
                            ),
                        ))
                    }
                };
                label_cell = Some(label);
                continue;
            }
            let is_list = self.text_kinds[text_cells.len()];
            match (cell, is_list) {
                (Cell::Text(text), false) => text_cells.push(TextCell::Text(text)),
                (Cell::Texts(texts), true) => text_cells.push(TextCell::List(texts)),
                (Cell::Numbers(numbers), true) if numbers.is_empty() => {
                    text_cells.push(TextCell::List(Vec::new()))
                }
                (other, is_list) => {
                    return Err(row_error(
                        &name,
                        format!(
                            "expected {}, got {}",
                            if is_list {
                                "a list of strings"
                            } else {
                                "a string"
                            },
                            other.describe()
                        ),
                    ))
                }
            }
        }
        let finite = |v: f64| -> Result<f32, DatasetError> {
            let scaled = v * label_scale;
            if scaled.is_finite() {
                Ok(scaled as f32)
            } else {
                let name = self.label_index.map_or("label", |i| self.names[i].as_str());
                Err(row_error(name, format!("label {v} is not a finite number")))
            }
        };
        match (&mut self.labels, label_cell) {
            (LabelValues::Scalars(values), Some(LabelCell::Scalar(v))) => values.push(finite(v)?),
            (LabelValues::Lists(values), Some(LabelCell::List(v))) => {
                values.push(v.into_iter().map(finite).collect::<Result<_, _>>()?)
            }
            _ => {}
        }
        for (column, cell) in self.texts.iter_mut().zip(text_cells) {
            match (column, cell) {
                (TextValues::Texts(values), TextCell::Text(text)) => values.push(text),
                (TextValues::Lists(values), TextCell::List(texts)) => values.push(texts),
                _ => unreachable!("types were checked above"),
            }
        }
        Ok(())
    }

    fn finish(self, files: Vec<PathBuf>, skipped_rows: usize) -> Dataset {
        let label_index = self.label_index;
        let text_names: Vec<String> = self
            .names
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != label_index)
            .map(|(_, n)| n.clone())
            .collect();
        Dataset {
            files,
            columns: text_names
                .into_iter()
                .zip(self.texts)
                .map(|(name, values)| TextColumn { name, values })
                .collect(),
            label: label_index.map(|i| LabelColumn {
                name: self.names[i].clone(),
                values: self.labels,
            }),
            skipped_rows,
        }
    }
}

enum LabelCell {
    Scalar(f64),
    List(Vec<f64>),
}

enum TextCell {
    Text(String),
    List(Vec<String>),
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

    /// One line describing the layout, for error messages and the model card.
    pub fn describe(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                if c.is_list() {
                    format!("{} (list of documents)", c.name)
                } else {
                    c.name.clone()
                }
            })
            .collect();
        let label = match &self.label {
            None => "no label column".to_string(),
            Some(LabelColumn {
                name,
                values: LabelValues::Scalars(_),
            }) => format!("label column {name:?} with a number per row"),
            Some(LabelColumn {
                name,
                values: LabelValues::Lists(_),
            }) => format!("label column {name:?} with a list of numbers per row"),
        };
        format!(
            "{} text column{} ({}), {label}",
            self.columns.len(),
            if self.columns.len() == 1 { "" } else { "s" },
            columns.join(", ")
        )
    }

    /// Checks the dataset against what a loss accepts and the model's number of outputs, and
    /// returns the matching format. The error names the loss, what it accepts, what the data
    /// has, and the first row that breaks the label rule.
    pub fn check_format<'f>(
        &self,
        loss: &str,
        formats: &'f [DataFormat],
        loss_num_labels: u32,
        model_num_labels: usize,
    ) -> Result<&'f DataFormat, DatasetError> {
        if loss_num_labels != 0 && loss_num_labels as usize != model_num_labels {
            return Err(DatasetError::Format(format!(
                "{loss} needs a model with {loss_num_labels} output(s) per pair, but the model \
                 has num_labels = {model_num_labels}"
            )));
        }
        if let Some(position) = self.columns.iter().position(TextColumn::is_list) {
            if position + 1 != self.columns.len() {
                return Err(DatasetError::Format(format!(
                    "{}: column {:?} holds lists of documents; only the last input column may",
                    self.origin(),
                    self.columns[position].name
                )));
            }
        }
        let last_is_list = self.columns.last().is_some_and(TextColumn::is_list);
        let mut reasons = Vec::new();
        for format in formats {
            if !format.fits_columns(self.columns.len() as u32, last_is_list) {
                continue;
            }
            match self.check_label(format.label, model_num_labels) {
                Ok(()) => return Ok(format),
                Err(reason) => reasons.push(format!("{}: {reason}", format.name)),
            }
        }
        let accepted: Vec<String> = formats
            .iter()
            .map(|f| format!("  - {}: {}", f.name, f.description))
            .collect();
        let mut message = format!(
            "the training data does not fit {loss}.\n{loss} accepts:\n{}\n{} has: {}",
            accepted.join("\n"),
            self.origin(),
            self.describe()
        );
        for reason in reasons {
            message.push_str(&format!("\n  ({reason})"));
        }
        Err(DatasetError::Format(message))
    }

    fn check_label(&self, kind: LabelKind, num_labels: usize) -> Result<(), String> {
        let name = self.label.as_ref().map_or("label", |l| l.name.as_str());
        let values = self.label.as_ref().map(|l| &l.values);
        let row_error = |row: usize, what: String| format!("row {}: {name} {what}", row + 1);
        match (kind, values) {
            (LabelKind::None, None) => Ok(()),
            (LabelKind::None, Some(_)) => Err(format!("takes no label, but there is {name:?}")),
            (_, None) => Err(format!(
                "needs {}, but there is no label column",
                kind.describe()
            )),
            (LabelKind::ClassId, Some(LabelValues::Scalars(values))) => {
                for (row, &v) in values.iter().enumerate() {
                    if v.fract() != 0.0 || v < 0.0 || v as usize >= num_labels.max(1) {
                        return Err(row_error(
                            row,
                            format!("= {v} is not a class id below num_labels = {num_labels}"),
                        ));
                    }
                }
                Ok(())
            }
            (LabelKind::Binary, Some(LabelValues::Scalars(values))) => {
                match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    Some(row) => Err(row_error(
                        row,
                        format!("= {} is not in [0, 1]", values[row]),
                    )),
                    None => Ok(()),
                }
            }
            (LabelKind::Score | LabelKind::Margins, Some(LabelValues::Scalars(_))) => Ok(()),
            (LabelKind::Margins, Some(LabelValues::Lists(_))) => Ok(()),
            (LabelKind::ScoreList, Some(LabelValues::Lists(lists))) => {
                let Some(TextValues::Lists(documents)) = self.columns.last().map(|c| &c.values)
                else {
                    return Err("needs a document list column".into());
                };
                for (row, (labels, docs)) in lists.iter().zip(documents).enumerate() {
                    if labels.len() != docs.len() {
                        return Err(row_error(
                            row,
                            format!("has {} scores for {} documents", labels.len(), docs.len()),
                        ));
                    }
                }
                Ok(())
            }
            (kind, Some(LabelValues::Lists(_))) => Err(format!(
                "needs {}, but {name:?} holds a list per row",
                kind.describe()
            )),
            (kind, Some(LabelValues::Scalars(_))) => Err(format!(
                "needs {}, but {name:?} holds one number per row",
                kind.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The error of reading `text` as the file `name` with default settings.
    fn read_error(name: &str, text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, text);
        read_dataset(&DatasetSpec::from_files(vec![path]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn jsonl_columns_in_order_with_label_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "train.jsonl",
            "{\"score\": 0.5, \"query\": \"q1\", \"document\": \"d1\"}\n\n\
             {\"score\": 1, \"query\": \"q2\", \"document\": \"d2\"}\n",
        );
        let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
        assert_eq!(dataset.len(), 2);
        assert_eq!(dataset.columns[0].name, "query");
        assert_eq!(dataset.columns[1].name, "document");
        assert_eq!(
            dataset.label.as_ref().unwrap().values,
            LabelValues::Scalars(vec![0.5, 1.0])
        );
    }

    #[test]
    fn malformed_row_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "train.jsonl",
            "{\"query\": \"q1\", \"document\": \"d1\", \"label\": 1}\n\
             {\"query\": \"q2\", \"document\": 7, \"label\": 0}\n\
             {\"query\": \"q3\", \"document\": \"d3\", \"label\": 0}\n",
        );
        let error = read_dataset(&DatasetSpec::from_files(vec![path.clone()]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("train.jsonl:line 2"), "{error}");
        assert!(error.contains("\"document\""), "{error}");
        assert!(error.contains("got a number"), "{error}");

        let mut spec = DatasetSpec::from_files(vec![path]);
        spec.skip_invalid_rows = true;
        let dataset = read_dataset(&spec).unwrap();
        assert_eq!(dataset.len(), 2);
        assert_eq!(dataset.skipped_rows, 1);
    }

    #[test]
    fn unknown_column_is_named() {
        let error = read_error(
            "train.jsonl",
            "{\"query\": \"q1\", \"document\": \"d1\"}\n{\"query\": \"q2\", \"doc\": \"d2\"}\n",
        );
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("\"document\""), "{error}");
    }

    #[test]
    fn headerless_tsv_with_selection_rename_and_scale() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "sts.csv",
            "g\tx\t5.000\tA \"plane\" flies.\tA plane flies.\r\n\
             g\tx\t2.500\tA man.\tA woman.\textra\tfields\r\n",
        );
        let mut spec = DatasetSpec::from_files(vec![path]);
        spec.format = Some(FileFormat::Tsv);
        spec.header = false;
        spec.quoting = false;
        spec.ignore_extra_fields = true;
        spec.column_names = Some(
            ["genre", "file", "score", "sentence1", "sentence2"]
                .map(String::from)
                .to_vec(),
        );
        spec.columns = Some(
            ["sentence1", "sentence2", "label"]
                .map(String::from)
                .to_vec(),
        );
        spec.rename.insert("score".into(), "label".into());
        spec.label_scale = 0.2;
        let dataset = read_dataset(&spec).unwrap();
        assert_eq!(dataset.len(), 2);
        assert_eq!(dataset.columns[0].text(0, 0), Some("A \"plane\" flies."));
        assert_eq!(dataset.columns[1].text(1, 0), Some("A woman."));
        assert_eq!(
            dataset.label.unwrap().values,
            LabelValues::Scalars(vec![1.0, 0.5])
        );
    }

    #[test]
    fn csv_bad_label_is_reported() {
        let error = read_error("train.csv", "query,document,label\nq,d,1\nq,d,yes\n");
        assert!(error.contains("train.csv:line 3"), "{error}");
        assert!(error.contains("column \"label\""), "{error}");
    }

    #[test]
    fn listwise_rows_and_format_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "lists.jsonl",
            "{\"query\": \"q\", \"docs\": [\"a\", \"b\"], \"labels\": [1, 0]}\n\
             {\"query\": \"r\", \"docs\": [\"c\"], \"labels\": [0.5]}\n",
        );
        let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
        let shape = dataset.batch_shape(&[1, 0]);
        assert_eq!(shape.columns[1].list_lengths(), Some(&[1u32, 2][..]));
        let labels = dataset.batch_labels(&[1, 0]);
        assert_eq!(labels.row(1), &[1.0, 0.0]);
        assert_eq!(
            dataset.text(&[1, 0], TextRef::list_item(1, 1, 1)),
            Some("b")
        );
        let listwise = [DataFormat::query_documents_scores()];
        assert!(dataset.check_format("ListNetLoss", &listwise, 1, 1).is_ok());
        let pointwise = [DataFormat::pair_binary_label()];
        let error = dataset
            .check_format("BinaryCrossEntropyLoss", &pointwise, 0, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("BinaryCrossEntropyLoss accepts"), "{error}");
        assert!(error.contains("docs (list of documents)"), "{error}");
    }

    /// A Parquet file as Hugging Face datasets write them: a string column, a list of
    /// strings and a list of doubles.
    fn write_parquet(path: &Path) {
        use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message schema {
                    REQUIRED BYTE_ARRAY query (UTF8);
                    REQUIRED group documents (LIST) {
                        REPEATED group list { REQUIRED BYTE_ARRAY element (UTF8); }
                    }
                    REQUIRED group labels (LIST) {
                        REPEATED group list { REQUIRED DOUBLE element; }
                    }
                }",
            )
            .unwrap(),
        );
        let file = std::fs::File::create(path).unwrap();
        let properties = Arc::new(WriterProperties::builder().build());
        let mut writer = SerializedFileWriter::new(file, schema, properties).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let texts = |values: &[&str]| -> Vec<ByteArray> {
            values.iter().map(|v| ByteArray::from(*v)).collect()
        };
        let mut index = 0;
        while let Some(mut column) = group.next_column().unwrap() {
            match index {
                0 => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&texts(&["q1", "q2"]), None, None)
                        .unwrap();
                }
                1 => {
                    // Rows [a, b] and [c]: definition 1 per item, repetition 0 at a row start.
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&texts(&["a", "b", "c"]), Some(&[1, 1, 1]), Some(&[0, 1, 0]))
                        .unwrap();
                }
                _ => {
                    column
                        .typed::<DoubleType>()
                        .write_batch(&[1.0, 0.0, 0.5], Some(&[1, 1, 1]), Some(&[0, 1, 0]))
                        .unwrap();
                }
            }
            column.close().unwrap();
            index += 1;
        }
        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn parquet_lists_become_document_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        write_parquet(&path);
        let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
        assert_eq!(dataset.len(), 2);
        assert_eq!(dataset.columns[0].name, "query");
        assert_eq!(
            dataset.columns[1].values,
            TextValues::Lists(vec![vec!["a".into(), "b".into()], vec!["c".into()]])
        );
        assert_eq!(
            dataset.label.as_ref().unwrap().values,
            LabelValues::Lists(vec![vec![1.0, 0.0], vec![0.5]])
        );
        assert!(dataset
            .check_format("ListNetLoss", &[DataFormat::query_documents_scores()], 1, 1)
            .is_ok());
    }

    #[test]
    fn binary_label_out_of_range_names_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "train.jsonl",
            "{\"q\": \"a\", \"d\": \"b\", \"label\": 1}\n{\"q\": \"a\", \"d\": \"b\", \"label\": 4}\n",
        );
        let dataset = read_dataset(&DatasetSpec::from_files(vec![path])).unwrap();
        let error = dataset
            .check_format(
                "BinaryCrossEntropyLoss",
                &[DataFormat::pair_binary_label()],
                0,
                1,
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("row 2: label = 4 is not in [0, 1]"),
            "{error}"
        );
    }
}
