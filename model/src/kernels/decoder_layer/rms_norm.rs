//! RMSNorm on packed rows, forward and backward, as the decoders compute it: whole rows
//! (the layer's two norms) or each head's slice of a row (Qwen3's q/k norms).

use rayon::prelude::*;

use crate::kernels::encoder_layer::ROWS_PER_TASK;
use crate::kernels::simd;

/// RMS-normalises in place each `width`-wide unit among the first `normed_width` columns of
/// every `row_width`-wide row (`x / √(mean(x²) + eps) · weight`, as transformers computes
/// it) and returns 1/rms of each unit, row by row.
pub(super) fn rms_norm_in_place(
    values: &mut [f32],
    weight: &[f32],
    row_width: usize,
    normed_width: usize,
    eps: f32,
) -> Vec<f32> {
    let width = weight.len();
    let units = normed_width / width;
    let rows = values.len() / row_width.max(1);
    let mut rstd = vec![0f32; rows * units];
    values
        .par_chunks_mut(row_width * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(units * ROWS_PER_TASK))
        .for_each(|(values, rstd)| {
            for (row, rstd) in values.chunks_mut(row_width).zip(rstd.chunks_mut(units)) {
                for (unit, r) in row[..normed_width].chunks_mut(width).zip(rstd) {
                    let root = (simd::dot(unit, unit) / width as f32 + eps).sqrt();
                    *r = 1.0 / root;
                    for (v, &w) in unit.iter_mut().zip(weight) {
                        *v = *v / root * w;
                    }
                }
            }
        });
    rstd
}

/// The norm's output again from its input and kept 1/rms (whole rows).
pub(super) fn rms_norm_output(x: &[f32], rstd: &[f32], weight: &[f32]) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|((out, x), rstd)| {
            for ((out, x), &r) in out.chunks_mut(width).zip(x.chunks(width)).zip(rstd) {
                for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
                    *o = x * r * w;
                }
            }
        });
    out
}

/// The backward pass of [`rms_norm_in_place`]: turns the output gradient in `grad` into the
/// input gradient in place (`r·(g − x̂·mean(x̂ ⊙ g))` with `g = weight ⊙ grad`, `x̂ = x·r`)
/// and adds the weight's gradient (`Σ grad ⊙ x̂`) to `d_weight`; `x` is the norm's input in
/// `grad`'s layout.
pub(super) fn rms_norm_backward_in_place(
    grad: &mut [f32],
    x: &[f32],
    rstd: &[f32],
    weight: &[f32],
    row_width: usize,
    normed_width: usize,
    d_weight: &mut [f32],
) {
    let width = weight.len();
    let units = normed_width / width;
    let partials: Vec<Vec<f32>> = grad
        .par_chunks_mut(row_width * ROWS_PER_TASK)
        .zip(x.par_chunks(row_width * ROWS_PER_TASK))
        .zip(rstd.par_chunks(units * ROWS_PER_TASK))
        .map(|((grad, x), rstd)| {
            let mut partial = vec![0f32; width];
            let mut normed = vec![0f32; width];
            let mut scaled = vec![0f32; width];
            for ((grad, x), rstd) in grad
                .chunks_mut(row_width)
                .zip(x.chunks(row_width))
                .zip(rstd.chunks(units))
            {
                for ((grad, x), &r) in grad[..normed_width]
                    .chunks_mut(width)
                    .zip(x[..normed_width].chunks(width))
                    .zip(rstd)
                {
                    for (((n, s), (&x, &g)), (&w, p)) in normed
                        .iter_mut()
                        .zip(scaled.iter_mut())
                        .zip(x.iter().zip(grad.iter()))
                        .zip(weight.iter().zip(partial.iter_mut()))
                    {
                        *n = x * r;
                        *s = w * g;
                        *p += g * *n;
                    }
                    let mean = simd::dot(&normed, &scaled) / width as f32;
                    for ((g, &n), &s) in grad.iter_mut().zip(&normed).zip(&scaled) {
                        *g = r * (s - n * mean);
                    }
                }
            }
            partial
        })
        .collect();
    for partial in partials {
        for (d, p) in d_weight.iter_mut().zip(partial) {
            *d += p;
        }
    }
}
