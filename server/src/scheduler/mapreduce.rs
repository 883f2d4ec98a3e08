//! Map-reduce jobs between their phases: once every map succeeded, each
//! reducer's run list (its partition's runs, every map's in map order) is
//! written to the blob store and the reduces join the job's backlog; a
//! task that fails for good fails the job at once.

use std::sync::atomic::Ordering;

use sandmill_runtime::shuffle::{MapOutput, ReduceInput};

use super::{Scheduler, SchedulerError};
use crate::model::JobStatus;
use crate::store::Item;
use crate::store::RunningTask;

/// How often running map-reduce jobs are looked at for stragglers (and
/// for reduces left unplanned by a failure).
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Jobs looked at per round of the scan for unplanned reduces.
const PLAN_PAGE: i64 = 100;

/// A task is a straggler when it has run this many times its phase's
/// median attempt...
const STRAGGLER_FACTOR: i64 = 2;
/// ... and at least this much longer than the median (ms): quick phases'
/// noise is no straggler.
const STRAGGLER_MARGIN_MS: i64 = 1_000;

/// The tasks of one phase that are stragglers by its timings: running far
/// longer than the median of those done, once at least half are done; at
/// most a tenth of the phase (at least one) backed up at once.
fn stragglers(running: &[RunningTask], done: &[i64], phase_size: i64, now: i64) -> Vec<i64> {
    if done.is_empty() || (done.len() as i64) * 2 < phase_size {
        return Vec::new();
    }
    let mut sorted = done.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let threshold = (median * STRAGGLER_FACTOR).max(median + STRAGGLER_MARGIN_MS);
    let cap = (phase_size / 10).max(1);
    let mut room = cap - running.iter().filter(|t| t.backed_up).count() as i64;
    let mut slow: Vec<&RunningTask> = running
        .iter()
        .filter(|t| !t.backed_up && now - t.started_at > threshold)
        .collect();
    slow.sort_by_key(|t| t.started_at);
    let mut chosen = Vec::new();
    for task in slow {
        if room <= 0 {
            break;
        }
        chosen.push(task.id);
        room -= 1;
    }
    chosen
}

/// The name a reduce's output has, as `run -o` and `fetch` write it.
pub fn part_name(partition: i64) -> String {
    format!("part-{partition:05}")
}

impl Scheduler {
    /// Plans a map-reduce job's reduces if its maps all succeeded (a job
    /// planned already, or not ready, is left alone).
    #[tracing::instrument(skip(self))]
    pub(super) async fn plan_reduces(&self, job_id: i64) -> Result<(), SchedulerError> {
        let Some(job) = self.inner.store.job(job_id).await? else {
            return Ok(());
        };
        if job.maps.is_none() || job.status() != JobStatus::Running || job.planned == 1 {
            return Ok(());
        }
        let maps = job.maps.unwrap_or(0);
        let results = self.inner.store.map_results(job_id, maps).await?;
        if results.len() as i64 != maps {
            return Ok(());
        }
        let reducers = usize::try_from(job.reducers).unwrap_or(0);
        let mut runs: Vec<Vec<_>> = vec![Vec::new(); reducers];
        for result in results {
            let bytes = match (result.output, result.output_hash) {
                (Some(bytes), _) => bytes,
                (None, Some(hash)) => self.inner.blobs.get(&hash).await?.ok_or_else(|| {
                    SchedulerError::Internal(format!(
                        "map {} of job {job_id}: its output blob {hash} is gone",
                        result.seq
                    ))
                })?,
                (None, None) => Vec::new(),
            };
            let output: MapOutput = serde_json::from_slice(&bytes).map_err(|e| {
                SchedulerError::Internal(format!(
                    "map {} of job {job_id}: its output is not a run list: {e}",
                    result.seq
                ))
            })?;
            for (partition, list) in output.partitions.into_iter().enumerate().take(reducers) {
                runs[partition].extend(list);
            }
        }
        let mut items = Vec::with_capacity(reducers);
        for (partition, runs) in runs.into_iter().enumerate() {
            let input = ReduceInput {
                partition: partition as u32,
                runs,
            };
            let bytes = serde_json::to_vec(&input)
                .map_err(|e| SchedulerError::Internal(format!("writing a run list: {e}")))?;
            let hash = self.inner.blobs.put(&bytes).await?;
            items.push(Item {
                params: job.task_params.clone(),
                input_hash: Some(hash),
                input_name: part_name(partition as i64),
                inputs: Vec::new(),
                seed: None,
            });
        }
        if self.inner.store.plan_reduces(job_id, &items).await? {
            tracing::info!(job_id, reducers, "maps done; reduces planned");
            self.inner.dispatch.notify_one();
        }
        Ok(())
    }

