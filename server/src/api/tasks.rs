//! Tasks: one with its attempts, its output bytes, its logs.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{StreamExt, TryStreamExt};
use sandmill_runtime::blob::BlobRead;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{
    AttemptView, CallView, InputPartView, InputView, RestartRequest, TaskDetail, TaskView,
};
use super::{ApiPath, ApiQuery, AppState, RawBody};
use crate::scheduler::SchedulerError;
use crate::store::Stored;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/output", get(task_output))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/v1/tasks/{id}/restart", post(restart_task))
        .route("/v1/tasks/{id}/call", get(task_call))
        .route("/v1/tasks/{id}/blobs/{hash}", get(task_blob))
        .route("/v1/blobs/{hash}", get(get_blob))
}

/// A task `caller` may see, with its job: another tenant's answers 404,
/// as a missing one does.
async fn visible_task(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<(crate::store::TaskRow, crate::store::JobRow), ApiError> {
    let store = state.scheduler.store();
    let not_found = || ApiError::NotFound(format!("task {id}"));
    let task = store.task(id).await?.ok_or_else(not_found)?;
    let job = store
        .job(task.job_id)
        .await?
        .filter(|job| caller.sees(&job.tenant))
        .ok_or_else(not_found)?;
    Ok((task, job))
}

/// Which attempt of a task.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// The attempt (from 0; default: the last).
    pub attempt: Option<i64>,
}

/// Everything an attempt of a task ran with (module, preprocessor,
/// inputs, params, limits, grants, seed) and how it ended: what
/// `sandmill replay` runs again.
#[utoipa::path(get, path = "/v1/tasks/{id}/call", tag = "tasks", params(("id" = i64, Path), CallQuery),
    responses((status = 200, description = "the call", body = CallView),
        (status = 400, description = "the id or attempt is wrong", body = ErrorBody),
        (status = 404, description = "no such task or attempt", body = ErrorBody),
        (status = 409, description = "a map-reduce task, whose input is a shuffle", body = ErrorBody)))]
pub async fn task_call(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<CallQuery>,
) -> Result<Json<CallView>, ApiError> {
    Ok(Json(call_view(&state, &caller, id, query.attempt).await?))
}

/// What an attempt of a task ran with (the last: `None`).
async fn call_view(
    state: &AppState,
    caller: &Caller,
    id: i64,
    attempt: Option<i64>,
) -> Result<CallView, ApiError> {
    let store = state.scheduler.store();
    let (task, job) = visible_task(state, caller, id).await?;
    if job.maps.is_some() && job.reducers > 0 {
        return Err(SchedulerError::Conflict(format!(
            "task {id} is part of a map-reduce job's shuffle: replay its job with `sandmill run` instead"
        ))
        .into());
    }
    let attempts = store.attempts(id).await?;
    let attempt = attempt.unwrap_or(task.attempt);
    let recorded = attempts.iter().find(|a| a.attempt == attempt);
    if recorded.is_none() && !(attempts.is_empty() && attempt == 0) {
        return Err(ApiError::NotFound(format!(
            "attempt {attempt} of task {id}"
        )));
    }
    Ok(CallView {
        task_id: id,
        job_id: task.job_id,
        attempt,
        kind: job.task_kind.0,
        module: format!("sha256:{}", job.module_hash),
        preprocess: job.preprocess_hash.as_ref().map(|h| format!("sha256:{h}")),
        input: InputView {
            blob: task.input_hash.as_ref().map(|h| format!("sha256:{h}")),
            name: task.input_name.clone(),
        },
        inputs: task
            .inputs
            .as_ref()
            .map(|i| i.0.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|part| InputPartView {
                blob: format!("sha256:{}", part.hash),
                offset: part.offset,
                len: part.len,
            })
            .collect(),
        params: serde_json::from_str(&task.params)
            .unwrap_or_else(|_| serde_json::Value::String(task.params.clone())),
        limits: (&job.limits.0).into(),
        grants: (&job.grants.0).into(),
        seed: task.seed.unwrap_or(task.id) as u64,
        recorded: recorded.map(AttemptView::new),
    })
}

