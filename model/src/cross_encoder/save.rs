//! Writing a [`CrossEncoder`] as a model directory: sentence-transformers' layout for every
//! family (a decoder's chat template and LogitScore module included), a LoRA model as a PEFT
//! adapter directory, or the full model its adapter makes.

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::CrossEncoder;
use crate::activation::DefaultActivation;
use crate::error::ModelError;
use crate::family::FamilyConfig;
use crate::files::{default_tokenizer_config, read_json};
use crate::weights;

impl CrossEncoder {
    /// Writes the model directory atomically: everything goes to a temporary directory beside
    /// `dir`, which is renamed into place. An existing non-empty `dir` is an error.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.save_atomically(dir, false)
    }

    /// Writes the model files into an existing directory (not atomically; [`Self::save`] and
    /// the trainer's checkpoints wrap this in a staging directory).
    pub fn write_to(&self, dir: &Path) -> Result<(), ModelError> {
        self.write_files(dir, false)
    }

    /// Writes a LoRA model as the full model its adapter makes (`merge-adapter`): base and
    /// adapter merged into one `model.safetensors` with the base's `config.json`, atomically
    /// as [`Self::save`] does. Without an adapter, the same as [`Self::save`].
    pub fn save_merged(&self, dir: &Path) -> Result<(), ModelError> {
        self.save_atomically(dir, true)
    }

    fn save_atomically(&self, dir: &Path, merged: bool) -> Result<(), ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(ModelError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        crate::atomic::write_dir_atomically(
            dir,
            |path, source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            },
            |staging| self.write_files(staging, merged),
        )
    }

    fn write_files(&self, dir: &Path, merged: bool) -> Result<(), ModelError> {
        let write_json = |file: &str, value: &Value| -> Result<(), ModelError> {
            let path = dir.join(file);
            let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::BadFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io { path, source })
        };
        match (&self.lora, merged) {
            (Some(lora), false) => {
                // PEFT's files: the adapter (and saved modules) under PEFT's names, its
                // config naming the base; no base weights and no config.json.
                let adapter: Vec<(String, Tensor)> = self
                    .trainables
                    .iter()
                    .map(|trainable| trainable.named_values())
                    .collect::<candle_core::Result<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .map(|(name, tensor)| (format!("{}{name}", crate::lora::PEFT_PREFIX), tensor))
                    .collect();
                weights::save_safetensors(&adapter, &dir.join(crate::lora::ADAPTER_WEIGHTS))?;
                let base_model = self.base_model.clone().unwrap_or_default();
                write_json(
                    crate::lora::ADAPTER_CONFIG,
                    &lora.to_adapter_config(&base_model),
                )?;
            }
            _ => {
                weights::save_safetensors(
                    &self.merged_parameters()?,
                    &dir.join("model.safetensors"),
                )?;
                let config = self
                    .config
                    .to_saved_json(&self.raw_config, self.num_labels());
                write_json("config.json", &Value::Object(config))?;
            }
        }

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
            _ => default_tokenizer_config(self.family()),
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
        // The sentence-transformers release whose files these are: 6.3 writes every family's
        // directory exactly so (checked file by file against its `save`), and it is the one
        // that loads decoder rerankers. Its own `pytorch`/`transformers` entries are left
        // out: no such library wrote these files.
        let layout_version = "6.3.0";
        write_json(
            "config_sentence_transformers.json",
            &serde_json::json!({
                "__version__": {
                    "sentence_transformers": layout_version,
                    "crosstrain": env!("CARGO_PKG_VERSION"),
                },
                "activation_fn": activation,
                "default_prompt_name": self.default_prompt_name,
                "model_type": "CrossEncoder",
                "prompts": self.prompts,
            }),
        )?;
        let transformer = serde_json::json!({
            "idx": 0, "name": "0", "path": "",
            "type": "sentence_transformers.base.modules.transformer.Transformer"
        });
        let FamilyConfig::Decoder(decoder) = &self.config else {
            write_json("modules.json", &Value::Array(vec![transformer]))?;
            write_json(
                "sentence_bert_config.json",
                &serde_json::json!({
                    "transformer_task": "sequence-classification",
                    "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
                    "module_output_name": "scores"
                }),
            )?;
            return Ok(());
        };
        // A decoder reranker: its chat template, and for a causal LM the LogitScore module.
        if let Some((template, _)) = crate::chat::read_template(&self.source_dir)? {
            let path = dir.join("chat_template.jinja");
            std::fs::write(&path, template).map_err(|source| ModelError::Io { path, source })?;
        }
        let message_modality = serde_json::json!({
            "text": {"method": "forward", "method_output_name": "logits"},
            "message": {"method": "forward", "method_output_name": "logits", "format": "flat"}
        });
        match decoder.head {
            crate::qwen::DecoderHead::LogitScore {
                true_token_id,
                false_token_id,
            } => {
                let folder = dir.join("1_LogitScore");
                std::fs::create_dir_all(&folder).map_err(|source| ModelError::Io {
                    path: folder.clone(),
                    source,
                })?;
                write_json(
                    "1_LogitScore/config.json",
                    &serde_json::json!({
                        "true_token_id": true_token_id,
                        "false_token_id": false_token_id,
                        "module_input_name": "causal_logits",
                    }),
                )?;
                write_json(
                    "modules.json",
                    &serde_json::json!([transformer, {
                        "idx": 1, "name": "1", "path": "1_LogitScore",
                        "type": crate::modules::LOGIT_SCORE_TYPE
                    }]),
                )?;
                write_json(
                    "sentence_bert_config.json",
                    &serde_json::json!({
                        "transformer_task": "text-generation",
                        "modality_config": message_modality,
                        "module_output_name": "causal_logits"
                    }),
                )?;
            }
            crate::qwen::DecoderHead::Classification { .. } => {
                write_json("modules.json", &Value::Array(vec![transformer]))?;
                write_json(
                    "sentence_bert_config.json",
                    &serde_json::json!({
                        "transformer_task": "sequence-classification",
                        "modality_config": message_modality,
                        "module_output_name": "scores"
                    }),
                )?;
            }
        }
        Ok(())
    }
}
