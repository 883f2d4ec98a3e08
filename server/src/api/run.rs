//! Upload-and-run: a module and an input in one request, the output in the
//! answer. The call is a one-task job like any other (recorded durably,
//! listed, retried by policy), at the highest priority by default so it
//! never waits behind a sweep, and its answer comes straight from the
//! recorder once the result is committed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use sandmill_runtime::message::{MAX_PRIORITY, OutputRef, TaskResult, Verdict};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, error};
use super::views::JobCreated;
use super::{AppState, DEFAULT_RUN_WAIT, RUN_WAIT_SLACK, RawBody, parse_json};
use crate::jobfile::{GrantsSection, JobFile, LimitsSection, TaskSection, parse_duration};
use crate::model::TaskState;
use crate::scheduler::{SchedulerError, SubmitOptions};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/run", post(run))
}

/// Upload-and-run: a module and an input in one request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// `sha256:<hex>` or a spec `name@version`; or give `module_base64`.
    pub module: Option<String>,
    /// The module's bytes, base64.
    pub module_base64: Option<String>,
    /// map, reduce, preprocess or task (default task, or the spec's).
    pub kind: Option<String>,
    /// The input as UTF-8 text.
    pub input: Option<String>,
    /// The input's bytes, base64.
    pub input_base64: Option<String>,
    /// Parameters (a JSON object).
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Grants.
    #[serde(default)]
    pub grants: GrantsSection,
    /// 0 to 9, higher first (default 9: calls go before sweeps).
    pub priority: Option<u8>,
    /// Wait for the output (default true).
    pub wait: Option<bool>,
    /// How long to wait before answering 202, e.g. `30s` (default: the
    /// call's timeout and 5 s more).
    pub wait_timeout: Option<String>,
}

