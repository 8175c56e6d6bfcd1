//! The routes: text-embeddings-inference's `POST /rerank` and `POST /predict`, the
//! Cohere/Jina/infinity `POST /v1/rerank`, and `GET /health`, `/info`, `/metrics`,
//! `/openapi.json`. Request and response shapes are their owners'; the OpenAPI document is
//! generated from these types.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use crosstrain_model::DefaultActivation;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::batcher::BatchError;
use super::error::{ErrorResponse, ErrorType};
use super::ServerState;

/// Which end of a pair loses tokens when it is too long (text-embeddings-inference's field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
pub enum TruncationDirection {
    /// Not supported: pairs are cut longest-first from the right, as sentence-transformers
    /// cuts them.
    #[serde(alias = "left", alias = "Left")]
    Left,
    /// The end of the longer text (the default, and the only one served).
    #[serde(alias = "right", alias = "Right")]
    #[default]
    Right,
}

/// `POST /rerank` (text-embeddings-inference).
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// The query.
    #[schema(example = "What is Deep Learning?")]
    pub query: String,
    /// The documents to score against it.
    #[schema(example = json!(["Deep Learning is ..."]))]
    pub texts: Vec<String>,
    /// Truncate pairs longer than the model's max length (default: the server's
    /// `--auto-truncate`, on); `false` makes such a pair a 413 error.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Only `Right` is served.
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    /// Logits instead of the model's activation (sigmoid for a one-output reranker).
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
}

/// One ranked text of `POST /rerank`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rank {
    /// Position in the request's `texts`.
    pub index: usize,
    /// The text, when `return_text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Its score.
    pub score: f32,
}

/// `POST /predict` (text-embeddings-inference): one `[query, document]` pair or a list of
/// them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PredictRequest {
    /// `["query", "document"]` or `[["query", "document"], ...]`. A cross-encoder scores
    /// pairs: a single text is refused.
    #[schema(value_type = Vec<Vec<String>>, example = json!([["What is Deep Learning?", "Deep Learning is ..."]]))]
    pub inputs: serde_json::Value,
    /// As in `/rerank`.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// As in `/rerank`.
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    /// Logits instead of probabilities (sigmoid for one output, softmax for several).
    #[serde(default)]
    pub raw_scores: bool,
}

/// One label's score of `POST /predict`, highest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    /// The score.
    pub score: f32,
    /// The label, from the model's `id2label`.
    pub label: String,
}

/// `POST /predict`'s response: a list of labels for one pair, a list of such lists for a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    /// For `inputs` that were one pair.
    Single(Vec<Prediction>),
    /// For a list of pairs.
    Batch(Vec<Vec<Prediction>>),
}

/// A document of `POST /v1/rerank`: a string, or an object with `text`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    /// The text itself.
    Text(String),
    /// `{"text": ...}` (other fields are ignored).
    Object {
        /// The text.
        text: String,
    },
}

impl RerankDocument {
    fn into_text(self) -> String {
        match self {
            Self::Text(text) | Self::Object { text } => text,
        }
    }
}

/// `POST /v1/rerank` (the Cohere, Jina and infinity shape).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohereRerankRequest {
    /// Echoed back; the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
    /// The query.
    pub query: String,
    /// The documents.
    pub documents: Vec<RerankDocument>,
    /// Only the best N (1 to the number of documents).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Include each document in its result.
    #[serde(default)]
    pub return_documents: bool,
    /// Logits instead of the model's activation.
    #[serde(default)]
    pub raw_scores: bool,
}

/// A document echoed in a `/v1/rerank` result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultDocument {
    /// Its text.
    pub text: String,
}

/// One result of `POST /v1/rerank`, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position in the request's `documents`.
    pub index: usize,
    /// The score (the model's activation unless `raw_scores`).
    pub relevance_score: f32,
    /// The document, when `return_documents`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<ResultDocument>,
}

/// Tokens a request used.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens scored, after truncation.
    pub prompt_tokens: usize,
    /// The same (nothing is generated).
    pub total_tokens: usize,
}

