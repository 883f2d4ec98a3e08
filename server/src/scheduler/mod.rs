//! The scheduler: accepts modules and jobs, dispatches their tasks a
//! window at a time, records what workers report, and keeps the broker in
//! step with the database. Event-driven: each part sleeps until something
//! happens (a job arrives, results come in, a timer for the reconciler).
//!
//! - [`submit`]: a job file becomes a job and its backlog, in one
//!   transaction (the outbox: a crash after it loses nothing).
//! - [`dispatch`]: keeps at most [`SchedulerConfig::window`] tasks queued
//!   or running, taking them from the backlogs of running jobs, highest
//!   priority first and in turn within a priority.
//! - [`recorder`]: records worker events in batches; sets aside an event
//!   the database refuses for good, so it never stops the others.
//! - [`reconcile`]: says why tasks wait, expires those that waited too
//!   long, and publishes again what the broker lost.
//! - [`inline`]: the upload-and-run fast path of the embedded mode.
//! - [`mapreduce`]: map-reduce jobs between their phases.
//! - [`pipeline`]: pipelines between their steps.
//! - [`schedules`]: job files that fire on a cron expression or an
//!   interval.
//!
//! Memory does not grow with the number of tasks: the backlog lives in the
//! database, and what is in flight is bounded by the window.

mod ahead;
mod blob_gc;
mod budgets;
mod ceilings;
mod dispatch;
mod inline;
mod mapreduce;
mod pipeline;
mod reconcile;
mod recorder;
mod reservations;
mod restart;
mod retention;
mod schedules;
mod submit;
mod subscriptions;
mod tickets;
mod utilization;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sandmill_runtime::blob::{BlobError, BlobStore};
use sandmill_runtime::broker::{Broker, BrokerError};
use sandmill_runtime::message::{TaskResult, WorkerInfo};
use sandmill_runtime::sandbox::net::NetRule;
use sandmill_runtime::sandbox::{CallKind, ExecError, Sandbox};
use tokio::sync::{Notify, oneshot, watch};

use crate::events::{Hub, JobCounts, What};
use crate::jobfile::{self, DEFAULT_MAX_TASKS_PER_JOB};
use crate::model::JobStatus;
use crate::store::{CancelRefused, JobRow, ModuleRow, Store, StoreError};

pub use blob_gc::{Collected, DEFAULT_BLOB_GRACE};
pub use ceilings::Ceilings;
pub use inline::{Inline, InlineRun};
pub use mapreduce::part_name;
pub(crate) use reservations::instant;
pub use reservations::{
    DEFAULT_MAX_RESERVATIONS, DEFAULT_RESERVABLE_SLOTS, DEFAULT_RESERVATION_AHEAD,
    ReservationLimits,
};
pub use retention::DEFAULT_RETAIN;
pub use schedules::firing_of;
pub use submit::{SubmitOptions, Submitted};
pub use utilization::DEFAULT_UTILIZATION_EVERY;

/// The tenant of an open server, and of what was made before tenants.
pub const DEFAULT_TENANT: &str = "default";

/// Whom a request acts for: what it makes belongs to `tenant`; it may
/// name the modules and inputs its tenant uploaded, or any (`admin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The tenant.
    pub tenant: String,
    /// Whether it acts for every tenant (and may name any upload).
    pub admin: bool,
}

impl Owner {
    /// A tenant's user.
    pub fn tenant(tenant: impl Into<String>) -> Owner {
        Owner {
            tenant: tenant.into(),
            admin: false,
        }
    }

    /// The one person of an open server, or of a command run on this
    /// machine (`sandmill run`): the default tenant, as an admin.
    pub fn local() -> Owner {
        Owner {
            tenant: DEFAULT_TENANT.to_owned(),
            admin: true,
        }
    }

    /// The tenant of a job file that was checked when it was stored (a
    /// schedule's): it may name what it named then.
    pub fn checked(tenant: &str) -> Owner {
        Owner {
            tenant: tenant.to_owned(),
            admin: true,
        }
    }

    /// Whether it may see an object of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.admin || self.tenant == tenant
    }
}
pub use subscriptions::{
    ERROR_HEADER, REPLY_HEADER, SUBSCRIPTION_ACK_WAIT, results_subject, stream_name,
};

