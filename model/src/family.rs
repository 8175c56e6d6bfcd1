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

use crate::bert::PositionIds;
use crate::bert::{self, BertConfig, BertEncoder, BertForSequenceClassification};
use crate::classification_head::{EncoderWithHead, HeadActivation};
use crate::deberta_v2::{
    self, DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model,
};
use crate::dropout::DropoutRng;
use crate::electra;
use crate::error::ModelError;
use crate::modernbert::{
    self, ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel,
};
use crate::qwen::{self, DecoderConfig, DecoderKind, DecoderReranker};
use crate::tokens::TokenTensors;
use crate::weights::TensorNames;
use crate::xlm_roberta;

/// A model family crosstrain implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// BERT and its distillations (MiniLM, TinyBERT, ...).
    Bert,
    /// XLM-RoBERTa (bge-reranker, jina-reranker-v2, multilingual-e5).
    XlmRoberta,
    /// ELECTRA (ms-marco-electra).
    Electra,
    /// ModernBERT (gte-reranker-modernbert, the ModernBERT rerankers): its own fused CPU
    /// layer, candle's ops elsewhere.
    ModernBert,
    /// DeBERTa-v2 and v3 (mxbai-rerank-v1, the nli-deberta-v3 cross-encoders): BERT's fused
    /// layer with its relative terms on the CPU, candle's ops elsewhere.
    DebertaV2,
    /// Qwen3 decoder rerankers (Qwen3-Reranker, zerank-2, jina-reranker-v3, the seq-cls
    /// conversions): the fused decoder layer on the CPU, candle's ops elsewhere.
    Qwen3,
    /// Qwen2 decoder rerankers (mxbai-rerank-v2): as Qwen3.
    Qwen2,
    /// Llama-architecture decoder rerankers: as Qwen3.
    Llama,
}

