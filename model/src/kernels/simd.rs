//! Element-wise kernels of the fused CPU ops (GELU, softmax, dropout masks), written as plain
//! loops that the compiler vectorises, and compiled three times: for the build's baseline
//! CPU, for AVX2 + FMA and for AVX-512 (F, VL, DQ: DQ has the 64-bit multiply the dropout
//! stream needs), picked at run time. Every variant runs the same operations in the same
//! order (reductions keep their fixed accumulators), so the results do not depend on which.
//!
//! Why: a release build targets baseline x86-64 (SSE2) so the binary runs anywhere, which
//! leaves these loops at 4 lanes and calls libm's scalar `exp` per element; GELU and softmax
//! exponentials were 8% of a training step. Here `exp` is a branch-free polynomial that
//! vectorises, and on AVX2 machines the loops run 8 lanes wide with fused multiply-adds.

/// Defines `pub fn $name(...)` that runs `$body` compiled with AVX-512 or AVX2 + FMA when the
/// CPU has them, and for the baseline otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: `avx512` only requires AVX-512F/VL/DQ, AVX2 and FMA, which the
                    // CPU was just found to have (AVX-512F implies AVX2).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: `avx2` only requires the AVX2 and FMA instruction sets, which
                    // the CPU was just found to have.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Independent accumulators for reductions: f32 addition is not associative, so the
/// compiler keeps a plain `sum += x` loop scalar; eight lanes summed at the end vectorise.
const LANES: usize = 8;

/// Σ xs.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Σ a·b.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut lanes = [0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += x * y;
        }
    }
    let done = len / LANES * LANES;
    let tail: f32 = a[done..].iter().zip(&b[done..]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The largest element (−∞ for none).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// e^x in f32 within 2 ulp (Cephes' `expf`: x = n·ln2 + r, a degree-6 polynomial in r, and
/// 2^n from the exponent bits), branch-free so it vectorises. Exactly 0 below −87.3 (where
/// f32's e^x is subnormal; masked attention scores rely on an exact 0) and +∞ above 88.37
/// (a little early: the callers only take exponentials of numbers ≤ 0); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(-87.3, 88.37);
    let n = (clamped * std::f32::consts::LOG2_E + 0.5).floor();
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let mantissa = poly * (r * r) + r + 1.0;
    // 2^n: n + 127 is an integer in 1..=254; adding 2^23 puts it in the low mantissa bits,
    // and shifting those into the exponent field builds the power of two (no float-to-int
    // conversion, which does not vectorise well).
    let scale = f32::from_bits((n + 127.0 + 8_388_608.0).to_bits() << 23);
    let value = mantissa * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.37 {
        f32::INFINITY
    } else {
        value
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7, plus f32 rounding in
/// `1 − poly·e^(−x²)` near 0 (6e-7 in all), so a GELU output is off by at most 3e-7·|x|.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let magnitude = 1.0 - poly * exp(-a * a);
    magnitude.copysign(x)
}

/// Exact GELU, `x · Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d/dx x·Φ(x) = Φ(x) + x·φ(x).
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
    cdf + x * pdf
}

/// σ(x) = 1 / (1 + e^(−x)) (0 where e^(−x) overflows, never NaN).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

