//! The handlers, one per route; each is thin over [`Engine`] and [`Store`].

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, error};
use super::{AppState, DEFAULT_RUN_WAIT, RawBody};
use crate::engine::EngineError;
use crate::jobfile::{self, GrantsSection, JobFile, LimitsSection, TaskSection};
use crate::store::{AttemptRow, JobRow, ModuleRow, SpecRow, TaskRow, now_ms};

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", responses((status = 200), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("database: {e}"),
        ),
    }
}

/// Uploads a module (raw WebAssembly component). Idempotent; a module that
/// does not load in the sandbox is refused and nothing is stored.
#[utoipa::path(post, path = "/v1/modules", request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 200, body = ModuleRow), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_module(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Json<ModuleRow>, ApiError> {
    Ok(Json(state.engine.upload_module(&body).await?))
}

/// A module by hash.
#[utoipa::path(get, path = "/v1/modules/{hash}", params(("hash" = String, Path)),
    responses((status = 200, body = ModuleRow), (status = 404, body = ErrorBody)))]
pub async fn get_module(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Json<ModuleRow>, ApiError> {
    let hash = hash.strip_prefix("sha256:").unwrap_or(&hash).to_owned();
    state
        .engine
        .store()
        .module(&hash)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound(format!("module {hash}")))
}

/// A stored input.
#[derive(Serialize, ToSchema)]
pub struct InputRef {
    /// `sha256:<hex>`, to name in a job file.
    pub input: String,
}

/// Uploads an input (raw bytes) for job files to name.
#[utoipa::path(post, path = "/v1/inputs", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = InputRef), (status = 413, body = ErrorBody)))]
pub async fn upload_input(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Json<InputRef>, ApiError> {
    let hash = state.engine.upload_input(&body).await?;
    Ok(Json(InputRef {
        input: format!("sha256:{hash}"),
    }))
}

/// A spec to register.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecRequest {
    /// Name.
    pub name: String,
    /// Version; immutable once registered.
    pub version: String,
    /// `sha256:<hex>` of an uploaded module.
    pub module: String,
    /// map, reduce, preprocess or task.
    pub kind: String,
    /// Default limits of jobs using the spec.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Default grants.
    #[serde(default)]
    pub grants: GrantsSection,
    /// Labels (which workers may run it).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Registers a spec version.
#[utoipa::path(post, path = "/v1/specs", request_body = SpecRequest,
    responses((status = 201, body = SpecRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_spec(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<SpecRow>), ApiError> {
    let request: SpecRequest = parse_json(&body)?;
    if request.name.is_empty() || request.name.contains('@') || request.version.is_empty() {
        return Err(ApiError::BadRequest(
            "name and version must be non-empty, and name has no `@`".into(),
        ));
    }
    let kind = jobfile::parse_kind("kind", &request.kind)?;
    let as_job = JobFile {
        limits: request.limits.clone(),
        grants: request.grants.clone(),
        labels: request.labels.clone(),
        ..JobFile::default()
    };
    let limits = as_job.limits()?;
    let grants = as_job.grants()?;
    as_job.labels()?;
    let hash = request.module.strip_prefix("sha256:").ok_or_else(|| {
        ApiError::BadRequest("module: expected sha256:<hex> of an uploaded module".into())
    })?;
    let module = state
        .engine
        .store()
        .module(hash)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("module {}", request.module)))?;
    if !module.exports.split(',').any(|e| e == kind.name()) {
        return Err(ApiError::BadRequest(format!(
            "kind: the module exports no {} function (it has: {})",
            kind.name(),
            module.exports
        )));
    }
    let spec = SpecRow {
        name: request.name,
        version: request.version,
        module_hash: hash.to_owned(),
        kind: kind.name().to_owned(),
        limits: serde_json::to_string(&limits).unwrap_or_default(),
        grants: serde_json::to_string(&grants).unwrap_or_default(),
        labels: serde_json::to_string(&request.labels).unwrap_or_default(),
        created_at: now_ms(),
    };
    if !state.engine.store().put_spec(&spec).await? {
        return Err(EngineError::Conflict(format!(
            "spec {}@{} exists with other content; versions are immutable",
            spec.name, spec.version
        ))
        .into());
    }
    let stored = state
        .engine
        .store()
        .spec(&spec.name, Some(&spec.version))
        .await?;
    Ok((StatusCode::CREATED, Json(stored.unwrap_or(spec))))
}

/// Every spec version.
#[utoipa::path(get, path = "/v1/specs", responses((status = 200, body = Vec<SpecRow>)))]
pub async fn list_specs(State(state): State<AppState>) -> Result<Json<Vec<SpecRow>>, ApiError> {
    Ok(Json(state.engine.store().specs().await?))
}

/// The versions of one spec, newest first.
#[utoipa::path(get, path = "/v1/specs/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Vec<SpecRow>), (status = 404, body = ErrorBody)))]
pub async fn get_spec(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<SpecRow>>, ApiError> {
    let versions: Vec<SpecRow> = state
        .engine
        .store()
        .specs()
        .await?
        .into_iter()
        .filter(|s| s.name == name)
        .collect();
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("spec {name}")));
    }
    Ok(Json(versions))
}

