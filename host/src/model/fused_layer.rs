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

/// Rows per rayon task in the row-wise loops.
const ROWS_PER_TASK: usize = 32;

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
    qkv_weight: &'a mut [f32],
    qkv_bias: &'a mut [f32],
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
    /// Splits `grads` at the (consecutive) offsets.
    fn split(grads: &'a mut [f32], o: &ParamOffsets) -> Self {
        let mut rest = grads;
        let mut take = |range: &std::ops::Range<usize>| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(range.len());
            rest = tail;
            head
        };
        Self {
            qkv_weight: take(&o.qkv_weight),
            qkv_bias: take(&o.qkv_bias),
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

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// `[T, 3·hidden]` query, key and value projections.
    qkv: Vec<f32>,
    /// `[batch, heads, seq, seq]` attention probabilities before dropout.
    probs: Vec<f32>,
    /// `[T, hidden]` attention context (heads merged).
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
}

struct EncoderLayerOp {
    dims: LayerDims,
    dropout: LayerDropoutMasks,
    keep_activations: bool,
    saved: Mutex<Option<Saved>>,
}

/// One encoder layer (attention block, then feed-forward block, post-LayerNorm, exact GELU)
/// on contiguous f32 CPU tensors. `keep_activations` must be true when a gradient will be
/// asked for.
pub fn encoder_layer(
    hidden: &Tensor,
    mask_bias: &Tensor,
    packed_parameters: &Tensor,
    dims: LayerDims,
    dropout: LayerDropoutMasks,
    keep_activations: bool,
) -> Result<Tensor> {
    let op = EncoderLayerOp {
        dims,
        dropout,
        keep_activations,
        saved: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&mask_bias.contiguous()?.detach(), packed_parameters, op)
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let values = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("encoder layer: {what} is not contiguous"),
    }
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
    assert!(extent(d, m, n) <= dst.len(), "matmul: destination too short");
    assert!(extent(l, m, k) <= lhs.len(), "matmul: left operand too short");
    assert!(extent(r, k, n) <= rhs.len(), "matmul: right operand too short");
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
    matmul(
        d_weight,
        view(0, width_in, 1),
        dy,
        view(0, 1, width_out),
        x,
        view(0, width_in, 1),
        (width_out, width_in, rows),
        true,
        threads(),
    );
    add_column_sums(dy, width_out, d_bias);
    if let Some((dx, accumulate)) = dx {
        matmul(
            dx,
            view(0, width_in, 1),
            dy,
            view(0, width_out, 1),
            weight,
            view(0, width_in, 1),
            (rows, width_in, width_out),
            accumulate,
            threads(),
        );
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
    let width = weight.len();
    let chunk = width * ROWS_PER_TASK;
    out.par_chunks_mut(chunk)
        .zip(xhat.par_chunks_mut(chunk))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, ((out, xhat), rstd))| {
            let start = task * chunk;
            let mut sum = vec![0f32; width];
            for (row, ((out, xhat), rstd)) in out
                .chunks_mut(width)
                .zip(xhat.chunks_mut(width))
                .zip(rstd.iter_mut())
                .enumerate()
            {
                let at = start + row * width;
                let projected = &projected[at..at + width];
                let residual = &residual[at..at + width];
                match mask {
                    Some(mask) => {
                        let mask = &mask[at..at + width];
                        for i in 0..width {
                            sum[i] = projected[i] * mask[i] + residual[i];
                        }
                    }
                    None => {
                        for i in 0..width {
                            sum[i] = projected[i] + residual[i];
                        }
                    }
                }
                let n = width as f32;
                let mean = sum.iter().sum::<f32>() / n;
                let variance = sum.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>() / n;
                let r = 1.0 / (variance + eps).sqrt();
                *rstd = r;
                for i in 0..width {
                    let normed = (sum[i] - mean) * r;
                    xhat[i] = normed;
                    out[i] = normed * weight[i] + bias[i];
                }
            }
        });
}

