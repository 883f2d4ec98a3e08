//! Liveness, readiness, metrics and the OpenAPI document.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::{ErrorBody, error};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
}

/// Prometheus metrics of this process, in the OpenMetrics text format:
/// tasks finished by kind, verdict and reason; task durations and queue
/// waits; tasks waiting per label set; the recorder's lag; HTTP requests
/// by route and status; and, when workers run in this process (`sandmill
/// dev`), their slots, module compiles and loads and guest fuel and memory.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "the metrics",
        content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::scrape(&state.scheduler).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            sandmill_runtime::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready", content_type = "text/plain", body = String),
        (status = 503, description = "the database does not answer", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.scheduler.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("database: {e}"),
        ),
    }
}

/// This document: with a bearer token required on every route but
/// `/healthz` (`--auth tokens`), or with no security requirement on an
/// open server (`sandmill dev`'s default), as the server it came from is.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(super::openapi_document_for(state.config.auth))
}
