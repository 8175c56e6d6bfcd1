//! `config.json` of a decoder reranker (Qwen3, Qwen2, Llama), as transformers 5 writes it
//! (`rope_parameters`, or the older top-level `rope_theta`).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ModelError;

/// Which decoder layer: they differ only in the attention's biases and per-head norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// Qwen3: RMSNorm on every head's queries and keys; biases per `attention_bias`.
    Qwen3,
    /// Qwen2: biases on the q/k/v projections (not on `o_proj`), no per-head norms.
    Qwen2,
    /// Llama: biases on q/k/v/o per `attention_bias`, no per-head norms.
    Llama,
}

/// What turns the last hidden state into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderHead {
    /// `*ForCausalLM` + sentence-transformers' LogitScore: `logit[true] − logit[false]` at the
    /// last position (only those two rows of the LM head are computed). `false_token_id`
    /// `None` scores `logit[true]` alone.
    LogitScore {
        /// The token whose logit counts for the pair.
        true_token_id: u32,
        /// The token whose logit counts against it.
        false_token_id: Option<u32>,
    },
    /// `*ForSequenceClassification`: the `score` linear layer (no bias) at the rightmost
    /// token whose id is not the pad id.
    Classification {
        /// Outputs.
        num_labels: usize,
    },
}

/// The settings the network needs.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of every layer.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); default: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; default `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Longest input.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head is the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether the attention projections have biases (Qwen3, Llama).
    #[serde(default)]
    pub attention_bias: bool,
    /// Dropout on the attention probabilities while training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The pad token (the classification head pools at the last other token).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// transformers' initialiser range for from-scratch weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Rotary base, resolved from `rope_parameters.rope_theta` or `rope_theta`.
    #[serde(skip)]
    pub rope_theta: f64,
    /// Which layer.
    #[serde(skip, default = "default_kind")]
    pub kind: DecoderKind,
    /// Which head.
    #[serde(skip, default = "default_head")]
    pub head: DecoderHead,
    /// The `architectures` entry it was read from (what a saved config names again).
    #[serde(skip)]
    pub architecture: String,
    /// A LoRA adapter on the linear layers it targets (not part of `config.json`).
    #[serde(skip)]
    pub lora: Option<crate::lora::LoraConfig>,
}

fn default_rms_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    32768
}

fn default_initializer_range() -> f64 {
    0.02
}

fn default_kind() -> DecoderKind {
    DecoderKind::Qwen3
}

fn default_head() -> DecoderHead {
    DecoderHead::Classification { num_labels: 1 }
}

