//! One reader per file format (JSONL, CSV/TSV, Parquet), each giving raw rows of named cells
//! with the line (or row) they came from.

#![allow(unused_imports)]
use super::*;

/// One cell before typing.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Text(String),
    Number(f64),
    Texts(Vec<String>),
    Numbers(Vec<f64>),
    Other(&'static str),
}

impl Cell {
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Text(_) => "a string",
            Cell::Number(_) => "a number",
            Cell::Texts(_) => "a list of strings",
            Cell::Numbers(_) => "a list of numbers",
            Cell::Other(what) => what,
        }
    }

    pub(super) fn from_json(value: &Value) -> Cell {
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

/// Where a row is in its file: the reader's own count (blank lines and CSV headers
/// included), as `line N`, or `row N` for Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) number: u32,
    pub(super) parquet: bool,
}

impl Location {
    /// Line `number` of a text file.
    pub(super) fn line(number: usize) -> Self {
        Self {
            number: number as u32,
            parquet: false,
        }
    }

    /// Row `number` of a Parquet file.
    pub(super) fn row(number: usize) -> Self {
        Self {
            number: number as u32,
            parquet: true,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.parquet { "row" } else { "line" };
        write!(f, "{unit} {}", self.number)
    }
}

/// One raw row with where it came from.
pub(super) struct RawRow {
    pub(super) location: Location,
    pub(super) cells: Vec<(String, Cell)>,
}

pub(super) type RowResult = Result<RawRow, DatasetError>;

pub(super) fn read_jsonl(path: &Path, _spec: &DatasetSpec) -> Result<Vec<RowResult>, DatasetError> {
    let text = crate::data::read_text(path).map_err(|e| io_error(path, e))?;
    Ok(parse_jsonl(&text, path))
}

pub(super) fn parse_jsonl(text: &str, path: &Path) -> Vec<RowResult> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let location = Location::line(index + 1);
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
                    location: location.to_string(),
                    column: "<row>".into(),
                    message: "expected a JSON object".into(),
                }),
                Err(e) => Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location: location.to_string(),
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

pub(super) fn read_delimited(
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
            let location = Location::line(line as usize);
            if record.len() < names.len() {
                return Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location: location.to_string(),
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
                    location: location.to_string(),
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
pub(super) fn parse_label_field(field: &str) -> Cell {
    let trimmed = field.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Value>(trimmed)
            .map_or(Cell::Text(field.to_string()), |v| Cell::from_json(&v));
    }
    trimmed
        .parse::<f64>()
        .map_or(Cell::Text(field.to_string()), Cell::Number)
}

pub(super) fn read_parquet(path: &Path) -> Result<Vec<RowResult>, DatasetError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| io_error(path, e))?;
    let rows = reader.get_row_iter(None).map_err(|e| io_error(path, e))?;
    pub(super) fn number(field: &Field) -> Option<f64> {
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
    pub(super) fn cell(field: &Field) -> Cell {
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
                location: Location::row(index + 1),
                cells: row
                    .get_column_iter()
                    .map(|(name, field)| (name.clone(), cell(field)))
                    .collect(),
            })
        })
        .collect())
}
