//! ModernBERT's attention: a fused `Wqkv`, rotary embeddings with the layer's theta, the
//! padding mask, and on local layers a window of `local_attention / 2` tokens on each side.
//! The rotary tables and score biases are the same for every layer of a kind, so the model
//! makes them once per forward pass ([`AttentionInputs`]).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::ModernBertConfig;
use super::rotary;
use crate::dropout::{Dropout, DropoutRng};

/// A masked position's score bias: large enough that its probability is exactly 0, finite
/// so that a row with every position masked (a padding token far from any real one, in a
/// local layer) stays finite instead of turning NaN and spreading through the values.
pub(super) const MASKED: f32 = -1e9;

/// `ModernBertAttention`.
#[derive(Debug, Clone)]
pub struct ModernBertAttention {
    pub(super) wqkv: Linear,
    pub(super) wo: Linear,
    num_heads: usize,
    head_size: usize,
    pub(super) probabilities_dropout: Dropout,
    pub(super) output_dropout: Dropout,
}

impl ModernBertAttention {
    /// Loads `layers.N.attn`.
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            wqkv: candle_nn::linear_no_bias(hidden, 3 * hidden, vb.pp("Wqkv"))?,
            wo: candle_nn::linear_no_bias(hidden, hidden, vb.pp("Wo"))?,
            num_heads: config.num_attention_heads,
            head_size: config.head_size(),
            probabilities_dropout: Dropout::new(config.attention_dropout, rng.clone()),
            output_dropout: Dropout::new(config.attention_dropout, rng.clone()),
        })
    }

    /// `hidden` `[b, s, h]`, with the rotary tables and score bias of the layer's kind.
    pub fn forward(&self, hidden: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        let (batch, seq_len, width) = hidden.dims3()?;
        let qkv = self.wqkv.forward(hidden)?.reshape((
            batch,
            seq_len,
            3,
            self.num_heads,
            self.head_size,
        ))?;
        let part = |index: usize| -> Result<Tensor> {
            qkv.narrow(2, index, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = rotary::apply(&part(0)?, &inputs.cos, &inputs.sin)?;
        let key = rotary::apply(&part(1)?, &inputs.cos, &inputs.sin)?;
        let value = part(2)?;
        let scores = query.matmul(&key.t()?.contiguous()?)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let probabilities =
            self.probabilities_dropout
                .forward(&crate::kernels::ops::masked_softmax(
                    &scores,
                    &inputs.bias,
                    scale,
                )?)?;
        let context = probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq_len, width))?;
        self.output_dropout.forward(&self.wo.forward(&context)?)
    }
}

/// What every layer of one kind (global or local) attends with, for one batch.
#[derive(Debug, Clone)]
pub struct AttentionInputs {
    /// Rotary tables `[s, head_size]` of the kind's theta.
    cos: Tensor,
    sin: Tensor,
    /// Score bias: `[b, 1, 1, s]` padding (global), plus the window `[b, 1, s, s]` (local).
    bias: Tensor,
    /// The padding bias alone, `[b, 1, 1, s]` (the fused layer applies the window itself).
    pub(super) padding: Tensor,
}

impl AttentionInputs {
    /// For a batch whose padding bias is `padding_bias` (`[b, 1, 1, s]`), with rotary `theta`
    /// and, for a local kind, `half_window` tokens seen on each side.
    pub fn new(
        padding_bias: &Tensor,
        head_size: usize,
        theta: f64,
        half_window: Option<usize>,
    ) -> Result<Self> {
        let seq_len = padding_bias.dim(3)?;
        let device = padding_bias.device();
        let (cos, sin) = rotary::cos_sin(seq_len, head_size, theta, device)?;
        let bias = match half_window {
            None => padding_bias.clone(),
            Some(half) => padding_bias.broadcast_add(&window_bias(seq_len, half, device)?)?,
        };
        Ok(Self {
            cos,
            sin,
            bias,
            padding: padding_bias.clone(),
        })
    }
}

/// `[1, 1, s, s]`: 0 where `|query − key| ≤ half`, [`MASKED`] elsewhere.
fn window_bias(seq_len: usize, half: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|query| {
            (0..seq_len).map(move |key| {
                if query.abs_diff(key) <= half {
                    0.0
                } else {
                    MASKED
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (1, 1, seq_len, seq_len), device)
}
