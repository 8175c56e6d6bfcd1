//! LoRA adapters as PEFT defines them (`LoraConfig`, `LoraLayer`): a frozen linear layer
//! `W` plus a trainable low-rank update, `y = W x + b + scaling · B (A dropout(x))` with A
//! `[r, in]`, B `[out, r]` and `scaling = lora_alpha / r` (`lora_alpha / √r` with rsLoRA).
//!
//! Why PEFT's names and files: people publish the adapter, not the model, and load it with
//! `peft` or sentence-transformers' `CrossEncoder(dir)`; a crosstrain adapter has to be that
//! file under those tensor names, and a PEFT adapter has to continue training here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;

mod encoder;
mod linear;

pub(crate) use encoder::add_encoder_adapters;
pub use encoder::fold_adapters;
pub use linear::LoraLinear;

/// The adapter's config file in an adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights in an adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What PEFT puts before a base-model tensor name in an adapter file
/// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Which linear layers get an adapter, as PEFT's `target_modules` says it: a list of module
/// names (a layer matches when its path is the name or ends with `.name`), or one regular
/// expression that must match the whole path, or `"all-linear"` (every linear layer but the
/// output head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names, e.g. `["q_proj", "v_proj"]`.
    Names(Vec<String>),
    /// A regular expression over the whole module path, or `"all-linear"`.
    Pattern(String),
}

/// PEFT's `LoraConfig`, the keys that shape the maths; read from a recipe's `[peft]` table
/// and from `adapter_config.json` (whose other keys must keep their defaults: see
/// [`LoraConfig::from_adapter_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// The adapter kind; only `"lora"` (PEFT's `peft_type = "LORA"`).
    #[serde(default = "default_type", rename = "type")]
    pub adapter_type: String,
    /// The rank of the update (PEFT's default 8).
    #[serde(default = "default_rank")]
    pub r: usize,
    /// The update is scaled by `lora_alpha / r` (PEFT's default 8).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training (PEFT's default 0).
    #[serde(default)]
    pub lora_dropout: f64,
    /// The layers that get an adapter; default: PEFT's for the family (Qwen, Llama:
    /// `q_proj` and `v_proj`).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules trained in full beside the adapter (a fresh classification head: `["score"]`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Which biases train: only `"none"` (PEFT's default).
    #[serde(default = "default_bias")]
    pub bias: String,
    /// rsLoRA: scale by `lora_alpha / √r` instead of `lora_alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// PEFT's default initialisation (A Kaiming-uniform, B zero, so training starts at the
    /// base model); `false` draws B like A, as PEFT's `init_lora_weights=False` does.
    #[serde(default = "default_true")]
    pub init_lora_weights: bool,
}

fn default_type() -> String {
    "lora".into()
}
fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_true() -> bool {
    true
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            adapter_type: default_type(),
            r: default_rank(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: None,
            modules_to_save: None,
            bias: default_bias(),
            use_rslora: false,
            init_lora_weights: true,
        }
    }
}

