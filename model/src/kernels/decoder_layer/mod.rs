//! A whole pre-norm decoder layer (Qwen3's, Qwen2's, Llama's) as one CPU kernel with a
//! hand-written backward pass, for the reason the encoder layers have theirs
//! ([`super::encoder_layer`]): composed from candle ops, the layer is some fifty graph nodes
//! (per-head norms, the rotary halves, the repeated key/value heads, the causal bias, SwiGLU),
//! each with its own buffers and sweeps over memory, and that overhead cost as much as the
//! matrix products.
//!
//! The layer: `n₁ = rms(x)·w₁`, `q = n₁·Wqᵀ (+ bq)`, `[k, v] = n₁·[Wk; Wv]ᵀ (+ [bk; bv])`,
//! per-head RMS norms of `q` and `k` (Qwen3), rotary embeddings at each token's position,
//! causal attention of each query over its sequence's real keys at or before it, every
//! `heads / kv_heads` query heads sharing one key/value head, `h = x + Wo(context) (+ bo)`,
//! `n₂ = rms(h)·w₂`, `[g, u] = n₂·[Wg; Wu]ᵀ`, `out = h + Wd(silu(g) ⊙ u)`.
//!
//! Inputs: the hidden states `[batch, seq, hidden]`, the padding bias `[batch, seq]` (0 on
//! real tokens, a large negative number on padding: a constant) and the parameters packed
//! into one vector by [`pack_parameters`]. Work runs over real tokens only (see
//! [`Packing`]): left padding (the causal-LM rerankers) and right padding (the
//! sequence-classification ones) alike; padded rows come out as zeros, which nothing reads
//! (no real token attends to a pad, and the heads read real tokens). A layer may compute
//! only each sequence's last token ([`QueryRows::Last`]): the last layer under a head that
//! reads only that token. Attention-probability dropout takes the mask the composite layer
//! would draw, so both paths train identically. Under LoRA ([`LayerWeights::Adapted`]) the
//! frozen base is read apart from the packed adapters, which alone get gradients: each pass
//! runs on the base with the adapters' updates merged in (see `adapters.rs`), and the
//! backward pass skips every base weight product, a third of a full step's arithmetic, and
//! on a first layer over frozen embeddings also the input's gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use super::encoder_layer::packing::QueryRows;
use super::encoder_layer::packing::{split, split_mut, Packing};
use super::encoder_layer::products::{input_gradient, linear, linear_backward, project};
use super::encoder_layer::threads;
use super::modernbert_layer::add_into;
use super::modernbert_layer::rotary::rotate_rows;
pub use super::modernbert_layer::RotaryTables;
use super::ops::{contiguous_f32, with_cpu_values};
use super::simd;

mod adapters;
mod attention;
mod params;
mod rms_norm;

use adapters::{update_backward, FrozenBase};
pub use adapters::{AdapterDims, Projection};
pub use params::{pack_parameters, DecoderLayerDims, DecoderLayerParameters};
use rms_norm::{rms_norm_backward_in_place, rms_norm_in_place, rms_norm_output};

/// What the forward pass keeps for the backward pass (`R` real rows, `Q` query rows).
struct Saved {
    /// 1/rms of each input row `[R]`.
    input_rstd: Vec<f32>,
    /// With per-head norms: the query and key/value projections before them, and 1/rms of
    /// each row's heads.
    query_raw: Option<Vec<f32>>,
    query_rstd: Vec<f32>,
    key_value_raw: Option<Vec<f32>>,
    key_rstd: Vec<f32>,
    /// `[Q, heads·head_dim]` rotated queries, `[R, 2·kv_heads·head_dim]` rotated keys and
    /// values.
    query: Vec<f32>,
    key_value: Vec<f32>,
    /// Per sequence and head, `[queries, keys]` attention probabilities before dropout.
    probs: Vec<f32>,
    /// `[Q, heads·head_dim]` attention context.
    context: Vec<f32>,
    /// `[Q, hidden]` the residual after attention, and 1/rms of its rows.
    attended: Vec<f32>,
    post_rstd: Vec<f32>,
    /// `[Q, 2·intermediate]` gate and up projections, `[Q, intermediate]` their product.
    gate_up: Vec<f32>,
    gated: Vec<f32>,
}

