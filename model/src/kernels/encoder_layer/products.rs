//! The strided matrix products (through `gemm`, on views: no transposes, no head-split
//! copies) and the linear projections built on them, forward and backward.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{threads, ROWS_PER_TASK};

/// A strided matrix view for [`matmul`]: element `(r, c)` is at `offset + r·row + c·col`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) offset: usize,
    pub(crate) row: usize,
    pub(crate) col: usize,
}

pub(crate) const fn view(offset: usize, row: usize, col: usize) -> View {
    View { offset, row, col }
}

/// Highest index a `rows × cols` view touches, plus one.
pub(crate) fn extent(v: View, rows: usize, cols: usize) -> usize {
    if rows == 0 || cols == 0 {
        return v.offset;
    }
    v.offset + (rows - 1) * v.row + (cols - 1) * v.col + 1
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` with the `gemm` crate (the one candle's CPU
/// backend uses), on strided views.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
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
pub(crate) fn repeat_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(bias.len() * rows);
    for _ in 0..rows {
        out.extend_from_slice(bias);
    }
    out
}

/// `out = x · weightᵀ` for `x [rows, in]` and `weight [out, in]` (a layer without bias).
pub(crate) fn project(x: &[f32], weight: &[f32], rows: usize, width_out: usize) -> Vec<f32> {
    let width_in = weight.len() / width_out.max(1);
    let mut out = vec![0f32; rows * width_out];
    rows_in_parallel(&mut out, x, weight, (rows, width_out, width_in), false);
    out
}

/// `out [+]= x · weightᵀ`, the rows shared out over the threads, each block on one thread:
/// without synchronisation inside the product, which beats all threads on one product when
/// there are rows enough for each (as in the backward pass's paired products).
fn rows_in_parallel(
    out: &mut [f32],
    x: &[f32],
    weight: &[f32],
    (rows, width_out, width_in): (usize, usize, usize),
    accumulate: bool,
) {
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || rows < 64 * threads {
        matmul(
            out,
            view(0, width_out, 1),
            x,
            view(0, width_in, 1),
            weight,
            view(0, 1, width_in),
            (rows, width_out, width_in),
            accumulate,
            super::threads(),
        );
        return;
    }
    let block = rows.div_ceil(threads);
    out.par_chunks_mut(block * width_out)
        .zip(x.par_chunks(block * width_in))
        .for_each(|(out, x)| {
            let rows = x.len() / width_in;
            matmul(
                out,
                view(0, width_out, 1),
                x,
                view(0, width_in, 1),
                weight,
                view(0, 1, width_in),
                (rows, width_out, width_in),
                accumulate,
                Parallelism::None,
            );
        });
}

/// `out = x · weightᵀ + bias` for `x [rows, in]` and `weight [out, in]`.
pub(crate) fn linear(x: &[f32], weight: &[f32], bias: &[f32], rows: usize) -> Vec<f32> {
    let (width_out, width_in) = (bias.len(), weight.len() / bias.len());
    let mut out = repeat_rows(bias, rows);
    rows_in_parallel(&mut out, x, weight, (rows, width_out, width_in), true);
    out
}

/// The gradients of a linear layer `y = x · weightᵀ + bias` given `dy [rows, out]`: adds
/// `dyᵀ · x` to `d_weight`, the column sums of `dy` to `d_bias` (a layer with a bias), and
/// writes or accumulates `dy · weight` into `dx` when asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    rows: usize,
    d_weight: &mut [f32],
    d_bias: Option<&mut [f32]>,
    dx: Option<(&mut [f32], bool)>,
) {
    let width_out = dy.len() / rows.max(1);
    let width_in = weight.len() / width_out.max(1);
    let weight_gradient = |parallelism| {
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
        if let Some(d_bias) = d_bias {
            add_column_sums(dy, width_out, d_bias);
        }
    };
    let input_gradient = |dx: &mut [f32], accumulate, parallelism| {
        input_gradient(dy, weight, rows, dx, accumulate, parallelism)
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

/// `dx [+]= dy · weight` for `dy [rows, out]` and `weight [out, in]`: a linear layer's input
/// gradient (alone, for a frozen layer).
pub(crate) fn input_gradient(
    dy: &[f32],
    weight: &[f32],
    rows: usize,
    dx: &mut [f32],
    accumulate: bool,
    parallelism: Parallelism,
) {
    let width_out = dy.len() / rows.max(1);
    let width_in = weight.len() / width_out.max(1);
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
}

/// Adds the column sums of a `[rows, width]` matrix to `sums`.
pub(crate) fn add_column_sums(matrix: &[f32], width: usize, sums: &mut [f32]) {
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
