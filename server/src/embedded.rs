//! The embedded mode: scheduler, in-process broker, blob store in a
//! directory and N workers, all in this process. Nothing to install.
//!
//! The data directory holds `sandmill.db` (SQLite), `blobs/` and the
//! compiled-module cache. Starting again on the same directory picks up
//! where the last process stopped: queued and running tasks are published
//! again, and each task is recorded once. Stopping takes a bounded time
//! whatever the database is doing, and says what it could not record.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sandmill_runtime::blob::DirBlobStore;
use sandmill_runtime::broker::{DEFAULT_EVENT_BYTES, MemoryBroker};
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::WorkerInfo;
use sandmill_runtime::sandbox::{Sandbox, SandboxConfig};
use sandmill_runtime::worker::{Worker, WorkerPool};
use tokio::task::JoinSet;

use crate::scheduler::{Inline, Scheduler, SchedulerConfig};
use crate::store::Store;

/// How long a stop waits by default for running tasks and the recorder
/// before it gives up on them (they run again on the next start).
pub const DEFAULT_STOP_WITHIN: Duration = Duration::from_secs(10);

/// How to start an embedded instance.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Where the database, blobs and module cache live.
    pub data_dir: PathBuf,
    /// A database URL instead of `<data_dir>/sandmill.db`.
    pub database: Option<String>,
    /// Worker loops (default: one per core).
    pub workers: usize,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// The grants its worker slots honour (see
    /// [`SandboxConfig::allowed_grants`]).
    pub allowed_grants: Vec<String>,
    /// Bytes of modules kept loaded (see
    /// [`SandboxConfig::max_kept_module_bytes`]).
    pub max_kept_module_bytes: usize,
    /// Bytes of compiled modules kept on disk (see
    /// [`SandboxConfig::max_cache_bytes`]).
    pub max_cache_bytes: u64,
    /// What its worker slots offer: as on a fleet, a task needing labels
    /// they lack waits (and its job says why) until its queue timeout.
    pub labels: Labels,
}

impl EmbeddedConfig {
    /// Defaults for a data directory: SQLite inside it, a worker per core.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            database: None,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            scheduler: SchedulerConfig::default(),
            allowed_grants: SandboxConfig::default().allowed_grants,
            max_kept_module_bytes: SandboxConfig::default().max_kept_module_bytes,
            max_cache_bytes: SandboxConfig::default().max_cache_bytes,
            labels: Labels::default(),
        }
    }
}

/// A running embedded instance.
pub struct Embedded {
    /// The control plane.
    pub scheduler: Scheduler,
    broker: Arc<MemoryBroker>,
    tasks: JoinSet<()>,
    workers: WorkerPool,
}

/// What a stop could not finish.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Worker slots still running a task when the stop gave up on them.
    pub workers_left_running: bool,
    /// Results that were never recorded (their tasks run again on the
    /// next start).
    pub unrecorded: usize,
}

/// How far below the process's CPU priority the embedded worker slots
/// run (see [`WorkerPool::start`]).
pub const BATCH_NICE: i32 = 10;

/// Starts an embedded instance; returns once the workers are running.
/// Queued work is published again in the background, then the dispatcher
/// starts.
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
        allowed_grants: config.allowed_grants.clone(),
        max_kept_module_bytes: config.max_kept_module_bytes,
        max_cache_bytes: config.max_cache_bytes,
        ..SandboxConfig::default()
    })?;
    // The window bounds the queue; the rest is room for small jobs, which
    // are dispatched as they are accepted.
    let broker = Arc::new(
        MemoryBroker::with_capacity(config.scheduler.window * 2 + 4_096, DEFAULT_EVENT_BYTES)
            .with_offers(config.labels.clone()),
    );
    let scheduler = Scheduler::new(
        store,
        broker.clone(),
        blobs.clone(),
        sandbox.clone(),
        config.scheduler.clone(),
    );
    scheduler.start().await?;
    // Upload-and-run calls that wait run on the request's thread, one per
    // core at most (the fast path; see `scheduler::inline`).
    scheduler.set_inline(Inline::new(
        Worker::new(
            "embedded/inline",
            sandbox.clone(),
            broker.clone(),
            blobs.clone(),
        ),
        config.workers.max(1),
        scheduler.store().run_writer()?,
    ));
    let mut tasks = JoinSet::new();
    tasks.spawn(scheduler.clone().record_events());
    tokio::spawn(scheduler.clone().watch_mapreduce());
    tokio::spawn(scheduler.clone().run_schedules());
    tokio::spawn(scheduler.clone().run_retention());
    tokio::spawn(scheduler.clone().run_utilization());
    tokio::spawn(scheduler.clone().run_blob_collection());
    // Says why labelled jobs wait, and times them out, as on the fleet.
    tokio::spawn(scheduler.clone().reconcile());
    // The slots run sweeps: batch work, below the API and the fast path
    // in the CPU's eyes, so a call does not wait for a core behind them.
    let workers = WorkerPool::start(
        WorkerInfo::starting("embedded", config.labels.clone(), config.workers.max(1)),
        sandbox,
        broker.clone(),
        blobs.clone(),
        blobs,
        BATCH_NICE,
    )?;
    let background = scheduler.clone();
    tokio::spawn(async move {
        // Stopped meanwhile (a short `sandmill run`): the database closed
        // under it, which is no failure.
        if let Err(error) = background.recover().await
            && !background.is_stopping()
        {
            tracing::error!(%error, "publishing queued tasks again failed; they run after the next start");
        }
        background.dispatch().await;
    });
    Ok(Embedded {
        scheduler,
        broker,
        tasks,
        workers,
    })
}

fn db_path(data: &Path) -> PathBuf {
    data.join("sandmill.db")
}

impl Embedded {
    /// Stops: workers finish what they run (for up to half of `within`),
    /// the recorder records what they reported (for the rest), and the
    /// database is closed. Whatever is left then is given up on, and said.
    pub async fn shutdown(mut self, within: Duration) -> Stopped {
        let mut stopped = Stopped::default();
        let half = within / 2;
        self.scheduler.stop();
        if tokio::time::timeout(half, self.workers.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                "workers still running tasks; leaving them (their tasks run again on the next start)"
            );
            stopped.workers_left_running = true;
        }
        // The recorder takes what is left in the queue, then sees it closed.
        self.broker.close();
        let recorded = tokio::time::timeout(half, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if recorded.is_err() {
            self.tasks.abort_all();
        }
        stopped.unrecorded = self.broker.unrecorded();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.scheduler.store().close()).await;
        stopped
    }
}
