//! The worker registry, a page at a time.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::error::{ApiError, ErrorBody};
use super::views::{Page, PageQuery, WorkerStatus, WorkerView, time};
use super::{ApiQuery, AppState};
use crate::store::now_ms;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/workers", get(list_workers))
}

/// The worker registry, by id: every worker with a registry entry, live or
/// lost. A worker that leaves on purpose (drained) has none.
#[utoipa::path(get, path = "/v1/workers", tag = "workers", params(PageQuery),
    responses((status = 200, description = "a page of workers", body = Page<WorkerView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody),
        (status = 503, description = "the broker is unavailable", body = ErrorBody)))]
pub async fn list_workers(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<WorkerView>>, ApiError> {
    let (limit, after) = query.page::<String>()?;
    let now = now_ms();
    let workers = state.scheduler.workers(after.as_deref(), limit + 1).await?;
    Ok(Json(Page::of(workers, limit, |w| w.id.clone()).map(|w| {
        WorkerView {
            status: if w.is_lost(now) {
                WorkerStatus::Lost
            } else if w.draining {
                WorkerStatus::Draining
            } else {
                WorkerStatus::Live
            },
            id: w.id,
            labels: w.labels.0,
            capacity: w.capacity,
            running: w.running,
            finished: w.finished,
            version: w.version,
            started_at: time(w.started_at),
            last_seen: time(w.last_seen),
        }
    })))
}