/// How often the reconciler looks for live tasks missing from the broker,
/// by default.
pub const DEFAULT_ABSENT_EVERY: Duration = Duration::from_secs(30);
/// How long a label set's task queue may hold nothing before it is
/// removed, by default (see [`SchedulerConfig::queue_idle`]).
pub const DEFAULT_QUEUE_IDLE: Duration = Duration::from_secs(3600);

/// Tasks queued or running at once, by default: enough to keep a few
/// dozen worker slots busy between two rounds of results, small enough
/// that the broker and the server hold little.
pub const DEFAULT_WINDOW: usize = 8_192;

/// Largest parameters of one task by default (JSON bytes); larger ones are
/// refused at submit. Parameters above
/// [`INLINE_PARAMS_BYTES`](sandmill_runtime::message::INLINE_PARAMS_BYTES)
/// travel through the blob store.
pub const DEFAULT_MAX_PARAMS_BYTES: usize = 1 << 20;

/// Jobs this small are dispatched in the transaction that accepts them
/// (an interactive call waits for no dispatcher round).
pub const SMALL_JOB: i64 = 64;

/// Modules whose catalogue rows are kept in memory (they never change).
const MODULE_CACHE: usize = 1024;

/// Tasks not ended one tenant may have at once, by default.
pub const DEFAULT_QUOTA_OPEN_TASKS: i64 = 10_000_000;

/// Tasks one tenant may submit in 24 hours, by default.
pub const DEFAULT_QUOTA_TASKS_PER_DAY: i64 = 100_000_000;

/// What went wrong, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The request is wrong; the error says which field and how.
    #[error(transparent)]
    BadRequest(#[from] jobfile::Invalid),
    /// The module is not one Sandmill can run.
    #[error("{0}")]
    InvalidModule(ExecError),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The server's policy does not allow what the request asks for.
    #[error("{0}")]
    Forbidden(String),
    /// The tenant is over a quota: the message says which and by how much.
    #[error("{0}")]
    OverQuota(String),
    /// The server is at one of its own limits for now (the message names
    /// it); the same request may succeed shortly.
    #[error("{0}")]
    Busy(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A background task of the server failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Tasks one job may have.
    pub max_tasks_per_job: u64,
    /// Largest parameters of one task, in bytes.
    pub max_params_bytes: usize,
    /// Tasks queued or running at once (see [`DEFAULT_WINDOW`]).
    pub window: usize,
    /// How often the reconciler looks for live tasks whose messages the
    /// broker lost (see [`DEFAULT_ABSENT_EVERY`]).
    pub absent_every: Duration,
    /// How long a task queue of a label set (and priority) may hold no
    /// task before the reconciler removes it (see [`DEFAULT_QUEUE_IDLE`];
    /// brokers with such queues only).
    pub queue_idle: Duration,
    /// Live events kept for clients that reconnect (see
    /// [`DEFAULT_EVENT_BUFFER`](crate::events::DEFAULT_EVENT_BUFFER)).
    pub event_buffer: usize,
    /// How long a durable subscription's message may go without a sign of
    /// life before JetStream delivers it again (a server that died holding
    /// it); set when the subscription's consumer is created (see
    /// [`SUBSCRIPTION_ACK_WAIT`]).
    pub subscription_ack_wait: Duration,
    /// Where jobs granted `network` may connect; a job granting it is
    /// refused (403) when empty, the default.
    pub network: Vec<NetRule>,
    /// How long ended jobs are kept (see [`DEFAULT_RETAIN`]); `None`
    /// keeps them until deleted.
    pub retain: Option<Duration>,
    /// How long an unnamed blob is kept (see [`DEFAULT_BLOB_GRACE`]);
    /// `None` keeps every blob.
    pub blob_grace: Option<Duration>,
    /// The most a job may ask for.
    pub ceilings: Ceilings,
    /// Each tenant's quotas where an operator set none
    /// (`sandmill quota set`).
    pub quota: crate::store::Quota,
    /// Uploaded modules compiled at once (the rest wait their turn).
    pub max_compiles: usize,
    /// The longest an uploaded module may take to compile; past it the
    /// upload is refused (and nothing of it is kept).
    pub compile_timeout: Duration,
    /// What reservations may book.
    pub reservations: ReservationLimits,
    /// How often utilization is sampled (see
    /// [`DEFAULT_UTILIZATION_EVERY`]).
    pub utilization_every: Duration,
}

/// Uploaded modules compiled at once by default.
pub const DEFAULT_MAX_COMPILES: usize = 2;
/// The longest an uploaded module may take to compile by default.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_tasks_per_job: DEFAULT_MAX_TASKS_PER_JOB,
            max_params_bytes: DEFAULT_MAX_PARAMS_BYTES,
            window: DEFAULT_WINDOW,
            absent_every: DEFAULT_ABSENT_EVERY,
            queue_idle: DEFAULT_QUEUE_IDLE,
            event_buffer: crate::events::DEFAULT_EVENT_BUFFER,
            subscription_ack_wait: SUBSCRIPTION_ACK_WAIT,
            network: Vec::new(),
            retain: Some(DEFAULT_RETAIN),
            blob_grace: Some(DEFAULT_BLOB_GRACE),
            ceilings: Ceilings::default(),
            quota: crate::store::Quota {
                open_tasks: Some(DEFAULT_QUOTA_OPEN_TASKS),
                tasks_per_day: Some(DEFAULT_QUOTA_TASKS_PER_DAY),
                cpu_seconds_per_day: None,
                storage_bytes: None,
            },
            max_compiles: DEFAULT_MAX_COMPILES,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            reservations: ReservationLimits::default(),
            utilization_every: DEFAULT_UTILIZATION_EVERY,
        }
    }
}