/// A blob a task's call reads (its module, preprocessor or an input), for
/// `sandmill replay`.
#[utoipa::path(get, path = "/v1/tasks/{id}/blobs/{hash}", tag = "tasks",
    params(("id" = i64, Path), ("hash" = String, Path, description = "a sha256, 64 hex digits", pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "the id is not a number, or the hash no sha256", body = ErrorBody),
        (status = 404, description = "no such task, or its call reads no such blob", body = ErrorBody),
        (status = 409, description = "a map-reduce task, whose input is a shuffle", body = ErrorBody)))]
pub async fn task_blob(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, hash)): ApiPath<(i64, String)>,
) -> Result<Response, ApiError> {
    let hash = sha256_of(&hash)?;
    let call = call_view(&state, &caller, id, None).await?;
    if !call.blobs().contains(&hash) {
        return Err(ApiError::NotFound(format!(
            "blob sha256:{hash} of task {id}'s call"
        )));
    }
    blob_response(&state, &hash).await
}

/// A hash without its `sha256:`, checked.
fn sha256_of(hash: &str) -> Result<String, ApiError> {
    let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(crate::jobfile::Invalid::field(
            "hash",
            "not a sha256 (64 hex digits)",
        )));
    }
    Ok(hash.to_owned())
}

/// A blob as it is read, if stored.
pub(crate) async fn blob_read(state: &AppState, hash: &str) -> Result<Option<BlobRead>, ApiError> {
    Ok(state
        .scheduler
        .blobs()
        .read(hash)
        .await
        .map_err(SchedulerError::Blob)?)
}

/// A response body sending `read` as it is read: a chunk in memory at a
/// time however large the blob. Should the bytes stop matching their hash
/// (or the store fail) part-way, the response is cut off there (its
/// status has gone already) and the server logs why.
pub(crate) fn streamed(read: BlobRead) -> Body {
    Body::from_stream(read.chunks.inspect_err(|error| {
        tracing::error!(%error, "a blob's response was cut off");
    }))
}

/// `body` of `size` bytes as `application/octet-stream`.
pub(crate) fn octets(size: u64, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response()
}

/// A stored blob's bytes (streamed), or 404.
async fn blob_response(state: &AppState, hash: &str) -> Result<Response, ApiError> {
    let read = blob_read(state, hash)
        .await?
        .ok_or(ApiError::NotFound(format!("blob sha256:{hash}")))?;
    Ok(octets(read.size, streamed(read)))
}

/// What a task stored as a body and its size, streamed from the blob store
/// (`None` if nothing).
pub(crate) async fn stored_body(
    state: &AppState,
    stored: Stored,
) -> Result<Option<(u64, Body)>, ApiError> {
    match stored {
        Stored::Nothing => Ok(None),
        Stored::Inline(bytes) => Ok(Some((bytes.len() as u64, Body::from(bytes)))),
        Stored::Blob(hash) => {
            let read = blob_read(state, &hash)
                .await?
                .ok_or_else(|| SchedulerError::Internal(format!("blob {hash} is missing")))?;
            Ok(Some((read.size, streamed(read))))
        }
    }
}

/// A stored blob's bytes: any (a module, an input, an output, a log) to an
/// admin; to a tenant's token, the modules and inputs its tenant uploaded
/// (a task's call's blobs: `/v1/tasks/{id}/blobs/{hash}`).
#[utoipa::path(get, path = "/v1/blobs/{hash}", tag = "tasks", params(("hash" = String, Path, description = "a sha256, 64 hex digits", pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "not a sha256", body = ErrorBody),
        (status = 404, description = "no such blob (of the tenant's)", body = ErrorBody)))]
