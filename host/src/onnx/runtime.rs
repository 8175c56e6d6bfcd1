//! Inference with ONNX Runtime through `ort` (`load-dynamic`): the shared library comes from
//! `ORT_DYLIB_PATH`, else the project cache that `scripts/fetch-onnxruntime.sh` fills from the
//! PyPI `onnxruntime` wheel.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use crosstrain_model::tokenize::{score_longest_first, EncodedPairs, PairTokenizer, TokenizeError};
use crosstrain_model::{CrossEncoder, DefaultActivation, PairScorer, ScoreError};

/// An ONNX Runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// No library to load.
    #[error(
        "the ONNX Runtime library was not found (looked at ORT_DYLIB_PATH and {cache}); \
         fetch it with `bash scripts/fetch-onnxruntime.sh` or set ORT_DYLIB_PATH"
    )]
    LibraryMissing {
        /// The cache directory searched.
        cache: String,
    },
    /// ONNX Runtime reported an error.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// The file is the export of a model with another number of labels.
    #[error(
        "{file}: its logits have {onnx} label(s) and the model has {model}; it is another \
         model's export (re-export it with `crosstrain export-onnx`)"
    )]
    LabelCount {
        /// The ONNX file.
        file: PathBuf,
        /// Labels of its `logits` output.
        onnx: usize,
        /// Labels of the model.
        model: usize,
    },
    /// The graph produced a NaN or infinite logit.
    #[error("ONNX Runtime produced a non-finite logit ({value}) for pair {pair} (0-based, in input order)")]
    NonFiniteLogits {
        /// The pair.
        pair: usize,
        /// The logit.
        value: f32,
    },
}

/// The ONNX Runtime version `scripts/fetch-onnxruntime.sh` fetches and the exporter's
/// [`crate::onnx::MAX_OPSET`] is checked against.
pub const ORT_VERSION: &str = "1.32.0";

fn runtime_error(error: impl std::fmt::Display) -> OnnxError {
    OnnxError::Runtime(error.to_string())
}

/// Where `scripts/fetch-onnxruntime.sh` puts the library.
pub fn cache_dir() -> PathBuf {
    let root = std::env::var_os("CROSSTRAIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("crosstrain")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/crosstrain")))
        .unwrap_or_else(|| PathBuf::from(".cache/crosstrain"));
    root.join("onnxruntime")
}

/// The ONNX Runtime library to load.
pub fn library_path() -> Result<PathBuf, OnnxError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(path));
    }
    let cache = cache_dir();
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("libonnxruntime.so")
                            || n == "onnxruntime.dll"
                            || n.starts_with("libonnxruntime") && n.ends_with(".dylib")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().ok_or_else(|| OnnxError::LibraryMissing {
        cache: cache.display().to_string(),
    })
}

/// The process-wide ONNX Runtime environment (the library is loaded once, never unloaded).
fn environment() -> Result<&'static Environment, OnnxError> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    if let Some(environment) = ENVIRONMENT.get() {
        return environment
            .as_ref()
            .map_err(|message| OnnxError::Runtime(message.clone()));
    }
    // Looked up first, so a missing library is its own error and nothing is cached for it;
    // checked, so a truncated library is an error rather than a SIGBUS inside dlopen.
    let path = crate::shared_library::checked_library_path(&library_path()?)
        .map_err(|error| OnnxError::Runtime(format!("ONNX Runtime library: {error}")))?;
    ENVIRONMENT
        .get_or_init(|| {
            let builder =
                ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
            builder
                .with_logger(std::sync::Arc::new(ort_log))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|message| OnnxError::Runtime(message.clone()))
}

/// ONNX Runtime's own log lines, into crosstrain's log. Without this, the library writes
/// them to stderr itself, with colour codes whatever stderr is, and an error it also
/// returns (which crosstrain prints, naming the file) would be printed twice: so errors go to
/// the debug level, warnings stay warnings.
fn ort_log(
    level: ort::logging::LogLevel,
    _category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", "{message}"),
        LogLevel::Error | LogLevel::Fatal => {
            tracing::debug!(target: "onnxruntime", location, "{message}")
        }
        LogLevel::Info | LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", location, "{message}")
        }
    }
}

/// A cross-encoder running in ONNX Runtime, tokenizing exactly as the candle model does. It
/// is a [`PairScorer`] like the candle model, so evaluation, `rank` and mining run on either.
pub struct OnnxScorer {
    /// `Session::run` needs `&mut`; the lock lets the scorer be shared as `&dyn PairScorer`.
    session: Mutex<Session>,
    tokenizer: PairTokenizer,
    /// Whether the graph declares `token_type_ids` (families without segments do not).
    takes_token_type_ids: bool,
    num_labels: usize,
    activation: DefaultActivation,
}

