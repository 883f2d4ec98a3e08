//! The worker loop: fetch task attempts from the broker, run each in the
//! sandbox, report how it ended. Knows nothing of the database; the same
//! loop runs inside `sandmill dev` and as `sandmill worker`.
//!
//! Results of quick tasks are reported in batches (one durable publish
//! round and one round of acks per batch); a slow task's result goes out as
//! soon as it ends. The fetch size adapts: many quick tasks per fetch, one
//! at a time when tasks are slow, so one worker never hoards slow work.
//!
//! An outage of the blob store is not the task's fault: reads and writes
//! are retried with backoff while the worker keeps the task, and past
//! [`BLOB_PATIENCE`] the task is handed back unrun, spending no attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::blob::{BlobError, BlobErrorKind, BlobStore};
use crate::broker::{Broker, BrokerError, BrokerErrorKind};
use crate::cancels::Cancels;
use crate::message::Shuffle;
use crate::message::{
    BlobRef, HEARTBEAT_EVERY, INLINE_LOG_BYTES, INLINE_OUTPUT_BYTES, OutputRef, PROGRESS_EVERY,
    RESERVED_LANE, TaskEvent, TaskMessage, TaskResult, Verdict, WorkerInfo, now_ms,
};
use crate::reason::Reason;
use crate::sandbox::{
    Call, CallInput, CallKind, ExecError, Interrupt, Module, Output, ProgressSink, Sandbox, SpillTo,
};

/// Task attempts one worker loop takes per fetch, at most.
pub const FETCH_BATCH: usize = 64;
/// How long a slot that ran a task of a reservation waits for the
/// tenant's next (the control plane sends it once it has recorded the
/// end) before it takes anyone's.
pub const RESERVED_WAIT: Duration = Duration::from_millis(500);
/// Results held back for a batched report at most this long.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// How long a worker keeps retrying an unavailable blob store for one task
/// before handing the task back.
pub const BLOB_PATIENCE: Duration = Duration::from_secs(60);
/// First wait between blob store retries; it doubles up to
/// [`BLOB_RETRY_MAX`].
const BLOB_RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between blob store retries.
const BLOB_RETRY_MAX: Duration = Duration::from_secs(5);
/// A task handed back during an outage is delivered again after this.
const HAND_BACK_DELAY: Duration = Duration::from_secs(10);

/// What a worker process is doing, for its registry entry: shared by its
/// slots.
#[derive(Debug, Default)]
pub struct Presence {
    /// Tasks running, and since when.
    running: Mutex<BTreeMap<i64, Instant>>,
    started: AtomicU64,
    finished: AtomicU64,
    /// Slot-milliseconds of tasks that ended.
    busy_ms: AtomicU64,
    /// Whether its slots count in [`metrics::WORKER`](crate::metrics::WORKER)
    /// (a pool's do).
    counted: bool,
}

impl Presence {
    fn start(&self, task_id: i64) {
        if self.counted {
            crate::metrics::WORKER.slot_busy();
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id, Instant::now());
    }

    fn end(&self, task_id: i64) {
        if self.counted {
            crate::metrics::WORKER.slot_free();
        }
        // Under the lock: an entry never sees the task in neither place.
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(began) = running.remove(&task_id) {
            let ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.busy_ms.fetch_add(ms, Ordering::Relaxed);
        }
        drop(running);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// `base` with the running tasks, the finished count and the time now.
    pub fn entry(&self, base: &WorkerInfo) -> WorkerInfo {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let running_ms: u64 = running
            .values()
            .map(|began| u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX))
            .sum();
        WorkerInfo {
            running: running.keys().copied().collect(),
            busy_ms: self.busy_ms.load(Ordering::Relaxed) + running_ms,
            started: self.started.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            last_seen: now_ms(),
            ..base.clone()
        }
    }
}

