//! ModernBERT's GeGLU MLP: `Wi` gives input and gate side by side, `Wo(act(input) · gate)`.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::ModernBertConfig;
use crate::dropout::{Dropout, DropoutRng};
use crate::lora::LoraLinear;

/// `ModernBertMLP`.
#[derive(Debug, Clone)]
pub struct ModernBertMlp {
    pub(super) wi: LoraLinear,
    pub(super) wo: LoraLinear,
    intermediate: usize,
    pub(super) dropout: Dropout,
}

impl ModernBertMlp {
    /// Loads `layers.N.mlp`.
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        let linear = |name: &str, inputs, outputs| {
            LoraLinear::load_stored(
                vb.pp(name),
                inputs,
                outputs,
                false,
                config.lora.as_ref(),
                rng,
            )
        };
        Ok(Self {
            wi: linear("Wi", hidden, 2 * intermediate)?,
            wo: linear("Wo", intermediate, hidden)?,
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
