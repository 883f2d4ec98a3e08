//! The recorder: what workers report goes into the database in batches,
//! one transaction each (each wake-up takes every event waiting, up to
//! [`RECORD_BATCH`]). An outage of the database is waited out, with
//! backoff; an event the database refuses for good is found by halving
//! the batch and set aside — recorded as its task's failure
//! (`store-rejected`) — so one task's bytes never stop the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sandmill_runtime::Reason;
use sandmill_runtime::broker::BrokerErrorKind;
use sandmill_runtime::message::{TaskEvent, TaskResult, TraceContext, Verdict};

use super::Scheduler;
use crate::events::{What, short_error};
use crate::model::TaskState;
use crate::store::{Recorded, StoreError, StoreErrorKind};

/// Events recorded per transaction at most. Small enough that a batch
/// holds SQLite's one write lock for milliseconds, not tens of them (an
/// interactive call's record waits for it); large enough that a
/// transaction's fixed cost is shared by many events.
pub const RECORD_BATCH: usize = 256;

/// Longest wait between two tries of an unavailable database.
const MAX_RETRY: Duration = Duration::from_secs(10);

impl Scheduler {
    /// Records worker events until the broker closes.
    pub async fn record_events(self) {
        let mut retry = Duration::from_millis(250);
        loop {
            let events = match self.inner.broker.events(RECORD_BATCH).await {
                Ok(mut events) => {
                    retry = Duration::from_millis(250);
                    events.retain(|event| {
                        let ticketed = self.ticketed(event);
                        if !ticketed {
                            tracing::warn!(task = event.task_id(), "an event without its task's ticket was dropped (not from the worker the task was delivered to)");
                        }
                        ticketed
                    });
                    events
                }
                Err(error) if error.kind() == BrokerErrorKind::Closed => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "receiving events failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            };
            let Some(recorded) = self.record_until_done(&events).await else {
                return;
            };
            crate::metrics::SERVER.recorded(&events);
            if tracing::enabled!(tracing::Level::DEBUG) {
                for event in &events {
                    if let TaskEvent::Finished(r) = event {
                        let trace = TraceContext::of(r.job_id, r.task_id, r.attempt);
                        tracing::debug!(job_id = r.job_id, task_id = r.task_id, attempt = r.attempt,
                            trace_id = %trace.trace_id, span_id = %trace.span_id,
                            verdict = ?r.verdict, worker = %r.worker, "attempt recorded");
                    }
                }
            }
            if let Err(error) = self.inner.broker.events_recorded().await {
                tracing::warn!(%error, "acking recorded events failed; they will be recorded again, harmlessly");
            }
            self.after_recording(&events, recorded).await;
        }
    }

    /// Records a batch, waiting out an unavailable database with backoff;
    /// `None` if the server stops first (the events are not acked: the
    /// broker hands them out again, or their tasks run again).
    async fn record_until_done(&self, events: &[TaskEvent]) -> Option<Recorded> {
        let mut delay = Duration::from_millis(100);
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            match self.record_or_set_aside(events).await {
                Ok(recorded) => return Some(recorded),
                Err(error) => {
                    tracing::warn!(%error, events = events.len(), retry_in = ?delay, "recording events failed; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => {
                    tracing::warn!(events = events.len(), "stopping with events not recorded; their tasks will run again");
                    return None;
                }
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Records `events`; if the database refuses them, finds the ones it
    /// refuses by halving the batch and sets each aside.
    async fn record_or_set_aside(&self, events: &[TaskEvent]) -> Result<Recorded, StoreError> {
        match self.inner.store.record(events).await {
            Ok(recorded) => Ok(recorded),
            Err(error) if error.kind() == StoreErrorKind::Rejected => {
                if let [event] = events {
                    return self.set_aside(event, &error).await;
                }
                let (first, second) = events.split_at(events.len() / 2);
                let mut recorded = Box::pin(self.record_or_set_aside(first)).await?;
                let more = Box::pin(self.record_or_set_aside(second)).await?;
                recorded.finished_tasks.extend(more.finished_tasks);
                recorded.retried.extend(more.retried);
                recorded.finished_jobs.extend(more.finished_jobs);
                recorded.maps_done.extend(more.maps_done);
                recorded.failing.extend(more.failing);
                recorded.set_aside.extend(more.set_aside);
                recorded.planned.extend(more.planned);
                recorded.followed.extend(more.followed);
                recorded.counts.extend(more.counts);
                recorded.ignored += more.ignored;
                Ok(recorded)
            }
            Err(error) => Err(error),
        }
    }

    /// Records a result the database refused as its task's failure, with
    /// the database's reason; a start it refused is dropped.
    async fn set_aside(
        &self,
        event: &TaskEvent,
        error: &StoreError,
    ) -> Result<Recorded, StoreError> {
        let TaskEvent::Finished(result) = event else {
            tracing::error!(task_id = event.task_id(), %error, "the database refused a start event; dropping it");
            return Ok(Recorded::default());
        };
        tracing::error!(task_id = result.task_id, %error, "the database refused a result; recording the task as failed");
        let replacement = TaskResult {
            verdict: Verdict::Failed,
            reason: Some(Reason::StoreRejected),
            error: Some(format!("the database refused this task's result: {error}")),
            retryable: false,
            output: None,
            log: Vec::new(),
            log_blob: None,
            log_truncated: false,
            counters: Default::default(),
            worker: result
                .worker
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect(),
            ..result.clone()
        };
        match self
            .inner
            .store
            .record(&[TaskEvent::Finished(replacement.clone())])
            .await
        {
            Ok(mut recorded) => {
                recorded.set_aside.push(replacement);
                Ok(recorded)
            }
            Err(again) if again.kind() == StoreErrorKind::Rejected => {
                tracing::error!(task_id = result.task_id, error = %again,
                    "the database refused even the failure of a refused result; dropping it (the task stays live and runs again)");
                Ok(Recorded::default())
            }
            Err(again) => Err(again),
        }
    }

    /// What a recorded batch sets going: room in the window, retries,
    /// ended jobs, waiting callers.
    async fn after_recording(&self, events: &[TaskEvent], mut recorded: Recorded) {
        self.push_events(events, &recorded);
        if !recorded.planned.is_empty() {
            // Pipeline steps planned in the recording transaction.
            let planned = std::mem::take(&mut recorded.planned);
            self.inner
                .live
                .fetch_add(planned.len() as i64, Ordering::Relaxed);
            let scheduler = self.clone();
            tokio::spawn(async move { scheduler.publish(planned).await });
        }
        if !recorded.finished_tasks.is_empty() {
            self.inner
                .live
                .fetch_sub(recorded.finished_tasks.len() as i64, Ordering::Relaxed);
            self.unreserve_tasks(&recorded.finished_tasks);
            self.inner.dispatch.notify_one();
        }
        if !recorded.retried.is_empty() {
            match self.inner.store.queued_messages(&recorded.retried).await {
                Ok(messages) => {
                    // A pipeline step's retries wait out its backoff (in
                    // memory: after a restart they go at once).
                    let mut jobs: Vec<i64> = messages.iter().map(|m| m.job_id).collect();
                    jobs.sort_unstable();
                    jobs.dedup();
                    let backoffs = self
                        .inner
                        .store
                        .retry_backoffs(&jobs)
                        .await
                        .unwrap_or_default();
                    let (later, now): (Vec<_>, Vec<_>) = messages
                        .into_iter()
                        .partition(|m| backoffs.contains_key(&m.job_id));
                    for message in later {
                        let wait = backoffs.get(&message.job_id).copied().unwrap_or(0);
                        let scheduler = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(
                                u64::try_from(wait).unwrap_or(0),
                            ))
                            .await;
                            scheduler.publish(vec![message]).await;
                        });
                    }
                    let scheduler = self.clone();
                    // Never block the recorder on the broker.
                    tokio::spawn(async move { scheduler.publish(now).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "loading retries failed; the reconciler will publish them")
                }
            }
        }
        if !recorded.finished_jobs.is_empty() {
            self.inner.finished.send_modify(|n| *n += 1);
        }
        for job_id in recorded.failing.iter().copied() {
            self.fail_early(job_id).await;
        }
        for job_id in recorded.finished_jobs.iter().copied() {
            if recorded.followed.contains(&job_id) {
                continue;
            }
            let scheduler = self.clone();
            // A pipeline's next steps: planned behind the recorder.
            tokio::spawn(async move { scheduler.job_ended(job_id).await });
        }
        for job_id in recorded.maps_done.iter().copied() {
            let scheduler = self.clone();
            // Never block the recorder on the blob store; should this
            // fail, the reconciler plans them.
            tokio::spawn(async move {
                if let Err(error) = scheduler.plan_reduces(job_id).await {
                    tracing::warn!(job_id, %error, "planning reduces failed; the reconciler tries again");
                }
            });
        }
        self.wake_waiters(events, &recorded);
    }

    /// Tells live-event clients what the batch changed: tasks that started,
    /// ended or go round again, guests' progress, and each job's counts.
    fn push_events(&self, events: &[TaskEvent], recorded: &Recorded) {
        let mut ended: HashSet<i64> = recorded.finished_tasks.iter().copied().collect();
        let mut retried: HashSet<i64> = recorded.retried.iter().copied().collect();
        let ends_here: HashSet<(i64, i64)> = events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Finished(r) => Some((r.task_id, r.attempt)),
                _ => None,
            })
            .collect();
        let set_aside: HashMap<i64, &TaskResult> =
            recorded.set_aside.iter().map(|r| (r.task_id, r)).collect();
        let mut out = Vec::with_capacity(events.len() + recorded.counts.len());
        for event in events {
            match event {
                TaskEvent::Started {
                    job_id,
                    task_id,
                    attempt,
                    worker,
                    ..
                } if !ends_here.contains(&(*task_id, *attempt)) => out.push((
                    *job_id,
                    What::Task {
                        task_id: *task_id,
                        attempt: *attempt,
                        state: TaskState::Running,
                        reason: None,
                        error: None,
                        worker: Some(worker.clone()),
                    },
                )),
                TaskEvent::Started { .. } => {}
                // Task 0: an upload-and-run call before it has a row.
                TaskEvent::Progress {
                    job_id,
                    task_id,
                    attempt,
                    done,
                    total,
                } if *task_id > 0 => out.push((
                    *job_id,
                    What::Progress {
                        task_id: *task_id,
                        attempt: *attempt,
                        done: *done,
                        total: *total,
                    },
                )),
                TaskEvent::Progress { .. } => {}
                TaskEvent::Finished(result) => {
                    if ended.remove(&result.task_id) {
                        let result = set_aside.get(&result.task_id).copied().unwrap_or(result);
                        out.push((result.job_id, ended_what(result)));
                    } else if retried.remove(&result.task_id) {
                        let mut what = ended_what(result);
                        if let What::Task { state, .. } = &mut what {
                            *state = TaskState::Queued;
                        }
                        out.push((result.job_id, what));
                    }
                }
            }
        }
        let counted: HashSet<i64> = recorded.counts.iter().map(|(job, _)| *job).collect();
        out.extend(
            recorded
                .counts
                .iter()
                .map(|(job_id, counts)| (*job_id, What::Job(*counts))),
        );
        self.inner.events.push(out);
        // Jobs ended in the transaction by what followed them (a
        // pipeline's steps): their rows say how.
        for job_id in &recorded.finished_jobs {
            if !counted.contains(job_id) {
                self.announce_job(*job_id);
            }
        }
    }

    /// Hands each waiting caller its task's result, as recorded.
    fn wake_waiters(&self, events: &[TaskEvent], recorded: &Recorded) {
        let mut waiters = self.lock_waiters();
        if waiters.is_empty() {
            return;
        }
        let mut results: HashMap<i64, &TaskResult> = HashMap::new();
        for result in &recorded.set_aside {
            results.insert(result.task_id, result);
        }
        for event in events {
            if let TaskEvent::Finished(result) = event {
                results.entry(result.task_id).or_insert(result);
            }
        }
        for task_id in &recorded.finished_tasks {
            if let Some(waiter) = waiters.remove(task_id)
                && let Some(result) = results.get(task_id)
            {
                let _ = waiter.send((*result).clone());
            }
        }
    }
}

/// The live event of an attempt that ended for good.
pub(super) fn ended_what(result: &TaskResult) -> What {
    What::Task {
        task_id: result.task_id,
        attempt: result.attempt,
        state: match result.verdict {
            Verdict::Succeeded => TaskState::Succeeded,
            Verdict::Failed => TaskState::Failed,
        },
        reason: result.reason,
        error: result.error.as_deref().map(short_error),
        worker: Some(result.worker.clone()),
    }
}
