//! The distributed mode, as a library: the parts `sandmill serve` (API,
//! scheduler, recorder, reconciler) and `sandmill worker` run, meeting on
//! NATS JetStream, with state in Postgres. The binary parses flags and
//! calls these.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sandmill_runtime::blob::{BlobStore, DirBlobStore, LocalCopy, NatsBlobStore, Writer};
use sandmill_runtime::broker::{Broker, NatsBroker, NatsConfig};
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{HEARTBEAT_EVERY, WorkerInfo, now_ms};
use sandmill_runtime::sandbox::{Sandbox, SandboxConfig};
use sandmill_runtime::worker::WorkerPool;

use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;

/// How to reach NATS: the options the async-nats client offers.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated.
    pub urls: String,
    /// A credentials file (JWT + nkey).
    pub creds: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// A CA certificate (PEM) to trust, which also requires TLS.
    pub ca: Option<PathBuf>,
}

impl NatsOptions {
    /// Connects, retrying with backoff and one log line per attempt. Every
    /// option applies (credentials, token, user, CA together).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = match &self.creds {
            Some(creds) => async_nats::ConnectOptions::with_credentials_file(creds)
                .await
                .with_context(|| format!("cannot read {}", creds.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        options = options
            .retry_on_initial_connect()
            .name("sandmill")
            .event_callback(|event| async move {
                tracing::warn!(%event, "nats connection");
            });
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let urls: Vec<String> = self.urls.split(',').map(|u| u.trim().to_owned()).collect();
        // A user in the URL (`nats://user:password@host`), unless given
        // apart.
        let in_url = urls.iter().find_map(|url| {
            let addr: async_nats::ServerAddr = url.parse().ok()?;
            Some((addr.username()?.to_owned(), addr.password()?.to_owned()))
        });
        if let Some((user, password)) = self.user.clone().or(in_url) {
            options = options.user_and_password(user, password);
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options
            .connect(urls.as_slice())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", self.shown()))
    }

    /// The URLs without the passwords in them, to show.
    pub fn shown(&self) -> String {
        self.urls
            .split(',')
            .map(|url| {
                let url = url.trim();
                let split = url
                    .split_once("://")
                    .and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?)));
                match split {
                    Some((scheme, (credentials, host))) => {
                        let user = credentials.split(':').next().unwrap_or("");
                        format!("{scheme}://{user}:***@{host}")
                    }
                    None => url.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Connects to the database, retrying with backoff and one log line per
/// attempt (Postgres may start after us).
pub async fn connect_store(url: &str) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match Store::connect(url).await {
            Ok(store) => return Ok(store),
            Err(error) if attempt < 10 => {
                tracing::warn!(%error, attempt, retry_in = ?delay, "database not reachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(error) => return Err(error).context("cannot open the database"),
        }
    }
}

/// What `sandmill serve` runs besides the API.
pub struct Server {
    /// The control plane.
    pub scheduler: Scheduler,
    /// Tasks published again at start-up.
    pub republished: usize,
}

/// How to start a fleet's control plane.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// NATS.
    pub nats: NatsOptions,
    /// Bytes of modules kept loaded (see
    /// [`SandboxConfig::max_kept_module_bytes`]).
    pub max_kept_module_bytes: usize,
    /// Bytes of compiled modules kept on disk (see
    /// [`SandboxConfig::max_cache_bytes`]).
    pub max_cache_bytes: u64,
    /// The database URL.
    pub database: String,
    /// Where compiled modules are cached.
    pub cache_dir: PathBuf,
    /// Ack wait of the task queues it creates.
    pub ack_wait: Duration,
    /// Delivery limit of the task queues it creates.
    pub max_deliveries: u32,
    /// How long task events are kept in NATS.
    pub events_max_age: Duration,
    /// Bytes of task events kept in NATS (the oldest go first).
    pub events_max_bytes: i64,
    /// Bytes the control plane's blob bucket may hold (`None`: no limit
    /// but the nats-server's).
    pub blobs_max_bytes: Option<u64>,
    /// Bytes the workers' blob bucket may hold.
    pub results_max_bytes: Option<u64>,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
}

/// Starts the scheduler, recorder, dispatcher and reconciler of a fleet.
pub async fn serve(config: ServeConfig) -> anyhow::Result<Server> {
    let client = config.nats.connect().await?;
    let broker = Arc::new(
        NatsBroker::connect(
            client.clone(),
            NatsConfig {
                ack_wait: config.ack_wait,
                max_deliveries: config.max_deliveries,
                offers: None,
                events_max_age: config.events_max_age,
                events_max_bytes: config.events_max_bytes,
            },
        )
        .await?,
    );
    let blobs = NatsBlobStore::connect(client.clone(), Writer::ControlPlane).await?;
    blobs
        .set_limits(config.blobs_max_bytes, config.results_max_bytes)
        .await?;
    let blobs = Arc::new(blobs);
    let store = connect_store(&config.database).await?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(config.cache_dir.clone()),
        max_kept_module_bytes: config.max_kept_module_bytes,
        max_cache_bytes: config.max_cache_bytes,
        ..SandboxConfig::default()
    })?;
    // A durable subscription's messages wait as long as tasks do.
    let scheduler_config = SchedulerConfig {
        subscription_ack_wait: config.ack_wait,
        ..config.scheduler
    };
    let scheduler = Scheduler::new(store, broker, blobs, sandbox, scheduler_config);
    scheduler.set_nats(client);
    scheduler.start().await?;
    tokio::spawn(scheduler.clone().record_events());
    let republished = scheduler.recover().await?;
    tokio::spawn(scheduler.clone().dispatch());
    tokio::spawn(scheduler.clone().reconcile());
    tokio::spawn(scheduler.clone().watch_mapreduce());
    tokio::spawn(scheduler.clone().run_schedules());
    tokio::spawn(scheduler.clone().run_retention());
    tokio::spawn(scheduler.clone().run_utilization());
    tokio::spawn(scheduler.clone().run_blob_collection());
    scheduler.run_subscriptions().await?;
    Ok(Server {
        scheduler,
        republished,
    })
}

/// How to start a worker process.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// NATS.
    pub nats: NatsOptions,
    /// Bytes of modules kept loaded (see
    /// [`SandboxConfig::max_kept_module_bytes`]).
    pub max_kept_module_bytes: usize,
    /// Bytes of compiled modules kept on disk (see
    /// [`SandboxConfig::max_cache_bytes`]).
    pub max_cache_bytes: u64,
    /// Its name, stable across restarts.
    pub id: String,
    /// What it offers.
    pub labels: Labels,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Where compiled modules and module copies are kept.
    pub cache_dir: PathBuf,
    /// The grants its slots honour (see
    /// [`SandboxConfig::allowed_grants`]).
    pub allowed_grants: Vec<String>,
}

