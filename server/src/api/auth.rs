//! Authentication: API tokens (`Authorization: Bearer <token>`), each
//! acting for one tenant with one role. Only a token's sha256 is stored;
//! the secret is shown once, when it is created. Every route but
//! `/healthz` needs one when the server runs with [`AuthMode::Tokens`].

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;

use super::AppState;
use super::error::error;

/// Who may call the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone who reaches the port (one person on loopback).
    #[default]
    Open,
    /// A token on every request but `/healthz`.
    Tokens,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, every tenant's objects.
    Admin,
    /// Its tenant's objects: read, submit, cancel.
    User,
    /// Its tenant's objects, read only.
    Reader,
}

impl Role {
    /// The role of a name (`admin`, `user`, `reader`).
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Reader => "reader",
        }
    }
}

/// The caller of a request, as its token says (in the request's
/// extensions once authenticated).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// The token's public id.
    pub token: String,
}

/// A new token: its public id and its secret (`smt_<id><rest>`), from 24
/// bytes of the operating system's randomness.
pub fn new_token() -> anyhow::Result<(String, String)> {
    let mut bytes = [0_u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Ok((text[..12].to_owned(), format!("smt_{text}")))
}

/// The stored form of a token's secret.
pub fn hash_secret(secret: &str) -> String {
    sandmill_runtime::blob::hash(secret.as_bytes())
}

/// The middleware of [`AuthMode::Tokens`]: 401 without a live token, 403
/// for a reader that would change something.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let Some(secret) = secret else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>` (an admin creates one with `sandmill token create`)",
        );
    };
    let token = match state
        .scheduler
        .store()
        .token_by_hash(&hash_secret(&secret))
        .await
    {
        Ok(Some(token)) => token,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this token is unknown or revoked",
            );
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("cannot check the token: {e}"),
            );
        }
    };
    let role = Role::parse(&token.role).unwrap_or(Role::Reader);
    if role == Role::Reader && !matches!(*request.method(), Method::GET | Method::HEAD) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a reader token cannot {} {}",
                request.method(),
                request.uri().path()
            ),
        );
    }
    request.extensions_mut().insert(Caller {
        tenant: token.tenant,
        role,
        token: token.id,
    });
    next.run(request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_named_by_their_start() {
        let (id, secret) = new_token().unwrap();
        let (other, _) = new_token().unwrap();
        assert_ne!(id, other);
        assert!(secret.starts_with(&format!("smt_{id}")));
        assert_eq!(secret.len(), 4 + 32);
        assert_eq!(hash_secret(&secret).len(), 64);
        for role in [Role::Admin, Role::User, Role::Reader] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
