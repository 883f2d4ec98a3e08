//! The reconciler and recovery: what keeps the broker in step with the
//! database. After a restart every live task is published again; every
//! [`WAITING_EVERY`] the reconciler says which jobs wait for a worker that
//! can take their tasks (and expires those that waited too long); every
//! [`SchedulerConfig::absent_every`](super::SchedulerConfig::absent_every)
//! it publishes again live tasks the broker lost. Everything a page at a
//! time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sandmill_runtime::broker::BrokerErrorKind;
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{WorkerInfo, now_ms};

use super::{Scheduler, SchedulerError};

/// How often the reconciler checks who can take queued tasks.
const WAITING_EVERY: Duration = Duration::from_secs(2);

/// Rows per page of the reconciler's and recovery's scans.
const PAGE: i64 = 1_000;

/// Registry entries read per page.
const WORKER_PAGE: usize = 500;

impl Scheduler {
    /// Publishes every queued or running task again (after a restart), a
    /// page at a time. Returns how many.
    pub async fn recover(&self) -> Result<usize, SchedulerError> {
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self.inner.store.live_messages_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.task_id;
            n += page.len();
            self.publish(page).await;
        }
        if n > 0 {
            tracing::info!(tasks = n, "re-published queued and running tasks");
        }
        Ok(n)
    }

    /// The reconciler, until the broker closes or the scheduler stops (see
    /// the module docs).
    pub async fn reconcile(self) {
        let mut last_absent = tokio::time::Instant::now();
        let mut last_queues = tokio::time::Instant::now();
        let queues_every = (self.inner.config.queue_idle / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(WAITING_EVERY).await;
            if self.is_stopping() {
                return;
            }
            if let Err(error) = self.check_waiting().await {
                if matches!(&error, SchedulerError::Broker(e) if e.kind() == BrokerErrorKind::Closed)
                {
                    return;
                }
                tracing::warn!(%error, "checking waiting jobs failed");
            }

            if last_queues.elapsed() >= queues_every {
                last_queues = tokio::time::Instant::now();
                match self
                    .inner
                    .broker
                    .remove_idle_queues(self.inner.config.queue_idle)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(queues = n, "removed idle task queues"),
                    Err(error) => tracing::warn!(%error, "removing idle task queues failed"),
                }
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
                // The window's count follows what the database says, should
                // anything have drifted.
                match self.inner.store.live_count().await {
                    Ok(live) => {
                        self.inner.live.store(live, Ordering::Relaxed);
                        self.inner.dispatch.notify_one();
                    }
                    Err(error) => tracing::warn!(%error, "counting live tasks failed"),
                }
            }
        }
    }

    /// Live workers, every page of the registry.
    async fn live_workers(&self) -> Result<Vec<WorkerInfo>, SchedulerError> {
        let now = now_ms();
        let mut live = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .broker
                .workers(after.as_deref(), WORKER_PAGE)
                .await?;
            let done = page.len() < WORKER_PAGE;
            after = page.last().map(|w| w.id.clone());
            live.extend(page.into_iter().filter(|w| !w.is_lost(now) && !w.draining));
            if done {
                return Ok(live);
            }
        }
    }

    /// One pass of the waiting check (see [`reconcile`](Self::reconcile)).
    pub async fn check_waiting(&self) -> Result<(), SchedulerError> {
        if !self.inner.broker.enforces_labels() {
            return Ok(());
        }
        self.inner.store.clear_stale_waiting().await?;
        let mut after = 0;
        let mut live: Option<Vec<WorkerInfo>> = None;
        loop {
            let jobs = self.inner.store.jobs_with_queued_tasks(after, PAGE).await?;
            let Some(last) = jobs.last() else {
                return Ok(());
            };
            after = last.0;
            if live.is_none() {
                live = Some(self.live_workers().await?);
            }
            let workers = live.as_deref().unwrap_or_default();
            for (job_id, needs, queue_timeout_ms, waiting_since) in jobs {
                self.check_job_waiting(workers, job_id, &needs, queue_timeout_ms, waiting_since)
                    .await?;
            }
        }
    }

    async fn check_job_waiting(
        &self,
        live: &[WorkerInfo],
        job_id: i64,
        needs: &Labels,
        queue_timeout_ms: i64,
        waiting_since: Option<i64>,
    ) -> Result<(), SchedulerError> {
        if live.iter().any(|w| needs.satisfied_by(&w.labels)) {
            if waiting_since.is_some() {
                self.inner.store.set_waiting(job_id, None).await?;
            }
            return Ok(());
        }
        let why = if live.is_empty() {
            "no live worker".to_owned()
        } else if needs.is_empty() {
            "no live worker takes unlabelled tasks".to_owned()
        } else {
            format!("no live worker offers labels {needs}")
        };
        let now = now_ms();
        match waiting_since {
            Some(since) if now - since >= queue_timeout_ms => {
                let error = format!(
                    "waited {} s for a worker ({why}); the queue timeout is {} s",
                    (now - since) / 1000,
                    queue_timeout_ms / 1000
                );
                tracing::warn!(job_id, %error, "queued tasks timed out");
                let expired = self.inner.store.expire_queued(job_id, &error).await?;
                self.inner.live.fetch_sub(expired.tasks, Ordering::Relaxed);
                // The room they held is other jobs' now.
                self.inner.dispatch.notify_one();
                if expired.ended {
                    self.job_changed(job_id);
                }
                self.forget(job_id).await;
            }
            _ => self.inner.store.set_waiting(job_id, Some(&why)).await?,
        }
        Ok(())
    }

    /// Publishes again every live task the broker holds no message for
    /// (lost with a broker's store, or never published), a page of live
    /// tasks at a time. Returns how many.
    pub async fn republish_absent(&self) -> Result<usize, SchedulerError> {
        let mut after = 0;
        let mut absent_all = Vec::new();
        loop {
            let live = self.inner.store.live_tasks_page(after, PAGE).await?;
            let Some(last) = live.last() else { break };
            after = *last;
            let Some(absent) = self.inner.broker.absent(&live).await? else {
                return Ok(0);
            };
            absent_all.extend(absent);
        }
        if absent_all.is_empty() {
            return Ok(0);
        }
        // A task whose result is on its way to the database is absent too:
        // look again once the recorder has caught up, and take only what
        // is still live and still absent.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut n = 0;
        for chunk in absent_all.chunks(PAGE as usize) {
            let still_live: Vec<i64> = self
                .inner
                .store
                .live_messages(chunk)
                .await?
                .iter()
                .map(|m| m.task_id)
                .collect();
            let Some(absent) = self.inner.broker.absent(&still_live).await? else {
                return Ok(n);
            };
            let absent: Vec<i64> = absent.into_iter().collect();
            let mut messages = self.inner.store.live_messages(&absent).await?;
            self.externalize(&mut messages).await?;
            self.mark_reserved(&mut messages);
            self.stamp(&mut messages);
            n += messages.len();
            self.inner.broker.republish(messages).await?;
        }
        Ok(n)
    }
}
