//! BERT (`BertForSequenceClassification`), the first model family: its config, embeddings,
//! post-norm encoder layer (which runs as one fused CPU op), pooler and classifier, and the
//! names its tensors carry in a transformers checkpoint. XLM-RoBERTa and ELECTRA share the
//! encoder layer; they are meant to reuse [`BertLayer`] rather than copy it.

mod attention;
mod classifier;
pub mod config;
mod embeddings;
mod encoder;
pub(crate) mod feed_forward;
mod layer;
mod pooler;

pub use classifier::BertForSequenceClassification;
pub use config::{BertConfig, HiddenAct};
pub use embeddings::PositionIds;
pub use encoder::BertEncoder;
pub use layer::BertLayer;

use crate::weights::TensorNames;

/// Where BERT's tensors live in a transformers checkpoint. Base checkpoints written by
/// `BertModel` lack the `bert.` prefix; TF-era ones call LayerNorm parameters `gamma`/`beta`.
pub const TENSOR_NAMES: TensorNames = TensorNames {
    prefix: "bert",
    unprefixed_roots: &["embeddings.", "encoder.", "pooler."],
    initialised_when_missing: &["bert.pooler.", "classifier."],
};

/// The architectures of a BERT `config.json` that crosstrain loads: the sequence classifier
/// itself, and the base and pre-training heads people fine-tune from (their encoder weights
/// are BERT's; a missing pooler or classifier is initialised).
pub const ARCHITECTURES: &[&str] = &[
    "BertForSequenceClassification",
    "BertModel",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForNextSentencePrediction",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMultipleChoice",
    "BertLMHeadModel",
];
