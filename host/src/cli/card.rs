//! `crosstrain card`: rebuild a trained model directory's model card from its files.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use crosstrain::card::{rebuild, CardMetadata};

#[derive(Debug, Args)]
pub struct CardArgs {
    /// A model directory written by `crosstrain train`.
    #[arg(long)]
    model: PathBuf,
    /// Language code; repeat for several (replaces the stored list).
    #[arg(long)]
    language: Vec<String>,
    /// License id, e.g. apache-2.0.
    #[arg(long)]
    license: Option<String>,
    /// Training dataset name or hub id.
    #[arg(long)]
    dataset_name: Option<String>,
    /// The model's name (the card's title).
    #[arg(long)]
    model_name: Option<String>,
}

pub fn run(args: CardArgs, out: &mut String) -> anyhow::Result<()> {
    let metadata = CardMetadata {
        language: args.language,
        license: args.license,
        dataset_name: args.dataset_name,
        model_name: args.model_name,
    };
    rebuild(
        &args.model,
        &metadata,
        &crosstrain::train::config::default_values(),
    )?;
    writeln!(out, "wrote {}", args.model.join("README.md").display())?;
    Ok(())
}
