//! `sandmill serve` and `sandmill worker`: flags, then the library's
//! [`fleet`](sandmill_server::fleet).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sandmill_runtime::labels::Labels;
use sandmill_server::api::{self, ApiConfig, DEFAULT_MAX_BODY_BYTES};
use sandmill_server::fleet::{self, NatsOptions, ServeConfig, WorkerConfig};

use super::out::tell;
use super::settings::{
    AuthArg, GrantArgs, HttpArgs, PolicyArgs, SandboxArgs, SchedulerArgs, serve_until, stop_signal,
    stopped,
};

/// How to reach NATS (the options the async-nats client offers; they
/// combine).
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated; a user and password may be in
    /// them (`nats://user:password@host:4222`) or given apart.
    #[arg(
        long,
        env = "SANDMILL_NATS",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats: String,
    /// A credentials file (JWT + nkey).
    #[arg(long, env = "SANDMILL_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// A token.
    #[arg(long, env = "SANDMILL_NATS_TOKEN")]
    nats_token: Option<String>,
    /// User name (requires --nats-password).
    #[arg(long, env = "SANDMILL_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// Password (requires --nats-user).
    #[arg(
        long,
        env = "SANDMILL_NATS_PASSWORD",
        requires = "nats_user",
        hide_env_values = true
    )]
    nats_password: Option<String>,
    /// A CA certificate (PEM) to trust, which also requires TLS.
    #[arg(long, env = "SANDMILL_NATS_CA")]
    nats_ca: Option<PathBuf>,
}

impl NatsArgs {
    fn options(&self) -> NatsOptions {
        NatsOptions {
            urls: self.nats.clone(),
            creds: self.nats_creds.clone(),
            token: self.nats_token.clone(),
            user: self.nats_user.clone().zip(self.nats_password.clone()),
            ca: self.nats_ca.clone(),
        }
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
    /// How long a task queue of a label set (and priority) may hold no
    /// task before it is removed (its next task makes it again).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    queue_idle: Duration,
    /// How long task events are kept in NATS for those who follow them
    /// (`sandmill.events.>`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    events_max_age: Duration,
    /// Bytes of task events kept in NATS; past them the oldest go (an
    /// event not yet recorded that goes is made good by the reconciler,
    /// which runs its task again).
    #[arg(long, default_value = "1GiB")]
    events_max_bytes: bytesize::ByteSize,
    /// Bytes the control plane's blob bucket (modules, inputs, large
    /// parameters) may hold; past them uploads are refused (507
    /// `storage_full`). By default none but the nats-server's own store
    /// limit (`max_file_store`).
    #[arg(long)]
    blobs_max_bytes: Option<bytesize::ByteSize>,
    /// Bytes the workers' blob bucket (outputs, logs, shuffle runs) may
    /// hold; past them a task whose output does not fit fails
    /// (`host-error`, retried as its policy says). By default none but the
    /// nats-server's own.
    #[arg(long)]
    results_max_bytes: Option<bytesize::ByteSize>,
    /// How long a stop waits for requests in progress before cutting them
    /// off.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    stop_within: Duration,
    /// Who may call the API: `tokens` (every route but /healthz needs
    /// `Authorization: Bearer`; `sandmill token create` makes them) or
    /// `open` (anyone who reaches the port: a private network only).
    #[arg(long, value_enum, env = "SANDMILL_AUTH", default_value = "tokens")]
    auth: AuthArg,
    #[command(flatten)]
    scheduler: SchedulerArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
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
    /// How long a stop waits for running tasks before leaving them (they
    /// go to another worker after the ack wait).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    stop_within: Duration,
    /// Serve this worker's Prometheus metrics at `http://ADDR/metrics`
    /// (slots busy and free, calls by kind and verdict, their durations,
    /// module compiles and loads, guest fuel and memory). Plain HTTP, no
    /// token: bind it to an address only Prometheus reaches.
    #[arg(long, env = "SANDMILL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let tls = args.http.tls()?;
    runtime()?.block_on(async {
        let stop = stop_signal();
        let server = fleet::serve(ServeConfig {
            nats: args.nats.options(),
            max_kept_module_bytes: args.sandbox.kept_bytes(),
            max_cache_bytes: args.sandbox.max_cache.0,
            database: args.database.clone(),
            cache_dir: args.cache_dir.clone(),
            ack_wait: args.ack_wait,
            max_deliveries: args.max_deliveries,
            events_max_age: args.events_max_age,
            events_max_bytes: i64::try_from(args.events_max_bytes.0).unwrap_or(i64::MAX),
            blobs_max_bytes: args.blobs_max_bytes.map(|b| b.0),
            results_max_bytes: args.results_max_bytes.map(|b| b.0),
            scheduler: sandmill_server::scheduler::SchedulerConfig {
                network: args.policy.allow_network.clone(),
                queue_idle: args.queue_idle,
                ..args.scheduler.config(Some(args.reconcile_every))
            },
        })
        .await?;
        let mut api_config = ApiConfig {
            max_body_bytes: args.max_body,
            auth: args.auth.mode(),
            ..ApiConfig::default()
        };
        args.http.apply(&mut api_config);
        let app = api::router(server.scheduler.clone(), api_config);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tell!(
            "sandmill serve: listening on {}://{} (nats {}, {} task(s) re-published)",
            args.http.scheme(),
            listener.local_addr()?,
            args.nats.options().shown(),
            server.republished
        );
        let events = server.scheduler.events().clone();
        serve_until(
            listener,
            app,
            events,
            stop,
            args.stop_within,
            args.http.header_timeout,
            tls,
        )
        .await?;
        server.scheduler.stop();
        tell!("sandmill serve: stopped (unrecorded events stay in NATS for the next start)");
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
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "worker".to_owned()
    } else {
        id
    }
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let id = args.id.clone().unwrap_or_else(default_worker_id);
    fleet::check_worker_id(&id)?;
    let labels = Labels::parse(&args.labels).context("--labels")?;
    runtime()?.block_on(async {
        let stop = stop_signal();
        let concurrency = args
            .concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        let pool = fleet::worker(WorkerConfig {
            nats: args.nats.options(),
            max_kept_module_bytes: args.sandbox.kept_bytes(),
            max_cache_bytes: args.sandbox.max_cache.0,
            id: id.clone(),
            labels: labels.clone(),
            concurrency,
            cache_dir: args.cache_dir.clone(),
            allowed_grants: args.grants.allow_grants.clone(),
        })
        .await?;
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
                let shown = format!(", metrics on http://{}/metrics", listener.local_addr()?);
                Some((fleet::serve_metrics(listener), shown))
            }
            None => None,
        };
        tell!(
            "sandmill worker {id}: {concurrency} slot(s), labels [{labels}], nats {}{}",
            args.nats.options().shown(),
            metrics.as_ref().map_or("", |(_, shown)| shown.as_str())
        );
        stopped(stop).await;
        if let Some((task, _)) = metrics {
            task.abort();
        }
        tell!("sandmill worker {id}: draining (running tasks finish, fetched ones go back)");
        match tokio::time::timeout(args.stop_within, pool.drain()).await {
            Ok(true) => tell!("sandmill worker {id}: stopped, left the registry"),
            Ok(false) => tell!("sandmill worker {id}: stopped (its registry entry will show as lost)"),
            Err(_) => tell!(
                "sandmill worker {id}: tasks still running after {}; leaving them (they go to another worker)",
                humantime::format_duration(args.stop_within)
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}
