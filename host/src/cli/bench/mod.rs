//! `crosstrain bench predict|train`: one JSON line with pairs/second, the time split and peak
//! memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use crosstrain::data::pairs::{parse_pairs, read_pairs, TextPair};

use super::peak_rss_mb;
use super::predict::ModelArgs;

mod mine;
use anyhow::Context;
use crosstrain::data::dataset::{parse_jsonl_dataset, read_dataset, DatasetSpec};
use crosstrain::model::{CrossEncoder, LoadOptions};
use crosstrain::plugins::LossRegistry;
use crosstrain::train::optim::AdamW;
use crosstrain::train::step::{accumulate_batch, GradAccumulator, PhaseTimes};

/// The default predict workload: the 512 synthetic English pairs (~10-word questions, ~60-word
/// passages, 67–93 tokens) that the reference measured sentence-transformers on, so the
/// figures compare one to one.
pub const BENCH_PAIRS: &str = include_str!("../../../assets/bench_pairs.jsonl");

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Inference throughput: tokenization + forward over a fixed workload.
    Predict(BenchPredictArgs),
    /// Training-step throughput: tokenize, forward, loss, backward and AdamW.
    Train(BenchTrainArgs),
    /// Hard-negative mining on a synthetic corpus: time and peak memory.
    Mine(mine::BenchMineArgs),
}

/// The default training workload: the reference's 368 (query, document, 0/1) pairs, trained
/// in batches of 16 in file order.
const BENCH_TRAIN_PAIRS: &str = include_str!("../../../assets/bench_train_pairs.jsonl");

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model directory or Hugging Face id.
    #[arg(long)]
    model: String,
    /// Truncation length (the reference used 128).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Training rows (JSONL in the loss's format; default: the built-in 368 labeled pairs).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// The loss.
    #[arg(long, default_value = "BinaryCrossEntropyLoss")]
    loss: String,
    /// The loss config as JSON.
    #[arg(long, default_value = "{}")]
    loss_config: String,
    /// Rows per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Gradient-caching chunk (pairs); default: the loss's.
    #[arg(long)]
    mini_batch_size: Option<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup_steps: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights from the seed, not model.safetensors: a directory with only config.json and
    /// tokenizer files benchmarks too (as transformers' `from_config` on the PyTorch side).
    #[arg(long)]
    from_scratch: bool,
    /// Train a LoRA adapter of this rank on every linear layer (alpha 2·r, as the usual
    /// recipe) instead of the whole model (decoder rerankers).
    #[arg(long, value_name = "R")]
    lora_r: Option<usize>,
    /// With --lora-r: keep the frozen base in f32 or bf16.
    #[arg(long, value_name = "f32|bf16", requires = "lora_r", value_parser = ["f32", "bf16"])]
    base_dtype: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchPredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights from the seed, not model.safetensors (candle backend only).
    #[arg(long)]
    from_scratch: bool,
    /// Pairs file (default: the built-in 512-pair workload).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// How many times to score the whole workload (after one warm-up batch).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

pub fn run(
    command: BenchCommand,
    registry: impl FnOnce() -> anyhow::Result<LossRegistry>,
    out: &mut String,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Predict(args) => bench_predict(args, out),
        BenchCommand::Train(args) => bench_train(args, registry()?, out),
        BenchCommand::Mine(args) => mine::run_bench_mine(args, out),
    }
}

