//! `crosstrain serve`: builds the scorer from the model flags and runs the server in
//! `crosstrain::serve` until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crosstrain::serve::batcher::BatchingOptions;
use crosstrain::serve::{Limits, ServeOptions};

use super::predict::{Backend, ModelArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the one taken is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the scoring routes and /info.
    #[arg(long, env = "CROSSTRAIN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Tokens (after truncation) per batch at most: requests that arrive together share a
    /// batch up to this.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Pairs per batch at most.
    #[arg(long, default_value_t = 256)]
    max_batch_pairs: usize,
    /// Milliseconds the scoring thread waits after a batch's first request for others to
    /// join it.
    #[arg(long, default_value_t = 2)]
    batch_window_ms: u64,
    /// Pairs queued or being scored at most; past it requests get 429 (overloaded).
    #[arg(long, default_value_t = 4096)]
    max_queue_pairs: usize,
    /// Documents (or /predict pairs) per request at most (422 past it).
    #[arg(long, default_value_t = 1000)]
    max_client_batch_size: usize,
    /// Bytes of a request body at most (413 past it).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Characters of one query or document at most (413 past it).
    #[arg(long, default_value_t = 100_000)]
    max_text_chars: usize,
    /// Truncate pairs longer than the model's max length, as sentence-transformers does,
    /// unless a request sends `truncate: false` (then such a pair is a 413 error).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_truncate: bool,
}

/// The model's label names (`id2label` of its config.json), by index.
fn labels(model_dir: &std::path::Path, count: usize) -> Vec<String> {
    let config: Option<serde_json::Value> = std::fs::read_to_string(model_dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    (0..count)
        .map(|index| {
            config
                .as_ref()
                .and_then(|config| config["id2label"][index.to_string()].as_str())
                .map_or_else(|| format!("LABEL_{index}"), str::to_string)
        })
        .collect()
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let scorer: crosstrain::serve::batcher::SharedScorer = Arc::from(args.model.scorer()?);
    let model_dir = crosstrain::model::resolve_model_dir(&args.model.model)?;
    let (backend, model_dtype) = match args.model.backend {
        Backend::Candle => ("candle", "float32".to_string()),
        Backend::Onnx => {
            let file = args.model.onnx_file().to_string_lossy().into_owned();
            let dtype = if file.contains("qint8") || file.contains("quint8") {
                "int8"
            } else {
                "float32"
            };
            ("onnx", dtype.to_string())
        }
    };
    let options = ServeOptions {
        model_id: args.model.model.clone(),
        backend: backend.into(),
        model_dtype,
        labels: labels(&model_dir, scorer.num_labels()),
        api_key: args.api_key.clone(),
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_client_batch_size: args.max_client_batch_size,
            max_text_chars: args.max_text_chars,
            auto_truncate: args.auto_truncate,
        },
        batching: BatchingOptions {
            max_batch_tokens: args.max_batch_tokens,
            max_batch_pairs: args.max_batch_pairs,
            batch_window: Duration::from_millis(args.batch_window_ms),
            max_queue_pairs: args.max_queue_pairs,
            forward_batch_size: args.model.batch_size,
        },
    };
    let state = crosstrain::serve::state(scorer, options)?;
    // Tokenization runs on the blocking pool: as many threads as cores is all it can use, and
    // a thread per waiting request (tokio's default allows 512) would only add stacks and
    // allocator arenas that a long-running server keeps.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores)
        .thread_name("crosstrain-http")
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let address = listener.local_addr()?;
        // On stderr at once (stdout is buffered to the end of the command): scripts and
        // tests wait for this line.
        eprintln!("crosstrain serve: listening on http://{address}");
        let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("crosstrain serve: shutting down, finishing the requests in flight");
            let _ = signalled.send(true);
        });
        let mut drained = on_signal.clone();
        let server = crosstrain::serve::serve(listener, state, async move {
            let _ = on_signal.wait_for(|&stop| stop).await;
        });
        tokio::select! {
            result = server => result.map_err(anyhow::Error::from),
            () = async move {
                let _ = drained.wait_for(|&stop| stop).await;
                tokio::time::sleep(crosstrain::serve::DRAIN_TIMEOUT).await;
            } => {
                anyhow::bail!(
                    "requests still open {} s after the shutdown signal; stopped without them",
                    crosstrain::serve::DRAIN_TIMEOUT.as_secs()
                )
            }
        }
    })?;
    eprintln!("crosstrain serve: stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
