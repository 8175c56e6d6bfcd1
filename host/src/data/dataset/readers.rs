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

/// A row that could not be read, and how many lines of the file it took with it (more than
/// one when a quote opened in it is never closed and the CSV reader ran on to the end).
#[derive(Debug)]
pub(super) struct BadRow {
    pub(super) error: DatasetError,
    pub(super) lines: usize,
}

impl From<DatasetError> for BadRow {
    fn from(error: DatasetError) -> Self {
        Self { error, lines: 1 }
    }
}

pub(super) type RowResult = Result<RawRow, BadRow>;

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
                }
                .into()),
                Err(e) => Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    location: location.to_string(),
                    column: "<row>".into(),
                    message: format!("not valid JSON: {e}"),
                }
                .into()),
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
    // Read whole, like every other text reader: the byte-order mark goes, invalid UTF-8 is
    // located, and lines are counted from the bytes themselves (the CSV reader's own count
    // leaves out blank lines).
    let text = crate::data::read_text(path).map_err(|e| io_error(path, e))?;
    let lines = LineIndex::new(&text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .quoting(spec.quoting)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let names: Vec<String> = match (&spec.column_names, spec.header) {
        (Some(names), false) => names.clone(),
        (None, true) => match reader.read_record(&mut record) {
            Ok(true) => record.iter().map(|s| s.trim().to_string()).collect(),
            Ok(false) => return Ok(Vec::new()),
            Err(e) => return Err(io_error(path, e)),
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
    let mut rows = Vec::new();
    loop {
        let start = reader.position().byte() as usize;
        let read = reader.read_record(&mut record);
        // Where the next record starts: a record running past its own line (a quote never
        // closed) took the rows in between with it.
        let next = reader.position().byte() as usize;
        match read {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                rows.push(Err(BadRow {
                    error: io_error(path, e),
                    lines: lines.rows_between(&text, start, next),
                }));
                continue;
            }
        }
        let mut start = record.position().map_or(start, |p| p.byte() as usize);
        // The reader may place a record's start on the line break before it (the `\n` of a
        // `\r\n`, or blank lines it skipped).
        while matches!(text.as_bytes().get(start), Some(b'\r' | b'\n')) && start < next {
            start += 1;
        }
        let line = lines.line_of(start);
        let spanned = lines.rows_between(&text, start, next);
        let last_line = lines.line_of(next.saturating_sub(1).max(start));
        let location = Location::line(line);
        let runs_on = if spanned > 1 {
            format!(
                " (the record runs on to line {last_line}: is a quote opened on line {line} \
                 never closed? set `quoting = false` for files that use \" as a plain character)"
            )
        } else {
            String::new()
        };
        let bad = |column: String, message: String| BadRow {
            error: DatasetError::Row {
                path: path.to_path_buf(),
                location: location.to_string(),
                column,
                message: message + &runs_on,
            },
            lines: spanned,
        };
        if record.len() < names.len() {
            rows.push(Err(bad(
                names[record.len()].clone(),
                format!(
                    "missing: the line has {} fields, the header {}",
                    record.len(),
                    names.len()
                ),
            )));
            continue;
        }
        if record.len() > names.len() && !spec.ignore_extra_fields {
            rows.push(Err(bad(
                format!("#{}", names.len() + 1),
                format!(
                    "the line has {} fields but there are {} columns (set \
                     `ignore_extra_fields = true` to drop the rest)",
                    record.len(),
                    names.len()
                ),
            )));
            continue;
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
        rows.push(Ok(RawRow { location, cells }));
    }
    Ok(rows)
}

/// Line numbers of byte offsets in a text.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        Self {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line holding byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&newline| newline < offset) + 1
    }

    /// The non-blank lines of `text[start..end]`: the rows a bad record there stands for.
    fn rows_between(&self, text: &str, start: usize, end: usize) -> usize {
        text.get(start..end.max(start))
            .map_or(1, |span| {
                span.lines().filter(|l| !l.trim().is_empty()).count()
            })
            .max(1)
    }
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
            let row = row.map_err(|e| BadRow::from(io_error(path, e)))?;
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
