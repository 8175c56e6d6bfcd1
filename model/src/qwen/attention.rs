//! Grouped-query causal self-attention with rotary embeddings, over a left- (or right-)
//! padded batch: a query attends to the keys at or before it that are real tokens.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::DecoderConfig;
use super::rms_norm::RmsNorm;
use super::rotary::Rotary;
use crate::dropout::{Dropout, DropoutRng};
use crate::lora::LoraLinear;

/// What is added to a masked score: large and finite, so that a row with no key to attend (a
/// left pad) softmaxes to a uniform row instead of NaN, as transformers' `finfo.min` does.
pub(crate) const MASKED: f32 = -1e30;

/// The additive attention bias `[batch, 1, L, L]`: 0 where query `i` may attend key `j`
/// (`j ≤ i` and `j` a real token), [`MASKED`] elsewhere.
pub fn causal_padding_bias(
    attention_mask: &[u32],
    batch: usize,
    length: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut bias = vec![MASKED; batch * length * length];
    for row in 0..batch {
        let mask = &attention_mask[row * length..(row + 1) * length];
        for query in 0..length {
            let start = (row * length + query) * length;
            for key in 0..=query {
                if mask[key] == 1 {
                    bias[start + key] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(bias, (batch, 1, length, length), device)?.to_dtype(dtype)
}

/// `Qwen3Attention` / `Qwen2Attention` / `LlamaAttention`.
#[derive(Debug, Clone)]
pub struct DecoderAttention {
    pub(super) q_proj: LoraLinear,
    pub(super) k_proj: LoraLinear,
    pub(super) v_proj: LoraLinear,
    pub(super) o_proj: LoraLinear,
    /// Qwen3's per-head RMSNorm of queries and keys.
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) dropout: Dropout,
}

impl DecoderAttention {
    /// Loads `layers.N.self_attn`.
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let (hidden, heads, kv_heads, head_dim) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads(),
            config.head_dim(),
        );
        let qkv_bias = config.qkv_bias();
        let (q_norm, k_norm) = if config.qk_norm() {
            (
                Some(RmsNorm::load(
                    vb.pp("q_norm"),
                    head_dim,
                    config.rms_norm_eps,
                )?),
                Some(RmsNorm::load(
                    vb.pp("k_norm"),
                    head_dim,
                    config.rms_norm_eps,
                )?),
            )
        } else {
            (None, None)
        };
        let lora = config.lora.as_ref();
        let linear = |inputs, outputs, bias, name| {
            LoraLinear::load(vb.pp(name), inputs, outputs, bias, lora, rng)
        };
        Ok(Self {
            q_proj: linear(hidden, heads * head_dim, qkv_bias, "q_proj")?,
            k_proj: linear(hidden, kv_heads * head_dim, qkv_bias, "k_proj")?,
            v_proj: linear(hidden, kv_heads * head_dim, qkv_bias, "v_proj")?,
            o_proj: linear(heads * head_dim, hidden, config.output_bias(), "o_proj")?,
            q_norm,
            k_norm,
            heads,
            kv_heads,
            head_dim,
            dropout: Dropout::new(config.attention_dropout, rng.clone()),
        })
    }

    /// `[batch, heads, L, head_dim]` from a projection, normed per head when the family does.
    fn split_heads(
        &self,
        projected: &Tensor,
        heads: usize,
        norm: Option<&RmsNorm>,
    ) -> Result<Tensor> {
        let (batch, length, _) = projected.dims3()?;
        let split = projected.reshape((batch, length, heads, self.head_dim))?;
        let split = match norm {
            Some(norm) => norm.forward(&split)?,
            None => split,
        };
        split.transpose(1, 2)?.contiguous()
    }

    /// Each key/value head repeated for the query heads of its group.
    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return Ok(x.clone());
        }
        let (batch, kv_heads, length, head_dim) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((batch, kv_heads, groups, length, head_dim))?
            .contiguous()?
            .reshape((batch, kv_heads * groups, length, head_dim))
    }

    /// `[batch, L, hidden]` → `[batch, L, hidden]`; `bias` from [`causal_padding_bias`].
    pub fn forward(&self, hidden: &Tensor, rotary: &Rotary, bias: &Tensor) -> Result<Tensor> {
        let (batch, length, _) = hidden.dims3()?;
        let queries = self.split_heads(
            &self.q_proj.forward(hidden)?,
            self.heads,
            self.q_norm.as_ref(),
        )?;
        let keys = self.split_heads(
            &self.k_proj.forward(hidden)?,
            self.kv_heads,
            self.k_norm.as_ref(),
        )?;
        let values = self.split_heads(&self.v_proj.forward(hidden)?, self.kv_heads, None)?;
        let queries = rotary.apply(&queries)?;
        let keys = self.repeat_kv(&rotary.apply(&keys)?)?;
        let values = self.repeat_kv(&values)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (queries.matmul(&keys.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
        let probabilities = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let probabilities = self.dropout.forward(&probabilities)?;
        let context = probabilities.matmul(&values)?;
        let context = context.transpose(1, 2)?.contiguous()?.reshape((
            batch,
            length,
            self.heads * self.head_dim,
        ))?;
        self.o_proj.forward(&context)
    }
}