/// `POST /v1/rerank`'s response.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereRerankResponse {
    /// A request id.
    pub id: String,
    /// Always `rerank`.
    pub object: &'static str,
    /// The served model's name.
    pub model: String,
    /// Best first.
    pub results: Vec<RerankResult>,
    /// Tokens used.
    pub usage: Usage,
}

/// `GET /info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Info {
    /// The model as given to `--model`.
    pub model_id: String,
    /// Its weights' type in memory.
    pub model_dtype: String,
    /// `{"reranker": {"id2label": ...}}` for a one-output model, else `{"classifier": ...}`.
    #[schema(value_type = Object)]
    pub model_type: serde_json::Value,
    /// `candle` or `onnx`.
    pub backend: String,
    /// The model's max length in tokens.
    pub max_input_length: usize,
    /// Tokens per batch at most.
    pub max_batch_tokens: usize,
    /// Pairs per batch at most.
    pub max_batch_requests: usize,
    /// Documents or pairs per request at most.
    pub max_client_batch_size: usize,
    /// Pairs queued at most before 429.
    pub max_concurrent_requests: usize,
    /// Whether pairs are truncated unless a request says `truncate: false`.
    pub auto_truncate: bool,
    /// crosstrain's version.
    pub version: &'static str,
}

/// The generated OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "crosstrain serve",
        description = "Cross-encoder reranking: text-embeddings-inference's and Cohere's APIs"
    ),
    paths(rerank, predict, cohere_rerank, health, info, metrics),
    components(schemas(ErrorResponse, ErrorType))
)]
pub struct ApiDoc;

/// A JSON body, or the extractor's rejection as an error response (413 for a body over the
/// limit, 415 without a JSON content type, 400 for bad JSON, 422 for wrong fields or types).
fn body<T>(request: Result<Json<T>, JsonRejection>) -> Result<T, ErrorResponse> {
    request.map(|Json(value)| value).map_err(|rejection| {
        let status = rejection.status();
        ErrorResponse {
            status: status.as_u16(),
            ..ErrorResponse::new(ErrorType::Validation, rejection.body_text())
        }
    })
}

/// Scores pairs through the shared queue: checks the limits, counts tokens, waits for the
/// logits. Returns the raw logits and the tokens scored.
async fn score_pairs(
    state: &ServerState,
    pairs: Vec<(String, String)>,
    truncate: Option<bool>,
    direction: TruncationDirection,
) -> Result<(Vec<Vec<f32>>, usize), ErrorResponse> {
    let limits = &state.limits;
    if direction == TruncationDirection::Left {
        return Err(ErrorResponse::new(
            ErrorType::Validation,
            "`truncation_direction` Left is not served: pairs are truncated longest-first from \
             the right, as sentence-transformers truncates them",
        ));
    }
    if pairs.len() > limits.max_client_batch_size {
        return Err(ErrorResponse::new(
            ErrorType::Validation,
            format!(
                "{} documents in one request; at most {} (--max-client-batch-size)",
                pairs.len(),
                limits.max_client_batch_size
            ),
        ));
    }
    for (index, (query, document)) in pairs.iter().enumerate() {
        for (what, text) in [("query", query), ("document", document)] {
            let chars = text.chars().count();
            if chars > limits.max_text_chars {
                return Err(ErrorResponse::too_large(format!(
                    "the {what} of pair {index} has {chars} characters; at most {} \
                     (--max-text-chars)",
                    limits.max_text_chars
                )));
            }
        }
    }
    let truncate = truncate.unwrap_or(limits.auto_truncate);
    let scorer = state.scorer.clone();
    let (pairs, counts) = tokio::task::spawn_blocking(move || {
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(q, d)| (q.as_str(), d.as_str()))
            .collect();
        let counts = scorer.tokenizer().token_counts(&borrowed);
        (pairs, counts)
    })
    .await
    .map_err(|error| ErrorResponse::new(ErrorType::Backend, error.to_string()))?;
    let counts =
        counts.map_err(|error| ErrorResponse::new(ErrorType::Tokenizer, error.to_string()))?;
    let max_length = state.scorer.max_length();
    if !truncate {
        if let Some((index, &count)) = counts.iter().enumerate().find(|(_, &c)| c > max_length) {
            return Err(ErrorResponse::too_large(format!(
                "pair {index} has {count} tokens and the model reads at most {max_length}; send \
                 `truncate: true` to cut it"
            )));
        }
    }
    let tokens: Vec<usize> = counts.iter().map(|&c| c.min(max_length)).collect();
    let token_total = tokens.iter().sum();
    let receiver = state.batcher.submit(pairs, tokens).map_err(batch_error)?;
    let logits = receiver
        .await
        .map_err(|_| ErrorResponse::new(ErrorType::Backend, "the scoring thread stopped"))?
        .map_err(batch_error)?;
    if let Some((index, value)) = crosstrain_model::first_non_finite(&logits) {
        return Err(ErrorResponse::new(
            ErrorType::Backend,
            format!("the model produced a non-finite logit ({value}) for pair {index}"),
        ));
    }
    Ok((logits, token_total))
}

