//! Decoder rerankers: Qwen3 (Qwen3-Reranker, zerank-2, jina-reranker-v3), Qwen2
//! (mxbai-rerank-v2) and Llama-architecture checkpoints. One pre-norm layer with RMSNorm,
//! grouped-query causal attention with rotary embeddings and a SwiGLU MLP; the families differ
//! only in the attention's biases and Qwen3's per-head query/key norms. Scored by the LM
//! head's yes/no rows at the last position (sentence-transformers' LogitScore) or by a
//! classification head at the last non-pad token. On the CPU in f32 each layer is one fused
//! op ([`crate::kernels::decoder_layer`]); composite candle ops on other devices.

pub mod attention;
pub mod config;
pub mod layer;
pub mod mlp;
pub mod model;
pub mod rms_norm;
pub mod rotary;

pub use config::{DecoderConfig, DecoderHead, DecoderKind};
pub use model::{DecoderModel, DecoderReranker};

/// `architectures` entries of each decoder kind.
pub const QWEN3_ARCHITECTURES: &[&str] = &["Qwen3ForCausalLM", "Qwen3ForSequenceClassification"];
/// Qwen2's.
pub const QWEN2_ARCHITECTURES: &[&str] = &["Qwen2ForCausalLM", "Qwen2ForSequenceClassification"];
/// Llama's.
pub const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "LlamaForSequenceClassification"];

/// Where the decoders' tensors live: the body under `model.`, the head at the root (`score`,
/// or `lm_head` when the embeddings are not tied). A fresh classification head is
/// initialised, as transformers does when a causal checkpoint is loaded as a classifier.
pub const TENSOR_NAMES: crate::weights::TensorNames = crate::weights::TensorNames {
    prefix: "model",
    unprefixed_roots: &["embed_tokens.", "layers.", "norm."],
    initialised_when_missing: &["score."],
};
