//! Where a dataset's texts live: in memory (`Vec<String>`), or in a memory-mapped Arrow IPC
//! cache file (see `cache.rs`) whose pages the kernel reads in when a row is used and may drop
//! again, so a dataset of tens of millions of rows costs little resident memory.
//!
//! Texts are the only part kept on disk: labels (4 bytes a row) and row origins (4 bytes a row)
//! are read into memory when the cache is opened, because the format check and the samplers
//! read every label.

use std::ops::Index;

use arrow_array::{Array, LargeBinaryArray};
use arrow_buffer::OffsetBuffer;

/// The cache stores texts as bytes, not Arrow strings: a string array is checked to be UTF-8
/// as a whole when it is decoded, which would read (and make resident) every text of the file
/// at start. Each text is checked when it is used instead.
fn text_of(bytes: &[u8]) -> &str {
    // The cache holds only text crosstrain wrote from `&str`s; a damaged file shows as
    // replacement characters rather than a crash in the middle of training.
    std::str::from_utf8(bytes).unwrap_or("\u{fffd}")
}

/// One record batch of a mapped text column: the rows from `first_row` on.
#[derive(Debug, Clone)]
pub(crate) struct MappedTextChunk {
    pub(crate) first_row: usize,
    pub(crate) texts: LargeBinaryArray,
}

/// One record batch of a mapped list column: row `r`'s documents are
/// `texts[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone)]
pub(crate) struct MappedListChunk {
    pub(crate) first_row: usize,
    pub(crate) offsets: OffsetBuffer<i64>,
    pub(crate) texts: LargeBinaryArray,
}

/// The chunk holding `row`, by the chunks' first rows (sorted).
fn chunk_of<T>(chunks: &[T], first_row: impl Fn(&T) -> usize, row: usize) -> Option<&T> {
    let after = chunks.partition_point(|chunk| first_row(chunk) <= row);
    chunks.get(after.checked_sub(1)?)
}

#[derive(Debug, Clone)]
enum TextsStore {
    Memory(Vec<String>),
    Mapped {
        chunks: Vec<MappedTextChunk>,
        rows: usize,
    },
}

/// One text per row.
#[derive(Debug, Clone)]
pub struct Texts(TextsStore);

impl Texts {
    /// Texts held in memory.
    pub fn in_memory(texts: Vec<String>) -> Self {
        Self(TextsStore::Memory(texts))
    }

    pub(crate) fn mapped(chunks: Vec<MappedTextChunk>, rows: usize) -> Self {
        Self(TextsStore::Mapped { chunks, rows })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match &self.0 {
            TextsStore::Memory(texts) => texts.len(),
            TextsStore::Mapped { rows, .. } => *rows,
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text of `row`.
    pub fn get(&self, row: usize) -> Option<&str> {
        match &self.0 {
            TextsStore::Memory(texts) => texts.get(row).map(String::as_str),
            TextsStore::Mapped { chunks, rows } => {
                if row >= *rows {
                    return None;
                }
                let chunk = chunk_of(chunks, |c| c.first_row, row)?;
                let index = row - chunk.first_row;
                (index < chunk.texts.len()).then(|| text_of(chunk.texts.value(index)))
            }
        }
    }

    /// Every text, in row order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|row| self.get(row).unwrap_or_default())
    }

    /// Whether the texts are read from a mapped cache file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, TextsStore::Mapped { .. })
    }
}

impl Index<usize> for Texts {
    type Output = str;

    fn index(&self, row: usize) -> &str {
        match self.get(row) {
            Some(text) => text,
            None => panic!("row {row} out of range for {} texts", self.len()),
        }
    }
}

impl<'a> IntoIterator for &'a Texts {
    type Item = &'a str;
    type IntoIter = Box<dyn Iterator<Item = &'a str> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl PartialEq for Texts {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl From<Vec<String>> for Texts {
    fn from(texts: Vec<String>) -> Self {
        Self::in_memory(texts)
    }
}

#[derive(Debug, Clone)]
enum ListsStore {
    Memory(Vec<Vec<String>>),
    Mapped {
        chunks: Vec<MappedListChunk>,
        rows: usize,
    },
}

/// A list of documents per row.
#[derive(Debug, Clone)]
pub struct TextLists(ListsStore);

/// The documents of one row.
#[derive(Debug, Clone, Copy)]
pub enum TextList<'a> {
    /// Held in memory.
    Memory(&'a [String]),
    /// Items `start..end` of a mapped chunk's texts.
    Mapped {
        /// The chunk's texts.
        texts: &'a LargeBinaryArray,
        /// The row's first item.
        start: usize,
        /// One past its last item.
        end: usize,
    },
}

impl<'a> TextList<'a> {
    /// Number of documents.
    pub fn len(&self) -> usize {
        match self {
            TextList::Memory(texts) => texts.len(),
            TextList::Mapped { start, end, .. } => end - start,
        }
    }

    /// Whether the row has no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Document `item`.
    pub fn get(&self, item: usize) -> Option<&'a str> {
        match *self {
            TextList::Memory(texts) => texts.get(item).map(String::as_str),
            TextList::Mapped { texts, start, end } => {
                (start + item < end).then(|| text_of(texts.value(start + item)))
            }
        }
    }

    /// The documents in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let list = *self;
        (0..list.len()).map(move |item| list.get(item).unwrap_or_default())
    }
}

impl TextLists {
    /// Lists held in memory.
    pub fn in_memory(lists: Vec<Vec<String>>) -> Self {
        Self(ListsStore::Memory(lists))
    }

    pub(crate) fn mapped(chunks: Vec<MappedListChunk>, rows: usize) -> Self {
        Self(ListsStore::Mapped { chunks, rows })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match &self.0 {
            ListsStore::Memory(lists) => lists.len(),
            ListsStore::Mapped { rows, .. } => *rows,
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The documents of `row`.
    pub fn get(&self, row: usize) -> Option<TextList<'_>> {
        match &self.0 {
            ListsStore::Memory(lists) => lists.get(row).map(|list| TextList::Memory(list)),
            ListsStore::Mapped { chunks, rows } => {
                if row >= *rows {
                    return None;
                }
                let chunk = chunk_of(chunks, |c| c.first_row, row)?;
                let index = row - chunk.first_row;
                let offsets = chunk.offsets.as_ref();
                let (start, end) = (*offsets.get(index)?, *offsets.get(index + 1)?);
                Some(TextList::Mapped {
                    texts: &chunk.texts,
                    start: start as usize,
                    end: end as usize,
                })
            }
        }
    }

    /// Every row's list, in row order.
    pub fn iter(&self) -> impl Iterator<Item = TextList<'_>> + '_ {
        (0..self.len()).map(|row| self.get(row).unwrap_or(TextList::Memory(&[])))
    }
}

impl PartialEq for TextLists {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| a.len() == b.len() && a.iter().eq(b.iter()))
    }
}

impl From<Vec<Vec<String>>> for TextLists {
    fn from(lists: Vec<Vec<String>>) -> Self {
        Self::in_memory(lists)
    }
}
