//! The trainable BERT cross-encoder on candle, and Hugging Face model directories: loading
//! (`config.json`, `model.safetensors`, `tokenizer.json`; a hub id is downloaded with
//! `hf-hub`) and saving in a layout that transformers' `AutoModelForSequenceClassification`
//! and sentence-transformers' `CrossEncoder` load unchanged.

mod attention;
mod bert;
pub mod config;
pub mod dropout;
mod embedder;
mod embeddings;
mod encoder;
mod encoder_layer;
mod feed_forward;
pub mod fused;
mod fused_layer;
pub mod layer_norm;
mod pooler;
pub(crate) mod simd;
#[cfg(test)]
mod test_support;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{Map, Value};

pub use bert::{BertForSequenceClassification, TokenTensors};
pub use config::BertConfig;
pub use dropout::DropoutRng;
pub use embedder::{Pooling, SentenceEmbedder};
pub use encoder::BertEncoder;

use crate::tokenize::{score_longest_first_in_lanes, EncodedPairs, PairTokenizer};
use weights::CheckpointBackend;

/// What can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Neither a directory nor a hub id.
    #[error("model {spec:?}: no such directory, and not a Hugging Face model id (owner/name)")]
    NotFound {
        /// What the user gave.
        spec: String,
    },
    /// A required file is missing.
    #[error("model directory {dir}: missing {file}")]
    MissingFile {
        /// The directory.
        dir: PathBuf,
        /// The file.
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
    #[error("tokenizing: {0}")]
    Tokenize(String),
    /// A device that does not exist or that this build cannot use.
    #[error("{0}")]
    Device(String),
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Truncation length; default: `model_max_length` of `tokenizer_config.json` capped at
    /// `max_position_embeddings` (what sentence-transformers uses), else the latter.
    pub max_length: Option<usize>,
    /// Number of outputs; default from `config.json` (`id2label`), else 1.
    pub num_labels: Option<usize>,
    /// Where the tensors live.
    pub device: Device,
    /// Parameter dtype (f32; f64 for gradient checks).
    pub dtype: DType,
    /// Seed for freshly initialised heads.
    pub seed: u64,
    /// Ignore `model.safetensors` and initialise every parameter from the seed (training
    /// from scratch; the directory needs only `config.json` and `tokenizer.json`).
    pub from_scratch: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_length: None,
            num_labels: None,
            device: Device::Cpu,
            dtype: DType::F32,
            seed: 42,
            from_scratch: false,
        }
    }
}

/// The sentence-transformers activation a model's `predict` applies by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultActivation {
    /// Sigmoid (1 label).
    Sigmoid,
    /// Identity (several labels, or as configured).
    Identity,
}

impl DefaultActivation {
    /// Applies the activation to rows of logits, as the reference's `predict` does before
    /// handing scores to its evaluators.
    pub fn apply(self, logits: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        match self {
            DefaultActivation::Identity => logits,
            DefaultActivation::Sigmoid => logits
                .into_iter()
                .map(|row| row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect())
                .collect(),
        }
    }
}

/// Whether `spec` names a device crosstrain knows: `cpu`, `cuda` or `cuda:N` (checked
/// without touching a GPU, for config validation).
pub fn is_device_spec(spec: &str) -> bool {
    device_ordinal(spec).is_ok()
}

/// `None` for the CPU, `Some(N)` for CUDA device N.
fn device_ordinal(spec: &str) -> Result<Option<usize>, ModelError> {
    let lower = spec.trim().to_ascii_lowercase();
    match lower.as_str() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                ModelError::Device(format!("unknown device {spec:?}; use cpu, cuda or cuda:N"))
            }),
    }
}

/// The device `cpu`, `cuda` or `cuda:N` names. CUDA needs a build with the `cuda` feature
/// (`scripts/build-cuda.sh`); without it the error says so instead of failing later.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    match device_ordinal(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => cuda_device(ordinal),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Err(ModelError::Device(format!(
        "cuda:{ordinal} was asked for, but this crosstrain was built without CUDA; build it \
         with `cargo build --release -p crosstrain --features cuda` (see scripts/build-cuda.sh)"
    )))
}

