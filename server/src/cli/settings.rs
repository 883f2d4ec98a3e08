//! Flags shared by the commands that run a scheduler (`dev`, `serve`,
//! `run`), and the bounded stop of the servers.

use std::time::Duration;

use clap::Args;
use sandmill_runtime::sandbox::Grants;
use sandmill_runtime::sandbox::net::NetRule;
use sandmill_server::events::DEFAULT_EVENT_BUFFER;
use sandmill_server::jobfile::DEFAULT_MAX_TASKS_PER_JOB;
use sandmill_server::scheduler::{
    Ceilings, DEFAULT_ABSENT_EVERY, DEFAULT_MAX_COMPILES, DEFAULT_MAX_PARAMS_BYTES,
    DEFAULT_MAX_RESERVATIONS, DEFAULT_QUOTA_OPEN_TASKS, DEFAULT_QUOTA_TASKS_PER_DAY,
    DEFAULT_RESERVABLE_SLOTS, DEFAULT_WINDOW, ReservationLimits, SchedulerConfig,
};
use sandmill_server::store::Quota;
use tokio::sync::watch;

use super::out::tell;

/// The scheduler's knobs.
#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Tasks queued or running at once: a sweep's tasks are created and
    /// dispatched as this window has room, so memory does not grow with
    /// the sweep.
    #[arg(long, env = "SANDMILL_WINDOW", default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
    /// Tasks one job may have.
    #[arg(long, env = "SANDMILL_MAX_TASKS_PER_JOB", default_value_t = DEFAULT_MAX_TASKS_PER_JOB)]
    pub max_tasks_per_job: u64,
    /// Largest parameters of one task (JSON bytes); larger is refused at
    /// submit with a 400.
    #[arg(long, env = "SANDMILL_MAX_PARAMS", default_value_t = DEFAULT_MAX_PARAMS_BYTES)]
    pub max_params: usize,
    /// Live events kept for clients that reconnect (`Last-Event-ID`); one
    /// whose place is older is told it lagged.
    #[arg(long, env = "SANDMILL_EVENT_BUFFER", default_value_t = DEFAULT_EVENT_BUFFER)]
    pub event_buffer: usize,
    /// How long ended jobs are kept (with their tasks, outputs and logs)
    /// before they are deleted, like `30d` or `12h`; `forever` keeps them.
    #[arg(long, env = "SANDMILL_RETAIN", default_value = "30d", value_parser = parse_retain)]
    pub retain: Retain,
    /// How often the workers' utilization is sampled for
    /// `/v1/utilization` (kept as long as `--retain`).
    #[arg(long, env = "SANDMILL_UTILIZATION_EVERY", value_parser = humantime::parse_duration,
        default_value = "10s")]
    pub utilization_every: Duration,
    /// How long a stored blob no job, task, schedule or module names is
    /// kept before it is deleted, like `6h`; `forever` keeps every blob.
    /// It must cover an upload's way to the job that reads it and a
    /// worker's result's way to the database.
    #[arg(long, env = "SANDMILL_BLOB_GRACE", default_value = "6h", value_parser = parse_blob_grace)]
    pub blob_grace: Retain,
    /// The most linear memory a call may ask for (all its memories).
    #[arg(long, env = "SANDMILL_MAX_MEMORY", default_value = "4GiB")]
    pub max_memory: bytesize::ByteSize,
    /// The longest timeout a call may ask for.
    #[arg(long, env = "SANDMILL_MAX_TIMEOUT", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_timeout: Duration,
    /// The most fuel a call may ask for.
    #[arg(long, env = "SANDMILL_MAX_FUEL", default_value_t = Ceilings::default().fuel)]
    pub max_fuel: u64,
    /// The largest output a call may ask for.
    #[arg(long, env = "SANDMILL_MAX_OUTPUT", default_value = "1GiB")]
    pub max_output: bytesize::ByteSize,
    /// The largest log a call may ask to keep.
    #[arg(long, env = "SANDMILL_MAX_LOG", default_value = "64MiB")]
    pub max_log: bytesize::ByteSize,
    /// The most attempts a task may ask for.
    #[arg(long, env = "SANDMILL_MAX_ATTEMPTS", default_value_t = Ceilings::default().attempts)]
    pub max_attempts: u32,
    /// Tasks not ended (of its running jobs) a tenant may have at once,
    /// unless `sandmill quota set` gave it its own; past it a job is
    /// refused (429 over_quota).
    #[arg(long, env = "SANDMILL_QUOTA_OPEN_TASKS", default_value_t = DEFAULT_QUOTA_OPEN_TASKS)]
    pub quota_open_tasks: i64,
    /// Tasks a tenant may submit in any 24 hours, unless `sandmill quota
    /// set` gave it its own.
    #[arg(long, env = "SANDMILL_QUOTA_TASKS_PER_DAY", default_value_t = DEFAULT_QUOTA_TASKS_PER_DAY)]
    pub quota_tasks_per_day: i64,
    /// Seconds a tenant's task attempts may run in any 24 hours (the wall
    /// time of each, in a worker slot), unless `sandmill quota set` gave
    /// it its own; past it its new jobs are refused and its running jobs'
    /// undispatched tasks wait. Unlimited when not given.
    #[arg(long, env = "SANDMILL_QUOTA_CPU_SECONDS_PER_DAY")]
    pub quota_cpu_seconds_per_day: Option<u64>,
    /// Bytes of outputs and logs a tenant's kept jobs may hold, unless
    /// `sandmill quota set` gave it its own; past it its new jobs are
    /// refused until it deletes jobs (or retention does). Unlimited when
    /// not given.
    #[arg(long, env = "SANDMILL_QUOTA_STORAGE")]
    pub quota_storage: Option<bytesize::ByteSize>,
    /// Uploaded modules compiled at once; more wait their turn.
    #[arg(long, env = "SANDMILL_MAX_COMPILES", default_value_t = DEFAULT_MAX_COMPILES)]
    pub max_compiles: usize,
    /// The longest an uploaded module may take to compile; past it the
    /// upload is refused (400) and nothing of it is kept.
    #[arg(long, env = "SANDMILL_COMPILE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub compile_timeout: Duration,
    /// Worker slots all tenants' reservations may hold at any one time
    /// (`sandmill reserve`); a booking past it is refused (409).
    #[arg(long, env = "SANDMILL_RESERVABLE_SLOTS", default_value_t = DEFAULT_RESERVABLE_SLOTS)]
    pub reservable_slots: i64,
    /// How far ahead of now a reservation may end.
    #[arg(long, env = "SANDMILL_MAX_RESERVATION_AHEAD", default_value = "7days", value_parser = humantime::parse_duration)]
    pub max_reservation_ahead: Duration,
    /// Reservations not ended one tenant may hold (429 past it).
    #[arg(long, env = "SANDMILL_MAX_RESERVATIONS", default_value_t = DEFAULT_MAX_RESERVATIONS)]
    pub max_reservations: i64,
}

