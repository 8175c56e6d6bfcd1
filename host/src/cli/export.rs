//! `crosstrain export-onnx`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crosstrain::data::pairs::read_pairs;
use crosstrain::model::{resolve_model_dir, CrossEncoder, LoadOptions};
use crosstrain::onnx::{agreement, export_onnx_with, parity_pairs, Quantization, MIN_OPSET};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model directory (or Hugging Face id; then --output is required).
    #[arg(long)]
    model: String,
    /// Where to write the ONNX file (default: MODEL/onnx/model.onnx, or
    /// MODEL/onnx/model_qint8_avx512_vnni.onnx with --quantize int8).
    #[arg(long)]
    output: Option<PathBuf>,
    /// `int8`: dynamic int8 quantization of every linear layer, as ONNX Runtime's
    /// `quantize_dynamic` (per-channel int8 weights, uint8 activations at run time).
    #[arg(long, value_parser = ["int8"])]
    quantize: Option<String>,
    /// With --quantize and --check: the smallest Spearman rank correlation with candle's
    /// float32 logits that passes. The built-in 24 parity pairs are adversarial (empty and
    /// 500-token documents, emoji), so the default is lower than what a dev set shows
    /// (STS-B dev, 1,500 pairs: 0.996); give --pairs for a real check.
    #[arg(long, default_value_t = 0.95)]
    min_spearman: f64,
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
    let quantization = match args.quantize.as_deref() {
        Some("int8") => Quantization::Int8,
        _ => Quantization::None,
    };
    let output = match &args.output {
        Some(path) => path.clone(),
        None => resolve_model_dir(&args.model)?
            .join("onnx")
            .join(quantization.file_name()),
    };
    let bytes = export_onnx_with(&model, args.opset, quantization)?;
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
    let agreement = agreement(&model, &output, &pairs)?;
    let max_diff = agreement.max_abs_diff;
    // A trained directory's card mentions the int8 file with its measured agreement.
    if quantization == Quantization::Int8 {
        if let Ok(dir) = resolve_model_dir(&args.model) {
            if let Ok(file) = output.strip_prefix(&dir) {
                let export = crosstrain::card::QuantizedOnnxSummary {
                    file: file.display().to_string(),
                    pairs: pairs.len(),
                    max_abs_logit_diff: max_diff,
                    spearman: agreement.spearman,
                };
                if crosstrain::card::record_quantized_export(
                    &dir,
                    export,
                    &crosstrain::train::config::default_values(),
                )? {
                    writeln!(
                        out,
                        "updated the model card {}",
                        dir.join("README.md").display()
                    )?;
                }
            }
        }
    }
    // A quantized model cannot match float32 to 1e-5; what must hold is the ranking.
    let (passed, criterion) = match quantization {
        Quantization::None => (
            max_diff <= args.tolerance,
            format!("tolerance {:e}", args.tolerance),
        ),
        Quantization::Int8 => (
            agreement.spearman >= args.min_spearman,
            format!("Spearman at least {}", args.min_spearman),
        ),
    };
    writeln!(
        out,
        "ONNX Runtime vs candle on {} pairs: max |logit difference| {max_diff:.3e}, Spearman \
         {:.5} ({criterion}): {}",
        pairs.len(),
        agreement.spearman,
        if passed { "ok" } else { "FAILED" }
    )?;
    Ok(passed)
}
