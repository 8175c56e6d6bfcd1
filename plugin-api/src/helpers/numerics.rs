//! Numerically stable scalar functions in f64: what losses computed "to the reference's
//! numbers" need (torch computes these in a stable form too).

/// The logistic sigmoid, stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^x) without overflow.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// log σ(x) = −softplus(−x), stable for large |x|.
pub fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

/// log Σ e^x over `values` (−∞ for an empty slice).
pub fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// σ(z_i − z_j) and log σ(z_i − z_j) for every pair of a list of `z = scale · score`, with one
/// exp per document instead of one per pair: σ(z_i − z_j) = e^{z_i} / (e^{z_i} + e^{z_j}).
/// Shifted by the maximum so nothing overflows; a pair whose exponentials underflow falls back
/// to the direct formula.
pub struct PairwiseLogistic {
    shifted: Vec<f64>,
    exps: Vec<f64>,
}

impl PairwiseLogistic {
    /// Precomputes the exponentials of `scale · scores`.
    pub fn new(scores: &[f64], scale: f64) -> Self {
        let max = scores
            .iter()
            .map(|s| scale * s)
            .fold(f64::NEG_INFINITY, f64::max);
        let shifted: Vec<f64> = scores.iter().map(|s| scale * s - max).collect();
        let exps = shifted.iter().map(|z| z.exp()).collect();
        Self { shifted, exps }
    }

    /// σ(z_i − z_j).
    #[inline]
    pub fn sigmoid(&self, i: usize, j: usize) -> f64 {
        let total = self.exps[i] + self.exps[j];
        if total > 1e-290 {
            self.exps[i] / total
        } else {
            sigmoid(self.shifted[i] - self.shifted[j])
        }
    }

    /// (log σ(z_i − z_j), σ(z_j − z_i)): a pairwise log-likelihood and its derivative factor.
    #[inline]
    pub fn log_sigmoid_and_complement(&self, i: usize, j: usize) -> (f64, f64) {
        let total = self.exps[i] + self.exps[j];
        if total > 1e-290 {
            (self.shifted[i] - total.ln(), self.exps[j] / total)
        } else {
            let x = self.shifted[i] - self.shifted[j];
            (-softplus(-x), sigmoid(-x))
        }
    }
}

/// softmax over `values`.
pub fn softmax(values: &[f64]) -> Vec<f64> {
    let lse = log_sum_exp(values);
    values.iter().map(|v| (v - lse).exp()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helpers::config::Activation;

    #[test]
    fn activations_and_their_derivatives() {
        for activation in [Activation::Identity, Activation::Sigmoid, Activation::Tanh] {
            for x in [-3.0, -0.5, 0.0, 0.7, 4.0] {
                let h = 1e-6;
                let numeric = (activation.apply(x + h) - activation.apply(x - h)) / (2.0 * h);
                assert!((numeric - activation.derivative(x)).abs() < 1e-8);
            }
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((log_sigmoid(0.0) + 2f64.ln()).abs() < 1e-15);
        assert_eq!(log_sigmoid(-800.0), -800.0);
        assert!(log_sigmoid(800.0).abs() < 1e-300);
        assert!((softplus(-800.0)).abs() < 1e-300);
        assert_eq!(softplus(800.0), 800.0);
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn pairwise_logistic_matches_the_direct_formula_even_when_exponentials_underflow() {
        let scores = [0.5, -2.0, 3.0, -900.0, -905.0];
        let pairs = PairwiseLogistic::new(&scores, 1.5);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                let x = 1.5 * (scores[i] - scores[j]);
                let (log_p, complement) = pairs.log_sigmoid_and_complement(i, j);
                assert!((log_p - (-softplus(-x))).abs() < 1e-12, "{i} {j}");
                assert!((complement - sigmoid(-x)).abs() < 1e-15, "{i} {j}");
                assert!((pairs.sigmoid(i, j) - sigmoid(x)).abs() < 1e-15, "{i} {j}");
            }
        }
    }
}
