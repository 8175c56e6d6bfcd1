//! `crosstrain serve`: a rerank server over any [`PairScorer`] (the candle model or the ONNX
//! Runtime session), with text-embeddings-inference's and Cohere's APIs, dynamic batching
//! ([`batcher`]), Prometheus metrics and an OpenAPI document.
//!
//! The module stands apart from the trainer: it imports only the model crate, the scorer
//! trait and its own parts (never `crate::train` or `crate::data`), so a change to training
//! cannot change what is served, and the reverse. The command line builds the scorer and
//! hands it here (see `cli/serve.rs`).
//!
//! HTTP runs on axum over tokio; scoring runs on one thread of its own (the scorer uses every
//! core inside a batch), so a long batch never stalls the runtime that accepts requests,
//! answers `/health` and sheds load with 429.

pub mod api;
pub mod batcher;
pub mod error;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use batcher::{BatchReport, Batcher, BatchingOptions, SharedScorer};
use error::{ErrorResponse, ErrorType};

/// What one request may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a request body (413 past it).
    pub max_body_bytes: usize,
    /// Documents (or pairs) per request (422 past it).
    pub max_client_batch_size: usize,
    /// Characters of one query or document (413 past it).
    pub max_text_chars: usize,
    /// Truncate long pairs unless a request says `truncate: false`.
    pub auto_truncate: bool,
}

/// Everything the server needs besides the scorer.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in `/info` and `/v1/rerank` responses.
    pub model_id: String,
    /// `candle` or `onnx`, for `/info`.
    pub backend: String,
    /// The weights' type, for `/info`.
    pub model_dtype: String,
    /// Label names by output index (`id2label`).
    pub labels: Vec<String>,
    /// Requests need `Authorization: Bearer KEY` (all routes but `/health`, `/metrics` and
    /// `/openapi.json`).
    pub api_key: Option<String>,
    /// Per-request limits.
    pub limits: Limits,
    /// Batching.
    pub batching: BatchingOptions,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is out of range.
    #[error("{0}")]
    Options(String),
    /// The scoring thread or the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ServeOptions {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ServeError> {
        let batching = &self.batching;
        let positive = [
            ("--max-batch-tokens", batching.max_batch_tokens),
            ("--max-batch-pairs", batching.max_batch_pairs),
            ("--max-queue-pairs", batching.max_queue_pairs),
            ("--batch-size", batching.forward_batch_size),
            ("--max-client-batch-size", self.limits.max_client_batch_size),
            ("--max-body-bytes", self.limits.max_body_bytes),
            ("--max-text-chars", self.limits.max_text_chars),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ServeError::Options(format!("{flag} must be at least 1")));
        }
        if self.limits.max_client_batch_size > batching.max_queue_pairs {
            return Err(ServeError::Options(format!(
                "--max-client-batch-size {} is more than --max-queue-pairs {}: such a request \
                 could never be queued",
                self.limits.max_client_batch_size, batching.max_queue_pairs
            )));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(ServeError::Options("--api-key is empty".into()));
        }
        Ok(())
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct ServerState(Arc<StateInner>);

/// The shared state behind [`ServerState`].
pub struct StateInner {
    scorer: SharedScorer,
    batcher: Batcher,
    limits: Limits,
    labels: Vec<String>,
    info: api::Info,
    api_key: Option<String>,
    prometheus: Option<PrometheusHandle>,
    next_request_id: AtomicU64,
}

impl std::ops::Deref for ServerState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// The Prometheus recorder, installed once per process; `None` when another recorder was
/// installed first (metrics then go there).
fn install_prometheus() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds: Vec<f64> = (0..18).map(|i| 0.001 * 2f64.powi(i)).collect();
            let counts: Vec<f64> = (0..14).map(|i| 2f64.powi(i)).collect();
            let tokens: Vec<f64> = (4..19).map(|i| 2f64.powi(i)).collect();
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_pairs".into()), &counts)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_requests".into()), &counts)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_tokens".into()), &tokens)
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

