//! RMSNorm as the decoder families compute it: `x / sqrt(mean(x²) + eps) · weight`, over the
//! last dimension, in float32 (transformers upcasts before the mean).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `Qwen3RMSNorm` / `LlamaRMSNorm`, written with candle primitives so it has a backward.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` of width `size` (initialised to ones when trained from scratch).
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }
}

impl RmsNorm {
    /// The scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for RmsNorm {
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let dtype = hidden.dtype();
        let hidden = hidden.to_dtype(DType::F32)?;
        let variance = hidden.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = hidden.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}
