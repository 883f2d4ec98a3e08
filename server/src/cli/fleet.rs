//! The distributed mode: `sandmill serve` (API, scheduler, recorder) and
//! `sandmill worker`, meeting on NATS JetStream; state in Postgres.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sandmill_runtime::blob::{BlobStore, DirBlobStore, LocalCopy, NatsBlobStore};
use sandmill_runtime::broker::{Broker, NatsBroker, NatsConfig};
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{WorkerInfo, now_ms};
use sandmill_runtime::sandbox::{Sandbox, SandboxConfig};
use sandmill_runtime::worker::WorkerPool;
use sandmill_server::api::{self, ApiConfig, DEFAULT_MAX_BODY_BYTES};
use sandmill_server::engine::{Engine, EngineConfig};
use sandmill_server::store::Store;

/// How to reach NATS (the options the async-nats client offers).
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "SANDMILL_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// A credentials file (JWT + nkey).
    #[arg(long, env = "SANDMILL_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// A token.
    #[arg(long, env = "SANDMILL_NATS_TOKEN")]
    nats_token: Option<String>,
    /// User name (with --nats-password).
    #[arg(long, env = "SANDMILL_NATS_USER")]
    nats_user: Option<String>,
    /// Password.
    #[arg(long, env = "SANDMILL_NATS_PASSWORD")]
    nats_password: Option<String>,
    /// A CA certificate (PEM) to trust, which also requires TLS.
    #[arg(long, env = "SANDMILL_NATS_CA")]
    nats_ca: Option<PathBuf>,
}

impl NatsArgs {
    /// Connects, retrying with backoff and one log line per attempt.
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .name("sandmill")
            .event_callback(|event| async move {
                tracing::warn!(%event, "nats connection");
            });
        if let Some(creds) = &self.nats_creds {
            options = async_nats::ConnectOptions::with_credentials_file(creds)
                .await
                .with_context(|| format!("cannot read {}", creds.display()))?
                .retry_on_initial_connect()
                .name("sandmill");
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.nats_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let urls: Vec<String> = self.nats.split(',').map(str::to_owned).collect();
        options
            .connect(urls.as_slice())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", self.nats))
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The database (postgres://...; a SQLite path works for one machine).
    #[arg(long, env = "SANDMILL_DATABASE")]
    database: String,
    /// Address to serve the API on.
    #[arg(long, env = "SANDMILL_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Where compiled modules are cached (modules are checked on upload).
    #[arg(
        long,
        env = "SANDMILL_CACHE_DIR",
        default_value = ".sandmill/module-cache"
    )]
    cache_dir: PathBuf,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body: usize,
    /// How long a worker may hold a task without a sign of life before it
    /// goes to another worker (set when the queues are first created).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ack_wait: Duration,
    /// Deliveries of one task a worker may run; past them it fails as
    /// `worker-lost` (or `crash-loop`).
    #[arg(long, default_value_t = sandmill_runtime::broker::MAX_DELIVERIES)]
    max_deliveries: u32,
    /// How often to look for queued or running tasks whose messages NATS
    /// lost (say, with a server's disk), and publish them again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    reconcile_every: Duration,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Tasks run at once (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// This worker's name, stable across restarts (default: the host name);
    /// letters, digits, `-`, `_` and `.`.
    #[arg(long, env = "SANDMILL_WORKER_ID")]
    id: Option<String>,
    /// Labels this worker offers, k=v,...: tasks needing labels (from their
    /// job or spec) go only to workers offering all of them.
    #[arg(long, env = "SANDMILL_WORKER_LABELS", default_value = "")]
    labels: String,
    /// Where compiled modules are cached.
    #[arg(
        long,
        env = "SANDMILL_CACHE_DIR",
        default_value = ".sandmill/module-cache"
    )]
    cache_dir: PathBuf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects to the database, retrying with backoff and one log line per
