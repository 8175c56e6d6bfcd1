//! The on-disk dataset cache: a dataset read once with every column rule applied, written as
//! an Arrow IPC file (the format Hugging Face `datasets` keeps its caches in), and from then
//! on memory-mapped instead of read, so neither the first nor any later run holds the texts in
//! memory.
//!
//! An entry is keyed by every file's resolved path, size and modification time and by the
//! reading options (format, columns, rename, label scale, limit, ...), so a changed file or
//! option is converted again, never read stale. It is written to a temporary name and renamed
//! into place, so an interrupted conversion leaves no entry that looks whole.
//!
//! Layout: one record batch per chunk of rows ([`Builder::CHUNK_ROWS`] rows or
//! [`Builder::CHUNK_BYTES`] of text); text columns `t0`, `t1`, ... as `LargeBinary` (a list
//! column as `LargeList<LargeBinary>`), the label as `Float32` (or `LargeList<Float32>`), each
//! row's line number as `UInt32`; what the dataset is (column names, files, skipped rows) as
//! JSON in the footer's custom metadata under `crosstrain`.

#![allow(unused_imports)]
use super::*;

use std::fs::File;
use std::hash::Hasher as _;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, LargeBinaryArray, LargeListArray, RecordBatch, UInt32Array,
};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use sha2::Digest;

use storage::{MappedListChunk, MappedTextChunk};

/// The environment variable naming the cache's root folder.
pub const CACHE_ENV: &str = "CROSSTRAIN_CACHE";

/// Bumped whenever the layout changes, so old entries are converted again.
const FORMAT_VERSION: u32 = 1;

/// The footer metadata key holding [`CacheMeta`].
const META_KEY: &str = "crosstrain";

/// The folder dataset cache entries go in: `$CROSSTRAIN_CACHE/datasets`, else
/// `$XDG_CACHE_HOME/crosstrain/datasets`, else `~/.cache/crosstrain/datasets`.
pub fn cache_dir() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let root = match (
        non_empty(CACHE_ENV),
        non_empty("XDG_CACHE_HOME"),
        non_empty("HOME"),
    ) {
        (Some(root), _, _) => PathBuf::from(root),
        (None, Some(xdg), _) => PathBuf::from(xdg).join("crosstrain"),
        (None, None, Some(home)) => PathBuf::from(home).join(".cache").join("crosstrain"),
        (None, None, None) => std::env::temp_dir().join("crosstrain-cache"),
    };
    root.join("datasets")
}

/// Whether `spec` is to be read through the cache.
pub(super) fn wants_disk(spec: &DatasetSpec) -> bool {
    match spec.storage {
        Storage::Memory => false,
        Storage::Disk => true,
        Storage::Auto => {
            // A file that cannot be looked at counts as empty here; reading it names the error.
            let bytes: u64 = spec
                .files
                .iter()
                .filter_map(|path| std::fs::metadata(path).ok())
                .map(|metadata| metadata.len())
                .sum();
            bytes >= Storage::AUTO_DISK_BYTES
        }
    }
}

/// What the footer records about the dataset in the file.
#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    version: u32,
    /// The entry's key: the files' stamps and the reading options.
    key: Value,
    /// `(name, holds lists)` of each text column, in order.
    text_columns: Vec<(String, bool)>,
    /// `(name, holds lists)` of the label column.
    label: Option<(String, bool)>,
    /// [`Origins`]' file ranges and Parquet flags.
    file_ends: Vec<usize>,
    parquet: Vec<bool>,
    rows: usize,
    skipped_rows: usize,
    /// The `skip_invalid_rows` warning of the conversion, repeated on every read.
    skipped_report: Option<String>,
}

/// Where one dataset's entry is and what it must match.
pub(super) struct CacheEntry<'a> {
    spec: &'a DatasetSpec,
    key: Value,
    path: PathBuf,
}

