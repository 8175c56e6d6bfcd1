//! The cross-encoder: a model family's sequence classifier with its tokenizer and trainable
//! parameters, loaded from and saved to Hugging Face model directories in a layout that
//! transformers' `AutoModelForSequenceClassification` and sentence-transformers'
//! `CrossEncoder` load unchanged.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{Map, Value};

use crate::activation::{default_activation, DefaultActivation};
use crate::directory::{
    check_unused_tensors, decoder_setup, load_shards, read_prompts, SHARD_INDEX,
};
use crate::dropout::DropoutRng;
use crate::error::ModelError;
use crate::family::{FamilyConfig, ModelFamily, SequenceClassifier};
use crate::files::{default_max_length, load_tokenizer, read_model_config};
use crate::hub::resolve_model_dir;
use crate::parameters::{self, Trainable};
use crate::tokenize::{score_longest_first_in_lanes, EncodedPairs, PairTokenizer};
use crate::tokens::TokenTensors;
use crate::weights::{self, CheckpointBackend};

#[cfg(test)]
mod encoder_lora_tests;
mod save;

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
    /// The base model of an adapter directory, instead of its `base_model_name_or_path`.
    pub base_model: Option<String>,
    /// A fresh LoRA adapter to add to a full model (the recipe's `[peft]` table).
    pub adapter: Option<crate::lora::LoraConfig>,
    /// The dtype a LoRA model's frozen base is kept in (`--base-dtype bf16`); default: `dtype`.
    pub base_dtype: Option<DType>,
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
            base_model: None,
            adapter: None,
            base_dtype: None,
        }
    }
}

/// A loaded cross-encoder of any supported family: network, tokenizer, config, and
/// trainable parameters.
pub struct CrossEncoder {
    network: SequenceClassifier,
    tokenizer: PairTokenizer,
    config: FamilyConfig,
    raw_config: Map<String, Value>,
    source_dir: PathBuf,
    /// Every trainable `Var`, sorted by its first parameter's name.
    trainables: Vec<Trainable>,
    /// The packed layers' `Var`s in the network's layer order (also in `trainables`).
    packed_layers: Vec<Trainable>,
    dropout: DropoutRng,
    device: Device,
    initialised: Vec<String>,
    default_activation: DefaultActivation,
    /// `config_sentence_transformers.json`'s prompts by name, kept on save.
    prompts: std::collections::BTreeMap<String, String>,
    /// The prompt applied when none is asked for, by name.
    default_prompt_name: Option<String>,
    /// A LoRA model's adapter config (then only the adapter and `modules_to_save` train).
    lora: Option<crate::lora::LoraConfig>,
    /// A LoRA model's frozen base parameters, by name.
    frozen: Vec<(String, Tensor)>,
    /// A LoRA model's base, as `adapter_config.json` names it.
    base_model: Option<String>,
}

/// The first pair (0-based, input order) with a NaN or infinite logit, and that logit: a
/// score no ranking or metric can use, so scoring reports it instead of printing it.
pub fn first_non_finite(logits: &[Vec<f32>]) -> Option<(usize, f32)> {
    logits.iter().enumerate().find_map(|(pair, row)| {
        row.iter()
            .find(|value| !value.is_finite())
            .map(|&value| (pair, value))
    })
}

/// A truncation length the model can take: at least 1, at most what its position embeddings
/// allow. Checked when the model loads, so a run fails before it writes anything rather than
/// inside the first forward pass.
pub(crate) fn check_max_length(
    dir: &Path,
    requested: usize,
    config: &FamilyConfig,
) -> Result<usize, ModelError> {
    let limit = config.max_position_embeddings();
    if requested == 0 || requested > limit {
        return Err(ModelError::MaxLength {
            dir: dir.to_path_buf(),
            requested,
            limit,
        });
    }
    Ok(requested)
}