impl ModelFamily {
    /// Every family, in the order error messages list them.
    pub const ALL: &'static [ModelFamily] = &[
        ModelFamily::Bert,
        ModelFamily::XlmRoberta,
        ModelFamily::Electra,
        ModelFamily::ModernBert,
        ModelFamily::DebertaV2,
        ModelFamily::Qwen3,
        ModelFamily::Qwen2,
        ModelFamily::Llama,
    ];

    /// The family's sequence classifier in transformers: what a saved `config.json` names
    /// in `architectures` and what the card calls the model.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelFamily::Bert => "BertForSequenceClassification",
            ModelFamily::XlmRoberta => "XLMRobertaForSequenceClassification",
            ModelFamily::Electra => "ElectraForSequenceClassification",
            ModelFamily::ModernBert => "ModernBertForSequenceClassification",
            ModelFamily::DebertaV2 => "DebertaV2ForSequenceClassification",
            ModelFamily::Qwen3 => "Qwen3ForCausalLM",
            ModelFamily::Qwen2 => "Qwen2ForCausalLM",
            ModelFamily::Llama => "LlamaForCausalLM",
        }
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            ModelFamily::Bert => "bert",
            ModelFamily::XlmRoberta => "xlm-roberta",
            ModelFamily::Electra => "electra",
            ModelFamily::ModernBert => "modernbert",
            ModelFamily::DebertaV2 => "deberta-v2",
            ModelFamily::Qwen3 => "qwen3",
            ModelFamily::Qwen2 => "qwen2",
            ModelFamily::Llama => "llama",
        }
    }

    /// The modules PEFT adapts when a `LoraConfig` names none (its
    /// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`): `None` where PEFT has no
    /// default (ModernBERT: it asks for `target_modules`) or the family is a decoder (whose
    /// layers decide for themselves, see [`crate::lora::LoraConfig::targets`]).
    pub fn peft_default_targets(self) -> Option<&'static [&'static str]> {
        match self {
            ModelFamily::Bert | ModelFamily::XlmRoberta | ModelFamily::Electra => {
                Some(&["query", "value"])
            }
            ModelFamily::DebertaV2 => Some(&["query_proj", "value_proj"]),
            _ => None,
        }
    }

    /// The name people call the family by.
    pub fn display_name(self) -> &'static str {
        match self {
            ModelFamily::Bert => "BERT",
            ModelFamily::XlmRoberta => "XLM-RoBERTa",
            ModelFamily::Electra => "ELECTRA",
            ModelFamily::ModernBert => "ModernBERT",
            ModelFamily::DebertaV2 => "DeBERTa-v2",
            ModelFamily::Qwen3 => "Qwen3",
            ModelFamily::Qwen2 => "Qwen2",
            ModelFamily::Llama => "Llama",
        }
    }

    /// Every `architectures` entry this family loads from.
    pub fn architectures(self) -> &'static [&'static str] {
        match self {
            ModelFamily::Bert => bert::ARCHITECTURES,
            ModelFamily::XlmRoberta => xlm_roberta::ARCHITECTURES,
            ModelFamily::Electra => electra::ARCHITECTURES,
            ModelFamily::ModernBert => modernbert::ARCHITECTURES,
            ModelFamily::DebertaV2 => deberta_v2::ARCHITECTURES,
            ModelFamily::Qwen3 => qwen::QWEN3_ARCHITECTURES,
            ModelFamily::Qwen2 => qwen::QWEN2_ARCHITECTURES,
            ModelFamily::Llama => qwen::LLAMA_ARCHITECTURES,
        }
    }

    /// Where the family's tensors live in a checkpoint.
    pub fn tensor_names(self) -> TensorNames {
        match self {
            ModelFamily::Bert => bert::TENSOR_NAMES,
            ModelFamily::XlmRoberta => xlm_roberta::TENSOR_NAMES,
            ModelFamily::Electra => electra::TENSOR_NAMES,
            ModelFamily::ModernBert => modernbert::TENSOR_NAMES,
            ModelFamily::DebertaV2 => deberta_v2::TENSOR_NAMES,
            ModelFamily::Qwen3 | ModelFamily::Qwen2 | ModelFamily::Llama => qwen::TENSOR_NAMES,
        }
    }

    /// Whether the family is a decoder (scored through a chat template, padded on the left
    /// for a causal LM head).
    pub fn is_decoder(self) -> bool {
        matches!(
            self,
            ModelFamily::Qwen3 | ModelFamily::Qwen2 | ModelFamily::Llama
        )
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

/// A family's parsed and validated `config.json`. XLM-RoBERTa and ELECTRA configs have
/// BERT's keys (ELECTRA adds `embedding_size`), so all three read into [`BertConfig`];
/// ModernBERT and DeBERTa-v2 have their own.
#[derive(Debug, Clone)]
pub enum FamilyConfig {
    /// A BERT config.
    Bert(BertConfig),
    /// An XLM-RoBERTa config.
    XlmRoberta(BertConfig),
    /// An ELECTRA config.
    Electra(BertConfig),
    /// A ModernBERT config.
    ModernBert(ModernBertConfig),
    /// A DeBERTa-v2 config.
    DebertaV2(DebertaV2Config),
    /// A decoder reranker's config (Qwen3, Qwen2, Llama).
    Decoder(DecoderConfig),
}

impl FamilyConfig {
    /// Parses `raw` (the contents of `path`) as the family it names, and validates it.
    pub fn parse(raw: &Map<String, Value>, path: &Path) -> Result<Self, ModelError> {
        let bad_file = |message: String| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let family = ModelFamily::of_config(raw, path)?;
        let decoder_kind = match family {
            ModelFamily::Qwen3 => Some(DecoderKind::Qwen3),
            ModelFamily::Qwen2 => Some(DecoderKind::Qwen2),
            ModelFamily::Llama => Some(DecoderKind::Llama),
            _ => None,
        };
        if let Some(kind) = decoder_kind {
            let num_labels = raw
                .get("id2label")
                .and_then(Value::as_object)
                .map(|labels| labels.len())
                .or_else(|| {
                    raw.get("num_labels")
                        .and_then(Value::as_u64)
                        .map(|n| n as usize)
                })
                .unwrap_or(1);
            return Ok(FamilyConfig::Decoder(DecoderConfig::parse(
                raw, path, kind, num_labels,
            )?));
        }
        if family == ModelFamily::DebertaV2 {
            let config: DebertaV2Config = serde_json::from_value(Value::Object(raw.clone()))
                .map_err(|e| bad_file(e.to_string()))?;
            config.validate().map_err(bad_file)?;
            return Ok(FamilyConfig::DebertaV2(config));
        }
        if family == ModelFamily::ModernBert {
            let config: ModernBertConfig = serde_json::from_value(Value::Object(raw.clone()))
                .map_err(|e| bad_file(e.to_string()))?;
            config.validate().map_err(bad_file)?;
            return Ok(FamilyConfig::ModernBert(config));
        }
        let config: BertConfig = serde_json::from_value(Value::Object(raw.clone()))
            .map_err(|e| bad_file(e.to_string()))?;
        config.validate().map_err(bad_file)?;
        Ok(match family {
            ModelFamily::Bert => FamilyConfig::Bert(config),
            ModelFamily::XlmRoberta => {
                if xlm_roberta::max_input_length(&config) == 0 {
                    return Err(bad_file(format!(
                        "max_position_embeddings {} leaves no position after padding_idx {}",
                        config.max_position_embeddings,
                        xlm_roberta::padding_idx(&config)
                    )));
                }
                FamilyConfig::XlmRoberta(config)
            }
            ModelFamily::Electra => FamilyConfig::Electra(config),
            ModelFamily::ModernBert
            | ModelFamily::DebertaV2
            | ModelFamily::Qwen3
            | ModelFamily::Qwen2
            | ModelFamily::Llama => unreachable!("parsed above"),
        })
    }

    /// The transformers class of the saved model: the family's sequence classifier, or a
    /// decoder's own (`Qwen3ForCausalLM`, `Qwen3ForSequenceClassification`, ...).
    pub fn architecture_name(&self) -> &str {
        match self {
            FamilyConfig::Decoder(config) if !config.architecture.is_empty() => {
                &config.architecture
            }
            other => other.family().architecture(),
        }
    }

    /// The family.
    pub fn family(&self) -> ModelFamily {
        match self {
            FamilyConfig::Bert(_) => ModelFamily::Bert,
            FamilyConfig::XlmRoberta(_) => ModelFamily::XlmRoberta,
            FamilyConfig::Electra(_) => ModelFamily::Electra,
            FamilyConfig::ModernBert(_) => ModelFamily::ModernBert,
            FamilyConfig::DebertaV2(_) => ModelFamily::DebertaV2,
            FamilyConfig::Decoder(config) => match config.kind {
                DecoderKind::Qwen3 => ModelFamily::Qwen3,
                DecoderKind::Qwen2 => ModelFamily::Qwen2,
                DecoderKind::Llama => ModelFamily::Llama,
            },
        }
    }

    /// Whether the network reads `token_type_ids` (segment ids). Families without segments
    /// take only `input_ids` and `attention_mask`, which is also what their ONNX graph
    /// declares; DeBERTa-v2 reads them only when its config has token types (v2 and v3
    /// checkpoints have none, though their tokenizer writes them).
    pub fn takes_token_type_ids(&self) -> bool {
        match self {
            FamilyConfig::Bert(_) | FamilyConfig::Electra(_) => true,
            FamilyConfig::XlmRoberta(_) | FamilyConfig::ModernBert(_) => false,
            FamilyConfig::DebertaV2(config) => config.type_vocab_size > 0,
            FamilyConfig::Decoder(_) => false,
        }
    }

    /// The BERT-shaped config of the families built on BERT's encoder, for code that emits
    /// their graph (the ONNX exporter); `None` for ModernBERT and DeBERTa-v2.
    pub fn bert_config(&self) -> Option<&BertConfig> {
        match self {
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => Some(config),
            FamilyConfig::ModernBert(_) | FamilyConfig::DebertaV2(_) | FamilyConfig::Decoder(_) => {
                None
            }
        }
    }

    /// Number of outputs the config declares.
    pub fn num_labels(&self) -> usize {
        match self {
            FamilyConfig::ModernBert(config) => config.num_labels(),
            FamilyConfig::DebertaV2(config) => config.num_labels(),
            FamilyConfig::Decoder(config) => config.num_labels(),
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => config.num_labels(),
        }
    }

    /// The longest input the position embeddings allow (XLM-RoBERTa's positions start
    /// after `padding_idx`, so 514 positions serve 512 tokens).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            FamilyConfig::XlmRoberta(config) => xlm_roberta::max_input_length(config),
            FamilyConfig::Bert(config) | FamilyConfig::Electra(config) => {
                config.max_position_embeddings
            }
            FamilyConfig::ModernBert(config) => config.max_position_embeddings,
            FamilyConfig::DebertaV2(config) => config.max_position_embeddings,
            FamilyConfig::Decoder(config) => config.max_position_embeddings,
        }
    }

    /// Standard deviation of freshly initialised weights.
    pub fn initializer_range(&self) -> f64 {
        match self {
            FamilyConfig::ModernBert(config) => config.initializer_range,
            FamilyConfig::DebertaV2(config) => config.initializer_range,
            FamilyConfig::Decoder(config) => config.initializer_range,
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => config.initializer_range,
        }
    }

    /// `(name ending, row)` of the embedding rows transformers keeps at zero when it
    /// initialises weights (each embedding's `padding_idx`).
    pub fn padding_rows(&self) -> Vec<(&'static str, usize)> {
        match self {
            FamilyConfig::XlmRoberta(config) => {
                let padding = xlm_roberta::padding_idx(config) as usize;
                vec![
                    ("word_embeddings.weight", padding),
                    ("position_embeddings.weight", padding),
                ]
            }
            FamilyConfig::Bert(config) | FamilyConfig::Electra(config) => vec![(
                "word_embeddings.weight",
                config.pad_token_id.unwrap_or(0) as usize,
            )],
            FamilyConfig::ModernBert(config) => vec![(
                "tok_embeddings.weight",
                config.pad_token_id.unwrap_or(0) as usize,
            )],
            FamilyConfig::DebertaV2(config) => vec![(
                "word_embeddings.weight",
                config.pad_token_id.unwrap_or(0) as usize,
            )],
            // Qwen's and Llama's embeddings take `pad_token_id` as their padding_idx.
            FamilyConfig::Decoder(config) => config
                .pad_token_id
                .filter(|&id| (id as usize) < config.vocab_size)
                .map(|id| vec![("embed_tokens.weight", id as usize)])
                .unwrap_or_default(),
        }
    }

    /// How the family numbers positions.
    pub fn position_ids(&self) -> PositionIds {
        match self {
            FamilyConfig::XlmRoberta(config) => xlm_roberta::positions(config),
            FamilyConfig::Bert(_)
            | FamilyConfig::Electra(_)
            | FamilyConfig::ModernBert(_)
            | FamilyConfig::DebertaV2(_)
            | FamilyConfig::Decoder(_) => PositionIds::FromZero,
        }
    }

    /// The activation of the family's RoBERTa-style classification head; `None` for BERT,
    /// whose head is its pooler (dense → tanh) and classifier.
    pub fn head_activation(&self) -> Option<HeadActivation> {
        match self {
            FamilyConfig::Bert(_)
            | FamilyConfig::ModernBert(_)
            | FamilyConfig::DebertaV2(_)
            | FamilyConfig::Decoder(_) => None,
            FamilyConfig::XlmRoberta(_) => Some(xlm_roberta::HEAD_ACTIVATION),
            FamilyConfig::Electra(_) => Some(electra::HEAD_ACTIVATION),
        }
    }

    /// Width of the hidden states (and of sentence embeddings).
    pub fn hidden_size(&self) -> usize {
        match self {
            FamilyConfig::ModernBert(config) => config.hidden_size,
            FamilyConfig::DebertaV2(config) => config.hidden_size,
            FamilyConfig::Decoder(config) => config.hidden_size,
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => config.hidden_size,
        }
    }

    /// One line on the network's size, for the model card.
    pub fn description(&self) -> String {
        let config = match self {
            FamilyConfig::Decoder(config) => {
                let head = match config.head {
                    qwen::DecoderHead::LogitScore {
                        true_token_id,
                        false_token_id,
                    } => match false_token_id {
                        Some(false_id) => format!(
                            "scored by the LM head's logit of token {true_token_id} minus that \
                             of token {false_id} at the last position"
                        ),
                        None => format!(
                            "scored by the LM head's logit of token {true_token_id} at the last \
                             position"
                        ),
                    },
                    qwen::DecoderHead::Classification { num_labels } => {
                        format!("a {num_labels}-output classification head at the last token")
                    }
                };
                return format!(
                    "{} decoder layers, hidden size {}, {} query and {} key/value heads of {}, \
                     SwiGLU intermediate size {}, vocabulary {}; {head}",
                    config.num_hidden_layers,
                    config.hidden_size,
                    config.num_attention_heads,
                    config.num_key_value_heads(),
                    config.head_dim(),
                    config.intermediate_size,
                    config.vocab_size
                );
            }
            FamilyConfig::ModernBert(config) => {
                return format!(
                    "{} layers (every {} global, the others a {}-token window), hidden size {}, \
                     {} attention heads, GeGLU intermediate size {}, vocabulary {}, {:?} pooling",
                    config.num_hidden_layers,
                    config.global_attn_every_n_layers,
                    config.local_attention,
                    config.hidden_size,
                    config.num_attention_heads,
                    config.intermediate_size,
                    config.vocab_size,
                    config.classifier_pooling
                )
            }
            FamilyConfig::DebertaV2(config) => {
                let relative = if config.relative_attention {
                    let buckets = if config.position_buckets > 0 {
                        format!("{} log buckets", config.attention_span())
                    } else {
                        format!("{} positions", config.attention_span())
                    };
                    format!(
                        ", disentangled attention ({}; relative span {buckets} each side)",
                        config.pos_att_type.join("+")
                    )
                } else {
                    String::new()
                };
                return format!(
                    "{} layers, hidden size {}, {} attention heads, intermediate size {}, \
                     vocabulary {}{relative}",
                    config.num_hidden_layers,
                    config.hidden_size,
                    config.num_attention_heads,
                    config.intermediate_size,
                    config.vocab_size
                );
            }
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => config,
        };
        let embeddings = match config.embedding_size {
            Some(width) if width != config.hidden_size => format!(", embedding size {width}"),
            _ => String::new(),
        };
        format!(
            "{} layers, hidden size {}, {} attention heads, intermediate size {}, \
             vocabulary {}{embeddings}",
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.vocab_size
        )
    }

    /// The `config.json` to save: `original`'s keys, with the family's architecture and
    /// what a sequence classifier with `num_labels` outputs needs.
    pub fn to_saved_json(
        &self,
        original: &Map<String, Value>,
        num_labels: usize,
    ) -> Map<String, Value> {
        let family = self.family();
        match self {
            FamilyConfig::ModernBert(config) => config.to_saved_json(original, num_labels),
            FamilyConfig::DebertaV2(config) => config.to_saved_json(original, num_labels),
            FamilyConfig::Decoder(config) => config.to_saved_json(original),
            FamilyConfig::Bert(config)
            | FamilyConfig::XlmRoberta(config)
            | FamilyConfig::Electra(config) => config.to_saved_json(
                original,
                num_labels,
                family.architecture(),
                family.model_type(),
            ),
        }
    }
}

