//! The trainer's side of a data-parallel job: the start-up check that every rank has the same
//! recipe, model and data; gradients averaged across ranks; the per-step figures (loss, pairs,
//! a stop request) agreed by all ranks; every rank's dropout stream in the checkpoint.

#![allow(unused_imports)]
use super::*;

use sha2::{Digest, Sha256};

use crate::data::dataset::TextValues;
use crate::distributed::World;

/// Compares a digest of the recipe, of the model's weights and of the data of every rank
/// with rank 0's, so that a rank started on another file, checkpoint or setting is refused
/// before the first step instead of silently training something else. Every rank gets the
/// same answer.
pub(super) fn check_same_job(
    world: &World,
    config: &TrainConfig,
    model: &CrossEncoder,
    train_sources: &[sources::TrainSource],
    eval_sources: &[sources::EvalSource],
) -> Result<(), TrainError> {
    if !world.is_distributed() {
        return Ok(());
    }
    let mut recipe = serde_json::to_value(config).unwrap_or_default();
    // Each rank may drive its own device (`cuda:0`, `cuda:1`, ...) and reach the same model
    // and data by other paths (a copy on each machine): those are compared by content below,
    // and the data specs' reading options stay in the recipe. The output is rank 0's alone.
    without_paths(&mut recipe);
    let recipe = Sha256::digest(recipe.to_string().as_bytes());
    let mut weights = Sha256::new();
    for (name, value) in model.named_parameters().map_err(ModelError::from)? {
        weights.update(name.as_bytes());
        let values = value
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(ModelError::from)?;
        for value in values {
            weights.update(value.to_le_bytes());
        }
    }
    let weights = weights.finalize();
    let mut data = Sha256::new();
    let datasets = train_sources
        .iter()
        .map(|s| (&s.name, &s.dataset))
        .chain(eval_sources.iter().map(|s| (&s.name, &s.dataset)));
    for (name, dataset) in datasets {
        data.update(dataset_digest(name, dataset));
    }
    let data = data.finalize();
    let mine: Vec<u8> = [recipe.as_slice(), weights.as_slice(), data.as_slice()].concat();
    let all = world.gather_all(&mine);
    let reference = &all[0];
    for (rank, theirs) in all.iter().enumerate().skip(1) {
        for (index, (what, detail)) in [
            ("recipe", "the resolved config, device aside"),
            ("model", "the start weights"),
            ("data", "rows, labels or texts"),
        ]
        .into_iter()
        .enumerate()
        {
            let part = index * 32..(index + 1) * 32;
            if theirs.get(part.clone()) != reference.get(part) {
                return Err(TrainError::RankMismatch {
                    rank,
                    ranks: world.size(),
                    what,
                    detail: detail.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// `recipe` without the keys that may differ between ranks of one job: the device, the
/// output, and every path to the model and data (`model`, any `files` and `data`).
fn without_paths(recipe: &mut Value) {
    match recipe {
        Value::Object(map) => {
            for key in ["device", "output", "model", "files", "data"] {
                map.remove(key);
            }
            map.values_mut().for_each(without_paths);
        }
        Value::Array(items) => items.iter_mut().for_each(without_paths),
        _ => {}
    }
}

/// A digest of a dataset that reads little of it: its shape, every label, and the texts of
/// every row of a dataset in memory, or of its first and last rows for one on disk (which is
/// not read whole for this).
pub(super) fn dataset_digest(name: &str, dataset: &Dataset) -> [u8; 32] {
    const ENDS: usize = 64;
    let mut digest = Sha256::new();
    digest.update(name.as_bytes());
    digest.update((dataset.len() as u64).to_le_bytes());
    digest.update(dataset.describe().as_bytes());
    match dataset.label.as_ref().map(|l| &l.values) {
        Some(LabelValues::Scalars(values)) => {
            for value in values {
                digest.update(value.to_le_bytes());
            }
        }
        Some(LabelValues::Lists(lists)) => {
            for list in lists {
                digest.update((list.len() as u64).to_le_bytes());
                for value in list {
                    digest.update(value.to_le_bytes());
                }
            }
        }
        None => {}
    }
    let rows = dataset.len();
    let sampled: Box<dyn Iterator<Item = usize>> = if dataset.cache.is_none() {
        Box::new(0..rows)
    } else {
        Box::new((0..rows.min(ENDS)).chain(rows.saturating_sub(ENDS).max(ENDS)..rows))
    };
    for row in sampled {
        for column in &dataset.columns {
            for text in column.row_texts(row) {
                digest.update((text.len() as u64).to_le_bytes());
                digest.update(text.as_bytes());
            }
        }
    }
    digest.finalize().into()
}

/// Sums every rank's gradients (each already weighted by its share of the global batch) in
/// place, in [`crate::distributed::BUCKET_FLOATS`]-sized buckets of the flattened
/// parameters. A parameter that has a gradient on any rank gets one on every rank (zeros
/// where it had none), so all ranks take the same optimizer step.
pub(super) fn sum_gradients(
    world: &World,
    device_sum: Option<&crate::distributed::DeviceSum>,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
) -> Result<(), TrainError> {
    if !world.is_distributed() {
        return Ok(());
    }
    let mut present: Vec<f64> = grads
        .iter()
        .map(|g| if g.is_some() { 1.0 } else { 0.0 })
        .collect();
    world.max_f64(&mut present);
    if let Some(device_sum) = device_sum {
        return sum_gradients_on_device(device_sum, vars, grads, &present)
            .map_err(|e| TrainError::Model(ModelError::from(e)));
    }
    let mut flat: Vec<f32> = Vec::new();
    let mut layout = Vec::new();
    for ((slot, var), present) in grads.iter().zip(vars).zip(&present) {
        if *present == 0.0 {
            continue;
        }
        let values = match slot {
            Some(grad) => grad
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(ModelError::from)?,
            None => vec![0.0; var.elem_count()],
        };
        layout.push((flat.len(), values.len()));
        flat.extend_from_slice(&values);
    }
    world.sum_f32_bucketed(&mut flat);
    let mut layout = layout.into_iter();
    for ((slot, var), present) in grads.iter_mut().zip(vars).zip(&present) {
        if *present == 0.0 {
            continue;
        }
        let (start, len) = layout.next().expect("one entry per present gradient");
        let summed = Tensor::from_slice(&flat[start..start + len], var.shape(), var.device())
            .and_then(|t| t.to_dtype(var.dtype()))
            .map_err(ModelError::from)?;
        *slot = Some(summed);
    }
    Ok(())
}

/// [`sum_gradients`] on the GPU: the flattened gradients concatenated into buckets of about
/// [`crate::distributed::BUCKET_FLOATS`] on the device, each summed by NCCL, and cut back.
fn sum_gradients_on_device(
    device_sum: &crate::distributed::DeviceSum,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
    present: &[f64],
) -> candle_core::Result<()> {
    let indices: Vec<usize> = (0..grads.len()).filter(|&i| present[i] != 0.0).collect();
    let mut start = 0;
    while start < indices.len() {
        let mut end = start;
        let mut floats = 0;
        while end < indices.len()
            && (end == start
                || floats + vars[indices[end]].elem_count() <= crate::distributed::BUCKET_FLOATS)
        {
            floats += vars[indices[end]].elem_count();
            end += 1;
        }
        let pieces = indices[start..end]
            .iter()
            .map(|&i| match &grads[i] {
                Some(grad) => grad.flatten_all()?.to_dtype(candle_core::DType::F32),
                None => Tensor::zeros(
                    vars[i].elem_count(),
                    candle_core::DType::F32,
                    vars[i].device(),
                ),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let summed = device_sum.sum(&Tensor::cat(&pieces, 0)?)?;
        let mut offset = 0;
        for &i in &indices[start..end] {
            let var = &vars[i];
            let count = var.elem_count();
            grads[i] = Some(
                summed
                    .narrow(0, offset, count)?
                    .reshape(var.shape())?
                    .to_dtype(var.dtype())?,
            );
            offset += count;
        }
        start = end;
    }
    Ok(())
}

/// What every rank contributed to one batch, summed across ranks: the loss and its named
/// components weighted by each rank's share of the batch (so the sum is the batch's loss), the
/// pairs scored, and whether any rank met a non-finite logit.
pub(super) struct BatchFigures {
    pub(super) loss: f64,
    pub(super) components: Vec<(String, f64)>,
    pub(super) pairs: usize,
}

/// Components of a loss summed across ranks; a loss reporting more keeps the rest per rank.
const MAX_COMPONENTS: usize = 16;

/// Sums a rank's [`BatchFigures`] across ranks; `weight` is its share of the global batch.
/// A non-finite loss anywhere makes the sum non-finite everywhere, so every rank stops at the
/// same step with the same error. The component names are this rank's (a rank with no rows
/// in a short last batch has none, and is never rank 0, which logs).
pub(super) fn sum_batch_figures(world: &World, local: BatchFigures, weight: f64) -> BatchFigures {
    if !world.is_distributed() {
        return local;
    }
    // The same length on every rank, whatever each one's loss reported.
    let mut values = vec![0.0; 2 + MAX_COMPONENTS];
    values[0] = local.loss * weight;
    values[1] = local.pairs as f64;
    for (slot, (_, value)) in values[2..].iter_mut().zip(&local.components) {
        *slot = value * weight;
    }
    world.sum_f64(&mut values);
    BatchFigures {
        loss: values[0],
        pairs: values[1].round() as usize,
        components: local
            .components
            .into_iter()
            .zip(values[2..].iter())
            .map(|((name, _), &value)| (name, value))
            .collect(),
    }
}

/// The stop signal any rank received (the highest number), so that every rank stops after the
/// same step.
pub(super) fn agreed_signal(world: &World, local: Option<i32>) -> Option<i32> {
    if !world.is_distributed() {
        return local;
    }
    let mut signal = [f64::from(local.unwrap_or(0))];
    world.max_f64(&mut signal);
    (signal[0] > 0.0).then_some(signal[0] as i32)
}

/// Whether any rank's `local` is true (rank 0 decides what only it computed).
pub(super) fn agreed_flag(world: &World, local: bool) -> bool {
    if !world.is_distributed() {
        return local;
    }
    let mut flag = [f64::from(u8::from(local))];
    world.max_f64(&mut flag);
    flag[0] > 0.0
}

/// Every rank's dropout stream position, in rank order (for the checkpoint).
pub(super) fn gather_dropout_states(world: &World, local: Option<u64>) -> Vec<Option<u64>> {
    if !world.is_distributed() {
        return Vec::new();
    }
    let mut bytes = [0u8; 9];
    if let Some(state) = local {
        bytes[0] = 1;
        bytes[1..].copy_from_slice(&state.to_le_bytes());
    }
    world
        .gather_all(&bytes)
        .into_iter()
        .map(|theirs| {
            (theirs.first() == Some(&1)).then(|| {
                let mut state = [0u8; 8];
                state.copy_from_slice(&theirs[1..9]);
                u64::from_le_bytes(state)
            })
        })
        .collect()
}
