//! Helpers shared by the model's unit tests.

use candle_core::{Device, Tensor};

/// A tensor of uniform values in `[-scale, scale)`, reproducible from `seed`.
pub fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = crosstrain_rng::SeededRng::new(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The largest absolute element.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest absolute difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// `output` at the compared rows (`rows`, broadcast over it; zero elsewhere) and the
/// gradients of a random projection of it: what the fused-against-composite layer tests
/// compare, input and parameters alike.
pub fn masked_output_and_gradients(
    output: Tensor,
    rows: &Tensor,
) -> (Tensor, candle_core::backprop::GradStore) {
    let output = output.broadcast_mul(rows).unwrap();
    let upstream = random(output.dims(), 7, 1.0).broadcast_mul(rows).unwrap();
    let grads = (&output * &upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    (output, grads)
}