/// Runs a call and returns its output (200, the bytes), its failure (422,
/// with the failure reason as `code`), or `202` with the job id when asked
/// not to wait or when it outlasts the wait.
#[utoipa::path(post, path = "/v1/run", tag = "run", request_body = RunRequest,
    responses((status = 200, description = "the output", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("x-sandmill-job" = i64, description = "the call's job"), ("x-sandmill-task" = i64, description = "the call's task"))),
        (status = 202, description = "accepted; not finished within the wait, or not waited for (`wait = false`, or `--max-waiting-runs` calls wait already)", body = JobCreated),
        (status = 400, description = "a field is wrong", body = ErrorBody),
        (status = 404, description = "no such module, spec or input", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody),
        (status = 422, description = "the call failed; `code` is the failure reason", body = ErrorBody),
        (status = 429, description = "the tenant is over a quota", body = ErrorBody),
        (status = 507, description = "a blob bucket is at its byte limit (`storage_full`; `serve --blobs-max-bytes`)", body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: RunRequest = parse_json(&body)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let module = match (&request.module, &request.module_base64) {
        (Some(reference), None) => reference.clone(),
        (None, Some(encoded)) => {
            let bytes = b64
                .decode(encoded)
                .map_err(|e| ApiError::bad_field("module_base64", e.to_string()))?;
            format!(
                "sha256:{}",
                state
                    .scheduler
                    .upload_module(&caller.tenant, bytes.into())
                    .await?
                    .hash
            )
        }
        _ => {
            return Err(ApiError::bad_field(
                "module",
                "give exactly one of module or module_base64",
            ));
        }
    };
    let input = match (&request.input, &request.input_base64) {
        (Some(text), None) => Some(text.as_bytes().to_vec()),
        (None, Some(encoded)) => Some(
            b64.decode(encoded)
                .map_err(|e| ApiError::bad_field("input_base64", e.to_string()))?,
        ),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_field(
                "input",
                "give at most one of input or input_base64",
            ));
        }
    };
    let input = match input {
        Some(bytes) => Some(format!(
            "sha256:{}",
            state.scheduler.upload_input(&caller.tenant, &bytes).await?
        )),
        None => None,
    };
    // By default a call is waited for as long as it may run (its timeout),
    // and a little more.
    let wait = match &request.wait_timeout {
        None => match &request.limits.timeout {
            Some(text) => parse_duration("limits.timeout", text)? + RUN_WAIT_SLACK,
            None => DEFAULT_RUN_WAIT,
        },
        Some(text) => parse_duration("wait_timeout", text)?,
    }
    .min(state.config.max_run_wait)
    .max(Duration::from_millis(1));
    let job = JobFile {
        name: "run".into(),
        priority: request.priority,
        task: Some(TaskSection {
            module,
            kind: request.kind.clone(),
            input,
            input_name: None,
            params: request.params.clone(),
        }),
        limits: request.limits,
        grants: request.grants,
        max_attempts: Some(1),
        ..JobFile::default()
    };
    // Room to wait (--max-waiting-runs), held until the answer; without
    // it the call is accepted and answered 202 at once.
    let waiting = if request.wait == Some(false) {
        None
    } else {
        state.waiting_runs.clone().try_acquire_owned().ok()
    };
    let wait_for_task = waiting.is_some();
    let options = SubmitOptions {
        wait_for_task,
        default_priority: MAX_PRIORITY,
    };
    let owner = caller.owner();
    if wait_for_task
        && let Some(ran) = state
            .scheduler
            .run_inline(&owner, &job, options, wait)
            .await?
    {
        return answer(&state, ran.job_id, ran.task_id, ran.result).await;
    }
    let submitted = state.scheduler.submit_with(&owner, &job, options).await?;
    let id = submitted.job_id;
    let accepted = || (StatusCode::ACCEPTED, Json(JobCreated { id })).into_response();
    let Some(waiter) = submitted.waiter else {
        // A call whose output was cached never ran: answered at once.
        if wait_for_task
            && let Some(task) = state
                .scheduler
                .store()
                .tasks(id, None, None, 1)
                .await?
                .first()
            && task.state() == TaskState::Cached
        {
            let stored = state.scheduler.store().task_output(task.id).await?;
            let body = match stored {
                Some(stored) => super::tasks::stored_body(&state, stored).await?,
                None => None,
            };
            return Ok(output_response(body, id, task.id));
        }
        return Ok(accepted());
    };
    let task_id = waiter.task_id();
    let Some(result) = waiter.result(wait).await else {
        return Ok(accepted());
    };
    answer(&state, id, task_id, result).await
}

/// The answer to a call that ended: its output, or its failure.
async fn answer(
    state: &AppState,
    id: i64,
    task_id: i64,
    result: TaskResult,
) -> Result<Response, ApiError> {
    if result.verdict == Verdict::Failed {
        let reason = result.reason.map_or("failed", |r| r.as_str());
        return Ok(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            reason,
            result.error.unwrap_or_else(|| "the call failed".to_owned()),
        ));
    }
    // A large output is sent as it is read from the blob store, a chunk
    // in memory at a time.
    let body = match result.output {
        Some(OutputRef::Inline(bytes)) => Some((bytes.len() as u64, Body::from(bytes))),
        Some(OutputRef::Blob { hash, .. }) => {
            let read = super::tasks::blob_read(state, &hash)
                .await?
                .ok_or_else(|| {
                    SchedulerError::Internal(format!("output blob {hash} is missing"))
                })?;
            Some((read.size, super::tasks::streamed(read)))
        }
        None => None,
    };
    Ok(output_response(body, id, task_id))
}

/// A call's output (none: empty), with its job and task in headers.
fn output_response(body: Option<(u64, Body)>, id: i64, task_id: i64) -> Response {
    let (size, body) = body.unwrap_or((0, Body::empty()));
    let mut response = super::tasks::octets(size, body);
    for (name, value) in [("x-sandmill-job", id), ("x-sandmill-task", task_id)] {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
