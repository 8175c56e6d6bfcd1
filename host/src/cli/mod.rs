//! Command-line parsing and dispatch; one file per command, each thin.

mod bench;
mod card;
mod eval;
mod export;
mod losses;
mod merge;
mod mine;
mod predict;
mod serve;
mod signals;
mod train;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crosstrain::plugins::{LossRegistry, PLUGIN_PATH_ENV};

/// Train and serve cross-encoder rerankers.
#[derive(Debug, Parser)]
#[command(name = "crosstrain", version, about)]
struct Cli {
    /// Load losses from this plugin library (.so/.dylib/.dll); repeatable. Only files named
    /// here or placed in a CROSSTRAIN_PLUGIN_PATH directory are ever loaded.
    #[arg(long = "plugin", value_name = "FILE", global = true)]
    plugins: Vec<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune a cross-encoder with a loss from the registry.
    Train(Box<train::TrainArgs>),
    /// List, describe, cite and check the available losses.
    Losses {
        #[command(subcommand)]
        command: losses::LossesCommand,
    },
    /// Rebuild a trained model's card (README.md) from its files, with new metadata.
    Card(card::CardArgs),
    /// Score (query, document) pairs with a model.
    Predict(predict::PredictArgs),
    /// Rank documents for one query, best first.
    Rank(predict::RankArgs),
    /// Export a model to ONNX (MODEL/onnx/model.onnx) and optionally check it in ONNX Runtime.
    ExportOnnx(export::ExportArgs),
    /// Merge a LoRA adapter into its base model and write the full model.
    MergeAdapter(merge::MergeArgs),
    /// Evaluate a model with the reference's reranking, classification or correlation metrics.
    Eval(eval::EvalArgs),
    /// Mine hard negatives for (anchor, positive) pairs with BM25 or a dense retriever, as
    /// sentence-transformers' mine_hard_negatives; writes triplet, n-tuple, labeled-pair or
    /// labeled-list JSONL.
    MineHardNegatives(Box<mine::MineArgs>),
    /// Turn class-labelled data into (anchor, positive, negative) triplets.
    Convert(mine::ConvertArgs),
    /// Serve a reranker over HTTP: text-embeddings-inference's /rerank and /predict and the
    /// Cohere-style /v1/rerank, with dynamic batching, /metrics and /openapi.json.
    Serve(Box<serve::ServeArgs>),
    /// Benchmarks that print one JSON line.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// Parses the command line, runs the command, and maps errors to a message and exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CROSSTRAIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or a CI page they are noise.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let mut out = String::new();
    let code = match dispatch(cli, &mut out) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_message(&error));
            ExitCode::FAILURE
        }
    };
    write_stdout(&out);
    code
}

/// The error and its causes, joined with `: `, leaving out a cause whose text the message
/// already carries (the library's errors name their source in their own text, so anyhow's
/// `{:#}` would print `No such file or directory (os error 2)` twice).
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Writes the command's output; a reader that went away (`| head`) is not an error.
fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing to stdout: {error}");
        }
    }
}

fn dispatch(cli: Cli, out: &mut String) -> anyhow::Result<ExitCode> {
    let registry = || {
        let plugin_path = std::env::var_os(PLUGIN_PATH_ENV);
        LossRegistry::load(&cli.plugins, plugin_path.as_deref()).context("loading the loss plugins")
    };
    match cli.command {
        Command::Losses { command } => losses::run(&registry()?, command, out),
        Command::Train(args) => train::run(*args, &registry()?, out),
        Command::Card(args) => card::run(args, out).map(|()| ExitCode::SUCCESS),
        Command::Predict(args) => predict::predict(args, out).map(|()| ExitCode::SUCCESS),
        Command::Rank(args) => predict::rank(args, out).map(|()| ExitCode::SUCCESS),
        Command::ExportOnnx(args) => export::run(args, out).map(|passed| {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::Eval(args) => eval::run(args, out).map(|()| ExitCode::SUCCESS),
        Command::MergeAdapter(args) => merge::run(args, out).map(|()| ExitCode::SUCCESS),
        Command::MineHardNegatives(args) => mine::run_mine(*args, out).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => mine::run_convert(args, out).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Bench { command } => {
            bench::run(command, registry, out).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Peak resident memory of this process in MB (Linux), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A library enum as a command-line value: its names are the possible values (listed in
/// `--help` and in errors) and `FromStr` turns the chosen one into the value. The library
/// stays free of clap.
/// A count that must be at least 1 (`--batch-size`, `--top-k`, ...): 0 would mean nothing
/// or loop forever, so it is refused where it is given.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(error) => Err(error.to_string()),
    }
}

pub fn choice<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Debug,
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names).map(|name| {
        name.parse::<T>()
            .expect("clap accepted only one of the names")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (os error 2)");
        let error = anyhow::Error::new(crosstrain::data::pairs::DataError::Io {
            path: "docs.txt".into(),
            source: io,
        })
        .context("ranking");
        assert_eq!(
            super::error_message(&error),
            "ranking: docs.txt: no such file (os error 2)"
        );
    }
}
