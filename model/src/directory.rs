//! What a model directory holds besides the network's config, read for
//! [`crate::CrossEncoder::load_dir`]: sharded checkpoints, the check that every checkpoint tensor
//! is used, the saved prompts, and a decoder reranker's head tokens and chat format.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde_json::Value;

use crate::error::ModelError;
use crate::files::read_json;
use crate::tokenize::PairTokenizer;

/// The index of a sharded checkpoint.
pub(crate) const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Every tensor of a sharded checkpoint: each shard its index's `weight_map` names, read
/// once. A tensor the index places in a shard that lacks it is an error naming both.
pub(crate) fn load_shards(
    dir: &Path,
    index_path: &Path,
) -> Result<std::collections::HashMap<String, Tensor>, ModelError> {
    let bad = |path: &Path, message: String| ModelError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let index = read_json(index_path)?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(index_path, "no weight_map".into()))?;
    let mut shards: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (name, shard) in weight_map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(index_path, format!("weight_map.{name} is not a file name")))?;
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(bad(
                index_path,
                format!("weight_map.{name}: {shard:?} is not a file of this directory"),
            ));
        }
        shards.insert(shard);
    }
    let mut by_shard = std::collections::HashMap::new();
    for shard in shards {
        let path = dir.join(shard);
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| bad(&path, e.to_string()))?;
        by_shard.insert(shard, loaded);
    }
    // Each tensor from the shard the index names for it.
    let mut tensors = std::collections::HashMap::new();
    for (name, shard) in weight_map {
        let shard = shard.as_str().unwrap_or_default();
        let tensor = by_shard
            .get(shard)
            .and_then(|loaded| loaded.get(name))
            .ok_or_else(|| {
                bad(
                    index_path,
                    format!("{name} is said to be in {shard}, which does not have it"),
                )
            })?;
        tensors.insert(name.clone(), tensor.clone());
    }
    Ok(tensors)
}

