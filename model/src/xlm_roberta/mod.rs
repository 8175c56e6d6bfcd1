//! XLM-RoBERTa (`XLMRobertaForSequenceClassification`: BAAI/bge-reranker-*, jina-reranker-v2).
//! The encoder is BERT's ([`BertEncoder`]: same embeddings, same post-norm layer and fused
//! kernel) with RoBERTa's position ids (real tokens from `padding_idx + 1`) and one token
//! type; the head is the RoBERTa-style classification head with tanh, and there is no pooler.

use candle_core::Result;
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEncoder, PositionIds};
use crate::classification_head::{EncoderWithHead, HeadActivation};
use crate::dropout::DropoutRng;
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

/// The activation of XLM-RoBERTa's classification head (`RobertaClassificationHead`).
pub const HEAD_ACTIVATION: HeadActivation = HeadActivation::Tanh;

/// XLM-RoBERTa's position ids: real tokens from `padding_idx + 1`.
pub fn positions(config: &BertConfig) -> PositionIds {
    PositionIds::AfterPadding {
        padding_idx: padding_idx(config),
    }
}

/// `XLMRobertaForSequenceClassification`: `roberta.*` and `classifier.*`, tanh head.
pub fn load(
    vb: VarBuilder,
    config: &BertConfig,
    num_labels: usize,
    rng: &DropoutRng,
) -> Result<EncoderWithHead> {
    let encoder = load_encoder(vb.clone(), config, rng)?;
    EncoderWithHead::load(vb, config, encoder, HEAD_ACTIVATION, num_labels, rng)
}

/// The encoder alone (for sentence embeddings: multilingual-e5).
pub fn load_encoder(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<BertEncoder> {
    BertEncoder::load_with_positions(vb.pp(TENSOR_NAMES.prefix), config, positions(config), rng)
}
