//! What a dataset is: the files, their format, and the column rules to apply.

#![allow(unused_imports)]
use super::*;

/// The label column's possible names, in the reference's order of preference.
pub const LABEL_COLUMNS: [&str; 4] = ["label", "labels", "score", "scores"];

/// A column the reference's collator drops.
pub(super) const DROPPED_COLUMNS: [&str; 1] = ["dataset_name"];

/// Where a dataset comes from and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// One or more files, read in order and concatenated. The format follows the extension
    /// (`.jsonl`/`.json`, `.csv`, `.tsv`, `.parquet`) unless `format` is set.
    #[serde(deserialize_with = "crate::data::one_or_many")]
    #[schemars(with = "Vec<PathBuf>")]
    pub files: Vec<PathBuf>,
    /// `jsonl`, `csv`, `tsv` or `parquet`; default: from each file's extension.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// The columns to use, in this order (after `rename`); default: every column in file
    /// order. The label column may be anywhere.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Renames applied when reading, `{old = "new"}`, e.g. `{score = "label"}`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// CSV/TSV: whether the first line names the columns (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// CSV/TSV without a header: the column names, in file order.
    #[serde(default)]
    pub column_names: Option<Vec<String>>,
    /// CSV/TSV: whether `"` quotes fields (default true). STS-B's files need `false`.
    #[serde(default = "default_true")]
    pub quoting: bool,
    /// CSV/TSV: ignore fields beyond the named columns instead of failing on them.
    #[serde(default)]
    pub ignore_extra_fields: bool,
    /// Every label is multiplied by this (e.g. 0.2 turns STS-B's 0..5 scores into 0..1).
    #[serde(default = "default_one")]
    pub label_scale: f64,
    /// Skip malformed rows (counted in the log) instead of failing on the first one.
    #[serde(default)]
    pub skip_invalid_rows: bool,
    /// Use only the first this many rows.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Where the rows are kept: `memory`, `disk` (converted once into a memory-mapped Arrow
    /// file in the cache, `$CROSSTRAIN_CACHE`, and reused while the files are unchanged), or
    /// `auto` (default: `disk` when the files add up to 128 MiB or more).
    #[serde(default)]
    pub storage: Storage,
}

/// Where a dataset's rows are kept while it is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// `disk` when the files add up to [`Storage::AUTO_DISK_BYTES`] or more, else `memory`.
    #[default]
    Auto,
    /// Every row read into memory (about three times the file's size).
    Memory,
    /// Texts read from a memory-mapped Arrow IPC file that is written on first use.
    Disk,
}

impl Storage {
    /// The size from which `auto` keeps a dataset on disk: below it, the conversion's cost
    /// (one more pass over the file, a cache entry) buys nothing.
    pub const AUTO_DISK_BYTES: u64 = 128 << 20;
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_one() -> f64 {
    1.0
}

impl DatasetSpec {
    /// A spec for files read with every default.
    pub fn from_files(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            format: None,
            columns: None,
            rename: BTreeMap::new(),
            header: true,
            column_names: None,
            quoting: true,
            ignore_extra_fields: false,
            label_scale: 1.0,
            skip_invalid_rows: false,
            limit: None,
            storage: Storage::Auto,
        }
    }

    /// Refuses options that cannot mean what they say: `limit = 0` (a dataset of no rows,
    /// which used to train on one) and a `rename` that gives two columns one name.
    pub fn check(&self) -> Result<(), DatasetError> {
        let path = self.files.first().cloned().unwrap_or_default();
        if self.limit == Some(0) {
            return Err(DatasetError::Columns {
                path,
                message: "limit = 0 leaves no rows; set a limit of at least 1, or none to use \
                          every row"
                    .into(),
            });
        }
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &self.rename {
            if let Some(other) = targets.insert(new.as_str(), old.as_str()) {
                return Err(DatasetError::Columns {
                    path,
                    message: format!(
                        "rename: {other:?} and {old:?} would both become {new:?}; a dataset's \
                         columns need distinct names"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Resolves relative file paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for file in &mut self.files {
            if file.is_relative() {
                *file = crate::fsutil::tidy_path(&base.join(&*file));
            }
        }
    }
}

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format an extension implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "jsonl" | "json" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}
