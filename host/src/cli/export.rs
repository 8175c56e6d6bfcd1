//! `crosstrain export-onnx`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crosstrain::data::pairs::read_pairs;
use crosstrain::model::{resolve_model_dir, CrossEncoder, LoadOptions};
use crosstrain::onnx::{export_onnx, parity, parity_pairs, MIN_OPSET};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model directory (or Hugging Face id; then --output is required).
    #[arg(long)]
    model: String,
    /// Where to write the ONNX file (default: MODEL/onnx/model.onnx).
    #[arg(long)]
    output: Option<PathBuf>,
    /// ONNX opset (17 or newer).
    #[arg(long, default_value_t = MIN_OPSET)]
    opset: i64,
    /// Run candle and ONNX Runtime on the parity pairs (or --pairs) and compare the logits.
    #[arg(long)]
    check: bool,
    /// Pairs for --check (JSONL {query, document} or a 2-column TSV).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Largest allowed |logit difference| for --check.
    #[arg(long, default_value_t = 1e-5)]
    tolerance: f64,
}

pub fn run(args: ExportArgs, out: &mut String) -> anyhow::Result<bool> {
    let model = CrossEncoder::load(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading model {}", args.model))?;
    let output = match &args.output {
        Some(path) => path.clone(),
        None => resolve_model_dir(&args.model)?
            .join("onnx")
            .join("model.onnx"),
    };
    let bytes = export_onnx(&model, args.opset)?;
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    // Atomic: write beside the target, then rename.
    let partial = parent.join(format!(
        ".{}.partial-{}",
        output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &output).with_context(|| format!("writing {}", output.display()))?;
    writeln!(
        out,
        "wrote {} ({} bytes, opset {})",
        output.display(),
        bytes.len(),
        args.opset
    )?;
    if !args.check {
        return Ok(true);
    }
    let pairs = match &args.pairs {
        Some(path) => read_pairs(path)?,
        None => parity_pairs()?,
    };
    let max_diff = parity(&model, &output, &pairs)?;
    let passed = max_diff <= args.tolerance;
    writeln!(
        out,
        "ONNX Runtime vs candle on {} pairs: max |logit difference| {max_diff:.3e} (tolerance {:e}): {}",
        pairs.len(),
        args.tolerance,
        if passed { "ok" } else { "FAILED" }
    )?;
    Ok(passed)
}
