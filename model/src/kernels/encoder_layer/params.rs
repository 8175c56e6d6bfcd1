//! The layer's sizes, and its parameters packed into one vector: the offsets of each
//! parameter in it, and the gradient vector cut into the same slices.

use candle_core::{Result, Tensor};

/// Sizes of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerDims {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the feed-forward inner layer.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

impl LayerDims {
    pub(super) fn head_size(&self) -> usize {
        self.hidden / self.heads
    }

    /// Offsets of each parameter in the packed vector, in [`pack_parameters`] order.
    pub(super) fn offsets(&self) -> ParamOffsets {
        let (h, i) = (self.hidden, self.intermediate);
        let mut next = 0;
        let mut take = |len: usize| {
            let start = next;
            next += len;
            start..next
        };
        ParamOffsets {
            qkv_weight: take(3 * h * h),
            qkv_bias: take(3 * h),
            output_weight: take(h * h),
            output_bias: take(h),
            norm1_weight: take(h),
            norm1_bias: take(h),
            inner_weight: take(i * h),
            inner_bias: take(i),
            outer_weight: take(h * i),
            outer_bias: take(h),
            norm2_weight: take(h),
            norm2_bias: take(h),
            total: next,
        }
    }
}

/// Where each parameter lies in the packed vector.
pub(super) struct ParamOffsets {
    pub(super) qkv_weight: std::ops::Range<usize>,
    pub(super) qkv_bias: std::ops::Range<usize>,
    pub(super) output_weight: std::ops::Range<usize>,
    pub(super) output_bias: std::ops::Range<usize>,
    pub(super) norm1_weight: std::ops::Range<usize>,
    pub(super) norm1_bias: std::ops::Range<usize>,
    pub(super) inner_weight: std::ops::Range<usize>,
    pub(super) inner_bias: std::ops::Range<usize>,
    pub(super) outer_weight: std::ops::Range<usize>,
    pub(super) outer_bias: std::ops::Range<usize>,
    pub(super) norm2_weight: std::ops::Range<usize>,
    pub(super) norm2_bias: std::ops::Range<usize>,
    pub(super) total: usize,
}

/// The parameters of one layer, as transformers names and shapes them (`[out, in]` weights).
pub struct LayerParameters<'a> {
    /// `attention.self.{query,key,value}.{weight,bias}`.
    pub query: (&'a Tensor, &'a Tensor),
    /// Key projection.
    pub key: (&'a Tensor, &'a Tensor),
    /// Value projection.
    pub value: (&'a Tensor, &'a Tensor),
    /// `attention.output.dense`.
    pub attention_output: (&'a Tensor, &'a Tensor),
    /// `attention.output.LayerNorm`.
    pub attention_norm: (&'a Tensor, &'a Tensor),
    /// `intermediate.dense`.
    pub intermediate: (&'a Tensor, &'a Tensor),
    /// `output.dense`.
    pub output: (&'a Tensor, &'a Tensor),
    /// `output.LayerNorm`.
    pub output_norm: (&'a Tensor, &'a Tensor),
}

impl LayerParameters<'_> {
    /// The tensors in the packed vector's order. The weights of query, key and value end up
    /// adjacent, which makes them one `[3·hidden, hidden]` matrix.
    pub fn in_packing_order(&self) -> [&Tensor; 16] {
        let p = self;
        [
            p.query.0,
            p.key.0,
            p.value.0,
            p.query.1,
            p.key.1,
            p.value.1,
            p.attention_output.0,
            p.attention_output.1,
            p.attention_norm.0,
            p.attention_norm.1,
            p.intermediate.0,
            p.intermediate.1,
            p.output.0,
            p.output.1,
            p.output_norm.0,
            p.output_norm.1,
        ]
    }
}

/// Concatenates a layer's parameters into one vector in the kernel's order (for a layer
/// whose parameters are not kept packed, see [`crate::parameters`]).
pub fn pack_parameters(parameters: &LayerParameters) -> Result<Tensor> {
    let pieces = parameters
        .in_packing_order()
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&pieces, 0)
}

/// Mutable views of each parameter's slice of the packed gradient.
pub(super) struct ParamGrads<'a> {
    pub(super) query_weight: &'a mut [f32],
    pub(super) key_value_weight: &'a mut [f32],
    pub(super) query_bias: &'a mut [f32],
    pub(super) key_value_bias: &'a mut [f32],
    pub(super) output_weight: &'a mut [f32],
    pub(super) output_bias: &'a mut [f32],
    pub(super) norm1_weight: &'a mut [f32],
    pub(super) norm1_bias: &'a mut [f32],
    pub(super) inner_weight: &'a mut [f32],
    pub(super) inner_bias: &'a mut [f32],
    pub(super) outer_weight: &'a mut [f32],
    pub(super) outer_bias: &'a mut [f32],
    pub(super) norm2_weight: &'a mut [f32],
    pub(super) norm2_bias: &'a mut [f32],
}

impl<'a> ParamGrads<'a> {
    /// Splits `grads` at the (consecutive) offsets; the query part of the stacked
    /// query/key/value weights and biases apart from the key/value part.
    pub(super) fn split(grads: &'a mut [f32], o: &ParamOffsets, hidden: usize) -> Self {
        let mut rest = grads;
        let mut take = |range: &std::ops::Range<usize>| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(range.len());
            rest = tail;
            head
        };
        let (query_weight, key_value_weight) = take(&o.qkv_weight).split_at_mut(hidden * hidden);
        let (query_bias, key_value_bias) = take(&o.qkv_bias).split_at_mut(hidden);
        Self {
            query_weight,
            key_value_weight,
            query_bias,
            key_value_bias,
            output_weight: take(&o.output_weight),
            output_bias: take(&o.output_bias),
            norm1_weight: take(&o.norm1_weight),
            norm1_bias: take(&o.norm1_bias),
            inner_weight: take(&o.inner_weight),
            inner_bias: take(&o.inner_bias),
            outer_weight: take(&o.outer_weight),
            outer_bias: take(&o.outer_bias),
            norm2_weight: take(&o.norm2_weight),
            norm2_bias: take(&o.norm2_bias),
        }
    }
}

/// Scaled keep-masks (0 or 1/(1 − p)) of one layer's three dropouts, in training.
#[derive(Debug, Clone, Default)]
pub struct LayerDropoutMasks {
    /// `[batch, heads, seq, seq]`, on the attention probabilities.
    pub attention_probs: Option<Vec<f32>>,
    /// `[batch, seq, hidden]`, on the attention block's output projection.
    pub attention_output: Option<Vec<f32>>,
    /// `[batch, seq, hidden]`, on the feed-forward block's output projection.
    pub feed_forward_output: Option<Vec<f32>>,
}