/// LayerNorm backward: `dx` from `dy`, adding into `d_weight` and `d_bias`.
fn norm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    weight: &[f32],
    d_weight: &mut [f32],
    d_bias: &mut [f32],
) -> Vec<f32> {
    let width = weight.len();
    let chunk = width * ROWS_PER_TASK;
    let mut dx = vec![0f32; dy.len()];
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(chunk)
        .zip(dy.par_chunks(chunk))
        .zip(xhat.par_chunks(chunk))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, dy), xhat), rstd)| {
            let mut dw = vec![0f32; width];
            let mut db = vec![0f32; width];
            for (((dx, dy), xhat), &r) in dx
                .chunks_mut(width)
                .zip(dy.chunks(width))
                .zip(xhat.chunks(width))
                .zip(rstd)
            {
                let mut sum_dxhat = 0f32;
                let mut sum_dxhat_xhat = 0f32;
                for i in 0..width {
                    let dxhat = dy[i] * weight[i];
                    sum_dxhat += dxhat;
                    sum_dxhat_xhat += dxhat * xhat[i];
                    dw[i] += dy[i] * xhat[i];
                    db[i] += dy[i];
                }
                let n = width as f32;
                let (mean_dxhat, mean_dxhat_xhat) = (sum_dxhat / n, sum_dxhat_xhat / n);
                for i in 0..width {
                    dx[i] = r * (dy[i] * weight[i] - mean_dxhat - xhat[i] * mean_dxhat_xhat);
                }
            }
            (dw, db)
        })
        .collect();
    for (dw, db) in partials {
        for i in 0..width {
            d_weight[i] += dw[i];
            d_bias[i] += db[i];
        }
    }
    dx
}

/// Element-wise product with an optional mask.
fn masked(values: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    match mask {
        Some(mask) => values
            .par_iter()
            .zip(mask.par_iter())
            .map(|(v, m)| v * m)
            .collect(),
        None => values.to_vec(),
    }
}

impl EncoderLayerOp {
    /// Attention forward for one batch element: fills its `[heads, seq, seq]` probabilities
    /// and its `[seq, hidden]` context rows.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        batch_index: usize,
        seq: usize,
        qkv: &[f32],
        mask_bias: &[f32],
        probs: &mut [f32],
        context: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let row = 3 * hidden;
        let base = batch_index * seq * row;
        let mask = &mask_bias[batch_index * seq..(batch_index + 1) * seq];
        let mut dropped = vec![0f32; seq * seq];
        for h in 0..heads {
            let block = &mut probs[h * seq * seq..(h + 1) * seq * seq];
            // scores = Q · Kᵀ
            matmul(
                block,
                view(0, seq, 1),
                qkv,
                view(base + h * head, row, 1),
                qkv,
                view(base + hidden + h * head, 1, row),
                (seq, seq, head),
                false,
                Parallelism::None,
            );
            for scores in block.chunks_mut(seq) {
                let mut max = f32::NEG_INFINITY;
                for (s, &m) in scores.iter_mut().zip(mask) {
                    *s = *s * scale + m;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inverse = 1.0 / sum;
                for s in scores.iter_mut() {
                    *s *= inverse;
                }
            }
            let weights: &[f32] = match &self.dropout.attention_probs {
                Some(masks) => {
                    let offset = (batch_index * heads + h) * seq * seq;
                    let masks = &masks[offset..offset + seq * seq];
                    for ((d, &p), &m) in dropped.iter_mut().zip(block.iter()).zip(masks) {
                        *d = p * m;
                    }
                    &dropped
                }
                None => block,
            };
            // context = P · V
            matmul(
                context,
                view(h * head, hidden, 1),
                weights,
                view(0, seq, 1),
                qkv,
                view(base + 2 * hidden + h * head, row, 1),
                (seq, head, seq),
                false,
                Parallelism::None,
            );
        }
    }

