//! A whole BERT encoder layer as one CPU kernel with a hand-written backward pass.
//!
//! Why: composed from candle ops, a layer is some thirty graph nodes. candle's backward gives
//! every node a zero-filled gradient buffer and adds into it, keeps each intermediate alive in
//! its own allocation, and runs the bias adds, transposes and head splits as separate memory
//! sweeps; on a 2-core CPU that overhead cost more than the matrix products themselves (a
//! MiniLM-L6 training step spent 1.0 s in gemm and 1.3 s elsewhere). Here the forward pass is
//! five matrix products and a few fused row loops, it keeps only what the backward pass reads,
//! and the backward pass writes each gradient once.
//!
//! The op takes three inputs: the hidden states `[batch, seq, hidden]`, the attention mask
//! bias `[batch, 1, 1, seq]` (a constant) and the layer's parameters packed into one vector:
//! in a model, the layer's own packed `Var` ([`crate::parameters`]), whose gradient the op
//! writes whole; for a layer that does not keep them packed (DeBERTa's, whose relative table
//! is appended per pass), concatenated by [`pack_parameters`], so candle's `cat` backward
//! hands each parameter its slice. Activations that the backward pass needs are kept inside the op
//! between the two passes, and only when something upstream needs a gradient, so inference
//! holds nothing.
//!
//! Dropout masks are drawn from the model's stream by the caller in the same order and with
//! the same draws as the composite layer (attention probabilities, attention output,
//! feed-forward output), so the fused and composite layers train identically.
//!
//! Only contiguous f32 CPU tensors take this path; the caller falls back to the composite
//! candle layer (which has CUDA kernels) for anything else.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::kernels::ops::{
    contiguous_f32, layer_norm_backward, layer_norm_forward, with_cpu_values,
};
use crate::kernels::simd;

/// Rows per rayon task in the row-wise loops.
pub(crate) const ROWS_PER_TASK: usize = 32;

/// Elements per rayon task in the element-wise loops.
pub(crate) const ELEMENTS_PER_TASK: usize = 16_384;

mod attention;
pub(crate) mod packing;
mod params;
pub(crate) mod products;

pub use params::{pack_parameters, LayerDims, LayerDropoutMasks, LayerParameters};

use attention::SequenceAttention;
use packing::{split, split_mut, Packing};
use params::ParamGrads;
use products::{linear, linear_backward};

/// What the forward pass keeps for the backward pass. `Q` is the number of query rows (all
/// real tokens, or each sequence's first token), `T` the number of real tokens.
struct Saved {
    /// `[Q, hidden]` input rows of the queries (the residual of the attention block), when
    /// they are not all the input rows.
    query_input: Option<Vec<f32>>,
    /// `[Q, hidden]` query projections.
    query: Vec<f32>,
    /// `[T, 2·hidden]` key and value projections.
    key_value: Vec<f32>,
    /// Per sequence, `[heads, queries, len]` attention probabilities before dropout.
    probs: Vec<f32>,
    /// `[Q, hidden]` attention context (heads merged).
    context: Vec<f32>,
    /// Normalised residual sum and 1/std of the first LayerNorm.
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    /// Output of the first LayerNorm (input of the feed-forward block).
    hidden1: Vec<f32>,
    /// `[T, intermediate]` feed-forward pre-activation and GELU output.
    inner: Vec<f32>,
    activated: Vec<f32>,
    /// Normalised residual sum and 1/std of the second LayerNorm.
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    /// The hidden-state dropout masks at the query rows.
    attention_output_mask: Option<Vec<f32>>,
    feed_forward_output_mask: Option<Vec<f32>>,
    relative: Option<RelativeSaved>,
}

/// DeBERTa's disentangled attention on the same layer: the relative table `[table_rows,
/// hidden]` is packed after the layer's parameters and goes through the layer's key and
/// query projections (`share_att_key`), and each pair `(i, j)` adds `q_i · k^r_row(i,j)`
/// (content to position) and `k_j · q^r_row(i,j)` (position to content) to its score.
#[derive(Debug, Clone)]
pub struct RelativeAttention {
    /// The table row of each (query position, key position) of the padded batch, `[seq,
    /// seq]` row-major.
    pub rows: std::sync::Arc<[u32]>,
    /// Rows of the relative table (`2·span`).
    pub table_rows: usize,
    /// Whether scores add the content-to-position term.
    pub content_to_position: bool,
    /// Whether scores add the position-to-content term.
    pub position_to_content: bool,
    /// The score scale, `1/sqrt(head_size · terms)`.
    pub scale: f32,
    /// Keep-mask on the table (the layer's dropout of it), `[table_rows, hidden]`.
    pub table_dropout: Option<Vec<f32>>,
}

