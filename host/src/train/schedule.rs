//! The learning-rate schedule and global-norm clipping, as transformers and torch do them.
//! Candle tensor maths, so clipping runs on whatever device the gradients are on.

use candle_core::{DType, Result, Tensor};

use super::config::{LrScheduler, LrSchedulerKwargs};
use super::settings::{PlateauMode, ThresholdMode};
use crate::trainer_state::Plateau;

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
    if matches!(
        scheduler,
        LrScheduler::Constant | LrScheduler::ReduceLrOnPlateau
    ) {
        return peak;
    }
    match scheduler {
        LrScheduler::CosineWarmupWithMinLr => {
            return peak * cosine_warmup_with_min_lr(kwargs, peak, step, warmup, total)
        }
        LrScheduler::WarmupStableDecay => {
            return peak * warmup_stable_decay(kwargs, step, warmup, total)
        }
        LrScheduler::InverseSqrt if step >= warmup => {
            let timescale = kwargs
                .timescale
                .unwrap_or(if warmup > 0 { warmup } else { 10_000 })
                as f64;
            let shift = timescale - warmup as f64;
            return peak / ((step as f64 + shift) / timescale).sqrt();
        }
        _ => {}
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
        LrScheduler::CosineWithMinLr => {
            let cycles = kwargs.num_cycles.unwrap_or(0.5);
            let rate = min_lr_rate(kwargs, peak);
            let factor = 0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos());
            (factor * (1.0 - rate) + rate).max(0.0)
        }
        LrScheduler::CosineWithRestarts => {
            let cycles = kwargs.num_cycles.unwrap_or(1.0);
            if progress >= 1.0 {
                0.0
            } else {
                (0.5 * (1.0 + (std::f64::consts::PI * ((cycles * progress) % 1.0)).cos())).max(0.0)
            }
        }
        LrScheduler::CosineWarmupWithMinLr
        | LrScheduler::WarmupStableDecay
        | LrScheduler::InverseSqrt => unreachable!("returned above"),
        // The rate lives in the run's `Plateau` state; this is its start.
        LrScheduler::ReduceLrOnPlateau => 1.0,
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

