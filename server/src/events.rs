//! Live events: what happens to tasks and jobs, as it happens, for
//! `GET /v1/events`, `GET /v1/jobs/{id}/events`, `sandmill wait` and
//! `sandmill watch`.
//!
//! The recorder pushes an event once the database holds what it says (a
//! task started or ended, a job's counts moved or it ended); a guest's
//! `progress` calls pass through without being stored. Events go into a
//! ring of the last [`DEFAULT_EVENT_BUFFER`] (memory does not grow with
//! the number of tasks); each has an id one above the last, so a client
//! that reconnects with the last id it saw (`Last-Event-ID`) gets exactly
//! what followed. Ids start at the server's start time in microseconds,
//! so they keep growing across restarts; a client whose id is older than
//! the ring, or from before a restart, is told it lagged (and re-reads
//! the state it follows) instead of silently missing events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sandmill_runtime::Reason;
use tokio::sync::watch;

use crate::model::{JobStatus, TaskState};

/// Events kept for clients that reconnect, by default: a few seconds of a
/// busy fleet's results; small events (an error text is cut to
/// [`EVENT_ERROR_BYTES`]), so at most a few MiB.
pub const DEFAULT_EVENT_BUFFER: usize = 16_384;

/// Longest error text an event carries (the task's page has all of it).
pub const EVENT_ERROR_BYTES: usize = 512;

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Its id: one above the previous event's.
    pub id: u64,
    /// When it was pushed (ms since the epoch).
    pub at_ms: i64,
    /// The job it is about.
    pub job_id: i64,
    /// What happened.
    pub what: What,
}

/// What an event says.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A task changed state: `running` (a worker took an attempt),
    /// `queued` (an attempt failed and another follows), or a final state.
    Task {
        /// The task.
        task_id: i64,
        /// The attempt the change is about.
        attempt: i64,
        /// Its new state.
        state: TaskState,
        /// Why the attempt failed.
        reason: Option<Reason>,
        /// What went wrong, cut to [`EVENT_ERROR_BYTES`].
        error: Option<String>,
        /// The worker of the attempt.
        worker: Option<String>,
    },
    /// A running task's guest said how far it is.
    Progress {
        /// The task.
        task_id: i64,
        /// The attempt.
        attempt: i64,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
    },
    /// A job's counts or status changed.
    Job(JobCounts),
}

/// A job's status and task counts, as an event carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobCounts {
    /// The pipeline it is a step of.
    pub parent_id: Option<i64>,
    /// Where it is.
    pub status: JobStatus,
    /// Its tasks.
    pub total: i64,
    /// Of them, done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// A client's place is no longer in the ring: events it never saw are
/// gone (or it comes from before a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged;

/// The ring of recent events, with a signal for each push. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    ring: Mutex<Ring>,
    /// The last id pushed; closed (`u64::MAX`) when the server stops.
    last: watch::Sender<u64>,
    /// Ids of this run start above this one.
    base: u64,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    next: u64,
}

impl Hub {
    /// A hub keeping the last `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let base = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
        )
        .unwrap_or(0);
        Hub {
            inner: Arc::new(HubInner {
                ring: Mutex::new(Ring {
                    events: VecDeque::with_capacity(capacity.min(1024)),
                    capacity: capacity.max(1),
                    next: base + 1,
                }),
                last: watch::channel(base).0,
                base,
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends events about `(job, what)`, in order.
    pub fn push(&self, events: impl IntoIterator<Item = (i64, What)>) {
        let at_ms = sandmill_runtime::message::now_ms();
        let last = {
            let mut ring = self.ring();
            for (job_id, what) in events {
                let id = ring.next;
                ring.next += 1;
                if ring.events.len() == ring.capacity {
                    ring.events.pop_front();
                }
                ring.events.push_back(Arc::new(Event {
                    id,
                    at_ms,
                    job_id,
                    what,
                }));
            }
            ring.next - 1
        };
        self.inner.last.send_if_modified(|seen| {
            let changed = *seen != last && *seen != u64::MAX;
            if changed {
                *seen = last;
            }
            changed
        });
    }

    /// The id of the last event (a new client starts after it).
    pub fn last_id(&self) -> u64 {
        self.ring().next - 1
    }

    /// Wakes whoever waits for events; turns `u64::MAX` once the hub is
    /// closed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.last.subscribe()
    }

    /// Ends every stream (the server stops).
    pub fn close(&self) {
        self.inner.last.send_replace(u64::MAX);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        *self.inner.last.borrow() == u64::MAX
    }

    /// Events after `after` that `keep` takes, looking at `scan` events at
    /// most; with the id of the last event looked at (the next call's
    /// `after`). [`Lagged`] when events after `after` are gone.
    pub fn read(
        &self,
        after: u64,
        scan: usize,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<(Vec<Arc<Event>>, u64), Lagged> {
        let ring = self.ring();
        let last = ring.next - 1;
        if after < self.inner.base || after > last {
            return Err(Lagged);
        }
        let first = ring.events.front().map_or(ring.next, |e| e.id);
        if after + 1 < first {
            return Err(Lagged);
        }
        let start = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        let mut seen = after;
        let mut kept = Vec::new();
        for event in ring.events.iter().skip(start).take(scan) {
            seen = event.id;
            if keep(event) {
                kept.push(event.clone());
            }
        }
        Ok((kept, seen))
    }
}

/// Cuts an error text for an event.
pub fn short_error(error: &str) -> String {
    let mut text = error.to_owned();
    sandmill_runtime::message::clip(&mut text, EVENT_ERROR_BYTES);
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn progress(task_id: i64) -> What {
        What::Progress {
            task_id,
            attempt: 0,
            done: 1,
            total: 2,
        }
    }

    #[test]
    fn a_reader_resumes_after_the_last_id_it_saw_and_learns_when_it_lagged() {
        let hub = Hub::new(4);
        let start = hub.last_id();
        hub.push((1..=3).map(|t| (7, progress(t))));
        let (events, seen) = hub.read(start, 2, |_| true).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, start + 1);
        let (rest, seen) = hub.read(seen, 100, |_| true).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, start + 3);
        assert_eq!(seen, start + 3);
        // Nothing new: nothing read, the place kept.
        assert_eq!(hub.read(seen, 100, |_| true).unwrap(), (vec![], seen));
        // Three more push the first two out of a ring of four.
        hub.push((4..=6).map(|t| (8, progress(t))));
        assert_eq!(hub.read(start, 100, |_| true), Err(Lagged));
        assert_eq!(hub.read(start + 1, 100, |_| true), Err(Lagged));
        let (kept, _) = hub.read(start + 2, 100, |e| e.job_id == 8).unwrap();
        assert_eq!(kept.len(), 3);
        // An id from before this run, or from the future, lagged.
        assert_eq!(hub.read(start - 1, 100, |_| true), Err(Lagged));
        assert_eq!(hub.read(start + 100, 100, |_| true), Err(Lagged));
    }

    #[test]
    fn closing_wakes_subscribers_for_good() {
        let hub = Hub::new(4);
        let rx = hub.subscribe();
        hub.close();
        assert!(hub.is_closed());
        assert_eq!(*rx.borrow(), u64::MAX);
        hub.push([(1, progress(1))]);
        assert_eq!(*rx.borrow(), u64::MAX);
    }
}