/// Keeps a worker's registry entry fresh until `stop` turns true, then
/// writes it once more as draining. The caller removes it when done.
pub async fn keep_registered(
    broker: Arc<dyn Broker>,
    base: WorkerInfo,
    presence: Arc<Presence>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = HEARTBEAT_EVERY;
    loop {
        let mut entry = presence.entry(&base);
        entry.draining = *stop.borrow();
        match broker.heartbeat(&entry).await {
            Ok(()) => delay = HEARTBEAT_EVERY,
            Err(error) if error.kind() == BrokerErrorKind::Closed => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "registry heartbeat failed");
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        if entry.draining {
            // Draining: keep the entry fresh (draining) until the caller
            // removes it.
            tokio::time::sleep(delay).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // The pool is gone: nothing left to announce.
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// A worker process's slots (one thread each: guests compute without
/// yielding), its registry entry, and the way to stop them.
pub struct WorkerPool {
    id: String,
    capacity: usize,
    broker: Arc<dyn Broker>,
    drain: watch::Sender<bool>,
    slots: Vec<std::thread::JoinHandle<()>>,
    registry: tokio::task::JoinHandle<()>,
    cancels: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    /// Starts `base.capacity` slots named `<id>/<n>` and the heartbeat
    /// (on the current tokio runtime). Modules are read from `modules`
    /// (say, a [`LocalCopy`](crate::blob::LocalCopy) of `blobs`). The
    /// slots' threads run `nice` steps below the process's CPU priority
    /// (0: the same): a process that also answers interactive calls
    /// (the embedded mode) gives them the CPU first.
    pub fn start(
        base: WorkerInfo,
        sandbox: Sandbox,
        broker: Arc<dyn Broker>,
        blobs: Arc<dyn BlobStore>,
        modules: Arc<dyn BlobStore>,
        nice: i32,
    ) -> std::io::Result<WorkerPool> {
        if cfg!(target_os = "linux") {
            remove_stale_scratch();
        }
        let presence = Arc::new(Presence {
            counted: true,
            ..Presence::default()
        });
        crate::metrics::WORKER.add_slots(base.capacity.max(1));
        let (drain, stop) = watch::channel(false);
        let mut slots = Vec::new();
        let loaded: Arc<Mutex<HashMap<String, Module>>> = Arc::default();
        let cancels = Arc::new(Cancels::default());
        for n in 0..base.capacity.max(1) {
            let mut worker = Worker::new(
                format!("{}/{n}", base.id),
                sandbox.clone(),
                broker.clone(),
                blobs.clone(),
            )
            .with_presence(presence.clone())
            .with_cancels(cancels.clone());
            worker.modules = loaded.clone();
            worker.module_blobs = modules.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stop = stop.clone();
            slots.push(
                std::thread::Builder::new()
                    .name(format!("sandmill-slot-{n}"))
                    .spawn(move || {
                        crate::background::lower_priority(nice);
                        runtime.block_on(worker.run(stop))
                    })?,
            );
        }
        let registry = tokio::spawn(keep_registered(
            broker.clone(),
            base.clone(),
            presence,
            stop,
        ));
        let cancels = tokio::spawn(crate::cancels::listen(broker.clone(), cancels));
        Ok(WorkerPool {
            id: base.id,
            capacity: base.capacity.max(1),
            broker,
            drain,
            slots,
            registry,
            cancels,
        })
    }

    /// Drains: no new fetches; running tasks finish and are reported;
    /// fetched ones not started go back to the broker. Then the worker
    /// leaves the registry; returns whether it could.
    pub async fn drain(self) -> bool {
        let _ = self.drain.send(true);
        let slots = self.slots;
        let _ = tokio::task::spawn_blocking(move || {
            for slot in slots {
                let _ = slot.join();
            }
        })
        .await;
        self.registry.abort();
        self.cancels.abort();
        crate::metrics::WORKER.remove_slots(self.capacity);
        match self.broker.leave(&self.id).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "leaving the registry failed; the entry will show as lost");
                false
            }
        }
    }
}

/// Runs tasks from a broker in a sandbox.
#[derive(Clone)]
pub struct Worker {
    id: String,
    sandbox: Sandbox,
    broker: Arc<dyn Broker>,
    blobs: Arc<dyn BlobStore>,
    module_blobs: Arc<dyn BlobStore>,
    modules: Arc<Mutex<HashMap<String, Module>>>,
    presence: Arc<Presence>,
    cancels: Arc<Cancels>,
}

impl Worker {
    /// A worker named `id` (stable across restarts).
    pub fn new(
        id: impl Into<String>,
        sandbox: Sandbox,
        broker: Arc<dyn Broker>,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        Worker {
            id: id.into(),
            sandbox,
            broker,
            module_blobs: blobs.clone(),
            blobs,
            modules: Arc::default(),
            presence: Arc::default(),
            cancels: Arc::default(),
        }
    }

    /// Shares `cancels` (the process's word of jobs ended early) with this
    /// loop: their attempts are interrupted, their fetched tasks dropped.
    pub fn with_cancels(mut self, cancels: Arc<Cancels>) -> Self {
        self.cancels = cancels;
        self
    }