/// torch's `ReduceLROnPlateau.step(metric)`: one evaluation's `value` of the watched metric;
/// cuts `plateau.lr` when the patience is spent. Returns whether it cut.
pub fn plateau_step(plateau: &mut Plateau, kwargs: &LrSchedulerKwargs, value: f64) -> bool {
    let mode = kwargs.mode.unwrap_or(PlateauMode::Min);
    let threshold = kwargs.threshold.unwrap_or(1e-4);
    let better = match plateau.best {
        None => true,
        Some(best) => match (mode, kwargs.threshold_mode.unwrap_or(ThresholdMode::Rel)) {
            (PlateauMode::Min, ThresholdMode::Rel) => value < best * (1.0 - threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => value < best - threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => value > best * (threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => value > best + threshold,
        },
    };
    if better {
        plateau.best = Some(value);
        plateau.num_bad_epochs = 0;
    } else {
        plateau.num_bad_epochs += 1;
    }
    if plateau.cooldown_counter > 0 {
        plateau.cooldown_counter -= 1;
        plateau.num_bad_epochs = 0;
    }
    if plateau.num_bad_epochs > kwargs.patience.unwrap_or(10) {
        plateau.cooldown_counter = kwargs.cooldown.unwrap_or(0);
        plateau.num_bad_epochs = 0;
        let old = plateau.lr;
        let new = (old * kwargs.factor.unwrap_or(0.1)).max(kwargs.min_lr.unwrap_or(0.0));
        if old - new > kwargs.eps.unwrap_or(1e-8) {
            plateau.lr = new;
            return true;
        }
    }
    false
}

/// The floor of the min-lr cosines as a fraction of the peak: `min_lr_rate`, or `min_lr` over
/// the peak (the config's check makes sure one is given).
fn min_lr_rate(kwargs: &LrSchedulerKwargs, peak: f64) -> f64 {
    kwargs
        .min_lr_rate
        .or(kwargs.min_lr.map(|min_lr| min_lr / peak))
        .unwrap_or(0.0)
}

/// transformers' `_get_cosine_with_min_lr_schedule_with_warmup_lr_rate_lambda`: its warm-up
/// counts from step 1 (or starts at `warmup_lr_rate`), and its cosine reaches the floor at the
/// last step.
fn cosine_warmup_with_min_lr(
    kwargs: &LrSchedulerKwargs,
    peak: f64,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    let (step, warmup_f, total) = (step as f64, warmup as f64, total as f64);
    if step < warmup_f {
        return match kwargs.warmup_lr_rate {
            None => (step + 1.0) / warmup_f.max(1.0),
            Some(rate) => rate + (1.0 - rate) * step / (warmup.saturating_sub(1)).max(1) as f64,
        };
    }
    let cycles = kwargs.num_cycles.unwrap_or(0.5);
    let rate = min_lr_rate(kwargs, peak);
    let progress = (step - warmup_f + 1.0) / (total - warmup_f).max(1.0);
    let factor = 0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos());
    (factor * (1.0 - rate) + rate).max(0.0)
}

/// transformers' `get_wsd_schedule`.
fn warmup_stable_decay(
    kwargs: &LrSchedulerKwargs,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    use super::settings::Shape;
    let decay = kwargs.num_decay_steps.unwrap_or(0);
    let stable = kwargs
        .num_stable_steps
        .unwrap_or_else(|| total.saturating_sub(warmup + decay));
    let floor = kwargs.min_lr_ratio.unwrap_or(0.0);
    let cycles = kwargs.num_cycles.unwrap_or(0.5);
    if step < warmup {
        let progress = step as f64 / warmup.max(1) as f64;
        let factor = match kwargs.warmup_type.unwrap_or(Shape::Linear) {
            Shape::Linear => progress,
            Shape::Cosine => 0.5 * (1.0 - (std::f64::consts::PI * progress).cos()),
            Shape::OneMinusSqrt => 1.0 - (1.0 - progress).sqrt(),
        };
        return (factor * (1.0 - floor) + floor).max(0.0);
    }
    if step < warmup + stable {
        return 1.0;
    }
    if step < warmup + stable + decay {
        let progress = (step - warmup - stable) as f64 / decay.max(1) as f64;
        let factor = match kwargs.decay_type.unwrap_or(Shape::Cosine) {
            Shape::Linear => 1.0 - progress,
            Shape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos()),
            Shape::OneMinusSqrt => 1.0 - progress.sqrt(),
        };
        return (factor * (1.0 - floor) + floor).max(0.0);
    }
    floor
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
    /// transformers 5.25 `get_scheduler(...)` for the transformers-5 schedules, same setting.
    #[test]
    fn newer_schedules_equal_transformers() {
        use crate::train::settings::Shape;
        let kwargs = |edit: &dyn Fn(&mut LrSchedulerKwargs)| {
            let mut kwargs = LrSchedulerKwargs::default();
            edit(&mut kwargs);
            kwargs
        };
        let cases: Vec<(LrScheduler, LrSchedulerKwargs, [f64; 10])> = vec![
            (
                LrScheduler::CosineWithMinLr,
                kwargs(&|k| k.min_lr = Some(1e-4)),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0009554359905560886,
                    0.0008305704108364302,
                    0.0006501344202803415,
                    0.0004498655797196586,
                    0.00026942958916356994,
                    0.00014456400944391147,
                ],
            ),
            (
                LrScheduler::CosineWithMinLr,
                kwargs(&|k| {
                    k.min_lr_rate = Some(0.1);
                    k.num_cycles = Some(1.0)
                }),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0008305704108364302,
                    0.0004498655797196586,
                    0.00014456400944391147,
                    0.0001445640094439114,
                    0.0004498655797196585,
                    0.0008305704108364301,
                ],
            ),
            (
                LrScheduler::CosineWarmupWithMinLr,
                kwargs(&|k| k.min_lr_rate = Some(0.05)),
                [
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.000952960212253649,
                    0.0008211576558828984,
                    0.0006306974436292493,
                    0.00041930255637075066,
                    0.00022884234411710158,
                    9.703978774635096e-05,
                    5e-05,
                ],
            ),
            (
                LrScheduler::CosineWarmupWithMinLr,
                kwargs(&|k| {
                    k.min_lr = Some(1e-4);
                    k.warmup_lr_rate = Some(0.1)
                }),
                [
                    0.0001,
                    0.00055,
                    0.001,
                    0.0009554359905560886,
                    0.0008305704108364302,
                    0.0006501344202803415,
                    0.0004498655797196586,
                    0.00026942958916356994,
                    0.00014456400944391147,
                    0.0001,
                ],
            ),
            (
                LrScheduler::WarmupStableDecay,
                kwargs(&|k| {
                    k.num_decay_steps = Some(4);
                    k.min_lr_ratio = Some(0.1)
                }),
                [
                    0.0001,
                    0.0004,
                    0.0007,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.0008681980515339464,
                    0.00055,
                    0.00023180194846605365,
                ],
            ),
            (
                LrScheduler::WarmupStableDecay,
                kwargs(&|k| {
                    k.num_decay_steps = Some(3);
                    k.warmup_type = Some(Shape::Cosine);
                    k.decay_type = Some(Shape::OneMinusSqrt)
                }),
                [
                    0.0,
                    0.00024999999999999995,
                    0.0007499999999999999,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.0004226497308103743,
                    0.00018350341907227396,
                ],
            ),
            (
                LrScheduler::WarmupStableDecay,
                kwargs(&|k| {
                    k.num_decay_steps = Some(2);
                    k.num_stable_steps = Some(3);
                    k.decay_type = Some(Shape::Linear)
                }),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.001,
                    0.001,
                    0.001,
                    0.0005,
                    0.0,
                    0.0,
                ],
            ),
            (
                LrScheduler::InverseSqrt,
                LrSchedulerKwargs::default(),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.0008660254037844387,
                    0.0007745966692414834,
                    0.0007071067811865475,
                    0.000654653670707977,
                    0.0006123724356957945,
                    0.0005773502691896259,
                ],
            ),
            (
                LrScheduler::InverseSqrt,
                kwargs(&|k| k.timescale = Some(5)),
                [
                    0.0,
                    0.0003333333333333333,
                    0.0006666666666666666,
                    0.001,
                    0.000912870929175277,
                    0.0008451542547285166,
                    0.0007905694150420947,
                    0.00074535599249993,
                    0.0007071067811865475,
                    0.0006741998624632421,
                ],
            ),
        ];
        for (scheduler, kwargs, expected) in cases {
            for (step, want) in expected.iter().enumerate() {
                let got = learning_rate(scheduler, &kwargs, 1e-3, step, 3, 10);
                assert!(
                    (got - want).abs() < 1e-15,
                    "{scheduler:?} {kwargs:?} step {step}: {got} vs {want}"
                );
            }
        }
    }

    /// torch 2.15's `ReduceLROnPlateau(AdamW(lr=1e-2), **kwargs)`, stepped with the metric
    /// sequence below: the rate after each step.
    #[test]
    fn reduce_lr_on_plateau_equals_torch() {
        let metrics = [
            1.0, 0.9, 0.95, 0.96, 0.97, 0.89, 0.9, 0.91, 0.92, 0.93, 0.5, 0.6,
        ];
        let cases: [(LrSchedulerKwargs, [f64; 12]); 2] = [
            (
                LrSchedulerKwargs {
                    patience: Some(2),
                    ..LrSchedulerKwargs::default()
                },
                [
                    1e-2, 1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-4,
                ],
            ),
            (
                LrSchedulerKwargs {
                    patience: Some(1),
                    cooldown: Some(1),
                    factor: Some(0.5),
                    min_lr: Some(3e-3),
                    threshold: Some(0.05),
                    threshold_mode: Some(ThresholdMode::Abs),
                    ..LrSchedulerKwargs::default()
                },
                [
                    1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 5e-3, 3e-3, 3e-3, 3e-3, 3e-3, 3e-3, 3e-3,
                ],
            ),
        ];
        for (kwargs, expected) in cases {
            let mut plateau = Plateau {
                lr: 1e-2,
                best: None,
                num_bad_epochs: 0,
                cooldown_counter: 0,
            };
            let rates: Vec<f64> = metrics
                .iter()
                .map(|&m| {
                    plateau_step(&mut plateau, &kwargs, m);
                    plateau.lr
                })
                .collect();
            for (got, want) in rates.iter().zip(&expected) {
                assert!(
                    (got - want).abs() < 1e-15,
                    "{kwargs:?}: {rates:?} vs {expected:?}"
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
