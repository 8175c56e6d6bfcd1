//! The crosstrain cross-encoder on candle, without the trainer: model families (BERT,
//! XLM-RoBERTa, ELECTRA, ModernBERT, DeBERTa-v2),
//! Hugging Face model directories in and out (`config.json`, `model.safetensors`,
//! `tokenizer.json`; hub ids through `hf-hub`), pair tokenization as sentence-transformers
//! does it, dropout from a seeded stream, and the fused CPU kernels with their portable
//! fallbacks.
//!
//! Embedding the reranker for serving needs only this crate: it depends on no CLI, ONNX,
//! data-format or plugin crate.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod activation;
pub mod atomic;
pub mod bert;
pub mod chat;
pub mod classification_head;
mod cross_encoder;
pub mod deberta_v2;
mod device;
mod directory;
pub mod dropout;
pub mod electra;
mod embedder;
mod error;
pub mod family;
mod files;
mod hub;
pub mod kernels;
pub mod layer_norm;
pub mod lora;
pub mod modernbert;
pub mod modules;
pub mod parameters;
pub mod qwen;
mod scorer;
#[cfg(test)]
mod test_support;
pub mod tokenize;
mod tokens;
pub mod weights;
pub mod xlm_roberta;

pub use activation::DefaultActivation;
pub use cross_encoder::{first_non_finite, CrossEncoder, LoadOptions};
pub use device::{is_device_spec, parse_device};
pub use dropout::DropoutRng;
pub use embedder::{Pooling, SentenceEmbedder};
pub use error::ModelError;
pub use family::{FamilyConfig, ModelFamily};
pub use hub::{download_dataset_files, resolve_model_dir};
pub use scorer::{PairScorer, PromptedModel, ScoreError};
pub use tokens::TokenTensors;
