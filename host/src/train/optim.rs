//! AdamW as torch does it, over a model's trainable `Var`s (a packed layer's parts each with
//! their own weight decay). Fused loops for f32 on the CPU, candle tensor maths elsewhere, so
//! it runs on whatever device the model is on.

use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;

use crosstrain_model::parameters::Trainable;

use crosstrain_model::kernels::ops::with_cpu_values;
use crosstrain_model::kernels::simd::{self, AdamwStep};

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

/// One trainable `Var` (a parameter, or a packed layer's parameters) and its Adam moments,
/// laid out as the `Var` is.
struct ParamState {
    trainable: Trainable,
    /// Per part of the `Var`, whether weight decay applies to it.
    decays: Vec<bool>,
    /// For the tensor moments of a `Var` whose parts differ in decay: 1 where it applies.
    decay_mask: Option<Tensor>,
    /// Per part, its learning rate over the schedule's (`learning_rate_mapping`; 1 else).
    lr_scales: Vec<f64>,
    /// For the tensor moments of a `Var` whose parts differ in learning rate: each
    /// element's scale.
    lr_scale_mask: Option<Tensor>,
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
    fn var(&self) -> &Var {
        &self.trainable.var
    }

    fn step(&mut self, grad: &Tensor, update: Update) -> Result<()> {
        let decay_at = |decays: bool, lr: f64| {
            if decays && update.weight_decay > 0.0 {
                1.0 - lr * update.weight_decay
            } else {
                1.0
            }
        };
        let var = &self.trainable.var;
        match &mut self.moments {
            Moments::Cpu {
                exp_avg,
                exp_avg_sq,
            } => {
                let step_with = |decay: f64, scale: f64| AdamwStep {
                    decay: decay as f32,
                    beta1: update.beta1 as f32,
                    beta2: update.beta2 as f32,
                    step_size: (update.step_size * scale) as f32,
                    sqrt_bias_correction2: update.sqrt_bc2 as f32,
                    eps: update.eps as f32,
                };
                let parts: Vec<(std::ops::Range<usize>, AdamwStep)> = self
                    .trainable
                    .parts
                    .iter()
                    .zip(&self.decays)
                    .zip(&self.lr_scales)
                    .map(|((part, &decays), &scale)| {
                        (
                            part.range(),
                            step_with(decay_at(decays, update.lr * scale), scale),
                        )
                    })
                    .collect();
                let name = &self.trainable.parts[0].name;
                let grad = grad.to_dtype(DType::F32)?.contiguous()?;
                // Reads the gradient and the parameter where they lie (no copies), writes the
                // new values once, in parallel blocks; the read guards end before `set`. The
                // two borrows and the length check can each fail, hence three `?`.
                let theta = with_cpu_values(&grad, "AdamW gradient", |grad| {
                    with_cpu_values(var.as_tensor(), "AdamW parameter", |theta| {
                        if grad.len() != theta.len() || exp_avg.len() != theta.len() {
                            candle_core::bail!(
                                "AdamW: {} gradients for {} parameters of {name}",
                                grad.len(),
                                theta.len(),
                            );
                        }
                        let mut updated = vec![0f32; theta.len()];
                        // Each part with its own decay, in parallel blocks within it.
                        for (range, step) in &parts {
                            updated[range.clone()]
                                .par_chunks_mut(OPTIMIZER_BLOCK)
                                .zip(theta[range.clone()].par_chunks(OPTIMIZER_BLOCK))
                                .zip(grad[range.clone()].par_chunks(OPTIMIZER_BLOCK))
                                .zip(exp_avg[range.clone()].par_chunks_mut(OPTIMIZER_BLOCK))
                                .zip(exp_avg_sq[range.clone()].par_chunks_mut(OPTIMIZER_BLOCK))
                                .for_each(|((((out, theta), grad), m), v)| {
                                    simd::adamw(theta, grad, m, v, out, *step)
                                });
                        }
                        Ok(updated)
                    })
                })???;
                let shape = var.shape().clone();
                var.set(&Tensor::from_vec(theta, shape, var.device())?)
            }
            Moments::Tensors {
                exp_avg,
                exp_avg_sq,
            } => {
                let grad = grad.to_dtype(var.dtype())?;
                let mut theta = var.as_tensor().clone();
                // One scale for the whole `Var` unless its parts differ (then the mask).
                let scale = self.lr_scales[0];
                match (&self.decay_mask, &self.lr_scale_mask) {
                    // theta · (1 − lr·scale·wd·mask): the decay only where the mask is 1.
                    (Some(mask), scales) if update.weight_decay > 0.0 => {
                        let mut rate = (mask * (update.lr * update.weight_decay))?;
                        rate = match scales {
                            Some(scales) => rate.mul(scales)?,
                            None => (rate * scale)?,
                        };
                        theta = theta.mul(&rate.affine(-1.0, 1.0)?)?;
                    }
                    (None, Some(scales)) if update.weight_decay > 0.0 => {
                        if self.decays.iter().any(|&d| d) {
                            let rate = (scales * (update.lr * update.weight_decay))?;
                            theta = theta.mul(&rate.affine(-1.0, 1.0)?)?;
                        }
                    }
                    _ => {
                        let decay = decay_at(self.decays.iter().any(|&d| d), update.lr * scale);
                        if decay != 1.0 {
                            theta = (theta * decay)?;
                        }
                    }
                }
                *exp_avg = ((&*exp_avg * update.beta1)? + (&grad * (1.0 - update.beta1))?)?;
                *exp_avg_sq =
                    ((&*exp_avg_sq * update.beta2)? + (grad.sqr()? * (1.0 - update.beta2))?)?;
                let denom = ((exp_avg_sq.sqrt()? / update.sqrt_bc2)? + update.eps)?;
                let mut change = exp_avg.div(&denom)?;
                change = match &self.lr_scale_mask {
                    Some(scales) => (change.mul(scales)? * update.step_size)?,
                    None => (change * (update.step_size * scale))?,
                };
                var.set(&(theta - change)?)
            }
        }
    }

