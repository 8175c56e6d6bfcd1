//! One batch: the loss plans the pairs, the model scores them, the plugin turns the logits into
//! the loss and dLoss/dlogits, and candle back-propagates `Σ logits · dLoss/dlogits` into the
//! parameters. With a chunk size, gradient caching bounds memory by the chunk: every chunk is
//! scored without keeping its graph, the plugin sees all logits at once, and each chunk is then
//! re-scored with a graph (replaying its dropout masks) and back-propagates its slice.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, Var};

use crate::data::dataset::Dataset;
use crate::plugins::{Loss, PluginError};
use crosstrain_model::{CrossEncoder, ModelError};

/// What can fail in a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The plan refers to a text the batch does not have.
    #[error("{loss}: the plan refers to column {column}, row {row}, item {item}, which the batch does not have")]
    BadPlan {
        /// The loss.
        loss: String,
        /// Column.
        column: u32,
        /// Row.
        row: u32,
        /// Item.
        item: u32,
    },
    /// The model produced a NaN or infinite logit.
    #[error("the model produced a non-finite logit ({value})")]
    NonFiniteLogit {
        /// The value.
        value: f32,
    },
    /// The gradient has the wrong length.
    #[error("{loss}: returned {got} gradient values for {expected} logits")]
    BadGradient {
        /// The loss.
        loss: String,
        /// Values returned.
        got: usize,
        /// Values expected.
        expected: usize,
    },
}

/// Time spent in each phase of a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Tokenization.
    pub tokenize: Duration,
    /// Forward passes (both passes when caching).
    pub forward: Duration,
    /// The plugin's `compute`.
    pub loss: Duration,
    /// Back-propagation and gradient accumulation.
    pub backward: Duration,
}

impl std::ops::AddAssign for PhaseTimes {
    fn add_assign(&mut self, other: Self) {
        self.tokenize += other.tokenize;
        self.forward += other.forward;
        self.loss += other.loss;
        self.backward += other.backward;
    }
}

/// The result of one batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// The loss value.
    pub loss: f64,
    /// Named components of the loss.
    pub components: Vec<(String, f64)>,
    /// Pairs scored.
    pub pairs: usize,
    /// Where the time went.
    pub times: PhaseTimes,
}

/// Gradients summed over batches (and chunks), one slot per parameter.
pub struct GradAccumulator {
    grads: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    /// Empty slots for `n` parameters.
    pub fn new(n: usize) -> Self {
        Self {
            grads: vec![None; n],
        }
    }

    fn add(
        &mut self,
        vars: &[Var],
        store: &candle_core::backprop::GradStore,
    ) -> candle_core::Result<()> {
        for (slot, var) in self.grads.iter_mut().zip(vars) {
            if let Some(grad) = store.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + grad)?,
                    None => grad.clone(),
                });
            }
        }
        Ok(())
    }

    /// Takes the gradients, leaving empty slots.
    pub fn take(&mut self) -> Vec<Option<Tensor>> {
        let n = self.grads.len();
        std::mem::replace(&mut self.grads, vec![None; n])
    }
}

/// The `(text_a, text_b)` pairs of a plan for the rows `rows` of `dataset`.
pub fn plan_texts<'d>(
    loss: &Loss,
    dataset: &'d Dataset,
    rows: &[usize],
    plan: &crosstrain_plugin_api::PairPlan,
) -> Result<Vec<(&'d str, &'d str)>, StepError> {
    plan.pairs
        .iter()
        .map(|pair| {
            let text = |reference: crosstrain_plugin_api::TextRef| {
                dataset
                    .text(rows, reference)
                    .ok_or_else(|| StepError::BadPlan {
                        loss: loss.qualified_name().to_string(),
                        column: reference.column,
                        row: reference.row,
                        item: reference.item,
                    })
            };
            Ok((text(pair.text_a)?, text(pair.text_b)?))
        })
        .collect()
}