/// The relative table as the layer used it, and through the key and query projections.
struct RelativeSaved {
    table: Vec<f32>,
    position_keys: Vec<f32>,
    position_queries: Vec<f32>,
}

struct EncoderLayerOp {
    dims: LayerDims,
    dropout: LayerDropoutMasks,
    relative: Option<RelativeAttention>,
    keep_activations: bool,
    first_token_only: bool,
    /// The packing, the packed input rows and the activations, from forward to backward.
    saved: Mutex<Option<(Packing, Vec<f32>, Saved)>>,
}

/// One encoder layer (attention block, then feed-forward block, post-LayerNorm, exact GELU)
/// on contiguous f32 CPU tensors. `keep_activations` must be true when a gradient will be
/// asked for. With `first_token_only`, only each sequence's first token is computed (it
/// still attends to every token): the last layer of a cross-encoder, whose pooler reads
/// nothing else, then costs a sixth of a full layer; the other rows come out as zeros.
pub fn encoder_layer(
    hidden: &Tensor,
    mask_bias: &Tensor,
    packed_parameters: &Tensor,
    dims: LayerDims,
    dropout: LayerDropoutMasks,
    keep_activations: bool,
    first_token_only: bool,
) -> Result<Tensor> {
    let op = EncoderLayerOp {
        dims,
        dropout,
        relative: None,
        keep_activations,
        first_token_only,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&mask_bias.contiguous()?.detach(), packed_parameters, op)
}

/// [`encoder_layer`] with DeBERTa's disentangled attention (see [`RelativeAttention`]);
/// `packed_parameters` ends with the relative table, which gets its gradient there too.
/// The attention-probability dropout masks are head-major, `[heads, batch, seq, seq]`.
#[allow(clippy::too_many_arguments)]
pub fn relative_encoder_layer(
    hidden: &Tensor,
    mask_bias: &Tensor,
    packed_parameters: &Tensor,
    dims: LayerDims,
    dropout: LayerDropoutMasks,
    relative: RelativeAttention,
    keep_activations: bool,
    first_token_only: bool,
) -> Result<Tensor> {
    let op = EncoderLayerOp {
        dims,
        dropout,
        relative: Some(relative),
        keep_activations,
        first_token_only,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&mask_bias.contiguous()?.detach(), packed_parameters, op)
}

pub(crate) fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `rows` rows of `LayerNorm(projected ⊙ mask + residual)`: the residual sum is normalised
/// into `out`, keeping `xhat` and `rstd` for the backward pass.
#[allow(clippy::too_many_arguments)]
fn add_and_norm(
    projected: &[f32],
    mask: Option<&[f32]>,
    residual: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    out: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let mut sums = masked(projected, mask);
    sums.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(residual.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(sums, residual)| {
            for (s, &r) in sums.iter_mut().zip(residual) {
                *s += r;
            }
        });
    layer_norm_forward(&sums, weight, bias, eps, out, xhat, rstd);
}

/// Element-wise product with an optional mask.
fn masked(values: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    match mask {
        Some(mask) => {
            let mut out = vec![0f32; values.len()];
            out.par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(values.par_chunks(ELEMENTS_PER_TASK))
                .zip(mask.par_chunks(ELEMENTS_PER_TASK))
                .for_each(|((out, values), mask)| simd::product(values, mask, out));
            out
        }
        None => values.to_vec(),
    }
}

