//! ModernBERT's GeGLU MLP: `Wi` gives input and gate side by side, `Wo(act(input) · gate)`.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::ModernBertConfig;
use crate::dropout::{Dropout, DropoutRng};

/// `ModernBertMLP`.
#[derive(Debug, Clone)]
pub struct ModernBertMlp {
    pub(super) wi: Linear,
    pub(super) wo: Linear,
    intermediate: usize,
    pub(super) dropout: Dropout,
}

impl ModernBertMlp {
    /// Loads `layers.N.mlp`.
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            wi: candle_nn::linear_no_bias(hidden, 2 * intermediate, vb.pp("Wi"))?,
            wo: candle_nn::linear_no_bias(intermediate, hidden, vb.pp("Wo"))?,
            intermediate,
            dropout: Dropout::new(config.mlp_dropout, rng.clone()),
        })
    }
}

impl Module for ModernBertMlp {
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let both = self.wi.forward(hidden)?;
        let input = both.narrow(D::Minus1, 0, self.intermediate)?;
        let gate = both.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let activated = crate::kernels::ops::gelu_erf(&input.contiguous()?)?;
        self.wo
            .forward(&self.dropout.forward(&(activated * gate)?)?)
    }
}
