//! The activation sentence-transformers' `predict` applies to a model's logits.

use std::path::Path;

use serde_json::Value;

use crate::files::read_json;

/// The sentence-transformers activation a model's `predict` applies by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultActivation {
    /// Sigmoid (1 label).
    Sigmoid,
    /// Identity (several labels, or as configured).
    Identity,
}

impl DefaultActivation {
    /// Applies the activation to rows of logits, as the reference's `predict` does before
    /// handing scores to its evaluators.
    pub fn apply(self, logits: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        match self {
            DefaultActivation::Identity => logits,
            DefaultActivation::Sigmoid => logits
                .into_iter()
                .map(|row| row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect())
                .collect(),
        }
    }
}

/// The activation stored in `config_sentence_transformers.json` (v6), else the library's
/// default: sigmoid for one label, identity otherwise.
pub(crate) fn default_activation(dir: &Path, num_labels: usize) -> DefaultActivation {
    let stored = read_json(&dir.join("config_sentence_transformers.json"))
        .ok()
        .and_then(|v| {
            v.get("activation_fn")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    match stored.as_deref() {
        Some(name) if name.ends_with("Sigmoid") => DefaultActivation::Sigmoid,
        Some(name) if name.ends_with("Identity") => DefaultActivation::Identity,
        _ if num_labels == 1 => DefaultActivation::Sigmoid,
        _ => DefaultActivation::Identity,
    }
}
