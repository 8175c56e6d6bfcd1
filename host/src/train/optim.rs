//! AdamW, the warm-up/decay schedule and global-norm clipping, as torch and transformers do
//! them. Everything is candle tensor maths, so it runs on whatever device the model is on.

use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;

use crosstrain_model::kernels::ops::with_cpu_values;
use crosstrain_model::kernels::simd::{self, AdamwStep};

use super::config::{LrScheduler, LrSchedulerKwargs};

/// Adam's moments of one parameter: plain vectors updated in one fused loop for f32
/// parameters on the CPU (a handful of tensor ops would each allocate and sweep memory), and
/// candle tensors everywhere else, so the optimiser runs on any device.
enum Moments {
    Cpu {
        exp_avg: Vec<f32>,
        exp_avg_sq: Vec<f32>,
    },
    Tensors {
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
    },
}

/// Parameters per parallel block of the AdamW update.
const OPTIMIZER_BLOCK: usize = 1 << 16;

/// One parameter and its Adam moments.
struct ParamState {
    name: String,
    var: Var,
    decays: bool,
    moments: Moments,
}

/// The hyperparameters of one update.
#[derive(Clone, Copy)]
struct Update {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step_size: f64,
    sqrt_bc2: f64,
}

impl ParamState {
    fn step(&mut self, grad: &Tensor, update: Update) -> Result<()> {
        let decay = if self.decays && update.weight_decay > 0.0 {
            1.0 - update.lr * update.weight_decay
        } else {
            1.0
        };
        match &mut self.moments {
            Moments::Cpu {
                exp_avg,
                exp_avg_sq,
            } => {
                let step = AdamwStep {
                    decay: decay as f32,
                    beta1: update.beta1 as f32,
                    beta2: update.beta2 as f32,
                    step_size: update.step_size as f32,
                    sqrt_bias_correction2: update.sqrt_bc2 as f32,
                    eps: update.eps as f32,
                };
                let grad = grad.to_dtype(DType::F32)?.contiguous()?;
                // Reads the gradient and the parameter where they lie (no copies), writes the
                // new values once, in parallel blocks; the read guards end before `set`. The
                // two borrows and the length check can each fail, hence three `?`.
                let theta = with_cpu_values(&grad, "AdamW gradient", |grad| {
                    with_cpu_values(self.var.as_tensor(), "AdamW parameter", |theta| {
                        if grad.len() != theta.len() || exp_avg.len() != theta.len() {
                            candle_core::bail!(
                                "AdamW: {} gradients for {} parameters of {}",
                                grad.len(),
                                theta.len(),
                                self.name
                            );
                        }
                        let mut updated = vec![0f32; theta.len()];
                        updated
                            .par_chunks_mut(OPTIMIZER_BLOCK)
                            .zip(theta.par_chunks(OPTIMIZER_BLOCK))
                            .zip(grad.par_chunks(OPTIMIZER_BLOCK))
                            .zip(exp_avg.par_chunks_mut(OPTIMIZER_BLOCK))
                            .zip(exp_avg_sq.par_chunks_mut(OPTIMIZER_BLOCK))
                            .for_each(|((((out, theta), grad), m), v)| {
                                simd::adamw(theta, grad, m, v, out, step)
                            });
                        Ok(updated)
                    })
                })???;
                let shape = self.var.shape().clone();
                self.var
                    .set(&Tensor::from_vec(theta, shape, self.var.device())?)
            }
            Moments::Tensors {
                exp_avg,
                exp_avg_sq,
            } => {
                let grad = grad.to_dtype(self.var.dtype())?;
                let mut theta = self.var.as_tensor().clone();
                if decay != 1.0 {
                    theta = (theta * decay)?;
                }
                *exp_avg = ((&*exp_avg * update.beta1)? + (&grad * (1.0 - update.beta1))?)?;
                *exp_avg_sq =
                    ((&*exp_avg_sq * update.beta2)? + (grad.sqr()? * (1.0 - update.beta2))?)?;
                let denom = ((exp_avg_sq.sqrt()? / update.sqrt_bc2)? + update.eps)?;
                let change = (exp_avg.div(&denom)? * update.step_size)?;
                self.var.set(&(theta - change)?)
            }
        }
    }

