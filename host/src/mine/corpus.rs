//! The de-duplicated candidate corpus.
//!
//! The reference builds `list(dict.fromkeys(corpus + positives))` and a `{text: index}` dict,
//! which keeps every text twice (list and dict keys) plus Python object overhead. Here the
//! texts live in one arena and the index maps a 64-bit hash to a position, so a corpus costs
//! its bytes plus about 20 bytes per document. Once the arena passes
//! [`Corpus::SPILL_BYTES`] it moves to an unlinked file in the dataset cache folder that is
//! memory-mapped, like a training set kept on disk: a corpus larger than memory costs its
//! index and an 8 MiB tail.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::MineError;
use crate::data::dataset::{read_dataset, DatasetSpec, FileFormat, TextValues};

/// De-duplicated texts in first-seen order.
#[derive(Debug)]
pub struct Corpus {
    arena: Arena,
    /// The arena size from which it moves to a file.
    spill_bytes: usize,
    /// The tail size from which a spilled arena's tail is written out.
    tail_bytes: usize,
    /// The folder of the spill file; default: the dataset cache folder.
    spill_dir: Option<std::path::PathBuf>,
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

/// Where the corpus texts are: one string, or a file mapped up to `written` with the texts
/// since then in `tail`. A text never straddles the two.
#[derive(Debug)]
enum Arena {
    Memory(String),
    Spilled {
        file: std::fs::File,
        map: memmap2::Mmap,
        written: usize,
        tail: String,
    },
}

impl Arena {
    fn len(&self) -> usize {
        match self {
            Arena::Memory(text) => text.len(),
            Arena::Spilled { written, tail, .. } => written + tail.len(),
        }
    }

    fn get(&self, start: usize, end: usize) -> &str {
        match self {
            Arena::Memory(text) => &text[start..end],
            Arena::Spilled {
                map, written, tail, ..
            } => {
                if start >= *written {
                    &tail[start - written..end - written]
                } else {
                    // Written from `&str`s and never changed: only a damaged disk could make
                    // this invalid.
                    std::str::from_utf8(&map[start..end]).unwrap_or("\u{fffd}")
                }
            }
        }
    }
}

/// The tail of a spilled arena is written out once it holds this much.
const SPILL_TAIL_BYTES: usize = 8 << 20;

impl Default for Corpus {
    fn default() -> Self {
        Self {
            arena: Arena::Memory(String::new()),
            spill_bytes: Self::SPILL_BYTES,
            tail_bytes: SPILL_TAIL_BYTES,
            spill_dir: None,
            ends: Vec::new(),
            by_hash: HashMap::new(),
            collisions: HashMap::new(),
        }
    }
}

impl Corpus {
    /// The arena size from which the texts move to a mapped file (as `storage = "auto"`
    /// keeps a dataset on disk from this size).
    pub const SPILL_BYTES: usize = crate::data::dataset::Storage::AUTO_DISK_BYTES as usize;

    /// An empty corpus.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty corpus that moves its texts to a file in `dir` past `spill_bytes`, and
    /// writes its tail out every `tail_bytes`.
    pub fn spilling(spill_bytes: usize, tail_bytes: usize, dir: &Path) -> Self {
        Self {
            spill_bytes,
            tail_bytes,
            spill_dir: Some(dir.to_path_buf()),
            ..Self::default()
        }
    }

    /// Whether the texts are in a mapped file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.arena, Arena::Spilled { .. })
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
        self.arena.get(start, self.ends[index])
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
        match &mut self.arena {
            Arena::Memory(arena) => {
                arena.push_str(text);
                if arena.len() >= self.spill_bytes {
                    self.spill();
                }
            }
            Arena::Spilled { tail, .. } => {
                tail.push_str(text);
                if tail.len() >= self.tail_bytes {
                    if let Err(error) = self.write_tail() {
                        tracing::warn!("corpus spill file: {error}; keeping the rest in memory");
                    }
                }
            }
        }
        self.ends.push(self.arena.len());
        u32::try_from(self.ends.len() - 1).expect("a corpus of more than 4 billion texts")
    }

    /// Moves the in-memory arena to a new unlinked file and maps it. On failure (no cache
    /// folder, a full disk) the texts stay in memory, with a warning.
    fn spill(&mut self) {
        let Arena::Memory(arena) = &mut self.arena else {
            return;
        };
        let dir = self
            .spill_dir
            .clone()
            .unwrap_or_else(crate::data::dataset::cache_dir);
        match spill_file(arena, &dir) {
            Ok((file, map)) => {
                tracing::info!(
                    bytes = arena.len(),
                    "the corpus passed {} MiB: its texts move to a memory-mapped file",
                    self.spill_bytes >> 20
                );
                self.arena = Arena::Spilled {
                    file,
                    map,
                    written: arena.len(),
                    tail: String::new(),
                };
            }
            Err(error) => {
                tracing::warn!("cannot move the corpus to a file ({error}); it stays in memory");
                self.spill_bytes = usize::MAX;
            }
        }
    }

    /// Appends a spilled arena's tail to its file and maps the file again.
    fn write_tail(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        let Arena::Spilled {
            file,
            map,
            written,
            tail,
        } = &mut self.arena
        else {
            return Ok(());
        };
        file.write_all(tail.as_bytes())?;
        // SAFETY: as in `spill_file`: the file is this process's own, already unlinked, and
        // only ever appended to past the mapped length.
        *map = unsafe { memmap2::Mmap::map(&*file) }?;
        *written += tail.len();
        tail.clear();
        Ok(())
    }

