//! ONNX export of the cross-encoder and inference with ONNX Runtime.

pub mod export;
pub mod runtime;

use std::path::Path;

pub use export::{
    cpu_has_vnni, export_onnx, export_onnx_with, ExportError, Quantization, MAX_OPSET, MIN_OPSET,
};
pub use runtime::{library_path, OnnxError, OnnxScorer};

use crate::data::pairs::{parse_pairs, DataError, TextPair};
use crosstrain_model::CrossEncoder;

/// The reference's parity pairs (accents, CJK, emoji, empty and very long documents).
const PARITY_PAIRS: &str = include_str!("../../assets/parity_pairs.jsonl");

/// The built-in parity pairs.
pub fn parity_pairs() -> Result<Vec<TextPair>, DataError> {
    parse_pairs(PARITY_PAIRS, Path::new("<built-in parity_pairs.jsonl>"))
}

/// The largest |logit difference| between candle and ONNX Runtime running `onnx_file` on
/// `pairs`.
pub fn parity(
    model: &CrossEncoder,
    onnx_file: &Path,
    pairs: &[TextPair],
) -> Result<f64, ParityError> {
    Ok(agreement(model, onnx_file, pairs)?.max_abs_diff)
}

/// How an exported model agrees with candle on a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The largest |logit difference|.
    pub max_abs_diff: f64,
    /// Spearman's rank correlation of the two sets of logits (all labels flattened): what
    /// decides a reranker's order.
    pub spearman: f64,
}

/// Runs candle and ONNX Runtime on `onnx_file` over `pairs` and compares the logits.
pub fn agreement(
    model: &CrossEncoder,
    onnx_file: &Path,
    pairs: &[TextPair],
) -> Result<Agreement, ParityError> {
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.query.as_str(), p.document.as_str()))
        .collect();
    let candle: Vec<f64> = model
        .predict(&borrowed, 32)?
        .into_iter()
        .flatten()
        .map(f64::from)
        .collect();
    let onnx = OnnxScorer::for_model(model, onnx_file)?;
    let runtime: Vec<f64> = onnx
        .predict(&borrowed, 32)?
        .into_iter()
        .flatten()
        .map(f64::from)
        .collect();
    let max_abs_diff = candle
        .iter()
        .zip(&runtime)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    use crate::eval::correlation::{average_ranks, pearson};
    let spearman = pearson(&average_ranks(&candle), &average_ranks(&runtime));
    Ok(Agreement {
        max_abs_diff,
        spearman,
    })
}

/// A failed parity check.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// candle failed.
    #[error(transparent)]
    Model(#[from] crosstrain_model::ModelError),
    /// ONNX Runtime failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}
