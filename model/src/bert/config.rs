//! The BERT configuration, read straight from a Hugging Face `config.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// GELU with the exact erf, as `transformers`' "gelu".
    #[default]
    Gelu,
    /// GELU with the tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// ReLU.
    Relu,
}

/// `BertConfig` as transformers writes it; `#[serde(default)]` where files omit fields.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and sub-layer outputs.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of position embeddings (the longest input).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Standard deviation of freshly initialised weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Id of `[PAD]`.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Dropout before the classifier; null falls back to `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Only "absolute" is supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Label names by id; their count is the number of model outputs.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Explicit number of labels, when the file gives one.
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// Width of the embeddings when it differs from `hidden_size` (ELECTRA; an
    /// `embeddings_project` layer then maps it to the hidden size).
    #[serde(default)]
    pub embedding_size: Option<usize>,
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
fn default_type_vocab_size() -> usize {
    2
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Number of model outputs: `num_labels`, else the size of `id2label`, else 1 (a
    /// cross-encoder's default when the checkpoint has no classification head).
    pub fn num_labels(&self) -> usize {
        crate::bert::config::num_labels_of(self.num_labels, self.id2label.as_ref())
    }

    /// Dropout before the classifier.
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Width of the embeddings (`embedding_size`, else `hidden_size`).
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the model code assumes.
    pub fn validate(&self) -> Result<(), String> {
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.embedding_size == Some(0) {
            return Err("embedding_size must be positive".to_string());
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        check_dropouts(&[
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout()),
        ])
    }

    /// The `config.json` to save: the original file's fields (so nothing we do not model is
    /// lost), with what a sequence classifier needs set for `num_labels` outputs, under the
    /// family's `architecture` and `model_type` (BERT, XLM-RoBERTa and ELECTRA share this
    /// config).
    pub fn to_saved_json(
        &self,
        original: &Map<String, Value>,
        num_labels: usize,
        architecture: &str,
        model_type: &str,
    ) -> Map<String, Value> {
        let mut saved = classifier_json(
            original,
            self.id2label.as_ref(),
            num_labels,
            architecture,
            model_type,
        );
        for (key, value) in [
            ("vocab_size", Value::from(self.vocab_size)),
            ("hidden_size", Value::from(self.hidden_size)),
            ("num_hidden_layers", Value::from(self.num_hidden_layers)),
            ("num_attention_heads", Value::from(self.num_attention_heads)),
            ("intermediate_size", Value::from(self.intermediate_size)),
            ("hidden_dropout_prob", Value::from(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Value::from(self.attention_probs_dropout_prob),
            ),
            (
                "max_position_embeddings",
                Value::from(self.max_position_embeddings),
            ),
            ("type_vocab_size", Value::from(self.type_vocab_size)),
            ("initializer_range", Value::from(self.initializer_range)),
            ("layer_norm_eps", Value::from(self.layer_norm_eps)),
        ] {
            saved.entry(key.to_string()).or_insert(value);
        }
        saved
            .entry("hidden_act".to_string())
            .or_insert_with(|| serde_json::to_value(self.hidden_act).unwrap_or(Value::Null));
        saved
    }
}

/// Every family's check that the heads split the hidden width.
pub(crate) fn check_heads(hidden_size: usize, num_attention_heads: usize) -> Result<(), String> {
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        return Err(format!(
            "hidden_size {hidden_size} is not a multiple of num_attention_heads \
             {num_attention_heads}"
        ));
    }
    Ok(())
}

/// Every family's check that its dropout probabilities are probabilities below 1.
pub(crate) fn check_dropouts(probabilities: &[(&str, f64)]) -> Result<(), String> {
    for (name, p) in probabilities {
        if !(0.0..1.0).contains(p) {
            return Err(format!("{name} must be in [0, 1), got {p}"));
        }
    }
    Ok(())
}

/// Every family's number of outputs: `num_labels`, else the size of `id2label`, else 1.
pub(crate) fn num_labels_of(
    num_labels: Option<usize>,
    id2label: Option<&BTreeMap<String, String>>,
) -> usize {
    num_labels
        .or_else(|| id2label.map(BTreeMap::len))
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// `original` as a sequence classifier of `num_labels` outputs saves it, for every family:
/// its architecture and model type, `id2label`/`label2id` (the original's names where they
/// fit, else `LABEL_i`), no `num_labels`, float32.
pub(crate) fn classifier_json(
    original: &Map<String, Value>,
    id2label: Option<&BTreeMap<String, String>>,
    num_labels: usize,
    architecture: &str,
    model_type: &str,
) -> Map<String, Value> {
    let mut saved = original.clone();
    let names: Vec<String> = match id2label {
        Some(labels) if labels.len() == num_labels => (0..num_labels)
            .map(|i| {
                labels
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect(),
        _ => (0..num_labels).map(|i| format!("LABEL_{i}")).collect(),
    };
    let id2label: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (i.to_string(), Value::from(name.clone())))
        .collect();
    let label2id: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.clone(), Value::from(i)))
        .collect();
    saved.insert("architectures".into(), serde_json::json!([architecture]));
    saved.insert("model_type".into(), model_type.into());
    saved.insert("id2label".into(), Value::Object(id2label));
    saved.insert("label2id".into(), Value::Object(label2id));
    saved.remove("num_labels");
    saved.insert("dtype".into(), "float32".into());
    saved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_transformers_config_with_defaults_for_missing_fields() {
        let config: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16, "classifier_dropout": null,
                "id2label": {"0": "A", "1": "B", "2": "C"}, "hidden_act": "gelu"}"#,
        )
        .unwrap();
        assert_eq!(config.num_labels(), 3);
        assert_eq!(config.max_position_embeddings, 512);
        assert_eq!(config.classifier_dropout(), 0.1);
        assert_eq!(config.layer_norm_eps, 1e-12);
        assert!(config.validate().is_ok());
        let saved = config.to_saved_json(&Map::new(), 3, "BertForSequenceClassification", "bert");
        assert_eq!(saved["id2label"]["2"], "C");
        assert_eq!(saved["label2id"]["B"], 1);
        assert_eq!(saved["architectures"][0], "BertForSequenceClassification");
    }

    #[test]
    fn rejects_what_the_model_does_not_implement() {
        let mut config: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 100, "hidden_size": 9, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16}"#,
        )
        .unwrap();
        assert!(config.validate().is_err());
        config.hidden_size = 8;
        config.position_embedding_type = "relative_key".into();
        assert!(config.validate().unwrap_err().contains("relative_key"));
    }
}
