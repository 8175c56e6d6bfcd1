//! `config.json` of a ModernBERT model, as transformers writes it (both the older
//! `global_rope_theta`/`local_rope_theta` keys and the newer `rope_parameters` table).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// How the sequence is pooled before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierPooling {
    /// The first token's hidden state.
    Cls,
    /// The mean over real tokens.
    Mean,
}

/// The settings the network needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every layer.
    pub hidden_size: usize,
    /// Width of the MLP (its `Wi` gives twice this: input and gate).
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Every this many layers (from layer 0) attends globally; the others locally.
    #[serde(default = "default_global_every")]
    pub global_attn_every_n_layers: usize,
    /// The local window, in tokens (half on each side).
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    /// Rotary theta of the global layers.
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    /// Rotary theta of the local layers.
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// Newer configs: `{full_attention: {rope_theta}, sliding_attention: {rope_theta}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Newer configs: each layer's kind, `full_attention` or `sliding_attention`.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Pooling before the head.
    #[serde(default = "default_pooling")]
    pub classifier_pooling: ClassifierPooling,
    /// The head's activation (`gelu`: exact erf GELU).
    #[serde(default = "default_gelu")]
    pub classifier_activation: String,
    /// The MLP's activation.
    #[serde(default = "default_gelu")]
    pub hidden_activation: String,
    /// Dropout after the embeddings.
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout in the MLP and after the attention output.
    #[serde(default)]
    pub mlp_dropout: f64,
    /// Dropout before the classifier.
    #[serde(default)]
    pub classifier_dropout: f64,
    /// The longest input.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Standard deviation of freshly initialised weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// The padding token.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Outputs, when given.
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// Output names.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// LoRA adapters stored beside the weights, for the network of a training pass with
    /// LoRA dropout (`CrossEncoder::adapted_encoder_network`); not part of `config.json`.
    #[serde(skip)]
    pub lora: Option<crate::lora::LoraConfig>,
}

fn default_max_positions() -> usize {
    8192
}
fn default_initializer_range() -> f64 {
    0.02
}

fn default_norm_eps() -> f64 {
    1e-5
}
fn default_global_every() -> usize {
    3
}
fn default_local_attention() -> usize {
    128
}
fn default_pooling() -> ClassifierPooling {
    ClassifierPooling::Cls
}
fn default_gelu() -> String {
    "gelu".into()
}

impl ModernBertConfig {
    /// Number of model outputs: `num_labels`, else the size of `id2label`, else 1.
    pub fn num_labels(&self) -> usize {
        crate::bert::config::num_labels_of(self.num_labels, self.id2label.as_ref())
    }

    /// Checks what the network assumes.
    pub fn validate(&self) -> Result<(), String> {
        crate::bert::config::check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.head_size() % 2 != 0 {
            return Err(format!(
                "the rotary embeddings need an even head size, got {}",
                self.head_size()
            ));
        }
        for (name, activation) in [
            ("hidden_activation", &self.hidden_activation),
            ("classifier_activation", &self.classifier_activation),
        ] {
            if activation != "gelu" {
                return Err(format!(
                    "{name} {activation:?} is not supported (only \"gelu\")"
                ));
            }
        }
        crate::bert::config::check_dropouts(&[
            ("embedding_dropout", self.embedding_dropout),
            ("attention_dropout", self.attention_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ])
    }

    /// The `config.json` to save (the original's keys kept).
    pub fn to_saved_json(
        &self,
        original: &Map<String, Value>,
        num_labels: usize,
    ) -> Map<String, Value> {
        crate::bert::config::classifier_json(
            original,
            self.id2label.as_ref(),
            num_labels,
            "ModernBertForSequenceClassification",
            "modernbert",
        )
    }

    /// Width of one head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether layer `layer` attends over the whole sequence (else its local window).
    pub fn is_global(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(kinds) if layer < kinds.len() => kinds[layer] == "full_attention",
            _ => layer % self.global_attn_every_n_layers.max(1) == 0,
        }
    }

    /// The rotary theta of layer `layer`.
    pub fn rope_theta(&self, layer: usize) -> f64 {
        self.rope_theta_of(self.is_global(layer))
    }

    /// The rotary theta of the global (`true`) or the local layers.
    pub fn rope_theta_of(&self, global: bool) -> f64 {
        let from_table = self.rope_parameters.as_ref().and_then(|table| {
            table
                .get(if global {
                    "full_attention"
                } else {
                    "sliding_attention"
                })?
                .get("rope_theta")?
                .as_f64()
        });
        let from_keys = if global {
            self.global_rope_theta
        } else {
            self.local_rope_theta
        };
        from_table
            .or(from_keys)
            .unwrap_or(if global { 160_000.0 } else { 10_000.0 })
    }
}