/// `--retain`: a period, or forever.
#[derive(Clone, Copy, Debug)]
pub struct Retain(pub Option<Duration>);

fn parse_retain(text: &str) -> Result<Retain, String> {
    if text == "forever" {
        return Ok(Retain(None));
    }
    let period = humantime::parse_duration(text).map_err(|e| format!("{e} (or `forever`)"))?;
    if period.is_zero() {
        return Err("0 would delete jobs as they end; say `forever` to keep them".to_owned());
    }
    Ok(Retain(Some(period)))
}

fn parse_blob_grace(text: &str) -> Result<Retain, String> {
    if text == "forever" {
        return Ok(Retain(None));
    }
    let period = humantime::parse_duration(text).map_err(|e| format!("{e} (or `forever`)"))?;
    if period < Duration::from_secs(1) {
        return Err(
            "under 1s would delete blobs on their way to the job that reads them".to_owned(),
        );
    }
    Ok(Retain(Some(period)))
}

/// `--auth`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthArg {
    /// Anyone who reaches the port.
    Open,
    /// A token on every request.
    Tokens,
}

impl AuthArg {
    /// The API's mode.
    pub fn mode(self) -> sandmill_server::api::auth::AuthMode {
        match self {
            AuthArg::Open => sandmill_server::api::auth::AuthMode::Open,
            AuthArg::Tokens => sandmill_server::api::auth::AuthMode::Tokens,
        }
    }
}

/// What jobs may be granted (`dev`, `serve`): the server's decision.
#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Where a job granted `network` may connect: addresses or networks
    /// with an optional port (203.0.113.7, 10.0.0.0/8:5432,
    /// [2001:db8::/32]:443, * for anything), comma-separated. Loopback,
    /// link-local and private ranges only when a rule lies inside them.
    /// None by default: a job granting `network` is refused (403).
    #[arg(
        long,
        env = "SANDMILL_ALLOW_NETWORK",
        value_delimiter = ',',
        value_name = "RULE"
    )]
    pub allow_network: Vec<NetRule>,
}

/// The sandbox's own limits (`dev`, `serve`, `worker`).
#[derive(Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Modules kept loaded in memory (by their size); past it the least
    /// recently used are dropped and loaded again (from the disk cache)
    /// when next needed.
    #[arg(long, env = "SANDMILL_MAX_KEPT_MODULES", default_value = "256MiB")]
    pub max_kept_modules: bytesize::ByteSize,
    /// Compiled modules kept on disk in `--cache-dir` (and, on a worker,
    /// copies of modules as much again); past it the least recently used
    /// go, and are compiled (fetched) again when next needed.
    #[arg(long, env = "SANDMILL_MAX_CACHE", default_value = "8GiB")]
    pub max_cache: bytesize::ByteSize,
}

impl SandboxArgs {
    /// `--max-kept-modules` in bytes.
    pub fn kept_bytes(&self) -> usize {
        usize::try_from(self.max_kept_modules.0).unwrap_or(usize::MAX)
    }
}

/// What a process's worker slots honour (`worker`, `dev`).
#[derive(Args, Debug, Clone)]
pub struct GrantArgs {
    /// The grants this worker's slots honour, comma-separated; a task
    /// asking for another fails on it with `bad-grant` (retried, so
    /// another worker may run it).
    #[arg(
        long,
        env = "SANDMILL_ALLOW_GRANTS",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(Grants::NAMES),
        default_value = "clock,random,network,env"
    )]
    pub allow_grants: Vec<String>,
}