    /// Attention backward for one batch element: writes its rows of `d_qkv` (the chunk
    /// passed in), reading its rows of the full `qkv` and `d_context`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        batch_index: usize,
        seq: usize,
        qkv: &[f32],
        probs: &[f32],
        d_context: &[f32],
        d_qkv: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let row = 3 * hidden;
        let base = batch_index * seq * row;
        let context_base = batch_index * seq * hidden;
        let mut dropped = vec![0f32; seq * seq];
        let mut d_scores = vec![0f32; seq * seq];
        for h in 0..heads {
            let p = &probs[h * seq * seq..(h + 1) * seq * seq];
            let masks = self.dropout.attention_probs.as_ref().map(|masks| {
                let offset = (batch_index * heads + h) * seq * seq;
                &masks[offset..offset + seq * seq]
            });
            let weights: &[f32] = match masks {
                Some(masks) => {
                    for ((d, &p), &m) in dropped.iter_mut().zip(p).zip(masks) {
                        *d = p * m;
                    }
                    &dropped
                }
                None => p,
            };
            // dV = Pᵀ · dC
            matmul(
                d_qkv,
                view(2 * hidden + h * head, row, 1),
                weights,
                view(0, 1, seq),
                d_context,
                view(context_base + h * head, hidden, 1),
                (seq, head, seq),
                false,
                Parallelism::None,
            );
            // dP = dC · Vᵀ
            matmul(
                &mut d_scores,
                view(0, seq, 1),
                d_context,
                view(context_base + h * head, hidden, 1),
                qkv,
                view(base + 2 * hidden + h * head, 1, row),
                (seq, seq, head),
                false,
                Parallelism::None,
            );
            // Through dropout and softmax: dS = scale · P ⊙ (dP − Σ dP·P).
            for (i, (ds, p)) in d_scores.chunks_mut(seq).zip(p.chunks(seq)).enumerate() {
                if let Some(masks) = masks {
                    for (d, &m) in ds.iter_mut().zip(&masks[i * seq..(i + 1) * seq]) {
                        *d *= m;
                    }
                }
                let dot: f32 = ds.iter().zip(p).map(|(d, p)| d * p).sum();
                for (d, &p) in ds.iter_mut().zip(p) {
                    *d = scale * p * (*d - dot);
                }
            }
            // dQ = dS · K
            matmul(
                d_qkv,
                view(h * head, row, 1),
                &d_scores,
                view(0, seq, 1),
                qkv,
                view(base + hidden + h * head, row, 1),
                (seq, head, seq),
                false,
                Parallelism::None,
            );
            // dK = dSᵀ · Q
            matmul(
                d_qkv,
                view(hidden + h * head, row, 1),
                &d_scores,
                view(0, 1, seq),
                qkv,
                view(base + h * head, row, 1),
                (seq, head, seq),
                false,
                Parallelism::None,
            );
        }
    }

    fn forward(
        &self,
        x: &[f32],
        mask_bias: &[f32],
        params: &[f32],
        (batch, seq): (usize, usize),
    ) -> (Vec<f32>, Saved) {
        let LayerDims {
            hidden,
            intermediate,
            heads,
            eps,
        } = self.dims;
        let o = self.dims.offsets();
        let rows = batch * seq;
        let qkv = linear(x, &params[o.qkv_weight], &params[o.qkv_bias], rows);

        let mut probs = vec![0f32; batch * heads * seq * seq];
        let mut context = vec![0f32; rows * hidden];
        probs
            .par_chunks_mut(heads * seq * seq)
            .zip(context.par_chunks_mut(seq * hidden))
            .enumerate()
            .for_each(|(b, (probs, context))| {
                self.attention_forward(b, seq, &qkv, mask_bias, probs, context)
            });

        let projected = linear(
            &context,
            &params[o.output_weight],
            &params[o.output_bias],
            rows,
        );
        let mut hidden1 = vec![0f32; rows * hidden];
        let mut xhat1 = vec![0f32; rows * hidden];
        let mut rstd1 = vec![0f32; rows];
        add_and_norm(
            &projected,
            self.dropout.attention_output.as_deref(),
            x,
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
            rows,
        );
        let activated: Vec<f32> = inner
            .par_iter()
            .with_min_len(4096)
            .map(|&x| super::fused::gelu_value(x))
            .collect();
        let projected = linear(
            &activated,
            &params[o.outer_weight],
            &params[o.outer_bias],
            rows,
        );
        let mut output = vec![0f32; rows * hidden];
        let mut xhat2 = vec![0f32; rows * hidden];
        let mut rstd2 = vec![0f32; rows];
        add_and_norm(
            &projected,
            self.dropout.feed_forward_output.as_deref(),
            &hidden1,
            &params[o.norm2_weight],
            &params[o.norm2_bias],
            eps,
            &mut output,
            &mut xhat2,
            &mut rstd2,
        );
        debug_assert_eq!(intermediate * rows, inner.len());
        (
            output,
            Saved {
                qkv,
                probs,
                context,
                xhat1,
                rstd1,
                hidden1,
                inner,
                activated,
                xhat2,
                rstd2,
            },
        )
    }

    /// Gradients of the input and of the packed parameters, given the output's gradient.
    fn backward(
        &self,
        x: &[f32],
        params: &[f32],
        saved: &Saved,
        d_output: &[f32],
        (batch, seq): (usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let o = self.dims.offsets();
        let rows = batch * seq;
        let mut grads = vec![0f32; o.total];
        let ParamGrads {
            qkv_weight: g_qkv_w,
            qkv_bias: g_qkv_b,
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
        } = ParamGrads::split(&mut grads, &o);

        // Second LayerNorm; its input was dropout(outer) + hidden1.
        let d_sum2 = norm_backward(
            d_output,
            &saved.xhat2,
            &saved.rstd2,
            &params[o.norm2_weight],
            g_n2_w,
            g_n2_b,
        );
        let d_outer = masked(&d_sum2, self.dropout.feed_forward_output.as_deref());
        let mut d_hidden1 = d_sum2;
        let mut d_activated = vec![0f32; rows * self.dims.intermediate];
        linear_backward(
            &d_outer,
            &saved.activated,
            &params[o.outer_weight],
            rows,
            g_outer_w,
            g_outer_b,
            Some((&mut d_activated, false)),
        );
        drop(d_outer);
        let d_inner = &mut d_activated;
        d_inner
            .par_iter_mut()
            .with_min_len(4096)
            .zip(saved.inner.par_iter())
            .for_each(|(d, &x)| *d *= super::fused::gelu_derivative(x));
        linear_backward(
            d_inner,
            &saved.hidden1,
            &params[o.inner_weight],
            rows,
            g_in_w,
            g_in_b,
            Some((&mut d_hidden1, true)),
        );
        drop(d_activated);

        // First LayerNorm; its input was dropout(projected context) + x.
        let d_sum1 = norm_backward(
            &d_hidden1,
            &saved.xhat1,
            &saved.rstd1,
            &params[o.norm1_weight],
            g_n1_w,
            g_n1_b,
        );
        drop(d_hidden1);
        let d_projected = masked(&d_sum1, self.dropout.attention_output.as_deref());
        let mut d_x = d_sum1;
        let mut d_context = vec![0f32; rows * hidden];
        linear_backward(
            &d_projected,
            &saved.context,
            &params[o.output_weight],
            rows,
            g_out_w,
            g_out_b,
            Some((&mut d_context, false)),
        );
        drop(d_projected);

        let mut d_qkv = vec![0f32; rows * 3 * hidden];
        d_qkv
            .par_chunks_mut(seq * 3 * hidden)
            .zip(saved.probs.par_chunks(heads * seq * seq))
            .enumerate()
            .for_each(|(b, (d_qkv, probs))| {
                self.attention_backward(b, seq, &saved.qkv, probs, &d_context, d_qkv)
            });
        drop(d_context);
        linear_backward(
            &d_qkv,
            x,
            &params[o.qkv_weight],
            rows,
            g_qkv_w,
            g_qkv_b,
            Some((&mut d_x, true)),
        );
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
        let (output, saved) = self.forward(x, mask_bias, params, (batch, seq));
        if self.keep_activations {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
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
        let saved = self
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
        let (batch, seq, _) = hidden.dims3()?;
        let x = hidden.flatten_all()?.to_vec1::<f32>()?;
        let p = params.to_vec1::<f32>()?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (d_x, d_params) = self.backward(&x, &p, &saved, &g, (batch, seq));
        let device = hidden.device();
        Ok((
            Some(Tensor::from_vec(d_x, hidden.shape(), device)?),
            None,
            Some(Tensor::from_vec(d_params, params.shape(), device)?),
        ))
    }
}