    /// Shares `presence` (the process's registry view) with this loop.
    pub fn with_presence(mut self, presence: Arc<Presence>) -> Self {
        self.presence = presence;
        self
    }

    /// Fetches and runs tasks until the broker closes or `drain` turns
    /// true: then it takes no new tasks, finishes the one running, reports
    /// it, and hands fetched tasks it has not started back to the broker.
    pub async fn run(self, mut drain: watch::Receiver<bool>) {
        // From one task at a time, doubling while tasks are quick.
        let mut fetch_size = 1;
        let mut fetch_retry = Duration::from_millis(500);
        // Whether the last task came from a reservation's lane: this slot
        // then waits a moment for the tenant's next one.
        let mut reserved = false;
        loop {
            if *drain.borrow() {
                return;
            }
            let fetched = tokio::select! {
                fetched = self.fetch(fetch_size, reserved) => fetched,
                // Drain (or the pool is gone): the loop top decides.
                changed = drain.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let batch = match fetched {
                Ok(batch) => {
                    fetch_retry = Duration::from_millis(500);
                    batch
                }
                Err(error) if error.kind() == BrokerErrorKind::Closed => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?fetch_retry, "fetch failed");
                    tokio::time::sleep(fetch_retry).await;
                    fetch_retry = (fetch_retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let began = Instant::now();
            let n = batch.len();
            reserved = batch.iter().any(|t| t.priority == RESERVED_LANE);
            let mut pending: Vec<(TaskMessage, TaskResult)> = Vec::new();
            let mut oldest: Option<Instant> = None;
            let mut tasks = batch.into_iter();
            let mut shuffled = false;
            while let Some(task) = tasks.next() {
                // Draining, or more urgent work waits: hand the rest of the
                // batch back (at the head of its lane) and fetch again.
                if *drain.borrow() || self.broker.waiting_above(task.priority) {
                    for task in std::iter::once(task).chain(tasks.by_ref()) {
                        if let Err(error) = self.broker.release(task).await {
                            tracing::warn!(%error, "handing a task back failed; it returns after the ack wait");
                        }
                    }
                    break;
                }
                // A map or reduce may run long: results of quick tasks
                // before it are reported first.
                if task.shuffle.is_some() {
                    shuffled = true;
                    if !self.flush(&mut pending).await {
                        return;
                    }
                }
                let Some(switch) = self.cancels.start(&task) else {
                    // Its job ended early: dropped unrun, for good (the
                    // control plane recorded its end).
                    self.drop_unrun(&task).await;
                    continue;
                };
                let result = if task.delivered > self.broker.max_deliveries() {
                    self.cancels.end(task.task_id);
                    self.lost(&task)
                } else {
                    let started = TaskEvent::Started {
                        job_id: task.job_id,
                        task_id: task.task_id,
                        attempt: task.attempt,
                        worker: self.id.clone(),
                        delivery: task.delivered,
                        ticket: task.ticket.clone(),
                    };
                    // Tasks proven quick (full batches, a few ms each at
                    // most) end before a start could tell anyone anything:
                    // their `finished` event says it all, at half the cost.
                    if (fetch_size < FETCH_BATCH || task.delivered > 1)
                        && let Err(error) = self.broker.announce(vec![started]).await
                    {
                        tracing::warn!(%error, job_id = task.job_id, task_id = task.task_id, attempt = task.attempt, "announcing a start failed");
                    }
                    self.presence.start(task.task_id);
                    let ran = self.execute(&task, &drain, Some(&switch)).await;
                    self.presence.end(task.task_id);
                    self.cancels.end(task.task_id);
                    if switch.is_set() {
                        // Interrupted, or ended as its job was cancelled:
                        // either way its end is recorded already.
                        self.drop_unrun(&task).await;
                        continue;
                    }
                    match ran {
                        Ran::Done(result) => *result,
                        Ran::HandBack(error) => {
                            tracing::warn!(%error, job_id = task.job_id, task_id = task.task_id, attempt = task.attempt, retry_in = ?HAND_BACK_DELAY,
                                "blob store unavailable; handing the task back unrun");
                            let broker = self.broker.clone();
                            tokio::spawn(async move {
                                if let Err(error) =
                                    broker.release_after(task, HAND_BACK_DELAY).await
                                {
                                    tracing::warn!(%error, "handing a task back failed; it returns after the ack wait");
                                }
                            });
                            continue;
                        }
                    }
                };
                pending.push((task, result.bounded()));
                let oldest = *oldest.get_or_insert_with(Instant::now);
                if oldest.elapsed() >= FLUSH_AFTER && !self.flush(&mut pending).await {
                    return;
                }
            }
            if !self.flush(&mut pending).await {
                return;
            }
            // Quick tasks: fetch more at once; slow ones: one at a time.
            let per_task = began.elapsed() / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
            // Maps and reduces are taken one at a time: a slot holding
            // several would keep them waiting behind one straggler.
            fetch_size = if shuffled {
                1
            } else if per_task < Duration::from_millis(5) {
                (fetch_size * 2).min(FETCH_BATCH)
            } else if per_task > Duration::from_millis(100) {
                1
            } else {
                (fetch_size / 2).max(1)
            };
        }
    }

    /// The next batch: after a task of a reservation, the tenant's next
    /// if it comes within [`RESERVED_WAIT`]; else whatever waits.
    async fn fetch(&self, max: usize, reserved: bool) -> Result<Vec<TaskMessage>, BrokerError> {
        if reserved {
            let batch = self
                .broker
                .fetch_lane(RESERVED_LANE, max, RESERVED_WAIT)
                .await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        self.broker.fetch(max).await
    }

    /// Reports `pending` results (one durable publish round), then tells
    /// the broker their tasks are done. False when the broker is closed.
    async fn flush(&self, pending: &mut Vec<(TaskMessage, TaskResult)>) -> bool {
        if pending.is_empty() {
            return true;
        }
        let (tasks, results): (Vec<TaskMessage>, Vec<TaskResult>) = pending.drain(..).unzip();
        let events = results.into_iter().map(TaskEvent::Finished).collect();
        // Only once the results are durable are the tasks done with.
        if let Err(error) = self.broker.report(events).await {
            tracing::warn!(%error, tasks = tasks.len(), "reporting failed; the tasks will be delivered again");
            if error.kind() == BrokerErrorKind::Closed {
                return false;
            }
            // Stop keeping them alive, so they come back (now or after the
            // ack wait, if the broker is unreachable).
            for task in tasks {
                let _ = self.broker.release(task).await;
            }
            return true;
        }
        let acks = tasks.iter().map(|task| self.broker.done(task));
        for (task, ack) in tasks.iter().zip(futures_util::future::join_all(acks).await) {
            if let Err(error) = ack {
                tracing::warn!(%error, job_id = task.job_id, task_id = task.task_id, attempt = task.attempt, "ack failed; a duplicate result may follow (and be ignored)");
            }
        }
        true
    }

    /// Acks a task of a job that ended early without reporting a result,
    /// so it is not delivered again.
    async fn drop_unrun(&self, task: &TaskMessage) {
        tracing::debug!(
            job_id = task.job_id,
            task_id = task.task_id,
            attempt = task.attempt,
            "its job ended early; dropped"
        );
        if let Err(error) = self.broker.done(task).await {
            tracing::warn!(%error, job_id = task.job_id, task_id = task.task_id, "dropping a task of a cancelled job failed; it may be delivered again and dropped then");
        }
    }

    /// The result of a task its workers kept vanishing under.
    fn lost(&self, task: &TaskMessage) -> TaskResult {
        let mut result = self.blank(task);
        result.reason = Some(Reason::WorkerLost);
        result.error = Some(format!(
            "delivered {} times; each worker that took it stopped (killed, crashed or cut off) before finishing it",
            task.delivered - 1
        ));
        result
    }

    fn blank(&self, task: &TaskMessage) -> TaskResult {
        TaskResult {
            job_id: task.job_id,
            task_id: task.task_id,
            attempt: task.attempt,
            worker: self.id.clone(),
            verdict: Verdict::Failed,
            reason: None,
            error: None,
            retryable: false,
            output: None,
            log: Vec::new(),
            log_blob: None,
            log_truncated: false,
            counters: Default::default(),
            started_ms: None,
            elapsed_ms: 0,
            fuel_used: None,
            ticket: task.ticket.clone(),
            kind: Some(task.kind),
            waited_ms: task.published_ms.map(|at| (now_ms() - at).max(0)),
            memory_peak: None,
        }
    }

    /// Reads a blob, retrying an unavailable store with backoff for up to
    /// [`BLOB_PATIENCE`] (or until the worker drains). `Ok(None)`: the
    /// store answered that it has no such blob.
    async fn blob(
        &self,
        store: &dyn BlobStore,
        hash: &str,
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<Vec<u8>, ExecError>, BlobError> {
        match patiently(drain, || store.get(hash)).await {
            Ok(Some(bytes)) => Ok(Ok(bytes)),
            Ok(None) => Ok(Err(ExecError::Host(format!(
                "blob {hash} is not in the blob store"
            )))),
            // Reading it again gives the same wrong bytes.
            Err(error) if error.kind() == BlobErrorKind::Corrupt => {
                Ok(Err(ExecError::Host(error.to_string())))
            }
            Err(error) => Err(error),
        }
    }

    async fn module(
        &self,
        hash: &str,
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<Module, ExecError>, BlobError> {
        if let Some(module) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            crate::metrics::WORKER.module_load("memory");
            return Ok(Ok(module.clone()));
        }
        let bytes = match self.blob(self.module_blobs.as_ref(), hash, drain).await? {
            Ok(bytes) => bytes,
            Err(error) => return Ok(Err(error)),
        };
        let module = match self.sandbox.load(&bytes) {
            Ok(module) => module,
            Err(error) => return Ok(Err(error)),
        };
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), module.clone());
        Ok(Ok(module))
    }

    /// The task's input and parameters, or why it cannot run.
    async fn inputs(
        &self,
        task: &TaskMessage,
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<(Vec<u8>, String), ExecError>, BlobError> {
        let input = if !task.inputs.is_empty() {
            // Parts of one blob come in a row: it is read once.
            let mut input = Vec::new();
            let mut blob: Option<(&str, Vec<u8>)> = None;
            for part in &task.inputs {
                if blob.as_ref().is_none_or(|(hash, _)| *hash != part.hash) {
                    match self.blob(self.blobs.as_ref(), &part.hash, drain).await? {
                        Ok(bytes) => blob = Some((&part.hash, bytes)),
                        Err(error) => return Ok(Err(error)),
                    }
                }
                let bytes = blob.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
                let start = usize::try_from(part.offset).unwrap_or(usize::MAX);
                let end = match part.len {
                    None => Some(bytes.len()),
                    Some(len) => usize::try_from(len)
                        .ok()
                        .and_then(|len| start.checked_add(len)),
                };
                match end.filter(|end| start <= *end && *end <= bytes.len()) {
                    Some(end) => input.extend_from_slice(&bytes[start..end]),
                    None => {
                        return Ok(Err(ExecError::Host(format!(
                            "input part {}+{:?} lies outside blob {} ({} bytes)",
                            part.offset,
                            part.len,
                            part.hash,
                            bytes.len()
                        ))));
                    }
                }
            }
            input
        } else {
            match &task.input {
                None => Vec::new(),
                Some(hash) => match self.blob(self.blobs.as_ref(), hash, drain).await? {
                    Ok(bytes) => bytes,
                    Err(error) => return Ok(Err(error)),
                },
            }
        };
        let params = match &task.params_blob {
            None => task.params.clone(),
            Some(blob) => match self.blob(self.blobs.as_ref(), &blob.hash, drain).await? {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => {
                        return Ok(Err(ExecError::Host(format!(
                            "parameters {} are not UTF-8",
                            blob.hash
                        ))));
                    }
                },
                Err(error) => return Ok(Err(error)),
            },
        };
        Ok(Ok((input, params)))
    }

    /// Runs one attempt: every failure of the call becomes a failed
    /// result; an unavailable blob store hands the task back unrun.
    #[tracing::instrument(name = "task", skip_all, fields(
        job_id = task.job_id,
        task_id = task.task_id,
        attempt = task.attempt,
        trace_id = %task.trace().trace_id,
        span_id = %task.trace().span_id,
        worker = %self.id,
    ))]
    pub async fn execute(
        &self,
        task: &TaskMessage,
        drain: &watch::Receiver<bool>,
        interrupt: Option<&Interrupt>,
    ) -> Ran {
        tracing::debug!(kind = task.kind.name(), "attempt starting");
        match self.try_execute(task, drain, interrupt).await {
            Ok(result) => {
                tracing::debug!(verdict = ?result.verdict, reason = ?result.reason,
                    elapsed_ms = result.elapsed_ms, "attempt ended");
                Ran::Done(Box::new(result))
            }
            Err(error) => Ran::HandBack(error),
        }
    }

    async fn try_execute(
        &self,
        task: &TaskMessage,
        drain: &watch::Receiver<bool>,
        interrupt: Option<&Interrupt>,
    ) -> Result<TaskResult, BlobError> {
        let mut result = self.blank(task);
        result.started_ms = Some(now_ms());
        let module = match self.module(&task.module, drain).await? {
            Ok(module) => module,
            Err(error) => {
                fail(&mut result, &error);
                return Ok(result);
            }
        };
        let (mut input, params) = match self.inputs(task, drain).await? {
            Ok(ready) => ready,
            Err(error) => {
                fail(&mut result, &error);
                return Ok(result);
            }
        };
        // A pipeline step's preprocessor turns the input into the one
        // its function sees; its log comes first in the task's.
        let mut preprocess_log = Vec::new();
        if let Some(hash) = &task.preprocess {
            let preprocessor = match self.module(hash, drain).await? {
                Ok(module) => module,
                Err(error) => {
                    fail(&mut result, &error);
                    return Ok(result);
                }
            };
            let call = Call {
                kind: CallKind::Preprocess,
                input: CallInput::Bytes(std::mem::take(&mut input)),
                spill: None,
                combine: false,
                params: params.clone(),
                input_name: task.input_name.clone(),
                limits: task.limits.clone(),
                grants: task.grants.clone(),
                seed: task.seed.unwrap_or(task.task_id as u64),
                attempt: u32::try_from(task.attempt).unwrap_or(u32::MAX),
                progress: None,
                interrupt: interrupt.cloned(),
            };
            let outcome = self.sandbox.call(&preprocessor, call).await;
            preprocess_log = outcome.log;
            match outcome.result {
                Ok(Output::Bytes(bytes)) => input = bytes,
                Ok(_) => {
                    let error = ExecError::Host("the preprocessor returned records".to_owned());
                    fail(&mut result, &error);
                    return Ok(result);
                }
                Err(error) => {
                    fail(&mut result, &error);
                    if let Some(message) = &mut result.error {
                        message.insert_str(0, "preprocess: ");
                    }
                    preprocess_log.truncate(INLINE_LOG_BYTES);
                    result.log = preprocess_log;
                    return Ok(result);
                }
            }
        }
        // Spilled runs and merged runs live in a scratch folder, removed
        // when the attempt ends.
        let scratch = match &task.shuffle {
            Some(_) => match tempfile::Builder::new()
                .prefix(&scratch_prefix(std::process::id()))
                .tempdir()
            {
                Ok(dir) => Some(dir),
                Err(e) => {
                    let error = ExecError::Host(format!("no scratch folder for the shuffle: {e}"));
                    fail(&mut result, &error);
                    return Ok(result);
                }
            },
            None => None,
        };
        let mut merge_errors = None;
        let (call_input, spill, combine) = match (&task.shuffle, &scratch) {
            (
                Some(Shuffle::Map {
                    partitions,
                    buffer,
                    combine,
                }),
                Some(dir),
            ) => (
                CallInput::Bytes(input),
                Some(SpillTo {
                    partitions: *partitions,
                    buffer_bytes: *buffer,
                    dir: dir.path().to_owned(),
                }),
                *combine,
            ),
            (Some(Shuffle::Reduce), Some(dir)) => {
                match self.fetch_runs(&input, dir.path(), drain).await? {
                    Ok(merge) => {
                        let (groups, errors) = crate::shuffle::merge_groups(merge);
                        merge_errors = Some(errors);
                        (CallInput::Groups(groups), None, false)
                    }
                    Err(error) => {
                        fail(&mut result, &error);
                        return Ok(result);
                    }
                }
            }
            _ => match task.kind {
                CallKind::Reduce => match crate::records::parse_groups(&input) {
                    Ok(groups) => (CallInput::Groups(Box::new(groups.into_iter())), None, false),
                    Err(e) => {
                        fail(&mut result, &ExecError::Guest(format!("reduce input: {e}")));
                        return Ok(result);
                    }
                },
                _ => (CallInput::Bytes(input), None, true),
            },
        };
        let call = Call {
            kind: task.kind,
            input: call_input,
            spill,
            combine,
            params,
            input_name: task.input_name.clone(),
            limits: task.limits.clone(),
            grants: task.grants.clone(),
            seed: task.seed.unwrap_or(task.task_id as u64),
            attempt: u32::try_from(task.attempt).unwrap_or(u32::MAX),
            progress: Some(progress_sink(self.broker.clone(), task)),
            interrupt: interrupt.cloned(),
        };
        let mut outcome = self.sandbox.call(&module, call).await;
        if !preprocess_log.is_empty() {
            preprocess_log.append(&mut outcome.log);
            outcome.log = preprocess_log;
        }
        result.log_truncated = outcome.log_truncated;
        if outcome.log.len() > INLINE_LOG_BYTES {
            let size = outcome.log.len() as u64;
            match self.store(&outcome.log, drain).await? {
                Ok(hash) => result.log_blob = Some(BlobRef { hash, size }),
                Err(error) => {
                    // No room for the whole log: its start is kept.
                    tracing::warn!(task = task.task_id, %error, "a log was cut to fit");
                    outcome.log.truncate(INLINE_LOG_BYTES);
                    result.log = outcome.log;
                    result.log_truncated = true;
                }
            }
        } else {
            result.log = outcome.log;
        }
        result.counters = outcome.counters;
        result.elapsed_ms = i64::try_from(outcome.elapsed.as_millis()).unwrap_or(i64::MAX);
        result.fuel_used = outcome.fuel_used;
        result.memory_peak = Some(outcome.memory_peak);
        let mut outcome_result = outcome.result;
        if let Some(error) = merge_errors.and_then(|e| e.take()) {
            // A run file went bad under the merge: the guest saw a cut
            // input, so its output does not count.
            outcome_result = Err(ExecError::Host(format!(
                "reading the shuffle's runs: {error}"
            )));
        }
        match outcome_result {
            Ok(output) => {
                let bytes = match output {
                    Output::Bytes(bytes) => bytes,
                    Output::Runs(runs, records) => {
                        let partitions = match &task.shuffle {
                            Some(Shuffle::Map { partitions, .. }) => *partitions as usize,
                            _ => 1,
                        };
                        match self.store_runs(runs, partitions, records, drain).await? {
                            Ok(bytes) => bytes,
                            Err(error) => {
                                fail(&mut result, &error);
                                return Ok(result);
                            }
                        }
                    }
                    Output::Records(records) => {
                        let mut lines = Vec::with_capacity(records.bytes() + 2 * records.len());
                        // Writing into a Vec cannot fail.
                        let _ = records.write_lines(&mut lines);
                        lines
                    }
                };
                result.verdict = Verdict::Succeeded;
                result.output = Some(
                    if bytes.len() <= INLINE_OUTPUT_BYTES && (!task.output_blob || bytes.is_empty())
                    {
                        OutputRef::Inline(bytes)
                    } else {
                        let size = bytes.len() as u64;
                        match self.store(&bytes, drain).await? {
                            Ok(hash) => OutputRef::Blob { hash, size },
                            Err(error) => {
                                fail(&mut result, &error);
                                return Ok(result);
                            }
                        }
                    },
                );
            }
            Err(error) => {
                fail(&mut result, &error);
                // A map or reduce fails for good only once its attempts
                // are spent, whatever the reason (as Hadoop's do): a guest
                // that crashes now and then must not fail a long job.
                if task.shuffle.is_some() && !matches!(error, ExecError::InvalidModule(_)) {
                    result.retryable = true;
                }
            }
        }
        Ok(result)
    }
}

