//! ONNX export of the cross-encoder and inference with ONNX Runtime.

pub mod export;
pub mod runtime;

use std::path::Path;

pub use export::{export_onnx, ExportError, MIN_OPSET};
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
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.query.as_str(), p.document.as_str()))
        .collect();
    let candle = model.predict(&borrowed, 32)?;
    let onnx = OnnxScorer::for_model(model, onnx_file)?;
    let runtime = onnx.predict(&borrowed, 32)?;
    Ok(candle
        .iter()
        .flatten()
        .zip(runtime.iter().flatten())
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0f64, f64::max))
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
