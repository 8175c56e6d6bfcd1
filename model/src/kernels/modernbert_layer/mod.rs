//! A whole ModernBERT layer as one CPU kernel with a hand-written backward pass, for the same
//! reason as BERT's ([`super::encoder_layer`]): composed from candle ops, a pre-norm layer
//! with rotary embeddings and a GeGLU MLP is some forty graph nodes, each with its own
//! buffers and memory sweeps, and that overhead cost more than the matrix products.
//!
//! The layer: `n₁ = norm(x)` (layer 0: `n₁ = x`), `qkv = n₁ · Wqkvᵀ`, rotary embeddings on
//! the queries and keys at each token's position, attention over the sequence's real tokens
//! (on a local layer only those within `half_window` positions: each block of queries
//! multiplies with the keys its window reaches, so the cost per token is O(window), not
//! O(length)), `h = x + Wo(context)`, `n₂ = norm(h)`, `[u, g] = n₂ · Wiᵀ`,
//! `out = h + Wo₂(gelu(u) ⊙ g)`. Norms have no bias, projections none either.
//!
//! Inputs: the hidden states `[batch, seq, hidden]`, the padding bias `[batch, 1, 1, seq]`
//! (0 on real tokens, a large negative number on padding: a constant) and the parameters
//! packed into one vector by [`pack_parameters`]. Padded rows come out as zeros (nothing
//! reads them: see [`super::encoder_layer::packing::Packing`]). Dropout masks are drawn by
//! the caller in the composite layer's order (attention probabilities, attention output,
//! the MLP's gated product), so both paths train identically.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::encoder_layer::packing::{split, split_mut, Packing};
use super::encoder_layer::products::{linear_backward, project};
use super::encoder_layer::ELEMENTS_PER_TASK;
use super::ops::{contiguous_f32, layer_norm_backward, layer_norm_kept, with_cpu_values};
use super::simd;

mod attention;
pub(crate) mod rotary;

use attention::{blocks_of, Block};

/// Sizes and settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModernLayerDims {
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of the GeGLU inner layer (`Wi` gives twice this).
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Whether the layer normalises before attention (every layer but the first).
    pub attention_norm: bool,
    /// Positions seen on each side on a local layer; `None` on a global one.
    pub half_window: Option<usize>,
}

/// Rotary tables `[positions, head_size]` row-major, cos and sin of each position's angles
/// (made by `crate::modernbert` once per forward pass for each kind of layer).
#[derive(Debug, Clone)]
pub struct RotaryTables {
    /// cos of the angles.
    pub cos: Vec<f32>,
    /// sin of the angles.
    pub sin: Vec<f32>,
    /// Width of a row.
    pub head_size: usize,
}

impl ModernLayerDims {
    fn head_size(&self) -> usize {
        self.hidden / self.heads
    }

    fn offsets(&self) -> Offsets {
        let (h, i) = (self.hidden, self.intermediate);
        let mut next = 0;
        let mut take = |len: usize| {
            let start = next;
            next += len;
            start..next
        };
        Offsets {
            attention_norm: take(if self.attention_norm { h } else { 0 }),
            qkv: take(3 * h * h),
            attention_output: take(h * h),
            mlp_norm: take(h),
            mlp_input: take(2 * i * h),
            mlp_output: take(h * i),
            total: next,
        }
    }
}

/// Where each parameter lies in the packed vector.
struct Offsets {
    attention_norm: std::ops::Range<usize>,
    qkv: std::ops::Range<usize>,
    attention_output: std::ops::Range<usize>,
    mlp_norm: std::ops::Range<usize>,
    mlp_input: std::ops::Range<usize>,
    mlp_output: std::ops::Range<usize>,
    total: usize,
}

/// The parameters of one layer, as transformers names and shapes them (`[out, in]`).
pub struct ModernLayerParameters<'a> {
    /// `attn_norm.weight` (absent on layer 0).
    pub attention_norm: Option<&'a Tensor>,
    /// `attn.Wqkv.weight` `[3·hidden, hidden]`.
    pub qkv: &'a Tensor,
    /// `attn.Wo.weight`.
    pub attention_output: &'a Tensor,
    /// `mlp_norm.weight`.
    pub mlp_norm: &'a Tensor,
    /// `mlp.Wi.weight` `[2·intermediate, hidden]`.
    pub mlp_input: &'a Tensor,
    /// `mlp.Wo.weight` `[hidden, intermediate]`.
    pub mlp_output: &'a Tensor,
}

