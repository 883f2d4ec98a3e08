//! The HTTP API (axum). JSON in and out; every error is an [`ErrorBody`]
//! with a stable `code`; every list is a page (`items`, `next_cursor`).
//! Request bodies are capped; a rejected request changes nothing. The
//! OpenAPI document at `/v1/openapi.json` is generated from the handlers'
//! annotations, and a test checks every response against it.
//!
//! One module per resource, each with its `router()`:
//! [`health`], [`modules`], [`specs`], [`jobs`], [`tasks`], [`run`],
//! [`workers`], [`utilization`], [`schedules`], [`subscriptions`], [`reservations`],
//! [`whoami`],
//! [`events`] (live, as
//! Server-Sent Events);
//! [`views`] holds
//! what they return.

pub mod auth;
mod error;
pub mod events;
pub mod health;
pub mod jobs;
pub mod modules;
pub mod reservations;
pub mod run;
pub mod schedules;
pub mod specs;
pub mod subscriptions;
pub mod tasks;
pub mod ui;
pub mod utilization;
pub mod views;
pub mod whoami;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

pub use error::{ApiError, ErrorBody};

use crate::jobfile::Invalid;
use crate::scheduler::Scheduler;

/// Largest request body by default: a module or an input of `/v1/run`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// How long `/v1/run` waits past a call's timeout before answering `202`.
pub const RUN_WAIT_SLACK: Duration = Duration::from_secs(5);

/// How long `/v1/run` waits by default before answering `202`: as long as
/// a call with the default timeout may run, and a little more.
pub const DEFAULT_RUN_WAIT: Duration =
    sandmill_runtime::sandbox::DEFAULT_TIMEOUT.saturating_add(RUN_WAIT_SLACK);

/// Requests handled at once by default (see [`ApiConfig::max_requests`]).
pub const DEFAULT_MAX_REQUESTS: usize = 1024;

/// `/v1/run` calls waiting at once by default (see
/// [`ApiConfig::max_waiting_runs`]).
pub const DEFAULT_MAX_WAITING_RUNS: usize = 256;

/// How long a request's body may take to arrive by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of request bodies held at once by default (see
/// [`ApiConfig::max_body_memory`]).
pub const DEFAULT_MAX_BODY_MEMORY: usize = 512 << 20;

/// Settings of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Longest wait `/v1/run` allows.
    pub max_run_wait: Duration,
    /// Who may call (see [`auth`]).
    pub auth: auth::AuthMode,
    /// Checks of an open server on loopback against browsers' requests
    /// (see [`auth::LocalGuard`]).
    pub local: Option<auth::LocalGuard>,
    /// How long a request's body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once
    /// (`/healthz` is never refused).
    pub max_requests: usize,
    /// `/v1/run` calls waiting for their task at once; past them a call
    /// is accepted and answered 202 without waiting.
    pub max_waiting_runs: usize,
    /// Bytes of request bodies read and held at once (each request counts
    /// its `Content-Length`, or the body limit when it sends none, from
    /// before its body is read until it is answered). A request waits for
    /// room until its body deadline, then gets 503; so a crowd of uploads
    /// cannot take the server's memory.
    pub max_body_memory: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_run_wait: Duration::from_secs(300),
            auth: auth::AuthMode::Open,
            local: None,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_waiting_runs: DEFAULT_MAX_WAITING_RUNS,
            max_body_memory: DEFAULT_MAX_BODY_MEMORY,
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The control plane.
    pub scheduler: Scheduler,
    /// The API's settings.
    pub config: ApiConfig,
    /// Room for `/v1/run` calls that wait.
    pub waiting_runs: Arc<Semaphore>,
}

