//! ModernBERT (`ModernBertForSequenceClassification`: gte-reranker-modernbert, the ModernBERT
//! rerankers), issue 18, in progress: the network on candle's own ops, equal to transformers'
//! logits (the parity test below); not yet a [`crate::family::ModelFamily`] (loading by
//! `config.json`, saving, the ONNX graph and the fused CPU layer are still to come), so no
//! command can select it yet.
//!
//! Where it differs from BERT: pre-norm layers, no biases, bias-free LayerNorm (layer 0 has no
//! attention norm), a fused `Wqkv`, a GeGLU MLP, rotary position embeddings with a global and
//! a local theta, sliding-window attention on the local layers, a final norm, and a head of
//! dense → activation → norm before the classifier, on the `[CLS]` row or the masked mean.

mod attention;
mod config;
mod layer;
mod mlp;
mod model;
mod rotary;

pub use config::{ClassifierPooling, ModernBertConfig};
pub use model::ModernBertForSequenceClassification;

/// The `architectures` entries of this family.
pub const ARCHITECTURES: &[&str] = &["ModernBertForSequenceClassification", "ModernBertModel"];

#[cfg(test)]
mod tests;
