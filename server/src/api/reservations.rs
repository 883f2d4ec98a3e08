//! Reservations: a tenant books worker slots for a time window; while it
//! holds, that many of its tasks go to free slots before anyone else's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{Page, PageQuery, time};
use super::{ApiPath, ApiQuery, AppState, RawBody, parse_json};
use crate::store::{ReservationRow, now_ms};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/reservations",
            post(create_reservation).get(list_reservations),
        )
        .route(
            "/v1/reservations/{id}",
            get(get_reservation).delete(delete_reservation),
        )
}

/// A booking to make.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// Worker slots (at least 1, at most the server's `--reservable-slots`).
    pub slots: i64,
    /// From (RFC 3339, or `now`; the default). A time past is now.
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// Until (RFC 3339): after `from`, within the server's
    /// `--max-reservation-ahead` of now.
    #[schema(format = DateTime)]
    pub until: String,
    /// The tenant it is for (an admin's token only; default the token's).
    pub tenant: Option<String>,
}

/// A reservation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    /// Its id.
    pub id: i64,
    /// The tenant whose tasks go first.
    pub tenant: String,
    /// Worker slots reserved.
    pub slots: i64,
    /// From (inclusive).
    #[schema(format = DateTime)]
    pub from: String,
    /// Until (exclusive).
    #[schema(format = DateTime)]
    pub until: String,
    /// Whether it holds now.
    pub active: bool,
    /// When it was made.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<ReservationRow> for ReservationView {
    fn from(row: ReservationRow) -> Self {
        let now = now_ms();
        ReservationView {
            id: row.id,
            active: row.starts_at <= now && now < row.ends_at,
            from: time(row.starts_at),
            until: time(row.ends_at),
            created_at: time(row.created_at),
            slots: row.slots,
            tenant: row.tenant,
        }
    }
}

/// Books worker slots for a window.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", request_body = ReservationRequest,
    responses((status = 201, description = "booked", body = ReservationView),
        (status = 400, description = "a field is wrong (named in `field`)", body = ErrorBody),
        (status = 409, description = "the slots are booked already: the server's `--reservable-slots` would be passed", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody),
        (status = 429, description = "the tenant holds `--max-reservations` not ended", body = ErrorBody)))]
pub async fn create_reservation(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<ReservationView>), ApiError> {
    let request: ReservationRequest = parse_json(&body)?;
    let row = state
        .scheduler
        .reserve(
            &caller.owner(),
            request.tenant.as_deref(),
            request.slots,
            request.from.as_deref().unwrap_or("now"),
            &request.until,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Reservations (the token's tenant's; an admin's, everyone's), by id;
/// ended ones until retention removes them.
#[utoipa::path(get, path = "/v1/reservations", tag = "reservations", params(PageQuery),
    responses((status = 200, description = "a page of reservations", body = Page<ReservationView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody)))]
pub async fn list_reservations(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<ReservationView>>, ApiError> {
    let (limit, after) = query.page::<i64>()?;
    let rows = state
        .scheduler
        .store()
        .reservations(caller.scope(), after.unwrap_or(0), limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |row| row.id).map(ReservationView::from),
    ))
}

/// A reservation.
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = i64, Path)),
    responses((status = 200, description = "the reservation", body = ReservationView),
        (status = 404, description = "no such reservation", body = ErrorBody)))]
pub async fn get_reservation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ReservationView>, ApiError> {
    Ok(Json(
        state
            .scheduler
            .reservation(&caller.owner(), id)
            .await?
            .into(),
    ))
}

/// Cancels a reservation: from now its tenant's tasks take turns with
/// everyone's.
#[utoipa::path(delete, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = i64, Path)),
    responses((status = 204, description = "cancelled"),
        (status = 404, description = "no such reservation", body = ErrorBody)))]
pub async fn delete_reservation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    state
        .scheduler
        .cancel_reservation(&caller.owner(), id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