/// PEFT's default `target_modules` for the decoder families (its
/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` for qwen2, qwen3 and llama).
const DECODER_DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// The output heads `"all-linear"` leaves out, as PEFT does.
const OUTPUT_HEADS: &[&str] = &["lm_head", "score", "classifier"];

impl LoraConfig {
    /// Why the config cannot be used, if it cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.adapter_type.eq_ignore_ascii_case("lora") {
            return Err(format!(
                "type {:?}: only \"lora\" adapters are supported",
                self.adapter_type
            ));
        }
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(format!(
                "lora_alpha must be positive, not {}",
                self.lora_alpha
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout must be in [0, 1), not {}",
                self.lora_dropout
            ));
        }
        if self.bias != "none" {
            return Err(format!(
                "bias {:?}: only \"none\" is supported (the base's biases stay frozen)",
                self.bias
            ));
        }
        if let Some(TargetModules::Pattern(pattern)) = &self.target_modules {
            if pattern != "all-linear" {
                regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("target_modules {pattern:?} is not a regex: {e}"))?;
            }
        }
        if let Some(TargetModules::Names(names)) = &self.target_modules {
            if names.is_empty() {
                return Err("target_modules is empty".into());
            }
        }
        Ok(())
    }

    /// The factor on `B A x`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether the linear layer at `path` (`model.layers.0.self_attn.q_proj`) gets an adapter.
    pub fn targets(&self, path: &str) -> bool {
        let leaf = path.rsplit('.').next().unwrap_or(path);
        match &self.target_modules {
            None => DECODER_DEFAULT_TARGETS.contains(&leaf),
            Some(TargetModules::Names(names)) => names
                .iter()
                .any(|name| path == name || path.ends_with(&format!(".{name}"))),
            Some(TargetModules::Pattern(pattern)) if pattern == "all-linear" => {
                !OUTPUT_HEADS.contains(&leaf)
            }
            Some(TargetModules::Pattern(pattern)) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(|re| re.is_match(path))
                .unwrap_or(false),
        }
    }

    /// Whether parameter `name` belongs to a module trained in full (`modules_to_save`).
    pub fn saves_module(&self, name: &str) -> bool {
        self.modules_to_save.iter().flatten().any(|module| {
            name.starts_with(&format!("{module}.")) || name.contains(&format!(".{module}."))
        })
    }

    /// Whether parameter `name` trains: an adapter matrix or a saved module's parameter.
    pub fn trains(&self, name: &str) -> bool {
        is_adapter_tensor(name) || self.saves_module(name)
    }

    /// Reads `adapter_config.json`. Keys that change the maths in ways crosstrain does not
    /// implement (DoRA, per-layer ranks, fan-in-fan-out weights, ...) must hold their
    /// defaults; anything else PEFT writes is ignored.
    pub fn from_adapter_config(path: &Path, json: &Value) -> std::result::Result<Self, ModelError> {
        let bad = |message: String| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let object = json
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let peft_type = object
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type:?}: only LORA adapters are supported"
            )));
        }
        type IsSet = fn(&Value) -> bool;
        let unsupported: &[(&str, IsSet)] = &[
            ("use_dora", |v| v.as_bool() == Some(true)),
            ("fan_in_fan_out", |v| v.as_bool() == Some(true)),
            ("lora_bias", |v| v.as_bool() == Some(true)),
            ("use_qalora", |v| v.as_bool() == Some(true)),
            ("rank_pattern", |v| {
                v.as_object().is_some_and(|m| !m.is_empty())
            }),
            ("alpha_pattern", |v| {
                v.as_object().is_some_and(|m| !m.is_empty())
            }),
            ("layers_to_transform", |v| !v.is_null()),
            ("layer_replication", |v| !v.is_null()),
            ("exclude_modules", |v| {
                !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())
            }),
            ("trainable_token_indices", |v| !v.is_null()),
            ("target_parameters", |v| !v.is_null()),
        ];
        for (key, is_set) in unsupported {
            if object.get(*key).is_some_and(is_set) {
                return Err(bad(format!(
                    "{key} = {}: crosstrain's LoRA does not implement it",
                    object[*key]
                )));
            }
        }
        let field = |key: &str| object.get(key).filter(|v| !v.is_null()).cloned();
        let number = |key: &str, default: f64| -> std::result::Result<f64, ModelError> {
            match field(key) {
                None => Ok(default),
                Some(value) => value
                    .as_f64()
                    .ok_or_else(|| bad(format!("{key} is not a number: {value}"))),
            }
        };
        let target_modules = match field("target_modules") {
            None => None,
            Some(value) => Some(serde_json::from_value(value.clone()).map_err(|_| {
                bad(format!(
                    "target_modules is neither names nor a regex: {value}"
                ))
            })?),
        };
        let modules_to_save = match field("modules_to_save") {
            None => None,
            Some(value) => Some(
                serde_json::from_value(value.clone())
                    .map_err(|_| bad(format!("modules_to_save is not a list of names: {value}")))?,
            ),
        };
        let config = Self {
            adapter_type: "lora".into(),
            r: number("r", default_rank() as f64)? as usize,
            lora_alpha: number("lora_alpha", default_alpha())?,
            lora_dropout: number("lora_dropout", 0.0)?,
            target_modules,
            modules_to_save,
            bias: field("bias")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(default_bias),
            use_rslora: field("use_rslora")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            init_lora_weights: field("init_lora_weights")
                .map(|v| v.as_bool() != Some(false))
                .unwrap_or(true),
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// `adapter_config.json` as PEFT writes it, for `base_model_name_or_path`.
    pub fn to_adapter_config(&self, base_model: &str) -> Value {
        let target_modules = match &self.target_modules {
            Some(targets) => serde_json::to_value(targets).unwrap_or(Value::Null),
            None => serde_json::json!(DECODER_DEFAULT_TARGETS),
        };
        serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": self.bias,
            "fan_in_fan_out": false,
            "inference_mode": false,
            "init_lora_weights": self.init_lora_weights,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            // PEFT writes an integer alpha as one.
            "lora_alpha": if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
                serde_json::json!(self.lora_alpha as i64)
            } else {
                serde_json::json!(self.lora_alpha)
            },
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": self.modules_to_save,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": target_modules,
            "task_type": null,
            "use_dora": false,
            "use_rslora": self.use_rslora,
        })
    }
}

/// Whether `name` is an adapter matrix (`...q_proj.lora_A.weight`).
pub fn is_adapter_tensor(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// An adapter directory, read: its config, its tensors under the base model's names, and
/// the base model's directory or hub id.
#[derive(Debug)]
pub struct AdapterFiles {
    /// The adapter's config.
    pub config: LoraConfig,
    /// `adapter_model.safetensors`, PEFT's prefix removed and a saved module's
    /// `.modules_to_save.` infix with it.
    pub tensors: HashMap<String, Tensor>,
    /// `base_model_name_or_path` as written (kept when the adapter is saved again).
    pub base_model: String,
    /// The adapter directory it was read from; `None` for a fresh adapter (a recipe's
    /// `[peft]` table), whose errors name the table instead.
    pub dir: Option<PathBuf>,
}

impl AdapterFiles {
    /// What an error about the adapter's config names: its `adapter_config.json`, or the
    /// recipe's `[peft]` table.
    pub fn config_path(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.join(ADAPTER_CONFIG),
            None => PathBuf::from("[peft]"),
        }
    }

    /// What an error about the adapter's tensors names.
    pub fn weights_path(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.join(ADAPTER_WEIGHTS),
            None => PathBuf::from("[peft]"),
        }
    }
}

/// Whether `dir` is a PEFT adapter directory (an adapter config and no `config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file() && !dir.join("config.json").is_file()
}

