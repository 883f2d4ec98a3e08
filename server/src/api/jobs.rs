//! Jobs: submitted as job files (JSON), read with their task counts,
//! listed a page at a time, cancelled, retried, resubmitted; their tasks,
//! a page at a time; a pipeline's graph.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{
    EdgeView, GraphView, JobCreated, JobView, Page, ResubmitRequest, RetryView, StepView, TaskView,
    decode_cursor, page_size,
};
use super::{ApiPath, ApiQuery, AppState, RawBody};
use crate::jobfile::{self, JobFile};
use crate::model::{JobKind, JobStatus, TaskState};
use crate::store::{JobFilter, JobRow, JobSort, SortValue, Store};
use sandmill_runtime::labels::Labels;

/// Most steps a graph shows (a pipeline has at most as many steps as a
/// job may have tasks; past this, the graph is cut).
const MAX_GRAPH_STEPS: i64 = 10_000;

/// A job's view: its counts, phases, or (a pipeline's) its steps' sums.
async fn job_view(store: &Store, job: &JobRow) -> Result<JobView, ApiError> {
    let counts = store.counts(job).await?;
    let phases = store.phases(job).await?;
    let sums = if job.kind.0 == JobKind::Pipeline {
        Some(store.pipeline_counts(job.id).await?)
    } else {
        None
    };
    Ok(JobView::new(job, counts)
        .with_phases(job, phases)
        .with_steps(sums))
}

/// A job `caller` may see: another tenant's answers 404, as a missing
/// one does.
pub(super) async fn visible_job(
    store: &Store,
    caller: &Caller,
    id: i64,
) -> Result<JobRow, ApiError> {
    store
        .job(id)
        .await?
        .filter(|job| caller.sees(&job.tenant))
        .ok_or(ApiError::NotFound(format!("job {id}")))
}

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/resubmit", post(resubmit_job))
        .route("/v1/jobs/{id}/definition", get(job_definition))
        .route("/v1/jobs/{id}/tasks", get(list_tasks))
        .route("/v1/jobs/{id}/graph", get(job_graph))
        .route("/v1/jobs/{id}/failures", get(job_failures))
}

/// Submits a job (a job file as JSON; modules and inputs by `sha256:` or
/// spec). Accepted once it is durable; its tasks run as the dispatch
/// window has room.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobFile,
    responses((status = 201, description = "accepted", body = JobCreated),
        (status = 400, description = "a field is wrong (named in `field`)", body = ErrorBody),
        (status = 404, description = "no such module, spec or input", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody),
        (status = 429, description = "the tenant is over a quota (`over_quota`; the message says which)", body = ErrorBody)))]
pub async fn submit_job(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let job = jobfile::from_json(&body)?;
    let id = state.scheduler.submit(&caller.owner(), &job).await?;
    Ok((StatusCode::CREATED, Json(JobCreated { id })))
}

/// Filters, order and paging of the job list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs whose name holds this text (any case).
    pub name: Option<String>,
    /// Only jobs with all these labels: `k=v,k2=v2`.
    pub label: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    pub to: Option<String>,
    /// Only the jobs this schedule submitted.
    pub schedule: Option<String>,
    /// `false`: leave out the jobs schedules submitted (list one
    /// schedule's with `schedule`); `true`: only those.
    pub scheduled: Option<bool>,
    /// The column to sort by (then by id): `updated` (the default),
    /// `created`, `id`, `name`, `status`, `tasks` or `priority`.
    #[param(value_type = Option<String>, pattern = "^(updated|created|id|name|status|tasks|priority)$")]
    pub sort: Option<JobSort>,
    /// `desc` (the default) or `asc`.
    #[param(value_type = Option<String>, pattern = "^(asc|desc)$")]
    pub order: Option<SortOrder>,
    /// Page size (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Where to continue: a `next_cursor` from the previous page (of the
    /// same order).
    pub cursor: Option<String>,
}

