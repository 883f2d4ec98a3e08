//! Specs: a module with its kind, default limits, grants and labels,
//! under a name and an immutable version.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{Page, SpecView, decode_cursor, page_size};
use super::{ApiPath, ApiQuery, AppState, RawBody, parse_json};
use crate::jobfile::{self, GrantsSection, JobFile, LimitsSection};
use crate::scheduler::SchedulerError;
use crate::store::NewSpec;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/specs", post(put_spec).get(list_specs))
        .route("/v1/specs/{name}", get(get_spec))
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

/// Registers a spec version (again with the same content: the same
/// answer).
#[utoipa::path(post, path = "/v1/specs", tag = "specs", request_body = SpecRequest,
    responses((status = 201, description = "registered", body = SpecView),
        (status = 400, description = "a field is wrong", body = ErrorBody),
        (status = 404, description = "no such module", body = ErrorBody),
        (status = 409, description = "the version exists with other content", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody)))]
pub async fn put_spec(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<SpecView>), ApiError> {
    let request: SpecRequest = parse_json(&body)?;
    for (field, value) in [("name", &request.name), ("version", &request.version)] {
        if value.is_empty()
            || value.len() > jobfile::MAX_NAME_BYTES
            || value.contains(['@', '/'])
            || value.chars().any(char::is_control)
        {
            return Err(ApiError::bad_field(
                field,
                "1 to 256 characters, without `@`, `/` or control characters",
            ));
        }
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
    // Refused now rather than at each job that would use it.
    state.scheduler.police(&mut grants.clone())?;
    let labels = as_job.labels()?;
    let hash = request.module.strip_prefix("sha256:").ok_or_else(|| {
        ApiError::bad_field("module", "expected sha256:<hex> of an uploaded module")
    })?;
    let module = if state.scheduler.may_name(&caller.owner(), hash).await? {
        state.scheduler.module(hash).await?
    } else {
        None
    }
    .ok_or_else(|| ApiError::NotFound(format!("module {}", request.module)))?;
    if !module.exports.has(kind) {
        return Err(ApiError::bad_field(
            "kind",
            format!(
                "the module exports no {} function (it has: {})",
                kind.name(),
                module.exports.list()
            ),
        ));
    }
    let spec = NewSpec {
        tenant: caller.tenant.clone(),
        name: request.name,
        version: request.version,
        module_hash: hash.to_owned(),
        kind,
        limits,
        grants,
        labels,
    };
    let store = state.scheduler.store();
    if !store.put_spec(&spec).await? {
        return Err(SchedulerError::Conflict(format!(
            "spec {}@{} exists with other content; versions are immutable",
            spec.name, spec.version
        ))
        .into());
    }
    let stored = store
        .spec(&spec.tenant, &spec.name, Some(&spec.version))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("spec {}@{}", spec.name, spec.version)))?;
    Ok((StatusCode::CREATED, Json(SpecView::new(&stored))))
}

/// Paging of spec lists.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SpecQuery {
    /// Page size (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Where to continue: a `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

async fn page_of_specs(
    state: &AppState,
    tenant: Option<&str>,
    name: Option<&str>,
    query: &SpecQuery,
) -> Result<Page<SpecView>, ApiError> {
    let limit = page_size(query.limit, 100, 1000)?;
    let after = query
        .cursor
        .as_deref()
        .map(decode_cursor::<(String, String, i64, String)>)
        .transpose()?;
    let rows = state
        .scheduler
        .store()
        .specs(tenant, name, after, limit as i64 + 1)
        .await?;
    Ok(Page::of(rows, limit, |s| {
        (
            s.name.clone(),
            s.tenant.clone(),
            s.created_at,
            s.version.clone(),
        )
    })
    .map(|s| SpecView::new(&s)))
}

/// Every spec version of the caller's tenant (an admin: of every
/// tenant), by name, newest first within a name.
#[utoipa::path(get, path = "/v1/specs", tag = "specs", params(SpecQuery),
    responses((status = 200, description = "a page of specs", body = Page<SpecView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody)))]
pub async fn list_specs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SpecQuery>,
) -> Result<Json<Page<SpecView>>, ApiError> {
    Ok(Json(
        page_of_specs(&state, caller.scope(), None, &query).await?,
    ))
}

/// The versions of one of the caller's tenant's specs, newest first
/// (spec names are per tenant).
#[utoipa::path(get, path = "/v1/specs/{name}", tag = "specs", params(("name" = String, Path), SpecQuery),
    responses((status = 200, description = "a page of its versions", body = Page<SpecView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody),
        (status = 404, description = "no such spec", body = ErrorBody)))]
pub async fn get_spec(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<SpecQuery>,
) -> Result<Json<Page<SpecView>>, ApiError> {
    let page = page_of_specs(&state, Some(&caller.tenant), Some(&name), &query).await?;
    if page.items.is_empty() && query.cursor.is_none() {
        return Err(ApiError::NotFound(format!("spec {name}")));
    }
    Ok(Json(page))
}
