//! `x · Wᵀ` with a frozen `W` (a LoRA model's base), as an op whose backward pass gives the
//! input's gradient only.
//!
//! Why: candle's matmul backward computes both operands' gradients whatever they are, so a
//! frozen weight would still cost one product per layer in every backward pass (a third of
//! the step's arithmetic) and hold a weight-sized gradient until the pass ends. LoRA's
//! saving is exactly those products. A bf16 base is widened to f32 for the product only, so
//! no f32 copy of it outlives the call. Contiguous f32 CPU inputs run here; everything else
//! (CUDA, f64) takes candle's primitives, which give the same values and merely compute the
//! unused weight gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};

use super::encoder_layer::products::{matmul, project, repeat_rows, view};
use super::encoder_layer::threads;
use super::ops::{contiguous_f32, with_cpu_values};

struct FrozenProjection {
    /// `[out, in]`, any float dtype.
    weight: Tensor,
}

impl FrozenProjection {
    fn weight_f32(&self) -> Result<Tensor> {
        self.weight.to_dtype(DType::F32)?.contiguous()
    }
}

impl CustomOp1 for FrozenProjection {
    fn name(&self) -> &'static str {
        "crosstrain-frozen-projection"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(storage, layout, "frozen projection input")?;
        let (width_out, width_in) = self.weight.dims2()?;
        let dims = layout.shape().dims();
        if dims.last() != Some(&width_in) {
            candle_core::bail!(
                "frozen projection: input {:?} does not end in the weight's {width_in} inputs",
                dims
            );
        }
        let rows = xs.len() / width_in.max(1);
        let out = with_cpu_values(&self.weight_f32()?, "frozen weight", |weight| {
            project(xs, weight, rows, width_out)
        })?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = width_out;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d x = d y · W; no gradient for W.
        Ok(Some(grad.broadcast_matmul(&self.weight_f32()?)?))
    }
}

/// `x · weightᵀ (+ bias)` for a frozen `weight [out, in]` (and bias), the activations' dtype
/// out. Only `x` gets a gradient.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && weight.device().is_cpu();
    let output = if fast {
        x.contiguous()?.apply_op1(FrozenProjection {
            weight: weight.clone(),
        })?
    } else {
        let weight = weight.to_dtype(x.dtype())?;
        candle_nn::Linear::new(weight, None).forward(x)?
    };
    match bias {
        Some(bias) => output.broadcast_add(&bias.to_dtype(output.dtype())?),
        None => Ok(output),
    }
}

/// `x · Wᵀ + b + scaling · (x · Aᵀ) · Bᵀ` for a frozen `W` (and bias) and a trainable
/// adapter `A [r, in]`, `B [out, r]` (LoRA without dropout), as one op.
///
/// Why one op: written as candle ops, the update and its scaled copy are two output-sized
/// tensors per layer that the graph keeps alive until the backward pass, and the sums pass
/// over them again there: for a 0.6B decoder at 16 × 256 tokens, 1.6 GB and seconds per
/// step. Here the output is computed in one buffer, and the backward pass gives x, A and B
/// their gradients from the kept input alone (`x · Aᵀ` is recomputed: r columns).
struct FrozenLoraProjection {
    /// `[out, in]`, any float dtype.
    weight: Tensor,
    bias: Option<Tensor>,
    scaling: f64,
}

impl CustomOp3 for FrozenLoraProjection {
    fn name(&self) -> &'static str {
        "crosstrain-frozen-lora-projection"
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
        let xs = contiguous_f32(s1, l1, "LoRA projection input")?;
        let lora_a = contiguous_f32(s2, l2, "lora_A")?;
        let lora_b = contiguous_f32(s3, l3, "lora_B")?;
        let (width_out, width_in) = self.weight.dims2()?;
        let rank = l2.shape().dims()[0];
        let dims = l1.shape().dims();
        if dims.last() != Some(&width_in)
            || lora_a.len() != rank * width_in
            || lora_b.len() != width_out * rank
        {
            candle_core::bail!(
                "LoRA projection: input {:?}, weight [{width_out}, {width_in}], A {:?}, B {:?} do not fit",
                dims,
                l2.shape().dims(),
                l3.shape().dims()
            );
        }
        let rows = xs.len() / width_in.max(1);
        let mut out = match &self.bias {
            Some(bias) => {
                let bias: Vec<f32> = bias.to_dtype(DType::F32)?.to_vec1()?;
                repeat_rows(&bias, rows)
            }
            None => vec![0f32; rows * width_out],
        };
        let weight = self.weight.to_dtype(DType::F32)?.contiguous()?;
        with_cpu_values(&weight, "frozen weight", |weight| {
            matmul(
                &mut out,
                view(0, width_out, 1),
                xs,
                view(0, width_in, 1),
                weight,
                view(0, 1, width_in),
                (rows, width_out, width_in),
                true,
                threads(),
            );
        })?;
        // scaling · (x Aᵀ), then accumulated through Bᵀ into the output.
        let mut low = project(xs, lora_a, rows, rank);
        let scaling = self.scaling as f32;
        low.iter_mut().for_each(|value| *value *= scaling);
        matmul(
            &mut out,
            view(0, width_out, 1),
            &low,
            view(0, rank, 1),
            lora_b,
            view(0, 1, rank),
            (rows, width_out, rank),
            true,
            threads(),
        );
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = width_out;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        lora_a: &Tensor,
        lora_b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (width_out, width_in) = self.weight.dims2()?;
        let rows = xs.elem_count() / width_in.max(1);
        let x = xs.reshape((rows, width_in))?;
        let dy = grad.contiguous()?.reshape((rows, width_out))?;
        // d(x Aᵀ) = scaling · dy B: r columns.
        let d_low = (dy.matmul(lora_b)? * self.scaling)?;
        let dx = (dy.matmul(&self.weight.to_dtype(DType::F32)?.contiguous()?)?
            + d_low.matmul(lora_a)?)?;
        let d_a = d_low.t()?.matmul(&x)?;
        let low = (x.matmul(&lora_a.t()?)? * self.scaling)?;
        let d_b = dy.t()?.matmul(&low)?;
        Ok((Some(dx.reshape(xs.shape())?), Some(d_a), Some(d_b)))
    }
}

