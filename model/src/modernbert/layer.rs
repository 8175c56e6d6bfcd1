//! A pre-norm ModernBERT layer: `h + attn(norm(h))`, then `h + mlp(norm(h))`; layer 0 has no
//! attention norm (the embeddings' norm comes just before it).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{AttentionInputs, ModernBertAttention};
use super::config::ModernBertConfig;
use super::mlp::ModernBertMlp;
use crate::dropout::DropoutRng;
use crate::layer_norm::LayerNorm;

/// `ModernBertEncoderLayer`.
#[derive(Debug, Clone)]
pub struct ModernBertLayer {
    attention_norm: Option<LayerNorm>,
    attention: ModernBertAttention,
    mlp_norm: LayerNorm,
    mlp: ModernBertMlp,
}

impl ModernBertLayer {
    /// Loads `layers.N`.
    pub fn load(
        vb: VarBuilder,
        config: &ModernBertConfig,
        layer: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        Ok(Self {
            attention_norm: if layer == 0 {
                None
            } else {
                Some(LayerNorm::load_without_bias(
                    vb.pp("attn_norm"),
                    width,
                    eps,
                )?)
            },
            attention: ModernBertAttention::load(vb.pp("attn"), config, rng)?,
            mlp_norm: LayerNorm::load_without_bias(vb.pp("mlp_norm"), width, eps)?,
            mlp: ModernBertMlp::load(vb.pp("mlp"), config, rng)?,
        })
    }

    /// `hidden` `[b, s, h]`, with the attention inputs of the layer's kind.
    pub fn forward(&self, hidden: &Tensor, attention: &AttentionInputs) -> Result<Tensor> {
        let normed = match &self.attention_norm {
            Some(norm) => norm.forward(hidden)?,
            None => hidden.clone(),
        };
        let hidden = (hidden + self.attention.forward(&normed, attention)?)?;
        let mlp = self.mlp.forward(&self.mlp_norm.forward(&hidden)?)?;
        hidden + mlp
    }
}
