//! `sandmill dev`: the HTTP API, an in-process broker and blob store, and
//! workers, in one process on one data folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sandmill_server::api::{self, ApiConfig, DEFAULT_MAX_BODY_BYTES};
use sandmill_server::embedded::{self, EmbeddedConfig};

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
    /// A database URL (postgres://...) instead of SQLite in the data folder.
    #[arg(long, env = "SANDMILL_DATABASE")]
    database: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body: usize,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut config = EmbeddedConfig::new(&args.data);
        config.database = args.database.clone();
        if let Some(workers) = args.workers {
            config.workers = workers;
        }
        let instance = embedded::start(config).await?;
        let app = api::router(
            instance.engine.clone(),
            ApiConfig {
                max_body_bytes: args.max_body,
                ..ApiConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "sandmill dev: listening on http://{} (data: {})",
            listener.local_addr()?,
            args.data.display()
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving the API")?;
        eprintln!("sandmill dev: shutting down");
        instance.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
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
