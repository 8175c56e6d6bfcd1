//! Model families: the one interface through which the rest of crosstrain sees an
//! architecture. `config.json` picks the family (`architectures`, else `model_type`); the
//! family then decides the config struct, the tensor names, the network (embeddings, layers,
//! head), which inputs it reads, and the facts the model card and the ONNX exporter need.
//!
//! Adding a family means: a folder beside `bert/` with its config and layers, a variant in
//! each enum here, and its graph in the host's ONNX exporter (`host/src/onnx/export/`). The
//! trainer, evaluation and mining never match on a family.

use std::path::Path;

use candle_core::{Result as TensorResult, Tensor};
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use crate::bert::{self, BertConfig, BertEncoder, BertForSequenceClassification};
use crate::dropout::DropoutRng;
use crate::error::ModelError;
use crate::tokens::TokenTensors;
use crate::weights::TensorNames;

/// A model family crosstrain implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// BERT and its distillations (MiniLM, TinyBERT, ...).
    Bert,
}

impl ModelFamily {
    /// Every family, in the order error messages list them.
    pub const ALL: &'static [ModelFamily] = &[ModelFamily::Bert];

    /// The family's sequence classifier in transformers: what a saved `config.json` names
    /// in `architectures` and what the card calls the model.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelFamily::Bert => "BertForSequenceClassification",
        }
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            ModelFamily::Bert => "bert",
        }
    }

    /// The name people call the family by.
    pub fn display_name(self) -> &'static str {
        match self {
            ModelFamily::Bert => "BERT",
        }
    }

    /// Every `architectures` entry this family loads from.
    pub fn architectures(self) -> &'static [&'static str] {
        match self {
            ModelFamily::Bert => bert::ARCHITECTURES,
        }
    }

    /// Where the family's tensors live in a checkpoint.
    pub fn tensor_names(self) -> TensorNames {
        match self {
            ModelFamily::Bert => bert::TENSOR_NAMES,
        }
    }

    /// Whether the network reads `token_type_ids` (segment ids). Families without segments
    /// take only `input_ids` and `attention_mask`, which is also what their ONNX graph
    /// declares.
    pub fn takes_token_type_ids(self) -> bool {
        match self {
            ModelFamily::Bert => true,
        }
    }

    /// The family a `config.json` names: its first `architectures` entry, else its
    /// `model_type`. Anything else is an error listing what is supported, raised before any
    /// weight is read (so an XLM-RoBERTa config is never trained as BERT).
    pub fn of_config(raw: &Map<String, Value>, path: &Path) -> Result<Self, ModelError> {
        let unsupported = |found: String| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found,
            supported: supported_list(),
        };
        let first_architecture = raw
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|names| names.first())
            .and_then(Value::as_str);
        if let Some(architecture) = first_architecture {
            return Self::ALL
                .iter()
                .copied()
                .find(|family| family.architectures().contains(&architecture))
                .ok_or_else(|| unsupported(format!("{architecture:?}")));
        }
        match raw.get("model_type").and_then(Value::as_str) {
            Some(model_type) => Self::ALL
                .iter()
                .copied()
                .find(|family| family.model_type() == model_type)
                .ok_or_else(|| unsupported(format!("model_type {model_type:?}"))),
            None => Err(unsupported(
                "(none: the file has neither `architectures` nor `model_type`)".into(),
            )),
        }
    }
}