/// `config.json` of a model directory, parsed and validated, with its raw JSON (kept so that
/// saving writes back every key, known or not).
pub(crate) fn read_bert_config(dir: &Path) -> Result<(BertConfig, Map<String, Value>), ModelError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: "config.json",
        });
    }
    let raw_config = match read_json(&config_path)? {
        Value::Object(map) => map,
        _ => {
            return Err(ModelError::BadFile {
                path: config_path,
                message: "expected a JSON object".into(),
            })
        }
    };
    let config: BertConfig =
        serde_json::from_value(Value::Object(raw_config.clone())).map_err(|e| {
            ModelError::BadFile {
                path: config_path.clone(),
                message: e.to_string(),
            }
        })?;
    config.validate().map_err(|message| ModelError::BadFile {
        path: config_path.clone(),
        message,
    })?;
    Ok((config, raw_config))
}

/// `tokenizer.json` with the reference's padding and truncation at `max_length`.
pub(crate) fn load_tokenizer(path: &Path, max_length: usize) -> Result<PairTokenizer, ModelError> {
    PairTokenizer::from_file(path, max_length).map_err(|message| ModelError::BadFile {
        path: path.to_path_buf(),
        message,
    })
}

/// A loaded cross-encoder: network, tokenizer, config, and trainable parameters.
pub struct CrossEncoder {
    network: BertForSequenceClassification,
    tokenizer: PairTokenizer,
    config: BertConfig,
    raw_config: Map<String, Value>,
    source_dir: PathBuf,
    varmap: VarMap,
    dropout: DropoutRng,
    device: Device,
    initialised: Vec<String>,
    default_activation: DefaultActivation,
}

pub(crate) fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// The directory of a model: a local path, else a hub id downloaded with hf-hub.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_hub_id = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').all(|part| !part.is_empty());
    if !looks_like_hub_id {
        return Err(ModelError::NotFound {
            spec: spec.to_string(),
        });
    }
    download_from_hub(spec)
}

/// Fetches the files a cross-encoder needs from the Hugging Face hub into its cache (this
/// path needs the network, so tests use local directories).
fn download_from_hub(model_id: &str) -> Result<PathBuf, ModelError> {
    let download_error = |message: String| ModelError::Download {
        model: model_id.to_string(),
        message,
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| download_error(e.to_string()))?;
    let repo = api.model(model_id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| download_error(format!("config.json: {e}")))?;
    for file in ["model.safetensors", "tokenizer.json"] {
        repo.get(file)
            .map_err(|e| download_error(format!("{file}: {e}")))?;
    }
    for optional in ["tokenizer_config.json", "config_sentence_transformers.json"] {
        // Optional files: their absence is normal.
        let _ = repo.get(optional);
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| download_error("the hub cache returned no directory".into()))
}

