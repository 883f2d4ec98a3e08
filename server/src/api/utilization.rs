//! Utilization over time: busy and free slots, tasks begun and ended, for
//! the fleet and per worker, in buckets.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::views::{Page, decode_cursor, duration, page_size, time};
use super::{ApiQuery, AppState};
use crate::store::{Point, TOTAL, now_ms};

/// Buckets one answer may hold at most.
pub const MAX_POINTS: i64 = 1000;

/// The span asked for by default: the last hour.
const DEFAULT_SPAN: Duration = Duration::from_secs(3600);

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/utilization", get(utilization))
}

/// What span, in what buckets.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UtilizationQuery {
    /// From (RFC 3339, inclusive; default an hour before `to`).
    pub from: Option<String>,
    /// Until (RFC 3339 or `now`, exclusive; default now).
    pub to: Option<String>,
    /// Bucket length, like `1m` or `10s` (default: the span in 60
    /// buckets, at least 1s); at most 1000 buckets.
    pub step: Option<String>,
    /// Workers per page (default 20, at most 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Where the workers' page continues: a `next_cursor` from before.
    pub cursor: Option<String>,
}

/// One bucket: averages of the samples in it, sums of the counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UtilizationPoint {
    /// The bucket's start.
    #[schema(format = DateTime)]
    pub at: String,
    /// Task slots, on average over the bucket.
    pub slots: f64,
    /// Slots running a task, on average.
    pub busy: f64,
    /// Slots idle, on average: `slots - busy`.
    pub free: f64,
    /// Tasks begun in the bucket.
    pub started: i64,
    /// Tasks ended in the bucket.
    pub finished: i64,
}

/// One worker's series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerSeries {
    /// The worker's id.
    pub worker: String,
    /// Its buckets with samples, oldest first.
    pub points: Vec<UtilizationPoint>,
}

/// Utilization from `from` until `to`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UtilizationView {
    /// From (inclusive).
    #[schema(format = DateTime)]
    pub from: String,
    /// Until (exclusive).
    #[schema(format = DateTime)]
    pub to: String,
    /// Bucket length.
    pub step: String,
    /// How often the server samples (`--utilization-every`).
    pub sampled_every: String,
    /// The fleet's buckets with samples, oldest first.
    pub total: Vec<UtilizationPoint>,
    /// A page of the workers with samples in the span, by id.
    pub workers: Page<WorkerSeries>,
}

/// Utilization over time: the fleet's slots (busy and free) and tasks
/// begun and ended, in buckets of `step`, and the same per worker (a page
/// of workers). Samples are kept as long as ended jobs (`--retain`).
#[utoipa::path(get, path = "/v1/utilization", tag = "workers", params(UtilizationQuery),
    responses((status = 200, description = "utilization in buckets", body = UtilizationView),
        (status = 400, description = "a bad time, step, cursor or limit, or more than 1000 buckets", body = ErrorBody)))]
pub async fn utilization(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UtilizationQuery>,
) -> Result<Json<UtilizationView>, ApiError> {
    let to = match query.to.as_deref() {
        Some(text) => crate::scheduler::instant("to", text)?,
        None => now_ms(),
    };
    let from = match query.from.as_deref() {
        Some(text) => crate::scheduler::instant("from", text)?,
        None => to - DEFAULT_SPAN.as_millis() as i64,
    };
    if from >= to {
        return Err(ApiError::bad_field("from", "must be before `to`"));
    }
    let span = to - from;
    let step = match query.step.as_deref() {
        Some(text) => {
            let step = humantime::parse_duration(text.trim()).map_err(|e| {
                ApiError::bad_field("step", format!("`{text}` is not a duration like 1m ({e})"))
            })?;
            if step < Duration::from_secs(1) {
                return Err(ApiError::bad_field("step", "must be at least 1s"));
            }
            i64::try_from(step.as_millis()).unwrap_or(i64::MAX)
        }
        None => ceil_div(ceil_div(span, 60).max(1000), 1000) * 1000,
    };
    if ceil_div(span, step) > MAX_POINTS {
        return Err(ApiError::bad_field(
            "step",
            format!(
                "makes {} buckets of the span, more than {MAX_POINTS}; ask for a longer step or a shorter span",
                ceil_div(span, step)
            ),
        ));
    }
    let limit = page_size(query.limit, 20, 100)?;
    let after = query
        .cursor
        .as_deref()
        .map(decode_cursor::<String>)
        .transpose()?;
    let store = state.scheduler.store();
    let points = |series: Vec<Point>| -> Vec<UtilizationPoint> {
        series
            .into_iter()
            .map(|p| {
                let slots = round(p.slots);
                let busy = round(p.busy);
                UtilizationPoint {
                    at: time(from + p.bucket * step),
                    slots,
                    busy,
                    free: round(slots - busy),
                    started: p.started,
                    finished: p.finished,
                }
            })
            .collect()
    };
    let total = points(store.utilization(TOTAL, from, to, step).await?);
    let ids = store
        .utilization_workers(from, to, after.as_deref(), limit as i64 + 1)
        .await?;
    let mut series = Vec::with_capacity(ids.len().min(limit));
    for id in ids.iter().take(limit) {
        series.push(WorkerSeries {
            points: points(store.utilization(id, from, to, step).await?),
            worker: id.clone(),
        });
    }
    if ids.len() > limit {
        // One more to tell that more follow; [`Page::of`] drops it.
        series.push(WorkerSeries {
            worker: ids[limit].clone(),
            points: Vec::new(),
        });
    }
    Ok(Json(UtilizationView {
        from: time(from),
        to: time(to),
        step: duration(Duration::from_millis(step as u64)),
        sampled_every: duration(state.scheduler.config().utilization_every),
        total,
        workers: Page::of(series, limit, |s| s.worker.clone()),
    }))
}

/// `a / b` rounded up, for positive `a` and `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// To a thousandth: averages of whole numbers need no more.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
