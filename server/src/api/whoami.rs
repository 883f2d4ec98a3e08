//! Who the caller is: the tenant its token acts for and its role, so a
//! client (the web UI) offers only what the caller may do.

use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, Role};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/whoami", get(whoami))
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleView {
    /// Everything, every tenant's objects.
    Admin,
    /// Its tenant's objects: read, submit, cancel, retry, delete.
    User,
    /// Its tenant's objects, read only.
    Reader,
}

/// The caller of a request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The tenant it acts for (`default` on an open server).
    pub tenant: String,
    /// What it may do (`admin` on an open server: its one person).
    pub role: RoleView,
}

/// The caller: its tenant and role.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, description = "the caller", body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        role: match caller.role {
            Role::Admin => RoleView::Admin,
            Role::User => RoleView::User,
            Role::Reader => RoleView::Reader,
        },
        tenant: caller.tenant,
    })
}
