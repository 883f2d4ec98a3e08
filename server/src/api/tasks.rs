//! Tasks: one with its attempts, its output bytes, its logs.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::error::{ApiError, ErrorBody};
use super::views::{AttemptView, TaskDetail, TaskView};
use super::{ApiPath, AppState};
use crate::scheduler::SchedulerError;
use crate::store::Stored;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/output", get(task_output))
        .route("/v1/tasks/{id}/logs", get(task_logs))
}

/// A task with its attempts.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "the task", body = TaskDetail),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<TaskDetail>, ApiError> {
    let store = state.scheduler.store();
    let task = store
        .task(id)
        .await?
        .ok_or(ApiError::NotFound(format!("task {id}")))?;
    let attempts = store.attempts(id).await?;
    Ok(Json(TaskDetail {
        task: TaskView::new(&task),
        attempts: attempts.iter().map(AttemptView::new).collect(),
    }))
}

/// Bytes stored inline or in the blob store.
pub(crate) async fn read_stored(
    state: &AppState,
    stored: Stored,
) -> Result<Option<Vec<u8>>, ApiError> {
    match stored {
        Stored::Nothing => Ok(None),
        Stored::Inline(bytes) => Ok(Some(bytes)),
        Stored::Blob(hash) => Ok(Some(
            state
                .scheduler
                .blobs()
                .get(&hash)
                .await
                .map_err(SchedulerError::Blob)?
                .ok_or_else(|| SchedulerError::Internal(format!("blob {hash} is missing")))?,
        )),
    }
}

/// A task's output bytes (404 while it has none).
#[utoipa::path(get, path = "/v1/tasks/{id}/output", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "the output", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such task, or it has not succeeded", body = ErrorBody)))]
pub async fn task_output(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let stored = state
        .scheduler
        .store()
        .task_output(id)
        .await?
        .ok_or(ApiError::NotFound(format!("task {id}")))?;
    match read_stored(&state, stored).await? {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError::NotFound(format!(
            "output of task {id} (it has not succeeded)"
        ))),
    }
}

/// A task's logs, every attempt in order, each under a header line. The
/// guest's bytes are sent as they are (they need not be UTF-8).
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "the logs", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody)))]
pub async fn task_logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let store = state.scheduler.store();
    store
        .task(id)
        .await?
        .ok_or(ApiError::NotFound(format!("task {id}")))?;
    let mut text = Vec::new();
    for attempt in store.attempts(id).await? {
        text.extend_from_slice(
            format!(
                "== attempt {} on {}: {}{} ==\n",
                attempt.attempt,
                attempt.worker,
                crate::store::types::Named::name(&attempt.state.0),
                attempt
                    .reason
                    .map(|r| format!(" [{}]", r.0))
                    .unwrap_or_default()
            )
            .as_bytes(),
        );
        let log = store.attempt_log(id, attempt.attempt).await?;
        if let Some(bytes) = read_stored(&state, log).await? {
            text.extend_from_slice(&bytes);
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], text).into_response())
}
