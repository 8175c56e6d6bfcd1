//! The column builder: raw rows into typed text and label columns, with the reference's
//! rules (which column is the label, list-valued columns, `label_scale`, skipped rows).

#![allow(unused_imports)]
use super::*;

/// Typed columns, filled row by row; the first row fixes the column set and types.
pub(super) struct Builder {
    pub(super) names: Vec<String>,
    pub(super) label_index: Option<usize>,
    pub(super) text_kinds: Vec<bool>,
    pub(super) texts: Vec<ColumnTexts>,
    pub(super) label_is_list: bool,
    pub(super) labels: LabelValues,
    /// Bytes of text pushed since the last [`Builder::take_chunk`].
    pub(super) chunk_bytes: usize,
    /// Rows pushed since the last [`Builder::take_chunk`].
    pub(super) chunk_rows: usize,
}

/// The texts of one input column while it is being built.
#[derive(Debug)]
pub(super) enum ColumnTexts {
    Texts(Vec<String>),
    Lists(Vec<Vec<String>>),
}

/// The rows pushed since the last chunk was taken, to be written to the cache.
pub(super) struct Chunk {
    pub(super) texts: Vec<ColumnTexts>,
    pub(super) labels: Option<LabelValues>,
}

impl Builder {
    /// A chunk is written once it holds this many rows (3 in unit tests, so that small test
    /// files make several record batches)...
    pub(super) const CHUNK_ROWS: usize = if cfg!(test) { 3 } else { 1 << 16 };
    /// ...or this many bytes of text, whichever comes first.
    pub(super) const CHUNK_BYTES: usize = 32 << 20;

    /// Whether the rows pushed since the last chunk should be written out now.
    pub(super) fn chunk_is_full(&self) -> bool {
        self.chunk_rows >= Self::CHUNK_ROWS || self.chunk_bytes >= Self::CHUNK_BYTES
    }

    /// Takes the rows pushed since the last chunk, leaving the builder empty but with its
    /// column layout.
    pub(super) fn take_chunk(&mut self) -> Chunk {
        self.chunk_bytes = 0;
        self.chunk_rows = 0;
        let texts = self
            .texts
            .iter_mut()
            .map(|column| match column {
                ColumnTexts::Texts(values) => ColumnTexts::Texts(std::mem::take(values)),
                ColumnTexts::Lists(values) => ColumnTexts::Lists(std::mem::take(values)),
            })
            .collect();
        let labels = self.label_index.map(|_| match &mut self.labels {
            LabelValues::Scalars(values) => LabelValues::Scalars(std::mem::take(values)),
            LabelValues::Lists(values) => LabelValues::Lists(std::mem::take(values)),
        });
        Chunk { texts, labels }
    }

    /// The names of the text columns, in order, and whether each holds lists.
    pub(super) fn text_columns(&self) -> Vec<(String, bool)> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.label_index)
            .map(|(_, name)| name.clone())
            .zip(self.text_kinds.iter().copied())
            .collect()
    }

    /// The label column's name and whether it holds lists.
    pub(super) fn label_column(&self) -> Option<(String, bool)> {
        self.label_index
            .map(|i| (self.names[i].clone(), self.label_is_list))
    }
}

impl Builder {
    pub(super) fn new(
        cells: &[(String, Cell)],
        path: &Path,
        location: Location,
    ) -> Result<Self, DatasetError> {
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
                        ColumnTexts::Lists(Vec::new())
                    } else {
                        ColumnTexts::Texts(Vec::new())
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
            chunk_bytes: 0,
            chunk_rows: 0,
        })
    }

    pub(super) fn push(
        &mut self,
        cells: Vec<(String, Cell)>,
        label_scale: f64,
        path: &Path,
        location: Location,
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
                (ColumnTexts::Texts(values), TextCell::Text(text)) => {
                    self.chunk_bytes += text.len();
                    values.push(text)
                }
                (ColumnTexts::Lists(values), TextCell::List(texts)) => {
                    self.chunk_bytes += texts.iter().map(String::len).sum::<usize>();
                    values.push(texts)
                }
                _ => unreachable!("types were checked above"),
            }
        }
        self.chunk_rows += 1;
        Ok(())
    }

    pub(super) fn finish(
        self,
        files: Vec<PathBuf>,
        skipped_rows: usize,
        origins: Origins,
    ) -> Dataset {
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
                .map(|(name, values)| TextColumn {
                    name,
                    values: match values {
                        ColumnTexts::Texts(texts) => TextValues::Texts(texts.into()),
                        ColumnTexts::Lists(lists) => TextValues::Lists(lists.into()),
                    },
                })
                .collect(),
            label: label_index.map(|i| LabelColumn {
                name: self.names[i].clone(),
                values: self.labels,
            }),
            skipped_rows,
            origins,
            cache: None,
        }
    }
}

pub(super) enum LabelCell {
    Scalar(f64),
    List(Vec<f64>),
}

pub(super) enum TextCell {
    Text(String),
    List(Vec<String>),
}