struct DecoderLayerOp {
    dims: DecoderLayerDims,
    /// With LoRA: the frozen base (the op's third input is then the packed adapters).
    frozen: Option<FrozenBase>,
    /// Whether the base parameters get gradients (no weight products otherwise).
    train_base: bool,
    /// Whether the input hidden states need a gradient: not the first layer's over frozen
    /// embeddings (LoRA), whose backward pass then stops at the adapters' gradients.
    input_gradient: bool,
    rotary: Arc<RotaryTables>,
    /// The scaled keep-mask `[batch, heads, seq, seq]` of the attention probabilities.
    attention_dropout: Option<Vec<f32>>,
    keep_activations: bool,
    queries: QueryRows,
    saved: Mutex<Option<(Packing, Vec<f32>, Saved)>>,
}

/// A layer's weights as the fused op takes them.
pub enum LayerWeights<'a> {
    /// Every parameter packed into one vector ([`pack_parameters`]); its gradient is
    /// computed when it tracks one.
    Packed(&'a Tensor),
    /// A frozen base (its tensors in [`DecoderLayerParameters::in_packing_order`], any
    /// dtype) and the LoRA adapters packed into one f32 vector (A then B of each target in
    /// [`Projection::ALL`]'s order), which alone get gradients.
    Adapted {
        /// The base's tensors.
        base: Vec<Tensor>,
        /// The packed adapters.
        adapters: &'a Tensor,
        /// Their rank, scaling and targets.
        dims: AdapterDims,
    },
}

/// One decoder layer on contiguous f32 CPU tensors (see the module's doc).
#[allow(clippy::too_many_arguments)]
pub fn decoder_layer(
    hidden: &Tensor,
    padding_bias: &Tensor,
    weights: LayerWeights,
    dims: DecoderLayerDims,
    rotary: Arc<RotaryTables>,
    attention_dropout: Option<Vec<f32>>,
    keep_activations: bool,
    queries: QueryRows,
) -> Result<Tensor> {
    let (trainable, frozen, train_base) = match weights {
        LayerWeights::Packed(packed) => (packed, None, packed.track_op()),
        LayerWeights::Adapted {
            base,
            adapters,
            dims,
        } => (
            adapters,
            Some(FrozenBase {
                tensors: base,
                adapters: dims,
            }),
            false,
        ),
    };
    let op = DecoderLayerOp {
        dims,
        frozen,
        train_base,
        input_gradient: hidden.track_op(),
        rotary,
        attention_dropout,
        keep_activations,
        queries,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&padding_bias.contiguous()?.detach(), trainable, op)
}

/// `x · weightᵀ (+ bias)`.
fn projection(x: &[f32], weight: &[f32], bias: &[f32], rows: usize, width: usize) -> Vec<f32> {
    if bias.is_empty() {
        project(x, weight, rows, width)
    } else {
        linear(x, weight, bias, rows)
    }
}

/// `Some(slice)` of a bias's gradient where the layer has that bias.
fn bias_gradient(slice: &mut [f32]) -> Option<&mut [f32]> {
    (!slice.is_empty()).then_some(slice)
}

