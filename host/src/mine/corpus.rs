//! The de-duplicated candidate corpus, held once in memory.
//!
//! The reference builds `list(dict.fromkeys(corpus + positives))` and a `{text: index}` dict,
//! which keeps every text twice (list and dict keys) plus Python object overhead. Here the
//! texts live in one arena string and the index maps a 64-bit hash to a position, so a corpus
//! costs its bytes plus about 20 bytes per document.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// De-duplicated texts in first-seen order.
#[derive(Debug, Default)]
pub struct Corpus {
    arena: String,
    ends: Vec<usize>,
    by_hash: HashMap<u64, u32>,
    /// Texts whose hash collided with a different text (practically never used).
    collisions: HashMap<String, u32>,
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

impl Corpus {
    /// An empty corpus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct texts.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text at `index`.
    pub fn get(&self, index: u32) -> &str {
        let index = index as usize;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.arena[start..self.ends[index]]
    }

    /// Every text in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|i| self.get(i))
    }

    /// The index of `text`, if present.
    pub fn position(&self, text: &str) -> Option<u32> {
        match self.by_hash.get(&hash_of(text)) {
            Some(&index) if self.get(index) == text => Some(index),
            Some(_) => self.collisions.get(text).copied(),
            None => None,
        }
    }

    /// Adds `text` unless present; returns its index either way.
    pub fn insert(&mut self, text: &str) -> u32 {
        let hash = hash_of(text);
        match self.by_hash.get(&hash) {
            Some(&index) if self.get(index) == text => return index,
            Some(_) => {
                if let Some(&index) = self.collisions.get(text) {
                    return index;
                }
                let index = self.push(text);
                self.collisions.insert(text.to_string(), index);
                return index;
            }
            None => {}
        }
        let index = self.push(text);
        self.by_hash.insert(hash, index);
        index
    }

    fn push(&mut self, text: &str) -> u32 {
        self.arena.push_str(text);
        self.ends.push(self.arena.len());
        u32::try_from(self.ends.len() - 1).expect("a corpus of more than 4 billion texts")
    }

    /// Bytes held (texts and index), for the memory report.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.by_hash.capacity() * (8 + 4 + 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_occurrence_order() {
        let mut corpus = Corpus::new();
        assert_eq!(corpus.insert("b"), 0);
        assert_eq!(corpus.insert("a"), 1);
        assert_eq!(corpus.insert("b"), 0);
        assert_eq!(corpus.insert(""), 2);
        assert_eq!(corpus.insert("ab"), 3);
        assert_eq!(corpus.len(), 4);
        assert_eq!(corpus.iter().collect::<Vec<_>>(), ["b", "a", "", "ab"]);
        assert_eq!(corpus.position("a"), Some(1));
        assert_eq!(corpus.position("c"), None);
    }
}