fn scores(logits: &Tensor) -> Result<Vec<f32>, StepError> {
    Ok(logits
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Runs one batch and adds `scale ×` its gradients to `grads` (`scale` is
/// 1/gradient_accumulation_steps). `chunk` overrides the plan's `mini_batch_size`; `prompt`
/// is the recipe's prompt for the batch's dataset.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_batch(
    model: &CrossEncoder,
    vars: &[Var],
    loss: &Loss,
    dataset: &Dataset,
    rows: &[usize],
    plan_seed: u64,
    chunk: Option<usize>,
    scale: f64,
    prompt: Option<&str>,
    grads: &mut GradAccumulator,
) -> Result<BatchOutcome, StepError> {
    let mut times = PhaseTimes::default();
    let shape = dataset.batch_shape(rows);
    let plan = loss.plan(&shape, plan_seed)?;
    let labels = dataset.batch_labels(rows);
    let pairs = plan_texts(loss, dataset, rows, &plan)?;
    let num_labels = model.num_labels();
    let chunk = chunk
        .or(plan.mini_batch_size().map(|n| n as usize))
        .filter(|&n| n > 0 && n < pairs.len());

    let started = Instant::now();
    let chunks: Vec<&[(&str, &str)]> = match chunk {
        Some(size) => pairs.chunks(size).collect(),
        None => vec![pairs.as_slice()],
    };
    let mut encoded = Vec::with_capacity(chunks.len());
    for pairs in &chunks {
        let tokens = model.encode_with_prompt(pairs, prompt)?;
        encoded.push(model.token_tensors(&tokens)?);
    }
    times.tokenize += started.elapsed();

    let dropout = model.dropout();
    let (logits_values, kept_graph, replay_from) = if chunks.len() == 1 {
        let started = Instant::now();
        let logits = model.forward(&encoded[0])?;
        let values = scores(&logits)?;
        times.forward += started.elapsed();
        (values, Some(logits), Vec::new())
    } else {
        let started = Instant::now();
        let mut values = Vec::with_capacity(pairs.len() * num_labels);
        let mut snapshots = Vec::with_capacity(chunks.len());
        for tokens in &encoded {
            snapshots.push(dropout.snapshot());
            // The graph is dropped with `logits` at the end of the iteration.
            let logits = model.forward(tokens)?;
            values.extend(scores(&logits)?);
        }
        times.forward += started.elapsed();
        (values, None, snapshots)
    };

    if let Some(&value) = logits_values.iter().find(|v| !v.is_finite()) {
        return Err(StepError::NonFiniteLogit { value });
    }
    let started = Instant::now();
    let output = loss.compute(&plan, &logits_values, num_labels, &labels)?;
    times.loss += started.elapsed();
    if output.grad.len() != logits_values.len() {
        return Err(StepError::BadGradient {
            loss: loss.qualified_name().to_string(),
            got: output.grad.len(),
            expected: logits_values.len(),
        });
    }
    let dtype = vars.first().map_or(DType::F32, |v| v.dtype());
    let gradient_slice = |start: usize, rows: usize| -> Result<Tensor, StepError> {
        let values: Vec<f64> = output.grad[start * num_labels..(start + rows) * num_labels]
            .iter()
            .map(|g| g * scale)
            .collect();
        Ok(Tensor::from_vec(values, (rows, num_labels), model.device())?.to_dtype(dtype)?)
    };

    match kept_graph {
        Some(logits) => {
            let started = Instant::now();
            let upstream = gradient_slice(0, pairs.len())?;
            let store = (logits * upstream)?.sum_all()?.backward()?;
            grads.add(vars, &store)?;
            times.backward += started.elapsed();
        }
        None => {
            let after_first_pass = dropout.snapshot();
            let mut start = 0;
            for (tokens, snapshot) in encoded.iter().zip(replay_from) {
                let rows = tokens.input_ids.dim(0)?;
                let started = Instant::now();
                dropout.restore(snapshot);
                let logits = model.forward(tokens)?;
                times.forward += started.elapsed();
                let started = Instant::now();
                let upstream = gradient_slice(start, rows)?;
                let store = (logits * upstream)?.sum_all()?.backward()?;
                grads.add(vars, &store)?;
                times.backward += started.elapsed();
                start += rows;
            }
            dropout.restore(after_first_pass);
        }
    }
    Ok(BatchOutcome {
        loss: output.loss,
        components: output
            .components
            .iter()
            .map(|c| (c.0.to_string(), c.1))
            .collect(),
        pairs: pairs.len(),
        times,
    })
}

/// The loss of a batch in eval mode, without gradients.
pub fn batch_loss(
    model: &CrossEncoder,
    loss: &Loss,
    dataset: &Dataset,
    rows: &[usize],
    plan_seed: u64,
    eval_batch_size: usize,
    prompt: Option<&str>,
) -> Result<f64, StepError> {
    let shape = dataset.batch_shape(rows);
    let plan = loss.plan(&shape, plan_seed)?;
    let labels = dataset.batch_labels(rows);
    let pairs = plan_texts(loss, dataset, rows, &plan)?;
    let mut values = Vec::with_capacity(pairs.len() * model.num_labels());
    for chunk in pairs.chunks(eval_batch_size.max(1)) {
        let tokens = model.encode_with_prompt(chunk, prompt)?;
        values.extend(scores(&model.forward(&model.token_tensors(&tokens)?)?)?);
    }
    Ok(loss
        .compute(&plan, &values, model.num_labels(), &labels)?
        .loss)
}
