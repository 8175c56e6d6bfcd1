//! LayerNorm with a backward pass. candle 0.11's fused `candle_nn::LayerNorm` has no backward,
//! so gradients would silently stop at every layer norm; ours is a fused CPU kernel with a
//! hand-written backward (`fused::layer_norm`), and candle primitives on other devices.

use candle_core::{Module, Result, Tensor};
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

impl LayerNorm {
    /// A norm over given tensors (views of a packed layer's parameters).
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Loads `weight` only, for models whose norms have no shift (ModernBERT): the bias is a
    /// constant zero, not a parameter, and is not saved.
    pub fn load_without_bias(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(size, "weight")?;
        let bias = Tensor::zeros(size, weight.dtype(), weight.device())?;
        Ok(Self { weight, bias, eps })
    }

    /// The scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer_norm").entered();
        crate::kernels::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}
