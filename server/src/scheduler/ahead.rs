//! Work queued ahead: a fleet's task queues are first in, first out, so
//! whatever the dispatcher has published into one waits ahead of every
//! task published after it. A whole window of one tenant's long tasks
//! there would hold another tenant's job for hundreds of task lengths,
//! whatever share the dispatcher gives it. So the dispatcher keeps only
//! about [`AHEAD`] of work in each queue (at the rate workers take its
//! tasks, and at least [`MIN_AHEAD`] tasks); the rest waits in the
//! database, where tenants share the room equally. The in-process
//! broker's queues take turns between tenants themselves: nothing is held
//! back there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandmill_runtime::broker::QueueDepth;

/// How much work (in time, at the rate workers take it) a queue holds at
/// most: what a job that comes later waits behind.
pub const AHEAD: Duration = Duration::from_millis(500);

/// Tasks a queue may hold however slowly its tasks go (a queue never
/// seen yet, or one whose workers took nothing lately).
pub const MIN_AHEAD: i64 = 4;

/// Tasks a queue may hold at most, however fast they go.
const MAX_AHEAD: i64 = 1 << 20;

/// How often the queues' depths are read again.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// How soon the dispatcher looks again at work it held back, when
/// nothing else wakes it (workers taking tasks do not).
pub const HELD_RECHECK: Duration = Duration::from_millis(100);

/// The stretch of time a queue's rate is measured over.
const RATE_OVER: Duration = Duration::from_millis(500);

/// One queue as last read.
#[derive(Debug, Clone, Copy)]
struct Queue {
    /// Tasks waiting in it, undelivered (with what was published since).
    pending: i64,
    /// Its deliveries counter.
    delivered: u64,
    /// Deliveries per second over the last [`RATE_OVER`] measured.
    rate: f64,
    /// Since when (and from which count) the rate is being measured.
    since: Instant,
    since_delivered: u64,
    /// Tasks it may hold now.
    most: i64,
}

/// The depths of the queues, as the dispatcher last read them: one entry
/// per label set and priority in use (the broker removes idle queues).
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    /// The broker's queues take turns themselves: nothing is held back.
    pub(crate) off: bool,
    /// Whether the last round held work back from a full queue.
    pub(crate) held: bool,
    sampled: Option<Instant>,
    queues: HashMap<(String, u8), Queue>,
}

impl Ahead {
    /// Whether the depths are older than [`SAMPLE_EVERY`].
    pub(crate) fn stale(&self, now: Instant) -> bool {
        self.sampled
            .is_none_or(|at| now.duration_since(at) >= SAMPLE_EVERY)
    }

    /// Takes a reading of the queues at `now`. A queue holds what its
    /// workers take in [`AHEAD`], measured over [`RATE_OVER`]; one found
    /// empty after deliveries (workers took all it had: a sweep starting
    /// on fast tasks) may hold sixteen times as much at once, and it comes
    /// down by halves.
    pub(crate) fn update(&mut self, depths: Vec<QueueDepth>, now: Instant) {
        let mut queues = HashMap::with_capacity(depths.len());
        for depth in depths {
            let key = (depth.token, depth.priority);
            let pending = i64::try_from(depth.pending).unwrap_or(i64::MAX);
            let queue = match self.queues.get(&key) {
                None => Queue {
                    pending,
                    delivered: depth.delivered,
                    rate: 0.0,
                    since: now,
                    since_delivered: depth.delivered,
                    most: MIN_AHEAD,
                },
                Some(before) => {
                    let mut queue = *before;
                    let span = now.duration_since(before.since);
                    if span >= RATE_OVER {
                        let taken = depth.delivered.saturating_sub(before.since_delivered);
                        queue.rate = taken as f64 / span.as_secs_f64();
                        queue.since = now;
                        queue.since_delivered = depth.delivered;
                    }
                    let drained = pending == 0 && depth.delivered > before.delivered;
                    queue.most = if drained {
                        before.most.saturating_mul(16)
                    } else {
                        most(queue.rate).max(before.most / 2)
                    }
                    .clamp(MIN_AHEAD, MAX_AHEAD);
                    queue.pending = pending;
                    queue.delivered = depth.delivered;
                    queue
                }
            };
            queues.insert(key, queue);
        }
        self.queues = queues;
        self.sampled = Some(now);
    }

    /// How many more tasks the queue of `token` at `priority` may take.
    pub(crate) fn room(&self, token: &str, priority: u8) -> i64 {
        match self.queues.get(&(token.to_owned(), priority)) {
            Some(queue) => (queue.most - queue.pending).max(0),
            None => MIN_AHEAD,
        }
    }

    /// Counts `n` tasks published into a queue since the last reading.
    pub(crate) fn published(&mut self, token: &str, priority: u8, n: i64) {
        let now = Instant::now();
        let queue = self
            .queues
            .entry((token.to_owned(), priority))
            .or_insert(Queue {
                pending: 0,
                delivered: 0,
                rate: 0.0,
                since: now,
                since_delivered: 0,
                most: MIN_AHEAD,
            });
        queue.pending = queue.pending.saturating_add(n);
    }
}

/// Tasks a queue taken at `rate` a second may hold.
fn most(rate: f64) -> i64 {
    // Saturating: a float past i64 becomes i64::MAX.
    ((rate * AHEAD.as_secs_f64()) as i64).max(MIN_AHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(pending: u64, delivered: u64) -> Vec<QueueDepth> {
        vec![QueueDepth {
            token: "any".to_owned(),
            priority: 0,
            pending,
            delivered,
        }]
    }

    #[test]
    fn a_queue_holds_about_half_a_second_of_work() {
        let mut ahead = Ahead::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Never seen: the minimum.
        assert_eq!(ahead.room("any", 0), MIN_AHEAD);
        ahead.update(depth(0, 0), at(0));
        assert_eq!(ahead.room("any", 0), MIN_AHEAD);
        ahead.published("any", 0, 3);
        assert_eq!(ahead.room("any", 0), MIN_AHEAD - 3);
        // Fast tasks: found empty after deliveries, sixteen times as much
        // at each reading, then half a second's worth once measured.
        ahead.update(depth(0, 4), at(25));
        assert_eq!(ahead.room("any", 0), 64);
        ahead.update(depth(0, 68), at(50));
        assert_eq!(ahead.room("any", 0), 1_024);
        ahead.update(depth(10, 5_000), at(500));
        assert_eq!(ahead.room("any", 0), 5_000 - 10);
        // Slow tasks: two a second, down by halves to the minimum.
        for ms in 1..=12u64 {
            ahead.update(depth(3, 5_000 + ms), at(500 + ms * 500));
        }
        assert_eq!(ahead.room("any", 0), 1);
        // Other queues are their own.
        assert_eq!(ahead.room("any", 9), MIN_AHEAD);
        assert!(!ahead.stale(at(6_500)));
        assert!(ahead.stale(at(6_525)));
    }
}