/// The whole API.
pub fn router(scheduler: Scheduler, config: ApiConfig) -> Router {
    let limit = config.max_body_bytes;
    let local = config.local.clone();
    let body_kib = kib(config
        .max_body_memory
        .max(config.max_body_bytes.min(1 << 30)));
    let limits = Arc::new(Limits {
        requests: Arc::new(Semaphore::new(config.max_requests.max(1))),
        max_requests: config.max_requests.max(1),
        body_timeout: config.body_timeout,
        body_memory: Arc::new(Semaphore::new(body_kib as usize)),
        body_kib,
        max_body_bytes: config.max_body_bytes,
        copying: CopyTurns::new(),
    });
    let state = AppState {
        waiting_runs: Arc::new(Semaphore::new(config.max_waiting_runs)),
        scheduler,
        config,
    };
    let router = Router::new()
        .merge(health::router())
        .merge(modules::router())
        .merge(specs::router())
        .merge(jobs::router())
        .merge(tasks::router())
        .merge(run::router())
        .merge(workers::router())
        .merge(utilization::router())
        .merge(ui::router())
        .merge(events::router())
        .merge(schedules::router())
        .merge(subscriptions::router())
        .merge(reservations::router())
        .merge(whoami::router())
        .layer(DefaultBodyLimit::max(limit));
    let router = match state.config.auth {
        auth::AuthMode::Open => router,
        auth::AuthMode::Tokens => router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        )),
    };
    let router = router.with_state(state);
    let router = match local {
        None => router,
        Some(guard) => router.layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(guard),
            auth::guard_local,
        )),
    };
    // Outermost: a refused request costs nothing else; and every answer
    // is measured, refusals included.
    crate::metrics::init();
    router
        .layer(axum::middleware::from_fn_with_state(limits, limit_requests))
        .layer(axum::middleware::from_fn(measure))
}

/// Times every request into `sandmill_http_request_duration_seconds`, by
/// its route's template (`/v1/jobs/:id`, never an id).
async fn measure(request: Request, next: axum::middleware::Next) -> Response {
    let began = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        // `/v1/jobs/:id`: the template, in the form most scrapers' parsers
        // read (some stop a label value at its first `}`).
        .map_or_else(
            || "unmatched".to_owned(),
            |p| p.as_str().replace('{', ":").replace('}', ""),
        );
    let response = next.run(request).await;
    let method = match method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method.as_str(),
        _ => "other",
    };
    crate::metrics::SERVER.request(method, &route, response.status().as_u16(), began.elapsed());
    response
}

/// The limits every request passes first.
struct Limits {
    requests: Arc<Semaphore>,
    max_requests: usize,
    body_timeout: Duration,
    /// Room for bodies, in KiB ([`ApiConfig::max_body_memory`]).
    body_memory: Arc<Semaphore>,
    body_kib: u32,
    max_body_bytes: usize,
    /// Bodies copied at once ([`CopyTurns`]).
    copying: CopyTurns,
}

/// Turns at copying bodies' pieces: one fewer than the machine's cores
/// (at least one), so a storm of uploads leaves a thread free to answer
/// other requests. A turn is held while a piece that has arrived is
/// copied, never while waiting for the client (a slow client holds up no
/// one).
#[derive(Clone)]
struct CopyTurns(Arc<Semaphore>);

impl CopyTurns {
    fn new() -> CopyTurns {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        CopyTurns(Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))))
    }
}

/// `bytes` in KiB, rounded up (at most `u32::MAX`).
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// How long the request's body may take, and the room held for it (read
/// by [`RawBody`]).
#[derive(Clone, Copy)]
struct BodyDeadline {
    at: tokio::time::Instant,
    room: usize,
}