fn batch_error(error: BatchError) -> ErrorResponse {
    let error_type = match error {
        BatchError::Overloaded { .. } => ErrorType::Overloaded,
        BatchError::Scoring(_) => ErrorType::Backend,
        BatchError::ShuttingDown => ErrorType::Unhealthy,
    };
    ErrorResponse::new(error_type, error.to_string())
}

/// Refuses a model with several outputs for the reranking routes.
fn require_reranker(state: &ServerState) -> Result<(), ErrorResponse> {
    match state.scorer.num_labels() {
        1 => Ok(()),
        labels => Err(ErrorResponse::new(
            ErrorType::Validation,
            format!("the model has {labels} outputs and reranking needs one; use /predict"),
        )),
    }
}

fn require_query(query: &str) -> Result<(), ErrorResponse> {
    if query.trim().is_empty() {
        return Err(ErrorResponse::new(
            ErrorType::Validation,
            "`query` cannot be empty",
        ));
    }
    Ok(())
}

/// One score per document: the model's activation unless raw.
fn relevance(state: &ServerState, logits: Vec<Vec<f32>>, raw: bool) -> Vec<f32> {
    let rows = if raw {
        logits
    } else {
        state.scorer.default_activation().apply(logits)
    };
    rows.into_iter().map(|row| row[0]).collect()
}

/// Indexes best first; ties keep the request's order.
fn best_first(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(CmpOrdering::Equal)
    });
    order
}

/// Rerank texts against a query (text-embeddings-inference).
#[utoipa::path(
    post,
    path = "/rerank",
    request_body = RerankRequest,
    responses(
        (status = 200, description = "Texts best first", body = Vec<Rank>),
        (status = 400, description = "No texts", body = ErrorResponse),
        (status = 413, description = "Body, text or pair too large", body = ErrorResponse),
        (status = 422, description = "Invalid request", body = ErrorResponse),
        (status = 424, description = "Scoring failed", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
    )
)]
pub async fn rerank(
    State(state): State<ServerState>,
    request: Result<Json<RerankRequest>, JsonRejection>,
) -> Result<Json<Vec<Rank>>, ErrorResponse> {
    let request = body(request)?;
    require_reranker(&state)?;
    if request.texts.is_empty() {
        return Err(ErrorResponse::new(
            ErrorType::Empty,
            "`texts` cannot be empty",
        ));
    }
    require_query(&request.query)?;
    let pairs = request
        .texts
        .iter()
        .map(|text| (request.query.clone(), text.clone()))
        .collect();
    let (logits, _) = score_pairs(
        &state,
        pairs,
        request.truncate,
        request.truncation_direction,
    )
    .await?;
    let scores = relevance(&state, logits, request.raw_scores);
    let mut texts: Vec<Option<String>> = request.texts.into_iter().map(Some).collect();
    Ok(Json(
        best_first(&scores)
            .into_iter()
            .map(|index| Rank {
                index,
                text: if request.return_text {
                    texts[index].take()
                } else {
                    None
                },
                score: scores[index],
            })
            .collect(),
    ))
}