/// The control plane's core. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: Arc<dyn Broker>,
    blobs: Arc<dyn BlobStore>,
    sandbox: Sandbox,
    config: SchedulerConfig,
    /// Bumped whenever a job reaches a final status.
    finished: watch::Sender<u64>,
    /// Live events of tasks and jobs.
    events: Hub,
    /// Tasks queued or running (the window's fill), kept by whoever
    /// changes it: dispatch adds, results and cancels take away.
    live: AtomicI64,
    /// The hour whose quota counts were last pruned.
    pruned_hour: AtomicI64,
    /// Wakes the dispatcher.
    dispatch: Notify,
    /// Wakes the schedules' loop (one was created, paused or deleted).
    schedules: Notify,
    /// Schedules whose controller is being called.
    controllers: Mutex<std::collections::HashSet<String>>,
    /// Callers waiting for one task's final result (`/v1/run`).
    waiters: Mutex<HashMap<i64, oneshot::Sender<TaskResult>>>,
    /// Catalogue rows of modules seen lately.
    modules: Mutex<HashMap<String, ModuleRow>>,
    /// Turns true when the server stops: loops that wait out an outage
    /// give up.
    stopping: watch::Sender<bool>,
    /// The upload-and-run fast path, where this process runs guests.
    inline: OnceLock<Inline>,
    /// NATS, for subscriptions (the fleet's, or `sandmill dev --nats`).
    nats: OnceLock<async_nats::Client>,
    /// The consumers of running subscriptions, by name.
    consumers: Mutex<HashMap<String, subscriptions::Consumer>>,
    /// The key of the task tickets (see [`Scheduler::ticket`]), the same
    /// for every process on the database; set by `start`.
    ticket_key: OnceLock<Vec<u8>>,
    /// Room for compiling uploads ([`SchedulerConfig::max_compiles`]).
    compiles: Arc<tokio::sync::Semaphore>,
    /// What is reserved now, and the tasks in the reserved lane.
    reserved: Mutex<reservations::Reserved>,
    /// Tenants past their quota of time.
    spent: Mutex<budgets::Spent>,
    /// True while a blob collection marks (see [`blob_gc`]).
    marking: tokio::sync::RwLock<bool>,
    /// How much work waits in each of the broker's task queues.
    ahead: Mutex<ahead::Ahead>,
}

