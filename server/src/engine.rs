//! The scheduler side of the control plane: accepts modules and jobs,
//! publishes tasks, records what workers report, and after a restart
//! re-publishes what was queued. Event-driven: it sleeps until the broker
//! hands it events, then records them in batches, one transaction each.
//!
//! The database is written before the broker is told (an outbox): a crash
//! between the two loses nothing, because [`Engine::recover`] re-publishes
//! every queued task and the broker drops duplicates.

use std::sync::Arc;
use std::time::Duration;

use sandmill_runtime::blob::BlobStore;
use sandmill_runtime::broker::{Broker, BrokerError};
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{WorkerInfo, now_ms};
use sandmill_runtime::sandbox::{CallKind, ExecError, Sandbox};
use tokio::sync::watch;

use crate::jobfile::{self, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_TASKS_PER_JOB, JobFile};
use crate::store::{CancelRefused, JobRow, ModuleRow, NewJob, NewTask, Store, StoreError};

/// Events recorded per transaction at most.
const RECORD_BATCH: usize = 4_096;
/// How often the reconciler checks who can take queued tasks.
const WAITING_EVERY: Duration = Duration::from_secs(2);
/// How often the reconciler looks for live tasks missing from the broker,
/// by default.
pub const DEFAULT_ABSENT_EVERY: Duration = Duration::from_secs(30);

/// What went wrong, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// The module is not one Sandmill can run.
    #[error("{0}")]
    InvalidModule(ExecError),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The blob store failed.
    #[error("{0}")]
    Blob(String),
}

impl From<jobfile::Invalid> for EngineError {
    fn from(invalid: jobfile::Invalid) -> Self {
        EngineError::BadRequest(invalid.0)
    }
}

/// Settings of the control plane.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tasks one job may have.
    pub max_tasks_per_job: usize,
    /// How often the reconciler looks for live tasks whose messages the
    /// broker lost (see [`DEFAULT_ABSENT_EVERY`]).
    pub absent_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_tasks_per_job: DEFAULT_MAX_TASKS_PER_JOB,
            absent_every: DEFAULT_ABSENT_EVERY,
        }
    }
}

/// The control plane's core. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: Arc<dyn Broker>,
    blobs: Arc<dyn BlobStore>,
    sandbox: Sandbox,
    config: EngineConfig,
    /// Bumped whenever a job reaches a final status.
    finished: watch::Sender<u64>,
}