fn bench_predict(args: BenchPredictArgs, out: &mut String) -> anyhow::Result<()> {
    let pairs: Vec<TextPair> = match &args.pairs {
        Some(path) => read_pairs(path)?,
        None => parse_pairs(BENCH_PAIRS, Path::new("<built-in bench_pairs.jsonl>"))?,
    };
    let model: super::predict::Scorer = if args.from_scratch {
        if args.model.backend != super::predict::Backend::Candle {
            anyhow::bail!(
                "--from-scratch benchmarks the candle backend only (export a model for ONNX)"
            );
        }
        Box::new(args.model.load_with(true)?)
    } else {
        args.model.scorer()?
    };
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
        "onnx_file": (args.model.backend == super::predict::Backend::Onnx)
            .then(|| args.model.onnx_file().display().to_string()),
        "device": args.model.device,
        "model": args.model.model,
        "from_scratch": args.from_scratch,
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

fn bench_train(
    args: BenchTrainArgs,
    registry: LossRegistry,
    out: &mut String,
) -> anyhow::Result<()> {
    let dataset = match &args.pairs {
        Some(path) => read_dataset(&DatasetSpec::from_files(vec![path.clone()]))?,
        None => parse_jsonl_dataset(
            BENCH_TRAIN_PAIRS,
            Path::new("<built-in bench_train_pairs.jsonl>"),
        )?,
    };
    let loss_config: serde_json::Value = serde_json::from_str(&args.loss_config)
        .with_context(|| format!("--loss-config is not valid JSON: {}", args.loss_config))?;
    let loss = registry.build(&args.loss, &loss_config)?;
    let options = LoadOptions {
        max_length: Some(args.max_length),
        device: crosstrain::model::parse_device(&args.device)?,
        from_scratch: args.from_scratch,
        adapter: args.lora_r.map(|r| crosstrain::model::lora::LoraConfig {
            r,
            lora_alpha: 2.0 * r as f64,
            target_modules: Some(crosstrain::model::lora::TargetModules::Pattern(
                "all-linear".into(),
            )),
            ..Default::default()
        }),
        base_dtype: (args.base_dtype.as_deref() == Some("bf16"))
            .then_some(candle_core::DType::BF16),
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load(&args.model, &options)
        .with_context(|| format!("loading model {}", args.model))?;
    let description = loss.description().clone();
    dataset.check_format(
        "training data",
        loss.qualified_name(),
        &description.formats,
        description.num_labels,
        model.num_labels(),
    )?;
    model.dropout().train(0);
    let trainables = model.trainable_parameters().to_vec();
    let vars: Vec<_> = trainables.iter().map(|t| t.var.clone()).collect();
    let mut optimizer = AdamW::new(trainables, 0.9, 0.999, 1e-8, 0.0)?;
    let mut grads = GradAccumulator::new(vars.len());
    let batches: Vec<Vec<usize>> = (0..dataset.len())
        .collect::<Vec<_>>()
        .chunks(args.batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut times = PhaseTimes::default();
    let mut optimizer_seconds = 0.0;
    let mut pairs = 0usize;
    let mut started = Instant::now();
    for step in 0..args.warmup_steps + args.steps {
        if step == args.warmup_steps {
            times = PhaseTimes::default();
            optimizer_seconds = 0.0;
            pairs = 0;
            started = Instant::now();
        }
        let rows = &batches[step % batches.len()];
        let outcome = accumulate_batch(
            &model,
            &vars,
            &loss,
            &dataset,
            rows,
            step as u64,
            args.mini_batch_size,
            1.0,
            None,
            &mut grads,
        )?;
        times += outcome.times;
        pairs += outcome.pairs;
        let optimizer_started = Instant::now();
        optimizer.step(&grads.take(), 2e-5)?;
        optimizer_seconds += optimizer_started.elapsed().as_secs_f64();
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_step = |d: std::time::Duration| d.as_secs_f64() / args.steps.max(1) as f64;
    let line = serde_json::json!({
        "bench": "train",
        "device": args.device,
        "model": args.model,
        "from_scratch": args.from_scratch,
        "lora_r": args.lora_r,
        "base_dtype": args.base_dtype.as_deref().unwrap_or("f32"),
        "trainable_parameters": model.trainable_count(),
        "parameters": model.parameter_count(),
        "loss": loss.qualified_name(),
        "batch_size": args.batch_size,
        "mini_batch_size": args.mini_batch_size,
        "max_length": model.max_length(),
        "steps": args.steps,
        "pairs": pairs,
        "seconds": seconds,
        "pairs_per_second": pairs as f64 / seconds,
        "seconds_per_step": {
            "total": seconds / args.steps.max(1) as f64,
            "tokenize": per_step(times.tokenize),
            "forward": per_step(times.forward),
            "loss": per_step(times.loss),
            "backward": per_step(times.backward),
            "optimizer": optimizer_seconds / args.steps.max(1) as f64,
        },
        "peak_rss_mb": peak_rss_mb(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    writeln!(out, "{line}")?;
    Ok(())
}
