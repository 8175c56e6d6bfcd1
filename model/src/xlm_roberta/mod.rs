//! XLM-RoBERTa (`XLMRobertaForSequenceClassification`: BAAI/bge-reranker-*, jina-reranker-v2).
//! The encoder is BERT's ([`BertEncoder`]: same embeddings, same post-norm layer and fused
//! kernel) with RoBERTa's position ids (real tokens from `padding_idx + 1`) and one token
//! type; the head is [`ClassificationHead`] with tanh, and there is no pooler.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEncoder, PositionIds};
use crate::classification_head::{ClassificationHead, HeadActivation};
use crate::dropout::DropoutRng;
use crate::tokens::TokenTensors;
use crate::weights::TensorNames;

/// Where XLM-RoBERTa's tensors live: `roberta.*` and `classifier.{dense,out_proj}.*`.
/// `XLMRobertaModel` checkpoints (multilingual-e5, bge-m3) write the encoder without prefix.
pub const TENSOR_NAMES: TensorNames = TensorNames {
    prefix: "roberta",
    unprefixed_roots: &["embeddings.", "encoder.", "pooler."],
    initialised_when_missing: &["classifier."],
};

/// The `architectures` entries loaded as XLM-RoBERTa.
pub const ARCHITECTURES: &[&str] = &[
    "XLMRobertaForSequenceClassification",
    "XLMRobertaModel",
    "XLMRobertaForMaskedLM",
];

/// transformers' default `pad_token_id` of XLM-RoBERTa, which is also `padding_idx`.
const DEFAULT_PADDING_IDX: u32 = 1;

/// The padding id (and padding position) of `config`.
pub fn padding_idx(config: &BertConfig) -> u32 {
    config.pad_token_id.unwrap_or(DEFAULT_PADDING_IDX)
}

/// The longest input: positions `padding_idx + 1 ..= max_position_embeddings - 1`.
pub fn max_input_length(config: &BertConfig) -> usize {
    config
        .max_position_embeddings
        .saturating_sub(padding_idx(config) as usize + 1)
}

/// The XLM-RoBERTa sequence classifier.
#[derive(Debug, Clone)]
pub struct XLMRobertaForSequenceClassification {
    encoder: BertEncoder,
    head: ClassificationHead,
    num_labels: usize,
}

impl XLMRobertaForSequenceClassification {
    /// Loads `roberta.*` and `classifier.*`.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let positions = PositionIds::AfterPadding {
            padding_idx: padding_idx(config),
        };
        Ok(Self {
            encoder: BertEncoder::load_with_positions(
                vb.pp(TENSOR_NAMES.prefix),
                config,
                positions,
                rng,
            )?,
            head: ClassificationHead::load(
                vb.pp("classifier"),
                config.hidden_size,
                num_labels,
                HeadActivation::Tanh,
                config.classifier_dropout(),
                rng,
            )?,
            num_labels,
        })
    }

    /// The encoder alone (for sentence embeddings).
    pub fn load_encoder(
        vb: VarBuilder,
        config: &BertConfig,
        rng: &DropoutRng,
    ) -> Result<BertEncoder> {
        let positions = PositionIds::AfterPadding {
            padding_idx: padding_idx(config),
        };
        BertEncoder::load_with_positions(vb.pp(TENSOR_NAMES.prefix), config, positions, rng)
    }

    /// Number of outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// `[batch, num_labels]` logits.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        let _span = tracing::trace_span!("cross_encoder_forward").entered();
        self.head
            .forward(&self.encoder.forward_first_token(tokens)?)
    }
}
