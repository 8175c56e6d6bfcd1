//! The SwiGLU MLP: `down(silu(gate(x)) · up(x))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::DecoderConfig;

/// `Qwen3MLP` / `LlamaMLP` (no biases).
#[derive(Debug, Clone)]
pub struct DecoderMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl DecoderMlp {
    /// Loads `layers.N.mlp`.
    pub fn load(vb: VarBuilder, config: &DecoderConfig) -> Result<Self> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            gate_proj: candle_nn::linear_no_bias(hidden, intermediate, vb.pp("gate_proj"))?,
            up_proj: candle_nn::linear_no_bias(hidden, intermediate, vb.pp("up_proj"))?,
            down_proj: candle_nn::linear_no_bias(intermediate, hidden, vb.pp("down_proj"))?,
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
