//! Reading and writing model weights with Hugging Face tensor names. Every parameter becomes a
//! trainable `Var` registered in a `VarMap` (for the optimiser and for saving); a missing
//! pooler or classifier is initialised as transformers does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};
use crosstrain_rng::SeededRng;

/// Whether `name` is a LayerNorm (or RMSNorm) module's parameter, whatever the family calls
/// it: BERT's `LayerNorm`, ModernBERT's `norm`, `attn_norm`, `mlp_norm`, `final_norm`, the
/// decoders' `input_layernorm`, `post_attention_layernorm`, `q_norm`, `k_norm`, `norm`. Initialised to
/// ones (the weight) and exempt from weight decay, as transformers does for every LayerNorm.
pub fn is_layer_norm(name: &str) -> bool {
    let module = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".bias"))
        .unwrap_or(name)
        .rsplit('.')
        .next()
        .unwrap_or_default();
    name.contains("LayerNorm")
        || name.contains("layer_norm")
        || name.contains("layernorm")
        || module == "norm"
        || module.ends_with("_norm")
}

/// How one model family names its tensors in a transformers checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorNames {
    /// The base model's attribute name (`bert`): encoder tensors live under `PREFIX.`.
    pub prefix: &'static str,
    /// Tensor name beginnings that a base-model checkpoint writes without the prefix.
    pub unprefixed_roots: &'static [&'static str],
    /// Name beginnings that transformers initialises when a checkpoint lacks them (a base
    /// model's missing pooler, any checkpoint's missing classification head).
    pub initialised_when_missing: &'static [&'static str],
}

impl TensorNames {
    /// The canonical (transformers) name of a checkpoint tensor: encoder weights under the
    /// family's prefix, and TF-era `gamma`/`beta` as `weight`/`bias`.
    pub fn canonical_name(&self, name: &str) -> String {
        let name = if self
            .unprefixed_roots
            .iter()
            .any(|root| name.starts_with(root))
        {
            format!("{}.{name}", self.prefix)
        } else {
            name.to_string()
        };
        if let Some(stem) = name.strip_suffix(".gamma") {
            format!("{stem}.weight")
        } else if let Some(stem) = name.strip_suffix(".beta") {
            format!("{stem}.bias")
        } else {
            name
        }
    }

    /// Whether transformers initialises this parameter when a checkpoint lacks it.
    fn may_be_initialised(&self, name: &str) -> bool {
        self.initialised_when_missing
            .iter()
            .any(|start| name.starts_with(start))
    }
}

/// A VarBuilder backend over a loaded checkpoint.
pub struct CheckpointBackend {
    tensors: HashMap<String, Tensor>,
    names: TensorNames,
    varmap: VarMap,
    rng: Mutex<SeededRng>,
    initializer_range: f64,
    from_scratch: bool,
    /// `(name ending, row)` of embedding rows that freshly initialised weights keep at zero.
    padding_rows: Vec<(&'static str, usize)>,
    /// A LoRA adapter: its missing matrices are drawn from their hints, and every parameter
    /// it does not train is frozen (a plain tensor, no `Var`, kept in `frozen`).
    adapter: Option<crate::lora::LoraConfig>,
    /// The dtype frozen parameters are kept in (bf16 halves a large base's memory).
    frozen_dtype: Option<DType>,
    /// The frozen parameters handed out, by name.
    frozen: std::sync::Arc<Mutex<Vec<(String, Tensor)>>>,
}

impl CheckpointBackend {
    /// Wraps checkpoint tensors (any names; they are canonicalised).
    pub fn new(
        tensors: HashMap<String, Tensor>,
        names: TensorNames,
        varmap: VarMap,
        seed: u64,
        initializer_range: f64,
    ) -> Self {
        Self {
            tensors: tensors
                .into_iter()
                .map(|(name, tensor)| (names.canonical_name(&name), tensor))
                .collect(),
            names,
            varmap,
            rng: Mutex::new(SeededRng::new(seed)),
            initializer_range,
            from_scratch: false,
            padding_rows: vec![("word_embeddings.weight", 0)],
            adapter: None,
            frozen_dtype: None,
            frozen: Default::default(),
        }
    }