dispatch! {
    /// SwiGLU's gated product: `out[i] = silu(gate[i]) · up[i]`, silu(x) = x·σ(x).
    pub fn swiglu_slice(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

dispatch! {
    /// The SwiGLU backward pass: from the gated product's gradient `d_out`, the gradients
    /// of the gate (`d_out · up · σ(g)(1 + g(1 − σ(g)))`) and of the up projection
    /// (`d_out · silu(g)`).
    pub fn swiglu_backward_slice(
        gate: &[f32],
        up: &[f32],
        d_out: &[f32],
        d_gate: &mut [f32],
        d_up: &mut [f32],
    ) {
        for ((((dg, du), &g), &u), &d) in d_gate
            .iter_mut()
            .zip(d_up.iter_mut())
            .zip(gate)
            .zip(up)
            .zip(d_out)
        {
            let s = sigmoid(g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

dispatch! {
    /// `out[i] = gelu(xs[i])`.
    pub fn gelu_slice(xs: &[f32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = gelu(x);
        }
    }
}

dispatch! {
    /// `grad[i] *= gelu'(xs[i])`: the GELU backward pass in place.
    pub fn gelu_backward_slice(grad: &mut [f32], xs: &[f32]) {
        for (g, &x) in grad.iter_mut().zip(xs) {
            *g *= gelu_derivative(x);
        }
    }
}

dispatch! {
    /// Softmax of `scores · scale + mask` in place over each `width`-wide row of `block`.
    pub fn softmax_rows(block: &mut [f32], width: usize, mask: &[f32], scale: f32) {
        for scores in block.chunks_mut(width) {
            for (s, &m) in scores.iter_mut().zip(mask) {
                *s = *s * scale + m;
            }
            let largest = max(scores);
            for s in scores.iter_mut() {
                *s = exp(*s - largest);
            }
            let inverse = 1.0 / sum(scores);
            for s in scores.iter_mut() {
                *s *= inverse;
            }
        }
    }
}

dispatch! {
    /// Softmax backward in place over `width`-wide rows:
    /// `grad = scale · p ⊙ (grad − Σ grad·p)`.
    pub fn softmax_backward_rows(grad: &mut [f32], probs: &[f32], width: usize, scale: f32) {
        for (g, p) in grad.chunks_mut(width).zip(probs.chunks(width)) {
            let projection = dot(g, p);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - projection);
            }
        }
    }
}

dispatch! {
    /// LayerNorm of each `width`-wide row of `sums` (already the residual sums): writes the
    /// normalised rows to `xhat`, `xhat · weight + bias` to `out` and 1/std to `rstd`.
    pub fn layer_norm_rows(
        sums: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
        out: &mut [f32],
        xhat: &mut [f32],
        rstd: &mut [f32],
    ) {
        let width = weight.len();
        let n = width as f32;
        for (((row, out), xhat), rstd) in sums
            .chunks(width)
            .zip(out.chunks_mut(width))
            .zip(xhat.chunks_mut(width))
            .zip(rstd.iter_mut())
        {
            let mean = sum(row) / n;
            for (x, &v) in xhat.iter_mut().zip(row) {
                *x = v - mean;
            }
            let variance = dot(xhat, xhat) / n;
            let r = 1.0 / (variance + eps).sqrt();
            *rstd = r;
            for (((o, x), &w), &b) in out.iter_mut().zip(xhat.iter_mut()).zip(weight).zip(bias) {
                *x *= r;
                *o = *x * w + b;
            }
        }
    }
}

dispatch! {
    /// LayerNorm backward over `width`-wide rows: `dx` from `dy`, adding the rows' parts of
    /// the weight and bias gradients to `d_weight` and `d_bias`.
    pub fn layer_norm_backward_rows(
        dy: &[f32],
        xhat: &[f32],
        rstd: &[f32],
        weight: &[f32],
        dx: &mut [f32],
        d_weight: &mut [f32],
        d_bias: &mut [f32],
    ) {
        let width = weight.len();
        let n = width as f32;
        for (((dy, xhat), &r), dx) in dy
            .chunks(width)
            .zip(xhat.chunks(width))
            .zip(rstd)
            .zip(dx.chunks_mut(width))
        {
            // dxhat = dy · weight, kept in dx until the end.
            for ((d, &g), &w) in dx.iter_mut().zip(dy).zip(weight) {
                *d = g * w;
            }
            let mean_dxhat = sum(dx) / n;
            let mean_dxhat_xhat = dot(dx, xhat) / n;
            for (d, &x) in dx.iter_mut().zip(xhat) {
                *d = r * (*d - mean_dxhat - x * mean_dxhat_xhat);
            }
            let parameter_grads = d_weight.iter_mut().zip(d_bias.iter_mut());
            for (((dw, db), &g), &x) in parameter_grads.zip(dy).zip(xhat) {
                *dw += g * x;
                *db += g;
            }
        }
    }
}

dispatch! {
    /// `out[i] = a[i] · b[i]`.
    pub fn product(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a * b;
        }
    }
}

dispatch! {
    /// Dropout keep-mask values from the SplitMix64 stream at `state`: value `i` is
    /// `scale` where draw `first_draw + i`'s top 24 bits reach `threshold`, else 0. Each
    /// draw is computed from its position (no carried state), so the loop vectorises.
    pub fn dropout_mask(out: &mut [f32], state: u64, first_draw: u64, threshold: u64, scale: f32) {
        for (i, value) in out.iter_mut().enumerate() {
            let draw = crosstrain_rng::SeededRng::draw_at(state, first_draw + i as u64);
            *value = if (draw >> 40) >= threshold { scale } else { 0.0 };
        }
    }
}

/// The per-step constants of an AdamW update (torch's formulation).
#[derive(Debug, Clone, Copy)]
pub struct AdamwStep {
    /// Multiplier of the parameter for decoupled weight decay (1 − lr·wd, or 1).
    pub decay: f32,
    /// β₁ and β₂.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// lr / (1 − β₁ᵗ).
    pub step_size: f32,
    /// √(1 − β₂ᵗ).
    pub sqrt_bias_correction2: f32,
    /// ε.
    pub eps: f32,
}

dispatch! {
    /// One AdamW update of a block of parameters: moments in place, new values to `theta_out`.
    pub fn adamw(
        theta: &[f32],
        grad: &[f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
        theta_out: &mut [f32],
        step: AdamwStep,
    ) {
        let AdamwStep { decay, beta1, beta2, step_size, sqrt_bias_correction2, eps } = step;
        for ((((out, &p), &g), m), v) in theta_out
            .iter_mut()
            .zip(theta)
            .zip(grad)
            .zip(exp_avg.iter_mut())
            .zip(exp_avg_sq.iter_mut())
        {
            *m = *m * beta1 + g * (1.0 - beta1);
            *v = *v * beta2 + g * g * (1.0 - beta2);
            *out = p * decay - step_size * *m / (v.sqrt() / sqrt_bias_correction2 + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_and_exact_at_the_edges() {
        let mut worst = 0f64;
        for i in -873_000..=883_700 {
            let x = i as f32 * 1e-4;
            let exact = f64::from(x).exp();
            let relative = (f64::from(exp(x)) - exact).abs() / exact;
            worst = worst.max(relative);
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_equal_plain_sums() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain_sum: f32 = xs.iter().sum();
        let plain_dot: f32 = xs.iter().zip(&ys).map(|(x, y)| x * y).sum();
        assert!((sum(&xs) - plain_sum).abs() < 1e-5);
        assert!((dot(&xs, &ys) - plain_dot).abs() < 1e-5);
        assert_eq!(
            max(&xs),
            xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
        );
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn erf_is_within_its_bound() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs());
        }
        assert!(worst < 6e-7, "largest error {worst}");
    }

    #[test]
    fn dispatched_kernels_equal_their_scalar_definitions() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let mut out = vec![0f32; xs.len()];
        gelu_slice(&xs, &mut out);
        for (&x, &o) in xs.iter().zip(&out) {
            let expected = 0.5
                * f64::from(x)
                * (1.0 + candle_core::cpu::erf::erf_f64(f64::from(x) / 2f64.sqrt()));
            assert!(
                (f64::from(o) - expected).abs() < 1e-6,
                "gelu({x}) = {o}, not {expected}"
            );
        }
        let mut grad = vec![1f32; xs.len()];
        gelu_backward_slice(&mut grad, &xs);
        for (&x, &g) in xs.iter().zip(&grad) {
            let h = 1e-3f64;
            let f = |x: f64| 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
            let numeric = (f(f64::from(x) + h) - f(f64::from(x) - h)) / (2.0 * h);
            assert!(
                (f64::from(g) - numeric).abs() < 1e-5,
                "gelu'({x}) = {g}, not {numeric}"
            );
        }
        let mut block: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        softmax_rows(&mut block, 4, &[0.0, 0.0, 0.0, f32::MIN], 2.0);
        for row in block.chunks(4) {
            assert_eq!(row[3], 0.0);
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            let expected = 1.0 / (1.0 + 1f64.exp() + 2f64.exp());
            assert!((f64::from(row[0]) - expected).abs() < 1e-6);
        }
    }
}