    fn moment_tensors(&self) -> Result<(Tensor, Tensor)> {
        match &self.moments {
            Moments::Cpu {
                exp_avg,
                exp_avg_sq,
            } => {
                let shape = self.var.shape().clone();
                Ok((
                    Tensor::from_slice(exp_avg, shape.clone(), self.var.device())?,
                    Tensor::from_slice(exp_avg_sq, shape, self.var.device())?,
                ))
            }
            Moments::Tensors {
                exp_avg,
                exp_avg_sq,
            } => Ok((exp_avg.clone(), exp_avg_sq.clone())),
        }
    }
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
    !(name.ends_with(".bias") || crosstrain_model::weights::is_layer_norm(name))
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
                let moments = if var.device().is_cpu() && var.dtype() == DType::F32 {
                    let n = var.elem_count();
                    Moments::Cpu {
                        exp_avg: vec![0.0; n],
                        exp_avg_sq: vec![0.0; n],
                    }
                } else {
                    let zeros = var.as_tensor().zeros_like()?;
                    Moments::Tensors {
                        exp_avg: zeros.clone(),
                        exp_avg_sq: zeros,
                    }
                };
                Ok(ParamState {
                    decays: decays(&name),
                    name,
                    moments,
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
        let update = Update {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step_size: lr / bias_correction1,
            sqrt_bc2: bias_correction2.sqrt(),
        };
        for (state, grad) in self.params.iter_mut().zip(grads) {
            if let Some(grad) = grad {
                state.step(grad, update)?;
            }
        }
        Ok(())
    }

    /// The moments as named tensors, for a checkpoint (`exp_avg.NAME`, `exp_avg_sq.NAME`).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = Vec::with_capacity(2 * self.params.len());
        for param in &self.params {
            let (exp_avg, exp_avg_sq) = param.moment_tensors()?;
            tensors.push((format!("exp_avg.{}", param.name), exp_avg));
            tensors.push((format!("exp_avg_sq.{}", param.name), exp_avg_sq));
        }
        Ok(tensors)
    }

