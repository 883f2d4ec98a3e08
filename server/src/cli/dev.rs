//! `sandmill dev`: the HTTP API, an in-process broker and blob store, and
//! workers, in one process on one data folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sandmill_runtime::labels::Labels;
use sandmill_server::api::auth::LocalGuard;
use sandmill_server::api::{self, ApiConfig, DEFAULT_MAX_BODY_BYTES};
use sandmill_server::embedded::{self, DEFAULT_STOP_WITHIN, EmbeddedConfig};

use super::out::tell;
use super::settings::{
    AuthArg, GrantArgs, HttpArgs, PolicyArgs, SandboxArgs, SchedulerArgs, serve_until, stop_signal,
};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to serve the API on.
    #[arg(long, env = "SANDMILL_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Data folder: database, blobs, compiled modules.
    #[arg(long, env = "SANDMILL_DATA", default_value = ".sandmill")]
    data: PathBuf,
    /// Worker loops (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Labels its workers offer, k=v,...: as on a fleet, a job needing
    /// labels they lack waits (its status says why) until its queue
    /// timeout.
    #[arg(long, env = "SANDMILL_LABELS", default_value = "")]
    labels: String,
    /// A database URL (postgres://...) instead of SQLite in the data folder.
    #[arg(long, env = "SANDMILL_DATABASE")]
    database: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body: usize,
    /// How long a stop (Ctrl-C, SIGTERM) waits for requests, running tasks
    /// and the recorder before giving up on them; what it gives up on runs
    /// again on the next start.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    stop_within: Duration,
    /// A NATS server (nats://host:port) for subscriptions; the work queue
    /// stays in-process.
    #[arg(long, env = "SANDMILL_NATS")]
    nats: Option<String>,
    /// Who may call the API: `open` (one person: loopback only, and
    /// requests from web pages are refused) or `tokens` (every route but
    /// /healthz needs `Authorization: Bearer`; `sandmill token create`).
    #[arg(long, value_enum, env = "SANDMILL_AUTH", default_value = "open")]
    auth: AuthArg,
    /// More `host:port` names an open server answers to (say, a proxy's
    /// in front of it): requests naming another in `Host` or `Origin` are
    /// refused.
    #[arg(long, value_name = "HOST:PORT")]
    allow_host: Vec<String>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    grants: GrantArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.auth == AuthArg::Open && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: an open server listens on loopback only; use --auth tokens to listen there",
            args.listen
        );
    }
    let tls = args.http.tls()?;
    runtime.block_on(async {
        let stop = stop_signal();
        let mut config = EmbeddedConfig::new(&args.data);
        config.database = args.database.clone();
        config.scheduler = args.scheduler.config(None);
        config.scheduler.network = args.policy.allow_network.clone();
        config.allowed_grants = args.grants.allow_grants.clone();
        config.max_kept_module_bytes = args.sandbox.kept_bytes();
        config.max_cache_bytes = args.sandbox.max_cache.0;
        if let Some(workers) = args.workers {
            config.workers = workers;
        }
        config.labels = Labels::parse(&args.labels).context("--labels")?;
        let instance = embedded::start(config).await?;
        if let Some(urls) = &args.nats {
            let client = sandmill_server::fleet::NatsOptions {
                urls: urls.clone(),
                ..Default::default()
            }
            .connect()
            .await?;
            instance.scheduler.set_nats(client);
            instance.scheduler.run_subscriptions().await?;
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let bound = listener.local_addr()?;
        let mut api_config = ApiConfig {
            max_body_bytes: args.max_body,
            auth: args.auth.mode(),
            local: (args.auth == AuthArg::Open).then(|| {
                let mut guard = LocalGuard::for_listener(bound);
                guard.hosts.extend(args.allow_host.iter().cloned());
                guard
            }),
            ..ApiConfig::default()
        };
        args.http.apply(&mut api_config);
        let app = api::router(instance.scheduler.clone(), api_config);
        tell!(
            "sandmill dev: listening on {}://{} (data: {})",
            args.http.scheme(),
            listener.local_addr()?,
            args.data.display()
        );
        let within = if args.stop_within.is_zero() { DEFAULT_STOP_WITHIN } else { args.stop_within };
        let events = instance.scheduler.events().clone();
        serve_until(listener, app, events, stop, within / 3, args.http.header_timeout, tls).await?;
        tell!("sandmill dev: stopping");
        let stopped = instance.shutdown(within * 2 / 3).await;
        if stopped.workers_left_running {
            tell!("sandmill dev: tasks still running were left; they run again on the next start");
        }
        if stopped.unrecorded > 0 {
            tell!(
                "sandmill dev: {} result(s) could not be recorded; those tasks run again on the next start",
                stopped.unrecorded
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