/// Calls `make` until it succeeds, with backoff (up to 10 s) and one log
/// line per failure.
async fn until_made<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut make: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(200);
    loop {
        match make().await {
            Ok(made) => return made,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot open {what} (has `sandmill serve` run yet?)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Checks a worker id: letters, digits, `-`, `_` and `.`, not `.` at
/// either end.
pub fn check_worker_id(id: &str) -> anyhow::Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty()
        || id.len() > 128
        || !id.chars().all(valid)
        || id.starts_with('.')
        || id.ends_with('.')
    {
        anyhow::bail!(
            "--id `{id}`: use 1 to 128 letters, digits, `-`, `_` and `.` (not `.` at either end)"
        );
    }
    Ok(())
}

/// Starts a worker process's slots, after making sure no live worker uses
/// its id.
pub async fn worker(config: WorkerConfig) -> anyhow::Result<WorkerPool> {
    check_worker_id(&config.id)?;
    let client = config.nats.connect().await?;
    // A worker may start before `serve` has made the streams, buckets and
    // queues, and under the least-privilege NATS users it may not make
    // them itself: it waits for them.
    let broker = Arc::new(
        until_made("the task queues", || {
            NatsBroker::connect(
                client.clone(),
                NatsConfig {
                    offers: Some(config.labels.clone()),
                    ..NatsConfig::default()
                },
            )
        })
        .await,
    );
    refuse_taken_id(broker.as_ref(), &config.id).await?;
    let blobs: Arc<dyn BlobStore> = Arc::new(
        until_made("the blob buckets", || {
            NatsBlobStore::connect(client.clone(), Writer::Worker)
        })
        .await,
    );
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(config.cache_dir.clone()),
        allowed_grants: config.allowed_grants.clone(),
        max_kept_module_bytes: config.max_kept_module_bytes,
        max_cache_bytes: config.max_cache_bytes,
        ..SandboxConfig::default()
    })?;
    // Module copies beside their compiled forms, within the same budget.
    let modules = Arc::new(LocalCopy::new(
        blobs.clone(),
        DirBlobStore::new(config.cache_dir.join("modules"))?,
        config.max_cache_bytes,
    ));
    Ok(WorkerPool::start(
        WorkerInfo::starting(config.id, config.labels, config.concurrency.max(1)),
        sandbox,
        broker,
        blobs,
        modules,
        0,
    )?)
}

/// A second live process under a name would make the registry lie. An
/// entry that is fresh may be this name's previous life (killed a moment
/// ago): it is live only if it still beats.
async fn refuse_taken_id(broker: &dyn Broker, id: &str) -> anyhow::Result<()> {
    let Some(seen) = broker.worker(id).await?.filter(|w| !w.is_lost(now_ms())) else {
        return Ok(());
    };
    tokio::time::sleep(HEARTBEAT_EVERY + Duration::from_secs(1)).await;
    if let Some(again) = broker.worker(id).await?
        && again.instance == seen.instance
        && again.last_seen > seen.last_seen
    {
        anyhow::bail!(
            "worker id `{id}` is taken by a live worker (labels [{}], running since {} ms ago); give this one another --id",
            again.labels,
            now_ms() - again.started_at
        );
    }
    Ok(())
}

/// Serves this process's metrics at `/metrics` (and `/healthz`) on
/// `listener`, plain HTTP, until the task is aborted.
pub fn serve_metrics(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        sandmill_runtime::metrics::CONTENT_TYPE,
                    )],
                    sandmill_runtime::metrics::encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    })
}