/// An accepted job.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobCreated {
    /// Its id.
    pub id: i64,
}

/// Submits a job (a job file as JSON; modules and inputs by `sha256:` or spec).
#[utoipa::path(post, path = "/v1/jobs", request_body = JobFile,
    responses((status = 201, body = JobCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn submit_job(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let job = jobfile::from_json(&body)?;
    let id = state.engine.submit(&job).await?;
    Ok((StatusCode::CREATED, Json(JobCreated { id })))
}

/// Filters of the job list.
#[derive(Deserialize, IntoParams)]
pub struct JobQuery {
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<i64>,
    /// Jobs to skip.
    pub offset: Option<i64>,
}

/// Jobs, most recently updated first.
#[utoipa::path(get, path = "/v1/jobs", params(JobQuery), responses((status = 200, body = Vec<JobRow>), (status = 400, body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Query(query): Query<JobQuery>,
) -> Result<Json<Vec<JobRow>>, ApiError> {
    if let Some(status) = &query.status
        && !["running", "succeeded", "failed", "cancelled"].contains(&status.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "status: `{status}` is not one of running, succeeded, failed, cancelled"
        )));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let offset = query.offset.unwrap_or(0).max(0);
    Ok(Json(
        state
            .engine
            .store()
            .jobs(query.status.as_deref(), limit, offset)
            .await?,
    ))
}

/// A job with its task counts.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// The job.
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    /// Tasks per state.
    pub counts: BTreeMap<String, i64>,
    /// Milliseconds from submission to the end (or to now).
    pub elapsed_ms: i64,
}

/// A job: status, counts per task state, timings.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    let store = state.engine.store();
    let job = store
        .job(id)
        .await?
        .ok_or(ApiError::NotFound(format!("job {id}")))?;
    let counts = store.task_counts(id).await?;
    let elapsed_ms = job.finished_at.unwrap_or_else(now_ms) - job.created_at;
    Ok(Json(JobView {
        job: serde_json::to_value(&job).unwrap_or_default(),
        counts,
        elapsed_ms,
    }))
}

/// Cancels a running job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = i64, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    state.engine.cancel(id).await?;
    get_job(State(state), Path(id)).await
}

/// Paging of task lists.
#[derive(Deserialize, IntoParams)]
pub struct Page {
    /// Page size (default 1000, at most 10000).
    pub limit: Option<i64>,
    /// Tasks to skip.
    pub offset: Option<i64>,
}

/// The tasks of a job, in order.
#[utoipa::path(get, path = "/v1/jobs/{id}/tasks", params(("id" = i64, Path), Page),
    responses((status = 200, body = Vec<TaskRow>), (status = 404, body = ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<TaskRow>>, ApiError> {
    let store = state.engine.store();
    store
        .job(id)
        .await?
        .ok_or(ApiError::NotFound(format!("job {id}")))?;
    let limit = page.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        store
            .tasks(id, limit, page.offset.unwrap_or(0).max(0))
            .await?,
    ))
}

/// A task with its attempts.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    /// The task.
    pub task: TaskRow,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptRow>,
}

/// A task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<TaskView>, ApiError> {
    let store = state.engine.store();
    let task = store
        .task(id)
        .await?
        .ok_or(ApiError::NotFound(format!("task {id}")))?;
    let attempts = store.attempts(id).await?;
    Ok(Json(TaskView { task, attempts }))
}

async fn output_bytes(state: &AppState, id: i64) -> Result<Option<Vec<u8>>, ApiError> {
    let store = state.engine.store();
    match store.task_output(id).await? {
        None => Err(ApiError::NotFound(format!("task {id}"))),
        Some((Some(bytes), _)) => Ok(Some(bytes)),
        Some((None, Some(hash))) => Ok(Some(
            state
                .engine
                .blobs()
                .get(&hash)
                .await
                .map_err(|e| EngineError::Blob(e.to_string()))?
                .ok_or_else(|| EngineError::Blob(format!("output blob {hash} is missing")))?,
        )),
        Some((None, None)) => Ok(None),
    }
}

/// A task's output bytes (404 while it has none).
#[utoipa::path(get, path = "/v1/tasks/{id}/output", params(("id" = i64, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 404, body = ErrorBody)))]
pub async fn task_output(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    match output_bytes(&state, id).await? {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError::NotFound(format!(
            "output of task {id} (it has not succeeded)"
        ))),
    }
}

