//! Modules (raw WebAssembly components) and inputs (raw bytes): uploaded
//! once, named by `sha256:<hex>` in job files.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::{InputRef, ModuleView, Page, PageQuery};
use super::{ApiPath, ApiQuery, AppState, RawBody};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/modules", post(upload_module).get(list_modules))
        .route("/v1/modules/{hash}", get(get_module))
        .route("/v1/inputs", post(upload_input))
}

/// Uploads a module (raw WebAssembly component). Idempotent; a module that
/// does not load in the sandbox is refused and nothing is stored.
#[utoipa::path(post, path = "/v1/modules", tag = "modules",
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 200, description = "stored (or already known)", body = ModuleView),
        (status = 400, description = "not a module Sandmill can run", body = ErrorBody),
        (status = 413, description = "larger than the body limit", body = ErrorBody),
        (status = 503, description = "no room for the body (--max-body-memory) or no compile turn (--max-compiles) now; try again", body = ErrorBody),
        (status = 507, description = "a blob bucket is at its byte limit (`storage_full`; `serve --blobs-max-bytes`)", body = ErrorBody)))]
pub async fn upload_module(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Json<ModuleView>, ApiError> {
    Ok(Json(ModuleView::new(
        &state.scheduler.upload_module(&caller.tenant, body).await?,
    )))
}

/// The modules the caller's tenant uploaded (an admin: every module),
/// newest first.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", params(PageQuery),
    responses((status = 200, description = "a page of modules", body = Page<ModuleView>),
        (status = 400, description = "a bad cursor or limit", body = ErrorBody)))]
pub async fn list_modules(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<ModuleView>>, ApiError> {
    let (limit, after) = query.page::<(i64, String)>()?;
    let rows = state
        .scheduler
        .store()
        .modules(caller.scope(), after, limit as i64 + 1)
        .await?;
    Ok(Json(
        Page::of(rows, limit, |m| (m.created_at, m.hash.clone())).map(|m| ModuleView::new(&m)),
    ))
}

/// A module, by `sha256:<hex>` or its bare hex.
#[utoipa::path(get, path = "/v1/modules/{hash}", tag = "modules", params(("hash" = String, Path, description = "a sha256, 64 hex digits", pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, description = "the module", body = ModuleView),
        (status = 404, description = "no such module", body = ErrorBody)))]
pub async fn get_module(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(hash): ApiPath<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let hash = hash.strip_prefix("sha256:").unwrap_or(&hash).to_owned();
    if !state.scheduler.may_name(&caller.owner(), &hash).await? {
        return Err(ApiError::NotFound(format!("module {hash}")));
    }
    state
        .scheduler
        .module(&hash)
        .await?
        .map(|m| Json(ModuleView::new(&m)))
        .ok_or(ApiError::NotFound(format!("module {hash}")))
}

/// Uploads an input (raw bytes) for job files to name.
#[utoipa::path(post, path = "/v1/inputs", tag = "modules",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "stored", body = InputRef),
        (status = 413, description = "larger than the body limit", body = ErrorBody),
        (status = 503, description = "no room for the body now (--max-body-memory); try again", body = ErrorBody),
        (status = 507, description = "a blob bucket is at its byte limit (`storage_full`; `serve --blobs-max-bytes`)", body = ErrorBody)))]
pub async fn upload_input(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Json<InputRef>, ApiError> {
    let size = body.len() as u64;
    // The body's own buffer (no copy: nothing else holds it).
    let hash = state
        .scheduler
        .upload_input_owned(&caller.tenant, Vec::from(body))
        .await?;
    Ok(Json(InputRef {
        input: format!("sha256:{hash}"),
        size,
    }))
}
