//! The plain values that cross the plugin boundary: batch shapes, pair plans, labels and the
//! loss output. Every type is `#[repr(C)]` + `StableAbi`, so the host checks its layout when it
//! loads a plugin; changing one of them is a contract change.

use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use abi_stable::StableAbi;

/// Where one side of a scored pair comes from: a column of the batch, a row, and, for a column
/// that holds a list of documents per row, the position in that row's list (0 otherwise).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TextRef {
    /// Column index in the batch, in the dataset's column order (label excluded).
    pub column: u32,
    /// Row index within the batch.
    pub row: u32,
    /// Position in the row's document list; 0 for a column of plain texts.
    pub item: u32,
}

impl TextRef {
    /// A text from a column of plain texts.
    pub const fn cell(column: u32, row: u32) -> Self {
        Self {
            column,
            row,
            item: 0,
        }
    }

    /// A document from a column of document lists.
    pub const fn list_item(column: u32, row: u32, item: u32) -> Self {
        Self { column, row, item }
    }
}

/// One (text_a, text_b) pair the model must score; for a reranker, (query, document).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScoredPair {
    /// The first text of the pair (the query or anchor).
    pub text_a: TextRef,
    /// The second text of the pair (the document or candidate).
    pub text_b: TextRef,
}

impl ScoredPair {
    /// A pair from two references.
    pub const fn new(text_a: TextRef, text_b: TextRef) -> Self {
        Self { text_a, text_b }
    }
}

/// The shape of one column of a batch.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ColumnShape {
    /// `None` for a column with one text per row; for a column of document lists, the length
    /// of each row's list.
    pub list_lengths: ROption<RVec<u32>>,
}

impl ColumnShape {
    /// A column with one text per row.
    pub fn texts() -> Self {
        Self {
            list_lengths: ROption::RNone,
        }
    }

    /// A column with a list of documents per row.
    pub fn lists(lengths: Vec<u32>) -> Self {
        Self {
            list_lengths: ROption::RSome(lengths.into()),
        }
    }

    /// The list lengths, if this column holds document lists.
    pub fn list_lengths(&self) -> Option<&[u32]> {
        match &self.list_lengths {
            ROption::RSome(lengths) => Some(lengths.as_slice()),
            ROption::RNone => None,
        }
    }
}

/// What a loss sees of a batch before anything is scored: how many rows, and the shape of each
/// text column (the label column is not a text column).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Number of rows (queries or anchors) in the batch.
    pub rows: u32,
    /// The text columns, in dataset order.
    pub columns: RVec<ColumnShape>,
}

impl BatchShape {
    /// A batch of `rows` rows whose columns all hold one text per row.
    pub fn texts(rows: u32, columns: usize) -> Self {
        Self {
            rows,
            columns: (0..columns).map(|_| ColumnShape::texts()).collect(),
        }
    }

    /// A `(query, [documents])` batch: one text column and one column of document lists.
    pub fn query_documents(list_lengths: Vec<u32>) -> Self {
        Self {
            rows: list_lengths.len() as u32,
            columns: vec![ColumnShape::texts(), ColumnShape::lists(list_lengths)].into(),
        }
    }

    /// Number of text columns.
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }
}

/// The pairs a loss asks the host to score, in the order in which `compute` expects the logits.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PairPlan {
    /// Number of rows of the batch the plan was made for.
    pub rows: u32,
    /// Every pair to score; the logits come back in this order.
    pub pairs: RVec<ScoredPair>,
    /// When set, the host scores the pairs in chunks of this many pairs with gradient caching
    /// (score without a graph, get dLoss/dlogits, re-score each chunk with a graph), so memory
    /// grows with the chunk, not with the batch.
    pub mini_batch_size: ROption<u32>,
}

impl PairPlan {
    /// A plan without chunking.
    pub fn new(rows: u32, pairs: Vec<ScoredPair>) -> Self {
        Self {
            rows,
            pairs: pairs.into(),
            mini_batch_size: ROption::RNone,
        }
    }

