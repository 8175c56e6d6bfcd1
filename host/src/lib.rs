//! crosstrain: train and serve cross-encoder rerankers with sentence-transformers' losses.
//!
//! The host owns everything but the loss maths: plugins (see [`plugins`]) plan which pairs to
//! score and turn logits into a loss and its gradient.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod card;
pub mod cite;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod fsutil;
pub mod mine;
pub mod onnx;
pub mod plugins;
pub mod serve;
pub mod shared_library;
pub mod train;
pub mod trainer_state;

/// The model crate, re-exported: the cross-encoder, its families, tokenizer and kernels.
pub use crosstrain_model as model;
/// Pair tokenization (from the model crate).
pub use crosstrain_model::tokenize;
