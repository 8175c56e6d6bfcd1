//! Fused CPU kernels, with hand-written backward passes, for the element-wise parts of a BERT
//! layer: layer norm, scaled softmax with the attention mask, and exact (erf) GELU.
//!
//! Why: composed from candle primitives, each of these is 6–10 graph nodes, and candle's
//! backward allocates, zero-fills and adds a gradient buffer for every node, so a training
//! step spent more time sweeping memory for them than in the matrix products. Fused, each is
//! one node with one pass forward and one or two passes backward.
//!
//! The encoder layers themselves run as one op each (`fused_layer.rs`); these kernels serve
//! the embeddings' layer norm, the composite layer on the CPU (activations other than exact
//! GELU) and the tests. The kernels run for contiguous f32 tensors on the CPU. On any other
//! device or dtype the public functions fall back to the composite candle ops (which have
//! CUDA kernels), so the CUDA path needs nothing from this file. Every kernel is tested against the composite ops,
//! values and gradients.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows per rayon task: enough work per task to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

fn is_fast_path(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The f32 slice of a contiguous CPU tensor's storage.
pub fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let values = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{what}: the fused kernel needs a contiguous input"),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, borrowed from its storage (no
/// copy); `what` names the tensor in the error otherwise.
pub fn with_cpu_values<T>(tensor: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(contiguous_f32(cpu, layout, what)?)),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

fn tensor_values(tensor: &Tensor) -> Result<Vec<f32>> {
    tensor.flatten_all()?.to_vec1::<f32>()
}

// ---------------------------------------------------------------------------------------------
// Layer norm

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "crosstrain-layer-norm"
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
        let xs = contiguous_f32(s1, l1, "layer norm input")?;
        let weight = contiguous_f32(s2, l2, "layer norm weight")?;
        let bias = contiguous_f32(s3, l3, "layer norm bias")?;
        // The backward pass recomputes the statistics from the input.
        let (out, _, _) = layer_norm_kept(xs, weight, bias, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = weight.elem_count();
        let x = tensor_values(xs)?;
        let w = tensor_values(weight)?;
        let b = tensor_values(bias)?;
        let g = tensor_values(grad)?;
        // The normalised input, recomputed (cheaper than keeping it through the graph).
        let mut normed = vec![0f32; x.len()];
        let mut xhat = vec![0f32; x.len()];
        let mut rstd = vec![0f32; x.len() / width.max(1)];
        layer_norm_forward(&x, &w, &b, self.eps, &mut normed, &mut xhat, &mut rstd);
        let mut dw = vec![0f32; width];
        let mut db = vec![0f32; width];
        let dx = layer_norm_backward(&g, &xhat, &rstd, &w, &mut dw, &mut db);
        let device = xs.device();
        Ok((
            Some(Tensor::from_vec(dx, xs.shape(), device)?),
            Some(Tensor::from_vec(dw, weight.shape(), device)?),
            Some(Tensor::from_vec(db, weight.shape(), device)?),
        ))
    }
}

/// LayerNorm of every `weight.len()`-wide row of `xs` into `out`, keeping the normalised
/// rows (`xhat`) and 1/std per row (`rstd`) for a backward pass; parallel over row blocks.
pub(crate) fn layer_norm_forward(
    xs: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    out: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let chunk = weight.len() * ROWS_PER_TASK;
    out.par_chunks_mut(chunk)
        .zip(xhat.par_chunks_mut(chunk))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(xs.par_chunks(chunk))
        .for_each(|(((out, xhat), rstd), xs)| {
            super::simd::layer_norm_rows(xs, weight, bias, eps, out, xhat, rstd)
        });
}

/// [`layer_norm_forward`] into new buffers: `(out, xhat, rstd)`.
pub(crate) fn layer_norm_kept(
    xs: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; xs.len()];
    let mut xhat = vec![0f32; xs.len()];
    let mut rstd = vec![0f32; xs.len() / weight.len().max(1)];
    layer_norm_forward(xs, weight, bias, eps, &mut out, &mut xhat, &mut rstd);
    (out, xhat, rstd)
}

/// LayerNorm backward: `dx` from `dy` and the forward pass's `xhat` and `rstd`, adding into
/// `d_weight` and `d_bias` (partial sums per row block, added up at the end).
pub(crate) fn layer_norm_backward(
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
            super::simd::layer_norm_backward_rows(dy, xhat, rstd, weight, dx, &mut dw, &mut db);
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

/// Layer norm over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if is_fast_path(&[xs, weight, bias]) {
        let xs = xs.contiguous()?;
        return xs.apply_op3(weight, bias, LayerNormOp { eps: eps as f32 });
    }
    layer_norm_composite(xs, weight, bias, eps)
}

