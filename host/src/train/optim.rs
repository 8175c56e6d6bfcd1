//! AdamW, the warm-up/decay schedule and global-norm clipping, as torch and transformers do
//! them. Everything is candle tensor maths, so it runs on whatever device the model is on.

use candle_core::{DType, Result, Tensor, Var};

use super::config::LrScheduler;

/// One parameter and its Adam moments.
struct ParamState {
    name: String,
    var: Var,
    decays: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// torch's AdamW (decoupled weight decay, bias-corrected moments).
pub struct AdamW {
    params: Vec<ParamState>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
}

/// Whether transformers' Trainer applies weight decay to a parameter: not to biases and not
/// to LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

impl AdamW {
    /// An optimiser over named parameters with zero moments.
    pub fn new(
        params: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(ParamState {
                    decays: decays(&name),
                    name,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
        })
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The parameters, in the order `step` expects gradients.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to the i-th parameter (`None`:
    /// no gradient, the parameter is left alone as torch does).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2 = 1.0 - self.beta2.powi(t);
        let step_size = lr / bias_correction1;
        let sqrt_bc2 = bias_correction2.sqrt();
        for (state, grad) in self.params.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let grad = grad.to_dtype(state.var.dtype())?;
            let mut theta = state.var.as_tensor().clone();
            if state.decays && self.weight_decay > 0.0 {
                theta = (theta * (1.0 - lr * self.weight_decay))?;
            }
            state.exp_avg = ((&state.exp_avg * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
            state.exp_avg_sq =
                ((&state.exp_avg_sq * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((state.exp_avg_sq.sqrt()? / sqrt_bc2)? + self.eps)?;
            let update = (state.exp_avg.div(&denom)? * step_size)?;
            state.var.set(&(theta - update)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors, for a checkpoint (`exp_avg.NAME`, `exp_avg_sq.NAME`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("exp_avg.{}", p.name), p.exp_avg.clone()),
                    (format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone()),
                ]
            })
            .collect()
    }

    /// Restores moments and the step count from a checkpoint.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> std::result::Result<(), String> {
        for param in &mut self.params {
            for (prefix, slot) in [
                ("exp_avg", &mut param.exp_avg),
                ("exp_avg_sq", &mut param.exp_avg_sq),
            ] {
                let key = format!("{prefix}.{}", param.name);
                let tensor = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state has no {key}"))?;
                if tensor.dims() != slot.dims() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        tensor.dims(),
                        slot.dims()
                    ));
                }
                *slot = tensor
                    .to_dtype(slot.dtype())
                    .and_then(|t| t.to_device(slot.device()))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The learning rate of optimiser step `step` (0-based): linear warm-up from 0 over
/// `warmup` steps, then linear decay to 0 at `total` (or constant). This is transformers'
/// `get_linear_schedule_with_warmup`, so the first step has learning rate 0.
pub fn learning_rate(
    scheduler: LrScheduler,
    peak: f64,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    match scheduler {
        LrScheduler::Constant => peak,
        LrScheduler::Linear => {
            peak * (total.saturating_sub(step)) as f64
                / (total.saturating_sub(warmup)).max(1) as f64
        }
    }
}

/// The global L2 norm of the gradients; when it exceeds `max_norm` (> 0) they are scaled by
/// `max_norm / (norm + 1e-6)`, as `torch.nn.utils.clip_grad_norm_` does. Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for grad in grads.iter().flatten() {
        let squares = grad.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(sum) => (sum + squares)?,
            None => squares,
        });
    }
    let norm = match total {
        Some(sum) => f64::from(sum.sqrt()?.to_scalar::<f32>()?),
        None => 0.0,
    };
    if max_norm > 0.0 && norm.is_finite() {
        let coefficient = max_norm / (norm + 1e-6);
        if coefficient < 1.0 {
            for grad in grads.iter_mut().flatten() {
                *grad = (&*grad * coefficient)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_the_reference_stsb_run() {
        // 360 steps, warm-up ceil(0.1 × 360) = 36, lr 2e-5 (reference README).
        let lr = |t| learning_rate(LrScheduler::Linear, 2e-5, t, 36, 360);
        assert_eq!(lr(0), 0.0);
        assert!((lr(18) - 1e-5).abs() < 1e-18);
        assert!((lr(36) - 2e-5).abs() < 1e-18);
        assert!((lr(198) - 2e-5 * 162.0 / 324.0).abs() < 1e-18);
        assert!((lr(359) - 2e-5 / 324.0).abs() < 1e-18);
    }

    #[test]
    fn adamw_matches_torch_for_two_steps() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) on p = [1, -2] with gradients
        // g1 = [0.5, -1], g2 = [0.1, 0.2]:
        //   step 1: p = [0.899, -1.898]
        //   step 2: p = [0.798101..., -1.79701...]
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut adam = AdamW::new(vec![("w".into(), var.clone())], 0.9, 0.999, 1e-8, 0.01).unwrap();
        let g1 = Tensor::new(&[0.5f64, -1.0], &Device::Cpu).unwrap();
        adam.step(&[Some(g1)], 0.1).unwrap();
        let after1 = var.as_tensor().to_vec1::<f64>().unwrap();
        // Step 1: m̂ = g, v̂ = g², update = lr · g/(|g| + ε) = ±0.1 (minus ε effects).
        let expected1 = [
            1.0 * (1.0 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8),
            -2.0 * 0.999 + 0.1 * 1.0 / (1.0 + 1e-8),
        ];
        for (a, e) in after1.iter().zip(expected1) {
            assert!((a - e).abs() < 1e-12, "{a} vs {e}");
        }
        let g2 = Tensor::new(&[0.1f64, 0.2], &Device::Cpu).unwrap();
        adam.step(&[Some(g2)], 0.1).unwrap();
        let after2 = var.as_tensor().to_vec1::<f64>().unwrap();
        // Hand-computed with torch's formulas.
        let expected2: Vec<f64> = [(0.5, 0.1), (-1.0, 0.2)]
            .iter()
            .zip(&expected1)
            .map(|(&(g1, g2), &p1)| {
                let m = 0.9 * (0.1 * g1) + 0.1 * g2;
                let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
                let bc1 = 1.0 - 0.9f64.powi(2);
                let bc2 = 1.0 - 0.999f64.powi(2);
                let denom = (v as f64).sqrt() / bc2.sqrt() + 1e-8;
                p1 * (1.0 - 0.001) - 0.1 / bc1 * m / denom
            })
            .collect();
        for (a, e) in after2.iter().zip(&expected2) {
            assert!((a - e).abs() < 1e-12, "{a} vs {e}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut grads = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = grads[2].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn no_decay_for_biases_and_layer_norms() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
    }
}
