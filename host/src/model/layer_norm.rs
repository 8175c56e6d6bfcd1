//! LayerNorm built from differentiable ops. candle 0.11's fused `candle_nn::LayerNorm` has no
//! backward, so gradients would silently stop at every layer norm.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension (biased variance,
/// as torch).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `size` (old TF checkpoints' `gamma`/`beta` are
    /// renamed when the weights are read).
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer_norm").entered();
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centered = xs.broadcast_sub(&mean)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}
