//! Rotary position embeddings (the `default` type): each head's dimensions in two halves,
//! rotated by `position · θ^(−2i/d)`. Positions are 0..L−1 on every row, pads included, as
//! transformers numbers a left-padded batch without position ids.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::kernels::decoder_layer::RotaryTables;

/// The cos and sin values `[length, head_dim]` row-major, computed in f64 and rounded once
/// (transformers computes them in f32; f64 is the closer match to the exact reference); the
/// fused CPU layer takes them as they are.
pub fn rotary_tables(length: usize, head_dim: usize, theta: f64) -> RotaryTables {
    let half = head_dim / 2;
    let inverse: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(length * head_dim);
    let mut sin = Vec::with_capacity(length * head_dim);
    for position in 0..length {
        // The two halves share the frequencies (`cat(freqs, freqs)`).
        for _half in 0..2 {
            for frequency in &inverse {
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    RotaryTables {
        cos,
        sin,
        head_size: head_dim,
    }
}

/// The cos and sin tables `[L, head_dim]` of a sequence length.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// The tables for `length` positions ([`rotary_tables`]).
    pub fn new(
        length: usize,
        head_dim: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tables = rotary_tables(length, head_dim, theta);
        let table = |values: Vec<f32>| {
            Tensor::from_vec(values, (length, head_dim), device)?.to_dtype(dtype)
        };
        Ok(Self {
            cos: table(tables.cos)?,
            sin: table(tables.sin)?,
        })
    }

    /// The `[L, head_dim]` cos and sin tables (an exporter writes them as constants).
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// `x · cos + rotate_half(x) · sin` for `x` of shape `[batch, heads, L, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let first = x.narrow(D::Minus1, 0, half)?;
        let second = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
        x.broadcast_mul(&self.cos)?
            .add(&rotated.broadcast_mul(&self.sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity_and_rotation_keeps_the_norm() {
        let rotary = Rotary::new(3, 4, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap()
            .broadcast_as((1, 1, 3, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let rotated = rotary.apply(&x).unwrap();
        let rows: Vec<Vec<f32>> = rotated
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(rows[0], vec![1.0, 2.0, 3.0, 4.0]);
        for row in &rows {
            // Each pair (i, i + half) is rotated by an angle: its length is kept.
            for i in 0..2 {
                let before = [1f32, 2.0, 3.0, 4.0];
                let length = (before[i].powi(2) + before[i + 2].powi(2)).sqrt();
                let after = (row[i].powi(2) + row[i + 2].powi(2)).sqrt();
                assert!((length - after).abs() < 1e-5);
            }
        }
        // Position 1, first pair: angle 1 rad.
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((rows[1][0] - (1.0 * c - 3.0 * s)).abs() < 1e-6);
        assert!((rows[1][2] - (3.0 * c + 1.0 * s)).abs() < 1e-6);
    }
}
