//! Subscriptions: a function on a NATS subject; each message becomes a
//! task of the subscription's job.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{Page, PageQuery, TaskView, duration, time};
use super::{ApiPath, ApiQuery, AppState, RawBody};
use crate::store::SubscriptionRow;
use crate::subscription::{self, SubscriptionFile};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/v1/subscriptions/{name}",
            get(get_subscription).delete(delete_subscription),
        )
        .route("/v1/subscriptions/{name}/dead-letters", get(dead_letters))
}

/// How long, or how many, finished tasks a subscription keeps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeepView {
    /// Those that finished within this long, or
    pub within: Option<String>,
    /// the newest this many.
    pub count: Option<i64>,
}

/// A subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    /// Its name.
    pub name: String,
    /// 1, then one more each time it is replaced.
    pub version: i64,
    /// The subject it captures.
    pub subject: String,
    /// Durable (a JetStream stream captures the subject) or core NATS.
    pub queue: bool,
    /// Messages handled at once.
    pub max_in_flight: i64,
    /// Retention of its finished tasks.
    pub keep: KeepView,
    /// The job its messages' tasks belong to (`GET /v1/jobs/{id}` counts
    /// them; `/v1/jobs/{id}/tasks` lists them).
    pub job_id: i64,
    /// Where each result is published.
    pub results_subject: String,
    /// The JetStream stream of a durable one.
    pub stream: Option<String>,
    /// When version 1 was created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When this version was.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The file it was made from (modules as `sha256:` hashes, `env`
    /// values hidden).
    pub file: SubscriptionFile,
    /// The tenant it belongs to (and its job).
    pub tenant: String,
}

impl From<SubscriptionRow> for SubscriptionView {
    fn from(row: SubscriptionRow) -> Self {
        SubscriptionView {
            version: row.version,
            subject: row.subject,
            queue: row.queue == 1,
            max_in_flight: row.max_in_flight,
            keep: KeepView {
                within: row.keep_ms.map(|ms| {
                    duration(std::time::Duration::from_millis(
                        u64::try_from(ms).unwrap_or(0),
                    ))
                }),
                count: row.keep_count,
            },
            job_id: row.job_id,
            results_subject: crate::scheduler::results_subject(&row.name),
            stream: (row.queue == 1).then(|| crate::scheduler::stream_name(&row.name)),
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
            file: {
                let mut file = row.definition.0;
                file.grants.hide_secrets();
                file
            },
            tenant: row.tenant,
            name: row.name,
        }
    }
}

/// Creates a subscription, or replaces the one of its name (its version
/// goes up; new messages' tasks go to a new job). Needs NATS.
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionFile,
    responses((status = 201, description = "created or replaced", body = SubscriptionView),
        (status = 400, description = "a field is wrong (named in `field`)", body = ErrorBody),
        (status = 404, description = "no such module or spec", body = ErrorBody),
        (status = 409, description = "this server has no NATS, the name is another tenant's, or the subject overlaps another stream's", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody)))]
pub async fn create_subscription(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let file = subscription::from_json(&body)?;
    let row = state
        .scheduler
        .create_subscription(&caller.owner(), &file)
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Subscriptions, by name.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", params(PageQuery),
    responses((status = 200, description = "a page of subscriptions", body = Page<SubscriptionView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<SubscriptionView>>, ApiError> {
    let (limit, after) = query.page::<String>()?;
    let rows = state
        .scheduler
        .store()
        .subscriptions(caller.scope(), after.as_deref(), limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |row| row.name.clone()).map(SubscriptionView::from),
    ))
}

/// A subscription.
#[utoipa::path(get, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    responses((status = 200, description = "the subscription", body = SubscriptionView),
        (status = 404, description = "no such subscription", body = ErrorBody)))]
pub async fn get_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let row = state.scheduler.subscription(&caller.owner(), &name).await?;
    Ok(Json(row.into()))
}

/// Deletes a subscription: no new message becomes a task; its job ends
/// and its tasks stay readable. A durable one's stream is deleted, with
/// the messages waiting in it.
#[utoipa::path(delete, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    responses((status = 204, description = "deleted"),
        (status = 404, description = "no such subscription", body = ErrorBody)))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .scheduler
        .delete_subscription(&caller.owner(), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A subscription's dead letters: the tasks of messages that failed for
/// good, with their errors, by place (a durable message's place is its
/// stream sequence). Each task's input is the message's payload.
#[utoipa::path(get, path = "/v1/subscriptions/{name}/dead-letters", tag = "subscriptions",
    params(("name" = String, Path), PageQuery),
    responses((status = 200, description = "a page of failed tasks", body = Page<TaskView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody),
        (status = 404, description = "no such subscription", body = ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<TaskView>>, ApiError> {
    let (limit, after) = query.page::<i64>()?;
    let (_, rows) = state
        .scheduler
        .dead_letters(&caller.owner(), &name, after, limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |t| t.seq).map(|t| TaskView::new(&t)),
    ))
}
