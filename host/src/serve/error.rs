//! The server's error responses, in text-embeddings-inference's shape: `{"error": message,
//! "error_type": kind}` with its status codes, so clients written against it read ours.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The kind of failure, as text-embeddings-inference names it (its spelling: `Validation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ErrorType {
    /// The scoring thread is not running (503).
    Unhealthy,
    /// The model failed on this request's pairs (424).
    Backend,
    /// The queue is full (429): retry later.
    Overloaded,
    /// The request breaks a rule: a field, a limit, a type (422; 413 for a body, a text or a
    /// pair that is too large).
    Validation,
    /// Tokenizing the request failed (422).
    Tokenizer,
    /// No documents to score (400).
    Empty,
    /// No or a wrong API key (401).
    Unauthorized,
    /// No such route (404).
    NotFound,
}

/// An error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong, naming the field or limit.
    pub error: String,
    /// Its kind.
    pub error_type: ErrorType,
    /// The HTTP status (not in the body).
    #[serde(skip)]
    pub status: u16,
}

impl ErrorResponse {
    /// An error of `error_type` with its usual status.
    pub fn new(error_type: ErrorType, error: impl Into<String>) -> Self {
        let status = match error_type {
            ErrorType::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Backend => StatusCode::FAILED_DEPENDENCY,
            ErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::Validation | ErrorType::Tokenizer => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Empty => StatusCode::BAD_REQUEST,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
        };
        Self {
            error: error.into(),
            error_type,
            status: status.as_u16(),
        }
    }

    /// A validation error for something too large (413).
    pub fn too_large(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
            ..Self::new(ErrorType::Validation, error)
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        (self.status(), Json(self)).into_response()
    }
}
