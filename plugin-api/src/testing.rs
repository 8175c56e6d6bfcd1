//! Test helpers for loss authors (the `testing` feature): a deterministic stream of test
//! inputs, and a check of a loss's gradient against central finite differences of its loss.
//! Use it from your tests with `crosstrain-plugin-api = { ..., features = ["testing"] }` in
//! `[dev-dependencies]`.

use crate::author::LossPlugin;
use crate::types::{Labels, PairPlan};

/// A deterministic pseudo-random stream for test inputs.
pub struct TestRng(u64);

impl TestRng {
    /// A stream for this seed.
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high).
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// `n` logits in [-3, 3), rounded to f32.
    pub fn logits(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.range(-3.0, 3.0) as f32).collect()
    }

    /// `n` distinct logits at least 0.1 apart, shuffled: a finite-difference step cannot
    /// reorder them, so sort-based losses (LambdaLoss, RankNet) stay on one smooth piece.
    pub fn separated_logits(&mut self, n: usize) -> Vec<f32> {
        let mut values: Vec<f32> = (0..n)
            .map(|i| (-2.0 + 0.15 * i as f64 + self.range(0.0, 0.04)) as f32)
            .collect();
        for i in (1..n).rev() {
            let j = (self.uniform() * (i + 1) as f64) as usize;
            values.swap(i, j);
        }
        values
    }
}

/// Compares the analytic gradient with central differences of the loss. The logits cross
/// the boundary as f32, so the step is large enough for f32 rounding to stay small.
pub fn assert_gradient_matches<L: LossPlugin>(
    loss: &L,
    plan: &PairPlan,
    logits: &[f32],
    num_labels: usize,
    labels: &Labels,
) {
    let output = loss
        .compute(plan, logits, num_labels, labels)
        .expect("compute succeeds on the test batch");
    assert!(output.loss.is_finite(), "loss {}", output.loss);
    let step = 1e-2f32;
    for index in 0..logits.len() {
        let mut up = logits.to_vec();
        up[index] += step;
        let mut down = logits.to_vec();
        down[index] -= step;
        let delta_up = up[index] - logits[index];
        let delta_down = logits[index] - down[index];
        let loss_up = loss.compute(plan, &up, num_labels, labels).unwrap().loss;
        let loss_down = loss.compute(plan, &down, num_labels, labels).unwrap().loss;
        let numeric = (loss_up - loss_down) / f64::from(delta_up + delta_down);
        let analytic = output.grad[index];
        assert!(
            (numeric - analytic).abs() <= 2e-3 * (1.0 + analytic.abs()),
            "{}: d loss / d logit[{index}] analytic {analytic} vs numeric {numeric}",
            L::NAME
        );
    }
}