pub async fn get_blob(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hash = sha256_of(&hash)?;
    if !state.scheduler.may_name(&caller.owner(), &hash).await? {
        return Err(ApiError::NotFound(format!("blob sha256:{hash}")));
    }
    blob_response(&state, &hash).await
}

/// Runs a task that ended again: a new task at its place, linked to it by
/// `restart_of` (the old one stays readable, its `replaced_by` set). The
/// job (and its pipeline) reopens; steps the task blocked are planned
/// again, and with `downstream`, every step after it. Two restarts of one
/// task make one new run: the second answers 200 with it.
#[utoipa::path(post, path = "/v1/tasks/{id}/restart", tag = "tasks", params(("id" = i64, Path)),
    request_body(content = Option<RestartRequest>, description = "optional; `{}` by default"),
    responses((status = 201, description = "the new run", body = TaskDetail),
        (status = 200, description = "the run an earlier restart made", body = TaskDetail),
        (status = 400, description = "the id or body is wrong", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "it has not ended, was replaced, or is a map-reduce task", body = ErrorBody)))]
pub async fn restart_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<TaskDetail>), ApiError> {
    let request: RestartRequest = super::parse_json_or_default(&body)?;
    visible_task(&state, &caller, id).await?;
    let restarted = state.scheduler.restart_task(id, request.downstream).await?;
    let Json(detail) = get_task(State(state), caller, ApiPath(restarted.task_id)).await?;
    let status = if restarted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(detail)))
}

/// A task with its attempts.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "the task", body = TaskDetail),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such task", body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<TaskDetail>, ApiError> {
    let store = state.scheduler.store();
    let (task, _) = visible_task(&state, &caller, id).await?;
    let attempts = store.attempts(id).await?;
    Ok(Json(TaskDetail {
        task: TaskView::new(&task),
        attempts: attempts.iter().map(AttemptView::new).collect(),
    }))
}

/// A task's output bytes (404 while it has none).
#[utoipa::path(get, path = "/v1/tasks/{id}/output", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "the output", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such task, or it has not succeeded", body = ErrorBody)))]
pub async fn task_output(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    visible_task(&state, &caller, id).await?;
    let stored = state
        .scheduler
        .store()
        .task_output(id)
        .await?
        .ok_or(ApiError::NotFound(format!("task {id}")))?;
    match stored_body(&state, stored).await? {
        Some((size, body)) => Ok(octets(size, body)),
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
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    visible_task(&state, &caller, id).await?;
    let attempts = state.scheduler.store().attempts(id).await?;
    // Sent as read: one attempt's log (at most its log limit) at a time,
    // a large one a chunk at a time from the blob store.
    let parts = futures_util::stream::iter(attempts)
        .then(move |attempt| {
            let state = state.clone();
            async move {
                let header = format!(
                    "== attempt {} on {}: {}{} ==\n",
                    attempt.attempt,
                    attempt.worker,
                    crate::store::types::Named::name(&attempt.state.0),
                    attempt
                        .reason
                        .map(|r| format!(" [{}]", r.0))
                        .unwrap_or_default()
                );
                let log = match state
                    .scheduler
                    .store()
                    .attempt_log(id, attempt.attempt)
                    .await
                {
                    Ok(log) => stored_body(&state, log).await,
                    Err(error) => Err(ApiError::from(error)),
                };
                let log = match log {
                    Ok(Some((_, body))) => body
                        .into_data_stream()
                        .map_err(axum::BoxError::from)
                        .boxed(),
                    Ok(None) => futures_util::stream::empty().boxed(),
                    Err(error) => {
                        tracing::error!(task = id, %error, "a task's logs were cut off");
                        futures_util::stream::once(async move {
                            Err(axum::BoxError::from(error.to_string()))
                        })
                        .boxed()
                    }
                };
                futures_util::stream::once(async move { Ok(bytes::Bytes::from(header)) }).chain(log)
            }
        })
        .flatten();
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(parts),
    )
        .into_response())
}