/// A family's sequence classifier: token tensors to `[batch, num_labels]` logits.
#[derive(Debug, Clone)]
pub(crate) enum SequenceClassifier {
    Bert(BertForSequenceClassification),
    /// XLM-RoBERTa's and ELECTRA's: BERT's encoder with a RoBERTa-style head.
    EncoderWithHead(EncoderWithHead),
    ModernBert(ModernBertForSequenceClassification),
    DebertaV2(DebertaV2ForSequenceClassification),
    Decoder(DecoderReranker),
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
            FamilyConfig::XlmRoberta(config) => Ok(SequenceClassifier::EncoderWithHead(
                xlm_roberta::load(vb, config, num_labels, dropout)?,
            )),
            FamilyConfig::Electra(config) => Ok(SequenceClassifier::EncoderWithHead(
                electra::load(vb, config, num_labels, dropout)?,
            )),
            FamilyConfig::ModernBert(config) => Ok(SequenceClassifier::ModernBert(
                ModernBertForSequenceClassification::load(vb, config, num_labels, dropout)?,
            )),
            FamilyConfig::DebertaV2(config) => Ok(SequenceClassifier::DebertaV2(
                DebertaV2ForSequenceClassification::load(vb, config, num_labels, dropout)?,
            )),
            FamilyConfig::Decoder(config) => {
                let config = match config.head {
                    qwen::DecoderHead::Classification { .. } => {
                        let mut config = config.clone();
                        config.head = qwen::DecoderHead::Classification { num_labels };
                        config
                    }
                    qwen::DecoderHead::LogitScore { .. } => config.clone(),
                };
                Ok(SequenceClassifier::Decoder(DecoderReranker::load(
                    vb, &config, dropout,
                )?))
            }
        }
    }

    /// The layers that can keep their parameters in one packed `Var` (BERT's encoder layer,
    /// ModernBERT's; DeBERTa's packs its relative table with them per pass, so it does not).
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        match self {
            SequenceClassifier::Bert(network) => network.packed_layers_mut(),
            SequenceClassifier::EncoderWithHead(network) => network.packed_layers_mut(),
            SequenceClassifier::ModernBert(network) => network.packed_layers_mut(),
            SequenceClassifier::DebertaV2(_) | SequenceClassifier::Decoder(_) => Vec::new(),
        }
    }

    pub(crate) fn num_labels(&self) -> usize {
        match self {
            SequenceClassifier::Bert(network) => network.num_labels(),
            SequenceClassifier::EncoderWithHead(network) => network.num_labels(),
            SequenceClassifier::ModernBert(network) => network.num_labels(),
            SequenceClassifier::DebertaV2(network) => network.num_labels(),
            SequenceClassifier::Decoder(network) => network.num_labels(),
        }
    }

    pub(crate) fn forward(&self, tokens: &TokenTensors) -> TensorResult<Tensor> {
        match self {
            SequenceClassifier::Bert(network) => network.forward(tokens),
            SequenceClassifier::EncoderWithHead(network) => network.forward(tokens),
            SequenceClassifier::ModernBert(network) => {
                network.forward(&tokens.input_ids, &tokens.attention_mask)
            }
            SequenceClassifier::DebertaV2(network) => network.forward(tokens),
            SequenceClassifier::Decoder(network) => network.forward(tokens),
        }
    }
}

