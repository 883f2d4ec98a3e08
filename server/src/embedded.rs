//! The embedded mode: control plane, in-process broker, blob store in a
//! directory and N workers, all in this process. Nothing to install.
//!
//! The data directory holds `sandmill.db` (SQLite), `blobs/` and the
//! compiled-module cache. Starting again on the same directory picks up
//! where the last process stopped: queued and running tasks are published
//! again, and each task is recorded once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sandmill_runtime::blob::DirBlobStore;
use sandmill_runtime::broker::MemoryBroker;
use sandmill_runtime::message::WorkerInfo;
use sandmill_runtime::sandbox::{Sandbox, SandboxConfig};
use sandmill_runtime::worker::WorkerPool;
use tokio::task::JoinSet;

use crate::engine::{Engine, EngineConfig};
use crate::store::Store;

/// How to start an embedded instance.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Where the database, blobs and module cache live.
    pub data_dir: PathBuf,
    /// A database URL instead of `<data_dir>/sandmill.db`.
    pub database: Option<String>,
    /// Worker loops (default: one per core).
    pub workers: usize,
}

impl EmbeddedConfig {
    /// Defaults for a data directory: SQLite inside it, a worker per core.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            database: None,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// A running embedded instance.
pub struct Embedded {
    /// The control plane.
    pub engine: Engine,
    broker: Arc<MemoryBroker>,
    tasks: JoinSet<()>,
    workers: WorkerPool,
}

/// Starts an embedded instance; returns once queued work is re-published
/// and workers are running.
pub async fn start(config: EmbeddedConfig) -> anyhow::Result<Embedded> {
    use anyhow::Context;
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let url = config
        .database
        .clone()
        .unwrap_or_else(|| db_path(data).display().to_string());
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))?;
    let blobs = Arc::new(DirBlobStore::new(data.join("blobs"))?);
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(data.join("module-cache")),
        ..SandboxConfig::default()
    })?;
    let broker = Arc::new(MemoryBroker::new());
    let engine = Engine::new(
        store,
        broker.clone(),
        blobs.clone(),
        sandbox.clone(),
        EngineConfig::default(),
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(engine.clone().record_events());
    engine.recover().await?;
    let workers = WorkerPool::start(
        WorkerInfo::starting("embedded", Default::default(), config.workers.max(1)),
        sandbox,
        broker.clone(),
        blobs.clone(),
        blobs,
    )?;
    Ok(Embedded {
        engine,
        broker,
        tasks,
        workers,
    })
}

fn db_path(data: &Path) -> PathBuf {
    data.join("sandmill.db")
}

impl Embedded {
    /// Stops workers and the recorder and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.workers.drain().await;
        self.broker.close();
        while self.tasks.join_next().await.is_some() {}
    }
}
