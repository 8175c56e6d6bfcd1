//! The JSON files of a Hugging Face model directory: `config.json` (which picks the model
//! family), `tokenizer_config.json` (the truncation length) and their defaults.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ModelError;
use crate::family::{FamilyConfig, ModelFamily};
use crate::tokenize::PairTokenizer;

/// `config.json` of a model directory, parsed as the family it names and validated, with its
/// raw JSON (kept so that saving writes back every key, known or not).
/// `dir/file`, refused as missing, or as a directory where the file should be (a message
/// that says "missing" for a directory sends the user looking for the wrong thing).
pub(crate) fn model_file(dir: &Path, file: &'static str) -> Result<std::path::PathBuf, ModelError> {
    let path = dir.join(file);
    if path.is_dir() {
        return Err(ModelError::NotAFile {
            dir: dir.to_path_buf(),
            file,
        });
    }
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        });
    }
    Ok(path)
}

pub(crate) fn read_model_config(
    dir: &Path,
) -> Result<(FamilyConfig, Map<String, Value>), ModelError> {
    let config_path = model_file(dir, "config.json")?;
    let raw_config = match read_json(&config_path)? {
        Value::Object(map) => map,
        _ => {
            return Err(ModelError::BadFile {
                path: config_path,
                message: "expected a JSON object".into(),
            })
        }
    };
    let config = FamilyConfig::parse(&raw_config, &config_path)?;
    Ok((config, raw_config))
}

/// `tokenizer.json` with the reference's padding and truncation at `max_length`.
pub(crate) fn load_tokenizer(path: &Path, max_length: usize) -> Result<PairTokenizer, ModelError> {
    Ok(PairTokenizer::from_file(path, max_length)?)
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

/// The family's `tokenizer_config.json` for directories that have none (saving writes one,
/// since transformers' `AutoTokenizer` reads the tokenizer class from it).
pub(crate) fn default_tokenizer_config(family: ModelFamily) -> Map<String, Value> {
    let config = match family {
        ModelFamily::XlmRoberta => serde_json::json!({
            "tokenizer_class": "XLMRobertaTokenizer",
            "bos_token": "<s>",
            "cls_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
            "padding_side": "right",
            "truncation_side": "right",
        }),
        ModelFamily::ModernBert => serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
            "padding_side": "right",
            "truncation_side": "right",
        }),
        // Decoders ship their tokenizer_config.json (its chat template, pad and eos tokens);
        // this is only for a directory that lost it.
        ModelFamily::Qwen3 | ModelFamily::Qwen2 | ModelFamily::Llama => serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "padding_side": "left",
            "truncation_side": "right",
        }),
        ModelFamily::DebertaV2 => serde_json::json!({
            "tokenizer_class": "DebertaV2Tokenizer",
            "do_lower_case": false,
            "split_by_punct": false,
            "bos_token": "[CLS]",
            "eos_token": "[SEP]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
            "padding_side": "right",
            "truncation_side": "right",
        }),
        ModelFamily::Electra => serde_json::json!({
            "tokenizer_class": "ElectraTokenizer",
            "do_lower_case": true,
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
            "padding_side": "right",
            "truncation_side": "right",
        }),
        ModelFamily::Bert => serde_json::json!({
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": true,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "padding_side": "right",
        "truncation_side": "right",
        }),
    };
    match config {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `model_max_length` of `tokenizer_config.json` capped at `max_position_embeddings`, as
/// sentence-transformers does (its `max_length` key is a leftover and ignored).
pub(crate) fn default_max_length(dir: &Path, config: &FamilyConfig) -> Result<usize, ModelError> {
    let path = dir.join("tokenizer_config.json");
    let from_tokenizer = if path.is_file() {
        read_json(&path)?
            .get("model_max_length")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    } else {
        None
    };
    Ok(
        from_tokenizer.map_or(config.max_position_embeddings(), |n| {
            n.min(config.max_position_embeddings())
        }),
    )
}