    /// Bytes held in memory (texts and index), for the memory report.
    pub fn heap_bytes(&self) -> usize {
        let texts = match &self.arena {
            Arena::Memory(arena) => arena.capacity(),
            Arena::Spilled { tail, .. } => tail.capacity(),
        };
        texts
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.by_hash.capacity() * (8 + 4 + 8)
    }
}

/// A new file in the dataset cache folder holding `texts`, unlinked at once (nothing is left
/// behind however the process ends), and its map.
fn spill_file(texts: &str, dir: &Path) -> std::io::Result<(std::fs::File, memmap2::Mmap)> {
    use std::io::Write;
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::fs::create_dir_all(dir)?;
    let number = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".corpus-{}-{number}.spill", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    file.write_all(texts.as_bytes())?;
    // SAFETY: the map is read-only; the file was created by this process and is already
    // unlinked, so no other process can open it, and this process only appends to it past
    // the mapped length (then maps it again), never changes mapped bytes.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    Ok((file, map))
}

/// Reads a corpus file into `corpus`, one document per line (`.txt`), per JSON line (a
/// string, or an object whose `column` — default `text`, else `document` — holds it), or
/// from a column of a CSV/TSV/Parquet file. Text and JSONL files are streamed: only the
/// de-duplicated texts are kept. Returns the number of documents read.
pub fn read_corpus(
    path: &Path,
    column: Option<&str>,
    corpus: &mut Corpus,
) -> Result<usize, MineError> {
    let io = |source| MineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let malformed = |line: usize, message: String| MineError::Input {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    match extension.as_str() {
        "txt" | "jsonl" | "json" => {
            let json = extension != "txt";
            let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
            let mut read = 0usize;
            for (index, line) in reader.lines().enumerate() {
                let line = line.map_err(|error| match error.kind() {
                    std::io::ErrorKind::InvalidData => malformed(index + 1, "invalid UTF-8".into()),
                    _ => io(error),
                })?;
                let line = crate::data::strip_byte_order_mark(&line, index == 0);
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                if !json {
                    corpus.insert(line);
                    read += 1;
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| malformed(index + 1, format!("not valid JSON: {e}")))?;
                let text = match &value {
                    Value::String(text) => text.as_str(),
                    Value::Object(object) => {
                        let keys: Vec<&str> = match column {
                            Some(column) => vec![column],
                            None => vec!["text", "document"],
                        };
                        let found = keys.iter().find_map(|k| object.get(*k));
                        match found {
                            Some(Value::String(text)) => text.as_str(),
                            Some(other) => {
                                return Err(malformed(
                                    index + 1,
                                    format!("column {:?}: expected a string, got {other}", keys[0]),
                                ))
                            }
                            None => {
                                return Err(malformed(
                                    index + 1,
                                    format!(
                                        "no column {}; this line has {}",
                                        keys.iter()
                                            .map(|k| format!("{k:?}"))
                                            .collect::<Vec<_>>()
                                            .join(" or "),
                                        object.keys().cloned().collect::<Vec<_>>().join(", ")
                                    ),
                                ))
                            }
                        }
                    }
                    _ => {
                        return Err(malformed(
                            index + 1,
                            "expected a string or an object with a text column".into(),
                        ))
                    }
                };
                corpus.insert(text);
                read += 1;
            }
            Ok(read)
        }
        _ => {
            if FileFormat::from_path(path).is_none() {
                return Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: "unknown corpus format; use .txt (one document per line), .jsonl, \
                              .csv, .tsv or .parquet"
                        .into(),
                });
            }
            let mut spec = DatasetSpec::from_files(vec![path.to_path_buf()]);
            if let Some(column) = column {
                spec.columns = Some(vec![column.to_string()]);
            }
            let dataset = read_dataset(&spec)?;
            let Some(first) = dataset.columns.first() else {
                return Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: "no text column".into(),
                });
            };
            match &first.values {
                TextValues::Texts(texts) => {
                    for text in texts {
                        corpus.insert(text);
                    }
                    Ok(texts.len())
                }
                TextValues::Lists(_) => Err(MineError::Input {
                    path: path.to_path_buf(),
                    message: format!("column {:?} holds lists, not texts", first.name),
                }),
            }
        }
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

    #[test]
    fn a_spilled_corpus_reads_and_deduplicates_as_in_memory() {
        let texts: Vec<String> = (0..5000)
            .map(|i| format!("document {} {}", i % 3000, "\u{e9}".repeat(i % 7)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut memory = Corpus::spilling(usize::MAX, usize::MAX, dir.path());
        // Spills after 1 KB and writes its tail out every 500 bytes.
        let mut spilled = Corpus::spilling(1000, 500, dir.path());
        for text in &texts {
            assert_eq!(memory.insert(text), spilled.insert(text));
        }
        assert!(spilled.is_spilled() && !memory.is_spilled());
        assert_eq!(spilled.len(), memory.len());
        assert_eq!(
            memory.iter().collect::<Vec<_>>(),
            spilled.iter().collect::<Vec<_>>()
        );
        // The spill file is unlinked: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        for text in &texts {
            assert_eq!(memory.position(text), spilled.position(text));
        }
        assert!(spilled.heap_bytes() < memory.heap_bytes());
    }
}