impl CrossEncoder {
    /// Loads a model from a directory or a Hugging Face model id.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Self, ModelError> {
        let dir = resolve_model_dir(spec)?;
        Self::load_dir(&dir, options)
    }

    /// Loads a model directory.
    pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        let (config, raw_config) = read_bert_config(dir)?;
        let weights_path = dir.join("model.safetensors");
        if !options.from_scratch && !weights_path.is_file() {
            if dir.join("pytorch_model.bin").is_file() {
                return Err(ModelError::PytorchBin {
                    dir: dir.to_path_buf(),
                });
            }
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors",
            });
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "tokenizer.json",
            });
        }
        let max_length = match options.max_length {
            Some(length) => length,
            None => default_max_length(dir, &config)?,
        };
        let tokenizer = load_tokenizer(&tokenizer_path, max_length)?;
        let num_labels = options.num_labels.unwrap_or_else(|| config.num_labels());

        let checkpoint = if options.from_scratch {
            std::collections::HashMap::new()
        } else {
            candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
                ModelError::BadFile {
                    path: weights_path.clone(),
                    message: e.to_string(),
                }
            })?
        };
        // Names the checkpoint has; whatever else the model needs was initialised.
        let checkpoint_names: std::collections::HashSet<String> = checkpoint
            .keys()
            .map(|name| weights::canonical_name(name))
            .collect();
        let varmap = VarMap::new();
        let backend = if options.from_scratch {
            CheckpointBackend::from_scratch(varmap.clone(), options.seed, config.initializer_range)
        } else {
            CheckpointBackend::new(
                checkpoint,
                varmap.clone(),
                options.seed,
                config.initializer_range,
            )
        };
        let backend_box: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(backend);
        let vb = VarBuilder::from_backend(backend_box, options.dtype, options.device.clone());
        let dropout = DropoutRng::default();
        let network = BertForSequenceClassification::load(vb, &config, num_labels, &dropout)
            .map_err(|e| ModelError::BadFile {
                path: weights_path.clone(),
                message: e.to_string(),
            })?;
        let mut initialised: Vec<String> = varmap
            .data()
            .lock()
            .map(|vars| {
                vars.keys()
                    .filter(|name| !checkpoint_names.contains(*name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        initialised.sort();
        if !initialised.is_empty() && !options.from_scratch {
            tracing::warn!(
                model = %dir.display(),
                "not in the checkpoint, initialised as transformers does (normal(0, {}) weights, zero biases, seed {}): {}",
                config.initializer_range,
                options.seed,
                initialised.join(", ")
            );
        }
        let default_activation = default_activation(dir, num_labels);
        Ok(Self {
            network,
            tokenizer,
            config,
            raw_config,
            source_dir: dir.to_path_buf(),
            varmap,
            dropout,
            device: options.device.clone(),
            initialised,
            default_activation,
        })
    }

    /// The config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Number of outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.network.num_labels()
    }

    /// Truncation length.
    pub fn max_length(&self) -> usize {
        self.tokenizer.max_length()
    }

    /// The pair tokenizer.
    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The directory the model was loaded from.
    pub fn source_dir(&self) -> &Path {
        &self.source_dir
    }

    /// Parameters that were freshly initialised because the checkpoint lacked them.
    pub fn initialised_parameters(&self) -> &[String] {
        &self.initialised
    }

    /// The activation sentence-transformers' `predict` would apply.
    pub fn default_activation(&self) -> DefaultActivation {
        self.default_activation
    }

    /// Every trainable parameter with its transformers name, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .map(|vars| vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
            .unwrap_or_default();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The shared dropout stream: `train(seed)` turns dropout on, `eval()` off.
    pub fn dropout(&self) -> &DropoutRng {
        &self.dropout
    }

    /// Token tensors for encoded pairs on the model's device.
    pub fn token_tensors(&self, encoded: &EncodedPairs) -> Result<TokenTensors, ModelError> {
        Ok(TokenTensors::new(encoded, &self.device)?)
    }

    /// Tokenizes the pairs.
    pub fn encode(&self, pairs: &[(&str, &str)]) -> Result<EncodedPairs, ModelError> {
        self.tokenizer
            .encode_pairs(pairs)
            .map_err(ModelError::Tokenize)
    }

    /// `[batch, num_labels]` logits (with a graph; in training mode with dropout).
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor, ModelError> {
        Ok(self.network.forward(tokens)?)
    }

    /// Tokenizes and scores pairs in one call.
    pub fn logits(&self, pairs: &[(&str, &str)]) -> Result<Tensor, ModelError> {
        let encoded = self.encode(pairs)?;
        self.forward(&self.token_tensors(&encoded)?)
    }

    /// Raw logits for many pairs in eval mode, `batch_size` at a time. Like the reference's
    /// `predict`, pairs are scored in order of length so batches pad little; results come back
    /// in input order.
    pub fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let network = self.inference_network()?;
        // On the CPU, one batch per thread at a time (see `score_longest_first_in_lanes`).
        let lanes = if self.device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        score_longest_first_in_lanes(pairs, batch_size, lanes, |batch| {
            let encoded = self.encode(batch)?;
            Ok(network
                .forward(&self.token_tensors(&encoded)?)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?)
        })
    }

    /// The network over detached views of the parameters (the same storage, without the
    /// `Var` flag) and with dropout off. A forward pass through it records no backward graph,
    /// so each layer's intermediates are freed as soon as the next layer has read them
    /// instead of living until the logits are dropped: less memory and fresher caches for
    /// `predict` and evaluation. Built per call (it only clones handles), so it always sees
    /// the current weights.
    fn inference_network(&self) -> Result<BertForSequenceClassification, ModelError> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .named_parameters()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().detach()))
            .collect();
        let dtype = tensors
            .values()
            .next()
            .map_or(DType::F32, |tensor| tensor.dtype());
        let vb = VarBuilder::from_tensors(tensors, dtype, &self.device);
        Ok(BertForSequenceClassification::load(
            vb,
            &self.config,
            self.num_labels(),
            &DropoutRng::default(),
        )?)
    }

    /// Writes the model directory atomically: everything goes to a temporary directory beside
    /// `dir`, which is renamed into place. An existing non-empty `dir` is an error.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(ModelError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        crate::fsutil::write_dir_atomically(
            dir,
            |path, source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            },
            |staging| self.write_to(staging),
        )
    }

    /// Writes the model files into an existing directory (not atomically; [`Self::save`] and
    /// the trainer's checkpoints wrap this in a staging directory).
    pub fn write_to(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_files(dir)
    }

    fn write_files(&self, dir: &Path) -> Result<(), ModelError> {
        let write_json = |file: &str, value: &Value| -> Result<(), ModelError> {
            let path = dir.join(file);
            let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::BadFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io { path, source })
        };
        weights::save_safetensors(&self.varmap, &dir.join("model.safetensors"))?;
        let config = self
            .config
            .to_saved_json(&self.raw_config, self.num_labels());
        write_json("config.json", &Value::Object(config))?;

        let tokenizer_path = dir.join("tokenizer.json");
        self.tokenizer
            .tokenizer()
            .save(&tokenizer_path, true)
            .map_err(|e| ModelError::BadFile {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let mut tokenizer_config = match read_json(&self.source_dir.join("tokenizer_config.json")) {
            Ok(Value::Object(map)) => map,
            _ => default_tokenizer_config(),
        };
        tokenizer_config.insert("model_max_length".into(), self.max_length().into());
        tokenizer_config.insert("max_length".into(), self.max_length().into());
        write_json("tokenizer_config.json", &Value::Object(tokenizer_config))?;
        if let Ok(special) = read_json(&self.source_dir.join("special_tokens_map.json")) {
            write_json("special_tokens_map.json", &special)?;
        }

        let activation = match self.default_activation {
            DefaultActivation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
            DefaultActivation::Identity => "torch.nn.modules.linear.Identity",
        };
        write_json(
            "config_sentence_transformers.json",
            &serde_json::json!({
                "__version__": {
                    "sentence_transformers": "6.2.0",
                    "crosstrain": env!("CARGO_PKG_VERSION"),
                },
                "activation_fn": activation,
                "default_prompt_name": null,
                "model_type": "CrossEncoder",
                "prompts": {},
            }),
        )?;
        write_json(
            "modules.json",
            &serde_json::json!([{
                "idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.base.modules.transformer.Transformer"
            }]),
        )?;
        write_json(
            "sentence_bert_config.json",
            &serde_json::json!({
                "transformer_task": "sequence-classification",
                "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
                "module_output_name": "scores"
            }),
        )?;
        Ok(())
    }
}

