//! `crosstrain bench predict`: one JSON line with pairs/second and peak memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use crosstrain::data::pairs::{parse_pairs, read_pairs, TextPair};

use super::predict::ModelArgs;

/// The default predict workload: the 512 synthetic English pairs (~10-word questions, ~60-word
/// passages, 67–93 tokens) that the reference measured sentence-transformers on, so the
/// figures compare one to one.
const BENCH_PAIRS: &str = include_str!("../../assets/bench_pairs.jsonl");

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Inference throughput: tokenization + forward over a fixed workload.
    Predict(BenchPredictArgs),
}

#[derive(Debug, Args)]
pub struct BenchPredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pairs file (default: the built-in 512-pair workload).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// How many times to score the whole workload (after one warm-up batch).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

/// Peak resident memory of this process in MB (Linux), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(command: BenchCommand, out: &mut String) -> anyhow::Result<()> {
    match command {
        BenchCommand::Predict(args) => bench_predict(args, out),
    }
}

fn bench_predict(args: BenchPredictArgs, out: &mut String) -> anyhow::Result<()> {
    let pairs: Vec<TextPair> = match &args.pairs {
        Some(path) => read_pairs(path)?,
        None => parse_pairs(BENCH_PAIRS, Path::new("<built-in bench_pairs.jsonl>"))?,
    };
    let mut model = args.model.scorer()?;
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.query.as_str(), p.document.as_str()))
        .collect();
    let batch_size = args.model.batch_size;
    model.predict(&borrowed[..batch_size.min(borrowed.len())], batch_size)?;
    let started = Instant::now();
    for _ in 0..args.repeat.max(1) {
        model.predict(&borrowed, batch_size)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let scored = borrowed.len() * args.repeat.max(1);
    let line = serde_json::json!({
        "bench": "predict",
        "backend": match args.model.backend {
            super::predict::Backend::Candle => "candle",
            super::predict::Backend::Onnx => "onnx",
        },
        "device": "cpu",
        "model": args.model.model,
        "pairs": scored,
        "batch_size": batch_size,
        "max_length": model.max_length(),
        "seconds": seconds,
        "pairs_per_second": scored as f64 / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    writeln!(out, "{line}")?;
    Ok(())
}