impl OnnxScorer {
    /// Loads an exported model with all graph optimisations on. The number of labels is read
    /// from the graph's `logits` output; the activation is sentence-transformers' default for
    /// it until [`Self::with_activation`] sets the model's own.
    pub fn load(model: &Path, tokenizer: PairTokenizer) -> Result<Self, OnnxError> {
        let environment = environment()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session = Session::builder(environment)
            .map_err(runtime_error)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(runtime_error)?
            .with_intra_threads(threads)
            .map_err(runtime_error)?
            .commit_from_file(model)
            .map_err(runtime_error)?;
        let takes_token_type_ids = session
            .inputs()
            .iter()
            .any(|input| input.name() == "token_type_ids");
        let num_labels = session
            .outputs()
            .iter()
            .find(|output| output.name() == "logits")
            .and_then(|output| output.dtype().tensor_shape())
            .and_then(|shape| shape.last().copied())
            .filter(|&labels| labels > 0)
            .map_or(1, |labels| labels as usize);
        let activation = if num_labels == 1 {
            DefaultActivation::Sigmoid
        } else {
            DefaultActivation::Identity
        };
        Ok(Self {
            session: Mutex::new(session),
            tokenizer,
            takes_token_type_ids,
            num_labels,
            activation,
        })
    }

    /// The scorer for `model`'s own export: its tokenizer and its activation. A file whose
    /// `logits` have another number of labels than the model is another model's export, and
    /// is refused.
    pub fn for_model(model: &CrossEncoder, onnx_file: &Path) -> Result<Self, OnnxError> {
        let scorer = Self::load(onnx_file, model.tokenizer().clone())?;
        if scorer.num_labels != model.num_labels() {
            return Err(OnnxError::LabelCount {
                file: onnx_file.to_path_buf(),
                onnx: scorer.num_labels,
                model: model.num_labels(),
            });
        }
        Ok(scorer.with_activation(model.default_activation()))
    }

    /// Sets the activation `rank` and the evaluators apply (the model's, from
    /// `config_sentence_transformers.json`).
    pub fn with_activation(mut self, activation: DefaultActivation) -> Self {
        self.activation = activation;
        self
    }

    /// `[batch][num_labels]` logits for tokenized pairs.
    pub fn logits(&self, encoded: &EncodedPairs) -> Result<Vec<Vec<f32>>, OnnxError> {
        let shape = vec![encoded.batch as i64, encoded.seq_len as i64];
        let tensor = |values: &[u32]| {
            Tensor::from_array((
                shape.clone(),
                values.iter().map(|&v| i64::from(v)).collect::<Vec<i64>>(),
            ))
            .map_err(runtime_error)
        };
        let mut inputs = ort::inputs![
            "input_ids" => tensor(&encoded.input_ids)?,
            "attention_mask" => tensor(&encoded.attention_mask)?,
        ];
        if self.takes_token_type_ids {
            inputs.push((
                "token_type_ids".into(),
                tensor(&encoded.token_type_ids)?.into(),
            ));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| OnnxError::Runtime("the session lock is poisoned".into()))?;
        let outputs = session.run(inputs).map_err(runtime_error)?;
        let (shape, values) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(runtime_error)?;
        let labels = shape.last().copied().unwrap_or(1).max(1) as usize;
        Ok(values.chunks(labels).map(<[f32]>::to_vec).collect())
    }

    /// Raw logits for many pairs, longest first in batches, returned in input order.
    pub fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, OnnxError> {
        let logits = score_longest_first(pairs, batch_size, |batch| {
            let encoded = self.tokenizer.encode_pairs(batch)?;
            self.logits(&encoded)
        })?;
        if let Some((pair, value)) = crosstrain_model::first_non_finite(&logits) {
            return Err(OnnxError::NonFiniteLogits { pair, value });
        }
        Ok(logits)
    }
}

impl PairScorer for OnnxScorer {
    fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ScoreError> {
        OnnxScorer::predict(self, pairs, batch_size).map_err(ScoreError::new)
    }

    fn num_labels(&self) -> usize {
        self.num_labels
    }

    fn default_activation(&self) -> DefaultActivation {
        self.activation
    }

    fn max_length(&self) -> usize {
        self.tokenizer.max_length()
    }

    fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }
}