impl CrossEncoder {
    /// Loads a model from a directory or a Hugging Face model id.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Self, ModelError> {
        let dir = resolve_model_dir(spec)?;
        let mut model = Self::load_dir(&dir, options)?;
        if options.adapter.is_some() {
            // A fresh adapter names its base as the user did (a hub id stays an id).
            model.base_model = Some(spec.to_string());
        }
        Ok(model)
    }

    /// Loads a model directory, or a PEFT adapter directory on its base model.
    pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        if crate::lora::is_adapter_dir(dir) {
            if options.adapter.is_some() {
                return Err(ModelError::BadFile {
                    path: dir.join(crate::lora::ADAPTER_CONFIG),
                    message: "this is a LoRA adapter already: its adapter_config.json gives the \
                              adapter's settings, so a [peft] table cannot add another"
                        .into(),
                });
            }
            let adapter = crate::lora::read_adapter(dir, options.base_model.as_deref())?;
            let base_spec = crate::lora::resolve_base_model(dir, &adapter.base_model);
            let base_dir = resolve_model_dir(&base_spec).map_err(|e| ModelError::BadFile {
                path: dir.join(crate::lora::ADAPTER_CONFIG),
                message: format!(
                    "the base model {:?} does not load ({e}); name it with --base-model",
                    adapter.base_model
                ),
            })?;
            // sentence-transformers saves the tokenizer and its own files with the adapter.
            let files_dir = if dir.join("tokenizer.json").is_file() {
                dir
            } else {
                base_dir.as_path()
            };
            return Self::load_parts(&base_dir, files_dir, Some(adapter), options);
        }
        if let Some(base) = &options.base_model {
            return Err(ModelError::BadFile {
                path: dir.to_path_buf(),
                message: format!(
                    "a base model ({base}) is for a LoRA adapter directory (adapter_config.json \
                     without config.json); this is a full model"
                ),
            });
        }
        let adapter = options
            .adapter
            .clone()
            .map(|config| crate::lora::AdapterFiles {
                config,
                tensors: Default::default(),
                base_model: dir.to_string_lossy().into_owned(),
                dir: None,
            });
        Self::load_parts(dir, dir, adapter, options)
    }

    /// Loads the network of `dir` (config and weights) with the tokenizer, prompts and
    /// sentence-transformers files of `files_dir` (the same directory, or an adapter's), and
    /// the adapter, if any.
    fn load_parts(
        dir: &Path,
        files_dir: &Path,
        mut adapter: Option<crate::lora::AdapterFiles>,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        // The family is decided (and an unsupported one refused) before anything else is read.
        let (config, raw_config) = read_model_config(dir)?;
        let encoder = !matches!(config, FamilyConfig::Decoder(_));
        if let Some(adapter) = &mut adapter {
            if encoder && adapter.config.target_modules.is_none() {
                // PEFT's default for the family, written out so a saved adapter names it.
                let family = config.family();
                let defaults =
                    family
                        .peft_default_targets()
                        .ok_or_else(|| ModelError::BadFile {
                            path: adapter.config_path(),
                            message: format!(
                                "target_modules is required for {} (PEFT has no default for it): \
                             name the layers, e.g. [\"Wqkv\", \"Wo\"], or \"all-linear\"",
                                family.display_name()
                            ),
                        })?;
                adapter.config.target_modules = Some(crate::lora::TargetModules::Names(
                    defaults.iter().map(|name| name.to_string()).collect(),
                ));
            }
            adapter
                .config
                .validate()
                .map_err(|message| ModelError::BadFile {
                    path: adapter.config_path(),
                    message,
                })?;
        }
        // sentence-transformers' modules: any this crate does not run is an error here.
        let modules = crate::modules::read_modules(files_dir)?;
        let tensor_names = config.family().tensor_names();
        let weights_path = dir.join("model.safetensors");
        if weights_path.is_dir() {
            return Err(ModelError::NotAFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors",
            });
        }
        // Large checkpoints come in shards listed by an index (the 4B and 8B rerankers).
        let index_path = dir.join(SHARD_INDEX);
        let sharded = !weights_path.is_file() && index_path.is_file();
        let weights_path = if sharded { index_path } else { weights_path };
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
        let tokenizer_path = crate::files::model_file(files_dir, "tokenizer.json")?;
        let max_length = match options.max_length {
            Some(length) => check_max_length(files_dir, length, &config)?,
            None => default_max_length(files_dir, &config)?,
        };
        let mut tokenizer = load_tokenizer(&tokenizer_path, max_length)?;
        let config = if let FamilyConfig::Decoder(decoder) = config {
            let (mut decoder, chat) = decoder_setup(files_dir, decoder, &modules, &tokenizer)?;
            tokenizer = tokenizer.with_chat(chat);
            decoder.lora = adapter.as_ref().map(|adapter| adapter.config.clone());
            FamilyConfig::Decoder(decoder)
        } else {
            if let Some((_, folder)) = &modules.logit_score {
                return Err(ModelError::BadFile {
                    path: folder.clone(),
                    message: format!(
                        "a LogitScore module reads a causal LM's logits; this model is a {} \
                         sequence classifier",
                        config.family().display_name()
                    ),
                });
            }
            config
        };
        let num_labels = options.num_labels.unwrap_or_else(|| config.num_labels());
        let initializer_range = config.initializer_range();

        let mut checkpoint = if options.from_scratch {
            std::collections::HashMap::new()
        } else if sharded {
            load_shards(dir, &weights_path)?
        } else {
            candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
                ModelError::BadFile {
                    path: weights_path.clone(),
                    message: e.to_string(),
                }
            })?
        };
        // The adapter's tensors (and its saved modules', which replace the base's).
        let adapter_names: Vec<String> = adapter
            .as_ref()
            .map(|adapter| adapter.tensors.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(adapter) = &adapter {
            checkpoint.extend(adapter.tensors.clone());
        }
        // Names the checkpoint has; whatever else the model needs was initialised.
        let checkpoint_names: std::collections::HashSet<String> = checkpoint
            .keys()
            .map(|name| tensor_names.canonical_name(name))
            .collect();
        let varmap = VarMap::new();
        let backend = if options.from_scratch {
            CheckpointBackend::from_scratch(
                tensor_names,
                varmap.clone(),
                options.seed,
                initializer_range,
            )
        } else {
            CheckpointBackend::new(
                checkpoint,
                tensor_names,
                varmap.clone(),
                options.seed,
                initializer_range,
            )
        };
        let mut backend = backend.with_padding_rows(config.padding_rows());
        if let Some(adapter) = &adapter {
            backend = backend.with_adapter(adapter.config.clone(), options.base_dtype);
        }
        let frozen_handle = backend.frozen_handle();
        let backend_box: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(backend);
        let vb = VarBuilder::from_backend(backend_box, options.dtype, options.device.clone());
        let dropout = DropoutRng::default();
        let mut network = SequenceClassifier::load(vb.clone(), &config, num_labels, &dropout)
            .map_err(|e| ModelError::BadFile {
                path: weights_path.clone(),
                message: e.to_string(),
            })?;
        if let (Some(adapter), true) = (&adapter, encoder) {
            crate::lora::add_encoder_adapters(
                &vb,
                &adapter.config,
                config.family(),
                &frozen_handle,
            )
            .map_err(|e| ModelError::BadFile {
                path: adapter.config_path(),
                message: e.to_string(),
            })?;
        }
        let frozen: Vec<(String, Tensor)> = frozen_handle
            .lock()
            .map(|mut frozen| std::mem::take(&mut *frozen))
            .unwrap_or_default();
        let mut initialised: Vec<String> = varmap
            .data()
            .lock()
            .map(|vars| {
                vars.keys()
                    .filter(|name| !checkpoint_names.contains(*name))
                    // A fresh adapter is drawn as PEFT draws it, not "as transformers does".
                    .filter(|name| !crate::lora::is_adapter_tensor(name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        initialised.sort();
        let frozen_names: std::collections::HashSet<String> =
            frozen.iter().map(|(name, _)| name.clone()).collect();
        if let Some(adapter) = &adapter {
            crate::directory::check_adapter_used(adapter, &adapter_names, &varmap)?;
        }
        check_unused_tensors(&weights_path, &checkpoint_names, &varmap, &frozen_names)?;
        if !initialised.is_empty() && !options.from_scratch {
            tracing::warn!(
                model = %dir.display(),
                "not in the checkpoint, initialised as transformers does (normal(0, {}) weights, zero biases, seed {}): {}",
                initializer_range,
                options.seed,
                initialised.join(", ")
            );
        }
        // An adapted encoder's layers stay unpacked: their base is frozen, and they run on
        // weights with the adapter folded in, rebuilt for every forward pass.
        let (trainables, packed_layers) =
            pack_parameters(&mut network, &varmap, adapter.is_none())?;
        let default_activation = default_activation(files_dir, num_labels);
        let (prompts, default_prompt_name) = read_prompts(files_dir)?;
        if let Some(name) = &default_prompt_name {
            let prompt = prompts.get(name).ok_or_else(|| ModelError::BadFile {
                path: files_dir.join("config_sentence_transformers.json"),
                message: format!(
                    "default_prompt_name {name:?} is not among the prompts ({})",
                    prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
            if tokenizer.chat().is_some() {
                tokenizer.set_prompt(Some(prompt.clone()));
            }
        }
        Ok(Self {
            network,
            tokenizer,
            config,
            raw_config,
            source_dir: files_dir.to_path_buf(),
            trainables,
            packed_layers,
            dropout,
            device: options.device.clone(),
            initialised,
            default_activation,
            prompts,
            default_prompt_name,
            lora: adapter.as_ref().map(|adapter| adapter.config.clone()),
            base_model: adapter.map(|adapter| adapter.base_model),
            frozen,
        })
    }

    /// The config, as its family reads it.
    pub fn config(&self) -> &FamilyConfig {
        &self.config
    }

    /// The model family (`config.json`'s architecture).
    pub fn family(&self) -> ModelFamily {
        self.config.family()
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

    /// The prompts saved with the model (`config_sentence_transformers.json`), by name.
    pub fn prompts(&self) -> &std::collections::BTreeMap<String, String> {
        &self.prompts
    }

    /// The prompt every pair gets now (the default prompt after loading), if any.
    pub fn prompt(&self) -> Option<&str> {
        self.tokenizer.prompt()
    }

    /// Sets the prompt every pair gets, as sentence-transformers applies `prompt=`: a decoder
    /// reranker's leading system message, an encoder cross-encoder's prefix of the query.
    pub fn set_prompt(&mut self, prompt: Option<String>) {
        self.tokenizer.set_prompt(prompt);
    }

    /// Sets the saved prompt `name` as the prompt every pair gets.
    pub fn set_prompt_name(&mut self, name: &str) -> Result<(), ModelError> {
        let prompt = self
            .prompts
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::BadFile {
                path: self.source_dir.join("config_sentence_transformers.json"),
                message: format!(
                    "no prompt named {name:?}; the model has {}",
                    if self.prompts.is_empty() {
                        "none".to_string()
                    } else {
                        self.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            })?;
        self.set_prompt(Some(prompt));
        Ok(())
    }

    /// The activation sentence-transformers' `predict` would apply.
    pub fn default_activation(&self) -> DefaultActivation {
        self.default_activation
    }

    /// Every parameter's current value under its transformers name, sorted by name (views,
    /// no copies; a packed layer's parameters are slices of its `Var`).
    pub fn named_parameters(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut values = self.frozen.clone();
        for trainable in &self.trainables {
            values.extend(trainable.named_values()?);
        }
        values.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(values)
    }

    /// A LoRA model's adapter config (`None` for a model trained in full).
    pub fn lora(&self) -> Option<&crate::lora::LoraConfig> {
        self.lora.as_ref()
    }

    /// A LoRA model's base model, as its `adapter_config.json` names it.
    pub fn base_model(&self) -> Option<&str> {
        self.base_model.as_deref()
    }

    /// How many numbers train (all of them without an adapter).
    pub fn trainable_count(&self) -> usize {
        self.trainables
            .iter()
            .map(|trainable| trainable.var.elem_count())
            .sum()
    }

    /// How many numbers the model has, frozen or not.
    pub fn parameter_count(&self) -> usize {
        self.trainable_count()
            + self
                .frozen
                .iter()
                .map(|(_, tensor)| tensor.elem_count())
                .sum::<usize>()
    }

    /// Every parameter with each adapter merged into its layer (`W + scaling · B A`) and the
    /// adapter matrices gone: the full model the adapter makes, as PEFT's `merge_and_unload`
    /// gives it (in the base weights' dtype). Without an adapter, [`Self::named_parameters`].
    pub fn merged_parameters(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let parameters = self.named_parameters()?;
        match &self.lora {
            Some(lora) => crate::lora::merge_adapters(&parameters, lora.scaling()),
            None => Ok(parameters),
        }
    }

    /// The trainable `Var`s (what gets gradients and optimiser state) with the named
    /// parameters each holds, sorted by their first parameter's name.
    pub fn trainable_parameters(&self) -> &[Trainable] {
        &self.trainables
    }

    /// The shared dropout stream: `train(seed)` turns dropout on, `eval()` off.
    pub fn dropout(&self) -> &DropoutRng {
        &self.dropout
    }

    /// Token tensors for encoded pairs on the model's device.
    pub fn token_tensors(&self, encoded: &EncodedPairs) -> Result<TokenTensors, ModelError> {
        Ok(TokenTensors::for_model(
            encoded,
            &self.device,
            self.config().takes_token_type_ids(),
        )?)
    }

    /// Tokenizes the pairs.
    pub fn encode(&self, pairs: &[(&str, &str)]) -> Result<EncodedPairs, ModelError> {
        Ok(self.tokenizer.encode_pairs(pairs)?)
    }

    /// Tokenizes pairs with this prompt (or none) rather than the model's current one: what
    /// training uses, since sentence-transformers' losses apply only the training arguments'
    /// `prompts`, never the model's default prompt.
    pub fn encode_with_prompt(
        &self,
        pairs: &[(&str, &str)],
        prompt: Option<&str>,
    ) -> Result<EncodedPairs, ModelError> {
        Ok(self.tokenizer.encode_pairs_with_prompt(pairs, prompt)?)
    }

    /// `[batch, num_labels]` logits (with a graph; in training mode with dropout).
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor, ModelError> {
        if self.adapts_encoder() {
            return Ok(self.adapted_encoder_network()?.forward(tokens)?);
        }
        Ok(self.network.forward(tokens)?)
    }

    /// Whether this is an encoder family with a LoRA adapter (see
    /// [`crate::lora::fold_adapters`]).
    fn adapts_encoder(&self) -> bool {
        self.lora.is_some() && !matches!(self.config, FamilyConfig::Decoder(_))
    }

    /// An adapted encoder's network, built from the current `Var`s so the gradients reach
    /// A and B and the optimiser's updates are seen. Without LoRA dropout (or outside
    /// training) its layers run on their weights with the adapters folded in (cheap: one
    /// `B·A` product per adapted layer, and the fused kernels run unchanged). With LoRA
    /// dropout, which has no folded form, each adapted layer carries its adapter on candle's
    /// ops, as PEFT's `lora.Linear` computes it.
    fn adapted_encoder_network(&self) -> Result<SequenceClassifier, ModelError> {
        let lora = self.lora.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("adapted_encoder_network on a model without an adapter".into())
        })?;
        let with_dropout = lora.lora_dropout > 0.0 && self.dropout.is_training();
        self.encoder_network_with_adapters(lora, with_dropout)
    }

    /// [`Self::adapted_encoder_network`] with the adapters folded into the weights, or
    /// attached to their layers (`attached`).
    fn encoder_network_with_adapters(
        &self,
        lora: &crate::lora::LoraConfig,
        attached: bool,
    ) -> Result<SequenceClassifier, ModelError> {
        let parameters = self.named_parameters()?;
        let (tensors, config) = if attached {
            (parameters, self.config.with_encoder_adapters(lora))
        } else {
            let folded = crate::lora::fold_adapters(&parameters, lora.scaling())?;
            (folded, self.config.clone())
        };
        let vb = VarBuilder::from_backend(
            Box::new(weights::AsStored(tensors.into_iter().collect())),
            DType::F32,
            self.device.clone(),
        );
        Ok(SequenceClassifier::load(
            vb,
            &config,
            self.num_labels(),
            &self.dropout,
        )?)
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
        self.predict_with_prompt(pairs, batch_size, self.prompt())
    }

    /// [`Self::predict`] with this prompt (or none) instead of the model's current one: an
    /// evaluator's `prompt_name`, as the reference's evaluators pass it to `predict`.
    pub fn predict_with_prompt(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
        prompt: Option<&str>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let network = self.inference_network()?;
        // On the CPU, one batch per thread at a time (see `score_longest_first_in_lanes`).
        let lanes = if self.device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        // Fewer pairs than the lanes' batches hold: smaller batches, so every lane gets
        // work (20 pairs on 2 threads: two batches of 10, not one of 20 and an idle core).
        let batch_size = batch_size.min(pairs.len().div_ceil(lanes)).max(1);
        let logits = score_longest_first_in_lanes(pairs, batch_size, lanes, |batch| {
            let encoded = self.encode_with_prompt(batch, prompt)?;
            Ok::<_, ModelError>(
                network
                    .forward(&self.token_tensors(&encoded)?)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?,
            )
        })?;
        if let Some((pair, value)) = first_non_finite(&logits) {
            return Err(ModelError::NonFiniteLogits { pair, value });
        }
        Ok(logits)
    }

    /// The network over detached views of the parameters (the same storage, without the
    /// `Var` flag) and with dropout off. A forward pass through it records no backward graph,
    /// so each layer's intermediates are freed as soon as the next layer has read them
    /// instead of living until the logits are dropped: less memory and fresher caches for
    /// `predict` and evaluation. Built per call (it only clones handles), so it always sees
    /// the current weights.
    fn inference_network(&self) -> Result<SequenceClassifier, ModelError> {
        // An adapted encoder runs on its merged weights (in f32, as it trains).
        let parameters = if self.adapts_encoder() {
            self.merged_parameters()?
                .into_iter()
                .map(|(name, value)| Ok((name, value.to_dtype(DType::F32)?)))
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            self.named_parameters()?
        };
        let tensors: std::collections::HashMap<String, Tensor> = parameters
            .into_iter()
            .map(|(name, value)| (name, value.detach()))
            .collect();
        // The trainable parameters' dtype (a LoRA model's frozen base may be kept in bf16).
        let dtype = self
            .trainables
            .first()
            .map_or(DType::F32, |trainable| trainable.var.dtype());
        let vb = VarBuilder::from_backend(
            Box::new(weights::AsStored(tensors)),
            dtype,
            self.device.clone(),
        );
        let mut network =
            SequenceClassifier::load(vb, &self.config, self.num_labels(), &DropoutRng::default())?;
        // The packed layers read their packed vector as it is, detached like the rest.
        let packed: Vec<Tensor> = self
            .packed_layers
            .iter()
            .map(|trainable| trainable.var.as_tensor().detach())
            .collect();
        if !self.adapts_encoder() {
            parameters::use_packed(network.packed_layers_mut(), packed)?;
        }
        Ok(network)
    }
}

/// The network's trainable `Var`s once the layers that run fused keep their parameters
/// packed ([`crate::parameters`]): every `Var`, sorted by its first parameter's name, and the
/// packed ones in layer order.
fn pack_parameters(
    network: &mut SequenceClassifier,
    varmap: &VarMap,
    pack: bool,
) -> Result<(Vec<Trainable>, Vec<Trainable>), ModelError> {
    let vars: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .map(|vars| vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut names_by_id: std::collections::HashMap<candle_core::TensorId, String> = vars
        .iter()
        .map(|(name, var)| (var.as_tensor().id(), name.clone()))
        .collect();
    let packed_layers = if pack {
        parameters::pack_layers(network.packed_layers_mut(), &mut names_by_id)?
    } else {
        Vec::new()
    };
    let mut trainables: Vec<Trainable> = vars
        .into_iter()
        .filter(|(_, var)| names_by_id.contains_key(&var.as_tensor().id()))
        .map(|(name, var)| Trainable::single(name, var))
        .chain(packed_layers.iter().cloned())
        .collect();
    trainables.sort_by(|a, b| a.parts[0].name.cmp(&b.parts[0].name));
    Ok((trainables, packed_layers))
}
