//! ModernBERT (`ModernBertForSequenceClassification`: gte-reranker-modernbert, the ModernBERT
//! rerankers), loaded, trained and saved as [`crate::family::ModelFamily::ModernBert`]: the
//! network on candle's own ops (any device), equal to transformers' logits (the parity tests
//! below), and on the CPU each layer as one fused op
//! ([`crate::kernels::modernbert_layer`], tested against the candle ops in `layer.rs`).
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
pub use model::{ModernBertForSequenceClassification, ModernBertModel};
pub use rotary::cos_sin as rotary_cos_sin;

/// The `architectures` entries of this family.
pub const ARCHITECTURES: &[&str] = &["ModernBertForSequenceClassification", "ModernBertModel"];

/// Encoder tensors under `model.`; a base checkpoint (`ModernBertModel`) writes them without
/// it, and has no head or classifier.
pub const TENSOR_NAMES: crate::weights::TensorNames = crate::weights::TensorNames {
    prefix: "model",
    unprefixed_roots: &["embeddings.", "layers.", "final_norm."],
    initialised_when_missing: &["head.", "classifier."],
};

#[cfg(test)]
mod tests;
