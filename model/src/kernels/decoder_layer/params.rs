//! A decoder layer's sizes and its parameters as the fused op packs them: the key and value
//! weights (and the gate and up weights) next to each other, so each pair is one product.

use candle_core::{Result, Tensor};

/// Sizes and settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderLayerDims {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the SwiGLU inner layer.
    pub intermediate: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Whether q, k and v have biases (Qwen2).
    pub qkv_bias: bool,
    /// Whether the output projection has a bias (Llama's `attention_bias`).
    pub output_bias: bool,
    /// Whether queries and keys get per-head RMS norms (Qwen3).
    pub qk_norm: bool,
}

impl DecoderLayerDims {
    pub(super) fn query_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub(super) fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub(super) fn offsets(&self) -> Offsets {
        let (h, i, q, k, d) = (
            self.hidden,
            self.intermediate,
            self.query_width(),
            self.kv_width(),
            self.head_dim,
        );
        let mut next = 0;
        let mut take = |len: usize| {
            let start = next;
            next += len;
            start..next
        };
        let input_norm = take(h);
        let query = take(q * h);
        let key_value = take(2 * k * h);
        let query_bias = take(if self.qkv_bias { q } else { 0 });
        let key_value_bias = take(if self.qkv_bias { 2 * k } else { 0 });
        let output = take(h * q);
        let output_bias = take(if self.output_bias { h } else { 0 });
        let query_norm = take(if self.qk_norm { d } else { 0 });
        let key_norm = take(if self.qk_norm { d } else { 0 });
        let post_norm = take(h);
        let gate_up = take(2 * i * h);
        let down = take(h * i);
        Offsets {
            input_norm,
            query,
            key_value,
            query_bias,
            key_value_bias,
            output,
            output_bias,
            query_norm,
            key_norm,
            post_norm,
            gate_up,
            down,
            total: next,
        }
    }
}

/// Where each parameter lies in the packed vector (empty ranges for absent ones).
pub(super) struct Offsets {
    pub(super) input_norm: std::ops::Range<usize>,
    pub(super) query: std::ops::Range<usize>,
    pub(super) key_value: std::ops::Range<usize>,
    pub(super) query_bias: std::ops::Range<usize>,
    pub(super) key_value_bias: std::ops::Range<usize>,
    pub(super) output: std::ops::Range<usize>,
    pub(super) output_bias: std::ops::Range<usize>,
    pub(super) query_norm: std::ops::Range<usize>,
    pub(super) key_norm: std::ops::Range<usize>,
    pub(super) post_norm: std::ops::Range<usize>,
    pub(super) gate_up: std::ops::Range<usize>,
    pub(super) down: std::ops::Range<usize>,
    pub(super) total: usize,
}

/// The parameters of one layer, as transformers names and shapes them (`[out, in]`).
pub struct DecoderLayerParameters<'a> {
    /// `input_layernorm.weight`.
    pub input_norm: &'a Tensor,
    /// `self_attn.q_proj.weight`.
    pub query: &'a Tensor,
    /// `self_attn.k_proj.weight`.
    pub key: &'a Tensor,
    /// `self_attn.v_proj.weight`.
    pub value: &'a Tensor,
    /// Their biases (Qwen2; all or none).
    pub qkv_biases: Option<[&'a Tensor; 3]>,
    /// `self_attn.o_proj.weight`.
    pub output: &'a Tensor,
    /// `self_attn.o_proj.bias` (Llama with `attention_bias`).
    pub output_bias: Option<&'a Tensor>,
    /// `self_attn.q_norm.weight`, `k_norm.weight` (Qwen3).
    pub qk_norms: Option<[&'a Tensor; 2]>,
    /// `post_attention_layernorm.weight`.
    pub post_norm: &'a Tensor,
    /// `mlp.gate_proj.weight`.
    pub gate: &'a Tensor,
    /// `mlp.up_proj.weight`.
    pub up: &'a Tensor,
    /// `mlp.down_proj.weight`.
    pub down: &'a Tensor,
}

impl DecoderLayerParameters<'_> {
    /// The tensors in the packed vector's order: the key and value weights (and the gate
    /// and up weights) next to each other, so each pair is one product.
    pub fn in_packing_order(&self) -> Vec<&Tensor> {
        let mut order = vec![self.input_norm, self.query, self.key, self.value];
        order.extend(self.qkv_biases.into_iter().flatten());
        order.push(self.output);
        order.extend(self.output_bias);
        order.extend(self.qk_norms.into_iter().flatten());
        order.extend([self.post_norm, self.gate, self.up, self.down]);
        order
    }
}

/// Concatenates a layer's parameters into one vector in the kernel's order.
pub fn pack_parameters(parameters: &DecoderLayerParameters) -> Result<Tensor> {
    let pieces = parameters
        .in_packing_order()
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&pieces, 0)
}