/// The pairs of `/predict`'s `inputs`, and whether it was one pair (not a list).
fn predict_inputs(
    inputs: serde_json::Value,
) -> Result<(Vec<(String, String)>, bool), ErrorResponse> {
    let invalid = |message: String| ErrorResponse::new(ErrorType::Validation, message);
    let pair = |value: &serde_json::Value, at: &str| -> Result<(String, String), ErrorResponse> {
        match value.as_array().map(Vec::as_slice) {
            Some([serde_json::Value::String(query), serde_json::Value::String(document)]) => {
                Ok((query.clone(), document.clone()))
            }
            Some([serde_json::Value::String(_)]) | None
                if value.is_string() || value.is_array() =>
            {
                Err(invalid(format!(
                    "`inputs`{at}: a cross-encoder scores pairs; send [query, document], not a \
                     single text"
                )))
            }
            _ => Err(invalid(format!(
                "`inputs`{at}: expected [query, document] (two strings), got {value}"
            ))),
        }
    };
    match &inputs {
        serde_json::Value::Array(items) if items.is_empty() => Ok((Vec::new(), false)),
        serde_json::Value::Array(items) if items.iter().all(|item| item.is_string()) => {
            Ok((vec![pair(&inputs, "")?], true))
        }
        serde_json::Value::Array(items) => {
            let pairs = items
                .iter()
                .enumerate()
                .map(|(index, item)| pair(item, &format!("[{index}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((pairs, false))
        }
        _ => pair(&inputs, "").map(|p| (vec![p], true)),
    }
}

/// Score pairs: every label, highest first (text-embeddings-inference).
#[utoipa::path(
    post,
    path = "/predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Per pair, its labels best first (a list of lists for a list of pairs)", body = PredictResponse),
        (status = 400, description = "No inputs", body = ErrorResponse),
        (status = 413, description = "Body, text or pair too large", body = ErrorResponse),
        (status = 422, description = "Invalid request", body = ErrorResponse),
        (status = 424, description = "Scoring failed", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
    )
)]
pub async fn predict(
    State(state): State<ServerState>,
    request: Result<Json<PredictRequest>, JsonRejection>,
) -> Result<Json<PredictResponse>, ErrorResponse> {
    let request = body(request)?;
    let (pairs, single) = predict_inputs(request.inputs)?;
    if pairs.is_empty() {
        return Err(ErrorResponse::new(
            ErrorType::Empty,
            "`inputs` cannot be empty",
        ));
    }
    let (logits, _) = score_pairs(
        &state,
        pairs,
        request.truncate,
        request.truncation_direction,
    )
    .await?;
    // text-embeddings-inference's probabilities: sigmoid for one output, softmax for several.
    let labels = state.scorer.num_labels();
    let per_pair: Vec<Vec<Prediction>> = logits
        .into_iter()
        .map(|row| probabilities(row, request.raw_scores || labels == 0, labels == 1))
        .map(|row| {
            best_first(&row)
                .into_iter()
                .map(|label| Prediction {
                    score: row[label],
                    label: state
                        .labels
                        .get(label)
                        .cloned()
                        .unwrap_or_else(|| format!("LABEL_{label}")),
                })
                .collect()
        })
        .collect();
    Ok(Json(if single {
        PredictResponse::Single(per_pair.into_iter().next().unwrap_or_default())
    } else {
        PredictResponse::Batch(per_pair)
    }))
}

