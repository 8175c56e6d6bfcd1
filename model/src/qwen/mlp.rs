//! The SwiGLU MLP: `down(silu(gate(x)) · up(x))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::DecoderConfig;
use crate::dropout::DropoutRng;
use crate::lora::LoraLinear;

/// `Qwen3MLP` / `LlamaMLP` (no biases).
#[derive(Debug, Clone)]
pub struct DecoderMlp {
    pub(super) gate_proj: LoraLinear,
    pub(super) up_proj: LoraLinear,
    pub(super) down_proj: LoraLinear,
}

impl DecoderMlp {
    /// Loads `layers.N.mlp`.
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        let lora = config.lora.as_ref();
        let linear = |inputs, outputs, name| {
            LoraLinear::load(vb.pp(name), inputs, outputs, false, lora, rng)
        };
        Ok(Self {
            gate_proj: linear(hidden, intermediate, "gate_proj")?,
            up_proj: linear(hidden, intermediate, "up_proj")?,
            down_proj: linear(intermediate, hidden, "down_proj")?,
        })
    }
}

impl Module for DecoderMlp {
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(hidden)?.silu()?;
        let up = self.up_proj.forward(hidden)?;
        self.down_proj.forward(&(gate * up)?)
    }
}
