//! Flags shared by the commands that run a scheduler (`dev`, `serve`,
//! `run`), and the bounded stop of the servers.

use std::time::Duration;

use clap::Args;
use sandmill_runtime::sandbox::Grants;
use sandmill_runtime::sandbox::net::NetRule;
use sandmill_server::events::DEFAULT_EVENT_BUFFER;
use sandmill_server::jobfile::DEFAULT_MAX_TASKS_PER_JOB;
use sandmill_server::scheduler::{
    DEFAULT_ABSENT_EVERY, DEFAULT_MAX_PARAMS_BYTES, DEFAULT_WINDOW, SchedulerConfig,
};
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
            event_buffer: self.event_buffer.max(1),
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

/// Serves `app` on `listener` until `stop`, then ends the live event
/// streams of `events`; requests still running `grace` after the stop
/// are cut off (a dependency that hangs them must not hang the stop).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    events: sandmill_server::events::Hub,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let stopping = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stopped(stopping).await;
        events.close();
    });
    tokio::select! {
        served = server => served?,
        () = async { stopped(stop).await; tokio::time::sleep(grace).await } => {
            tell!("requests still running {} after the stop; cutting them off", humantime::format_duration(grace));
        }
    }
    Ok(())
}
