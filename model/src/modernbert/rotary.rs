//! Rotary position embeddings (`rotate_half` form, as transformers' ModernBERT): the query and
//! key of position `p` rotated by `p · θ^(−2i/d)` in the plane of their dimensions `i` and
//! `i + d/2`.

use candle_core::{Device, Result, Tensor, D};

use crate::kernels::modernbert_layer::RotaryTables;

/// `(cos, sin)`, each `[seq_len, head_size]`, for `theta`.
pub fn cos_sin(
    seq_len: usize,
    head_size: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = cos_sin_values(seq_len, head_size, theta);
    Ok((
        Tensor::from_vec(cos, (seq_len, head_size), device)?,
        Tensor::from_vec(sin, (seq_len, head_size), device)?,
    ))
}

/// The tables as the fused CPU layer takes them; the composite layer's tensors hold the same
/// numbers.
pub fn tables(seq_len: usize, head_size: usize, theta: f64) -> RotaryTables {
    let (cos, sin) = cos_sin_values(seq_len, head_size, theta);
    RotaryTables {
        cos,
        sin,
        head_size,
    }
}

/// The same tables as row-major values.
fn cos_sin_values(seq_len: usize, head_size: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_size / 2;
    // As torch: inverse frequencies and the angle products in f32.
    let inverse: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_size as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(seq_len * head_size);
    let mut sin = Vec::with_capacity(seq_len * head_size);
    for position in 0..seq_len {
        for _ in 0..2 {
            for frequency in &inverse {
                let angle = position as f32 * frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// `x · cos + rotate_half(x) · sin` for `x` of `[b, heads, s, head_size]`.
pub fn apply(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let head_size = xs.dim(D::Minus1)?;
    let half = head_size / 2;
    let first = xs.narrow(D::Minus1, 0, half)?;
    let second = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    let cos = cos.to_dtype(xs.dtype())?;
    let sin = sin.to_dtype(xs.dtype())?;
    xs.broadcast_mul(&cos)?
        .broadcast_add(&rotated.broadcast_mul(&sin)?)
}