impl DecoderLayerOp {
    /// The layer on packed real rows `x`; returns the packed query rows' output. Under LoRA
    /// `params` is the base with the adapters' updates merged in ([`FrozenBase::values`]).
    fn forward(&self, packing: &Packing, x: &[f32], params: &[f32]) -> (Vec<f32>, Saved) {
        let dims = self.dims;
        let (hidden, intermediate) = (dims.hidden, dims.intermediate);
        let (query_width, kv_width) = (dims.query_width(), dims.kv_width());
        let o = dims.offsets();
        let (rows, query_rows) = (packing.rows(), packing.query_rows());

        let mut normed = x.to_vec();
        let input_rstd = rms_norm_in_place(
            &mut normed,
            &params[o.input_norm.clone()],
            hidden,
            hidden,
            dims.eps,
        );
        let selected = packing.select_queries(&normed, hidden);
        let query_input = selected.as_deref().unwrap_or(&normed);
        let mut query = projection(
            query_input,
            &params[o.query.clone()],
            &params[o.query_bias.clone()],
            query_rows,
            query_width,
        );
        drop(selected);
        let mut key_value = projection(
            &normed,
            &params[o.key_value.clone()],
            &params[o.key_value_bias.clone()],
            rows,
            2 * kv_width,
        );
        drop(normed);
        let (query_raw, query_rstd, key_value_raw, key_rstd) = if dims.qk_norm {
            let query_raw = query.clone();
            let query_rstd = rms_norm_in_place(
                &mut query,
                &params[o.query_norm.clone()],
                query_width,
                query_width,
                dims.eps,
            );
            let key_value_raw = key_value.clone();
            let key_rstd = rms_norm_in_place(
                &mut key_value,
                &params[o.key_norm.clone()],
                2 * kv_width,
                kv_width,
                dims.eps,
            );
            (Some(query_raw), query_rstd, Some(key_value_raw), key_rstd)
        } else {
            (None, Vec::new(), None, Vec::new())
        };
        let query_positions: Vec<usize> = packing.query_positions().map(|(_, j)| j).collect();
        let real_positions: Vec<usize> = packing.real_positions().map(|(_, j)| j).collect();
        rotate_rows(
            &self.rotary,
            &mut query,
            query_width,
            query_width,
            &query_positions,
            false,
        );
        rotate_rows(
            &self.rotary,
            &mut key_value,
            2 * kv_width,
            kv_width,
            &real_positions,
            false,
        );

        let mut probs = vec![0f32; packing.prob_starts.last().copied().unwrap_or(0)];
        let mut context = vec![0f32; query_rows * query_width];
        split_mut(&mut probs, &packing.prob_starts, 1)
            .into_par_iter()
            .zip(split_mut(&mut context, &packing.query_starts, query_width))
            .zip(split(&query, &packing.query_starts, query_width))
            .zip(split(&key_value, &packing.starts, 2 * kv_width))
            .enumerate()
            .for_each(|(b, (((probs, context), query), key_value))| {
                self.attention_forward(packing, b, query, key_value, probs, context)
            });

        let mut attended = packing
            .select_queries(x, hidden)
            .unwrap_or_else(|| x.to_vec());
        let output = projection(
            &context,
            &params[o.output.clone()],
            &params[o.output_bias.clone()],
            query_rows,
            hidden,
        );
        add_into(&mut attended, &output);
        drop(output);

        let mut normed = attended.clone();
        let post_rstd = rms_norm_in_place(
            &mut normed,
            &params[o.post_norm.clone()],
            hidden,
            hidden,
            dims.eps,
        );
        let gate_up = project(
            &normed,
            &params[o.gate_up.clone()],
            query_rows,
            2 * intermediate,
        );
        drop(normed);
        let mut gated = vec![0f32; query_rows * intermediate];
        gated
            .par_chunks_mut(intermediate)
            .zip(gate_up.par_chunks(2 * intermediate))
            .for_each(|(gated, gate_up)| {
                let (gate, up) = gate_up.split_at(intermediate);
                simd::swiglu_slice(gate, up, gated);
            });
        let mut output = project(&gated, &params[o.down.clone()], query_rows, hidden);
        add_into(&mut output, &attended);
        (
            output,
            Saved {
                input_rstd,
                query_raw,
                query_rstd,
                key_value_raw,
                key_rstd,
                query,
                key_value,
                probs,
                context,
                attended,
                post_rstd,
                gate_up,
                gated,
            },
        )
    }

    /// A base projection's backward pass: its weight's (and bias's) gradient when the base
    /// trains, and its input's gradient written into `dx` when there is one to write.
    #[allow(clippy::too_many_arguments)]
    fn projection_backward(
        &self,
        dy: &[f32],
        x: &[f32],
        weight: &[f32],
        rows: usize,
        d_weight: &mut [f32],
        d_bias: Option<&mut [f32]>,
        dx: Option<&mut [f32]>,
    ) {
        if self.train_base {
            linear_backward(
                dy,
                x,
                weight,
                rows,
                d_weight,
                d_bias,
                dx.map(|dx| (dx, false)),
            );
        } else if let Some(dx) = dx {
            input_gradient(dy, weight, rows, dx, false, threads());
        }
    }

