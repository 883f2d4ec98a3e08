//! The HTTP API (axum). JSON in and out; every error is an [`ErrorBody`]
//! with a stable `code`. Request bodies are capped; a rejected request
//! changes nothing. The OpenAPI document at `/v1/openapi.json` is generated
//! from the handlers' annotations.

mod error;
mod handlers;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;

pub use error::{ApiError, ErrorBody};

use crate::engine::Engine;

/// Largest request body by default: a module or an input of `/v1/run`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// How long `/v1/run` waits by default before answering `202`.
pub const DEFAULT_RUN_WAIT: Duration = Duration::from_secs(30);

/// Settings of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Longest wait `/v1/run` allows.
    pub max_run_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_run_wait: Duration::from_secs(300),
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The control plane.
    pub engine: Engine,
    /// The API's settings.
    pub config: ApiConfig,
}

/// The whole API.
pub fn router(engine: Engine, config: ApiConfig) -> Router {
    let limit = config.max_body_bytes;
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/modules", post(handlers::upload_module))
        .route("/v1/modules/{hash}", get(handlers::get_module))
        .route("/v1/inputs", post(handlers::upload_input))
        .route(
            "/v1/specs",
            post(handlers::put_spec).get(handlers::list_specs),
        )
        .route("/v1/specs/{name}", get(handlers::get_spec))
        .route(
            "/v1/jobs",
            post(handlers::submit_job).get(handlers::list_jobs),
        )
        .route("/v1/jobs/{id}", get(handlers::get_job))
        .route("/v1/jobs/{id}/cancel", post(handlers::cancel_job))
        .route("/v1/jobs/{id}/tasks", get(handlers::list_tasks))
        .route("/v1/tasks/{id}", get(handlers::get_task))
        .route("/v1/tasks/{id}/output", get(handlers::task_output))
        .route("/v1/tasks/{id}/logs", get(handlers::task_logs))
        .route("/v1/run", post(handlers::run))
        .route("/v1/workers", get(handlers::list_workers))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(AppState { engine, config })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sandmill",
        description = "Run WebAssembly tasks in a sandbox, on one machine or a fleet."
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::upload_module,
        handlers::get_module,
        handlers::upload_input,
        handlers::put_spec,
        handlers::list_specs,
        handlers::get_spec,
        handlers::submit_job,
        handlers::list_jobs,
        handlers::get_job,
        handlers::cancel_job,
        handlers::list_tasks,
        handlers::get_task,
        handlers::task_output,
        handlers::task_logs,
        handlers::run,
        handlers::list_workers,
    )
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> impl IntoResponse {
    axum::Json(openapi_document())
}

/// A raw body whose rejections (too large, unreadable) are [`ErrorBody`]s.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_request"
                };
                Err(error::error(status, code, rejection.body_text()))
            }
        }
    }
}