impl EncoderLayerOp {
    /// The layer on packed real rows `x`; returns the packed query rows' output.
    fn forward(
        &self,
        packing: &Packing,
        x: &[f32],
        mask_bias: &[f32],
        params: &[f32],
    ) -> (Vec<f32>, Saved) {
        let LayerDims {
            hidden,
            intermediate,
            heads: _,
            eps,
        } = self.dims;
        let o = self.dims.offsets();
        let (rows, query_rows) = (packing.rows(), packing.query_rows());
        let (query_weight, key_value_weight) = params[o.qkv_weight].split_at(hidden * hidden);
        let (query_bias, key_value_bias) = params[o.qkv_bias].split_at(hidden);
        let selected_input = packing.select_queries(x, hidden);
        let query_input = selected_input.as_deref().unwrap_or(x);
        let query = linear(query_input, query_weight, query_bias, query_rows);
        let key_value = linear(x, key_value_weight, key_value_bias, rows);
        let relative = self
            .relative
            .as_ref()
            .filter(|relative| relative.table_rows > 0)
            .map(|relative| {
                let table = masked(
                    &params[o.total..o.total + relative.table_rows * hidden],
                    relative.table_dropout.as_deref(),
                );
                let (key_weight, key_bias) = (
                    &key_value_weight[..hidden * hidden],
                    &key_value_bias[..hidden],
                );
                RelativeSaved {
                    position_keys: linear(&table, key_weight, key_bias, relative.table_rows),
                    position_queries: linear(&table, query_weight, query_bias, relative.table_rows),
                    table,
                }
            });
        let projected_tables = relative.as_ref().map(|saved| {
            (
                saved.position_keys.as_slice(),
                saved.position_queries.as_slice(),
            )
        });

        let mut probs = vec![0f32; packing.prob_starts.last().copied().unwrap_or(0)];
        let mut context = vec![0f32; query_rows * hidden];
        split_mut(&mut probs, &packing.prob_starts, 1)
            .into_par_iter()
            .zip(split_mut(&mut context, &packing.query_starts, hidden))
            .zip(split(&query, &packing.query_starts, hidden))
            .zip(split(&key_value, &packing.starts, 2 * hidden))
            .enumerate()
            .for_each(|(b, (((probs, context), query), key_value))| {
                let inputs = SequenceAttention {
                    query,
                    key_value,
                    relative: projected_tables,
                };
                self.attention_forward(packing, b, inputs, mask_bias, probs, context)
            });

        let attention_output_mask = self
            .dropout
            .attention_output
            .as_deref()
            .map(|mask| packing.gather(mask, hidden, packing.query_positions()));
        let feed_forward_output_mask = self
            .dropout
            .feed_forward_output
            .as_deref()
            .map(|mask| packing.gather(mask, hidden, packing.query_positions()));

        let projected = linear(
            &context,
            &params[o.output_weight],
            &params[o.output_bias],
            query_rows,
        );
        let mut hidden1 = vec![0f32; query_rows * hidden];
        let mut xhat1 = vec![0f32; query_rows * hidden];
        let mut rstd1 = vec![0f32; query_rows];
        add_and_norm(
            &projected,
            attention_output_mask.as_deref(),
            query_input,
            &params[o.norm1_weight],
            &params[o.norm1_bias],
            eps,
            &mut hidden1,
            &mut xhat1,
            &mut rstd1,
        );
        drop(projected);

        let inner = linear(
            &hidden1,
            &params[o.inner_weight],
            &params[o.inner_bias],
            query_rows,
        );
        let mut activated = vec![0f32; inner.len()];
        activated
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(inner.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(out, xs)| simd::gelu_slice(xs, out));
        let projected = linear(
            &activated,
            &params[o.outer_weight],
            &params[o.outer_bias],
            query_rows,
        );
        let mut output = vec![0f32; query_rows * hidden];
        let mut xhat2 = vec![0f32; query_rows * hidden];
        let mut rstd2 = vec![0f32; query_rows];
        add_and_norm(
            &projected,
            feed_forward_output_mask.as_deref(),
            &hidden1,
            &params[o.norm2_weight],
            &params[o.norm2_bias],
            eps,
            &mut output,
            &mut xhat2,
            &mut rstd2,
        );
        debug_assert_eq!(intermediate * query_rows, inner.len());
        (
            output,
            Saved {
                query_input: selected_input,
                query,
                key_value,
                probs,
                context,
                xhat1,
                rstd1,
                hidden1,
                inner,
                activated,
                xhat2,
                rstd2,
                attention_output_mask,
                feed_forward_output_mask,
                relative,
            },
        )
    }

