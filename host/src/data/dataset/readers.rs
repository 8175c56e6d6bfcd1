//! One reader per file format (JSONL, CSV/TSV, Parquet), each giving raw rows of named cells
//! with the line (or row) they came from.

#![allow(unused_imports)]
use super::*;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;

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

/// The rows of one file as they are read. An outer error ends the file whatever
/// `skip_invalid_rows` says (unreadable bytes, invalid UTF-8); an inner one is one bad row.
pub(super) type Rows<'a> = Box<dyn Iterator<Item = Result<RowResult, DatasetError>> + 'a>;

/// Counts the bytes read from a file on a progress bar (hidden unless converting to the cache
/// on a terminal).
pub(super) struct ProgressReader<R> {
    inner: R,
    progress: indicatif::ProgressBar,
}

impl<R> ProgressReader<R> {
    pub(super) fn new(inner: R, progress: indicatif::ProgressBar) -> Self {
        Self { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.progress.inc(read as u64);
        Ok(read)
    }
}

/// A file opened for streaming, its bytes counted on `progress`.
fn open_counted(
    path: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<BufReader<ProgressReader<std::fs::File>>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    Ok(BufReader::with_capacity(
        1 << 16,
        ProgressReader::new(file, progress.clone()),
    ))
}

/// The error for invalid UTF-8 at byte `bad` (0-based) of line `line`.
fn invalid_utf8(line: usize, bad: usize) -> String {
    format!(
        "invalid UTF-8 on line {line} (byte {} of the line)",
        bad + 1
    )
}

pub(super) fn read_jsonl<'a>(
    path: &'a Path,
    progress: &indicatif::ProgressBar,
) -> Result<Rows<'a>, DatasetError> {
    Ok(Box::new(JsonlRows::new(
        open_counted(path, progress)?,
        path,
    )))
}

/// JSONL rows read a line at a time, so a file of any size takes one line of memory.
pub(super) struct JsonlRows<'a, R> {
    reader: R,
    path: &'a Path,
    line: usize,
    bytes: Vec<u8>,
    failed: bool,
}

impl<'a, R: BufRead> JsonlRows<'a, R> {
    pub(super) fn new(reader: R, path: &'a Path) -> Self {
        Self {
            reader,
            path,
            line: 0,
            bytes: Vec::new(),
            failed: false,
        }
    }
}

impl<R: BufRead> Iterator for JsonlRows<'_, R> {
    type Item = Result<RowResult, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let path = self.path;
        loop {
            self.bytes.clear();
            match self.reader.read_until(b'\n', &mut self.bytes) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(io_error(path, e)));
                }
            }
            self.line += 1;
            let text = match std::str::from_utf8(&self.bytes) {
                Ok(text) => text,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(io_error(
                        path,
                        invalid_utf8(self.line, e.valid_up_to()),
                    )));
                }
            };
            let text = crate::data::strip_byte_order_mark(text, self.line == 1);
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok(parse_jsonl_line(text, path, Location::line(self.line))));
        }
    }
}

fn parse_jsonl_line(line: &str, path: &Path, location: Location) -> RowResult {
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
}

/// A dataset from JSONL text (built-in workloads); `origin` names it in errors.
pub fn parse_jsonl_dataset(text: &str, origin: &Path) -> Result<Dataset, DatasetError> {
    let mut spec = DatasetSpec::from_files(vec![origin.to_path_buf()]);
    spec.storage = Storage::Memory;
    build_dataset(
        &spec,
        |path, _| Ok(Box::new(JsonlRows::new(text.as_bytes(), path))),
        None,
    )
}

/// The lines a CSV reader has been given, from the first one a record may still start on:
/// where each starts, where its content ends (before `\r\n`/`\n`) and whether it is blank.
/// Positions are bytes after the byte-order mark, as the CSV reader counts them.
#[derive(Default)]
struct LineLog {
    /// The 1-based number of `lines[0]`.
    first_line: usize,
    lines: VecDeque<LoggedLine>,
    /// Invalid UTF-8 met while reading ahead: it ends the file.
    fatal: Option<String>,
}

#[derive(Clone, Copy)]
struct LoggedLine {
    start: u64,
    content_end: u64,
    blank: bool,
}

impl LineLog {
    /// The index in `lines` of the line holding byte `offset`.
    fn index_of(&self, offset: u64) -> usize {
        self.lines
            .partition_point(|line| line.start <= offset)
            .saturating_sub(1)
    }

    /// The 1-based line holding byte `offset`.
    fn line_of(&self, offset: u64) -> usize {
        self.first_line + self.index_of(offset)
    }

    /// The non-blank lines of bytes `start..end`: the rows a bad record there stands for.
    fn rows_between(&self, start: u64, end: u64) -> usize {
        if end <= start {
            return 1;
        }
        let (first, last) = (self.index_of(start), self.index_of(end - 1));
        (first..=last)
            .filter(|&index| self.lines.get(index).is_some_and(|line| !line.blank))
            .count()
            .max(1)
    }

    /// `offset` moved past line breaks and blank lines (where the reader may place a record's
    /// start: on the `\n` of a `\r\n`, or before blank lines it skipped), but not past `end`.
    fn skip_line_breaks(&self, mut offset: u64, end: u64) -> u64 {
        while offset < end {
            let index = self.index_of(offset);
            let Some(line) = self.lines.get(index) else {
                break;
            };
            if offset < line.content_end {
                break;
            }
            match self.lines.get(index + 1) {
                Some(next) => offset = next.start.min(end),
                None => break,
            }
        }
        offset
    }

