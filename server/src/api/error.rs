//! [`ApiError`]: every failure of the HTTP API as JSON with a stable code,
//! decided in one place ([`ApiError::status_and_code`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sandmill_runtime::blob::BlobErrorKind;

use crate::jobfile::Invalid;
use crate::scheduler::SchedulerError;
use crate::store::{StoreError, StoreErrorKind};

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `bad_request`, `invalid_module`,
    /// `not_found`, `conflict`, `forbidden`, `unauthorized`, `over_quota`,
    /// `payload_too_large`, `request_timeout`, `unavailable`,
    /// `storage_full` (507: a blob bucket is at its byte limit), `internal`,
    /// or a task's failure reason (`/v1/run`).
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault (`sweep.count`), when one is.
    pub field: Option<String>,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the scheduler.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A bad request found by the API layer itself.
    #[error(transparent)]
    BadRequest(Invalid),
    /// A missing thing found by the API layer itself.
    #[error("{0} not found")]
    NotFound(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Scheduler(SchedulerError::Store(e))
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::BadRequest(invalid)
    }
}

impl ApiError {
    /// A bad request naming the field at fault.
    pub fn bad_field(field: &str, problem: impl Into<String>) -> Self {
        ApiError::BadRequest(Invalid::field(field, problem))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use SchedulerError as S;
        match self {
            ApiError::BadRequest(_) | ApiError::Scheduler(S::BadRequest(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ApiError::Scheduler(S::InvalidModule(_)) => (StatusCode::BAD_REQUEST, "invalid_module"),
            ApiError::NotFound(_) | ApiError::Scheduler(S::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::Scheduler(S::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Scheduler(S::Forbidden(_)) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Scheduler(S::OverQuota(_)) => (StatusCode::TOO_MANY_REQUESTS, "over_quota"),
            ApiError::Scheduler(S::Busy(_)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Scheduler(S::Blob(e)) if e.kind() == BlobErrorKind::Full => {
                (StatusCode::INSUFFICIENT_STORAGE, "storage_full")
            }
            ApiError::Scheduler(S::Broker(_) | S::Blob(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Scheduler(S::Store(e)) if e.kind() == StoreErrorKind::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Scheduler(S::Store(_) | S::Internal(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    fn field(&self) -> Option<String> {
        let invalid = match self {
            ApiError::BadRequest(invalid)
            | ApiError::Scheduler(SchedulerError::BadRequest(invalid)) => invalid,
            _ => return None,
        };
        (!invalid.key().is_empty()).then(|| invalid.key().to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // 5xx details are logged, never sent; a limit of the server's own
        // is no fault, and the client is told which.
        let busy = match &self {
            ApiError::Scheduler(SchedulerError::Busy(_)) => true,
            ApiError::Scheduler(SchedulerError::Blob(e)) => e.kind() == BlobErrorKind::Full,
            _ => false,
        };
        let message = if status.is_server_error() && !busy {
            tracing::error!(error = %self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    "a service the server depends on is unavailable; try again later".to_owned()
                }
                _ => "internal error; see the server log".to_owned(),
            }
        } else {
            self.to_string()
        };
        let field = self.field();
        error_with_field(status, code, message, field)
    }
}

/// An error response with this status and code.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_with_field(status, code, message, None)
}

fn error_with_field(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    field: Option<String>,
) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.to_owned(),
            message: message.into(),
            field,
        }),
    )
        .into_response()
}