    /// Restores moments and the step count from a checkpoint.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> std::result::Result<(), OptimizerStateError> {
        for param in &mut self.params {
            let load = |prefix: &str| -> std::result::Result<Tensor, OptimizerStateError> {
                let key = format!("{prefix}.{}", param.name);
                let tensor = tensors
                    .get(&key)
                    .ok_or_else(|| OptimizerStateError::Missing { key: key.clone() })?;
                if tensor.dims() != param.var.dims() {
                    return Err(OptimizerStateError::Shape {
                        key,
                        found: tensor.dims().to_vec(),
                        expected: param.var.dims().to_vec(),
                    });
                }
                Ok(tensor.clone())
            };
            let (exp_avg, exp_avg_sq) = (load("exp_avg")?, load("exp_avg_sq")?);
            let as_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
                t.to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
            };
            let on_device = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.to_dtype(param.var.dtype())
                    .and_then(|t| t.to_device(param.var.device()))
            };
            param.moments = match param.moments {
                Moments::Cpu { .. } => Moments::Cpu {
                    exp_avg: as_vec(&exp_avg)?,
                    exp_avg_sq: as_vec(&exp_avg_sq)?,
                },
                Moments::Tensors { .. } => Moments::Tensors {
                    exp_avg: on_device(&exp_avg)?,
                    exp_avg_sq: on_device(&exp_avg_sq)?,
                },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// An optimizer state (a checkpoint's `optimizer.safetensors`) that does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum OptimizerStateError {
    /// A parameter's moment is missing.
    #[error("optimizer state has no {key}")]
    Missing {
        /// The tensor name looked for.
        key: String,
    },
    /// A moment's shape differs from its parameter's.
    #[error("optimizer state {key} has shape {found:?}, the parameter {expected:?}")]
    Shape {
        /// The tensor name.
        key: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The parameter's shape.
        expected: Vec<usize>,
    },
    /// Moving a moment to the parameter's dtype or device failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// The learning rate of optimiser step `step` (0-based, as `LambdaLR` counts) of `total`
/// with `warmup` warm-up steps: transformers' `get_scheduler` schedules, factor by factor.
pub fn learning_rate(
    scheduler: LrScheduler,
    kwargs: &LrSchedulerKwargs,
    peak: f64,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    if scheduler == LrScheduler::Constant {
        return peak;
    }
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let factor = match scheduler {
        LrScheduler::Constant | LrScheduler::ConstantWithWarmup => 1.0,
        LrScheduler::Linear => {
            total.saturating_sub(step) as f64 / (total.saturating_sub(warmup)).max(1) as f64
        }
        LrScheduler::Cosine => {
            let cycles = kwargs.num_cycles.unwrap_or(0.5);
            (0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos())).max(0.0)
        }
        LrScheduler::CosineWithRestarts => {
            let cycles = kwargs.num_cycles.unwrap_or(1.0);
            if progress >= 1.0 {
                0.0
            } else {
                (0.5 * (1.0 + (std::f64::consts::PI * ((cycles * progress) % 1.0)).cos())).max(0.0)
            }
        }
        LrScheduler::Polynomial => {
            let lr_end = kwargs.lr_end;
            if step > total {
                lr_end / peak
            } else {
                let remaining = 1.0 - progress;
                ((peak - lr_end) * remaining.powf(kwargs.power) + lr_end) / peak
            }
        }
    };
    peak * factor
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

    /// transformers 5.24 `get_scheduler(name, AdamW(lr=1e-3), num_warmup_steps=3,
    /// num_training_steps=10, scheduler_specific_kwargs=...)`, the lr of each of the 10 steps.
    #[test]
    fn schedules_equal_transformers() {
        let reference: [(LrScheduler, LrSchedulerKwargs, [f64; 10]); 6] = [
            (
                LrScheduler::Linear,
                LrSchedulerKwargs::default(),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0008571428571428571,
                    0.0007142857142857143,
                    0.0005714285714285714,
                    0.00042857142857142855,
                    0.0002857142857142857,
                    0.00014285714285714284,
                ],
            ),
            (
                LrScheduler::Constant,
                LrSchedulerKwargs::default(),
                [0.001; 10],
            ),
            (
                LrScheduler::ConstantWithWarmup,
                LrSchedulerKwargs::default(),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                ],
            ),
            (
                LrScheduler::Cosine,
                LrSchedulerKwargs::default(),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0009504844339512095,
                    0.0008117449009293668,
                    0.0006112604669781572,
                    0.00038873953302184284,
                    0.00018825509907063325,
                    4.9515566048790485e-05,
                ],
            ),
            (
                LrScheduler::CosineWithRestarts,
                LrSchedulerKwargs {
                    num_cycles: Some(2.0),
                    ..LrSchedulerKwargs::default()
                },
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0008117449009293668,
                    0.00038873953302184284,
                    4.9515566048790485e-05,
                    0.0009504844339512096,
                    0.0006112604669781572,
                    0.00018825509907063342,
                ],
            ),
            (
                LrScheduler::Polynomial,
                LrSchedulerKwargs {
                    power: 2.0,
                    lr_end: 1e-6,
                    ..LrSchedulerKwargs::default()
                },
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0007349591836734695,
                    0.0005106938775510205,
                    0.0003272040816326531,
                    0.0001844897959183674,
                    8.255102040816327e-05,
                    2.138775510204083e-05,
                ],
            ),
        ];
        for (scheduler, kwargs, expected) in reference {
            for (step, want) in expected.iter().enumerate() {
                let got = learning_rate(scheduler, &kwargs, 1e-3, step, 3, 10);
                assert!(
                    (got - want).abs() < 1e-15,
                    "{scheduler:?} step {step}: {got} vs {want}"
                );
            }
        }
    }
    use candle_core::Device;

    #[test]
    fn schedule_matches_the_reference_stsb_run() {
        // 360 steps, warm-up ceil(0.1 × 360) = 36, lr 2e-5 (reference README).
        let lr = |t| {
            learning_rate(
                LrScheduler::Linear,
                &LrSchedulerKwargs::default(),
                2e-5,
                t,
                36,
                360,
            )
        };
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
                let v: f64 = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
                let bc1 = 1.0 - 0.9f64.powi(2);
                let bc2 = 1.0 - 0.999f64.powi(2);
                let denom = v.sqrt() / bc2.sqrt() + 1e-8;
                p1 * (1.0 - 0.001) - 0.1 / bc1 * m / denom
            })
            .collect();
        for (a, e) in after2.iter().zip(&expected2) {
            assert!((a - e).abs() < 1e-12, "{a} vs {e}");
        }
    }

    #[test]
    fn fused_cpu_update_equals_the_tensor_update() {
        // An f32 parameter takes the fused loop, an f64 one the tensor ops.
        let values = [0.5f32, -1.5, 2.0, 0.0];
        let fast = Var::new(&values, &Device::Cpu).unwrap();
        let slow = Var::new(&values.map(f64::from), &Device::Cpu).unwrap();
        let mut a = AdamW::new(vec![("w".into(), fast.clone())], 0.9, 0.999, 1e-8, 0.1).unwrap();
        let mut b = AdamW::new(vec![("w".into(), slow.clone())], 0.9, 0.999, 1e-8, 0.1).unwrap();
        assert!(matches!(a.params[0].moments, Moments::Cpu { .. }));
        assert!(matches!(b.params[0].moments, Moments::Tensors { .. }));
        for step in 0..5 {
            let g = [0.3f32, -0.2, 0.05 * step as f32, 1.0];
            a.step(&[Some(Tensor::new(&g, &Device::Cpu).unwrap())], 1e-2)
                .unwrap();
            b.step(
                &[Some(Tensor::new(&g.map(f64::from), &Device::Cpu).unwrap())],
                1e-2,
            )
            .unwrap();
        }
        let x = fast.as_tensor().to_vec1::<f32>().unwrap();
        let y = slow.as_tensor().to_vec1::<f64>().unwrap();
        for (x, y) in x.iter().zip(&y) {
            assert!((f64::from(*x) - y).abs() < 1e-6, "{x} vs {y}");
        }
        // Moments survive a save/load round trip.
        let saved: std::collections::HashMap<String, Tensor> =
            a.state_tensors().unwrap().into_iter().collect();
        let mut c = AdamW::new(vec![("w".into(), fast.clone())], 0.9, 0.999, 1e-8, 0.1).unwrap();
        c.load_state(&saved, 5).unwrap();
        let again: std::collections::HashMap<String, Tensor> =
            c.state_tensors().unwrap().into_iter().collect();
        assert_eq!(
            saved["exp_avg_sq.w"].to_vec1::<f32>().unwrap(),
            again["exp_avg_sq.w"].to_vec1::<f32>().unwrap()
        );
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
        for norm in [
            "model.embeddings.norm.weight",
            "model.layers.1.attn_norm.weight",
            "model.layers.0.mlp_norm.weight",
            "model.final_norm.weight",
            "head.norm.weight",
        ] {
            assert!(!decays(norm), "{norm}");
        }
        assert!(decays("model.layers.0.attn.Wqkv.weight"));
        assert!(decays("head.dense.weight"));
    }
}