    /// Gradients of the packed real input rows and of the packed parameters, given the
    /// packed query rows' output gradient.
    fn backward(
        &self,
        packing: &Packing,
        x: &[f32],
        params: &[f32],
        saved: &Saved,
        d_output: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let hidden = self.dims.hidden;
        let o = self.dims.offsets();
        let (rows, query_rows) = (packing.rows(), packing.query_rows());
        let table_size = self
            .relative
            .as_ref()
            .map_or(0, |relative| relative.table_rows * hidden);
        let mut grads = vec![0f32; o.total + table_size];
        let (grads_of_layer, g_table) = grads.split_at_mut(o.total);
        let ParamGrads {
            query_weight: g_q_w,
            key_value_weight: g_kv_w,
            query_bias: g_q_b,
            key_value_bias: g_kv_b,
            output_weight: g_out_w,
            output_bias: g_out_b,
            norm1_weight: g_n1_w,
            norm1_bias: g_n1_b,
            inner_weight: g_in_w,
            inner_bias: g_in_b,
            outer_weight: g_outer_w,
            outer_bias: g_outer_b,
            norm2_weight: g_n2_w,
            norm2_bias: g_n2_b,
        } = ParamGrads::split(grads_of_layer, &o, hidden);
        let (query_weight, key_value_weight) = params[o.qkv_weight].split_at(hidden * hidden);

        // Second LayerNorm; its input was dropout(outer) + hidden1.
        let d_sum2 = layer_norm_backward(
            d_output,
            &saved.xhat2,
            &saved.rstd2,
            &params[o.norm2_weight],
            g_n2_w,
            g_n2_b,
        );
        let d_outer = masked(&d_sum2, saved.feed_forward_output_mask.as_deref());
        let mut d_hidden1 = d_sum2;
        let mut d_inner = vec![0f32; query_rows * self.dims.intermediate];
        linear_backward(
            &d_outer,
            &saved.activated,
            &params[o.outer_weight],
            query_rows,
            g_outer_w,
            Some(g_outer_b),
            Some((&mut d_inner, false)),
        );
        drop(d_outer);
        d_inner
            .par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(saved.inner.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(d, xs)| simd::gelu_backward_slice(d, xs));
        linear_backward(
            &d_inner,
            &saved.hidden1,
            &params[o.inner_weight],
            query_rows,
            g_in_w,
            Some(g_in_b),
            Some((&mut d_hidden1, true)),
        );
        drop(d_inner);

        // First LayerNorm; its input was dropout(projected context) + the query rows' input.
        let d_sum1 = layer_norm_backward(
            &d_hidden1,
            &saved.xhat1,
            &saved.rstd1,
            &params[o.norm1_weight],
            g_n1_w,
            g_n1_b,
        );
        drop(d_hidden1);
        let d_projected = masked(&d_sum1, saved.attention_output_mask.as_deref());
        let mut d_query_input = d_sum1;
        let mut d_context = vec![0f32; query_rows * hidden];
        linear_backward(
            &d_projected,
            &saved.context,
            &params[o.output_weight],
            query_rows,
            g_out_w,
            Some(g_out_b),
            Some((&mut d_context, false)),
        );
        drop(d_projected);

        let mut d_query = vec![0f32; query_rows * hidden];
        let mut d_key_value = vec![0f32; rows * 2 * hidden];
        let projected_tables = saved.relative.as_ref().map(|saved| {
            (
                saved.position_keys.as_slice(),
                saved.position_queries.as_slice(),
            )
        });
        // Each sequence's gradients of the projected tables, summed below.
        let sequences = packing.positions.len();
        let mut d_tables = vec![
            0f32;
            if table_size > 0 {
                sequences * 2 * table_size
            } else {
                0
            }
        ];
        let mut d_tables_of: Vec<Option<(&mut [f32], &mut [f32])>> = if table_size > 0 {
            d_tables
                .chunks_mut(2 * table_size)
                .map(|both| Some(both.split_at_mut(table_size)))
                .collect()
        } else {
            (0..sequences).map(|_| None).collect()
        };
        split_mut(&mut d_query, &packing.query_starts, hidden)
            .into_par_iter()
            .zip(split_mut(&mut d_key_value, &packing.starts, 2 * hidden))
            .zip(split(&saved.probs, &packing.prob_starts, 1))
            .zip(split(&d_context, &packing.query_starts, hidden))
            .zip(split(&saved.query, &packing.query_starts, hidden))
            .zip(split(&saved.key_value, &packing.starts, 2 * hidden))
            .zip(d_tables_of.par_iter_mut())
            .enumerate()
            .for_each(
                |(
                    b,
                    ((((((d_query, d_key_value), probs), d_context), query), key_value), d_tables),
                )| {
                    let inputs = SequenceAttention {
                        query,
                        key_value,
                        relative: projected_tables,
                    };
                    self.attention_backward(
                        packing,
                        b,
                        inputs,
                        probs,
                        d_context,
                        d_query,
                        d_key_value,
                        d_tables.as_mut().map(|(k, q)| (&mut **k, &mut **q)),
                    )
                },
            );
        drop(d_tables_of);
        drop(d_context);
        if let (Some(relative), Some(kept)) = (&self.relative, &saved.relative) {
            // The tables went through the key and the query projections.
            let mut d_keys = vec![0f32; table_size];
            let mut d_queries = vec![0f32; table_size];
            for both in d_tables.chunks(2 * table_size) {
                let (keys, queries) = both.split_at(table_size);
                for (sum, &d) in d_keys.iter_mut().zip(keys) {
                    *sum += d;
                }
                for (sum, &d) in d_queries.iter_mut().zip(queries) {
                    *sum += d;
                }
            }
            let mut d_table = vec![0f32; table_size];
            linear_backward(
                &d_keys,
                &kept.table,
                &key_value_weight[..hidden * hidden],
                relative.table_rows,
                &mut g_kv_w[..hidden * hidden],
                Some(&mut g_kv_b[..hidden]),
                Some((&mut d_table, false)),
            );
            linear_backward(
                &d_queries,
                &kept.table,
                query_weight,
                relative.table_rows,
                g_q_w,
                Some(g_q_b),
                Some((&mut d_table, true)),
            );
            match &relative.table_dropout {
                Some(mask) => simd::product(&d_table, mask, g_table),
                None => g_table.copy_from_slice(&d_table),
            }
        }
        let mut d_x = vec![0f32; rows * hidden];
        linear_backward(
            &d_key_value,
            x,
            key_value_weight,
            rows,
            g_kv_w,
            Some(g_kv_b),
            Some((&mut d_x, false)),
        );
        linear_backward(
            &d_query,
            saved.query_input.as_deref().unwrap_or(x),
            query_weight,
            query_rows,
            g_q_w,
            Some(g_q_b),
            Some((&mut d_query_input, true)),
        );
        packing.add_queries_into(&mut d_x, &d_query_input, hidden);
        (d_x, grads)
    }
}

