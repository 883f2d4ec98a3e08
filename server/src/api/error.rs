//! [`ApiError`]: every failure of the HTTP API as JSON with a stable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::EngineError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `bad_request`, `invalid_module`,
    /// `not_found`, `conflict`, `payload_too_large`, `internal`, or a task
    /// failure reason from `/v1/run`.
    pub code: String,
    /// For people.
    pub message: String,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bad request found by the API layer itself.
    #[error("{0}")]
    BadRequest(String),
    /// A missing thing found by the API layer itself.
    #[error("{0} not found")]
    NotFound(String),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Engine(EngineError::Store(e))
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) | ApiError::Engine(EngineError::BadRequest(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ApiError::Engine(EngineError::InvalidModule(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_module")
            }
            ApiError::NotFound(_) | ApiError::Engine(EngineError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::Engine(EngineError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Engine(EngineError::Broker(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Engine(EngineError::Store(_) | EngineError::Blob(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // 5xx details are logged, never sent.
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; see the server log".to_owned()
        } else {
            self.to_string()
        };
        (
            status,
            Json(ErrorBody {
                code: code.to_owned(),
                message,
            }),
        )
            .into_response()
    }
}

/// An error response with this status and code.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

impl From<crate::jobfile::Invalid> for ApiError {
    fn from(invalid: crate::jobfile::Invalid) -> Self {
        ApiError::BadRequest(invalid.0)
    }
}