/// A task's logs, every attempt in order, each under a header line.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/plain"), (status = 404, body = ErrorBody)))]
pub async fn task_logs(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let store = state.engine.store();
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
                attempt.state,
                attempt
                    .reason
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default()
            )
            .as_bytes(),
        );
        text.extend_from_slice(&attempt.log);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
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
    /// Parameters.
    #[schema(value_type = Object)]
    pub params: Option<serde_json::Value>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Grants.
    #[serde(default)]
    pub grants: GrantsSection,
    /// Wait for the output (default true).
    pub wait: Option<bool>,
    /// How long to wait before answering 202, e.g. `30s`.
    pub wait_timeout: Option<String>,
}

/// Runs a call and returns its output (200, the bytes), its failure (422,
/// with the reason as `code`), or `202` with the job id when asked not to
/// wait or when it outlasts the wait.
#[utoipa::path(post, path = "/v1/run", request_body = RunRequest,
    responses((status = 200, content_type = "application/octet-stream"), (status = 202, body = JobCreated),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: RunRequest = parse_json(&body)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let module = match (&request.module, &request.module_base64) {
        (Some(reference), None) => reference.clone(),
        (None, Some(encoded)) => {
            let bytes = b64
                .decode(encoded)
                .map_err(|e| ApiError::BadRequest(format!("module_base64: {e}")))?;
            format!("sha256:{}", state.engine.upload_module(&bytes).await?.hash)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of module or module_base64".into(),
            ));
        }
    };
    let input = match (&request.input, &request.input_base64) {
        (Some(text), None) => Some(text.as_bytes().to_vec()),
        (None, Some(encoded)) => Some(
            b64.decode(encoded)
                .map_err(|e| ApiError::BadRequest(format!("input_base64: {e}")))?,
        ),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "give at most one of input or input_base64".into(),
            ));
        }
    };
    let input = match input {
        Some(bytes) => Some(format!(
            "sha256:{}",
            state.engine.upload_input(&bytes).await?
        )),
        None => None,
    };
    let wait = match &request.wait_timeout {
        None => DEFAULT_RUN_WAIT,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| ApiError::BadRequest(format!("wait_timeout: {e}")))?,
    }
    .min(state.config.max_run_wait);
    let job = JobFile {
        name: "run".into(),
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
    let id = state.engine.submit(&job).await?;
    let accepted = || (StatusCode::ACCEPTED, Json(JobCreated { id })).into_response();
    if request.wait == Some(false) {
        return Ok(accepted());
    }
    let finished = state
        .engine
        .wait(id, wait.max(Duration::from_millis(1)))
        .await?;
    if finished.status == "running" {
        return Ok(accepted());
    }
    let store = state.engine.store();
    let task = store
        .tasks(id, 1, 0)
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound(format!("task of job {id}")))?;
    if task.state != "succeeded" {
        return Ok(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            task.reason.as_deref().unwrap_or("failed"),
            task.error.unwrap_or_else(|| format!("task {}", task.state)),
        ));
    }
    let bytes = output_bytes(&state, task.id).await?.unwrap_or_default();
    let mut response =
        ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-sandmill-job", value);
    }
    Ok(response)
}

/// A worker as `GET /v1/workers` shows it.
#[derive(Serialize, ToSchema)]
pub struct WorkerView {
    /// Its name, stable across restarts.
    pub id: String,
    /// `live`, `draining` or `lost` (not heard from for a while).
    pub status: String,
    /// What it offers.
    pub labels: BTreeMap<String, String>,
    /// Tasks it runs at once.
    pub capacity: usize,
    /// Tasks it is running now.
    pub running: Vec<i64>,
    /// Tasks it has finished since it started.
    pub finished: u64,
    /// Its sandmill version.
    pub version: String,
    /// When it started (ms).
    pub started_at: i64,
    /// Its last heartbeat (ms).
    pub last_seen: i64,
}

/// The worker registry: every worker that has a registry entry, live or
/// lost. A worker that leaves on purpose (drained) has none.
#[utoipa::path(get, path = "/v1/workers", responses((status = 200, body = Vec<WorkerView>), (status = 503, body = ErrorBody)))]
pub async fn list_workers(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let now = now_ms();
    let workers = state.engine.workers().await?;
    Ok(Json(
        workers
            .into_iter()
            .map(|w| WorkerView {
                status: if w.is_lost(now) {
                    "lost"
                } else if w.draining {
                    "draining"
                } else {
                    "live"
                }
                .to_owned(),
                id: w.id,
                labels: w.labels.0,
                capacity: w.capacity,
                running: w.running,
                finished: w.finished,
                version: w.version,
                started_at: w.started_at,
                last_seen: w.last_seen,
            })
            .collect(),
    ))
}