    /// Fails a running map-reduce job with a task that failed for good:
    /// its other tasks are cancelled, its queued messages dropped.
    pub(super) async fn fail_early(&self, job_id: i64) {
        match self.inner.store.fail_job(job_id).await {
            Ok(Ok(live)) => {
                self.inner.live.fetch_sub(live, Ordering::Relaxed);
                self.job_changed(job_id);
                self.inner.dispatch.notify_one();
                self.stop_job(job_id).await;
                // A map-reduce step: what reads it is blocked.
                let scheduler = self.clone();
                tokio::spawn(async move { scheduler.job_ended(job_id).await });
            }
            // It ended meanwhile.
            Ok(Err(_)) => {}
            Err(error) => {
                tracing::warn!(job_id, %error, "failing a map-reduce job failed; it ends when its running tasks do")
            }
        }
    }

    /// Watches running map-reduce jobs until the server stops: starts
    /// backups of stragglers, plans reduces a failure left unplanned.
    /// Timing is what it looks at, so it looks every [`WATCH_EVERY`].
    pub async fn watch_mapreduce(self) {
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let planned = self.plan_unplanned().await;
            let steps = self.plan_pipelines().await;
            let speculated = self.speculate().await;
            // A failure while the server stops is the closed database.
            if *stopping.borrow() {
                return;
            }
            if let Err(error) = steps {
                tracing::warn!(%error, "looking for pipeline steps to plan failed");
            }
            if let Err(error) = planned {
                tracing::warn!(%error, "looking for map-reduce jobs to plan failed");
            }
            if let Err(error) = speculated {
                tracing::warn!(%error, "looking for stragglers failed");
            }
        }
    }

    /// Starts backup attempts of stragglers in running map-reduce jobs
    /// that allow it (speculative execution); returns how many.
    pub(super) async fn speculate(&self) -> Result<usize, SchedulerError> {
        let mut started = 0;
        for (job_id, maps) in self.inner.store.speculating_jobs(PLAN_PAGE).await? {
            let Some(job) = self.inner.store.job(job_id).await? else {
                continue;
            };
            let running = self.inner.store.running_tasks(job_id).await?;
            let now = crate::store::now_ms();
            // Nothing has run long enough to be a straggler: the phases'
            // timings need not be read.
            if running
                .iter()
                .all(|t| t.backed_up || now - t.started_at <= STRAGGLER_MARGIN_MS)
            {
                continue;
            }
            let done = self.inner.store.phase_durations(job_id, maps).await?;
            let sizes = [maps, job.reducers];
            let mut chosen = Vec::new();
            for phase in 0..2 {
                let in_phase: Vec<RunningTask> = running
                    .iter()
                    .copied()
                    .filter(|t| usize::from(t.seq >= maps) == phase)
                    .collect();
                chosen.extend(stragglers(&in_phase, &done[phase], sizes[phase], now));
            }
            let mut messages = Vec::new();
            for task_id in chosen {
                if let Some(message) = self.inner.store.back_up(task_id).await? {
                    tracing::info!(
                        job_id,
                        task_id,
                        attempt = message.attempt,
                        "a straggler: backup attempt started"
                    );
                    messages.push(message);
                }
            }
            started += messages.len();
            self.publish(messages).await;
        }
        Ok(started)
    }

    /// Plans the reduces of every job whose maps are done but whose
    /// reduces are not (after a restart, or a planning that failed).
    pub(super) async fn plan_unplanned(&self) -> Result<(), SchedulerError> {
        for job_id in self.inner.store.unplanned_jobs(PLAN_PAGE).await? {
            if let Err(error) = self.plan_reduces(job_id).await {
                tracing::warn!(job_id, %error, "planning reduces failed; trying again later");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: i64, started_at: i64, backed_up: bool) -> RunningTask {
        RunningTask {
            id,
            seq: id,
            started_at,
            backed_up,
        }
    }

    #[test]
    fn only_tasks_far_past_the_median_are_backed_up() {
        let done = vec![100, 120, 110, 90, 130];
        let now = 10_000;
        // 8 s and 0.5 s running: only the first is a straggler.
        let tasks = [running(1, 2_000, false), running(2, 9_500, false)];
        assert_eq!(stragglers(&tasks, &done, 7, now), vec![1]);
        // Too few done yet: no median to judge by.
        assert!(stragglers(&tasks, &done[..2], 7, now).is_empty());
        // One backup already runs, and 7 tasks allow one at a time.
        let tasks = [running(1, 2_000, true), running(3, 1_000, false)];
        assert!(stragglers(&tasks, &done, 7, now).is_empty());
        // A larger phase allows more, oldest first.
        let tasks = [running(4, 3_000, false), running(5, 1_000, false)];
        assert_eq!(stragglers(&tasks, &done, 10, now), vec![5]);
        let many: Vec<i64> = done.iter().cycle().take(10).copied().collect();
        assert_eq!(stragglers(&tasks, &many, 20, now), vec![5, 4]);
    }
}
