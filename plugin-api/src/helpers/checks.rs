//! Input checks that turn a malformed batch into a precise error instead of a wrong number:
//! the logit count, the text columns, one label per row, finite values.

use crate::author::{LossError, LossResult};
use crate::types::{BatchShape, LabelLayout, Labels, PairPlan};

/// Checks that `logits` holds `plan.len() × num_labels` values and that the loss got the
/// number of model outputs it needs.
pub fn check_logits(
    loss: &str,
    plan: &PairPlan,
    logits: &[f32],
    num_labels: usize,
    required: Option<usize>,
) -> LossResult<()> {
    if let Some(required) = required {
        if num_labels != required {
            return Err(LossError::new(format!(
                "{loss} needs a model with num_labels = {required}, got {num_labels}"
            )));
        }
    }
    if num_labels == 0 || logits.len() != plan.len() * num_labels {
        return Err(LossError::new(format!(
            "{loss}: expected {} logits ({} pairs × {num_labels} labels), got {}",
            plan.len() * num_labels,
            plan.len(),
            logits.len()
        )));
    }
    Ok(())
}

/// Checks that no text column holds document lists and that there are between `min` and `max`
/// of them.
pub fn require_text_columns(
    loss: &str,
    shape: &BatchShape,
    min: usize,
    max: usize,
    layout: &str,
) -> LossResult<()> {
    let columns = shape.num_columns();
    if columns < min || columns > max {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but the batch has {columns} text column(s)"
        )));
    }
    if let Some(index) = shape
        .columns
        .iter()
        .position(|column| column.list_lengths().is_some())
    {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but text column {index} holds lists of documents"
        )));
    }
    Ok(())
}

/// One label per row, exactly `rows` of them.
pub fn labels_per_row(loss: &str, labels: &Labels, rows: usize) -> LossResult<Vec<f64>> {
    match labels.layout {
        LabelLayout::PerRow if labels.values.len() == rows => {
            Ok(labels.values.iter().map(|&v| f64::from(v)).collect())
        }
        LabelLayout::PerRow => Err(LossError::new(format!(
            "{loss}: expected {rows} labels (one per row), got {}",
            labels.values.len()
        ))),
        LabelLayout::PerRowList => Err(LossError::new(format!(
            "{loss} expects one number per row as label, got a list per row"
        ))),
        LabelLayout::None => Err(LossError::new(format!(
            "{loss} needs a label column (label, labels, score or scores)"
        ))),
    }
}

/// Rejects NaN or infinite logits with the pair that produced them.
pub fn check_finite(loss: &str, logits: &[f32]) -> LossResult<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(LossError::new(format!(
            "{loss}: logit {index} is {} (the model produced a non-finite score)",
            logits[index]
        ))),
        None => Ok(()),
    }
}
