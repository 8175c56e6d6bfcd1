//! ModernBERT's attention: a fused `Wqkv`, rotary embeddings with the layer's theta, the
//! padding mask, and on local layers a window of `local_attention / 2` tokens on each side.

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
    wqkv: Linear,
    wo: Linear,
    num_heads: usize,
    head_size: usize,
    rope_theta: f64,
    /// Tokens seen on each side in a local layer; `None` in a global one.
    half_window: Option<usize>,
    probabilities_dropout: Dropout,
    output_dropout: Dropout,
}

impl ModernBertAttention {
    /// Loads `layers.N.attn`.
    pub fn load(
        vb: VarBuilder,
        config: &ModernBertConfig,
        layer: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            wqkv: candle_nn::linear_no_bias(hidden, 3 * hidden, vb.pp("Wqkv"))?,
            wo: candle_nn::linear_no_bias(hidden, hidden, vb.pp("Wo"))?,
            num_heads: config.num_attention_heads,
            head_size: config.head_size(),
            rope_theta: config.rope_theta(layer),
            half_window: (!config.is_global(layer)).then_some(config.local_attention / 2),
            probabilities_dropout: Dropout::new(config.attention_dropout, rng.clone()),
            output_dropout: Dropout::new(config.attention_dropout, rng.clone()),
        })
    }

    /// `hidden` `[b, s, h]`; `padding_bias` `[b, 1, 1, s]` (0 or [`MASKED`]).
    pub fn forward(&self, hidden: &Tensor, padding_bias: &Tensor) -> Result<Tensor> {
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
        let (cos, sin) =
            rotary::cos_sin(seq_len, self.head_size, self.rope_theta, hidden.device())?;
        let query = rotary::apply(&part(0)?, &cos, &sin)?;
        let key = rotary::apply(&part(1)?, &cos, &sin)?;
        let value = part(2)?;
        let scores = query.matmul(&key.t()?.contiguous()?)?;
        let bias = match self.half_window {
            None => padding_bias.clone(),
            Some(half) => {
                padding_bias.broadcast_add(&window_bias(seq_len, half, hidden.device())?)?
            }
        };
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let probabilities = self
            .probabilities_dropout
            .forward(&crate::kernels::ops::masked_softmax(&scores, &bias, scale)?)?;
        let context = probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, seq_len, width))?;
        self.output_dropout.forward(&self.wo.forward(&context)?)
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