impl<'a> CacheEntry<'a> {
    /// The entry for `spec`'s files as they are now.
    pub(super) fn for_spec(spec: &'a DatasetSpec, dir: &Path) -> Result<Self, DatasetError> {
        let mut stamps = Vec::new();
        for path in &spec.files {
            let resolved = std::fs::canonicalize(path).map_err(|e| io_error(path, e))?;
            let metadata = std::fs::metadata(&resolved).map_err(|e| io_error(path, e))?;
            let modified = metadata
                .modified()
                .ok()
                .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |since| since.as_nanos());
            stamps.push(serde_json::json!({
                "path": resolved.display().to_string(),
                "size": metadata.len(),
                "modified_ns": modified.to_string(),
            }));
        }
        let mut options = spec.clone();
        options.files.clear();
        options.storage = Storage::Auto;
        let key = serde_json::json!({
            "version": FORMAT_VERSION,
            "files": stamps,
            "options": options,
        });
        let digest = sha2::Sha256::digest(key.to_string().as_bytes());
        let digest: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        let stem: String = spec
            .files
            .first()
            .and_then(|path| path.file_stem())
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        Ok(Self {
            spec,
            key,
            path: dir.join(format!("{stem}-{digest}.arrow")),
        })
    }

    /// The dataset from the entry, if there is one for the files as they are now. An entry
    /// that cannot be read is reported and converted again, not trusted.
    pub(super) fn open_if_current(&self) -> Result<Option<Dataset>, DatasetError> {
        if !self.path.is_file() {
            return Ok(None);
        }
        let expected = read_checksum(&self.path);
        let opened = expected
            .and_then(|checksum| open_mapped(&self.path, &self.key, self.spec, Some(checksum)));
        match opened {
            Ok((dataset, skipped_report)) => {
                if let Some(report) = skipped_report {
                    tracing::warn!(skipped = dataset.skipped_rows, "{report}");
                }
                tracing::info!(
                    rows = dataset.len(),
                    cache = %self.path.display(),
                    "{}: read from the dataset cache {}",
                    dataset.origin(),
                    self.path.display()
                );
                Ok(Some(dataset))
            }
            Err(message) => {
                tracing::warn!(
                    "dataset cache {} is unusable ({message}); converting {} again",
                    self.path.display(),
                    self.spec
                        .files
                        .first()
                        .map_or_else(String::new, |f| f.display().to_string())
                );
                Ok(None)
            }
        }
    }

    /// A writer for a new entry.
    pub(super) fn writer(self) -> Result<CacheWriter, DatasetError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| cache_write_error(&dir, e))?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
        remove_stale_partials(&dir, &file_name);
        tracing::info!(
            "converting {} into the dataset cache {}",
            self.spec
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.path.display()
        );
        Ok(CacheWriter {
            spec: self.spec.clone(),
            key: self.key,
            path: self.path,
            temp,
            writer: None,
            first_row: 0,
        })
    }
}

/// A failed write into the dataset cache, named as the cache, with the two ways around it (a
/// read-only or full cache folder otherwise reads like a problem with the data file).
fn cache_write_error(path: &Path, error: impl std::fmt::Display) -> DatasetError {
    io_error(
        path,
        format!(
            "writing the dataset cache: {error}. Point {CACHE_ENV} at a writable folder, or \
             keep this dataset in memory with `storage = \"memory\"`"
        ),
    )
}

/// Removes the partial files of entry `file_name` that conversions killed mid-write left
/// (their process is gone); a live one is another process converting the same data.
fn remove_stale_partials(dir: &Path, file_name: &str) {
    let prefixes = [
        format!(".{file_name}.partial-"),
        format!(".{file_name}.xxh3.partial-"),
    ];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        match crate::fsutil::staging_owner(&name) {
            Some(pid)
                if !crate::fsutil::is_running(pid)
                    && std::fs::remove_file(entry.path()).is_ok() =>
            {
                tracing::info!(
                    "removed {}, left by an interrupted conversion",
                    entry.path().display()
                );
            }
            _ => {}
        }
    }
}

/// Writes a new entry a chunk at a time; dropped unfinished, it removes its temporary file.
pub(super) struct CacheWriter {
    spec: DatasetSpec,
    key: Value,
    path: PathBuf,
    temp: PathBuf,
    writer: Option<FileWriter<BufWriter<ChecksummedFile>>>,
    /// The dataset row the next chunk starts at.
    first_row: usize,
}