impl DecoderConfig {
    /// Parses `raw` (from `path`) as a decoder of `kind`. The head follows the architecture
    /// (`…ForCausalLM` or `…ForSequenceClassification`); a causal head's two token ids come
    /// later, from the LogitScore module ([`Self::with_logit_score`]). Settings crosstrain
    /// does not implement (another activation, sliding windows, scaled rotary embeddings)
    /// are errors that name them.
    pub fn parse(
        raw: &Map<String, Value>,
        path: &Path,
        kind: DecoderKind,
        num_labels: usize,
    ) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let mut config: DecoderConfig =
            serde_json::from_value(Value::Object(raw.clone())).map_err(|e| bad(e.to_string()))?;
        config.kind = kind;
        config.architecture = raw
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|names| names.first())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        config.head = if config.architecture.ends_with("ForCausalLM") {
            // Until the LogitScore module says otherwise: the tokenizer's yes/no, which the
            // loader looks up.
            DecoderHead::LogitScore {
                true_token_id: 0,
                false_token_id: None,
            }
        } else {
            DecoderHead::Classification { num_labels }
        };
        match raw.get("hidden_act").and_then(Value::as_str) {
            None | Some("silu") => {}
            Some(other) => {
                return Err(bad(format!(
                    "hidden_act {other:?} is not supported (decoder rerankers use \"silu\")"
                )))
            }
        }
        if raw.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "use_sliding_window = true is not supported; every layer attends fully".into(),
            ));
        }
        if let Some(types) = raw.get("layer_types").and_then(Value::as_array) {
            if let Some(other) = types
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "full_attention")
            {
                return Err(bad(format!(
                    "layer_types has {other:?}; only full_attention layers are supported"
                )));
            }
        }
        let rope = raw
            .get("rope_parameters")
            .or_else(|| raw.get("rope_scaling"));
        if let Some(rope_type) = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
        {
            if rope_type != "default" {
                return Err(bad(format!(
                    "rope_type {rope_type:?} is not supported (only \"default\" rotary embeddings)"
                )));
            }
        }
        config.rope_theta = raw
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| raw.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        if config.num_attention_heads == 0
            || config.num_key_value_heads() == 0
            || config.num_attention_heads % config.num_key_value_heads() != 0
        {
            return Err(bad(format!(
                "num_attention_heads = {} must be a positive multiple of num_key_value_heads = {}",
                config.num_attention_heads,
                config.num_key_value_heads()
            )));
        }
        if config.head_dim() % 2 != 0 {
            return Err(bad(format!(
                "head_dim = {} must be even for rotary embeddings",
                config.head_dim()
            )));
        }
        Ok(config)
    }

    /// The causal head's token ids, from the LogitScore module (or the tokenizer's yes/no).
    pub fn with_logit_score(mut self, true_token_id: u32, false_token_id: Option<u32>) -> Self {
        if let DecoderHead::LogitScore { .. } = self.head {
            self.head = DecoderHead::LogitScore {
                true_token_id,
                false_token_id,
            };
        }
        self
    }

    /// Key/value heads.
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether the model scores with its LM head (a causal LM with LogitScore).
    pub fn is_causal_lm(&self) -> bool {
        matches!(self.head, DecoderHead::LogitScore { .. })
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        match self.head {
            DecoderHead::LogitScore { .. } => 1,
            DecoderHead::Classification { num_labels } => num_labels,
        }
    }

    /// Whether the q/k/v projections have biases.
    pub fn qkv_bias(&self) -> bool {
        match self.kind {
            DecoderKind::Qwen2 => true,
            DecoderKind::Qwen3 | DecoderKind::Llama => self.attention_bias,
        }
    }

    /// Whether `o_proj` has a bias.
    pub fn output_bias(&self) -> bool {
        match self.kind {
            DecoderKind::Qwen2 => false,
            DecoderKind::Qwen3 | DecoderKind::Llama => self.attention_bias,
        }
    }

    /// Whether each head's queries and keys are RMS-normed (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.kind == DecoderKind::Qwen3
    }

    /// The `config.json` to save: `original`'s keys with the head's architecture and labels.
    pub fn to_saved_json(&self, original: &Map<String, Value>) -> Map<String, Value> {
        let mut saved = original.clone();
        saved.insert(
            "architectures".into(),
            Value::Array(vec![Value::String(self.architecture.clone())]),
        );
        if let DecoderHead::Classification { num_labels } = self.head {
            let id2label: Map<String, Value> = (0..num_labels)
                .map(|i| (i.to_string(), Value::String(format!("LABEL_{i}"))))
                .collect();
            let label2id: Map<String, Value> = (0..num_labels)
                .map(|i| (format!("LABEL_{i}"), Value::from(i)))
                .collect();
            saved.insert("id2label".into(), Value::Object(id2label));
            saved.insert("label2id".into(), Value::Object(label2id));
        }
        saved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn heads_follow_the_architecture_and_unsupported_settings_are_named() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1"#;
        let path = Path::new("m/config.json");
        let causal = DecoderConfig::parse(
            &raw(&format!(
                r#"{{"architectures": ["Qwen3ForCausalLM"], {base}, "rope_theta": 5.0}}"#
            )),
            path,
            DecoderKind::Qwen3,
            1,
        )
        .unwrap();
        assert!(causal.is_causal_lm());
        assert_eq!(causal.rope_theta, 5.0);
        assert_eq!(causal.head_dim(), 4);
        let classifier = DecoderConfig::parse(
            &raw(&format!(
                r#"{{"architectures": ["Qwen3ForSequenceClassification"], {base},
                    "rope_parameters": {{"rope_theta": 7.0, "rope_type": "default"}}}}"#
            )),
            path,
            DecoderKind::Qwen3,
            2,
        )
        .unwrap();
        assert_eq!(classifier.num_labels(), 2);
        assert_eq!(classifier.rope_theta, 7.0);
        for (extra, needle) in [
            (r#""hidden_act": "gelu""#, "hidden_act"),
            (r#""use_sliding_window": true"#, "use_sliding_window"),
            (
                r#""rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}"#,
                "yarn",
            ),
            (
                r#""layer_types": ["sliding_attention"]"#,
                "sliding_attention",
            ),
        ] {
            let error = DecoderConfig::parse(
                &raw(&format!(
                    r#"{{"architectures": ["Qwen3ForCausalLM"], {base}, {extra}}}"#
                )),
                path,
                DecoderKind::Qwen3,
                1,
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("m/config.json") && error.contains(needle),
                "{error}"
            );
        }
    }
}