impl ModernLayerParameters<'_> {
    /// The tensors in the packed vector's order.
    pub fn in_packing_order(&self) -> Vec<&Tensor> {
        let p = self;
        p.attention_norm
            .into_iter()
            .chain([
                p.qkv,
                p.attention_output,
                p.mlp_norm,
                p.mlp_input,
                p.mlp_output,
            ])
            .collect()
    }
}

/// Concatenates a layer's parameters into one vector in the kernel's order (for a layer
/// whose parameters are not kept packed, see [`crate::parameters`]).
pub fn pack_parameters(parameters: &ModernLayerParameters) -> Result<Tensor> {
    let pieces = parameters
        .in_packing_order()
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&pieces, 0)
}

/// Scaled keep-masks (0 or 1/(1 − p)) of one layer's dropouts, in training.
#[derive(Debug, Clone, Default)]
pub struct ModernLayerDropoutMasks {
    /// `[batch, heads, seq, seq]`, on the attention probabilities.
    pub attention_probs: Option<Vec<f32>>,
    /// `[batch, seq, hidden]`, on the attention output projection.
    pub attention_output: Option<Vec<f32>>,
    /// `[batch, seq, intermediate]`, on the MLP's gated product.
    pub mlp: Option<Vec<f32>>,
}

/// What the forward pass keeps for the backward pass (`T` real rows, `Q` query rows).
struct Saved {
    /// `[T, hidden]` attention-norm output (`None` on layer 0: it is the input) and the
    /// norm's normalised rows and 1/std.
    normed1: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// `[Q, hidden]` rotated queries, `[T, 2·hidden]` rotated keys and values.
    query: Vec<f32>,
    key_value: Vec<f32>,
    /// Per sequence and block and head, the attention probabilities before dropout.
    probs: Vec<f32>,
    /// `[Q, hidden]` attention context.
    context: Vec<f32>,
    /// The MLP norm's output, normalised rows and 1/std, `[Q, hidden]`.
    normed2: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    /// `[Q, 2·intermediate]` `Wi`'s output (input and gate), `[Q, intermediate]` the gated
    /// product after dropout.
    mlp_inner: Vec<f32>,
    gated: Vec<f32>,
    /// The dropout masks at the query rows.
    attention_output_mask: Option<Vec<f32>>,
    mlp_mask: Option<Vec<f32>>,
}

/// How a batch is laid out for the layer: made once in the forward pass, kept for the
/// backward pass.
struct LayerPlan {
    packing: Packing,
    /// Per sequence, its query blocks.
    blocks: Vec<Vec<Block>>,
    /// Per sequence, where its probabilities start (`batch + 1`).
    prob_starts: Vec<usize>,
}

struct ModernLayerOp {
    dims: ModernLayerDims,
    rotary: Arc<RotaryTables>,
    dropout: ModernLayerDropoutMasks,
    keep_activations: bool,
    first_token_only: bool,
    saved: Mutex<Option<(LayerPlan, Vec<f32>, Saved)>>,
}

/// One ModernBERT layer on contiguous f32 CPU tensors (see the module's doc). With
/// `first_token_only`, only each sequence's first token is computed (the last layer of a
/// `cls`-pooled classifier); the other rows come out as zeros.
#[allow(clippy::too_many_arguments)]
pub fn modernbert_layer(
    hidden: &Tensor,
    padding_bias: &Tensor,
    packed_parameters: &Tensor,
    dims: ModernLayerDims,
    rotary: Arc<RotaryTables>,
    dropout: ModernLayerDropoutMasks,
    keep_activations: bool,
    first_token_only: bool,
) -> Result<Tensor> {
    let op = ModernLayerOp {
        dims,
        rotary,
        dropout,
        keep_activations,
        first_token_only,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&padding_bias.contiguous()?.detach(), packed_parameters, op)
}

/// Bias-free LayerNorm into new buffers: `(out, xhat, rstd)`.
fn norm(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    layer_norm_kept(x, weight, &vec![0f32; weight.len()], eps)
}

