//! `config.json` of a DeBERTa-v2/v3 model, as transformers reads it: the keys of
//! `DebertaV2Config` and the ones its modules read with `getattr` and a default
//! (`position_buckets`, `share_att_key`, `norm_rel_ebd`, `embedding_size`, `cls_dropout`, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::bert::HiddenAct;

/// The settings the network needs. Defaults are transformers' (`DebertaV2Config` and the
/// modules' `getattr` defaults), so an old config that omits a key means what it meant there.
#[derive(Debug, Clone, Deserialize)]
pub struct DebertaV2Config {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every layer.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings, sub-layer outputs and the relative embeddings.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Absolute positions (used only when `position_biased_input`), and the default span of
    /// relative positions.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Token types; 0 (DeBERTa-v2/v3's checkpoints) means the network reads none.
    #[serde(default)]
    pub type_vocab_size: usize,
    /// Standard deviation of freshly initialised weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Whether attention adds the disentangled relative-position terms.
    #[serde(default)]
    pub relative_attention: bool,
    /// Span of relative positions; below 1 means `max_position_embeddings`.
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    /// Log-bucketed relative positions: this many buckets on each side (below 1: none).
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    /// Whether absolute position embeddings are added to the word embeddings.
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    /// Which relative terms attention adds: `c2p` (content to position), `p2c`.
    #[serde(default, deserialize_with = "attention_types")]
    pub pos_att_type: Vec<String>,
    /// Whether the relative embeddings go through the content query and key projections
    /// (else their own `pos_key_proj`/`pos_query_proj`).
    #[serde(default)]
    pub share_att_key: bool,
    /// `layer_norm` when the relative embeddings are layer-normed (`encoder.LayerNorm`).
    #[serde(default = "default_norm_rel_ebd")]
    pub norm_rel_ebd: String,
    /// Width of the word embeddings when it differs from `hidden_size` (then `embed_proj`).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Width of one head when it is not `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    /// The convolution after layer 0 (DeBERTa-v2 xlarge); not implemented, so it must be 0.
    #[serde(default)]
    pub conv_kernel_size: usize,
    /// Dropout on the `[CLS]` state before the pooler's dense layer.
    #[serde(default)]
    pub pooler_dropout: f64,
    /// The pooler's activation.
    #[serde(default)]
    pub pooler_hidden_act: HiddenAct,
    /// The pooler's width (must be `hidden_size`: its output feeds the classifier).
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    /// Dropout before the classifier; `hidden_dropout_prob` when absent.
    #[serde(default)]
    pub cls_dropout: Option<f64>,
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

fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> usize {
    512
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_layer_norm_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn default_true() -> bool {
    true
}
fn default_norm_rel_ebd() -> String {
    "none".into()
}

/// `pos_att_type` as a list, a `"p2c|c2p"` string (older configs) or null, lower-cased as
/// `DebertaV2Config.__post_init__` does.
fn attention_types<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Types {
        Joined(String),
        List(Vec<String>),
    }
    Ok(match Option::<Types>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Types::Joined(joined)) => joined
            .split('|')
            .map(|kind| kind.trim().to_lowercase())
            .filter(|kind| !kind.is_empty())
            .collect(),
        Some(Types::List(kinds)) => kinds.iter().map(|kind| kind.to_lowercase()).collect(),
    })
}

impl DebertaV2Config {
    /// Number of model outputs: `num_labels`, else the size of `id2label`, else 1.
    pub fn num_labels(&self) -> usize {
        crate::bert::config::num_labels_of(self.num_labels, self.id2label.as_ref())
    }

    /// Checks what the network assumes.
    pub fn validate(&self) -> Result<(), String> {
        if self.attention_head_size.is_none() {
            crate::bert::config::check_heads(self.hidden_size, self.num_attention_heads)?;
        } else if self.num_attention_heads == 0 || self.head_size() == 0 {
            return Err("num_attention_heads and attention_head_size must be positive".into());
        }
        if self.embedding_size == Some(0) {
            return Err("embedding_size must be positive".into());
        }
        if self.conv_kernel_size > 0 {
            return Err(format!(
                "conv_kernel_size {} (the convolution after the first layer) is not supported",
                self.conv_kernel_size
            ));
        }
        if let Some(width) = self.pooler_hidden_size {
            if width != self.hidden_size {
                return Err(format!(
                    "pooler_hidden_size {width} must equal hidden_size {} (the pooler's output \
                     feeds the classifier)",
                    self.hidden_size
                ));
            }
        }
        for kind in &self.pos_att_type {
            if kind != "c2p" && kind != "p2c" {
                return Err(format!(
                    "pos_att_type {kind:?} is not supported (only \"c2p\" and \"p2c\")"
                ));
            }
        }
        for kind in self.norm_rel_ebd.split('|').map(str::trim) {
            if !matches!(kind.to_lowercase().as_str(), "none" | "layer_norm" | "") {
                return Err(format!(
                    "norm_rel_ebd {kind:?} is not supported (only \"layer_norm\" and \"none\")"
                ));
            }
        }
        if self.relative_attention && self.attention_span() < 2 {
            return Err(format!(
                "relative attention needs a span of at least 2 positions, got {}",
                self.attention_span()
            ));
        }
        if self.position_buckets > 0 && self.max_relative_positions() <= 1 {
            return Err("log-bucketed positions need max_relative_positions above 1".into());
        }
        crate::bert::config::check_dropouts(&[
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("pooler_dropout", self.pooler_dropout),
            ("cls_dropout", self.classifier_dropout()),
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
            "DebertaV2ForSequenceClassification",
            "deberta-v2",
        )
    }

    /// Width of one head.
    pub fn head_size(&self) -> usize {
        self.attention_head_size
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the word embeddings.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// `max_relative_positions`, or `max_position_embeddings` when it is below 1.
    pub fn max_relative_positions(&self) -> usize {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }

    /// Relative positions each side (`pos_ebd_size`): the buckets, else the span; the
    /// relative embedding has twice this many rows.
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative_positions()
        }
    }