    /// Forgets the lines before the one holding `offset`: no record starts there any more.
    fn forget_before(&mut self, offset: u64) {
        let index = self.index_of(offset);
        self.lines.drain(..index);
        self.first_line += index;
    }
}

/// A reader that hands its input on a line at a time, checking each line is UTF-8, dropping
/// the byte-order mark, and logging where every line starts for [`LineLog`].
struct LoggedLines<R> {
    inner: R,
    log: Rc<RefCell<LineLog>>,
    pending: Vec<u8>,
    sent: usize,
    line: usize,
    offset: u64,
}

impl<R: BufRead> Read for LoggedLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.sent == self.pending.len() {
            self.pending.clear();
            self.sent = 0;
            if self.inner.read_until(b'\n', &mut self.pending)? == 0 {
                return Ok(0);
            }
            self.line += 1;
            if let Err(e) = std::str::from_utf8(&self.pending) {
                let message = invalid_utf8(self.line, e.valid_up_to());
                self.log.borrow_mut().fatal = Some(message.clone());
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    message,
                ));
            }
            if self.line == 1 && self.pending.starts_with(BYTE_ORDER_MARK_BYTES) {
                self.pending.drain(..BYTE_ORDER_MARK_BYTES.len());
            }
            let content = self.pending.strip_suffix(b"\n").unwrap_or(&self.pending);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            self.log.borrow_mut().lines.push_back(LoggedLine {
                start: self.offset,
                content_end: self.offset + content.len() as u64,
                blank: content.iter().all(u8::is_ascii_whitespace),
            });
            self.offset += self.pending.len() as u64;
        }
        let count = buf.len().min(self.pending.len() - self.sent);
        buf[..count].copy_from_slice(&self.pending[self.sent..self.sent + count]);
        self.sent += count;
        Ok(count)
    }
}

/// The UTF-8 byte-order mark.
const BYTE_ORDER_MARK_BYTES: &[u8] = "\u{feff}".as_bytes();

pub(super) fn read_delimited<'a>(
    path: &'a Path,
    spec: &'a DatasetSpec,
    delimiter: u8,
    progress: &indicatif::ProgressBar,
) -> Result<Rows<'a>, DatasetError> {
    // Lines are counted from the bytes themselves (the CSV reader's own count leaves out
    // blank lines), as the reader pulls them, so the file is never held whole.
    let log = Rc::new(RefCell::new(LineLog {
        first_line: 1,
        ..LineLog::default()
    }));
    let lines = LoggedLines {
        inner: open_counted(path, progress)?,
        log: log.clone(),
        pending: Vec::new(),
        sent: 0,
        line: 0,
        offset: 0,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .quoting(spec.quoting)
        .flexible(true)
        .from_reader(lines);
    let mut record = csv::StringRecord::new();
    let fatal_or = |log: &Rc<RefCell<LineLog>>, e: csv::Error| match log.borrow().fatal.clone() {
        Some(message) => io_error(path, message),
        None => io_error(path, e),
    };
    let names: Vec<String> = match (&spec.column_names, spec.header) {
        (Some(names), false) => names.clone(),
        (None, true) => match reader.read_record(&mut record) {
            Ok(true) => record.iter().map(|s| s.trim().to_string()).collect(),
            Ok(false) => return Ok(Box::new(std::iter::empty())),
            Err(e) => return Err(fatal_or(&log, e)),
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
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let start = reader.position().byte();
        log.borrow_mut().forget_before(start);
        let read = reader.read_record(&mut record);
        // Where the next record starts: a record running past its own line (a quote never
        // closed) took the rows in between with it.
        let next = reader.position().byte();
        let log = log.borrow();
        match read {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => {
                if let Some(message) = log.fatal.clone() {
                    failed = true;
                    return Some(Err(io_error(path, message)));
                }
                return Some(Ok(Err(BadRow {
                    error: io_error(path, e),
                    lines: log.rows_between(start, next),
                })));
            }
        }
        let start = log.skip_line_breaks(record.position().map_or(start, |p| p.byte()), next);
        let line = log.line_of(start);
        let spanned = log.rows_between(start, next);
        let last_line = log.line_of(next.saturating_sub(1).max(start));
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
            return Some(Ok(Err(bad(
                names[record.len()].clone(),
                format!(
                    "missing: the line has {} fields, the header {}",
                    record.len(),
                    names.len()
                ),
            ))));
        }
        if record.len() > names.len() && !spec.ignore_extra_fields {
            return Some(Ok(Err(bad(
                format!("#{}", names.len() + 1),
                format!(
                    "the line has {} fields but there are {} columns (set \
                     `ignore_extra_fields = true` to drop the rest)",
                    record.len(),
                    names.len()
                ),
            ))));
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
        Some(Ok(Ok(RawRow { location, cells })))
    })))
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

pub(super) fn read_parquet<'a>(
    path: &'a Path,
    progress: &indicatif::ProgressBar,
) -> Result<Rows<'a>, DatasetError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| io_error(path, e))?;
    let total_rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
    progress.set_length(total_rows);
    let rows = parquet::record::reader::RowIter::from_file_into(Box::new(reader));
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
    let progress = progress.clone();
    Ok(Box::new(rows.enumerate().map(move |(index, row)| {
        progress.inc(1);
        Ok(row
            .map_err(|e| BadRow::from(io_error(path, e)))
            .map(|row| RawRow {
                location: Location::row(index + 1),
                cells: row
                    .get_column_iter()
                    .map(|(name, field)| (name.clone(), cell(field)))
                    .collect(),
            }))
    })))
}