impl Engine {
    /// An engine over these parts.
    pub fn new(
        store: Store,
        broker: Arc<dyn Broker>,
        blobs: Arc<dyn BlobStore>,
        sandbox: Sandbox,
        config: EngineConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                store,
                broker,
                blobs,
                sandbox,
                config,
                finished: watch::channel(0).0,
            }),
        }
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// Validates a module (it must load in the sandbox), stores its bytes
    /// and records it. Idempotent; a rejected module changes nothing.
    pub async fn upload_module(&self, bytes: &[u8]) -> Result<ModuleRow, EngineError> {
        let sandbox = self.inner.sandbox.clone();
        let owned = bytes.to_vec();
        let module = tokio::task::spawn_blocking(move || sandbox.load(&owned))
            .await
            .map_err(|e| EngineError::Blob(format!("module check failed: {e}")))?
            .map_err(EngineError::InvalidModule)?;
        let exports: Vec<&str> = [
            CallKind::Map,
            CallKind::Reduce,
            CallKind::Preprocess,
            CallKind::Task,
        ]
        .into_iter()
        .filter(|k| module.exports(*k))
        .map(CallKind::name)
        .collect();
        let hash = self
            .inner
            .blobs
            .put(bytes)
            .await
            .map_err(|e| EngineError::Blob(e.to_string()))?;
        self.inner
            .store
            .put_module(&hash, bytes.len() as i64, &exports)
            .await?;
        self.inner
            .store
            .module(&hash)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("module {hash}")))
    }

    /// Stores an input blob; returns its hash.
    pub async fn upload_input(&self, bytes: &[u8]) -> Result<String, EngineError> {
        self.inner
            .blobs
            .put(bytes)
            .await
            .map_err(|e| EngineError::Blob(e.to_string()))
    }

    /// Resolves a job file (modules by hash or spec, never by path), stores
    /// the job and its tasks, then publishes them. Returns the job id.
    pub async fn submit(&self, job: &JobFile) -> Result<i64, EngineError> {
        let template = job.template()?;
        let params = job.task_params(self.inner.config.max_tasks_per_job)?;
        let mut limits = job.limits()?;
        let mut grants = job.grants()?;
        let mut labels = job.labels()?;
        let queue_timeout = job.queue_timeout()?;
        let mut kind = template
            .kind
            .map(|k| jobfile::parse_kind("kind", k))
            .transpose()?;
        let module_hash = if let Some(hash) = template.module.strip_prefix("sha256:") {
            hash.to_owned()
        } else if template.module.ends_with(".wasm") || template.module.contains('/') {
            return Err(EngineError::BadRequest(format!(
                "module: `{}` is a path; upload it first (the CLI does) and name it sha256:<hash>",
                template.module
            )));
        } else {
            let (name, version) = match template.module.split_once('@') {
                Some((name, version)) => (name, Some(version)),
                None => (template.module, None),
            };
            let spec = self
                .inner
                .store
                .spec(name, version)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("spec {}", template.module)))?;
            kind = kind.or(CallKind::parse(&spec.kind));
            // The job's own sections override the spec's defaults.
            if job.limits == Default::default() {
                limits = serde_json::from_str(&spec.limits).unwrap_or(limits);
            }
            if job.grants == Default::default() {
                grants = serde_json::from_str(&spec.grants).unwrap_or(grants);
            }
            if job.labels.is_empty() {
                labels = serde_json::from_str(&spec.labels).unwrap_or(labels);
            }
            spec.module_hash
        };
        let module = self
            .inner
            .store
            .module(&module_hash)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("module sha256:{module_hash}")))?;
        let kind = kind.unwrap_or(CallKind::Task);
        if !module.exports.split(',').any(|e| e == kind.name()) {
            return Err(EngineError::BadRequest(format!(
                "kind: module sha256:{module_hash} exports no {} function (it has: {})",
                kind.name(),
                module.exports
            )));
        }
        let input_ref = |input: &str| -> Result<String, EngineError> {
            input
                .strip_prefix("sha256:")
                .map(str::to_owned)
                .ok_or_else(|| {
                    EngineError::BadRequest(format!(
                        "input: `{input}` is a path; upload it first and name it sha256:<hash>"
                    ))
                })
        };
        // (input hash, input name) per task.
        let inputs: Vec<(Option<String>, String)> =
            match job.sweep.as_ref().and_then(|s| s.inputs.as_ref()) {
                Some(inputs) => inputs
                    .iter()
                    .map(|i| Ok((Some(input_ref(&i.input)?), i.name.clone())))
                    .collect::<Result<_, EngineError>>()?,
                None => {
                    let hash = template.input.map(input_ref).transpose()?;
                    let name = job
                        .task
                        .as_ref()
                        .and_then(|t| t.input_name.clone())
                        .unwrap_or_else(|| "-".to_owned());
                    vec![(hash, name); params.len()]
                }
            };
        let mut checked = std::collections::BTreeSet::new();
        for hash in inputs.iter().filter_map(|(h, _)| h.as_ref()) {
            if checked.insert(hash.clone())
                && self
                    .inner
                    .blobs
                    .get(hash)
                    .await
                    .map_err(|e| EngineError::Blob(e.to_string()))?
                    .is_none()
            {
                return Err(EngineError::NotFound(format!("input sha256:{hash}")));
            }
        }
        let new = NewJob {
            name: job.name.clone(),
            kind: job.kind().to_owned(),
            task_kind: kind,
            module_hash,
            limits: serde_json::to_string(&limits).unwrap_or_default(),
            grants: serde_json::to_string(&grants).unwrap_or_default(),
            definition: serde_json::to_string(job).unwrap_or_default(),
            max_attempts: i64::from(job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)),
            labels,
            queue_timeout_ms: i64::try_from(queue_timeout.as_millis()).unwrap_or(i64::MAX),
            tasks: params
                .into_iter()
                .zip(inputs)
                .map(|(params, (input_hash, input_name))| NewTask {
                    params,
                    input_hash,
                    input_name,
                })
                .collect(),
        };
        let (job_id, messages) = self.inner.store.create_job(&new).await?;
        // Committed first (the outbox): the job is accepted now, and its
        // tasks go out behind the answer. If this publish is lost, the
        // reconciler (or `recover`, after a crash) publishes them again.
        let broker = self.inner.broker.clone();
        tokio::spawn(async move {
            if let Err(error) = broker.publish(messages).await {
                tracing::warn!(job_id, %error, "publish failed; tasks stay queued for the reconciler");
            }
        });
        Ok(job_id)
    }

    /// Cancels a running job.
    pub async fn cancel(&self, job_id: i64) -> Result<(), EngineError> {
        match self.inner.store.cancel_job(job_id).await? {
            Ok(()) => {
                self.inner.finished.send_modify(|n| *n += 1);
                self.forget(job_id).await;
                Ok(())
            }
            Err(CancelRefused::NotFound) => Err(EngineError::NotFound(format!("job {job_id}"))),
            Err(CancelRefused::Finished(status)) => Err(EngineError::Conflict(format!(
                "job {job_id} already finished ({status})"
            ))),
        }
    }

    /// Drops the queued messages of a job that ended early, so workers do
    /// not run its tasks for nothing (best effort).
    async fn forget(&self, job_id: i64) {
        let labels = match self.inner.store.job(job_id).await {
            Ok(Some(job)) => serde_json::from_str(&job.labels).unwrap_or_default(),
            _ => Labels::default(),
        };
        if let Err(error) = self.inner.broker.forget_job(job_id, &labels).await {
            tracing::warn!(job_id, %error, "could not drop the job's queued messages; workers will run and ignore them");
        }
    }

    /// Re-publishes every queued task (after a restart). Returns how many.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        let messages = self.inner.store.recover().await?;
        let n = messages.len();
        for chunk in messages.chunks(10_000) {
            self.inner.broker.publish(chunk.to_vec()).await?;
        }
        if n > 0 {
            tracing::info!(tasks = n, "re-published queued tasks");
        }
        Ok(n)
    }

    /// Records worker events until the broker closes: each wake-up takes
    /// every event waiting (up to [`RECORD_BATCH`]) into one transaction.
    pub async fn record_events(self) {
        let mut retry = Duration::from_millis(250);
        loop {
            let events = match self.inner.broker.events(RECORD_BATCH).await {
                Ok(events) => {
                    retry = Duration::from_millis(250);
                    events
                }
                Err(BrokerError::Closed) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "receiving events failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut delay = Duration::from_millis(100);
            let recorded = loop {
                match self.inner.store.record(&events).await {
                    Ok(recorded) => break recorded,
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay, "recording events failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            };
            if let Err(error) = self.inner.broker.events_recorded().await {
                tracing::warn!(%error, "acking recorded events failed; they will be recorded again, harmlessly");
            }
            if !recorded.retried.is_empty() {
                match self.inner.store.messages_for(&recorded.retried).await {
                    Ok(messages) => {
                        if let Err(error) = self.inner.broker.publish(messages).await {
                            tracing::warn!(%error, "re-publishing retries failed; recovery will");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "loading retries failed; recovery will"),
                }
            }
            if !recorded.finished_jobs.is_empty() {
                self.inner.finished.send_modify(|n| *n += 1);
            }
        }
    }

    /// The worker registry, sorted by id.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, EngineError> {
        let mut workers = self.inner.broker.workers().await?;
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    /// The reconciler, until the broker closes: every [`WAITING_EVERY`],
    /// says which jobs wait for a worker that can take their tasks and
    /// fails those that waited past their queue timeout; every
    /// [`EngineConfig::absent_every`], publishes again live tasks the
    /// broker has lost.
    pub async fn reconcile(self) {
        let mut last_absent = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(WAITING_EVERY).await;
            if let Err(error) = self.check_waiting().await {
                if matches!(error, EngineError::Broker(BrokerError::Closed)) {
                    return;
                }
                tracing::warn!(%error, "checking waiting jobs failed");
            }
            if last_absent.elapsed() >= self.inner.config.absent_every {
                last_absent = tokio::time::Instant::now();
                match self.republish_absent().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(tasks = n, "re-published live tasks missing from the broker")
                    }
                    Err(error) => tracing::warn!(%error, "looking for lost task messages failed"),
                }
            }
        }
    }

    /// One pass of the waiting check (see [`reconcile`](Self::reconcile)).
    pub async fn check_waiting(&self) -> Result<(), EngineError> {
        if !self.inner.broker.enforces_labels() {
            return Ok(());
        }
        self.inner.store.clear_stale_waiting().await?;
        let jobs = self.inner.store.jobs_with_queued_tasks().await?;
        if jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let live: Vec<WorkerInfo> = self
            .inner
            .broker
            .workers()
            .await?
            .into_iter()
            .filter(|w| !w.is_lost(now) && !w.draining)
            .collect();
        for (job_id, labels, queue_timeout_ms, waiting_since) in jobs {
            let needs: Labels = serde_json::from_str(&labels).unwrap_or_default();
            if live.iter().any(|w| needs.satisfied_by(&w.labels)) {
                if waiting_since.is_some() {
                    self.inner.store.set_waiting(job_id, None).await?;
                }
                continue;
            }
            let why = if live.is_empty() {
                "no live worker".to_owned()
            } else if needs.is_empty() {
                "no live worker takes unlabelled tasks".to_owned()
            } else {
                format!("no live worker offers labels {needs}")
            };
            match waiting_since {
                Some(since) if now - since >= queue_timeout_ms => {
                    let error = format!(
                        "waited {} s for a worker ({why}); the queue timeout is {} s",
                        (now - since) / 1000,
                        queue_timeout_ms / 1000
                    );
                    tracing::warn!(job_id, %error, "queued tasks timed out");
                    if self.inner.store.expire_queued(job_id, &error).await? {
                        self.inner.finished.send_modify(|n| *n += 1);
                    }
                    self.forget(job_id).await;
                }
                _ => self.inner.store.set_waiting(job_id, Some(&why)).await?,
            }
        }
        Ok(())
    }

    /// Publishes again every live task the broker holds no message for
    /// (lost with a broker's store, or never published). Returns how many.
    pub async fn republish_absent(&self) -> Result<usize, EngineError> {
        let live = self.inner.store.live_tasks().await?;
        if live.is_empty() {
            return Ok(0);
        }
        let Some(absent) = self.inner.broker.absent(&live).await? else {
            return Ok(0);
        };
        if absent.is_empty() {
            return Ok(0);
        }
        // A task whose result is on its way to the database is absent too:
        // look again once the recorder has caught up, and take only what
        // is still live and still absent.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let still_live: Vec<i64> = self
            .inner
            .store
            .live_messages(&absent.into_iter().collect::<Vec<_>>())
            .await?
            .iter()
            .map(|m| m.task_id)
            .collect();
        let Some(absent) = self.inner.broker.absent(&still_live).await? else {
            return Ok(0);
        };
        let absent: Vec<i64> = absent.into_iter().collect();
        let messages = self.inner.store.live_messages(&absent).await?;
        let n = messages.len();
        for chunk in messages.chunks(10_000) {
            self.inner.broker.republish(chunk.to_vec()).await?;
        }
        Ok(n)
    }

    /// Waits until the job has a final status or `timeout` passes; returns
    /// the job as it is then.
    pub async fn wait(&self, job_id: i64, timeout: Duration) -> Result<JobRow, EngineError> {
        let mut finished = self.inner.finished.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self
                .inner
                .store
                .job(job_id)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("job {job_id}")))?;
            if job.status != "running" {
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
}