impl SchedulerArgs {
    /// The scheduler's settings from these flags.
    pub fn config(&self, absent_every: Option<Duration>) -> SchedulerConfig {
        SchedulerConfig {
            window: self.window.max(1),
            max_tasks_per_job: self.max_tasks_per_job,
            max_params_bytes: self.max_params,
            absent_every: absent_every.unwrap_or(DEFAULT_ABSENT_EVERY),
            queue_idle: sandmill_server::scheduler::DEFAULT_QUEUE_IDLE,
            event_buffer: self.event_buffer.max(1),
            retain: self.retain.0,
            utilization_every: self.utilization_every,
            blob_grace: self.blob_grace.0,
            ceilings: Ceilings {
                memory_bytes: self.max_memory.0,
                timeout: self.max_timeout,
                fuel: self.max_fuel,
                output_bytes: self.max_output.0,
                log_bytes: self.max_log.0,
                attempts: self.max_attempts,
            },
            quota: Quota {
                open_tasks: Some(self.quota_open_tasks.max(0)),
                tasks_per_day: Some(self.quota_tasks_per_day.max(0)),
                cpu_seconds_per_day: self
                    .quota_cpu_seconds_per_day
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                storage_bytes: self
                    .quota_storage
                    .map(|n| i64::try_from(n.0).unwrap_or(i64::MAX)),
            },
            max_compiles: self.max_compiles.max(1),
            compile_timeout: self.compile_timeout,
            reservations: ReservationLimits {
                slots: self.reservable_slots.max(0),
                ahead: self.max_reservation_ahead,
                per_tenant: self.max_reservations.max(0),
            },
            ..SchedulerConfig::default()
        }
    }
}

/// Turns true at the first Ctrl-C or SIGTERM; a second one ends the
/// process at once (exit 130).
pub fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        let _ = tx.send(true);
        signal().await;
        tell!("stopping now (second signal)");
        std::process::exit(130);
    });
    rx
}

/// Waits until `stop` turns true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The HTTP server's own limits (`dev`, `serve`).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// How long a client may take to send a request's headers before its
    /// connection is closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (408 past it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub body_timeout: Duration,
    /// Requests handled at once; more get 503 at once (/healthz is never
    /// refused).
    #[arg(long, default_value_t = sandmill_server::api::DEFAULT_MAX_REQUESTS)]
    pub max_requests: usize,
    /// `/v1/run` calls waiting for their task at once; past them a call is
    /// accepted and answered 202 (its job) without waiting.
    #[arg(long, default_value_t = sandmill_server::api::DEFAULT_MAX_WAITING_RUNS)]
    pub max_waiting_runs: usize,
    /// Request bodies held at once (uploads waiting past it until their
    /// --body-timeout, then 503), like `512MiB`.
    #[arg(long, default_value = "512MiB")]
    pub max_body_memory: bytesize::ByteSize,
    /// Serve HTTPS with this certificate chain (PEM, the server's own
    /// certificate first); needs `--tls-key`.
    #[arg(
        long,
        env = "SANDMILL_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "SANDMILL_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl HttpArgs {
    /// The TLS acceptor of `--tls-cert` and `--tls-key`, if given.
    pub fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(sandmill_server::tls::acceptor(cert, key)?)),
            _ => Ok(None),
        }
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Sets these limits on an API configuration.
    pub fn apply(&self, config: &mut sandmill_server::api::ApiConfig) {
        config.body_timeout = self.body_timeout;
        config.max_requests = self.max_requests.max(1);
        config.max_waiting_runs = self.max_waiting_runs;
        config.max_body_memory = usize::try_from(self.max_body_memory.0).unwrap_or(usize::MAX);
    }
}

/// Serves `app` on `listener` until `stop` (HTTP/1.1, each request's
/// headers, and the TLS handshake when `tls` is given, within
/// `header_timeout`), then ends the live event streams of `events`;
/// requests still running `grace` after the stop are cut off (a
/// dependency that hangs them must not hang the stop).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    events: sandmill_server::events::Hub,
    stop: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let (closing, close) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut stopping = std::pin::pin!(stopped(stop));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pass.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let close = close.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, app, header_timeout, close).await,
                        Some(tls) => {
                            // A client that never finishes its handshake
                            // holds nothing past the header timeout.
                            match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                                Ok(Ok(stream)) => serve_connection(stream, app, header_timeout, close).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stopping => break,
        }
    }
    drop(listener);
    let _ = closing.send(true);
    events.close();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tell!(
            "requests still running {} after the stop; cutting them off",
            humantime::format_duration(grace)
        );
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection until it ends or `close` turns true (then it
/// finishes the request in hand).
async fn serve_connection<S>(
    stream: S,
    app: axum::Router,
    header_timeout: Duration,
    mut close: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let service =
        TowerToHyperService::new(app.map_request(
            |r: axum::http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
        ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = async { let _ = close.wait_for(|c| *c).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