    /// The same plan scored in chunks of `size` pairs (`None` leaves it unchunked).
    pub fn with_mini_batch_size(mut self, size: Option<u32>) -> Self {
        self.mini_batch_size = size.into();
        self
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the plan scores nothing.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The chunk size for gradient caching, if any.
    pub fn mini_batch_size(&self) -> Option<u32> {
        self.mini_batch_size.into_option()
    }
}

/// How the labels of a batch are laid out.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelLayout {
    /// The dataset has no label column.
    None = 0,
    /// One number per row (`values[row]`).
    PerRow = 1,
    /// A list of numbers per row (`values[offsets[row]..offsets[row + 1]]`).
    PerRowList = 2,
}

/// The labels of a batch as plain numbers: class ids, 0/1, float scores, or per-row lists of
/// scores or margins. Integers are exact in f32 up to 2^24.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Labels {
    /// The layout of `values`.
    pub layout: LabelLayout,
    /// The label values, row after row.
    pub values: RVec<f32>,
    /// For `PerRowList`: `rows + 1` offsets into `values`; empty otherwise.
    pub offsets: RVec<u32>,
}

impl Labels {
    /// No labels.
    pub fn none() -> Self {
        Self {
            layout: LabelLayout::None,
            values: RVec::new(),
            offsets: RVec::new(),
        }
    }

    /// One label per row.
    pub fn per_row(values: Vec<f32>) -> Self {
        Self {
            layout: LabelLayout::PerRow,
            values: values.into(),
            offsets: RVec::new(),
        }
    }

    /// A list of labels per row.
    pub fn per_row_lists<R: AsRef<[f32]>>(rows: &[R]) -> Self {
        let mut values = Vec::new();
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        offsets.push(0u32);
        for row in rows {
            values.extend_from_slice(row.as_ref());
            offsets.push(values.len() as u32);
        }
        Self {
            layout: LabelLayout::PerRowList,
            values: values.into(),
            offsets: offsets.into(),
        }
    }

    /// Number of rows that carry labels (0 for `None`).
    pub fn rows(&self) -> usize {
        match self.layout {
            LabelLayout::None => 0,
            LabelLayout::PerRow => self.values.len(),
            LabelLayout::PerRowList => self.offsets.len().saturating_sub(1),
        }
    }

    /// The labels of one row: one value for `PerRow`, the list for `PerRowList`, empty for
    /// `None` or a row out of range.
    pub fn row(&self, row: usize) -> &[f32] {
        match self.layout {
            LabelLayout::None => &[],
            LabelLayout::PerRow => self.values.get(row..row + 1).unwrap_or(&[]),
            LabelLayout::PerRowList => match (self.offsets.get(row), self.offsets.get(row + 1)) {
                (Some(&start), Some(&end)) if start <= end => {
                    self.values.get(start as usize..end as usize).unwrap_or(&[])
                }
                _ => &[],
            },
        }
    }
}

/// What `compute` returns: the loss, its named parts, and dLoss/dlogits.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// The scalar loss (computed in f64).
    pub loss: f64,
    /// Named components, logged separately; they sum to `loss`. Empty for a single-term loss.
    pub components: RVec<Tuple2<RString, f64>>,
    /// dLoss/dlogits with the logits' layout: `n_pairs × num_labels`, row-major.
    pub grad: RVec<f64>,
}

impl LossOutput {
    /// A loss without named components.
    pub fn new(loss: f64, grad: Vec<f64>) -> Self {
        Self {
            loss,
            components: RVec::new(),
            grad: grad.into(),
        }
    }

    /// The same output with named components.
    pub fn with_components(mut self, components: Vec<(String, f64)>) -> Self {
        self.components = components
            .into_iter()
            .map(|(name, value)| Tuple2(RString::from(name), value))
            .collect();
        self
    }
}
