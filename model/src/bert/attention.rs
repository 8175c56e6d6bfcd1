//! Multi-head self-attention with the padding mask, and its output projection.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::BertConfig;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;

/// `BertSelfAttention`: softmax(QKᵀ/√d + mask)·V per head.
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    pub(super) query: LoraLinear,
    pub(super) key: LoraLinear,
    pub(super) value: LoraLinear,
    num_heads: usize,
    head_size: usize,
    pub(super) dropout: Dropout,
}

impl BertSelfAttention {
    /// Loads `attention.self.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        let linear = |name: &str| {
            LoraLinear::load_stored(vb.pp(name), hidden, hidden, true, config.lora.as_ref(), rng)
        };
        Ok(Self {
            query: linear("query")?,
            key: linear("key")?,
            value: linear("value")?,
            num_heads: config.num_attention_heads,
            head_size: config.head_size(),
            dropout: Dropout::new(config.attention_probs_dropout_prob, rng.clone()),
        })
    }

    /// `[b, s, hidden]` to `[b, heads, s, head_size]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, seq_len, _) = xs.dims3()?;
        xs.reshape((batch, seq_len, self.num_heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `mask_bias` is `[b, 1, 1, s]`: 0 for real tokens, a large negative for padding.
    pub fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("self_attention").entered();
        let (batch, seq_len, hidden_size) = hidden.dims3()?;
        let query = self.split_heads(&self.query.forward(hidden)?)?;
        let key = self.split_heads(&self.key.forward(hidden)?)?;
        let value = self.split_heads(&self.value.forward(hidden)?)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let scores = query.matmul(&key.t()?.contiguous()?)?;
        let probabilities = self.dropout.forward(&crate::kernels::ops::masked_softmax(
            &scores, mask_bias, scale,
        )?)?;
        probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq_len, hidden_size))
    }
}

/// `BertAttention`: self-attention, then dense + dropout + residual + LayerNorm.
#[derive(Debug, Clone)]
pub struct BertAttention {
    pub(super) self_attention: BertSelfAttention,
    pub(super) dense: LoraLinear,
    pub(super) layer_norm: LayerNorm,
    pub(super) dropout: Dropout,
}

impl BertAttention {
    /// Loads `attention.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        let output = vb.pp("output");
        Ok(Self {
            self_attention: BertSelfAttention::load(vb.pp("self"), config, rng)?,
            dense: LoraLinear::load_stored(
                output.pp("dense"),
                hidden,
                hidden,
                true,
                config.lora.as_ref(),
                rng,
            )?,
            layer_norm: LayerNorm::load(output.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
            dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
        })
    }

    /// One attention block.
    pub fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let attended = self.self_attention.forward(hidden, mask_bias)?;
        let projected = self.dropout.forward(&self.dense.forward(&attended)?)?;
        self.layer_norm.forward(&(projected + hidden)?)
    }
}
