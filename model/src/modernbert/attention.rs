//! ModernBERT's attention: a fused `Wqkv`, rotary embeddings with the layer's theta, the
//! padding mask, and on local layers a window of `local_attention / 2` tokens on each side.
//! The rotary tables and score biases are the same for every layer of a kind, so the model
//! makes them once per forward pass ([`AttentionInputs`]), the composite layer's tensors
//! only when a composite layer runs.

use std::cell::OnceCell;
use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ModernBertConfig;
use super::rotary;
use crate::dropout::{Dropout, DropoutRng};
use crate::kernels::modernbert_layer::RotaryTables;
use crate::lora::LoraLinear;

/// A masked position's score bias: large enough that its probability is exactly 0, finite
/// so that a row with every position masked (a padding token far from any real one, in a
/// local layer) stays finite instead of turning NaN and spreading through the values.
pub(super) const MASKED: f32 = -1e9;

/// `ModernBertAttention`.
#[derive(Debug, Clone)]
pub struct ModernBertAttention {
    pub(super) wqkv: LoraLinear,
    pub(super) wo: LoraLinear,
    num_heads: usize,
    head_size: usize,
    pub(super) probabilities_dropout: Dropout,
    pub(super) output_dropout: Dropout,
}

impl ModernBertAttention {
    /// Loads `layers.N.attn`.
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        let linear = |name: &str, outputs| {
            LoraLinear::load_stored(
                vb.pp(name),
                hidden,
                outputs,
                false,
                config.lora.as_ref(),
                rng,
            )
        };
        Ok(Self {
            wqkv: linear("Wqkv", 3 * hidden)?,
            wo: linear("Wo", hidden)?,
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
        let composite = inputs.composite()?;
        let query = rotary::apply(&part(0)?, &composite.cos, &composite.sin)?;
        let key = rotary::apply(&part(1)?, &composite.cos, &composite.sin)?;
        let value = part(2)?;
        let scores = query.matmul(&key.t()?.contiguous()?)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let probabilities =
            self.probabilities_dropout
                .forward(&crate::kernels::ops::masked_softmax(
                    &scores,
                    &composite.bias,
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
    /// Rotary tables of the kind's theta, `[s, head_size]` row-major: the fused layer rotates
    /// with them, and the composite layer's tensors are made from them.
    pub(super) tables: Arc<RotaryTables>,
    /// The padding bias, `[b, 1, 1, s]` (the fused layer applies the window itself).
    pub(super) padding: Tensor,
    half_window: Option<usize>,
    /// The composite layer's rotary tensors and score bias (the padding, plus the window on
    /// a local kind), made on first use: the fused CPU layer needs neither.
    composite: OnceCell<CompositeInputs>,
}

#[derive(Debug, Clone)]
struct CompositeInputs {
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
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
        Ok(Self {
            tables: Arc::new(rotary::tables(seq_len, head_size, theta)),
            padding: padding_bias.clone(),
            half_window,
            composite: OnceCell::new(),
        })
    }

    fn composite(&self) -> Result<&CompositeInputs> {
        if let Some(made) = self.composite.get() {
            return Ok(made);
        }
        let (seq_len, head_size) = (self.padding.dim(3)?, self.tables.head_size);
        let device = self.padding.device();
        let table = |values: &[f32]| Tensor::from_slice(values, (seq_len, head_size), device);
        let bias = match self.half_window {
            None => self.padding.clone(),
            Some(half) => self
                .padding
                .broadcast_add(&window_bias(seq_len, half, device)?)?,
        };
        let made = CompositeInputs {
            cos: table(&self.tables.cos)?,
            sin: table(&self.tables.sin)?,
            bias,
        };
        Ok(self.composite.get_or_init(|| made))
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
