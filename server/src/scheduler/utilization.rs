//! Utilization over time: every [`SchedulerConfig::utilization_every`]
//! the worker registry is read and one sample per live worker is stored
//! (its slots, busy slots, tasks begun and ended since its last sample),
//! with the fleet's totals; `/v1/utilization` reads them back in buckets.
//! Samples older than the retention period (`--retain`) are deleted.
//!
//! [`SchedulerConfig::utilization_every`]: super::SchedulerConfig::utilization_every

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sandmill_runtime::message::WorkerInfo;

use super::{Scheduler, SchedulerError};
use crate::store::{Sample, TOTAL, now_ms};

/// Utilization is sampled every 10 s by default: a minute's bucket holds
/// six samples, and a day of a 100-worker fleet is under a million rows.
pub const DEFAULT_UTILIZATION_EVERY: Duration = Duration::from_secs(10);

/// Registry entries read per round trip.
const PAGE: usize = 256;

/// What the sampler remembers of a worker: its process and its counts at
/// the previous sample.
struct Seen {
    instance: String,
    started: u64,
    finished: u64,
    busy_ms: u64,
    last_seen: i64,
    /// Its busy slots between its last two heartbeats.
    busy: f64,
}

impl Scheduler {
    /// Samples utilization until stopped.
    pub async fn run_utilization(self) {
        let every = self
            .inner
            .config
            .utilization_every
            .max(Duration::from_millis(100));
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut previous: Option<i64> = None;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let at = now_ms();
            let sampled = self.sample_utilization(at, previous, &mut seen).await;
            let pruned = match self.inner.config.retain {
                Some(retain) => {
                    let before = at - i64::try_from(retain.as_millis()).unwrap_or(i64::MAX);
                    self.inner.store.prune_utilization(before).await.map(drop)
                }
                None => Ok(()),
            };
            // Stopping: the database may be closed under the sampler.
            if self.is_stopping() {
                return;
            }
            match sampled {
                Ok(()) => previous = Some(at),
                Err(error) => tracing::warn!(%error, "sampling utilization failed"),
            }
            if let Err(error) = pruned {
                tracing::warn!(%error, "deleting old utilization samples failed");
            }
        }
    }

    /// Stores a sample of every live worker at `at`, and the totals.
    async fn sample_utilization(
        &self,
        at: i64,
        previous: Option<i64>,
        seen: &mut HashMap<String, Seen>,
    ) -> Result<(), SchedulerError> {
        let mut total = Sample {
            worker: TOTAL.to_owned(),
            slots: 0,
            busy: 0.0,
            started: 0,
            finished: 0,
        };
        let mut live = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.inner.broker.workers(after.as_deref(), PAGE).await?;
            let samples: Vec<Sample> = page
                .iter()
                .filter(|w| !w.is_lost(at))
                .map(|w| {
                    live.insert(w.id.clone());
                    sample(w, previous, seen)
                })
                .collect();
            for s in &samples {
                total.slots += s.slots;
                total.busy += s.busy;
                total.started += s.started;
                total.finished += s.finished;
            }
            self.inner.store.record_utilization(at, &samples).await?;
            if page.len() < PAGE {
                break;
            }
            after = page.last().map(|w| w.id.clone());
        }
        seen.retain(|id, _| live.contains(id));
        self.inner.store.record_utilization(at, &[total]).await?;
        Ok(())
    }
}

/// `worker`'s sample: counts since its previous one (all its counts when
/// it is a process that started since the previous sample; none when
/// the sampler first sees one that was running before).
fn sample(worker: &WorkerInfo, previous: Option<i64>, seen: &mut HashMap<String, Seen>) -> Sample {
    let slots = i64::try_from(worker.capacity).unwrap_or(i64::MAX);
    let last = seen.get(&worker.id);
    let same = last.filter(|last| last.instance == worker.instance);
    let (started, finished) = match (same, last) {
        (Some(last), _) => (
            worker.started.saturating_sub(last.started),
            worker.finished.saturating_sub(last.finished),
        ),
        // Restarted since the previous sample, or started after it.
        (None, Some(_)) => (worker.started, worker.finished),
        (None, None) if previous.is_some_and(|p| worker.started_at >= p) => {
            (worker.started, worker.finished)
        }
        (None, None) => (0, 0),
    };
    // Busy slots: the rise of its busy time over its clock between two
    // heartbeats; the same as before while no new heartbeat came; its
    // running tasks when first seen.
    let busy = match same {
        Some(last) if worker.last_seen > last.last_seen => {
            worker.busy_ms.saturating_sub(last.busy_ms) as f64
                / (worker.last_seen - last.last_seen) as f64
        }
        Some(last) => last.busy,
        None => worker.running.len() as f64,
    }
    .clamp(0.0, slots as f64);
    seen.insert(
        worker.id.clone(),
        Seen {
            instance: worker.instance.clone(),
            started: worker.started,
            finished: worker.finished,
            busy_ms: worker.busy_ms,
            last_seen: worker.last_seen,
            busy,
        },
    );
    Sample {
        worker: worker.id.clone(),
        slots,
        busy,
        started: i64::try_from(started).unwrap_or(i64::MAX),
        finished: i64::try_from(finished).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandmill_runtime::labels::Labels;

    fn worker(
        instance: &str,
        started: u64,
        finished: u64,
        busy_ms: u64,
        last_seen: i64,
    ) -> WorkerInfo {
        WorkerInfo {
            instance: instance.to_owned(),
            started,
            finished,
            busy_ms,
            last_seen,
            running: vec![1, 2, 3],
            started_at: 1_000,
            ..WorkerInfo::starting("w", Labels::default(), 2)
        }
    }

    #[test]
    fn counts_are_deltas_of_one_process_and_busy_is_its_rise_over_time() {
        let mut seen = HashMap::new();
        // First seen, running before the sampler: no counts to give; busy
        // is what it runs (within its slots).
        let first = sample(&worker("a", 10, 8, 50_000, 10_000), None, &mut seen);
        assert_eq!(
            (first.slots, first.busy, first.started, first.finished),
            (2, 2.0, 0, 0)
        );
        // 1.5 s of busy slots over 3 s of its clock: 0.5 busy.
        let next = sample(
            &worker("a", 15, 12, 51_500, 13_000),
            Some(11_000),
            &mut seen,
        );
        assert_eq!((next.busy, next.started, next.finished), (0.5, 5, 4));
        // No new heartbeat: the same busy, no new counts.
        let again = sample(
            &worker("a", 15, 12, 51_500, 13_000),
            Some(12_000),
            &mut seen,
        );
        assert_eq!((again.busy, again.started, again.finished), (0.5, 0, 0));
        // Restarted: its counts began again at zero.
        let restarted = sample(&worker("b", 3, 2, 100, 14_000), Some(13_000), &mut seen);
        assert_eq!((restarted.started, restarted.finished), (3, 2));
    }
}
