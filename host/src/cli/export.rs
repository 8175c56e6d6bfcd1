//! `crosstrain export-onnx`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crosstrain::data::pairs::read_pairs;
use crosstrain::model::{resolve_model_dir, CrossEncoder, LoadOptions};
use crosstrain::onnx::{
    agreement, export_onnx_with, parity_pairs, Quantization, MAX_OPSET, MIN_OPSET,
};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model directory (or Hugging Face id; then --output is required).
    #[arg(long)]
    model: String,
    /// The base model of a LoRA adapter directory, instead of the one its
    /// adapter_config.json names (the adapter is merged into the graph).
    #[arg(long, value_name = "DIR|ID")]
    base_model: Option<String>,
    /// Where to write the ONNX file (default: MODEL/onnx/model.onnx, or
    /// MODEL/onnx/model_qint8_avx512_vnni.onnx with --quantize int8,
    /// MODEL/onnx/model_quint8_avx2.onnx with --quantize uint8).
    #[arg(long)]
    output: Option<PathBuf>,
    /// `int8`: dynamic int8 quantization of every linear layer, as ONNX Runtime's
    /// `quantize_dynamic` (per-channel int8 weights, uint8 activations at run time), for CPUs
    /// with AVX-512 VNNI; `uint8`: the same values with uint8 weights, for CPUs with AVX2 only
    /// (where int8 weights saturate in ONNX Runtime's kernels).
    #[arg(long, value_parser = ["int8", "uint8"])]
    quantize: Option<String>,
    /// With --quantize and --check: the smallest Spearman rank correlation with candle's
    /// float32 logits that passes. The built-in 24 parity pairs are adversarial (empty and
    /// 500-token documents, emoji), so the default is lower than what a dev set shows
    /// (STS-B dev, 1,500 pairs: 0.996); give --pairs for a real check.
    #[arg(long, default_value_t = 0.95)]
    min_spearman: f64,
    /// ONNX opset (17 to 28: the newest that the ONNX Runtime crosstrain runs loads).
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
    // Everything that can fail on its own is checked before any file is written: the
    // opset, the model and the pairs of --check.
    if !(MIN_OPSET..=MAX_OPSET).contains(&args.opset) {
        anyhow::bail!(crosstrain::onnx::ExportError::Opset(args.opset));
    }
    let options = LoadOptions {
        base_model: args.base_model.clone(),
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load(&args.model, &options)
        .with_context(|| format!("loading model {}", args.model))?;
    let quantization = match args.quantize.as_deref() {
        Some("int8") => Quantization::Int8,
        Some("uint8") => Quantization::Uint8Avx2,
        _ => Quantization::None,
    };
    let output = match &args.output {
        Some(path) => path.clone(),
        None => resolve_model_dir(&args.model)?
            .join("onnx")
            .join(quantization.file_name()),
    };
    if output.is_dir() {
        anyhow::bail!(
            "--output {} is a directory; name the .onnx file to write",
            output.display()
        );
    }
    let pairs = match (&args.check, &args.pairs) {
        (false, _) => Vec::new(),
        (true, Some(path)) => read_pairs(path)?,
        (true, None) => parity_pairs()?,
    };
    if quantization == Quantization::Int8 && !crosstrain::onnx::cpu_has_vnni() {
        tracing::warn!(
            "this CPU has no AVX-512 VNNI: ONNX Runtime runs int8 weights here with saturating \
             products, so this file's scores can be far off on this machine (it is meant for \
             VNNI CPUs); for AVX2 CPUs export --quantize uint8"
        );
    }
    let bytes = export_onnx_with(&model, args.opset, quantization)?;
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    // Atomic: written beside the target, checked there, then renamed, so a failed check
    // never replaces a working export.
    let partial = parent.join(format!(
        ".{}.partial-{}",
        output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    let install = |out: &mut String| -> anyhow::Result<()> {
        std::fs::rename(&partial, &output)
            .with_context(|| format!("writing {}", output.display()))?;
        writeln!(
            out,
            "wrote {} ({} bytes, opset {})",
            output.display(),
            bytes.len(),
            args.opset
        )?;
        Ok(())
    };
    if !args.check {
        install(out)?;
        return Ok(true);
    }
    let agreement = match agreement(&model, &partial, &pairs) {
        Ok(agreement) => agreement,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(anyhow::Error::new(error).context(format!(
                "checking the export in ONNX Runtime; {} was not written{}",
                output.display(),
                kept_note(&output)
            )));
        }
    };
    let max_diff = agreement.max_abs_diff;
    // A quantized model cannot match float32 to 1e-5; what must hold is the ranking.
    let (passed, criterion) = match quantization {
        Quantization::None => (
            max_diff <= args.tolerance,
            format!("tolerance {:e}", args.tolerance),
        ),
        Quantization::Int8 | Quantization::Uint8Avx2 => (
            agreement.spearman >= args.min_spearman,
            format!("Spearman at least {}", args.min_spearman),
        ),
    };
    if passed {
        install(out)?;
    } else {
        let _ = std::fs::remove_file(&partial);
    }
    writeln!(
        out,
        "ONNX Runtime vs candle on {} pairs: max |logit difference| {max_diff:.3e}, Spearman \
         {:.5} ({criterion}): {}",
        pairs.len(),
        agreement.spearman,
        if passed { "ok" } else { "FAILED" }
    )?;
    if !passed {
        writeln!(
            out,
            "{} was not written, since the export failed its check{}",
            output.display(),
            kept_note(&output)
        )?;
        return Ok(false);
    }
    // A trained directory's card mentions the int8 file with its measured agreement.
    if quantization.is_quantized() {
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
    Ok(true)
}

/// "; the earlier X is kept" when the target already exists.
fn kept_note(output: &std::path::Path) -> String {
    if output.exists() {
        format!(" (the earlier {} is kept)", output.display())
    } else {
        String::new()
    }
}