/// `/predict`'s scores of one pair: raw, the sigmoid of a single logit, or the softmax of
/// several.
fn probabilities(row: Vec<f32>, raw: bool, single: bool) -> Vec<f32> {
    if raw {
        return row;
    }
    if single {
        return DefaultActivation::Sigmoid.apply(vec![row]).remove(0);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// Rerank documents against a query (Cohere, Jina, infinity).
#[utoipa::path(
    post,
    path = "/v1/rerank",
    request_body = CohereRerankRequest,
    responses(
        (status = 200, description = "Documents best first", body = CohereRerankResponse),
        (status = 400, description = "No documents", body = ErrorResponse),
        (status = 413, description = "Body, text or pair too large", body = ErrorResponse),
        (status = 422, description = "Invalid request", body = ErrorResponse),
        (status = 424, description = "Scoring failed", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
    )
)]
pub async fn cohere_rerank(
    State(state): State<ServerState>,
    request: Result<Json<CohereRerankRequest>, JsonRejection>,
) -> Result<Json<CohereRerankResponse>, ErrorResponse> {
    let request = body(request)?;
    require_reranker(&state)?;
    if request.documents.is_empty() {
        return Err(ErrorResponse::new(
            ErrorType::Empty,
            "`documents` cannot be empty",
        ));
    }
    require_query(&request.query)?;
    let count = request.documents.len();
    if let Some(top_n) = request.top_n {
        if top_n == 0 || top_n > count {
            return Err(ErrorResponse::new(
                ErrorType::Validation,
                format!("`top_n` is {top_n}; it must be between 1 and the {count} documents"),
            ));
        }
    }
    let documents: Vec<String> = request
        .documents
        .into_iter()
        .map(RerankDocument::into_text)
        .collect();
    let pairs = documents
        .iter()
        .map(|document| (request.query.clone(), document.clone()))
        .collect();
    let (logits, tokens) = score_pairs(&state, pairs, None, TruncationDirection::Right).await?;
    let scores = relevance(&state, logits, request.raw_scores);
    let mut documents: Vec<Option<String>> = documents.into_iter().map(Some).collect();
    let results = best_first(&scores)
        .into_iter()
        .take(request.top_n.unwrap_or(count))
        .map(|index| RerankResult {
            index,
            relevance_score: scores[index],
            document: if request.return_documents {
                documents[index].take().map(|text| ResultDocument { text })
            } else {
                None
            },
        })
        .collect();
    Ok(Json(CohereRerankResponse {
        id: format!(
            "rerank-{:016x}",
            state.next_request_id.fetch_add(1, Ordering::Relaxed)
        ),
        object: "rerank",
        model: request.model.unwrap_or_else(|| state.info.model_id.clone()),
        results,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// 200 while the scoring thread runs.
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "Serving"),
        (status = 503, description = "The scoring thread is down", body = ErrorResponse),
    )
)]
pub async fn health(State(state): State<ServerState>) -> Result<(), ErrorResponse> {
    if state.batcher.is_running() {
        Ok(())
    } else {
        Err(ErrorResponse::new(
            ErrorType::Unhealthy,
            "the scoring thread is not running",
        ))
    }
}

/// The model and the server's limits.
#[utoipa::path(get, path = "/info", responses((status = 200, body = Info)))]
pub async fn info(State(state): State<ServerState>) -> Json<Info> {
    Json(state.info.clone())
}

/// Prometheus' text exposition format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    metrics::gauge!("crosstrain_queue_pairs").set(state.batcher.queued_pairs() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state
            .prometheus
            .as_ref()
            .map(|handle| handle.render())
            .unwrap_or_default(),
    )
}

/// The OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_inputs_take_one_pair_or_a_list_and_refuse_single_texts() {
        let (pairs, single) = predict_inputs(serde_json::json!(["q", "d"])).unwrap();
        assert_eq!((pairs, single), (vec![("q".into(), "d".into())], true));
        let (pairs, single) = predict_inputs(serde_json::json!([["q", "d"], ["r", "e"]])).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(!single);
        for bad in [
            serde_json::json!("just a text"),
            serde_json::json!(["q"]),
            serde_json::json!([["q", "d"], ["only"]]),
            serde_json::json!([["q", "d", "x"]]),
            serde_json::json!(42),
        ] {
            let error = predict_inputs(bad.clone()).unwrap_err();
            assert_eq!(error.status, 422, "{bad}");
        }
    }

    #[test]
    fn best_first_keeps_ties_in_request_order() {
        assert_eq!(best_first(&[0.5, 0.9, 0.5, 0.1]), vec![1, 0, 2, 3]);
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/rerank",
            "/predict",
            "/v1/rerank",
            "/health",
            "/info",
            "/metrics",
        ] {
            assert!(document["paths"][path].is_object(), "{path}");
        }
        assert!(document["components"]["schemas"]["RerankRequest"].is_object());
    }
}