/// `out ⊙ mask` in place, when there is a mask.
fn apply_mask(values: &mut [f32], mask: Option<&[f32]>) {
    if let Some(mask) = mask {
        values
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(mask.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(values, mask)| {
                for (v, &m) in values.iter_mut().zip(mask) {
                    *v *= m;
                }
            });
    }
}

/// `a += b`, in parallel.
pub(crate) fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(b.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

impl ModernLayerOp {
    fn layout(&self, padding_bias: &[f32], batch: usize, seq: usize) -> LayerPlan {
        let packing = Packing::from_mask(
            padding_bias,
            batch,
            seq,
            self.dims.heads,
            self.first_token_only,
        );
        let blocks: Vec<Vec<Block>> = (0..batch)
            .map(|b| {
                blocks_of(
                    &packing.positions[b],
                    packing.query_counts[b],
                    self.dims.half_window,
                )
            })
            .collect();
        let mut prob_starts = vec![0];
        for blocks in &blocks {
            let size: usize = blocks.iter().map(Block::size).sum();
            prob_starts.push(prob_starts.last().copied().unwrap_or(0) + self.dims.heads * size);
        }
        LayerPlan {
            packing,
            blocks,
            prob_starts,
        }
    }

    /// The layer on packed real rows `x`; returns the packed query rows' output.
    fn forward(&self, layout: &LayerPlan, x: &[f32], params: &[f32]) -> (Vec<f32>, Saved) {
        let ModernLayerDims {
            hidden,
            intermediate,
            eps,
            ..
        } = self.dims;
        let o = self.dims.offsets();
        let packing = &layout.packing;
        let (rows, query_rows) = (packing.rows(), packing.query_rows());

        let normed1 = self
            .dims
            .attention_norm
            .then(|| norm(x, &params[o.attention_norm.clone()], eps));
        let n1 = normed1.as_ref().map_or(x, |(out, _, _)| out.as_slice());
        let (query_weight, key_value_weight) = params[o.qkv.clone()].split_at(hidden * hidden);
        let selected = packing.select_queries(n1, hidden);
        let mut query = project(
            selected.as_deref().unwrap_or(n1),
            query_weight,
            query_rows,
            hidden,
        );
        let mut key_value = project(n1, key_value_weight, rows, 2 * hidden);
        rotary::rotate(self, layout, &mut query, hidden, true, false);
        rotary::rotate(self, layout, &mut key_value, 2 * hidden, false, false);

        let mut probs = vec![0f32; layout.prob_starts.last().copied().unwrap_or(0)];
        let mut context = vec![0f32; query_rows * hidden];
        split_mut(&mut probs, &layout.prob_starts, 1)
            .into_par_iter()
            .zip(split_mut(&mut context, &packing.query_starts, hidden))
            .zip(split(&query, &packing.query_starts, hidden))
            .zip(split(&key_value, &packing.starts, 2 * hidden))
            .enumerate()
            .for_each(|(b, (((probs, context), query), key_value))| {
                self.attention_forward(layout, b, query, key_value, probs, context)
            });

        let gather = |mask: &Option<Vec<f32>>, width: usize| {
            mask.as_deref()
                .map(|mask| packing.gather(mask, width, packing.query_positions()))
        };
        let attention_output_mask = gather(&self.dropout.attention_output, hidden);
        let mlp_mask = gather(&self.dropout.mlp, intermediate);

        let mut residual = packing
            .select_queries(x, hidden)
            .unwrap_or_else(|| x.to_vec());
        let mut attended = project(
            &context,
            &params[o.attention_output.clone()],
            query_rows,
            hidden,
        );
        apply_mask(&mut attended, attention_output_mask.as_deref());
        add_into(&mut residual, &attended);
        drop(attended);

        let (normed2, xhat2, rstd2) = norm(&residual, &params[o.mlp_norm.clone()], eps);
        let mlp_inner = project(
            &normed2,
            &params[o.mlp_input.clone()],
            query_rows,
            2 * intermediate,
        );
        let mut gated = vec![0f32; query_rows * intermediate];
        gated
            .par_chunks_mut(intermediate)
            .zip(mlp_inner.par_chunks(2 * intermediate))
            .for_each(|(gated, inner)| {
                let (input, gate) = inner.split_at(intermediate);
                simd::gelu_slice(input, gated);
                for (g, &gate) in gated.iter_mut().zip(gate) {
                    *g *= gate;
                }
            });
        apply_mask(&mut gated, mlp_mask.as_deref());
        let output = project(&gated, &params[o.mlp_output.clone()], query_rows, hidden);
        add_into(&mut residual, &output);
        (
            residual,
            Saved {
                normed1,
                query,
                key_value,
                probs,
                context,
                normed2,
                xhat2,
                rstd2,
                mlp_inner,
                gated,
                attention_output_mask,
                mlp_mask,
            },
        )
    }

    /// Gradients of the packed real input rows and of the packed parameters, given the
    /// packed query rows' output gradient.
    fn backward(
        &self,
        layout: &LayerPlan,
        x: &[f32],
        params: &[f32],
        saved: &Saved,
        d_output: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let ModernLayerDims {
            hidden,
            intermediate,
            ..
        } = self.dims;
        let o = self.dims.offsets();
        let packing = &layout.packing;
        let (rows, query_rows) = (packing.rows(), packing.query_rows());
        let mut grads = vec![0f32; o.total];
        let (g_attention_norm, rest) = grads.split_at_mut(o.attention_norm.len());
        let (g_qkv, rest) = rest.split_at_mut(o.qkv.len());
        let (g_query, g_key_value) = g_qkv.split_at_mut(hidden * hidden);
        let (g_attention_output, rest) = rest.split_at_mut(o.attention_output.len());
        let (g_mlp_norm, rest) = rest.split_at_mut(o.mlp_norm.len());
        let (g_mlp_input, g_mlp_output) = rest.split_at_mut(o.mlp_input.len());

        // out = h + Wo₂(gated): the residual passes d_output to h.
        let mut d_gated = vec![0f32; query_rows * intermediate];
        linear_backward(
            d_output,
            &saved.gated,
            &params[o.mlp_output.clone()],
            query_rows,
            g_mlp_output,
            None,
            Some((&mut d_gated, false)),
        );
        apply_mask(&mut d_gated, saved.mlp_mask.as_deref());
        // gated = gelu(u) ⊙ g.
        let mut d_inner = vec![0f32; query_rows * 2 * intermediate];
        d_inner
            .par_chunks_mut(2 * intermediate)
            .zip(saved.mlp_inner.par_chunks(2 * intermediate))
            .zip(d_gated.par_chunks(intermediate))
            .for_each(|((d_inner, inner), d_gated)| {
                let (input, gate) = inner.split_at(intermediate);
                let (d_input, d_gate) = d_inner.split_at_mut(intermediate);
                simd::gelu_slice(input, d_gate);
                for (d_gate, &d) in d_gate.iter_mut().zip(d_gated) {
                    *d_gate *= d;
                }
                for ((d_input, &gate), &d) in d_input.iter_mut().zip(gate).zip(d_gated) {
                    *d_input = d * gate;
                }
                simd::gelu_backward_slice(d_input, input);
            });
        drop(d_gated);
        let mut d_normed2 = vec![0f32; query_rows * hidden];
        linear_backward(
            &d_inner,
            &saved.normed2,
            &params[o.mlp_input.clone()],
            query_rows,
            g_mlp_input,
            None,
            Some((&mut d_normed2, false)),
        );
        drop(d_inner);
        let mut unused_bias = vec![0f32; hidden];
        let mut d_residual = layer_norm_backward(
            &d_normed2,
            &saved.xhat2,
            &saved.rstd2,
            &params[o.mlp_norm.clone()],
            g_mlp_norm,
            &mut unused_bias,
        );
        drop(d_normed2);
        add_into(&mut d_residual, d_output);

        // h = x + dropout(Wo(context)).
        let mut d_attended = d_residual.clone();
        apply_mask(&mut d_attended, saved.attention_output_mask.as_deref());
        let mut d_context = vec![0f32; query_rows * hidden];
        linear_backward(
            &d_attended,
            &saved.context,
            &params[o.attention_output.clone()],
            query_rows,
            g_attention_output,
            None,
            Some((&mut d_context, false)),
        );
        drop(d_attended);

        let mut d_query = vec![0f32; query_rows * hidden];
        let mut d_key_value = vec![0f32; rows * 2 * hidden];
        split_mut(&mut d_query, &packing.query_starts, hidden)
            .into_par_iter()
            .zip(split_mut(&mut d_key_value, &packing.starts, 2 * hidden))
            .zip(split(&saved.probs, &layout.prob_starts, 1))
            .zip(split(&d_context, &packing.query_starts, hidden))
            .zip(split(&saved.query, &packing.query_starts, hidden))
            .zip(split(&saved.key_value, &packing.starts, 2 * hidden))
            .enumerate()
            .for_each(
                |(b, (((((d_query, d_key_value), probs), d_context), query), key_value))| {
                    self.attention_backward(
                        layout,
                        b,
                        query,
                        key_value,
                        probs,
                        d_context,
                        d_query,
                        d_key_value,
                    )
                },
            );
        drop(d_context);
        rotary::rotate(self, layout, &mut d_query, hidden, true, true);
        rotary::rotate(self, layout, &mut d_key_value, 2 * hidden, false, true);

        let n1 = saved
            .normed1
            .as_ref()
            .map_or(x, |(out, _, _)| out.as_slice());
        let (query_weight, key_value_weight) = params[o.qkv.clone()].split_at(hidden * hidden);
        let mut d_n1 = vec![0f32; rows * hidden];
        linear_backward(
            &d_key_value,
            n1,
            key_value_weight,
            rows,
            g_key_value,
            None,
            Some((&mut d_n1, false)),
        );
        drop(d_key_value);
        let selected = packing.select_queries(n1, hidden);
        let mut d_query_n1 = vec![0f32; query_rows * hidden];
        linear_backward(
            &d_query,
            selected.as_deref().unwrap_or(n1),
            query_weight,
            query_rows,
            g_query,
            None,
            Some((&mut d_query_n1, false)),
        );
        packing.add_queries_into(&mut d_n1, &d_query_n1, hidden);
        let mut d_x = match &saved.normed1 {
            Some((_, xhat1, rstd1)) => layer_norm_backward(
                &d_n1,
                xhat1,
                rstd1,
                &params[o.attention_norm.clone()],
                g_attention_norm,
                &mut unused_bias,
            ),
            None => d_n1,
        };
        packing.add_queries_into(&mut d_x, &d_residual, hidden);
        (d_x, grads)
    }
}

impl CustomOp3 for ModernLayerOp {
    fn name(&self) -> &'static str {
        "crosstrain-modernbert-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "hidden states")?;
        let padding_bias = contiguous_f32(s2, l2, "padding bias")?;
        let params = contiguous_f32(s3, l3, "packed parameters")?;
        let (batch, seq, width) = l1.shape().dims3()?;
        if width != self.dims.hidden
            || padding_bias.len() != batch * seq
            || params.len() != self.dims.offsets().total
            || self.dims.head_size() % 2 != 0
            || self.rotary.head_size != self.dims.head_size()
            || self.rotary.cos.len() < seq * self.dims.head_size()
        {
            candle_core::bail!(
                "modernbert layer: hidden {:?}, padding bias {} values, {} parameters do not \
                 fit {:?}",
                l1.dims(),
                padding_bias.len(),
                params.len(),
                self.dims
            );
        }
        let layout = self.layout(padding_bias, batch, seq);
        let packing = &layout.packing;
        let packed_x = packing.gather(x, width, packing.real_positions());
        let (output, saved) = self.forward(&layout, &packed_x, params);
        let output = packing.scatter(&output, width, packing.query_positions());
        if self.keep_activations {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((layout, packed_x, saved));
        }
        Ok((CpuStorage::F32(output), l1.shape().clone()))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        _padding_bias: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (layout, packed_x, saved) = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "modernbert layer: backward without kept activations (forward ran with \
                     keep_activations false, or backward ran twice)"
                        .into(),
                )
            })?;
        let width = self.dims.hidden;
        let packing = &layout.packing;
        let grad = grad.contiguous()?;
        let d_output = with_cpu_values(&grad, "modernbert layer gradient", |g| {
            packing.gather(g, width, packing.query_positions())
        })?;
        let (d_x, d_params) = with_cpu_values(params, "modernbert layer parameters", |p| {
            self.backward(&layout, &packed_x, p, &saved, &d_output)
        })?;
        let device = hidden.device();
        Ok((
            Some(Tensor::from_vec(
                packing.scatter(&d_x, width, packing.real_positions()),
                hidden.shape(),
                device,
            )?),
            None,
            Some(Tensor::from_vec(d_params, params.shape(), device)?),
        ))
    }
}
