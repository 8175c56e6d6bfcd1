//! The data formats a loss accepts, described by structure rather than by a closed list of
//! names, so that the host can check a dataset against a format it has never heard of (a
//! third-party plugin's) and a new format needs no contract change.

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What the label column must hold.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelKind {
    /// No label column.
    None = 0,
    /// An integer class id per row (`num_labels` = number of classes).
    ClassId = 1,
    /// A relevance label per row: 0/1, or a soft value in [0, 1].
    Binary = 2,
    /// A float score per row, e.g. a teacher model's score.
    Score = 3,
    /// A list of float scores per row, one per document of the row's list.
    ScoreList = 4,
    /// Per row: one margin (with one negative), n margins, or n + 1 teacher scores
    /// `[positive, negative_1..negative_n]`.
    Margins = 5,
    /// A list of `num_labels` class probabilities per row (soft labels, e.g. a teacher's
    /// distribution), as torch's cross-entropy takes float targets of shape `[B, C]`.
    ClassProbabilities = 6,
}

impl LabelKind {
    /// A short human-readable description, used in error messages and tables.
    pub fn describe(self) -> &'static str {
        match self {
            LabelKind::None => "no label",
            LabelKind::ClassId => "an integer class id",
            LabelKind::Binary => "a label 0/1 or in [0, 1]",
            LabelKind::Score => "a float score",
            LabelKind::ScoreList => "a list of scores, one per document",
            LabelKind::Margins => "margins or teacher scores [positive, negatives..]",
            LabelKind::ClassProbabilities => "a list of num_labels class probabilities",
        }
    }
}

/// Marker for "no upper bound" in [`DataFormat::max_text_columns`].
pub const UNBOUNDED: u32 = u32::MAX;

/// One data layout a loss accepts: how many text columns, whether the last one is a list of
/// documents, and what the label is.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct DataFormat {
    /// A short stable name such as `triplet` or `query-documents-scores`.
    pub name: RString,
    /// One line for people: the columns and the label.
    pub description: RString,
    /// Fewest text columns (label excluded).
    pub min_text_columns: u32,
    /// Most text columns, or [`UNBOUNDED`].
    pub max_text_columns: u32,
    /// Whether the last text column holds a list of documents per row.
    pub document_list: bool,
    /// What the label column holds.
    pub label: LabelKind,
}

impl DataFormat {
    /// A format from its parts.
    pub fn new(
        name: &str,
        description: &str,
        text_columns: (u32, u32),
        document_list: bool,
        label: LabelKind,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            min_text_columns: text_columns.0,
            max_text_columns: text_columns.1,
            document_list,
            label,
        }
    }

    /// `(text_a, text_b)` with an integer class id.
    pub fn pair_class_label() -> Self {
        Self::new(
            "pair-class",
            "(text_a, text_b) with an integer class id",
            (2, 2),
            false,
            LabelKind::ClassId,
        )
    }

    /// `(text_a, text_b)` with a probability per class (soft labels, distillation).
    pub fn pair_class_probabilities() -> Self {
        Self::new(
            "pair-class-probabilities",
            "(text_a, text_b) with a list of num_labels class probabilities (soft labels)",
            (2, 2),
            false,
            LabelKind::ClassProbabilities,
        )
    }

    /// `(text_a, text_b)` with a 0/1 or [0, 1] label.
    pub fn pair_binary_label() -> Self {
        Self::new(
            "pair-binary",
            "(text_a, text_b) with a label 0/1 or a soft label in [0, 1]",
            (2, 2),
            false,
            LabelKind::Binary,
        )
    }

    /// `(text_a, text_b)` with a float score (distillation from a teacher).
    pub fn pair_score() -> Self {
        Self::new(
            "pair-score",
            "(text_a, text_b) with a float score, e.g. a teacher's (distillation)",
            (2, 2),
            false,
            LabelKind::Score,
        )
    }

    /// `(anchor, positive)` without label.
    pub fn anchor_positive() -> Self {
        Self::new(
            "anchor-positive",
            "(anchor, positive) pairs, no label",
            (2, 2),
            false,
            LabelKind::None,
        )
    }

    /// `(anchor, positive, negative)` without label.
    pub fn triplet() -> Self {
        Self::new(
            "triplet",
            "(anchor, positive, negative) triplets, no label",
            (3, 3),
            false,
            LabelKind::None,
        )
    }

    /// `(anchor, positive, negative_1, .., negative_n)` without label.
    pub fn n_tuple() -> Self {
        Self::new(
            "n-tuple",
            "(anchor, positive, negative_1, .., negative_n), no label",
            (3, UNBOUNDED),
            false,
            LabelKind::None,
        )
    }

    /// `(query, [documents])` with `[scores]`.
    pub fn query_documents_scores() -> Self {
        Self::new(
            "query-documents-scores",
            "(query, [document_1..document_n]) with [score_1..score_n]",
            (2, 2),
            true,
            LabelKind::ScoreList,
        )
    }

    /// `(query, positive, negative_1..n)` with margins or teacher scores (distillation).
    pub fn margin_distillation() -> Self {
        Self::new(
            "margin-distillation",
            "(query, positive, negative_1..negative_n) with margins or teacher scores \
             [positive, negative_1..negative_n] (distillation)",
            (3, UNBOUNDED),
            false,
            LabelKind::Margins,
        )
    }

    /// The formats every reference loss table row names, for documentation and tests.
    pub fn standard_formats() -> Vec<Self> {
        vec![
            Self::pair_class_label(),
            Self::pair_binary_label(),
            Self::pair_score(),
            Self::anchor_positive(),
            Self::triplet(),
            Self::n_tuple(),
            Self::query_documents_scores(),
            Self::margin_distillation(),
        ]
    }

    /// Whether a batch with `text_columns` text columns, the last one a list or not, fits.
    pub fn fits_columns(&self, text_columns: u32, last_is_list: bool) -> bool {
        text_columns >= self.min_text_columns
            && text_columns <= self.max_text_columns
            && last_is_list == self.document_list
    }
}
