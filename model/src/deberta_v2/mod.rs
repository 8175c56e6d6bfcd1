//! DeBERTa-v2 and v3 (`DebertaV2ForSequenceClassification`: mxbai-rerank-v1, the
//! nli-deberta-v3 cross-encoders), issue 18: the network on candle's own ops (so every
//! device, with candle's backward), equal to transformers' logits (the parity test below).
//!
//! Where it differs from BERT: disentangled attention (content→position and
//! position→content terms through a relative-position table shared by every layer,
//! log-bucketed distances, the table layer-normed when `norm_rel_ebd` says so), usually no
//! absolute positions and no token types, LayerNorm eps 1e-7, and a `ContextPooler` of
//! dense → GELU on the first token.

mod attention;
mod config;
mod embeddings;
mod layer;
mod model;
pub mod relative_position;

pub use config::DebertaV2Config;
pub use model::{DebertaV2ForSequenceClassification, DebertaV2Model};

/// The `architectures` entries of this family.
pub const ARCHITECTURES: &[&str] = &[
    "DebertaV2ForSequenceClassification",
    "DebertaV2Model",
    "DebertaV2ForMaskedLM",
];

/// Encoder tensors under `deberta.`; a base checkpoint (`DebertaV2Model`) writes them
/// without it, and has no pooler or classifier.
pub const TENSOR_NAMES: crate::weights::TensorNames = crate::weights::TensorNames {
    prefix: "deberta",
    unprefixed_roots: &["embeddings.", "encoder."],
    initialised_when_missing: &["pooler.", "classifier."],
};

#[cfg(test)]
mod tests;