    /// Whether attention adds the content-to-position term.
    pub fn content_to_position(&self) -> bool {
        self.relative_attention && self.pos_att_type.iter().any(|kind| kind == "c2p")
    }

    /// Whether attention adds the position-to-content term.
    pub fn position_to_content(&self) -> bool {
        self.relative_attention && self.pos_att_type.iter().any(|kind| kind == "p2c")
    }

    /// Whether the relative embeddings are layer-normed before use.
    pub fn normalises_relative_embeddings(&self) -> bool {
        self.norm_rel_ebd
            .split('|')
            .any(|kind| kind.trim().eq_ignore_ascii_case("layer_norm"))
    }

    /// Dropout before the classifier.
    pub fn classifier_dropout(&self) -> f64 {
        self.cls_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The attention types the scores add up, which divides their scale:
    /// `sqrt(head_size × (1 + c2p + p2c))`, taken in f32 as transformers does
    /// (`scaled_size_sqrt` builds a float32 tensor) whatever the model's dtype, so that an
    /// f64 run matches its f64 run too.
    pub fn score_scale(&self) -> f64 {
        let terms =
            1 + usize::from(self.content_to_position()) + usize::from(self.position_to_content());
        f64::from(((self.head_size() * terms) as f32).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> DebertaV2Config {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_v3_and_older_v2_configs_with_transformers_defaults() {
        // deberta-v3-base's keys.
        let v3 = parse(
            r#"{"vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "relative_attention": true,
                "max_relative_positions": -1, "position_buckets": 256, "norm_rel_ebd": "layer_norm",
                "share_att_key": true, "pos_att_type": ["p2c", "c2p"],
                "position_biased_input": false, "type_vocab_size": 0, "hidden_act": "gelu"}"#,
        );
        assert!(v3.validate().is_ok());
        assert_eq!(v3.attention_span(), 256);
        assert_eq!(v3.max_relative_positions(), 512);
        assert!(v3.content_to_position() && v3.position_to_content());
        assert!(v3.normalises_relative_embeddings());
        assert_eq!(v3.score_scale(), f64::from(192f32.sqrt()));
        assert_eq!(v3.layer_norm_eps, 1e-7);
        assert_eq!(v3.classifier_dropout(), 0.1);
        // An older config: the joined string, no buckets, absolute positions by default.
        let v2 = parse(
            r#"{"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16, "relative_attention": true,
                "pos_att_type": "C2P|p2c", "max_relative_positions": 64}"#,
        );
        assert_eq!(v2.pos_att_type, ["c2p", "p2c"]);
        assert_eq!(v2.attention_span(), 64);
        assert!(v2.position_biased_input && !v2.normalises_relative_embeddings());
        assert!(v2.validate().is_ok());
        let without = parse(
            r#"{"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16, "pos_att_type": null}"#,
        );
        assert!(!without.content_to_position() && !without.relative_attention);
        assert_eq!(without.score_scale(), 2.0);
    }

    #[test]
    fn rejects_what_the_network_does_not_implement() {
        let base = r#""vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 16"#;
        for (extra, expected) in [
            (r#""conv_kernel_size": 3"#, "conv_kernel_size 3"),
            (r#""pos_att_type": ["c2c"]"#, "\"c2c\""),
            (r#""norm_rel_ebd": "rms""#, "\"rms\""),
            (r#""pooler_hidden_size": 4"#, "pooler_hidden_size 4"),
            (r#""cls_dropout": 1.0"#, "cls_dropout"),
        ] {
            let error = parse(&format!("{{{base}, {extra}}}"))
                .validate()
                .unwrap_err();
            assert!(error.contains(expected), "{extra}: {error}");
        }
    }
}
