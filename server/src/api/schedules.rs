//! Schedules: a job file with `schedule` (cron, with seconds) or `every`
//! becomes a new job each time it fires.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{Page, PageQuery, duration, time};
use super::{ApiPath, ApiQuery, AppState, RawBody};
use crate::jobfile::{self, JobFile, Overlap};
use crate::store::ScheduleRow;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", post(create_schedule).get(list_schedules))
        .route(
            "/v1/schedules/{name}",
            get(get_schedule).delete(delete_schedule),
        )
        .route("/v1/schedules/{name}/pause", post(pause_schedule))
        .route("/v1/schedules/{name}/resume", post(resume_schedule))
}

/// A schedule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// Its name (the job file's).
    pub name: String,
    /// Its cron expression (seconds first, UTC), if it has one.
    pub schedule: Option<String>,
    /// Its interval, if it has one.
    pub every: Option<String>,
    /// What a firing does while the previous job runs.
    pub overlap: Overlap,
    /// Whether it is paused.
    pub paused: bool,
    /// Its next firing (`null` while paused).
    #[schema(format = DateTime)]
    pub next_at: Option<String>,
    /// Whether a firing waits for the previous job to end (`queue`).
    pub queued: bool,
    /// Jobs it submitted.
    pub fired: i64,
    /// Firings skipped because the previous job still ran (`skip`).
    pub skipped: i64,
    /// Its last firing.
    #[schema(format = DateTime)]
    pub last_fired_at: Option<String>,
    /// The last job it submitted.
    pub last_job_id: Option<i64>,
    /// Creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last change.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The job each firing submits (`env` values hidden).
    pub job: JobFile,
    /// The tenant it belongs to (and the jobs it submits).
    pub tenant: String,
}

impl From<ScheduleRow> for ScheduleView {
    fn from(row: ScheduleRow) -> Self {
        ScheduleView {
            every: row.every_ms.map(|ms| {
                duration(std::time::Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                ))
            }),
            schedule: row.cron,
            overlap: Overlap::parse(&row.overlap).unwrap_or_default(),
            paused: row.paused == 1,
            next_at: (row.paused == 0).then(|| time(row.next_at)),
            queued: row.queued == 1,
            fired: row.fired,
            skipped: row.skipped,
            last_fired_at: row.last_fired_at.map(time),
            last_job_id: row.last_job_id,
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
            job: row.job.0.without_secrets(),
            tenant: row.tenant,
            name: row.name,
        }
    }
}

/// Creates a schedule from a job file with `schedule` or `every` (and
/// `overlap`): its job is checked as a submission would be.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = JobFile,
    responses((status = 201, description = "created", body = ScheduleView),
        (status = 400, description = "a field is wrong (named in `field`)", body = ErrorBody),
        (status = 404, description = "no such module, spec or input", body = ErrorBody),
        (status = 409, description = "a schedule of that name exists", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody)))]
pub async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let file = jobfile::from_json(&body)?;
    let row = state
        .scheduler
        .create_schedule(&caller.owner(), &file)
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Schedules, by name.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(PageQuery),
    responses((status = 200, description = "a page of schedules", body = Page<ScheduleView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody)))]
pub async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<ScheduleView>>, ApiError> {
    let (limit, after) = query.page::<String>()?;
    let rows = state
        .scheduler
        .store()
        .schedules(caller.scope(), after.as_deref(), limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |row| row.name.clone()).map(ScheduleView::from),
    ))
}

/// A schedule.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, description = "the schedule", body = ScheduleView),
        (status = 404, description = "no such schedule", body = ErrorBody)))]
pub async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = state.scheduler.schedule(&caller.owner(), &name).await?;
    Ok(Json(row.into()))
}

/// Deletes a schedule: it fires no more; the jobs it submitted stay.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 204, description = "deleted"),
        (status = 404, description = "no such schedule", body = ErrorBody)))]
pub async fn delete_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .scheduler
        .delete_schedule(&caller.owner(), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a schedule: it fires no more until resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, description = "paused", body = ScheduleView),
        (status = 404, description = "no such schedule", body = ErrorBody)))]
pub async fn pause_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(
        state
            .scheduler
            .pause_schedule(&caller.owner(), &name, true)
            .await?
            .into(),
    ))
}

/// Resumes a schedule: it fires next at its next time after now (what it
/// missed while paused is not made up).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, description = "resumed", body = ScheduleView),
        (status = 404, description = "no such schedule", body = ErrorBody)))]
pub async fn resume_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(
        state
            .scheduler
            .pause_schedule(&caller.owner(), &name, false)
            .await?
            .into(),
    ))
}