impl CacheWriter {
    /// A progress bar over the bytes of `path` (drawn only on a terminal).
    pub(super) fn progress_for(&self, path: &Path) -> indicatif::ProgressBar {
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        let progress = indicatif::ProgressBar::with_draw_target(
            Some(bytes),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        progress.set_message(format!("caching {name}"));
        progress
    }

    fn error(&self, error: impl std::fmt::Display) -> DatasetError {
        cache_write_error(&self.temp, error)
    }

    /// Writes the rows pushed since the last chunk as one record batch.
    pub(super) fn write_chunk(
        &mut self,
        builder: &mut Builder,
        origins: &Origins,
    ) -> Result<(), DatasetError> {
        if builder.chunk_rows == 0 {
            return Ok(());
        }
        let rows = builder.chunk_rows;
        let chunk = builder.take_chunk();
        let schema = Arc::new(schema_of(builder));
        if self.writer.is_none() {
            let file = File::create(&self.temp).map_err(|e| self.error(e))?;
            let file = ChecksummedFile {
                file,
                checksum: twox_hash::XxHash3_64::new(),
            };
            let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema)
                .map_err(|e| self.error(e))?;
            self.writer = Some(writer);
        }
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for column in &chunk.texts {
            arrays.push(match column {
                ColumnTexts::Texts(texts) => Arc::new(LargeBinaryArray::from_iter_values(
                    texts.iter().map(String::as_bytes),
                )),
                ColumnTexts::Lists(lists) => Arc::new(list_array(
                    lists.iter().map(Vec::len),
                    Arc::new(LargeBinaryArray::from_iter_values(
                        lists
                            .iter()
                            .flatten()
                            .map(String::as_bytes)
                            .collect::<Vec<_>>(),
                    )),
                    DataType::LargeBinary,
                )?),
            });
        }
        match &chunk.labels {
            Some(LabelValues::Scalars(values)) => {
                arrays.push(Arc::new(Float32Array::from(values.clone())))
            }
            Some(LabelValues::Lists(lists)) => arrays.push(Arc::new(list_array(
                lists.iter().map(Vec::len),
                Arc::new(Float32Array::from_iter_values(
                    lists.iter().flatten().copied(),
                )),
                DataType::Float32,
            )?)),
            None => {}
        }
        let numbers = &origins.numbers[self.first_row..self.first_row + rows];
        arrays.push(Arc::new(UInt32Array::from(numbers.to_vec())));
        let batch = RecordBatch::try_new(schema, arrays).map_err(|e| self.error(e))?;
        let writer = self.writer.as_mut().expect("created above");
        writer.write(&batch).map_err(|e| io_error(&self.temp, e))?;
        self.first_row += rows;
        Ok(())
    }

