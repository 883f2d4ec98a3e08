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

impl Caller {
    /// The one person of an open server: the default tenant, as an admin.
    pub fn open() -> Caller {
        Caller {
            tenant: crate::scheduler::DEFAULT_TENANT.to_owned(),
            role: Role::Admin,
            token: String::new(),
        }
    }

    /// Whom its requests act for, to the scheduler.
    pub fn owner(&self) -> crate::scheduler::Owner {
        crate::scheduler::Owner {
            tenant: self.tenant.clone(),
            admin: self.role == Role::Admin,
        }
    }

    /// The tenant whose objects a list shows it: its own, or every
    /// tenant's (`None`) for an admin.
    pub fn scope(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.tenant.as_str())
    }

    /// Whether it may see an object of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.role == Role::Admin || self.tenant == tenant
    }
}

/// The caller of a handler: as its token says, or (an open server, where
/// no token is asked for) [`Caller::open`].
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::open))
    }
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

/// Paths answered without a token: liveness, and the web UI's page and
/// assets (which hold no data: the page asks for a token, then calls the
/// API with it).
pub fn is_public(path: &str) -> bool {
    path == "/healthz" || path == "/" || path.starts_with("/ui/")
}

/// The middleware of [`AuthMode::Tokens`]: 401 without a live token, 403
/// for a reader that would change something.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
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

/// What an open API on loopback accepts (`sandmill dev` without tokens):
/// requests naming it by one of `hosts` (`127.0.0.1:7878`,
/// `localhost:7878`, …) in `Host` and, when a browser sends one, in
/// `Origin`; bodies only of the types no page can send without asking
/// first (`application/json`, `application/wasm`,
/// `application/octet-stream`). A web page open in a browser on the same
/// machine can neither post to it nor reach it through a domain of its
/// own resolving to 127.0.0.1.
#[derive(Clone, Debug)]
pub struct LocalGuard {
    /// `host:port` forms the server answers to.
    pub hosts: Vec<String>,
}

impl LocalGuard {
    /// The names of a loopback listener on `addr`.
    pub fn for_listener(addr: std::net::SocketAddr) -> LocalGuard {
        let port = addr.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let own = addr.to_string();
        if !hosts.contains(&own) {
            hosts.push(own);
        }
        LocalGuard { hosts }
    }

    fn refusal(&self, request: &Request) -> Option<String> {
        let headers = request.headers();
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        // HTTP/2 carries the host in the URI instead.
        let host = host.or_else(|| request.uri().authority().map(|a| a.as_str()));
        match host {
            Some(host) if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => {}
            Some(host) => {
                return Some(format!(
                    "this server answers to {} only, not `{}`",
                    self.hosts.join(", "),
                    host.escape_default()
                ));
            }
            None => return Some("a request must name the server in `Host`".to_owned()),
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let named = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|h| self.hosts.iter().any(|own| own.eq_ignore_ascii_case(h)));
            if !named {
                return Some(format!(
                    "cross-origin requests are refused (Origin `{}`)",
                    origin.escape_default()
                ));
            }
        }
        let has_body = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n != "0")
            || headers.contains_key(header::TRANSFER_ENCODING)
            || headers.contains_key(header::CONTENT_TYPE);
        if has_body {
            let kind = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !matches!(
                kind.as_str(),
                "application/json" | "application/wasm" | "application/octet-stream"
            ) {
                return Some(format!(
                    "a request body must be application/json, application/wasm or application/octet-stream, not `{}`",
                    kind.escape_default()
                ));
            }
        }
        None
    }
}

/// Refuses (403) what [`LocalGuard`] does not accept.
pub async fn guard_local(
    State(guard): State<std::sync::Arc<LocalGuard>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    match guard.refusal(&request) {
        None => next.run(request).await,
        Some(why) => error(StatusCode::FORBIDDEN, "forbidden", why),
    }
}