/// Reads an adapter directory; `base_model` overrides its `base_model_name_or_path`.
pub fn read_adapter(
    dir: &Path,
    base_model: Option<&str>,
) -> std::result::Result<AdapterFiles, ModelError> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let json = crate::files::read_json(&config_path)?;
    let config = LoraConfig::from_adapter_config(&config_path, &json)?;
    let base_model = match base_model {
        Some(base) => base.to_string(),
        None => json
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ModelError::BadFile {
                path: config_path.clone(),
                message: "no base_model_name_or_path: name the base model with --base-model".into(),
            })?
            .to_string(),
    };
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    if !weights_path.is_file() {
        return Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file: ADAPTER_WEIGHTS,
        });
    }
    let stored =
        candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu).map_err(|e| {
            ModelError::BadFile {
                path: weights_path.clone(),
                message: e.to_string(),
            }
        })?;
    let mut tensors = HashMap::new();
    for (name, tensor) in stored {
        let stripped = base_name(&name);
        if !is_adapter_tensor(&stripped) && !config.saves_module(&stripped) {
            return Err(ModelError::BadFile {
                path: weights_path.clone(),
                message: format!(
                    "{name} is neither an adapter matrix (lora_A / lora_B) nor a parameter of \
                     modules_to_save"
                ),
            });
        }
        tensors.insert(stripped, tensor);
    }
    Ok(AdapterFiles {
        config,
        tensors,
        base_model,
        dir: Some(dir.to_path_buf()),
    })
}

/// The base model's directory (or hub id) of an adapter: `base_model` as a path if it is
/// one, else beside the adapter directory (PEFT writes the name the base was loaded by,
/// often a sibling folder's), else the hub id it names.
pub fn resolve_base_model(adapter_dir: &Path, base_model: &str) -> String {
    let as_given = PathBuf::from(base_model);
    if as_given.is_dir() {
        return base_model.to_string();
    }
    if as_given.is_relative() {
        if let Some(parent) = adapter_dir.parent() {
            let beside = parent.join(&as_given);
            if beside.is_dir() {
                return beside.to_string_lossy().into_owned();
            }
        }
    }
    base_model.to_string()
}

/// A tensor's name in the base model from its name in a PEFT adapter file
/// (`base_model.model.` and a saved module's `.modules_to_save.` infix removed).
pub fn base_name(peft_name: &str) -> String {
    peft_name
        .strip_prefix(PEFT_PREFIX)
        .unwrap_or(peft_name)
        .replace(".modules_to_save.default.", ".")
        .replace(".modules_to_save.", ".")
}

