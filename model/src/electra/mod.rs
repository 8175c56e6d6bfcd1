//! ELECTRA (`ElectraForSequenceClassification`: cross-encoder/ms-marco-electra-base). The
//! encoder is BERT's ([`BertEncoder`]), with embeddings `embedding_size` wide and an
//! `embeddings_project` layer when that differs from the hidden size; the head is the
//! RoBERTa-style classification head with GELU, and there is no pooler.

use candle_core::Result;
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEncoder, PositionIds};
use crate::classification_head::{EncoderWithHead, HeadActivation};
use crate::dropout::DropoutRng;
use crate::weights::TensorNames;

/// Where ELECTRA's tensors live: `electra.*` and `classifier.{dense,out_proj}.*`.
pub const TENSOR_NAMES: TensorNames = TensorNames {
    prefix: "electra",
    unprefixed_roots: &["embeddings.", "embeddings_project.", "encoder."],
    initialised_when_missing: &["classifier."],
};

/// The `architectures` entries loaded as ELECTRA (the discriminator is what rerankers are
/// fine-tuned from).
pub const ARCHITECTURES: &[&str] = &[
    "ElectraForSequenceClassification",
    "ElectraModel",
    "ElectraForPreTraining",
    "ElectraForMaskedLM",
];

/// The activation of ELECTRA's classification head (`get_activation("gelu")`).
pub const HEAD_ACTIVATION: HeadActivation = HeadActivation::Gelu;

/// `ElectraForSequenceClassification`: `electra.*` and `classifier.*`, GELU head.
pub fn load(
    vb: VarBuilder,
    config: &BertConfig,
    num_labels: usize,
    rng: &DropoutRng,
) -> Result<EncoderWithHead> {
    let encoder = load_encoder(vb.clone(), config, rng)?;
    EncoderWithHead::load(vb, config, encoder, HEAD_ACTIVATION, num_labels, rng)
}

/// The encoder alone (for sentence embeddings).
pub fn load_encoder(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<BertEncoder> {
    BertEncoder::load_with_positions(
        vb.pp(TENSOR_NAMES.prefix),
        config,
        PositionIds::FromZero,
        rng,
    )
}