    /// Gradients of the packed real input rows, of the packed parameters (when the base
    /// trains) and of the packed adapters (when there are any), given the packed query
    /// rows' output gradient.
    fn backward(
        &self,
        packing: &Packing,
        x: &[f32],
        params: &[f32],
        adapters: Option<(&AdapterDims, &[f32])>,
        saved: &Saved,
        d_output: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dims = self.dims;
        let (hidden, intermediate) = (dims.hidden, dims.intermediate);
        let (query_width, kv_width) = (dims.query_width(), dims.kv_width());
        let o = dims.offsets();
        let (rows, query_rows) = (packing.rows(), packing.query_rows());
        // A frozen base gets no weight gradients: its matrices' and biases' slices are empty
        // (nothing writes them), only the norms' few values are computed and dropped.
        let len = |range: &std::ops::Range<usize>, norm: bool| {
            if self.train_base || norm {
                range.len()
            } else {
                0
            }
        };
        let sizes = [
            len(&o.input_norm, true),
            len(&o.query, false),
            len(&o.key_value, false),
            len(&o.query_bias, false),
            len(&o.key_value_bias, false),
            len(&o.output, false),
            len(&o.output_bias, false),
            len(&o.query_norm, true),
            len(&o.key_norm, true),
            len(&o.post_norm, true),
            len(&o.gate_up, false),
        ];
        let mut grads = vec![0f32; sizes.iter().sum::<usize>() + len(&o.down, false)];
        let mut d_adapters = vec![0f32; adapters.map_or(0, |(a, _)| a.total(&dims))];
        let (g_input_norm, rest) = grads.split_at_mut(sizes[0]);
        let (g_query, rest) = rest.split_at_mut(sizes[1]);
        let (g_key_value, rest) = rest.split_at_mut(sizes[2]);
        let (g_query_bias, rest) = rest.split_at_mut(sizes[3]);
        let (g_key_value_bias, rest) = rest.split_at_mut(sizes[4]);
        let (g_output, rest) = rest.split_at_mut(sizes[5]);
        let (g_output_bias, rest) = rest.split_at_mut(sizes[6]);
        let (g_query_norm, rest) = rest.split_at_mut(sizes[7]);
        let (g_key_norm, rest) = rest.split_at_mut(sizes[8]);
        let (g_post_norm, rest) = rest.split_at_mut(sizes[9]);
        let (g_gate_up, g_down) = rest.split_at_mut(sizes[10]);

        // out = h + Wd(silu(g) ⊙ u): the residual passes d_output to h.
        let mut d_gated = vec![0f32; query_rows * intermediate];
        self.projection_backward(
            d_output,
            &saved.gated,
            &params[o.down.clone()],
            query_rows,
            g_down,
            None,
            Some(&mut d_gated),
        );
        update_backward(
            &dims,
            adapters,
            &mut d_adapters,
            Projection::Down,
            &saved.gated,
            query_rows,
            d_output,
        );
        let mut d_gate_up = vec![0f32; query_rows * 2 * intermediate];
        d_gate_up
            .par_chunks_mut(2 * intermediate)
            .zip(saved.gate_up.par_chunks(2 * intermediate))
            .zip(d_gated.par_chunks(intermediate))
            .for_each(|((d_gate_up, gate_up), d_gated)| {
                let (gate, up) = gate_up.split_at(intermediate);
                let (d_gate, d_up) = d_gate_up.split_at_mut(intermediate);
                simd::swiglu_backward_slice(gate, up, d_gated, d_gate, d_up);
            });
        drop(d_gated);
        let post_normed = rms_norm_output(
            &saved.attended,
            &saved.post_rstd,
            &params[o.post_norm.clone()],
        );
        let mut d_attended = vec![0f32; query_rows * hidden];
        self.projection_backward(
            &d_gate_up,
            &post_normed,
            &params[o.gate_up.clone()],
            query_rows,
            g_gate_up,
            None,
            Some(&mut d_attended),
        );
        for target in [Projection::Gate, Projection::Up] {
            update_backward(
                &dims,
                adapters,
                &mut d_adapters,
                target,
                &post_normed,
                query_rows,
                &d_gate_up,
            );
        }
        drop((d_gate_up, post_normed));
        rms_norm_backward_in_place(
            &mut d_attended,
            &saved.attended,
            &saved.post_rstd,
            &params[o.post_norm.clone()],
            hidden,
            hidden,
            g_post_norm,
        );
        add_into(&mut d_attended, d_output);

        // h = x + Wo(context) + bo.
        let mut d_context = vec![0f32; query_rows * query_width];
        self.projection_backward(
            &d_attended,
            &saved.context,
            &params[o.output.clone()],
            query_rows,
            g_output,
            bias_gradient(g_output_bias),
            Some(&mut d_context),
        );
        update_backward(
            &dims,
            adapters,
            &mut d_adapters,
            Projection::Output,
            &saved.context,
            query_rows,
            &d_attended,
        );

        let mut d_query = vec![0f32; query_rows * query_width];
        let mut d_key_value = vec![0f32; rows * 2 * kv_width];
        split_mut(&mut d_query, &packing.query_starts, query_width)
            .into_par_iter()
            .zip(split_mut(&mut d_key_value, &packing.starts, 2 * kv_width))
            .zip(split(&saved.probs, &packing.prob_starts, 1))
            .zip(split(&d_context, &packing.query_starts, query_width))
            .zip(split(&saved.query, &packing.query_starts, query_width))
            .zip(split(&saved.key_value, &packing.starts, 2 * kv_width))
            .enumerate()
            .for_each(
                |(b, (((((d_query, d_key_value), probs), d_context), query), key_value))| {
                    self.attention_backward(
                        packing,
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
        let query_positions: Vec<usize> = packing.query_positions().map(|(_, j)| j).collect();
        let real_positions: Vec<usize> = packing.real_positions().map(|(_, j)| j).collect();
        rotate_rows(
            &self.rotary,
            &mut d_query,
            query_width,
            query_width,
            &query_positions,
            true,
        );
        rotate_rows(
            &self.rotary,
            &mut d_key_value,
            2 * kv_width,
            kv_width,
            &real_positions,
            true,
        );
        if let (Some(query_raw), Some(key_value_raw)) = (&saved.query_raw, &saved.key_value_raw) {
            rms_norm_backward_in_place(
                &mut d_query,
                query_raw,
                &saved.query_rstd,
                &params[o.query_norm.clone()],
                query_width,
                query_width,
                g_query_norm,
            );
            rms_norm_backward_in_place(
                &mut d_key_value,
                key_value_raw,
                &saved.key_rstd,
                &params[o.key_norm.clone()],
                2 * kv_width,
                kv_width,
                g_key_norm,
            );
        }

        // The input's gradient, unless nothing needs it (nor the input norm's, which comes
        // from it): then the q, k and v products for it are skipped.
        let needs_d_x = self.input_gradient || self.train_base;
        let normed = rms_norm_output(x, &saved.input_rstd, &params[o.input_norm.clone()]);
        let mut d_x = vec![0f32; if needs_d_x { rows * hidden } else { 0 }];
        self.projection_backward(
            &d_key_value,
            &normed,
            &params[o.key_value.clone()],
            rows,
            g_key_value,
            bias_gradient(g_key_value_bias),
            needs_d_x.then_some(&mut d_x[..]),
        );
        for target in [Projection::Key, Projection::Value] {
            update_backward(
                &dims,
                adapters,
                &mut d_adapters,
                target,
                &normed,
                rows,
                &d_key_value,
            );
        }
        drop(d_key_value);
        let selected = packing.select_queries(&normed, hidden);
        let mut d_query_normed = vec![0f32; if needs_d_x { query_rows * hidden } else { 0 }];
        let query_input = selected.as_deref().unwrap_or(&normed);
        self.projection_backward(
            &d_query,
            query_input,
            &params[o.query.clone()],
            query_rows,
            g_query,
            bias_gradient(g_query_bias),
            needs_d_x.then_some(&mut d_query_normed[..]),
        );
        update_backward(
            &dims,
            adapters,
            &mut d_adapters,
            Projection::Query,
            query_input,
            query_rows,
            &d_query,
        );
        drop((selected, normed));
        if needs_d_x {
            packing.add_queries_into(&mut d_x, &d_query_normed, hidden);
            rms_norm_backward_in_place(
                &mut d_x,
                x,
                &saved.input_rstd,
                &params[o.input_norm.clone()],
                hidden,
                hidden,
                g_input_norm,
            );
            packing.add_queries_into(&mut d_x, &d_attended, hidden);
        }
        (d_x, grads, d_adapters)
    }
}

impl CustomOp3 for DecoderLayerOp {
    fn name(&self) -> &'static str {
        "crosstrain-decoder-layer"
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
        let trainable = contiguous_f32(s3, l3, "packed parameters")?;
        let dims = self.dims;
        let base = self
            .frozen
            .as_ref()
            .map(|frozen| frozen.values(&dims, trainable))
            .transpose()?;
        let (params, adapters) = match (&base, &self.frozen) {
            (Some(base), Some(frozen)) => (base.as_slice(), Some((&frozen.adapters, trainable))),
            _ => (trainable, None),
        };
        let (batch, seq, width) = l1.shape().dims3()?;
        if width != dims.hidden
            || padding_bias.len() != batch * seq
            || params.len() != dims.offsets().total
            || adapters.is_some_and(|(a, values)| values.len() != a.total(&dims))
            || dims.head_dim % 2 != 0
            || dims.kv_heads == 0
            || dims.heads % dims.kv_heads != 0
            || self.rotary.head_size != dims.head_dim
            || self.rotary.cos.len() < seq * dims.head_dim
            || self
                .attention_dropout
                .as_ref()
                .is_some_and(|mask| mask.len() != batch * dims.heads * seq * seq)
        {
            candle_core::bail!(
                "decoder layer: hidden {:?}, padding bias {} values, {} parameters do not fit \
                 {dims:?}",
                l1.dims(),
                padding_bias.len(),
                params.len(),
            );
        }
        let packing = Packing::with_queries(padding_bias, batch, seq, dims.heads, self.queries);
        let packed_x = packing.gather(x, width, packing.real_positions());
        let (output, saved) = self.forward(&packing, &packed_x, params);
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
        _padding_bias: &Tensor,
        trainable: &Tensor,
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
                    "decoder layer: backward without kept activations (forward ran with \
                     keep_activations false, or backward ran twice)"
                        .into(),
                )
            })?;
        let width = self.dims.hidden;
        let grad = grad.contiguous()?;
        let d_output = with_cpu_values(&grad, "decoder layer gradient", |g| {
            packing.gather(g, width, packing.query_positions())
        })?;
        let (d_x, d_params, d_adapters) =
            with_cpu_values(trainable, "decoder layer parameters", |values| {
                let base = self
                    .frozen
                    .as_ref()
                    .map(|frozen| frozen.values(&self.dims, values))
                    .transpose()?;
                let (params, adapters) = match (&base, &self.frozen) {
                    (Some(base), Some(frozen)) => {
                        (base.as_slice(), Some((&frozen.adapters, values)))
                    }
                    _ => (values, None),
                };
                Ok::<_, candle_core::Error>(
                    self.backward(&packing, &packed_x, params, adapters, &saved, &d_output),
                )
            })??;
        let device = hidden.device();
        let d_trainable = if self.frozen.is_some() {
            Some(Tensor::from_vec(d_adapters, trainable.shape(), device)?)
        } else if self.train_base {
            Some(Tensor::from_vec(d_params, trainable.shape(), device)?)
        } else {
            None
        };
        let d_hidden = if self.input_gradient {
            Some(Tensor::from_vec(
                packing.scatter(&d_x, width, packing.real_positions()),
                hidden.shape(),
                device,
            )?)
        } else {
            None
        };
        Ok((d_hidden, None, d_trainable))
    }
}