impl Worker {
    /// Stores bytes a task made, waiting out an unavailable store.
    /// `Ok(Err)`: the store is full, and the attempt fails (retryably:
    /// the collector may make room).
    async fn store(
        &self,
        bytes: &[u8],
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<String, ExecError>, BlobError> {
        match patiently(drain, || self.blobs.put(bytes)).await {
            Ok(hash) => Ok(Ok(hash)),
            Err(error) if error.kind() == BlobErrorKind::Full => {
                Ok(Err(ExecError::Host(error.to_string())))
            }
            Err(error) => Err(error),
        }
    }

    /// Stores a map's sorted runs in the blob store (one file in memory at
    /// a time); returns its [`MapOutput`](crate::shuffle::MapOutput) as JSON.
    async fn store_runs(
        &self,
        runs: Vec<crate::shuffle::RunFile>,
        partitions: usize,
        records: u64,
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<Vec<u8>, ExecError>, BlobError> {
        let mut output = crate::shuffle::MapOutput {
            partitions: vec![Vec::new(); partitions],
            records,
        };
        for run in runs {
            let bytes = match tokio::fs::read(&run.path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    return Ok(Err(ExecError::Host(format!("reading a spilled run: {e}"))));
                }
            };
            let size = bytes.len() as u64;
            let hash = match self.store(&bytes, drain).await? {
                Ok(hash) => hash,
                Err(error) => return Ok(Err(error)),
            };
            drop(bytes);
            let _ = tokio::fs::remove_file(&run.path).await;
            if let Some(list) = output.partitions.get_mut(run.partition as usize) {
                list.push(BlobRef { hash, size });
            }
        }
        Ok(Ok(serde_json::to_vec(&output).unwrap_or_default()))
    }

    /// Copies a reduce's runs from the blob store into `dir` (one in
    /// memory at a time) and opens their merge.
    async fn fetch_runs(
        &self,
        input: &[u8],
        dir: &std::path::Path,
        drain: &watch::Receiver<bool>,
    ) -> Result<Result<crate::shuffle::Merge, ExecError>, BlobError> {
        let input: crate::shuffle::ReduceInput = match serde_json::from_slice(input) {
            Ok(input) => input,
            Err(e) => {
                return Ok(Err(ExecError::Host(format!(
                    "a reduce's input is not a run list: {e}"
                ))));
            }
        };
        let mut paths = Vec::with_capacity(input.runs.len());
        for (i, run) in input.runs.iter().enumerate() {
            let bytes = match self.blob(self.blobs.as_ref(), &run.hash, drain).await? {
                Ok(bytes) => bytes,
                Err(error) => return Ok(Err(error)),
            };
            let path = dir.join(format!("run-{i:06}"));
            if let Err(e) = tokio::fs::write(&path, &bytes).await {
                return Ok(Err(ExecError::Host(format!("copying a run to disk: {e}"))));
            }
            paths.push(path);
        }
        Ok(crate::shuffle::Merge::open(&paths)
            .map_err(|e| ExecError::Host(format!("opening the runs to merge: {e}"))))
    }
}

/// Scratch folders of maps and reduces are named after their process, so
/// a process that starts can remove those of processes killed before they
/// could.
fn scratch_prefix(pid: u32) -> String {
    format!("sandmill-shuffle-{pid}-")
}

/// Removes the scratch folders that processes no longer running left in
/// the temporary folder (a worker killed mid-map leaves its spills).
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sandmill-shuffle-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How one attempt went, as the worker loop sees it.
#[derive(Debug)]
pub enum Ran {
    /// It ran (or could not, for a reason of its own): report this.
    Done(Box<TaskResult>),
    /// The blob store stayed unavailable: hand the task back unrun.
    HandBack(BlobError),
}

/// Runs `op` until it succeeds or fails for good, waiting between tries
/// while the blob store is unavailable, for up to [`BLOB_PATIENCE`] or
/// until the worker drains.
async fn patiently<T, F, Fut>(drain: &watch::Receiver<bool>, mut op: F) -> Result<T, BlobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BlobError>>,
{
    let began = Instant::now();
    let mut delay = BLOB_RETRY_FIRST;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            // Not an outage: asking again gives the same answer.
            Err(error)
                if matches!(error.kind(), BlobErrorKind::Full | BlobErrorKind::Corrupt)
                    || began.elapsed() + delay > BLOB_PATIENCE
                    || *drain.borrow() =>
            {
                return Err(error);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "blob store failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BLOB_RETRY_MAX);
            }
        }
    }
}