/// The same with candle primitives (any device, any dtype).
pub fn layer_norm_composite(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

// ---------------------------------------------------------------------------------------------
// Softmax of scaled scores plus the attention mask

struct MaskedSoftmaxOp {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "crosstrain-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s1, l1, "attention scores")?;
        let mask = contiguous_f32(s2, l2, "attention mask")?;
        let dims = l1.dims();
        let (batch, width) = (dims[0], dims[dims.len() - 1]);
        let rows_per_batch = scores.len() / width / batch;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(width * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                let first_row = task * ROWS_PER_TASK;
                for (offset, out) in out.chunks_mut(width).enumerate() {
                    let row = first_row + offset;
                    let b = row / rows_per_batch;
                    let scores = &scores[row * width..(row + 1) * width];
                    let mask = &mask[b * width..(b + 1) * width];
                    out.copy_from_slice(scores);
                    super::simd::softmax_rows(out, width, mask, self.scale);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let width = scores.dim(D::Minus1)?;
        let p = tensor_values(res)?;
        let g = tensor_values(grad)?;
        let mut ds = vec![0f32; p.len()];
        ds.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(p.par_chunks(width * ROWS_PER_TASK))
            .zip(g.par_chunks(width * ROWS_PER_TASK))
            .for_each(|((ds, p), g)| {
                for ((ds, p), g) in ds
                    .chunks_mut(width)
                    .zip(p.chunks(width))
                    .zip(g.chunks(width))
                {
                    // d(scores) = scale · p · (g − Σ g·p); the mask is a constant.
                    ds.copy_from_slice(g);
                    super::simd::softmax_backward_rows(ds, p, width, self.scale);
                }
            });
        Ok((
            Some(Tensor::from_vec(ds, scores.shape(), scores.device())?),
            None,
        ))
    }
}

/// `softmax(scores · scale + mask_bias)` over the last dimension, for attention scores
/// `[batch, heads, queries, keys]` and a mask bias `[batch, 1, 1, keys]` (0 or a large
/// negative number). The mask gets no gradient.
pub fn masked_softmax(scores: &Tensor, mask_bias: &Tensor, scale: f64) -> Result<Tensor> {
    let shapes_fit = scores.rank() == 4 && {
        let (batch, _, _, keys) = scores.dims4()?;
        mask_bias.dims() == [batch, 1, 1, keys]
    };
    if shapes_fit && is_fast_path(&[scores, mask_bias]) {
        let scores = scores.contiguous()?;
        let mask = mask_bias.contiguous()?.detach();
        return scores.apply_op2(
            &mask,
            MaskedSoftmaxOp {
                scale: scale as f32,
            },
        );
    }
    masked_softmax_composite(scores, mask_bias, scale)
}

/// The same with candle primitives (any device, any dtype).
pub fn masked_softmax_composite(scores: &Tensor, mask_bias: &Tensor, scale: f64) -> Result<Tensor> {
    candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(mask_bias)?, D::Minus1)
}

// ---------------------------------------------------------------------------------------------
// GELU (erf)

struct GeluErfOp;

impl CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "crosstrain-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(storage, layout, "gelu input")?;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(4096)
            .zip(xs.par_chunks(4096))
            .for_each(|(out, xs)| {
                super::simd::gelu_slice(xs, out);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = tensor_values(arg)?;
        let g = tensor_values(grad)?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .zip(g.par_chunks(4096))
            .for_each(|((dx, x), g)| {
                dx.copy_from_slice(g);
                super::simd::gelu_backward_slice(dx, x);
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Exact GELU, `x · Φ(x)`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if is_fast_path(&[xs]) {
        return xs.contiguous()?.apply_op1(GeluErfOp);
    }
    xs.gelu_erf()
}

// ---------------------------------------------------------------------------------------------
// Product with a constant (dropout masks)

struct ConstantProductOp;

impl CustomOp2 for ConstantProductOp {
    fn name(&self) -> &'static str {
        "crosstrain-constant-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(s1, l1, "input")?;
        let factors = contiguous_f32(s2, l2, "constant factor")?;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(4096)
            .zip(xs.par_chunks(4096).zip(factors.par_chunks(4096)))
            .for_each(|(out, (xs, factors))| {
                for ((o, &x), &f) in out.iter_mut().zip(xs).zip(factors) {
                    *o = x * f;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        factors: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.mul(factors)?), None))
    }
}

/// `xs · factors` where `factors` is a constant of the same shape (a dropout mask). candle's
/// own product also computes a gradient for the constant (a full extra product, zero-fill
/// and add per call); this one does not.
pub fn mul_by_constant(xs: &Tensor, factors: &Tensor) -> Result<Tensor> {
    if xs.dims() == factors.dims() && is_fast_path(&[xs, factors]) {
        let xs = xs.contiguous()?;
        let factors = factors.contiguous()?.detach();
        return xs.apply_op2(&factors, ConstantProductOp);
    }
    xs.mul(&factors.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_diff, random};
    use candle_core::{Device, Var};

    /// Gradients of Σ output · upstream.
    fn backward(output: &Tensor, upstream: &Tensor) -> candle_core::backprop::GradStore {
        (output * upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// Values and gradients (through a random upstream gradient) of fused vs composite.
    fn compare(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composite: impl Fn(&[Tensor]) -> Tensor,
        upstream_seed: u64,
        tolerance: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&tensors);
        let b = composite(&tensors);
        assert!(
            max_diff(&a, &b) < tolerance,
            "values differ by {}",
            max_diff(&a, &b)
        );
        let upstream = random(a.dims(), upstream_seed, 1.0);
        let (ga, gb) = (backward(&a, &upstream), backward(&b, &upstream));
        for (index, tensor) in tensors.iter().enumerate() {
            match (ga.get(tensor), gb.get(tensor)) {
                (Some(x), Some(y)) => {
                    let diff = max_diff(x, y);
                    assert!(
                        diff < tolerance,
                        "gradient of input {index} differs by {diff}"
                    );
                }
                (None, None) => {}
                (x, y) => panic!(
                    "input {index}: fused gradient {}, composite {}",
                    x.is_some(),
                    y.is_some()
                ),
            }
        }
    }

    #[test]
    fn layer_norm_equals_the_composite_op() {
        let inputs = [
            random(&[3, 37, 48], 1, 3.0),
            (random(&[48], 2, 0.5) + 1.0).unwrap(),
            random(&[48], 3, 0.5),
        ];
        compare(
            &inputs,
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            |t| layer_norm_composite(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            4,
            2e-5,
        );
    }

    #[test]
    fn masked_softmax_equals_the_composite_op() {
        let (batch, heads, len) = (3, 4, 37);
        // Padding masks of different lengths, with the dtype's lowest value like the model.
        let mut mask = vec![0f32; batch * len];
        for (b, valid) in [37usize, 20, 1].iter().enumerate() {
            for k in *valid..len {
                mask[b * len + k] = f32::MIN;
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, 1, len), &Device::Cpu).unwrap();
        let scores = random(&[batch, heads, len, len], 5, 8.0);
        let vars = Var::from_tensor(&scores).unwrap();
        let scores = vars.as_tensor().clone();
        let a = masked_softmax(&scores, &mask, 0.125).unwrap();
        let b = masked_softmax_composite(&scores, &mask, 0.125).unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
        let upstream = random(a.dims(), 6, 1.0);
        let (ga, gb) = (backward(&a, &upstream), backward(&b, &upstream));
        assert!(max_diff(ga.get(&scores).unwrap(), gb.get(&scores).unwrap()) < 1e-6);
    }

    #[test]
    fn gelu_equals_the_composite_op() {
        compare(
            &[random(&[5, 29, 64], 7, 6.0)],
            |t| gelu_erf(&t[0]).unwrap(),
            |t| t[0].gelu_erf().unwrap(),
            8,
            1e-5,
        );
    }

    #[test]
    fn constant_product_equals_the_plain_product_and_skips_the_constant() {
        let xs = Var::from_tensor(&random(&[3, 17, 40], 10, 2.0)).unwrap();
        let factors = random(&[3, 17, 40], 11, 2.0);
        let a = mul_by_constant(xs.as_tensor(), &factors).unwrap();
        let b = xs.as_tensor().mul(&factors).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
        let upstream = random(a.dims(), 12, 1.0);
        let (ga, gb) = (backward(&a, &upstream), backward(&b, &upstream));
        assert_eq!(
            max_diff(
                ga.get(xs.as_tensor()).unwrap(),
                gb.get(xs.as_tensor()).unwrap()
            ),
            0.0
        );
        assert!(ga.get(&factors).is_none());
    }

    #[test]
    fn other_dtypes_take_the_composite_path() {
        let xs = random(&[2, 3, 8], 9, 1.0).to_dtype(DType::F64).unwrap();
        let fused = gelu_erf(&xs).unwrap();
        assert_eq!(
            max_diff(
                &fused.to_dtype(DType::F32).unwrap(),
                &xs.gelu_erf().unwrap().to_dtype(DType::F32).unwrap()
            ),
            0.0
        );
    }
}