    /// Writes the footer, moves the entry into place, and opens it.
    pub(super) fn finish(
        mut self,
        builder: &Builder,
        origins: &Origins,
        skipped_rows: usize,
        skipped_report: Option<String>,
    ) -> Result<Dataset, DatasetError> {
        let meta = CacheMeta {
            version: FORMAT_VERSION,
            key: self.key.clone(),
            text_columns: builder.text_columns(),
            label: builder.label_column(),
            file_ends: origins.file_ends.clone(),
            parquet: origins.parquet.clone(),
            rows: origins.len(),
            skipped_rows,
            skipped_report,
        };
        let meta = serde_json::to_string(&meta).map_err(|e| self.error(e))?;
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| self.error("no rows were written"))?;
        writer.write_metadata(META_KEY, meta);
        writer.finish().map_err(|e| self.error(e))?;
        let ChecksummedFile { file, checksum } = writer
            .into_inner()
            .map_err(|e| self.error(e))?
            .into_inner()
            .map_err(|e| self.error(e.error()))?;
        file.sync_all().map_err(|e| self.error(e))?;
        drop(file);
        // The checksum goes in place first: an entry is never without its checksum, and one
        // without (or with another) is converted again, not trusted.
        let checksum_file = checksum_path(&self.path);
        let checksum_temp = checksum_path(&self.path).with_file_name(format!(
            ".{}.partial-{}",
            checksum_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::write(&checksum_temp, format!("{:016x}\n", checksum.finish()))
            .map_err(|e| self.error(e))?;
        std::fs::rename(&checksum_temp, &checksum_file).map_err(|e| self.error(e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| self.error(e))?;
        let (dataset, _) = open_mapped(&self.path, &self.key, &self.spec, None)
            .map_err(|message| io_error(&self.path, message))?;
        tracing::info!(
            rows = dataset.len(),
            cache = %self.path.display(),
            "{}: {} rows in the dataset cache {}",
            dataset.origin(),
            dataset.len(),
            self.path.display()
        );
        Ok(dataset)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Unfinished (an error or a panic): the partial file must not stay behind.
        if self.temp.exists() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The cache file's schema for the builder's columns.
fn schema_of(builder: &Builder) -> Schema {
    let list_of = |item: DataType| DataType::LargeList(Arc::new(Field::new("item", item, false)));
    let mut fields: Vec<Field> = builder
        .text_columns()
        .iter()
        .enumerate()
        .map(|(index, (_, is_list))| {
            let kind = if *is_list {
                list_of(DataType::LargeBinary)
            } else {
                DataType::LargeBinary
            };
            Field::new(format!("t{index}"), kind, false)
        })
        .collect();
    if let Some((_, is_list)) = builder.label_column() {
        let kind = if is_list {
            list_of(DataType::Float32)
        } else {
            DataType::Float32
        };
        fields.push(Field::new("label", kind, false));
    }
    fields.push(Field::new("line", DataType::UInt32, false));
    Schema::new(fields)
}

/// A `LargeList` array of rows with `lengths` items each, taken in order from `items`.
fn list_array(
    lengths: impl Iterator<Item = usize>,
    items: ArrayRef,
    item_type: DataType,
) -> Result<LargeListArray, DatasetError> {
    let offsets = OffsetBuffer::<i64>::from_lengths(lengths);
    LargeListArray::try_new(
        Arc::new(Field::new("item", item_type, false)),
        offsets,
        items,
        None,
    )
    .map_err(|e| DatasetError::Format(format!("dataset cache: {e}")))
}

/// The cache file being written, with an XXH3-64 checksum of every byte written through it
/// (no second pass over the file).
struct ChecksummedFile {
    file: File,
    checksum: twox_hash::XxHash3_64,
}

impl Write for ChecksummedFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        std::hash::Hasher::write(&mut self.checksum, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Where an entry's checksum is kept: `NAME.arrow.xxh3` beside it.
fn checksum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_os_string();
    name.push(".xxh3");
    PathBuf::from(name)
}

/// The checksum recorded for `entry`; `Err` says why there is none to trust.
fn read_checksum(entry: &Path) -> Result<u64, String> {
    let file = checksum_path(entry);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("its checksum {} cannot be read: {e}", file.display()))?;
    u64::from_str_radix(text.trim(), 16)
        .map_err(|_| format!("its checksum {} is not a checksum", file.display()))
}

/// Opens a cache file mapped, with the `skip_invalid_rows` warning of its conversion; `Err`
/// says why it is unusable. With `checksum`, the file's bytes must have it (a flipped byte
/// in an entry would otherwise train on other texts or labels without a word).
fn open_mapped(
    path: &Path,
    key: &Value,
    spec: &DatasetSpec,
    checksum: Option<u64>,
) -> Result<(Dataset, Option<String>), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: the map is read-only and the file is an entry of crosstrain's own cache, which
    // is only ever written under a temporary name and renamed into place, never changed in
    // place; a new conversion of the same files writes a new file and renames it over this
    // one, which leaves this mapping on the old inode. A user truncating the file under a
    // running job would be a bug outside this process's control, as it is for any mmap.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
    if let Some(expected) = checksum {
        let actual = twox_hash::XxHash3_64::oneshot(&map);
        if actual != expected {
            return Err(format!(
                "its contents do not match their checksum ({actual:016x}, recorded \
                 {expected:016x}): the file was changed or damaged after it was written"
            ));
        }
    }
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    let length = buffer.len();
    if length < 10 {
        return Err("too short to be an Arrow file".into());
    }
    let trailer: [u8; 10] = buffer[length - 10..].try_into().map_err(|_| "no trailer")?;
    let footer_length =
        arrow_ipc::reader::read_footer_length(trailer).map_err(|e| e.to_string())?;
    let footer_start = (length - 10)
        .checked_sub(footer_length)
        .ok_or("footer longer than the file")?;
    let footer =
        arrow_ipc::root_as_footer(&buffer[footer_start..length - 10]).map_err(|e| e.to_string())?;
    let meta = footer
        .custom_metadata()
        .into_iter()
        .flatten()
        .find(|entry| entry.key() == Some(META_KEY))
        .and_then(|entry| entry.value())
        .ok_or("no crosstrain metadata")?;
    let meta: CacheMeta = serde_json::from_str(meta).map_err(|e| e.to_string())?;
    if meta.version != FORMAT_VERSION || &meta.key != key {
        return Err("written for other files or options".into());
    }
    let schema = arrow_ipc::convert::fb_to_schema(footer.schema().ok_or("no schema")?);
    let text_count = meta.text_columns.len();
    let expected = text_count + usize::from(meta.label.is_some()) + 1;
    if schema.fields().len() != expected {
        return Err(format!(
            "{} columns where the metadata says {expected}",
            schema.fields().len()
        ));
    }
    let decoder = arrow_ipc::reader::FileDecoder::new(Arc::new(schema), footer.version());
    let mut text_chunks: Vec<Vec<MappedTextChunk>> = vec![Vec::new(); text_count];
    let mut list_chunks: Vec<Vec<MappedListChunk>> = vec![Vec::new(); text_count];
    let mut labels = match &meta.label {
        Some((_, true)) => Some(LabelValues::Lists(Vec::with_capacity(meta.rows))),
        Some((_, false)) => Some(LabelValues::Scalars(Vec::with_capacity(meta.rows))),
        None => None,
    };
    let mut numbers = Vec::with_capacity(meta.rows);
    let mut first_row = 0usize;
    for block in footer.recordBatches().into_iter().flatten() {
        let start = usize::try_from(block.offset()).map_err(|e| e.to_string())?;
        let size = usize::try_from(block.bodyLength()).map_err(|e| e.to_string())?
            + usize::try_from(block.metaDataLength()).map_err(|e| e.to_string())?;
        if start.checked_add(size).is_none_or(|end| end > length) {
            return Err("a record batch lies past the end of the file".into());
        }
        let batch = decoder
            .read_record_batch(block, &buffer.slice_with_length(start, size))
            .map_err(|e| e.to_string())?
            .ok_or("an empty record batch")?;
        for (index, (_, is_list)) in meta.text_columns.iter().enumerate() {
            let column = batch.column(index);
            if *is_list {
                let lists = column
                    .as_any()
                    .downcast_ref::<LargeListArray>()
                    .ok_or("a list column of another type")?;
                let texts = lists
                    .values()
                    .as_any()
                    .downcast_ref::<LargeBinaryArray>()
                    .ok_or("a list column of another item type")?
                    .clone();
                list_chunks[index].push(MappedListChunk {
                    first_row,
                    offsets: lists.offsets().clone(),
                    texts,
                });
            } else {
                let texts = column
                    .as_any()
                    .downcast_ref::<LargeBinaryArray>()
                    .ok_or("a text column of another type")?
                    .clone();
                text_chunks[index].push(MappedTextChunk { first_row, texts });
            }
        }
        match &mut labels {
            Some(LabelValues::Scalars(values)) => values.extend_from_slice(
                batch
                    .column(text_count)
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or("a label column of another type")?
                    .values(),
            ),
            Some(LabelValues::Lists(values)) => {
                let lists = batch
                    .column(text_count)
                    .as_any()
                    .downcast_ref::<LargeListArray>()
                    .ok_or("a label column of another type")?;
                let items = lists
                    .values()
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or("a label column of another item type")?
                    .values();
                for range in lists.offsets().windows(2) {
                    values.push(items[range[0] as usize..range[1] as usize].to_vec());
                }
            }
            None => {}
        }
        numbers.extend_from_slice(
            batch
                .column(expected - 1)
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or("a line column of another type")?
                .values(),
        );
        first_row += batch.num_rows();
    }
    if first_row != meta.rows || numbers.len() != meta.rows {
        return Err(format!(
            "{first_row} rows where the metadata says {}",
            meta.rows
        ));
    }
    let rows = meta.rows;
    let columns = meta
        .text_columns
        .into_iter()
        .zip(text_chunks.into_iter().zip(list_chunks))
        .map(|((name, is_list), (texts, lists))| TextColumn {
            name,
            values: if is_list {
                TextValues::Lists(TextLists::mapped(lists, rows))
            } else {
                TextValues::Texts(Texts::mapped(texts, rows))
            },
        })
        .collect();
    let dataset = Dataset {
        files: spec.files.clone(),
        columns,
        label: meta
            .label
            .zip(labels)
            .map(|((name, _), values)| LabelColumn { name, values }),
        skipped_rows: meta.skipped_rows,
        origins: Origins {
            file_ends: meta.file_ends,
            parquet: meta.parquet,
            numbers,
        },
        cache: Some(path.to_path_buf()),
    };
    Ok((dataset, meta.skipped_report))
}