/// A family's encoder without head: one hidden state per token, for sentence embeddings.
/// The BERT-shaped families share BERT's encoder (their own positions and tensor prefix);
/// ModernBERT and DeBERTa-v2 have their own.
#[derive(Debug, Clone)]
pub(crate) enum TokenEncoder {
    Bert(BertEncoder),
    ModernBert(ModernBertModel),
    DebertaV2(DebertaV2Model),
}

impl TokenEncoder {
    pub(crate) fn load(
        vb: VarBuilder,
        config: &FamilyConfig,
        dropout: &DropoutRng,
    ) -> TensorResult<Self> {
        Ok(TokenEncoder::Bert(match config {
            FamilyConfig::Bert(config) => {
                BertEncoder::load(vb.pp(bert::TENSOR_NAMES.prefix), config, dropout)?
            }
            FamilyConfig::XlmRoberta(config) => xlm_roberta::load_encoder(vb, config, dropout)?,
            FamilyConfig::Electra(config) => electra::load_encoder(vb, config, dropout)?,
            FamilyConfig::ModernBert(config) => {
                return Ok(TokenEncoder::ModernBert(ModernBertModel::load(
                    vb.pp(modernbert::TENSOR_NAMES.prefix),
                    config,
                    dropout,
                )?))
            }
            FamilyConfig::DebertaV2(config) => {
                return Ok(TokenEncoder::DebertaV2(DebertaV2Model::load(
                    vb.pp(deberta_v2::TENSOR_NAMES.prefix),
                    config,
                    dropout,
                )?))
            }
            FamilyConfig::Decoder(config) => {
                return Err(candle_core::Error::Msg(format!(
                    "{} is a decoder reranker, not a sentence-embedding model",
                    config.architecture
                )))
            }
        }))
    }

