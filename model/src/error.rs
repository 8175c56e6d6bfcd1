//! What can go wrong loading, running or saving a model.

use std::path::PathBuf;

/// What can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Neither a directory nor a hub id.
    #[error("model {spec:?}: no such directory, and not a Hugging Face model id (owner/name)")]
    NotFound {
        /// What the user gave.
        spec: String,
    },
    /// `config.json` names a model family crosstrain does not implement. Raised before any
    /// weight is read, so nothing is trained as the wrong architecture.
    #[error("{path}: architecture {found} is not supported; crosstrain supports {supported}")]
    UnsupportedArchitecture {
        /// The `config.json`.
        path: PathBuf,
        /// What the file names (`architectures`, else `model_type`).
        found: String,
        /// The supported families and their architectures.
        supported: String,
    },
    /// The model produced a NaN or infinite logit.
    #[error(
        "the model produced a non-finite logit ({value}) for pair {pair} (0-based, in input \
         order); its weights or inputs are broken"
    )]
    NonFiniteLogits {
        /// The pair.
        pair: usize,
        /// The logit.
        value: f32,
    },
    /// A truncation length the model cannot take.
    #[error(
        "max length {requested} does not fit model {dir}: it takes 1 to {limit} tokens \
         (its position embeddings)"
    )]
    MaxLength {
        /// The model directory.
        dir: PathBuf,
        /// The length asked for.
        requested: usize,
        /// The longest input the model takes.
        limit: usize,
    },
    /// A required file is missing.
    #[error("model directory {dir}: missing {file}")]
    MissingFile {
        /// The directory.
        dir: PathBuf,
        /// The file.
        file: &'static str,
    },
    /// A directory stands where a file of the model should be.
    #[error("model directory {dir}: {file} is a directory, not a file")]
    NotAFile {
        /// The model directory.
        dir: PathBuf,
        /// The file's name.
        file: &'static str,
    },
    /// Only PyTorch pickles are present.
    #[error(
        "model directory {dir}: has pytorch_model.bin but no model.safetensors; crosstrain \
         reads safetensors only. Convert it, e.g. in Python: \
         AutoModelForSequenceClassification.from_pretrained(dir).save_pretrained(dir, \
         safe_serialization=True)"
    )]
    PytorchBin {
        /// The directory.
        dir: PathBuf,
    },
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Downloading from the hub failed.
    #[error("downloading model {model}: {message}")]
    Download {
        /// The model id.
        model: String,
        /// What failed.
        message: String,
    },
    /// The output directory exists.
    #[error("{path} already exists and is not empty; choose another directory or remove it")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenize(#[from] crate::tokenize::TokenizeError),
    /// A decoder's chat template could not be read or rendered.
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    /// A device that does not exist or that this build cannot use.
    #[error("{0}")]
    Device(String),
}