/// `x · weightᵀ + bias + scaling · (x · Aᵀ) · Bᵀ`: a frozen layer with its LoRA adapter
/// (no dropout on the adapter's input). Gradients for `x`, `A` and `B`, none for the weight.
/// Candle's primitives, in PEFT's order, where the op does not run.
pub fn frozen_lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora_a: &Tensor,
    lora_b: &Tensor,
    scaling: f64,
) -> Result<Tensor> {
    let fast = x.device().is_cpu()
        && x.dtype() == DType::F32
        && lora_a.dtype() == DType::F32
        && lora_b.dtype() == DType::F32;
    if fast {
        return x.contiguous()?.apply_op3(
            &lora_a.contiguous()?,
            &lora_b.contiguous()?,
            FrozenLoraProjection {
                weight: weight.clone(),
                bias: bias.cloned(),
                scaling,
            },
        );
    }
    let output = frozen_linear(x, weight, bias)?;
    let low = candle_nn::Linear::new(lora_a.clone(), None).forward(x)?;
    let update = candle_nn::Linear::new(lora_b.clone(), None).forward(&low)?;
    output + (update * scaling)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = crosstrain_rng::SeededRng::new(seed);
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// The largest |a − b|.
    fn difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The op and candle's primitives agree on the output and on the input's gradient, for
    /// an f32 and a bf16 weight.
    #[test]
    fn matches_candle_primitives_forward_and_backward() {
        for dtype in [DType::F32, DType::BF16] {
            let weight = random(&[5, 7], 1).to_dtype(dtype).unwrap();
            let bias = random(&[5], 2);
            let x = Var::from_tensor(&random(&[2, 3, 7], 3)).unwrap();
            let probe = random(&[2, 3, 5], 4);
            let ours = frozen_linear(x.as_tensor(), &weight, Some(&bias)).unwrap();
            let reference =
                candle_nn::Linear::new(weight.to_dtype(DType::F32).unwrap(), Some(bias.clone()))
                    .forward(x.as_tensor())
                    .unwrap();
            assert!(difference(&ours, &reference) < 1e-6);
            let grad_ours = (ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad_reference = (reference * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                grad_ours.get(x.as_tensor()).unwrap(),
                grad_reference.get(x.as_tensor()).unwrap(),
            );
            assert!(difference(a, b) < 1e-6);
            // Nothing for the frozen weight.
            assert!(grad_ours.get(&weight).is_none());
        }
    }

    /// The fused LoRA projection and PEFT's composite form agree on the output and on the
    /// gradients of x, A and B.
    #[test]
    fn lora_projection_matches_the_composite_form() {
        let weight = random(&[6, 8], 5);
        let bias = random(&[6], 6);
        let x = Var::from_tensor(&random(&[2, 3, 8], 7)).unwrap();
        let a = Var::from_tensor(&random(&[2, 8], 8)).unwrap();
        let b = Var::from_tensor(&random(&[6, 2], 9)).unwrap();
        let probe = random(&[2, 3, 6], 10);
        let ours = frozen_lora_linear(x.as_tensor(), &weight, Some(&bias), &a, &b, 1.5).unwrap();
        let base = candle_nn::Linear::new(weight.clone(), Some(bias.clone()))
            .forward(x.as_tensor())
            .unwrap();
        let update = candle_nn::Linear::new(b.as_tensor().clone(), None)
            .forward(
                &candle_nn::Linear::new(a.as_tensor().clone(), None)
                    .forward(x.as_tensor())
                    .unwrap(),
            )
            .unwrap();
        let reference = (base + (update * 1.5).unwrap()).unwrap();
        assert!(difference(&ours, &reference) < 1e-6);
        let grads_ours = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads_reference = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &a, &b] {
            let (ours, theirs) = (
                grads_ours.get(var.as_tensor()).unwrap(),
                grads_reference.get(var.as_tensor()).unwrap(),
            );
            assert!(difference(ours, theirs) < 1e-5, "{ours} vs {theirs}");
        }
        assert!(grads_ours.get(&weight).is_none());
    }
}