impl CustomOp3 for EncoderLayerOp {
    fn name(&self) -> &'static str {
        "crosstrain-encoder-layer"
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
        let mask_bias = contiguous_f32(s2, l2, "mask bias")?;
        let params = contiguous_f32(s3, l3, "packed parameters")?;
        let (batch, seq, width) = l1.shape().dims3()?;
        if width != self.dims.hidden
            || mask_bias.len() != batch * seq
            || params.len()
                != self.dims.offsets().total
                    + self
                        .relative
                        .as_ref()
                        .map_or(0, |relative| relative.table_rows * width)
            || self
                .relative
                .as_ref()
                .is_some_and(|relative| relative.rows.len() != seq * seq)
        {
            candle_core::bail!(
                "encoder layer: hidden {:?}, mask bias {} values, {} parameters do not fit {:?}",
                l1.dims(),
                mask_bias.len(),
                params.len(),
                self.dims
            );
        }
        let packing = Packing::from_mask(
            mask_bias,
            batch,
            seq,
            self.dims.heads,
            self.first_token_only,
        );
        let packed_x = packing.gather(x, width, packing.real_positions());
        let (output, saved) = self.forward(&packing, &packed_x, mask_bias, params);
        let output = packing.scatter(&output, width, packing.query_positions());
        if self.keep_activations {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((packing, packed_x, saved));
        }
        Ok((CpuStorage::F32(output), l1.shape().clone()))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        _mask_bias: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (packing, packed_x, saved) = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "encoder layer: backward without kept activations (forward ran with \
                     keep_activations false, or backward ran twice)"
                        .into(),
                )
            })?;
        let width = self.dims.hidden;
        let grad = grad.contiguous()?;
        let d_output = with_cpu_values(&grad, "encoder layer gradient", |g| {
            packing.gather(g, width, packing.query_positions())
        })?;
        let (d_x, d_params) = with_cpu_values(params, "encoder layer parameters", |p| {
            self.backward(&packing, &packed_x, p, &saved, &d_output)
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
