//! The learning-rate schedule and global-norm clipping, as transformers and torch do them.
//! Candle tensor maths, so clipping runs on whatever device the gradients are on.

use candle_core::{DType, Result, Tensor};

use super::config::{LrScheduler, LrSchedulerKwargs};

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
    use candle_core::Device;

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
}