/// "BERT (BertForSequenceClassification, BertModel, ...)" for every family.
fn supported_list() -> String {
    ModelFamily::ALL
        .iter()
        .map(|family| {
            format!(
                "{} (model_type {:?}; architectures {})",
                family.display_name(),
                family.model_type(),
                family.architectures().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A family's parsed and validated `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum FamilyConfig {
    /// A BERT config.
    Bert(BertConfig),
}

impl FamilyConfig {
    /// Parses `raw` (the contents of `path`) as the family it names, and validates it.
    pub fn parse(raw: &Map<String, Value>, path: &Path) -> Result<Self, ModelError> {
        let bad_file = |message: String| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        match ModelFamily::of_config(raw, path)? {
            ModelFamily::Bert => {
                let config: BertConfig = serde_json::from_value(Value::Object(raw.clone()))
                    .map_err(|e| bad_file(e.to_string()))?;
                config.validate().map_err(bad_file)?;
                Ok(FamilyConfig::Bert(config))
            }
        }
    }

    /// The family.
    pub fn family(&self) -> ModelFamily {
        match self {
            FamilyConfig::Bert(_) => ModelFamily::Bert,
        }
    }

    /// The BERT config, for code that emits BERT's own graph (the ONNX exporter).
    pub fn as_bert(&self) -> Option<&BertConfig> {
        match self {
            FamilyConfig::Bert(config) => Some(config),
        }
    }

    /// Number of outputs the config declares.
    pub fn num_labels(&self) -> usize {
        match self {
            FamilyConfig::Bert(config) => config.num_labels(),
        }
    }

    /// The longest input the position embeddings allow.
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            FamilyConfig::Bert(config) => config.max_position_embeddings,
        }
    }

    /// Standard deviation of freshly initialised weights.
    pub fn initializer_range(&self) -> f64 {
        match self {
            FamilyConfig::Bert(config) => config.initializer_range,
        }
    }

    /// Width of the hidden states (and of sentence embeddings).
    pub fn hidden_size(&self) -> usize {
        match self {
            FamilyConfig::Bert(config) => config.hidden_size,
        }
    }

    /// One line on the network's size, for the model card.
    pub fn description(&self) -> String {
        match self {
            FamilyConfig::Bert(config) => format!(
                "{} layers, hidden size {}, {} attention heads, intermediate size {}, \
                 vocabulary {}",
                config.num_hidden_layers,
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config.vocab_size
            ),
        }
    }

    /// The `config.json` to save: `original`'s keys, with the family's architecture and
    /// what a sequence classifier with `num_labels` outputs needs.
    pub fn to_saved_json(
        &self,
        original: &Map<String, Value>,
        num_labels: usize,
    ) -> Map<String, Value> {
        match self {
            FamilyConfig::Bert(config) => config.to_saved_json(original, num_labels),
        }
    }
}

/// A family's sequence classifier: token tensors to `[batch, num_labels]` logits.
#[derive(Debug, Clone)]
pub(crate) enum SequenceClassifier {
    Bert(BertForSequenceClassification),
}

impl SequenceClassifier {
    /// Builds the network of `config`, reading (or initialising) its tensors through `vb`.
    pub(crate) fn load(
        vb: VarBuilder,
        config: &FamilyConfig,
        num_labels: usize,
        dropout: &DropoutRng,
    ) -> TensorResult<Self> {
        match config {
            FamilyConfig::Bert(config) => Ok(SequenceClassifier::Bert(
                BertForSequenceClassification::load(vb, config, num_labels, dropout)?,
            )),
        }
    }

    pub(crate) fn num_labels(&self) -> usize {
        match self {
            SequenceClassifier::Bert(network) => network.num_labels(),
        }
    }

    pub(crate) fn forward(&self, tokens: &TokenTensors) -> TensorResult<Tensor> {
        match self {
            SequenceClassifier::Bert(network) => network.forward(tokens),
        }
    }
}

/// A family's encoder without head: one hidden state per token, for sentence embeddings.
#[derive(Debug, Clone)]
pub(crate) enum TokenEncoder {
    Bert(BertEncoder),
}

impl TokenEncoder {
    pub(crate) fn load(
        vb: VarBuilder,
        config: &FamilyConfig,
        dropout: &DropoutRng,
    ) -> TensorResult<Self> {
        match config {
            FamilyConfig::Bert(config) => Ok(TokenEncoder::Bert(BertEncoder::load(
                vb.pp(bert::TENSOR_NAMES.prefix),
                config,
                dropout,
            )?)),
        }
    }

    /// `[batch, seq, hidden]` hidden states of the last layer.
    pub(crate) fn forward(&self, tokens: &TokenTensors) -> TensorResult<Tensor> {
        match self {
            TokenEncoder::Bert(encoder) => encoder.forward(tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn architectures_decide_before_model_type() {
        let path = Path::new("config.json");
        for raw in [
            r#"{"architectures": ["BertForSequenceClassification"]}"#,
            r#"{"architectures": ["BertModel"], "model_type": "bert"}"#,
            r#"{"model_type": "bert"}"#,
        ] {
            assert_eq!(
                ModelFamily::of_config(&config(raw), path).unwrap(),
                ModelFamily::Bert
            );
        }
    }

    #[test]
    fn an_unsupported_architecture_is_named_with_what_is_supported() {
        let path = Path::new("m/config.json");
        let error = ModelFamily::of_config(
            &config(r#"{"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "bert"}"#),
            path,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("m/config.json")
                && error.contains("\"XLMRobertaForSequenceClassification\" is not supported")
                && error.contains("BERT")
                && error.contains("BertForSequenceClassification"),
            "{error}"
        );
        let error = ModelFamily::of_config(&config(r#"{"model_type": "xlm-roberta"}"#), path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("model_type \"xlm-roberta\""), "{error}");
        let error = ModelFamily::of_config(&config("{}"), path)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("neither `architectures` nor `model_type`"),
            "{error}"
        );
    }
}