/// Every parameter with each adapter merged into its layer (`W + scaling · B A`, in `W`'s
/// dtype) and the adapter matrices gone, as PEFT's `merge_and_unload` leaves the model.
pub fn merge_adapters(
    parameters: &[(String, Tensor)],
    scaling: f64,
) -> Result<Vec<(String, Tensor)>> {
    with_adapters(parameters)
        .map(|(name, tensor, pair)| {
            let value = match pair {
                Some((a, b)) => merge_weight(tensor, a, b, scaling)?,
                None => tensor.detach(),
            };
            Ok((name.to_string(), value))
        })
        .collect()
}

/// Each parameter that is not an adapter matrix, with its layer's adapter `(A, B)` when
/// it is an adapted weight.
fn with_adapters(
    parameters: &[(String, Tensor)],
) -> impl Iterator<Item = (&str, &Tensor, Option<(&Tensor, &Tensor)>)> + '_ {
    let by_name: HashMap<&str, &Tensor> = parameters
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    parameters
        .iter()
        .filter(|(name, _)| !is_adapter_tensor(name))
        .map(move |(name, tensor)| {
            let pair = name.strip_suffix(".weight").and_then(|module| {
                Some((
                    *by_name.get(format!("{module}.lora_A.weight").as_str())?,
                    *by_name.get(format!("{module}.lora_B.weight").as_str())?,
                ))
            });
            (name.as_str(), tensor, pair)
        })
}

/// The merged weight of one adapted layer: `W + scaling · B A`, in `W`'s dtype.
pub fn merge_weight(weight: &Tensor, a: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    let update = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scaling)?;
    (weight.to_dtype(DType::F32)? + update)?.to_dtype(weight.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_peft_matching() {
        let names = LoraConfig {
            target_modules: Some(TargetModules::Names(vec![
                "q_proj".into(),
                "mlp.up_proj".into(),
            ])),
            ..LoraConfig::default()
        };
        assert!(names.targets("model.layers.0.self_attn.q_proj"));
        assert!(names.targets("model.layers.3.mlp.up_proj"));
        assert!(!names.targets("model.layers.0.self_attn.k_proj"));
        assert!(!names.targets("model.layers.0.self_attn.xq_proj"));
        let all = LoraConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            ..LoraConfig::default()
        };
        assert!(all.targets("model.layers.0.mlp.down_proj"));
        assert!(!all.targets("score"));
        let regex = LoraConfig {
            target_modules: Some(TargetModules::Pattern(r".*\.1\..*_proj".into())),
            ..LoraConfig::default()
        };
        assert!(regex.targets("model.layers.1.mlp.down_proj"));
        assert!(!regex.targets("model.layers.0.mlp.down_proj"));
        let default = LoraConfig::default();
        assert!(default.targets("model.layers.0.self_attn.v_proj"));
        assert!(!default.targets("model.layers.0.self_attn.o_proj"));
    }

    #[test]
    fn scaling_and_validation() {
        let config = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            ..LoraConfig::default()
        };
        assert_eq!(config.scaling(), 2.0);
        let rs = LoraConfig {
            use_rslora: true,
            ..config.clone()
        };
        assert_eq!(rs.scaling(), 8.0);
        assert!(LoraConfig {
            r: 0,
            ..config.clone()
        }
        .validate()
        .is_err());
        assert!(LoraConfig {
            bias: "all".into(),
            ..config.clone()
        }
        .validate()
        .is_err());
        assert!(LoraConfig {
            target_modules: Some(TargetModules::Pattern("(".into())),
            ..config
        }
        .validate()
        .is_err());
    }

    #[test]
    fn adapter_config_round_trips_and_refuses_dora() {
        let config = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: Some(TargetModules::Names(vec!["q_proj".into()])),
            modules_to_save: Some(vec!["score".into()]),
            ..LoraConfig::default()
        };
        let json = config.to_adapter_config("base");
        let path = Path::new("adapter_config.json");
        assert_eq!(
            LoraConfig::from_adapter_config(path, &json).unwrap(),
            config
        );
        let mut dora = json.clone();
        dora["use_dora"] = true.into();
        let error = LoraConfig::from_adapter_config(path, &dora)
            .unwrap_err()
            .to_string();
        assert!(error.contains("use_dora"), "{error}");
    }
}