/// attempt (Postgres may start after us).
async fn connect_store(url: &str) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match Store::connect(url).await {
            Ok(store) => return Ok(store),
            Err(error) if attempt < 10 => {
                tracing::warn!(%error, attempt, retry_in = ?delay, "database not reachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error).context("cannot open the database"),
        }
    }
    unreachable!("the loop returns")
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.nats.connect().await?;
        let broker = Arc::new(
            NatsBroker::connect(
                client.clone(),
                NatsConfig {
                    ack_wait: args.ack_wait,
                    max_deliveries: args.max_deliveries,
                    offers: None,
                },
            )
            .await?,
        );
        let blobs = Arc::new(NatsBlobStore::connect(client).await?);
        let store = connect_store(&args.database).await?;
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(args.cache_dir.clone()),
            ..SandboxConfig::default()
        })?;
        let engine = Engine::new(
            store,
            broker,
            blobs,
            sandbox,
            EngineConfig {
                absent_every: args.reconcile_every,
                ..EngineConfig::default()
            },
        );
        tokio::spawn(engine.clone().record_events());
        let republished = engine.recover().await?;
        tokio::spawn(engine.clone().reconcile());
        let app = api::router(
            engine,
            ApiConfig {
                max_body_bytes: args.max_body,
                ..ApiConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "sandmill serve: listening on http://{} (nats {}, {republished} task(s) re-published)",
            listener.local_addr()?,
            args.nats.nats
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(super::dev::shutdown_signal())
            .await
            .context("serving the API")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_owned());
    let id: String = host
        .trim()
        .chars()
        .map(|c| if valid_id_char(c) { c } else { '-' })
        .collect();
    if id.is_empty() {
        "worker".to_owned()
    } else {
        id
    }
}

fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let id = args.id.clone().unwrap_or_else(default_worker_id);
    if id.is_empty() || !id.chars().all(valid_id_char) || id.starts_with('.') || id.ends_with('.') {
        anyhow::bail!("--id `{id}`: use letters, digits, `-`, `_` and `.` (not at either end)");
    }
    let labels = Labels::parse(&args.labels).context("--labels")?;
    runtime()?.block_on(async {
        let client = args.nats.connect().await?;
        let broker = Arc::new(
            NatsBroker::connect(
                client.clone(),
                NatsConfig {
                    offers: Some(labels.clone()),
                    ..NatsConfig::default()
                },
            )
            .await?,
        );
        // A second live process under the same name would make the
        // registry lie. An entry that is fresh may be this name's previous
        // life (killed a moment ago): it is live only if it still beats.
        let entry = |workers: Vec<WorkerInfo>| workers.into_iter().find(|w| w.id == id);
        if let Some(seen) = entry(broker.workers().await?).filter(|w| !w.is_lost(now_ms())) {
            tokio::time::sleep(sandmill_runtime::message::HEARTBEAT_EVERY + Duration::from_secs(1)).await;
            if let Some(again) = entry(broker.workers().await?)
                && again.instance == seen.instance
                && again.last_seen > seen.last_seen
            {
                anyhow::bail!(
                    "worker id `{id}` is taken by a live worker (labels [{}], running since {} ms ago); give this one another --id",
                    again.labels,
                    now_ms() - again.started_at
                );
            }
        }
        let blobs: Arc<dyn BlobStore> = Arc::new(NatsBlobStore::connect(client).await?);
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(args.cache_dir.clone()),
            ..SandboxConfig::default()
        })?;
        let concurrency = args
            .concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        eprintln!(
            "sandmill worker {id}: {concurrency} slot(s), labels [{labels}], nats {}",
            args.nats.nats
        );
        let pool = WorkerPool::start(
            WorkerInfo::starting(id.clone(), labels, concurrency),
            sandbox,
            broker,
            blobs.clone(),
            Arc::new(LocalCopy::new(blobs, DirBlobStore::new(args.cache_dir.join("modules"))?)),
        )?;
        super::dev::shutdown_signal().await;
        eprintln!("sandmill worker {id}: draining (running tasks finish, fetched ones go back)");
        if pool.drain().await {
            eprintln!("sandmill worker {id}: stopped, left the registry");
        } else {
            eprintln!("sandmill worker {id}: stopped (its registry entry will show as lost)");
        }
        Ok(ExitCode::SUCCESS)
    })
}
