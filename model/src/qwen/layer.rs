//! One pre-norm decoder layer: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::DecoderAttention;
use super::config::DecoderConfig;
use super::mlp::DecoderMlp;
use super::rms_norm::RmsNorm;
use super::rotary::Rotary;
use crate::dropout::DropoutRng;

/// `Qwen3DecoderLayer` / `Qwen2DecoderLayer` / `LlamaDecoderLayer`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: DecoderAttention,
    post_attention_layernorm: RmsNorm,
    mlp: DecoderMlp,
}

impl DecoderLayer {
    /// Loads `layers.N`.
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let eps = config.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), config.hidden_size, eps)?,
            self_attn: DecoderAttention::load(vb.pp("self_attn"), config, rng)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                config.hidden_size,
                eps,
            )?,
            mlp: DecoderMlp::load(vb.pp("mlp"), config, rng)?,
        })
    }

    /// `[batch, L, hidden]` through the layer.
    pub fn forward(&self, hidden: &Tensor, rotary: &Rotary, bias: &Tensor) -> Result<Tensor> {
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(hidden)?, rotary, bias)?;
        let hidden = (hidden + attended)?;
        let transformed = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&hidden)?)?;
        hidden + transformed
    }
}