    /// Each part's moments, shaped as the parameter.
    fn moment_tensors(&self) -> Result<Vec<(&str, Tensor, Tensor)>> {
        let device = self.var().device();
        self.trainable
            .parts
            .iter()
            .map(|part| {
                let (exp_avg, exp_avg_sq) = match &self.moments {
                    Moments::Cpu {
                        exp_avg,
                        exp_avg_sq,
                    } => (
                        Tensor::from_slice(&exp_avg[part.range()], part.shape.clone(), device)?,
                        Tensor::from_slice(&exp_avg_sq[part.range()], part.shape.clone(), device)?,
                    ),
                    Moments::Tensors {
                        exp_avg,
                        exp_avg_sq,
                    } => {
                        let slice = |moment: &Tensor| -> Result<Tensor> {
                            if self.trainable.is_single() {
                                return Ok(moment.clone());
                            }
                            part.slice_of(moment)
                        };
                        (slice(exp_avg)?, slice(exp_avg_sq)?)
                    }
                };
                Ok((part.name.as_str(), exp_avg, exp_avg_sq))
            })
            .collect()
    }
}

/// sentence-transformers' `learning_rate_mapping`: each parameter a pattern finds gets that
/// learning rate, as a scale of the peak `lr`. Patterns are regular expressions searched (as
/// Python's `re.search`) in the name the reference's trainer sees, `model.0.model.` + the
/// Hugging Face name, so a recipe's patterns carry over. A pattern that finds nothing is an
/// error, as in the reference; so is a parameter two patterns give different rates (the
/// reference's outcome would depend on the order of a mapping).
pub fn learning_rate_scales(
    mapping: &std::collections::BTreeMap<String, f64>,
    lr: f64,
    trainables: &[Trainable],
) -> std::result::Result<std::collections::HashMap<String, f64>, String> {
    let patterns = mapping
        .iter()
        .map(|(pattern, rate)| {
            regex::Regex::new(pattern)
                .map(|regex| (pattern, regex, *rate))
                .map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut scales = std::collections::HashMap::new();
    let mut found = vec![false; patterns.len()];
    for part in trainables.iter().flat_map(|t| &t.parts) {
        let qualified = format!("model.0.model.{}", part.name);
        let mut rate: Option<(&String, f64)> = None;
        for (index, (pattern, regex, value)) in patterns.iter().enumerate() {
            if !regex.is_match(&qualified) {
                continue;
            }
            found[index] = true;
            match rate {
                Some((other, earlier)) if earlier != *value => {
                    return Err(format!(
                        "{} is matched by {other:?} ({earlier}) and {pattern:?} ({value}); make \
                         the patterns exclusive",
                        part.name
                    ))
                }
                _ => rate = Some((pattern, *value)),
            }
        }
        if let Some((_, value)) = rate {
            scales.insert(part.name.clone(), value / lr);
        }
    }
    if let Some(index) = found.iter().position(|f| !f) {
        return Err(format!(
            "no parameter matches {:?} (names look like model.0.model.{})",
            patterns[index].0,
            trainables
                .first()
                .and_then(|t| t.parts.first())
                .map_or("...", |p| p.name.as_str())
        ));
    }
    Ok(scales)
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
    /// An optimiser over a model's trainable `Var`s with zero moments.
    pub fn new(
        params: Vec<Trainable>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|trainable| {
                let var = &trainable.var;
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
                let part_decays: Vec<bool> = trainable
                    .parts
                    .iter()
                    .map(|part| decays(&part.name))
                    .collect();
                let mixed = part_decays.iter().any(|&d| d) && part_decays.iter().any(|&d| !d);
                let decay_mask = if mixed && matches!(moments, Moments::Tensors { .. }) {
                    let mut mask = vec![0f32; var.elem_count()];
                    for (part, &decays) in trainable.parts.iter().zip(&part_decays) {
                        mask[part.range()].fill(if decays { 1.0 } else { 0.0 });
                    }
                    Some(Tensor::from_vec(mask, var.shape(), var.device())?.to_dtype(var.dtype())?)
                } else {
                    None
                };
                Ok(ParamState {
                    lr_scales: vec![1.0; trainable.parts.len()],
                    lr_scale_mask: None,
                    decays: part_decays,
                    decay_mask,
                    moments,
                    trainable,
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

    /// Sets each parameter's learning rate to `scale_of(name)` times the schedule's
    /// (sentence-transformers' `learning_rate_mapping`: the mapped rate over the peak, so the
    /// schedule's factor applies to every group alike, as torch's `LambdaLR` does).
    pub fn set_learning_rate_scales(&mut self, scale_of: &dyn Fn(&str) -> f64) -> Result<()> {
        for param in &mut self.params {
            param.lr_scales = param
                .trainable
                .parts
                .iter()
                .map(|part| scale_of(&part.name))
                .collect();
            let mixed = param.lr_scales.iter().any(|&s| s != param.lr_scales[0]);
            param.lr_scale_mask = if mixed && matches!(param.moments, Moments::Tensors { .. }) {
                let var = &param.trainable.var;
                let mut mask = vec![0f32; var.elem_count()];
                for (part, &scale) in param.trainable.parts.iter().zip(&param.lr_scales) {
                    mask[part.range()].fill(scale as f32);
                }
                Some(Tensor::from_vec(mask, var.shape(), var.device())?.to_dtype(var.dtype())?)
            } else {
                None
            };
        }
        Ok(())
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The trainable `Var`s, in the order `step` expects gradients.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(ParamState::var)
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
            for (name, exp_avg, exp_avg_sq) in param.moment_tensors()? {
                tensors.push((format!("exp_avg.{name}"), exp_avg));
                tensors.push((format!("exp_avg_sq.{name}"), exp_avg_sq));
            }
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
            let var = param.trainable.var.clone();
            // Each part's moment, checked against the part's shape, then laid out as the
            // `Var` is (one packed vector for a packed layer).
            let load = |prefix: &str| -> std::result::Result<Tensor, OptimizerStateError> {
                let mut pieces = Vec::with_capacity(param.trainable.parts.len());
                for part in &param.trainable.parts {
                    let key = format!("{prefix}.{}", part.name);
                    let tensor = tensors
                        .get(&key)
                        .ok_or_else(|| OptimizerStateError::Missing { key: key.clone() })?;
                    if tensor.dims() != part.shape.dims() {
                        return Err(OptimizerStateError::Shape {
                            key,
                            found: tensor.dims().to_vec(),
                            expected: part.shape.dims().to_vec(),
                        });
                    }
                    pieces.push(
                        tensor
                            .to_dtype(var.dtype())?
                            .to_device(var.device())?
                            .flatten_all()?,
                    );
                }
                Ok(Tensor::cat(&pieces, 0)?.reshape(var.shape())?)
            };
            let (exp_avg, exp_avg_sq) = (load("exp_avg")?, load("exp_avg_sq")?);
            let as_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
                t.to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
            };
            param.moments = match param.moments {
                Moments::Cpu { .. } => Moments::Cpu {
                    exp_avg: as_vec(&exp_avg)?,
                    exp_avg_sq: as_vec(&exp_avg_sq)?,
                },
                Moments::Tensors { .. } => Moments::Tensors {
                    exp_avg,
                    exp_avg_sq,
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

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::Device;

    #[test]
    fn adamw_matches_torch_for_two_steps() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) on p = [1, -2] with gradients
        // g1 = [0.5, -1], g2 = [0.1, 0.2]:
        //   step 1: p = [0.899, -1.898]
        //   step 2: p = [0.798101..., -1.79701...]
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut adam = AdamW::new(
            vec![Trainable::single("w".into(), var.clone())],
            0.9,
            0.999,
            1e-8,
            0.01,
        )
        .unwrap();
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
        let mut a = AdamW::new(
            vec![Trainable::single("w".into(), fast.clone())],
            0.9,
            0.999,
            1e-8,
            0.1,
        )
        .unwrap();
        let mut b = AdamW::new(
            vec![Trainable::single("w".into(), slow.clone())],
            0.9,
            0.999,
            1e-8,
            0.1,
        )
        .unwrap();
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
        let mut c = AdamW::new(
            vec![Trainable::single("w".into(), fast.clone())],
            0.9,
            0.999,
            1e-8,
            0.1,
        )
        .unwrap();
        c.load_state(&saved, 5).unwrap();
        let again: std::collections::HashMap<String, Tensor> =
            c.state_tensors().unwrap().into_iter().collect();
        assert_eq!(
            saved["exp_avg_sq.w"].to_vec1::<f32>().unwrap(),
            again["exp_avg_sq.w"].to_vec1::<f32>().unwrap()
        );
    }

    /// A packed `Var` (a weight that decays and a bias that does not) steps exactly as the
    /// two parameters apart would, on the fused loop (f32) and the tensor ops (f64), and its
    /// moments are saved and restored under the parameters' own names.
    #[test]
    fn a_packed_var_steps_as_its_parts_apart() {
        use crosstrain_model::parameters::NamedPart;
        fn check<T: candle_core::WithDType>(cast: fn(f32) -> T) {
            let device = Device::Cpu;
            let weight = [0.5f32, -1.5, 2.0, 0.25, 1.0, -0.75].map(cast);
            let bias = [0.3f32, -0.1].map(cast);
            let packed_values: Vec<T> = weight.iter().chain(&bias).copied().collect();
            let packed = Var::new(packed_values.as_slice(), &device).unwrap();
            let parts = vec![
                NamedPart {
                    name: "l.dense.weight".into(),
                    offset: 0,
                    shape: (3, 2).into(),
                },
                NamedPart {
                    name: "l.dense.bias".into(),
                    offset: 6,
                    shape: 2.into(),
                },
            ];
            let trainable = Trainable {
                var: packed.clone(),
                parts,
            };
            let apart_weight = Var::new(&weight, &device).unwrap().reshape((3, 2)).unwrap();
            let apart_weight = Var::from_tensor(&apart_weight).unwrap();
            let apart_bias = Var::new(&bias, &device).unwrap();
            let mut together = AdamW::new(vec![trainable.clone()], 0.9, 0.999, 1e-8, 0.1).unwrap();
            let mut apart = AdamW::new(
                vec![
                    Trainable::single("l.dense.weight".into(), apart_weight.clone()),
                    Trainable::single("l.dense.bias".into(), apart_bias.clone()),
                ],
                0.9,
                0.999,
                1e-8,
                0.1,
            )
            .unwrap();
            for step in 0..4 {
                let g: Vec<T> = (0..8)
                    .map(|i| cast(0.1 * (i as f32 - 3.0) + 0.05 * step as f32))
                    .collect();
                let g_packed = Tensor::new(g.as_slice(), &device).unwrap();
                together.step(&[Some(g_packed.clone())], 1e-1).unwrap();
                apart
                    .step(
                        &[
                            Some(g_packed.narrow(0, 0, 6).unwrap().reshape((3, 2)).unwrap()),
                            Some(g_packed.narrow(0, 6, 2).unwrap()),
                        ],
                        1e-1,
                    )
                    .unwrap();
            }
            let to_f64 = |t: &Tensor| -> Vec<f64> {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let expected: Vec<f64> = to_f64(apart_weight.as_tensor())
                .into_iter()
                .chain(to_f64(apart_bias.as_tensor()))
                .collect();
            // Apart, the weight decays and the bias does not (by name): equal values mean the
            // packed `Var` decayed only its weight part.
            assert_eq!(to_f64(packed.as_tensor()), expected);
            let saved: std::collections::HashMap<String, Tensor> =
                together.state_tensors().unwrap().into_iter().collect();
            let apart_saved: std::collections::HashMap<String, Tensor> =
                apart.state_tensors().unwrap().into_iter().collect();
            assert_eq!(saved.len(), 4);
            for (key, value) in &apart_saved {
                assert_eq!(saved[key].dims(), value.dims(), "{key}");
                assert_eq!(to_f64(&saved[key]), to_f64(value), "{key}");
            }
            let mut restored = AdamW::new(vec![trainable], 0.9, 0.999, 1e-8, 0.1).unwrap();
            restored.load_state(&apart_saved, 4).unwrap();
            let again: std::collections::HashMap<String, Tensor> =
                restored.state_tensors().unwrap().into_iter().collect();
            for (key, value) in &apart_saved {
                assert_eq!(to_f64(&again[key]), to_f64(value), "{key}");
            }
        }
        check::<f32>(|x| x);
        check::<f64>(f64::from);
    }

    #[test]
    fn learning_rate_scales_step_each_part_at_its_rate() {
        use crosstrain_model::parameters::NamedPart;
        fn check<T: candle_core::WithDType>(cast: fn(f32) -> T) {
            let device = Device::Cpu;
            let values: Vec<T> = [0.5f32, -1.5, 2.0, 0.25, 1.0, -0.75, 0.3, -0.1]
                .map(cast)
                .to_vec();
            let packed = Var::new(values.as_slice(), &device).unwrap();
            let parts = vec![
                NamedPart {
                    name: "head.weight".into(),
                    offset: 0,
                    shape: (3, 2).into(),
                },
                NamedPart {
                    name: "head.bias".into(),
                    offset: 6,
                    shape: 2.into(),
                },
            ];
            let trainable = Trainable {
                var: packed.clone(),
                parts,
            };
            let mut scaled = AdamW::new(vec![trainable], 0.9, 0.999, 1e-8, 0.1).unwrap();
            scaled
                .set_learning_rate_scales(&|name| if name.ends_with("weight") { 3.0 } else { 0.5 })
                .unwrap();
            // Apart, each part with its own optimiser at its own rate.
            let weight = Var::new(&values[..6], &device).unwrap();
            let bias = Var::new(&values[6..], &device).unwrap();
            let mut weight_alone = AdamW::new(
                vec![Trainable::single("head.weight".into(), weight.clone())],
                0.9,
                0.999,
                1e-8,
                0.1,
            )
            .unwrap();
            let mut bias_alone = AdamW::new(
                vec![Trainable::single("head.bias".into(), bias.clone())],
                0.9,
                0.999,
                1e-8,
                0.1,
            )
            .unwrap();
            for step in 0..4 {
                let g: Vec<T> = (0..8)
                    .map(|i| cast(0.1 * (i as f32 - 3.0) + 0.05 * step as f32))
                    .collect();
                let g = Tensor::new(g.as_slice(), &device).unwrap();
                scaled.step(&[Some(g.clone())], 1e-2).unwrap();
                weight_alone
                    .step(&[Some(g.narrow(0, 0, 6).unwrap())], 3e-2)
                    .unwrap();
                bias_alone
                    .step(&[Some(g.narrow(0, 6, 2).unwrap())], 0.5e-2)
                    .unwrap();
            }
            let to_f64 =
                |t: &Tensor| -> Vec<f64> { t.to_dtype(DType::F64).unwrap().to_vec1().unwrap() };
            let expected: Vec<f64> = to_f64(weight.as_tensor())
                .into_iter()
                .chain(to_f64(bias.as_tensor()))
                .collect();
            for (got, want) in to_f64(packed.as_tensor()).iter().zip(&expected) {
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
            assert_ne!(
                to_f64(packed.as_tensor()),
                to_f64(&Tensor::new(values.as_slice(), &device).unwrap())
            );
        }
        // f32 takes the fused CPU loop, f64 the tensor path with its scale mask.
        check::<f32>(|x| x);
        check::<f64>(f64::from);
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