impl Scheduler {
    /// A scheduler over these parts. Call [`start`](Self::start) to count
    /// what is in flight before dispatching.
    pub fn new(
        store: Store,
        broker: Arc<dyn Broker>,
        blobs: Arc<dyn BlobStore>,
        sandbox: Sandbox,
        config: SchedulerConfig,
    ) -> Self {
        let compiles = Arc::new(tokio::sync::Semaphore::new(config.max_compiles.max(1)));
        Scheduler {
            inner: Arc::new(Inner {
                store,
                broker,
                blobs,
                sandbox,
                finished: watch::channel(0).0,
                events: Hub::new(config.event_buffer),
                config,
                live: AtomicI64::new(0),
                pruned_hour: AtomicI64::new(0),
                dispatch: Notify::new(),
                schedules: Notify::new(),
                controllers: Mutex::default(),
                waiters: Mutex::default(),
                modules: Mutex::default(),
                stopping: watch::channel(false).0,
                inline: OnceLock::new(),
                nats: OnceLock::new(),
                consumers: Mutex::default(),
                ticket_key: OnceLock::new(),
                compiles,
                reserved: Mutex::default(),
                spent: Mutex::default(),
                marking: tokio::sync::RwLock::new(false),
                ahead: Mutex::default(),
            }),
        }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// Live events of tasks and jobs.
    pub fn events(&self) -> &Hub {
        &self.inner.events
    }

    /// A job changed outside the recorder (it ended, or was blocked):
    /// waiters are woken, and live-event clients told its status and counts.
    pub(crate) fn job_changed(&self, job_id: i64) {
        self.inner.finished.send_modify(|n| *n += 1);
        self.announce_job(job_id);
    }

    /// Tells live-event clients a job's status and counts, as its row says.
    fn announce_job(&self, job_id: i64) {
        let scheduler = self.clone();
        tokio::spawn(async move {
            match scheduler.inner.store.job(job_id).await {
                Ok(Some(job)) => scheduler
                    .inner
                    .events
                    .push([(job_id, What::Job(job_counts(&job)))]),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(job_id, %error, "reading a job that changed failed; live clients miss its change")
                }
            }
        });
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    /// Tasks queued or running, as the dispatcher counts them.
    pub fn in_flight(&self) -> i64 {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Lets upload-and-run calls take the fast path (see [`Inline`]); the
    /// embedded mode does, where guests run in this process.
    pub fn set_inline(&self, inline: Inline) {
        let _ = self.inner.inline.set(inline);
    }

    /// Tells every loop that waits out an outage to give up: the server is
    /// stopping.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    /// Counts what is in flight (after a restart), so dispatch fills the
    /// window from there.
    pub async fn start(&self) -> Result<(), SchedulerError> {
        let key = self
            .inner
            .store
            .setting_or("ticket-key", || {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).expect("the system gives no randomness");
                hex::encode(key)
            })
            .await?;
        let _ = self
            .inner
            .ticket_key
            .set(hex::decode(&key).unwrap_or_else(|_| key.into_bytes()));
        let live = self.inner.store.live_count().await?;
        self.inner.live.store(live, Ordering::Relaxed);
        Ok(())
    }

    /// Validates a module (it must load in the sandbox), stores its bytes
    /// and records it as `tenant`'s upload. Idempotent; a rejected module
    /// changes nothing.
    pub async fn upload_module(
        &self,
        tenant: &str,
        bytes: bytes::Bytes,
    ) -> Result<ModuleRow, SchedulerError> {
        let sandbox = self.inner.sandbox.clone();
        let size = bytes.len() as i64;
        // Compiles take turns, waited for up to the compile timeout; one
        // that runs past the timeout is refused here and keeps its turn
        // until it ends (it cannot be stopped), so the cap holds.
        let limit = self.inner.config.compile_timeout;
        let turn =
            match tokio::time::timeout(limit, self.inner.compiles.clone().acquire_owned()).await {
                Ok(turn) => {
                    turn.map_err(|e| SchedulerError::Internal(format!("no compile turn: {e}")))?
                }
                Err(_) => {
                    return Err(SchedulerError::Busy(format!(
                        "{} uploaded modules were compiling, the server's limit (--max-compiles), \
                     and none ended within {} (--compile-timeout); try again shortly",
                        self.inner.config.max_compiles,
                        humantime::format_duration(limit)
                    )));
                }
            };
        // At the background priority, as are the bytes' copy, hash and
        // write below: the answers go first.
        let compile = crate::background::run("compile", move || {
            let _turn = turn;
            let module = sandbox.load(&bytes)?;
            // The body's own buffer where no one else holds it (no copy).
            Ok((module, Vec::from(bytes)))
        });
        let (module, bytes) = tokio::time::timeout(limit, compile)
            .await
            .map_err(|_| {
                SchedulerError::InvalidModule(ExecError::InvalidModule(format!(
                    "compiling it took over {} (the server's --compile-timeout)",
                    humantime::format_duration(limit)
                )))
            })?
            .map_err(|e| SchedulerError::Internal(format!("module check: {e}")))?
            .map_err(SchedulerError::InvalidModule)?;
        let exports: Vec<CallKind> = CallKind::ALL
            .into_iter()
            .filter(|k| module.exports(*k))
            .collect();
        drop(module);
        let hash = self.inner.blobs.put_in_background(bytes).await?;
        self.inner.store.put_module(&hash, size, &exports).await?;
        // Modules are not held against storage (never collected).
        self.inner.store.put_upload(tenant, &hash, 0).await?;
        self.module(&hash)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("module {hash}")))
    }

    /// A module's catalogue row (kept in memory once seen: it never
    /// changes).
    pub async fn module(&self, hash: &str) -> Result<Option<ModuleRow>, SchedulerError> {
        if let Some(row) = self.lock_modules().get(hash) {
            return Ok(Some(row.clone()));
        }
        let row = self.inner.store.module(hash).await?;
        if let Some(row) = &row {
            let mut modules = self.lock_modules();
            if modules.len() >= MODULE_CACHE {
                modules.clear();
            }
            modules.insert(hash.to_owned(), row.clone());
        }
        Ok(row)
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModuleRow>> {
        self.inner.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an input blob as `tenant`'s upload; returns its hash.
    pub async fn upload_input(&self, tenant: &str, bytes: &[u8]) -> Result<String, SchedulerError> {
        self.room_for_input(tenant, bytes).await?;
        let hash = self.inner.blobs.put(bytes).await?;
        self.inner
            .store
            .put_upload(tenant, &hash, bytes.len() as i64)
            .await?;
        Ok(hash)
    }

    /// Refuses (429) an input that would take `tenant` past its storage
    /// quota, unless it uploaded the same bytes already (counted once).
    async fn room_for_input(&self, tenant: &str, bytes: &[u8]) -> Result<(), SchedulerError> {
        let store = &self.inner.store;
        let Some(max) = store
            .quota(tenant)
            .await?
            .or(self.inner.config.quota)
            .storage_bytes
        else {
            return Ok(());
        };
        let hour = crate::store::now_ms() / crate::store::HOUR_MS;
        let used = store.usage(tenant, hour).await?.stored_bytes;
        let size = bytes.len() as i64;
        if used + size <= max
            || store
                .uploaded(tenant, &sandmill_runtime::blob::hash(bytes))
                .await?
        {
            return Ok(());
        }
        let show = |n: i64| bytesize::ByteSize(u64::try_from(n).unwrap_or(0));
        Err(SchedulerError::OverQuota(format!(
            "tenant {tenant} keeps {} of outputs, logs and inputs; this input of {} would pass its quota of {} (storage); delete jobs to make room",
            show(used),
            show(size),
            show(max),
        )))
    }

    /// [`upload_input`](Self::upload_input) of bytes the caller gives away
    /// (an upload's body): hashed and written at the background priority.
    pub async fn upload_input_owned(
        &self,
        tenant: &str,
        bytes: Vec<u8>,
    ) -> Result<String, SchedulerError> {
        self.room_for_input(tenant, &bytes).await?;
        let size = bytes.len() as i64;
        let hash = self.inner.blobs.put_in_background(bytes).await?;
        self.inner.store.put_upload(tenant, &hash, size).await?;
        Ok(hash)
    }

    /// Whether `owner` may name the blob `hash` (a module or an input):
    /// an admin any, a tenant's user those its tenant uploaded.
    pub async fn may_name(&self, owner: &Owner, hash: &str) -> Result<bool, SchedulerError> {
        Ok(owner.admin || self.inner.store.uploaded(&owner.tenant, hash).await?)
    }

    /// Cancels a running job: its live tasks and its backlog.
    pub async fn cancel(&self, job_id: i64) -> Result<(), SchedulerError> {
        // A pipeline's running steps first (each a job of its own), then
        // the pipeline: no step is planned after it ended.
        if let Some(job) = self.inner.store.job(job_id).await?
            && job.kind.0 == crate::model::JobKind::Pipeline
            && job.status() == JobStatus::Running
        {
            for step in self.inner.store.steps_of(job_id, i64::MAX).await? {
                if step.status() != JobStatus::Running {
                    continue;
                }
                if let Ok(live) = self.inner.store.cancel_job(step.id).await? {
                    self.inner.live.fetch_sub(live, Ordering::Relaxed);
                    self.stop_job(step.id).await;
                }
            }
        }
        match self.inner.store.cancel_job(job_id).await? {
            Ok(live) => {
                self.inner.live.fetch_sub(live, Ordering::Relaxed);
                self.job_changed(job_id);
                self.inner.dispatch.notify_one();
                self.stop_job(job_id).await;
                Ok(())
            }
            Err(CancelRefused::NotFound) => Err(SchedulerError::NotFound(format!("job {job_id}"))),
            Err(CancelRefused::Finished(status)) => Err(SchedulerError::Conflict(format!(
                "job {job_id} already finished ({status})"
            ))),
        }
    }

    /// A job ended early with every live task of it recorded as ended
    /// (cancelled, or failed for good): its queued messages are dropped
    /// and workers told to interrupt its running attempts and drop the
    /// ones they fetched, so its slots are free at once (best effort).
    async fn stop_job(&self, job_id: i64) {
        self.forget(job_id).await;
        if let Err(error) = self.inner.broker.cancel_jobs(&[job_id]).await {
            tracing::warn!(job_id, %error, "could not tell workers the job ended; its running attempts run on and are ignored");
        }
    }

    /// Drops the queued messages of a job that ended early, so workers do
    /// not run its tasks for nothing (best effort).
    async fn forget(&self, job_id: i64) {
        self.unreserve_job(job_id);
        let labels = match self.inner.store.job(job_id).await {
            Ok(Some(job)) => job.labels.0,
            _ => Default::default(),
        };
        if let Err(error) = self.inner.broker.forget_job(job_id, &labels).await {
            tracing::warn!(job_id, %error, "could not drop the job's queued messages; workers will run and ignore them");
        }
    }

    /// A page of the worker registry, by id: the first `limit` after
    /// `after`.
    pub async fn workers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkerInfo>, SchedulerError> {
        Ok(self.inner.broker.workers(after, limit).await?)
    }

    /// Waits until the job has a final status or `timeout` passes; returns
    /// the job as it is then.
    pub async fn wait(&self, job_id: i64, timeout: Duration) -> Result<JobRow, SchedulerError> {
        let mut finished = self.inner.finished.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self
                .inner
                .store
                .job(job_id)
                .await?
                .ok_or_else(|| SchedulerError::NotFound(format!("job {job_id}")))?;
            if job.status() != JobStatus::Running {
                return Ok(job);
            }
            if tokio::time::timeout_at(deadline, finished.changed())
                .await
                .is_err()
            {
                return Ok(job);
            }
        }
    }

    /// Registers a caller waiting for `task_id`'s final result.
    fn add_waiter(&self, task_id: i64) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(task_id, tx);
        Waiter {
            scheduler: self.clone(),
            task_id,
            result: rx,
            closed: false,
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<i64, oneshot::Sender<TaskResult>>> {
        self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job row's status and counts, as a live event carries them.
pub(crate) fn job_counts(job: &JobRow) -> JobCounts {
    JobCounts {
        parent_id: job.parent_id,
        status: job.status(),
        total: job.total_tasks,
        succeeded: job.succeeded,
        failed: job.failed,
        cancelled: job.cancelled,
    }
}

/// A caller waiting for one task's final result; dropping it stops the
/// wait (and forgets the registration).
pub struct Waiter {
    scheduler: Scheduler,
    task_id: i64,
    result: oneshot::Receiver<TaskResult>,
    /// The sender is gone (another waiter took the place): only the
    /// task's row can tell.
    closed: bool,
}

impl Waiter {
    /// The task's final result as recorded, or `None` if `timeout` passed
    /// first.
    pub async fn result(mut self, timeout: Duration) -> Option<TaskResult> {
        tokio::time::timeout(timeout, &mut self.result)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The task's final result if it comes within `timeout`; `None` if
    /// not (ask again, or read the task's row: a result recorded before
    /// the wait began, or ended outside the recorder, comes to no waiter).
    pub async fn next(&mut self, timeout: Duration) -> Option<TaskResult> {
        if self.closed {
            tokio::time::sleep(timeout).await;
            return None;
        }
        match tokio::time::timeout(timeout, &mut self.result).await {
            Ok(Ok(result)) => {
                self.closed = true;
                Some(result)
            }
            Ok(Err(_)) => {
                self.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// The task waited for.
    pub fn task_id(&self) -> i64 {
        self.task_id
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.scheduler.lock_waiters().remove(&self.task_id);
    }
}
