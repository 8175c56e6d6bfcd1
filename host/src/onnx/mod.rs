//! ONNX export of the cross-encoder and inference with ONNX Runtime.

pub mod export;
pub mod runtime;

pub use export::{export_onnx, ExportError, MIN_OPSET};
pub use runtime::{library_path, OnnxError, OnnxScorer};