/// Answers 503 when [`ApiConfig::max_requests`] are being handled
/// (`/healthz` always passes), and sets the body's deadline.
async fn limit_requests(
    axum::extract::State(limits): axum::extract::State<Arc<Limits>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let at = tokio::time::Instant::now() + limits.body_timeout;
    request
        .extensions_mut()
        .insert(BodyDeadline { at, room: 0 });
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let Ok(_permit) = limits.requests.clone().try_acquire_owned() else {
        return closing(error::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the server is handling {} requests, its limit (--max-requests); try again shortly",
                limits.max_requests
            ),
        ));
    };
    // Room for the body before it is read, held until the answer: what it
    // says it sends (within the body limit), or the limit if it says
    // nothing. A request without a body needs none.
    let headers = request.headers();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    let body = match declared {
        Some(length) => length.min(limits.max_body_bytes),
        None if chunked => limits.max_body_bytes,
        None => 0,
    };
    // The body's buffer is made its declared size at once (a chunked
    // body's grows as it comes).
    let room = declared.map_or(0, |length| length.min(limits.max_body_bytes));
    request.extensions_mut().insert(BodyDeadline { at, room });
    request.extensions_mut().insert(limits.copying.clone());
    let _room = if body == 0 {
        None
    } else {
        let wanted = kib(body).min(limits.body_kib);
        match tokio::time::timeout_at(at, limits.body_memory.clone().acquire_many_owned(wanted))
            .await
        {
            Ok(Ok(room)) => Some(room),
            _ => {
                return closing(error::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "the server holds {} KiB of request bodies, its limit (--max-body-memory); try again shortly",
                        limits.body_kib
                    ),
                ));
            }
        }
    };
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    let response = next.run(request).await;
    // A refused request's body may be partly unread: the client must not
    // send its next request on this connection.
    if body > 0 && http1 && !response.status().is_success() {
        closing(response)
    } else {
        response
    }
}

/// `response` with `Connection: close`: the connection ends after it, so a
/// client that pooled it cannot send its next request into the unread
/// rest of a refused body (and see the connection drop).
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sandmill",
        description = "Run WebAssembly tasks in a sandbox, on one machine or a fleet. \
            Times are RFC 3339 (UTC, milliseconds); durations are strings like `1m 30s` \
            or `250ms`; sizes are strings like `256MiB` or `1500B`. Lists are pages: \
            pass `next_cursor` back as `cursor`."
    ),
    paths(
        health::healthz,
        health::readyz,
        health::openapi,
        health::metrics,
        modules::upload_module,
        modules::get_module,
        modules::list_modules,
        modules::upload_input,
        specs::put_spec,
        specs::list_specs,
        specs::get_spec,
        jobs::submit_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::delete_job,
        jobs::cancel_job,
        jobs::retry_job,
        jobs::resubmit_job,
        jobs::job_definition,
        jobs::list_tasks,
        jobs::job_graph,
        jobs::job_failures,
        tasks::get_task,
        tasks::task_output,
        tasks::task_logs,
        tasks::restart_task,
        tasks::task_call,
        tasks::task_blob,
        tasks::get_blob,
        run::run,
        workers::list_workers,
        utilization::utilization,
        events::all_events,
        events::job_events,
        schedules::create_schedule,
        schedules::list_schedules,
        schedules::get_schedule,
        schedules::delete_schedule,
        schedules::pause_schedule,
        schedules::resume_schedule,
        subscriptions::create_subscription,
        subscriptions::list_subscriptions,
        subscriptions::get_subscription,
        subscriptions::delete_subscription,
        subscriptions::dead_letters,
        reservations::create_reservation,
        reservations::list_reservations,
        reservations::get_reservation,
        reservations::delete_reservation,
        whoami::whoami,
    ),
    modifiers(&Guarded)
)]
struct ApiDoc;

/// Adds what every route but `/healthz` may answer: 401 without a live
/// token (`--auth tokens`), 403 when the token's role may not, or (an open
/// `sandmill dev`) for a request from a web page; and the bearer scheme.
struct Guarded;

