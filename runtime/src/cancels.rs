//! Jobs that ended early (cancelled, failed for good, past their queue
//! timeout), as a worker process hears of them: the attempts it runs of
//! such a job are interrupted, and those it fetched but has not started
//! are dropped unrun. The control plane has already recorded their end,
//! so nothing is reported for them.
//!
//! The word travels through the broker ([`Broker::cancel_jobs`] and
//! [`Broker::cancels`]); a worker that misses it (cut off at the time)
//! runs the attempts, and their results are ignored as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use crate::broker::{Broker, BrokerErrorKind};
use crate::message::TaskMessage;
use crate::sandbox::Interrupt;

/// Jobs ended early that a worker remembers, the newest: a fetched task of
/// one of them is dropped. Bounded so that memory does not grow with the
/// jobs a long-lived worker hears of; an older job's stray task runs and
/// its result is ignored.
pub const REMEMBERED_CANCELS: usize = 4_096;

/// How long the listener waits before subscribing again after the
/// broker refused or the subscription ended.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// What a worker process knows of jobs ended early, shared by its slots.
#[derive(Debug, Default)]
pub struct Cancels {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs ended early, oldest first, at most [`REMEMBERED_CANCELS`].
    order: VecDeque<i64>,
    ended: HashSet<i64>,
    /// Attempts running now, by task: their job and their switch.
    running: HashMap<i64, (i64, Interrupt)>,
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `job_id` ended early: its running attempts are interrupted, its
    /// fetched ones will not start. Returns how many were interrupted.
    pub fn cancel(&self, job_id: i64) -> usize {
        let mut state = self.lock();
        if state.ended.insert(job_id) {
            state.order.push_back(job_id);
            if state.order.len() > REMEMBERED_CANCELS
                && let Some(oldest) = state.order.pop_front()
            {
                state.ended.remove(&oldest);
            }
        }
        let mut interrupted = 0;
        for (job, switch) in state.running.values() {
            if *job == job_id {
                switch.interrupt();
                interrupted += 1;
            }
        }
        interrupted
    }

    /// Whether `job_id` is known to have ended early.
    pub fn ended(&self, job_id: i64) -> bool {
        self.lock().ended.contains(&job_id)
    }

    /// `task` is about to start: its switch, or `None` when its job ended
    /// early (then it must not run). Checked and registered at once, so a
    /// cancel never falls between the two.
    pub fn start(&self, task: &TaskMessage) -> Option<Interrupt> {
        self.start_of(task.job_id, task.task_id)
    }

    fn start_of(&self, job_id: i64, task_id: i64) -> Option<Interrupt> {
        let mut state = self.lock();
        if state.ended.contains(&job_id) {
            return None;
        }
        let switch = Interrupt::new();
        state.running.insert(task_id, (job_id, switch.clone()));
        Some(switch)
    }

    /// `task_id`'s attempt ended.
    pub fn end(&self, task_id: i64) {
        self.lock().running.remove(&task_id);
    }

    /// Attempts registered as running (for tests and the registry).
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }
}

/// Follows the broker's word of jobs ended early into `cancels`, until
/// the broker closes; resubscribes after a failure. Returns at once for a
/// broker that carries no such word.
pub async fn listen(broker: Arc<dyn Broker>, cancels: Arc<Cancels>) {
    loop {
        match broker.cancels().await {
            Ok(None) => return,
            Ok(Some(mut jobs)) => {
                while let Some(job_id) = jobs.next().await {
                    let interrupted = cancels.cancel(job_id);
                    tracing::debug!(
                        job_id,
                        interrupted,
                        "job ended early; its attempts here stop"
                    );
                }
                tracing::debug!(retry_in = ?LISTEN_RETRY, "the word of cancelled jobs stopped; listening again");
            }
            Err(error) if error.kind() == BrokerErrorKind::Closed => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?LISTEN_RETRY, "cannot listen for cancelled jobs");
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_throws_the_switches_of_its_job_only_and_stops_later_starts() {
        let cancels = Cancels::default();
        let mine = cancels.start_of(1, 10).unwrap();
        let other = cancels.start_of(2, 20).unwrap();
        assert_eq!(cancels.cancel(1), 1);
        assert!(mine.is_set());
        assert!(!other.is_set());
        assert!(
            cancels.start_of(1, 11).is_none(),
            "a fetched task of it does not start"
        );
        cancels.end(10);
        cancels.end(20);
        assert_eq!(cancels.running(), 0);
    }

    #[test]
    fn only_the_newest_cancels_are_remembered() {
        let cancels = Cancels::default();
        for job in 0..(REMEMBERED_CANCELS as i64 + 10) {
            cancels.cancel(job);
        }
        assert!(!cancels.ended(0), "the oldest went");
        assert!(cancels.ended(REMEMBERED_CANCELS as i64 + 9));
        assert_eq!(cancels.lock().ended.len(), REMEMBERED_CANCELS);
    }
}
