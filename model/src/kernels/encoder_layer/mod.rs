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
//! bias `[batch, 1, 1, seq]` (a constant) and the layer's parameters packed into one vector
//! (concatenated by [`pack_parameters`], so candle's `cat` backward hands each parameter its
//! slice of the gradient). Activations that the backward pass needs are kept inside the op
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

use crate::kernels::ops::{contiguous_f32, layer_norm_backward, layer_norm_forward, with_cpu_values};
use crate::kernels::simd;

/// Rows per rayon task in the row-wise loops.
const ROWS_PER_TASK: usize = 32;

/// Elements per rayon task in the element-wise loops.
const ELEMENTS_PER_TASK: usize = 16_384;

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
    fn head_size(&self) -> usize {
        self.hidden / self.heads
    }

    /// Offsets of each parameter in the packed vector, in [`pack_parameters`] order.
    fn offsets(&self) -> ParamOffsets {
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
struct ParamOffsets {
    qkv_weight: std::ops::Range<usize>,
    qkv_bias: std::ops::Range<usize>,
    output_weight: std::ops::Range<usize>,
    output_bias: std::ops::Range<usize>,
    norm1_weight: std::ops::Range<usize>,
    norm1_bias: std::ops::Range<usize>,
    inner_weight: std::ops::Range<usize>,
    inner_bias: std::ops::Range<usize>,
    outer_weight: std::ops::Range<usize>,
    outer_bias: std::ops::Range<usize>,
    norm2_weight: std::ops::Range<usize>,
    norm2_bias: std::ops::Range<usize>,
    total: usize,
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

/// Concatenates a layer's parameters into one vector in the kernel's order. The weights of
/// query, key and value end up adjacent, which makes them one `[3·hidden, hidden]` matrix.
pub fn pack_parameters(parameters: &LayerParameters) -> Result<Tensor> {
    let p = parameters;
    let pieces = [
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
    .iter()
    .map(|t| t.flatten_all())
    .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&pieces, 0)
}

/// Mutable views of each parameter's slice of the packed gradient.
struct ParamGrads<'a> {
    query_weight: &'a mut [f32],
    key_value_weight: &'a mut [f32],
    query_bias: &'a mut [f32],
    key_value_bias: &'a mut [f32],
    output_weight: &'a mut [f32],
    output_bias: &'a mut [f32],
    norm1_weight: &'a mut [f32],
    norm1_bias: &'a mut [f32],
    inner_weight: &'a mut [f32],
    inner_bias: &'a mut [f32],
    outer_weight: &'a mut [f32],
    outer_bias: &'a mut [f32],
    norm2_weight: &'a mut [f32],
    norm2_bias: &'a mut [f32],
}

impl<'a> ParamGrads<'a> {
    /// Splits `grads` at the (consecutive) offsets; the query part of the stacked
    /// query/key/value weights and biases apart from the key/value part.
    fn split(grads: &'a mut [f32], o: &ParamOffsets, hidden: usize) -> Self {
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
}

struct EncoderLayerOp {
    dims: LayerDims,
    dropout: LayerDropoutMasks,
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
        keep_activations,
        first_token_only,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&mask_bias.contiguous()?.detach(), packed_parameters, op)
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A strided matrix view for [`matmul`]: element `(r, c)` is at `offset + r·row + c·col`.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    row: usize,
    col: usize,
}

const fn view(offset: usize, row: usize, col: usize) -> View {
    View { offset, row, col }
}

/// Highest index a `rows × cols` view touches, plus one.
fn extent(v: View, rows: usize, cols: usize) -> usize {
    if rows == 0 || cols == 0 {
        return v.offset;
    }
    v.offset + (rows - 1) * v.row + (cols - 1) * v.col + 1
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` with the `gemm` crate (the one candle's CPU
/// backend uses), on strided views.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    d: View,
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(
        extent(d, m, n) <= dst.len(),
        "matmul: destination too short"
    );
    assert!(
        extent(l, m, k) <= lhs.len(),
        "matmul: left operand too short"
    );
    assert!(
        extent(r, k, n) <= rhs.len(),
        "matmul: right operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above show that every element the three strided views address lies
    // inside its slice; `dst` is borrowed mutably and does not alias `lhs` or `rhs` (distinct
    // borrows), and the strides fit in isize because the extents fit in the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            d.col as isize,
            d.row as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.col as isize,
            l.row as isize,
            rhs.as_ptr().add(r.offset),
            r.col as isize,
            r.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `rows` copies of `bias`, the starting value of a linear layer's output.
fn repeat_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(bias.len() * rows);
    for _ in 0..rows {
        out.extend_from_slice(bias);
    }
    out
}

/// `out = x · weightᵀ + bias` for `x [rows, in]` and `weight [out, in]`.
fn linear(x: &[f32], weight: &[f32], bias: &[f32], rows: usize) -> Vec<f32> {
    let (width_out, width_in) = (bias.len(), weight.len() / bias.len());
    let mut out = repeat_rows(bias, rows);
    matmul(
        &mut out,
        view(0, width_out, 1),
        x,
        view(0, width_in, 1),
        weight,
        view(0, 1, width_in),
        (rows, width_out, width_in),
        true,
        threads(),
    );
    out
}

/// The gradients of a linear layer `y = x · weightᵀ + bias` given `dy [rows, out]`: adds
/// `dyᵀ · x` to `d_weight`, the column sums of `dy` to `d_bias`, and returns or accumulates
/// `dy · weight` into `dx` when asked.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    rows: usize,
    d_weight: &mut [f32],
    d_bias: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
) {
    let (width_out, width_in) = (d_bias.len(), weight.len() / d_bias.len());
    let mut weight_gradient = |parallelism| {
        matmul(
            d_weight,
            view(0, width_in, 1),
            dy,
            view(0, 1, width_out),
            x,
            view(0, width_in, 1),
            (width_out, width_in, rows),
            true,
            parallelism,
        );
        add_column_sums(dy, width_out, d_bias);
    };
    let input_gradient = |dx: &mut [f32], accumulate, parallelism| {
        matmul(
            dx,
            view(0, width_in, 1),
            dy,
            view(0, width_out, 1),
            weight,
            view(0, width_in, 1),
            (rows, width_in, width_out),
            accumulate,
            parallelism,
        )
    };
    match dx {
        // The two products are independent: half the threads on each at the same time
        // (on 2 cores, one each, without synchronisation inside either product) beats all
        // threads on each in turn.
        Some((dx, accumulate)) if rayon::current_num_threads() >= 2 => {
            let half = match rayon::current_num_threads() / 2 {
                1 => Parallelism::None,
                n => Parallelism::Rayon(n),
            };
            rayon::join(
                || weight_gradient(half),
                || input_gradient(dx, accumulate, half),
            );
        }
        Some((dx, accumulate)) => {
            weight_gradient(Parallelism::None);
            input_gradient(dx, accumulate, Parallelism::None);
        }
        None => weight_gradient(threads()),
    }
}

/// Adds the column sums of a `[rows, width]` matrix to `sums`.
fn add_column_sums(matrix: &[f32], width: usize, sums: &mut [f32]) {
    let partials: Vec<Vec<f32>> = matrix
        .par_chunks(width * ROWS_PER_TASK * 4)
        .map(|block| {
            let mut partial = vec![0f32; width];
            for row in block.chunks(width) {
                for (p, &v) in partial.iter_mut().zip(row) {
                    *p += v;
                }
            }
            partial
        })
        .collect();
    for partial in partials {
        for (s, p) in sums.iter_mut().zip(partial) {
            *s += p;
        }
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

/// Which positions of a padded batch hold real tokens, and where they go when the padding
/// is squeezed out. Every row-wise step (the five projections, GELU, both LayerNorms) runs
/// on the real tokens only, and attention runs over each sequence's real tokens only; a
/// padded key gets probability exactly 0 in the padded computation too (its score is the
/// dtype's lowest value, whose exponential underflows to 0), so the real tokens' values are
/// the same. Padded positions come out as zeros instead of the values transformers computes
/// for them, which nothing reads: the pooler reads the first token, mean pooling masks them,
/// the next layer's attention never looks at them, and their gradients are zero either way.
///
/// The query rows are the rows the layer computes an output for: every real token, or only
/// each sequence's first.
struct Packing {
    seq: usize,
    /// Per batch element, the positions of its real tokens.
    positions: Vec<Vec<usize>>,
    /// Per batch element, its first row among the packed rows (`batch + 1` entries).
    starts: Vec<usize>,
    /// Per batch element, how many of its first real tokens are query rows (all or 1).
    query_counts: Vec<usize>,
    /// Per batch element, its first row among the packed query rows (`batch + 1`).
    query_starts: Vec<usize>,
    /// Per batch element, where its `[heads, queries, len]` probabilities start (`batch + 1`).
    prob_starts: Vec<usize>,
}

impl Packing {
    /// Real tokens are those whose mask bias is above half the dtype's lowest value.
    fn from_mask(
        mask_bias: &[f32],
        batch: usize,
        seq: usize,
        heads: usize,
        first_token_only: bool,
    ) -> Self {
        let positions: Vec<Vec<usize>> = (0..batch)
            .map(|b| {
                (0..seq)
                    .filter(|&j| mask_bias[b * seq + j] > f32::MIN / 2.0)
                    .collect()
            })
            .collect();
        let query_counts: Vec<usize> = positions
            .iter()
            .map(|p| {
                if first_token_only {
                    p.len().min(1)
                } else {
                    p.len()
                }
            })
            .collect();
        let running = |sizes: &mut dyn Iterator<Item = usize>| {
            let mut starts = vec![0];
            for size in sizes {
                starts.push(starts.last().copied().unwrap_or(0) + size);
            }
            starts
        };
        let starts = running(&mut positions.iter().map(Vec::len));
        let query_starts = running(&mut query_counts.iter().copied());
        let prob_starts = running(
            &mut positions
                .iter()
                .zip(&query_counts)
                .map(|(p, &q)| heads * q * p.len()),
        );
        Self {
            seq,
            positions,
            starts,
            query_counts,
            query_starts,
            prob_starts,
        }
    }

    fn rows(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    fn query_rows(&self) -> usize {
        self.query_starts.last().copied().unwrap_or(0)
    }

    fn all_rows_are_queries(&self) -> bool {
        self.rows() == self.query_rows()
    }

    /// The (batch element, position) of every real row, in packed order.
    fn real_positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.positions
            .iter()
            .enumerate()
            .flat_map(|(b, p)| p.iter().map(move |&j| (b, j)))
    }

    /// The (batch element, position) of every query row, in packed order.
    fn query_positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.positions
            .iter()
            .zip(&self.query_counts)
            .enumerate()
            .flat_map(|(b, (p, &q))| p[..q].iter().map(move |&j| (b, j)))
    }

    /// The rows at `positions` of a `[batch·seq, width]` matrix, packed.
    fn gather(
        &self,
        full: &[f32],
        width: usize,
        positions: impl Iterator<Item = (usize, usize)>,
    ) -> Vec<f32> {
        let mut packed = Vec::new();
        for (b, j) in positions {
            let row = b * self.seq + j;
            packed.extend_from_slice(&full[row * width..(row + 1) * width]);
        }
        packed
    }

    /// Packed rows back to `positions` of a `[batch·seq, width]` matrix, zeros elsewhere.
    fn scatter(
        &self,
        packed: &[f32],
        width: usize,
        positions: impl Iterator<Item = (usize, usize)>,
    ) -> Vec<f32> {
        let mut full = vec![0f32; self.positions.len() * self.seq * width];
        for (next, (b, j)) in positions.enumerate() {
            let row = b * self.seq + j;
            full[row * width..(row + 1) * width]
                .copy_from_slice(&packed[next * width..(next + 1) * width]);
        }
        full
    }

    /// The query rows among packed real rows (`None`: all of them, no copy needed).
    fn select_queries(&self, packed: &[f32], width: usize) -> Option<Vec<f32>> {
        if self.all_rows_are_queries() {
            return None;
        }
        let mut queries = Vec::with_capacity(self.query_rows() * width);
        for (&start, &count) in self.starts.iter().zip(&self.query_counts) {
            queries.extend_from_slice(&packed[start * width..(start + count) * width]);
        }
        Some(queries)
    }

    /// Adds packed query rows into their places among packed real rows.
    fn add_queries_into(&self, packed: &mut [f32], queries: &[f32], width: usize) {
        let mut next = 0;
        for (&start, &count) in self.starts.iter().zip(&self.query_counts) {
            let target = &mut packed[start * width..(start + count) * width];
            for (t, &q) in target
                .iter_mut()
                .zip(&queries[next * width..(next + count) * width])
            {
                *t += q;
            }
            next += count;
        }
    }
}

/// Splits `buffer` into one mutable piece per batch element, `unit` values per step of
/// `starts` (a running total with `batch + 1` entries).
fn split_mut<'a>(buffer: &'a mut [f32], starts: &[usize], unit: usize) -> Vec<&'a mut [f32]> {
    let mut rest = buffer;
    starts
        .windows(2)
        .map(|w| {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * unit);
            rest = tail;
            piece
        })
        .collect()
}

/// The same for a shared buffer.
fn split<'a>(buffer: &'a [f32], starts: &[usize], unit: usize) -> Vec<&'a [f32]> {
    let mut rest = buffer;
    starts
        .windows(2)
        .map(|w| {
            let (piece, tail) = rest.split_at((w[1] - w[0]) * unit);
            rest = tail;
            piece
        })
        .collect()
}

/// One sequence's slices of the attention inputs.
struct SequenceAttention<'a> {
    /// `[queries, hidden]` query projections.
    query: &'a [f32],
    /// `[len, 2·hidden]` key and value projections.
    key_value: &'a [f32],
}

impl EncoderLayerOp {
    /// The attention-probability dropout mask of one sequence and head at its query rows
    /// and real keys, as a `queries × len` block (false without dropout).
    fn probs_mask(&self, packing: &Packing, b: usize, h: usize, out: &mut [f32]) -> bool {
        let Some(masks) = &self.dropout.attention_probs else {
            return false;
        };
        let (seq, positions) = (packing.seq, &packing.positions[b]);
        let len = positions.len();
        let block = (b * self.dims.heads + h) * seq * seq;
        for (i, &pi) in positions[..packing.query_counts[b]].iter().enumerate() {
            let row = &masks[block + pi * seq..block + (pi + 1) * seq];
            for (o, &pj) in out[i * len..(i + 1) * len].iter_mut().zip(positions) {
                *o = row[pj];
            }
        }
        true
    }

    /// Attention forward for batch element `b`: fills its `[heads, queries, len]`
    /// probabilities and its `[queries, hidden]` context rows.
    fn attention_forward(
        &self,
        packing: &Packing,
        b: usize,
        inputs: SequenceAttention,
        mask_bias: &[f32],
        probs: &mut [f32],
        context: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let mask: Vec<f32> = packing.positions[b]
            .iter()
            .map(|&j| mask_bias[b * packing.seq + j])
            .collect();
        let mut dropout_mask = vec![0f32; queries * len];
        let mut dropped = vec![0f32; queries * len];
        for h in 0..heads {
            let block = &mut probs[h * queries * len..(h + 1) * queries * len];
            // scores = Q · Kᵀ
            matmul(
                block,
                view(0, len, 1),
                inputs.query,
                view(h * head, hidden, 1),
                inputs.key_value,
                view(h * head, 1, 2 * hidden),
                (queries, len, head),
                false,
                Parallelism::None,
            );
            simd::softmax_rows(block, len, &mask, scale);
            let weights: &[f32] = if self.probs_mask(packing, b, h, &mut dropout_mask) {
                simd::product(block, &dropout_mask, &mut dropped);
                &dropped
            } else {
                block
            };
            // context = P · V
            matmul(
                context,
                view(h * head, hidden, 1),
                weights,
                view(0, len, 1),
                inputs.key_value,
                view(hidden + h * head, 2 * hidden, 1),
                (queries, head, len),
                false,
                Parallelism::None,
            );
        }
    }

    /// Attention backward for batch element `b`: writes its rows of `d_query` and
    /// `d_key_value`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        packing: &Packing,
        b: usize,
        inputs: SequenceAttention,
        probs: &[f32],
        d_context: &[f32],
        d_query: &mut [f32],
        d_key_value: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let mut dropout_mask = vec![0f32; queries * len];
        let mut dropped = vec![0f32; queries * len];
        let mut d_scores = vec![0f32; queries * len];
        for h in 0..heads {
            let p = &probs[h * queries * len..(h + 1) * queries * len];
            let has_dropout = self.probs_mask(packing, b, h, &mut dropout_mask);
            let weights: &[f32] = if has_dropout {
                simd::product(p, &dropout_mask, &mut dropped);
                &dropped
            } else {
                p
            };
            // dV = Pᵀ · dC
            matmul(
                d_key_value,
                view(hidden + h * head, 2 * hidden, 1),
                weights,
                view(0, 1, len),
                d_context,
                view(h * head, hidden, 1),
                (len, head, queries),
                false,
                Parallelism::None,
            );
            // dP = dC · Vᵀ
            matmul(
                &mut d_scores,
                view(0, len, 1),
                d_context,
                view(h * head, hidden, 1),
                inputs.key_value,
                view(hidden + h * head, 1, 2 * hidden),
                (queries, len, head),
                false,
                Parallelism::None,
            );
            // Through dropout and softmax: dS = scale · P ⊙ (dP − Σ dP·P).
            if has_dropout {
                let d_dropped = d_scores.clone();
                simd::product(&d_dropped, &dropout_mask, &mut d_scores);
            }
            simd::softmax_backward_rows(&mut d_scores, p, len, scale);
            // dQ = dS · K
            matmul(
                d_query,
                view(h * head, hidden, 1),
                &d_scores,
                view(0, len, 1),
                inputs.key_value,
                view(h * head, 2 * hidden, 1),
                (queries, head, len),
                false,
                Parallelism::None,
            );
            // dK = dSᵀ · Q
            matmul(
                d_key_value,
                view(h * head, 2 * hidden, 1),
                &d_scores,
                view(0, 1, len),
                inputs.query,
                view(h * head, hidden, 1),
                (len, head, queries),
                false,
                Parallelism::None,
            );
        }
    }

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

        let mut probs = vec![0f32; packing.prob_starts.last().copied().unwrap_or(0)];
        let mut context = vec![0f32; query_rows * hidden];
        split_mut(&mut probs, &packing.prob_starts, 1)
            .into_par_iter()
            .zip(split_mut(&mut context, &packing.query_starts, hidden))
            .zip(split(&query, &packing.query_starts, hidden))
            .zip(split(&key_value, &packing.starts, 2 * hidden))
            .enumerate()
            .for_each(|(b, (((probs, context), query), key_value))| {
                let inputs = SequenceAttention { query, key_value };
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
        let mut grads = vec![0f32; o.total];
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
        } = ParamGrads::split(&mut grads, &o, hidden);
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
            g_outer_b,
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
            g_in_b,
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
            g_out_b,
            Some((&mut d_context, false)),
        );
        drop(d_projected);

        let mut d_query = vec![0f32; query_rows * hidden];
        let mut d_key_value = vec![0f32; rows * 2 * hidden];
        split_mut(&mut d_query, &packing.query_starts, hidden)
            .into_par_iter()
            .zip(split_mut(&mut d_key_value, &packing.starts, 2 * hidden))
            .zip(split(&saved.probs, &packing.prob_starts, 1))
            .zip(split(&d_context, &packing.query_starts, hidden))
            .zip(split(&saved.query, &packing.query_starts, hidden))
            .zip(split(&saved.key_value, &packing.starts, 2 * hidden))
            .enumerate()
            .for_each(
                |(b, (((((d_query, d_key_value), probs), d_context), query), key_value))| {
                    let inputs = SequenceAttention { query, key_value };
                    self.attention_backward(
                        packing,
                        b,
                        inputs,
                        probs,
                        d_context,
                        d_query,
                        d_key_value,
                    )
                },
            );
        drop(d_context);
        let mut d_x = vec![0f32; rows * hidden];
        linear_backward(
            &d_key_value,
            x,
            key_value_weight,
            rows,
            g_kv_w,
            g_kv_b,
            Some((&mut d_x, false)),
        );
        linear_backward(
            &d_query,
            saved.query_input.as_deref().unwrap_or(x),
            query_weight,
            query_rows,
            g_q_w,
            g_q_b,
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
            || params.len() != self.dims.offsets().total
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