fn fail(result: &mut TaskResult, error: &ExecError) {
    result.verdict = Verdict::Failed;
    result.reason = Some(error.reason());
    result.error = Some(error.to_string());
    result.retryable = !error.is_deterministic();
}

/// Where a running guest's progress goes: the first call starts a sender
/// that announces the latest progress at most every [`PROGRESS_EVERY`]
/// until the call ends (a task that never reports progress costs nothing
/// but this closure).
fn progress_sink(broker: Arc<dyn Broker>, task: &TaskMessage) -> ProgressSink {
    let (job_id, task_id, attempt) = (task.job_id, task.task_id, task.attempt);
    let latest: std::sync::OnceLock<watch::Sender<(u64, u64)>> = std::sync::OnceLock::new();
    let runtime = tokio::runtime::Handle::try_current().ok();
    Arc::new(move |done, total| {
        let Some(runtime) = &runtime else { return };
        let sender = latest.get_or_init(|| {
            let (sender, mut receiver) = watch::channel((done, total));
            receiver.mark_changed();
            let broker = broker.clone();
            runtime.spawn(async move {
                // Ends when the call ends (the sender is dropped with it).
                while receiver.changed().await.is_ok() {
                    let (done, total) = *receiver.borrow_and_update();
                    let event = TaskEvent::Progress {
                        job_id,
                        task_id,
                        attempt,
                        done,
                        total,
                    };
                    if let Err(error) = broker.announce(vec![event]).await {
                        tracing::debug!(%error, task_id, "announcing progress failed");
                    }
                    tokio::time::sleep(PROGRESS_EVERY).await;
                }
            });
            sender
        });
        sender.send_replace((done, total));
    })
}