/// `prompts` and `default_prompt_name` of `config_sentence_transformers.json` (none when the
/// file or the keys are absent).
#[allow(clippy::type_complexity)]
pub(crate) fn read_prompts(
    dir: &Path,
) -> Result<(std::collections::BTreeMap<String, String>, Option<String>), ModelError> {
    let path = dir.join("config_sentence_transformers.json");
    let Ok(config) = read_json(&path) else {
        return Ok(Default::default());
    };
    let mut prompts = std::collections::BTreeMap::new();
    if let Some(map) = config.get("prompts").and_then(Value::as_object) {
        for (name, prompt) in map {
            let prompt = prompt.as_str().ok_or_else(|| ModelError::BadFile {
                path: path.clone(),
                message: format!("prompts.{name} is not a string"),
            })?;
            prompts.insert(name.clone(), prompt.to_string());
        }
    }
    let default = config
        .get("default_prompt_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((prompts, default))
}

/// A decoder reranker's head and chat format: the causal head's true/false tokens from the
/// LogitScore module (else the tokenizer's `yes` and `no`), the chat template, and the
/// padding side its head reads (left for a causal LM, right for a classifier).
pub(crate) fn decoder_setup(
    dir: &Path,
    decoder: crate::qwen::DecoderConfig,
    modules: &crate::modules::CrossEncoderModules,
    tokenizer: &PairTokenizer,
) -> Result<(crate::qwen::DecoderConfig, crate::chat::ChatFormat), ModelError> {
    let vocabulary = tokenizer.untruncated();
    let decoder = if decoder.is_causal_lm() {
        let (true_id, false_id) = match &modules.logit_score {
            Some((score, _)) => (score.true_token_id, score.false_token_id),
            None => {
                let id = |token: &str| {
                    vocabulary
                        .token_to_id(token)
                        .ok_or_else(|| ModelError::BadFile {
                            path: dir.join("tokenizer.json"),
                            message: format!(
                            "a causal LM without a LogitScore module is scored by the logits of \
                             \"yes\" and \"no\", and the tokenizer has no {token:?}"
                        ),
                        })
                };
                (id("yes")?, Some(id("no")?))
            }
        };
        for id in std::iter::once(true_id).chain(false_id) {
            if id as usize >= decoder.vocab_size {
                return Err(ModelError::BadFile {
                    path: dir.join("1_LogitScore/config.json"),
                    message: format!(
                        "token id {id} is outside the vocabulary of {}",
                        decoder.vocab_size
                    ),
                });
            }
        }
        decoder.with_logit_score(true_id, false_id)
    } else {
        decoder
    };
    let (template, origin) =
        crate::chat::read_template(dir)?.ok_or_else(|| ModelError::BadFile {
            path: dir.join("chat_template.jinja"),
            message: "a decoder reranker needs a chat template (chat_template.jinja, or \
                  chat_template in tokenizer_config.json) to turn pairs into its input"
                .into(),
        })?;
    let pad_id = decoder
        .pad_token_id
        .or_else(|| tokenizer_pad_id(dir, vocabulary))
        .ok_or_else(|| ModelError::BadFile {
            path: dir.join("tokenizer_config.json"),
            message: "no pad token: set pad_token there or pad_token_id in config.json".into(),
        })?;
    let side = if decoder.is_causal_lm() {
        crate::chat::PaddingSide::Left
    } else {
        crate::chat::PaddingSide::Right
    };
    let chat = crate::chat::ChatFormat::new(template, origin, vocabulary, side, pad_id)?;
    Ok((decoder, chat))
}

/// The id of `tokenizer_config.json`'s `pad_token`.
fn tokenizer_pad_id(dir: &Path, tokenizer: &tokenizers::Tokenizer) -> Option<u32> {
    let config = read_json(&dir.join("tokenizer_config.json")).ok()?;
    let token = match config.get("pad_token")? {
        Value::String(token) => token.clone(),
        Value::Object(map) => map.get("content")?.as_str()?.to_string(),
        _ => return None,
    };
    tokenizer.token_to_id(&token)
}

/// An adapter's tensors all went to layers, and its targets matched at least one layer
/// (PEFT refuses target modules that match nothing; an adapter tensor no layer takes would
/// be silently dropped).
pub(crate) fn check_adapter_used(
    adapter: &crate::lora::AdapterFiles,
    adapter_names: &[String],
    varmap: &VarMap,
) -> Result<(), ModelError> {
    let targets = match &adapter.config.target_modules {
        Some(targets) => serde_json::to_string(targets).unwrap_or_default(),
        None => "(PEFT's default: q_proj, v_proj)".into(),
    };
    let trained: std::collections::HashSet<String> = varmap
        .data()
        .lock()
        .map(|vars| vars.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(unused) = adapter_names.iter().find(|name| !trained.contains(*name)) {
        return Err(ModelError::BadFile {
            path: adapter.weights_path(),
            message: format!(
                "{unused} belongs to no layer the adapter config targets (target_modules {})",
                targets
            ),
        });
    }
    if !trained
        .iter()
        .any(|name| crate::lora::is_adapter_tensor(name))
    {
        return Err(ModelError::BadFile {
            path: adapter.config_path(),
            message: format!("target_modules {targets} match no linear layer of the model"),
        });
    }
    Ok(())
}

/// Checkpoint tensors the network did not take. Tensors of encoder layers the config does
/// not have (`config.json` with fewer layers than the weights) are an error: the model would
/// run silently as a smaller one. Others (a masked-LM head, buffers) are named in a warning,
/// as transformers does.
pub(crate) fn check_unused_tensors(
    weights_path: &Path,
    checkpoint_names: &std::collections::HashSet<String>,
    varmap: &VarMap,
    frozen_names: &std::collections::HashSet<String>,
) -> Result<(), ModelError> {
    let mut used: std::collections::HashSet<String> = varmap
        .data()
        .lock()
        .map(|vars| vars.keys().cloned().collect())
        .unwrap_or_default();
    used.extend(frozen_names.iter().cloned());
    let mut unused: Vec<&String> = checkpoint_names
        .iter()
        .filter(|name| !used.contains(*name) && !name.ends_with("position_ids"))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let layer_index = |name: &str| {
        let parts: Vec<&str> = name.split('.').collect();
        parts.windows(2).find_map(|pair| {
            matches!(pair[0], "layer" | "layers")
                .then(|| pair[1].parse::<usize>().ok())
                .flatten()
        })
    };
    let layer_tensors: Vec<&String> = unused
        .iter()
        .copied()
        .filter(|name| layer_index(name).is_some())
        .collect();
    if let Some(first) = layer_tensors.first() {
        let highest = layer_tensors
            .iter()
            .filter_map(|name| layer_index(name))
            .max()
            .unwrap_or_default();
        return Err(ModelError::BadFile {
            path: weights_path.to_path_buf(),
            message: format!(
                "{} tensor(s) of encoder layers that config.json does not describe (up to layer \
                 {highest}, e.g. {first}); the config's layer count is smaller than the \
                 weights', so the model would silently run with fewer layers. Fix \
                 num_hidden_layers in config.json",
                layer_tensors.len()
            ),
        });
    }
    let shown: Vec<&str> = unused.iter().take(8).map(|s| s.as_str()).collect();
    tracing::warn!(
        "{}: {} tensor(s) not used by the model: {}{}",
        weights_path.display(),
        unused.len(),
        shown.join(", "),
        if unused.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    );
    Ok(())
}