/// A BERT tokenizer_config.json for directories that have none.
fn default_tokenizer_config() -> Map<String, Value> {
    match serde_json::json!({
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": true,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "padding_side": "right",
        "truncation_side": "right",
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `model_max_length` of `tokenizer_config.json` capped at `max_position_embeddings`, as
/// sentence-transformers does (its `max_length` key is a leftover and ignored).
pub(crate) fn default_max_length(dir: &Path, config: &BertConfig) -> Result<usize, ModelError> {
    let path = dir.join("tokenizer_config.json");
    let from_tokenizer = if path.is_file() {
        read_json(&path)?
            .get("model_max_length")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    } else {
        None
    };
    Ok(from_tokenizer.map_or(config.max_position_embeddings, |n| {
        n.min(config.max_position_embeddings)
    }))
}

/// The activation stored in `config_sentence_transformers.json` (v6), else the library's
/// default: sigmoid for one label, identity otherwise.
fn default_activation(dir: &Path, num_labels: usize) -> DefaultActivation {
    let stored = read_json(&dir.join("config_sentence_transformers.json"))
        .ok()
        .and_then(|v| {
            v.get("activation_fn")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    match stored.as_deref() {
        Some(name) if name.ends_with("Sigmoid") => DefaultActivation::Sigmoid,
        Some(name) if name.ends_with("Identity") => DefaultActivation::Identity,
        _ if num_labels == 1 => DefaultActivation::Sigmoid,
        _ => DefaultActivation::Identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        for good in ["cuda", "cuda:0", "cuda:3", "gpu"] {
            assert!(is_device_spec(good), "{good}");
        }
        for bad in ["tpu", "cuda:", "cuda:x", "cuda0", ""] {
            assert!(!is_device_spec(bad), "{bad}");
            let error = parse_device(bad).unwrap_err().to_string();
            assert!(error.contains("use cpu, cuda or cuda:N"), "{error}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let error = parse_device("cuda:1").unwrap_err().to_string();
        assert!(
            error.contains("cuda:1") && error.contains("--features cuda"),
            "{error}"
        );
    }
}