/// Which way a list goes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// Jobs (not a pipeline's steps), most recently updated first, or as
/// `sort` and `order` say; filtered by status, name, labels, creation
/// time and the schedule that submitted them.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, description = "a page of jobs", body = Page<JobView>),
        (status = 400, description = "a bad filter, order, cursor or limit", body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<JobQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let limit = page_size(query.limit, 50, 1000)?;
    let labels = match query.label.as_deref() {
        Some(text) => Labels::parse(text)
            .map_err(|e| ApiError::bad_field("label", e.to_string()))?
            .0
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    let filter = JobFilter {
        status: query.status,
        name: query.name.filter(|n| !n.is_empty()),
        labels,
        created_from: query
            .from
            .as_deref()
            .map(|t| crate::scheduler::instant("from", t))
            .transpose()?,
        created_to: query
            .to
            .as_deref()
            .map(|t| crate::scheduler::instant("to", t))
            .transpose()?,
        schedule: query.schedule.filter(|s| !s.is_empty()),
        scheduled: query.scheduled,
        sort: query.sort.unwrap_or_default(),
        descending: query.order != Some(SortOrder::Asc),
    };
    let after = query
        .cursor
        .as_deref()
        .map(decode_cursor::<(JobSort, SortValue, i64)>)
        .transpose()?
        .map(|(sort, value, id)| {
            if sort == filter.sort {
                Ok((value, id))
            } else {
                Err(ApiError::bad_field(
                    "cursor",
                    "comes from a list in another order",
                ))
            }
        })
        .transpose()?;
    let store = state.scheduler.store();
    let rows = store
        .jobs(caller.scope(), &filter, after, limit as i64 + 1)
        .await?;
    let page = Page::of(rows, limit, |j| {
        (filter.sort, filter.sort.value_of(j), j.id)
    });
    let mut items = Vec::with_capacity(page.items.len());
    for job in &page.items {
        items.push(job_view(store, job).await?);
    }
    Ok(Json(Page {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// A job: status, tasks per state, timings.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "the job", body = JobView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<JobView>, ApiError> {
    let store = state.scheduler.store();
    let job = visible_job(store, &caller, id).await?;
    Ok(Json(job_view(store, &job).await?))
}

/// Failed tasks that share a reason.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureGroup {
    /// Why they failed (`unknown` when no reason was recorded).
    #[schema(example = "timeout")]
    pub reason: String,
    /// How many.
    pub count: i64,
    /// One of them (the first).
    pub sample_task: i64,
    /// Its error, cut to 512 bytes.
    pub sample_error: Option<String>,
}

/// A job's failed tasks (a pipeline's: its steps'), grouped by reason,
/// the largest group first, each with a sample task to follow. One page:
/// reasons are few.
#[utoipa::path(get, path = "/v1/jobs/{id}/failures", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "failures by reason", body = Page<FailureGroup>),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn job_failures(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Page<FailureGroup>>, ApiError> {
    let store = state.scheduler.store();
    visible_job(store, &caller, id).await?;
    let items = store
        .failures_by_reason(id)
        .await?
        .into_iter()
        .map(|(reason, count, sample_task, error)| FailureGroup {
            reason: reason.unwrap_or_else(|| "unknown".to_owned()),
            count,
            sample_task,
            sample_error: error.map(|mut e| {
                if e.len() > 512 {
                    let mut cut = 512;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
                e
            }),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// A pipeline's graph: each step with its state and task counts, and
/// which step reads which. A job without steps is a one-step graph.
#[utoipa::path(get, path = "/v1/jobs/{id}/graph", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "the graph", body = GraphView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn job_graph(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<GraphView>, ApiError> {
    let store = state.scheduler.store();
    let job = visible_job(store, &caller, id).await?;
    let (steps, edges) = if job.kind.0 == JobKind::Pipeline {
        (
            store.steps_of(id, MAX_GRAPH_STEPS).await?,
            store.edges_of(id).await?,
        )
    } else {
        (vec![job.clone()], Vec::new())
    };
    let names: std::collections::HashMap<i64, String> = steps
        .iter()
        .map(|s| (s.id, s.step.clone().unwrap_or_else(|| s.name.clone())))
        .collect();
    let mut views = Vec::with_capacity(steps.len());
    for step in &steps {
        let view = job_view(store, step).await?;
        views.push(StepView {
            name: names.get(&step.id).cloned().unwrap_or_default(),
            job_id: step.id,
            status: step.status(),
            kind: step.task_kind.0,
            module: format!("sha256:{}", step.module_hash),
            planned: step.planned == 1 || step.maps.is_some(),
            tasks: view.tasks,
        });
    }
    let edges = edges
        .into_iter()
        .filter_map(|(reader, read)| {
            Some(EdgeView {
                from: names.get(&read)?.clone(),
                to: names.get(&reader)?.clone(),
            })
        })
        .collect();
    Ok(Json(GraphView {
        job_id: id,
        status: job.status(),
        steps: views,
        edges,
    }))
}

/// Cancels a running job: its queued and running tasks, and those not
/// dispatched yet.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "cancelled", body = JobView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "it already ended", body = ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<JobView>, ApiError> {
    visible_job(state.scheduler.store(), &caller, id).await?;
    state.scheduler.cancel(id).await?;
    get_job(State(state), caller, ApiPath(id)).await
}

/// Deletes an ended job: its pipeline's steps, tasks, attempts, and the
/// outputs and logs kept with them. Jobs that point to it (resubmitted
/// from it, restarts of its tasks) forget it. `--retain` does the same to
/// jobs that ended long enough ago.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 204, description = "deleted"),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "it is running (cancel it first), or a pipeline's step (delete the pipeline)", body = ErrorBody)))]
pub async fn delete_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    visible_job(state.scheduler.store(), &caller, id).await?;
    state.scheduler.delete_job(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a job's failed tasks again (each a new task linked to the one it
/// replaces) and, in a pipeline, plans its blocked steps again. The job
/// reopens if it had ended.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "what runs again", body = RetryView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "a map-reduce job", body = ErrorBody)))]
pub async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<RetryView>, ApiError> {
    visible_job(state.scheduler.store(), &caller, id).await?;
    let retried = state.scheduler.retry_job(id).await?;
    Ok(Json(RetryView {
        job_id: id,
        tasks: retried.tasks,
        steps: retried.steps.len() as i64,
    }))
}

/// Runs an ended task or sweep job's tasks again (with `failed`, those
/// that did not succeed) as a new job, with other limits; the new job's
/// `resubmit_of` names the old. Each task keeps its parameters, inputs and
/// seed.
#[utoipa::path(post, path = "/v1/jobs/{id}/resubmit", tag = "jobs", params(("id" = i64, Path)),
    request_body = ResubmitRequest,
    responses((status = 201, description = "the new job", body = JobCreated),
        (status = 400, description = "the id or a limit is wrong", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "it is running, is no task or sweep, or has nothing to resubmit", body = ErrorBody),
        (status = 429, description = "the tenant is over a quota", body = ErrorBody)))]
pub async fn resubmit_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let request: ResubmitRequest = super::parse_json_or_default(&body)?;
    visible_job(state.scheduler.store(), &caller, id).await?;
    let id = state
        .scheduler
        .resubmit(id, request.failed, &request.limits)
        .await?;
    Ok((StatusCode::CREATED, Json(JobCreated { id })))
}

/// The job file a job was made from, as it was stored: modules and
/// inputs by `sha256:`, a sweep's rows and a map-reduce job's splits left
/// out (they are its tasks').
#[utoipa::path(get, path = "/v1/jobs/{id}/definition", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "the job file", body = JobFile),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn job_definition(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    visible_job(state.scheduler.store(), &caller, id).await?;
    let definition = state
        .scheduler
        .store()
        .job_definition(id)
        .await?
        .ok_or(ApiError::NotFound(format!("job {id}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], definition).into_response())
}

/// Filters and paging of a job's tasks.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Page size (default 1000, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Where to continue: a `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// The tasks of a job, in order. Tasks exist once dispatched: a large
/// sweep's later tasks appear as the window reaches them.
#[utoipa::path(get, path = "/v1/jobs/{id}/tasks", tag = "jobs", params(("id" = i64, Path), TaskQuery),
    responses((status = 200, description = "a page of tasks", body = Page<TaskView>),
        (status = 400, description = "a bad filter, cursor or limit", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<Page<TaskView>>, ApiError> {
    let limit = page_size(query.limit, 1000, 10_000)?;
    let after = query
        .cursor
        .as_deref()
        .map(decode_cursor::<i64>)
        .transpose()?;
    let store = state.scheduler.store();
    visible_job(store, &caller, id).await?;
    let rows = store
        .tasks(id, query.state, after, limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |t| t.seq).map(|t| TaskView::new(&t)),
    ))
}