fn record_batch(report: BatchReport) {
    metrics::histogram!("crosstrain_batch_pairs").record(report.pairs as f64);
    metrics::histogram!("crosstrain_batch_requests").record(report.requests as f64);
    metrics::histogram!("crosstrain_batch_tokens").record(report.tokens as f64);
    metrics::histogram!("crosstrain_batch_inference_duration_seconds")
        .record(report.inference.as_secs_f64());
    metrics::counter!("crosstrain_tokens_total").increment(report.tokens as u64);
    metrics::counter!("crosstrain_pairs_total").increment(report.pairs as u64);
}

/// Builds the state: starts the scoring thread and the metrics recorder.
pub fn state(scorer: SharedScorer, options: ServeOptions) -> Result<ServerState, ServeError> {
    options.validate()?;
    let prometheus = install_prometheus();
    let batcher = Batcher::start(scorer.clone(), options.batching.clone(), record_batch)?;
    let id2label: serde_json::Map<String, serde_json::Value> = options
        .labels
        .iter()
        .enumerate()
        .map(|(index, label)| (index.to_string(), label.clone().into()))
        .collect();
    let kind = if scorer.num_labels() == 1 {
        "reranker"
    } else {
        "classifier"
    };
    let info = api::Info {
        model_id: options.model_id.clone(),
        model_dtype: options.model_dtype.clone(),
        model_type: serde_json::json!({ kind: { "id2label": id2label } }),
        backend: options.backend.clone(),
        max_input_length: scorer.max_length(),
        max_batch_tokens: options.batching.max_batch_tokens,
        max_batch_requests: options.batching.max_batch_pairs,
        max_client_batch_size: options.limits.max_client_batch_size,
        max_concurrent_requests: options.batching.max_queue_pairs,
        auto_truncate: options.limits.auto_truncate,
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(ServerState(Arc::new(StateInner {
        scorer,
        batcher,
        limits: options.limits,
        labels: options.labels,
        info,
        api_key: options.api_key,
        prometheus,
        next_request_id: AtomicU64::new(0),
    })))
}

/// The routes, with the body limit, the API key check and request metrics.
pub fn router(state: ServerState) -> Router {
    let scoring = Router::new()
        .route("/rerank", post(api::rerank))
        .route("/predict", post(api::predict))
        .route("/v1/rerank", post(api::cohere_rerank))
        .route("/info", get(api::info))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let public = Router::new()
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi));
    scoring
        .merge(public)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

async fn not_found(request: Request) -> ErrorResponse {
    ErrorResponse::new(
        ErrorType::NotFound,
        format!(
            "no route {} {}; see /openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

/// 401 unless the request carries `Authorization: Bearer KEY`.
async fn require_api_key(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !given.is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes())) {
            return ErrorResponse::new(
                ErrorType::Unauthorized,
                "missing or wrong API key: send `Authorization: Bearer KEY`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests by route and status and times them.
async fn record_request(request: Request, next: Next) -> Response {
    const ROUTES: [&str; 7] = [
        "/rerank",
        "/predict",
        "/v1/rerank",
        "/health",
        "/info",
        "/metrics",
        "/openapi.json",
    ];
    let path = request.uri().path();
    let route: &'static str = ROUTES
        .into_iter()
        .find(|route| *route == path)
        .unwrap_or("other");
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("crosstrain_requests_total", "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!("crosstrain_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves until `shutdown` resolves, then stops accepting, finishes the requests in flight
/// (their pairs are scored), and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    // Every connection has been answered; nothing is queued that a client waits for.
    let batcher_state = state.clone();
    tokio::task::spawn_blocking(move || batcher_state.batcher.close())
        .await
        .map_err(|error| ServeError::Io(std::io::Error::other(error.to_string())))?;
    Ok(())
}

/// How long a drain may last after the signal before the server gives up on slow clients.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// The server stands apart from the trainer and the dataset machinery (module docs).
    #[test]
    fn the_server_imports_neither_the_trainer_nor_the_datasets() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("api.rs"),
            include_str!("batcher.rs"),
            include_str!("error.rs"),
        ];
        for source in sources {
            for forbidden in [
                "crate::train",
                "crate::data",
                "crate::mine",
                "crate::plugins",
            ] {
                let uses = source
                    .lines()
                    .filter(|line| {
                        line.trim_start().starts_with("use ") && line.contains(forbidden)
                    })
                    .count();
                assert_eq!(uses, 0, "the server imports {forbidden}");
            }
        }
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
