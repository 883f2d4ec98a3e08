//! The fast path of upload-and-run in the embedded mode: a call that asks
//! to wait for its output runs at once on the request's own thread (no
//! queue, no worker hand-off, no recorder round), then its job, task and
//! attempt are recorded in one transaction, and only then is it answered.
//! A call the fast path cannot take (all its slots busy, a call that could
//! outlast its wait, a runtime that may not block) goes the ordinary way.
//!
//! Nothing is recorded for a call until it ends: if the process dies during
//! it, the caller gets no answer, so nothing was accepted.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sandmill_runtime::message::{TaskMessage, TaskResult, Verdict};
use sandmill_runtime::worker::{Ran, Worker};
use tokio::sync::{Semaphore, watch};

use super::{Owner, Scheduler, SchedulerError, SubmitOptions};
use crate::events::{JobCounts, What};
use crate::jobfile::JobFile;
use crate::model::JobStatus;
use crate::store::{RunRecord, RunWriter, now_ms};

/// What runs calls on the fast path.
pub struct Inline {
    worker: Worker,
    slots: Arc<Semaphore>,
    writer: RunWriter,
    /// Never turns: an inline call is not drained, it is answered.
    never: watch::Receiver<bool>,
    _never: watch::Sender<bool>,
}

impl Inline {
    /// Runs calls on `worker`, at most `slots` at once.
    pub fn new(worker: Worker, slots: usize, writer: RunWriter) -> Self {
        let (sender, never) = watch::channel(false);
        Inline {
            worker,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            writer,
            never,
            _never: sender,
        }
    }
}

/// A call that ran and was recorded.
pub struct InlineRun {
    /// Its job.
    pub job_id: i64,
    /// Its task.
    pub task_id: i64,
    /// How it ended, as recorded.
    pub result: TaskResult,
}

/// A seed for a call's randomness: random per call, stored with its task.
fn fresh_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(now_ms());
    hasher.finish()
}

impl Scheduler {
    /// Runs a one-task job on the fast path and records it, if the fast
    /// path can take it; `Ok(None)`: submit it the ordinary way.
    pub async fn run_inline(
        &self,
        owner: &Owner,
        job: &JobFile,
        options: SubmitOptions,
        wait: Duration,
    ) -> Result<Option<InlineRun>, SchedulerError> {
        let Some(inline) = self.inner.inline.get() else {
            return Ok(None);
        };
        // Blocking the request's thread needs a runtime that can move its
        // other work elsewhere.
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::MultiThread
        {
            return Ok(None);
        }
        let Ok(_slot) = inline.slots.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let started_at = now_ms();
        let new = self.prepare(owner, job, options).await?;
        // A call that could outlast the wait must be accepted first, so
        // that its 202 names a job: the ordinary way.
        if new.total != 1 || !new.items.is_empty() || new.limits.timeout > wait {
            return Ok(None);
        }
        // The seed is a function of the call's cache key, as a queued
        // task's is; a call whose output is cached already takes it the
        // ordinary way.
        let key = crate::store::dispatch::Template::of_new(&new).first_cache_key();
        if let Some(key) = &key
            && new.cache
            && self.inner.store.has_cached(key).await?
        {
            return Ok(None);
        }
        self.charge_quota(&owner.tenant, 1).await?;
        let seed = key
            .as_deref()
            .map_or_else(fresh_seed, crate::store::dispatch::seed_of);
        let task = TaskMessage {
            task_id: 0,
            job_id: 0,
            attempt: 0,
            priority: new.priority,
            tenant: new.tenant.clone(),
            kind: new.task_kind,
            module: new.module_hash.clone(),
            input: new.task_input.clone(),
            input_name: new.task_input_name.clone(),
            params: new.task_params.clone(),
            params_blob: None,
            limits: new.limits.clone(),
            grants: new.grants.clone(),
            labels: new.labels.clone(),
            seed: Some(seed),
            shuffle: None,
            inputs: Vec::new(),
            preprocess: None,
            output_blob: false,
            delivered: 1,
            ticket: String::new(),
            published_ms: None,
            traceparent: None,
        };
        let handle = tokio::runtime::Handle::current();
        let store = self.inner.store.clone();
        let recorded = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let result = match inline.worker.execute(&task, &inline.never, None).await {
                    Ran::Done(result) => result.bounded(),
                    Ran::HandBack(error) => return Err(SchedulerError::Blob(error)),
                };
                let record = RunRecord {
                    job: &new,
                    seed,
                    cache_key: key.as_deref(),
                    result: &result,
                    started_at,
                };
                let (job_id, task_id) = store.record_run(&inline.writer, &record).await?;
                Ok::<_, SchedulerError>((job_id, task_id, result))
            })
        })?;
        let (job_id, task_id, mut result) = recorded;
        result.job_id = job_id;
        result.task_id = task_id;
        crate::metrics::SERVER.finished(&result);
        self.inner.finished.send_modify(|n| *n += 1);
        let (succeeded, failed, status) = match result.verdict {
            Verdict::Succeeded => (1, 0, JobStatus::Succeeded),
            Verdict::Failed => (0, 1, JobStatus::Failed),
        };
        self.inner.events.push([
            (job_id, super::recorder::ended_what(&result)),
            (
                job_id,
                What::Job(JobCounts {
                    parent_id: None,
                    status,
                    total: 1,
                    succeeded,
                    failed,
                    cancelled: 0,
                }),
            ),
        ]);
        Ok(Some(InlineRun {
            job_id,
            task_id,
            result,
        }))
    }
}