    /// Loads for LoRA training: only what `adapter` trains becomes a `Var`; the rest is
    /// frozen, in `frozen_dtype` when given.
    pub fn with_adapter(
        mut self,
        adapter: crate::lora::LoraConfig,
        frozen_dtype: Option<DType>,
    ) -> Self {
        self.adapter = Some(adapter);
        self.frozen_dtype = frozen_dtype;
        self
    }

    /// The list the frozen parameters go to as the network loads (read it after loading).
    pub fn frozen_handle(&self) -> std::sync::Arc<Mutex<Vec<(String, Tensor)>>> {
        self.frozen.clone()
    }

    /// Embedding rows that initialisation zeroes, as transformers does for an embedding's
    /// `padding_idx` (default: row 0 of the word embeddings, BERT's `[PAD]`).
    pub fn with_padding_rows(mut self, rows: Vec<(&'static str, usize)>) -> Self {
        self.padding_rows = rows;
        self
    }

    /// A backend without checkpoint that initialises every parameter as transformers'
    /// `_init_weights` does, for training a model from its config alone.
    pub fn from_scratch(
        names: TensorNames,
        varmap: VarMap,
        seed: u64,
        initializer_range: f64,
    ) -> Self {
        Self {
            from_scratch: true,
            ..Self::new(HashMap::new(), names, varmap, seed, initializer_range)
        }
    }

    /// Normal(0, range) weights and zero biases from the seeded stream, as transformers'
    /// `_init_weights` does for Linear layers.
    fn initialise(
        &self,
        name: &str,
        shape: &Shape,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if name.ends_with(".bias") {
            return Tensor::zeros(shape, dtype, device);
        }
        if is_layer_norm(name) {
            return Tensor::ones(shape, dtype, device);
        }
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("initialiser lock poisoned".into()))?;
        let count = shape.elem_count();
        let mut values = Vec::with_capacity(count);
        while values.len() < count {
            // Box-Muller from two uniforms in (0, 1].
            let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let radius = (-2.0 * u1.ln()).sqrt() * self.initializer_range;
            let angle = 2.0 * std::f64::consts::PI * u2;
            values.push(radius * angle.cos());
            values.push(radius * angle.sin());
        }
        values.truncate(count);
        for &(ending, row) in &self.padding_rows {
            if name.ends_with(ending) {
                // transformers zeroes an embedding's padding_idx row.
                let width = shape.dims().last().copied().unwrap_or(0);
                let start = (row * width).min(count);
                values[start..(start + width).min(count)].fill(0.0);
            }
        }
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }
}

impl CheckpointBackend {
    /// A fresh adapter matrix as its layer asks for it: uniform in the hint's bounds (PEFT's
    /// Kaiming-uniform) or constant, from the seeded stream.
    fn initialise_from_hint(
        &self,
        shape: &Shape,
        hint: Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        match hint {
            Init::Const(value) => {
                (Tensor::ones(shape, DType::F32, device)? * value)?.to_dtype(dtype)
            }
            Init::Uniform { lo, up } => {
                let mut rng = self
                    .rng
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("initialiser lock poisoned".into()))?;
                let values: Vec<f64> = (0..shape.elem_count())
                    .map(|_| {
                        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        lo + (up - lo) * unit
                    })
                    .collect();
                Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
            }
            other => Err(candle_core::Error::Msg(format!(
                "no initialiser for an adapter matrix hinted {other:?}"
            ))),
        }
    }
}

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = match self.tensors.get(name) {
            Some(tensor) => {
                if tensor.shape() != &shape {
                    return Err(candle_core::Error::Msg(format!(
                        "tensor {name} has shape {:?} in the checkpoint, the config implies {:?}",
                        tensor.dims(),
                        shape.dims()
                    )));
                }
                tensor.to_dtype(dtype)?.to_device(device)?
            }
            None if self.adapter.is_some() && crate::lora::is_adapter_tensor(name) => {
                self.initialise_from_hint(&shape, hint, dtype, device)?
            }
            None if self.from_scratch || self.names.may_be_initialised(name) => {
                self.initialise(name, &shape, dtype, device)?
            }
            None => {
                return Err(candle_core::Error::Msg(format!(
                    "the checkpoint has no tensor {name} (also looked for it without the \"{}.\" prefix)",
                    self.names.prefix
                )))
            }
        };
        if let Some(adapter) = &self.adapter {
            if !adapter.trains(name) {
                // Norm weights are few and are applied in float32 anyway: only the matrices
                // (embeddings, projections, heads) are worth halving.
                let frozen = match self.frozen_dtype {
                    Some(frozen_dtype) if !is_layer_norm(name) => tensor.to_dtype(frozen_dtype)?,
                    _ => tensor,
                };
                self.frozen
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("frozen list lock poisoned".into()))?
                    .push((name.to_string(), frozen.clone()));
                return Ok(frozen);
            }
        }
        let var = Var::from_tensor(&tensor)?;
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        match self.tensors.get(name) {
            Some(tensor) => tensor.to_dtype(dtype)?.to_device(device),
            None => Err(candle_core::Error::Msg(format!(
                "the checkpoint has no tensor {name}"
            ))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A VarBuilder backend over tensors handed out as they are stored, whatever dtype the
/// builder asks for: a LoRA model's frozen bf16 base stays bf16 in an inference copy of the
/// network (candle's `HashMap` backend would convert every tensor to one dtype).
pub struct AsStored(pub HashMap<String, Tensor>);

impl SimpleBackend for AsStored {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _hint: Init,
        _dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.0.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("no tensor {name} among the model's parameters"))
        })?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name} has shape {:?}, the config implies {:?}",
                tensor.dims(),
                shape.dims()
            )));
        }
        tensor.to_device(device)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, device: &Device) -> Result<Tensor> {
        self.0
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
            .to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Writes named parameters as f32 safetensors under their transformers names.
pub fn save_safetensors(parameters: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = parameters
        .iter()
        .map(|(name, value)| {
            Ok((
                name.clone(),
                value
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    save_tensors(&tensors, path)
}

/// Writes `tensors` as a safetensors file whose permissions follow the umask like every other
/// file of a model directory. (The safetensors crate writes through a private temporary file
/// and renames it, which would leave the weights readable by their owner only: a model
/// directory shared with a serving user or group would have unreadable weights.)
/// Errors name the file (a full disk otherwise says only "No space left on device").
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = 0o666 & !process_umask();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// The process's file-creation mask, read from `/proc/self/status` (Linux) without changing
/// it; elsewhere the common 022.
#[cfg(unix)]
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_save_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/optimizer.safetensors");
        let tensors: HashMap<String, Tensor> = [(
            "w".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )]
        .into();
        let message = save_tensors(&tensors, &path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[cfg(unix)]
    #[test]
    fn saved_tensors_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let tensors: HashMap<String, Tensor> = [(
            "w".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )]
        .into();
        save_tensors(&tensors, &path).unwrap();
        let plain = dir.path().join("plain.json");
        std::fs::write(&plain, "{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }

    use super::*;
    use crate::bert::TENSOR_NAMES;

    fn canonical_name(name: &str) -> String {
        TENSOR_NAMES.canonical_name(name)
    }

    #[test]
    fn checkpoint_names_are_canonicalised() {
        assert_eq!(
            canonical_name("embeddings.word_embeddings.weight"),
            "bert.embeddings.word_embeddings.weight"
        );
        assert_eq!(
            canonical_name("bert.pooler.dense.bias"),
            "bert.pooler.dense.bias"
        );
        assert_eq!(canonical_name("classifier.weight"), "classifier.weight");
        assert_eq!(
            canonical_name("encoder.layer.0.attention.output.LayerNorm.gamma"),
            "bert.encoder.layer.0.attention.output.LayerNorm.weight"
        );
    }

    #[test]
    fn missing_heads_are_initialised_like_transformers_from_the_seed() {
        let backend =
            |seed| CheckpointBackend::new(HashMap::new(), TENSOR_NAMES, VarMap::new(), seed, 0.02);
        let first = backend(3);
        let weight = first
            .get(
                Shape::from((64, 128)),
                "classifier.weight",
                Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let values: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        let std = (values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64)
            .sqrt();
        assert!(
            mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
            "mean {mean} std {std}"
        );
        let bias = first
            .get(
                Shape::from(64),
                "classifier.bias",
                Init::Const(1.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(bias.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let again = backend(3)
            .get(
                Shape::from((64, 128)),
                "classifier.weight",
                Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(
            values,
            again.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Anything else missing is an error, never a silent random init.
        assert!(backend(3)
            .get(
                Shape::from(4),
                "bert.embeddings.LayerNorm.weight",
                Init::Const(1.0),
                DType::F32,
                &Device::Cpu
            )
            .is_err());
    }
}