impl utoipa::Modify for Guarded {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let reply = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations_mut(item) {
                if path == "/healthz" {
                    operation.security = Some(vec![SecurityRequirement::default()]);
                    continue;
                }
                let responses = &mut operation.responses.responses;
                if path.contains("{id}") {
                    responses.entry("400".to_owned()).or_insert_with(|| {
                        reply("the id is not a whole number from 1 to 9223372036854775807").into()
                    });
                }
                responses
                    .entry("401".to_owned())
                    .or_insert_with(|| reply("no live token (`--auth tokens`)").into());
                responses.entry("403".to_owned()).or_insert_with(|| {
                    reply("the token's role may not do this, the server's policy refuses it, or a web page sent it to an open server").into()
                });
                responses.entry("503".to_owned()).or_insert_with(|| {
                    reply("the server is handling `--max-requests` requests, or a service it depends on is unavailable").into()
                });
                if operation.request_body.is_some() {
                    responses.entry("408".to_owned()).or_insert_with(|| {
                        reply("the body did not arrive within `--body-timeout`").into()
                    });
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The operations of a path, those it has.
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// The document as a server with `auth` serves it: an open server asks
/// for no token, so it states no security requirement and no bearer
/// scheme (its routes answer no 401).
pub fn openapi_document_for(auth: auth::AuthMode) -> utoipa::openapi::OpenApi {
    let mut doc = openapi_document();
    if auth == auth::AuthMode::Open {
        doc.security = None;
        if let Some(components) = &mut doc.components {
            components.security_schemes.clear();
        }
        for item in doc.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                operation.security = None;
                operation.responses.responses.remove("401");
            }
        }
    }
    doc
}

/// A raw body whose rejections (too large, unreadable) are [`ErrorBody`]s.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let reading = req.extensions().get::<BodyDeadline>().copied();
        let turns = req.extensions().get::<CopyTurns>().cloned();
        let read = read_body(req, reading.map_or(0, |r| r.room), turns);
        let read = match reading {
            None => read.await,
            Some(BodyDeadline { at, .. }) => match tokio::time::timeout_at(at, read).await {
                Ok(read) => read,
                Err(_) => {
                    return Err(error::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request's body did not arrive in time (--body-timeout)",
                    ));
                }
            },
        };
        read.map(RawBody)
    }
}

/// Bytes of a body read before other requests get a turn ([`read_body`]).
const TURN_BYTES: usize = 256 << 10;

/// The request's body (within the body limit), copied into one buffer of
/// `room` bytes piece by piece as it arrives: the copying of a large
/// upload is spread over its arrival in small steps between other
/// requests, not done at once at its end (a 30 MiB copy held a thread that
/// answers requests for tens of milliseconds).
async fn read_body(req: Request, room: usize, turns: Option<CopyTurns>) -> Result<Bytes, Response> {
    use axum::RequestExt;
    use futures_util::StreamExt;
    let mut pieces = req.into_limited_body().into_data_stream();
    let mut body = bytes::BytesMut::with_capacity(room);
    let mut since_turn = 0;
    while let Some(piece) = pieces.next().await {
        match piece {
            Ok(piece) => {
                // A piece that has arrived is copied in a turn.
                let _turn = match &turns {
                    Some(CopyTurns(turns)) => turns.acquire().await.ok(),
                    None => None,
                };
                body.extend_from_slice(&piece);
                // While the client sends faster than it is read, every
                // read is ready at once: the task would hold its thread
                // for tens of MiB. Other requests get a turn each 256 KiB.
                since_turn += piece.len();
                if since_turn >= TURN_BYTES {
                    since_turn = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                let too_large =
                    std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .any(|e| e.is::<http_body_util::LengthLimitError>());
                return Err(if too_large {
                    error::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request's body is larger than the server's limit (--max-body)",
                    )
                } else {
                    error::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot read the request's body: {e}"),
                    )
                });
            }
        }
    }
    Ok(body.freeze())
}

/// Query parameters whose rejections are [`ErrorBody`]s naming the
/// parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|e| {
                let field = e.path().to_string();
                ApiError::BadRequest(Invalid::field(
                    &field,
                    plain_query_error(&e.into_inner().to_string()),
                ))
                .into_response()
            })
    }
}

fn plain_query_error(message: &str) -> String {
    message.replace("unknown variant", "not one of").to_owned()
}

/// Path parameters whose rejections are [`ErrorBody`]s.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(error::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

/// An optional JSON request body: an empty one is the default.
pub(crate) fn parse_json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    // An optional body may be absent, or `null` (as a generated client
    // sends an unset optional body).
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

/// A JSON request body; an error names the field at fault and its line.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        if field == "." {
            Invalid::whole(format!("invalid request body: {message}"))
        } else {
            Invalid::field(&field, message)
        }
    })?;
    deserializer.end().map_err(|_| {
        ApiError::BadRequest(Invalid::whole("trailing characters after the JSON body"))
    })?;
    Ok(value)
}
