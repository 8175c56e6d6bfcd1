//! `crosstrain merge-adapter`: a LoRA adapter directory and its base in, the full model they
//! make out (PEFT's `merge_and_unload`), for serving or export without the adapter machinery.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crosstrain::model::{CrossEncoder, LoadOptions};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter directory (adapter_config.json and adapter_model.safetensors).
    #[arg(long)]
    model: String,
    /// The base model, instead of the one adapter_config.json names.
    #[arg(long, value_name = "DIR|ID")]
    base_model: Option<String>,
    /// Where the merged model goes (must not exist or be empty; written atomically).
    #[arg(long)]
    output: PathBuf,
}

/// Merges and saves; prints where the model went.
pub fn run(args: MergeArgs, out: &mut String) -> anyhow::Result<()> {
    let options = LoadOptions {
        base_model: args.base_model.clone(),
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load(&args.model, &options)
        .with_context(|| format!("loading adapter {}", args.model))?;
    let Some(lora) = model.lora() else {
        anyhow::bail!(
            "{} is a full model, not a LoRA adapter directory (adapter_config.json without \
             config.json): there is nothing to merge",
            args.model
        );
    };
    model
        .save_merged(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    writeln!(
        out,
        "merged the adapter (r {}, alpha {}) into {} ({} base parameters): {}",
        lora.r,
        lora.lora_alpha,
        model.base_model().unwrap_or("the base"),
        model.parameter_count() - model.trainable_count(),
        args.output.display()
    )?;
    Ok(())
}