    /// `[batch, seq, hidden]` hidden states of the last layer.
    pub(crate) fn forward(&self, tokens: &TokenTensors) -> TensorResult<Tensor> {
        match self {
            TokenEncoder::Bert(encoder) => encoder.forward(tokens),
            TokenEncoder::ModernBert(encoder) => {
                encoder.forward(&tokens.input_ids, &tokens.attention_mask)
            }
            TokenEncoder::DebertaV2(encoder) => encoder.forward(tokens),
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
        for (raw, family) in [
            (
                r#"{"architectures": ["XLMRobertaForSequenceClassification"]}"#,
                ModelFamily::XlmRoberta,
            ),
            (r#"{"model_type": "xlm-roberta"}"#, ModelFamily::XlmRoberta),
            (
                r#"{"architectures": ["ElectraForPreTraining"], "model_type": "electra"}"#,
                ModelFamily::Electra,
            ),
            (
                r#"{"architectures": ["DebertaV2ForSequenceClassification"]}"#,
                ModelFamily::DebertaV2,
            ),
            (r#"{"model_type": "deberta-v2"}"#, ModelFamily::DebertaV2),
        ] {
            assert_eq!(ModelFamily::of_config(&config(raw), path).unwrap(), family);
        }
    }

    #[test]
    fn an_unsupported_architecture_is_named_with_what_is_supported() {
        let path = Path::new("m/config.json");
        let error = ModelFamily::of_config(
            &config(r#"{"architectures": ["T5ForSequenceClassification"], "model_type": "bert"}"#),
            path,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("m/config.json")
                && error.contains("\"T5ForSequenceClassification\" is not supported")
                && error.contains("BERT")
                && error.contains("BertForSequenceClassification"),
            "{error}"
        );
        let error = ModelFamily::of_config(&config(r#"{"model_type": "t5"}"#), path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("model_type \"t5\""), "{error}");
        assert!(
            error.contains("XLMRobertaForSequenceClassification")
                && error.contains("ElectraForSequenceClassification"),
            "{error}"
        );
        let error = ModelFamily::of_config(&config("{}"), path)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("neither `architectures` nor `model_type`"),
            "{error}"
        );
    }
}
