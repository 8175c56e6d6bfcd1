//! The fused CPU kernels, each beside the portable path it replaces (candle's
//! `candle-nn/src/ops.rs` convention): a `CustomOp` runs on contiguous f32 CPU tensors and
//! falls back to candle primitives, which have CUDA kernels, everywhere else; tests check the
//! two against each other.
//!
//! - [`ops`]: LayerNorm, masked softmax, exact GELU and the dropout product, each with a
//!   hand-written backward pass.
//! - [`encoder_layer`]: a whole post-norm encoder layer (BERT's) as one op.
//! - [`modernbert_layer`]: ModernBERT's pre-norm layer as one op.
//! - [`decoder_layer`]: the decoder rerankers' pre-norm layer (Qwen3, Qwen2, Llama) as one
//!   op, LoRA adapters included.
//! - [`frozen_linear`]: a frozen linear layer (with its adapter) whose backward gives no
//!   weight gradient.
//! - [`simd`]: the vectorised row loops both use, compiled for baseline x86-64 and for
//!   AVX2+FMA and picked at run time; also the AdamW update the trainer runs.

pub mod decoder_layer;
pub mod encoder_layer;
pub mod frozen_linear;
pub mod modernbert_layer;
pub mod ops;
pub mod simd;
