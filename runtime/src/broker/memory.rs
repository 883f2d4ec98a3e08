//! [`MemoryBroker`]: the in-process broker of the embedded mode.
//!
//! Tasks wait in one lane per priority (higher first), so an interactive
//! call never waits behind a sweep; within a lane each tenant's tasks
//! wait in order and the tenants take turns, so one tenant's queued sweep
//! does not hold up another's job (fair share). Both queues are
//! bounded: the task queue by a count (the control plane's dispatch window
//! keeps it well under), the event queue by bytes; a full queue makes its
//! producer wait, never grow.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::sync::Notify;

use super::{Broker, BrokerError, BrokerErrorKind};
use crate::labels::Labels;
use crate::message::{TaskEvent, TaskMessage, WorkerInfo, now_ms};

/// Tasks the in-process queue holds at most by default.
pub const DEFAULT_TASK_CAPACITY: usize = 1 << 20;

/// Bytes of events waiting for the recorder at most by default: workers
/// wait when the recorder falls this far behind.
pub const DEFAULT_EVENT_BYTES: usize = 64 << 20;

/// Queues in memory. Nothing here needs to survive a crash: the control
/// plane re-publishes queued tasks from the database on start.
pub struct MemoryBroker {
    tasks: Mutex<Tasks>,
    task_ready: Notify,
    /// Wakes every `fetch_lane` on any publish: those wait for one lane and
    /// must not take the wake-ups meant for workers that take any.
    lane_ready: Notify,
    task_room: Notify,
    events: Mutex<Events>,
    event_ready: Notify,
    event_room: Notify,
    workers: Mutex<BTreeMap<String, WorkerInfo>>,
    task_capacity: usize,
    event_bytes: usize,
    /// Jobs ended early, to the worker slots that listen.
    cancelled: tokio::sync::broadcast::Sender<i64>,
}

/// Word of cancelled jobs held for a listener that lags: past it, the
/// oldest is lost (its tasks run and are ignored, as before cancels).
const CANCEL_BACKLOG: usize = 1_024;

/// One priority's tasks: a queue per tenant, the tenants taking turns.
#[derive(Default)]
struct Lane {
    /// Tenants with tasks waiting, the next to be served first.
    turns: VecDeque<(String, VecDeque<TaskMessage>)>,
}

impl Lane {
    fn push(&mut self, task: TaskMessage, front: bool) {
        if let Some((_, queue)) = self.turns.iter_mut().find(|(t, _)| *t == task.tenant) {
            if front {
                queue.push_front(task);
            } else {
                queue.push_back(task);
            }
            return;
        }
        let turn = (task.tenant.clone(), VecDeque::from([task]));
        if front {
            self.turns.push_front(turn);
        } else {
            self.turns.push_back(turn);
        }
    }

    /// The next tenant's first task; that tenant goes to the back.
    fn pop(&mut self) -> Option<TaskMessage> {
        let (tenant, mut queue) = self.turns.pop_front()?;
        let task = queue.pop_front();
        if !queue.is_empty() {
            self.turns.push_back((tenant, queue));
        }
        task
    }

    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Keeps the tasks `keep` says to.
    fn retain(&mut self, mut keep: impl FnMut(&TaskMessage) -> bool) {
        for (_, queue) in &mut self.turns {
            queue.retain(&mut keep);
        }
        self.turns.retain(|(_, queue)| !queue.is_empty());
    }
}

#[derive(Default)]
struct Tasks {
    /// Lanes by priority; fetched from the highest first.
    lanes: BTreeMap<u8, Lane>,
    len: usize,
    queued: HashSet<(i64, i64)>,
    closed: bool,
    /// What this process's workers offer (see
    /// [`MemoryBroker::with_offers`]); `None`: they take every task.
    offers: Option<Labels>,
    /// Tasks needing labels the workers do not offer: held, never
    /// fetched, until their job ends (the control plane's queue timeout,
    /// or a cancel). Bounded by the dispatch window, as the lanes are.
    held: Vec<TaskMessage>,
}

impl Tasks {
    /// Queues `task` for the workers; false when it is a duplicate, or
    /// held because no worker here offers its labels.
    fn push(&mut self, task: TaskMessage, front: bool) -> bool {
        if !self.queued.insert(task.dedup_key()) {
            return false;
        }
        if let Some(offers) = &self.offers
            && !task.labels.satisfied_by(offers)
        {
            self.held.push(task);
            return false;
        }
        self.lanes
            .entry(task.priority)
            .or_default()
            .push(task, front);
        self.len += 1;
        true
    }

    /// The next task of lane `priority` only.
    fn pop_lane(&mut self, priority: u8) -> Option<TaskMessage> {
        let lane = self.lanes.get_mut(&priority)?;
        let task = lane.pop();
        if lane.is_empty() {
            self.lanes.remove(&priority);
        }
        let task = task?;
        self.len -= 1;
        self.queued.remove(&task.dedup_key());
        Some(task)
    }

    fn pop(&mut self) -> Option<TaskMessage> {
        let mut lane = self.lanes.last_entry()?;
        let task = lane.get_mut().pop();
        if lane.get().is_empty() {
            lane.remove();
        }
        let task = task?;
        self.len -= 1;
        self.queued.remove(&task.dedup_key());
        Some(task)
    }
}

#[derive(Default)]
struct Events {
    queue: VecDeque<TaskEvent>,
    bytes: usize,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_TASK_CAPACITY, DEFAULT_EVENT_BYTES)
    }
}

impl MemoryBroker {
    /// An empty broker with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty broker holding at most `tasks` queued tasks and
    /// `event_bytes` of unrecorded events.
    pub fn with_capacity(tasks: usize, event_bytes: usize) -> Self {
        MemoryBroker {
            tasks: Mutex::default(),
            task_ready: Notify::new(),
            lane_ready: Notify::new(),
            task_room: Notify::new(),
            events: Mutex::default(),
            event_ready: Notify::new(),
            event_room: Notify::new(),
            workers: Mutex::default(),
            task_capacity: tasks.max(1),
            event_bytes: event_bytes.max(1),
            cancelled: tokio::sync::broadcast::channel(CANCEL_BACKLOG).0,
        }
    }

    /// Workers here offer `offers` only: a task needing other labels is
    /// held, as on a fleet with no such worker, and the control plane says
    /// why it waits and times it out (see [`Broker::enforces_labels`]).
    pub fn with_offers(self, offers: Labels) -> Self {
        self.lock_tasks().offers = Some(offers);
        self
    }

    /// Wakes every waiting fetch with a `Closed` error.
    pub fn close(&self) {
        self.lock_tasks().closed = true;
        self.task_ready.notify_waiters();
        self.lane_ready.notify_waiters();
        self.task_room.notify_waiters();
        self.event_ready.notify_waiters();
        self.event_room.notify_waiters();
    }

    /// Tasks waiting for a worker.
    pub fn queued(&self) -> usize {
        self.lock_tasks().len
    }

    /// Events waiting for the recorder.
    pub fn unrecorded(&self) -> usize {
        self.lock_events().queue.len()
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // Queue operations cannot panic halfway; a poisoned lock is usable.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerInfo>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed(&self) -> bool {
        self.lock_tasks().closed
    }
}

fn closed() -> BrokerError {
    BrokerError::new(BrokerErrorKind::Closed)
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            let room = self.task_room.notified();
            let added = {
                let mut state = self.lock_tasks();
                if state.closed {
                    return Err(closed());
                }
                let mut added = 0;
                let now = now_ms();
                while state.len < self.task_capacity {
                    let Some(mut task) = tasks.next() else { break };
                    task.published_ms = Some(now);
                    added += usize::from(state.push(task, false));
                }
                added
            };
            for _ in 0..added {
                self.task_ready.notify_one();
            }
            if added > 0 {
                self.lane_ready.notify_waiters();
            }
            if tasks.peek().is_some() {
                // Full: wait for a fetch to make room.
                room.await;
            }
        }
        Ok(())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError> {
        loop {
            let notified = self.task_ready.notified();
            {
                let mut state = self.lock_tasks();
                if state.closed {
                    return Err(closed());
                }
                if state.len > 0 {
                    let n = max.max(1).min(state.len);
                    let batch: Vec<_> = (0..n).filter_map(|_| state.pop()).collect();
                    if state.len > 0 {
                        // Pass the wake-up on to another worker.
                        self.task_ready.notify_one();
                    }
                    drop(state);
                    self.task_room.notify_waiters();
                    return Ok(batch);
                }
            }
            notified.await;
        }
    }

    async fn fetch_lane(
        &self,
        lane: u8,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<TaskMessage>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.lane_ready.notified();
            tokio::pin!(notified);
            // Registered before the look, so a publish in between wakes it.
            notified.as_mut().enable();
            let batch: Vec<_> = {
                let mut state = self.lock_tasks();
                if state.closed {
                    return Err(closed());
                }
                (0..max.max(1))
                    .map_while(|_| state.pop_lane(lane))
                    .collect()
            };
            if !batch.is_empty() {
                self.task_room.notify_waiters();
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn waiting_above(&self, priority: u8) -> bool {
        self.lock_tasks()
            .lanes
            .last_key_value()
            .is_some_and(|(top, _)| *top > priority)
    }

    async fn release(&self, task: TaskMessage) -> Result<(), BrokerError> {
        // Back at the head of its lane, past the capacity if need be: it
        // was counted when it was first published.
        self.lock_tasks().push(task, true);
        self.task_ready.notify_one();
        self.lane_ready.notify_waiters();
        Ok(())
    }

    async fn release_after(&self, task: TaskMessage, delay: Duration) -> Result<(), BrokerError> {
        if self.closed() {
            return Err(closed());
        }
        // The task is out of the queue while it waits; the database still
        // has it live, so a crash meanwhile loses nothing.
        tokio::time::sleep(delay).await;
        self.release(task).await
    }

    async fn forget_job(&self, job_id: i64, _labels: &Labels) -> Result<(), BrokerError> {
        let mut state = self.lock_tasks();
        let Tasks {
            lanes,
            queued,
            len,
            held,
            ..
        } = &mut *state;
        for lane in lanes.values_mut() {
            lane.retain(|task| {
                let keep = task.job_id != job_id;
                if !keep {
                    queued.remove(&task.dedup_key());
                    *len -= 1;
                }
                keep
            });
        }
        lanes.retain(|_, lane| !lane.is_empty());
        held.retain(|task| {
            let keep = task.job_id != job_id;
            if !keep {
                queued.remove(&task.dedup_key());
            }
            keep
        });
        drop(state);
        self.task_room.notify_waiters();
        Ok(())
    }

    async fn cancel_jobs(&self, jobs: &[i64]) -> Result<(), BrokerError> {
        for &job in jobs {
            // No one listening is no error.
            let _ = self.cancelled.send(job);
        }
        Ok(())
    }

    async fn cancels(&self) -> Result<Option<BoxStream<'static, i64>>, BrokerError> {
        let heard = self.cancelled.subscribe();
        let jobs = futures_util::stream::unfold(heard, |mut heard| async move {
            loop {
                match heard.recv().await {
                    Ok(job) => return Some((job, heard)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::warn!(
                            lost,
                            "word of cancelled jobs lost; their tasks here run on"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Some(Box::pin(jobs)))
    }

    fn enforces_labels(&self) -> bool {
        self.lock_tasks().offers.is_some()
    }

    async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        self.lock_workers().insert(info.id.clone(), info.clone());
        Ok(())
    }

    async fn leave(&self, id: &str) -> Result<(), BrokerError> {
        self.lock_workers().remove(id);
        Ok(())
    }

    async fn workers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkerInfo>, BrokerError> {
        let workers = self.lock_workers();
        let range = match after {
            Some(after) => workers
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => workers.range::<str, _>(..),
        };
        Ok(range.take(limit).map(|(_, w)| w.clone()).collect())
    }

    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        for event in events {
            let weight = event.weight();
            loop {
                let room = self.event_room.notified();
                {
                    let mut queue = self.lock_events();
                    // One event always fits, however large: a bound on
                    // bytes must not wedge the one event past it.
                    if queue.bytes + weight <= self.event_bytes || queue.queue.is_empty() {
                        queue.bytes += weight;
                        queue.queue.push_back(event);
                        break;
                    }
                }
                if self.closed() {
                    return Err(closed());
                }
                room.await;
            }
            self.event_ready.notify_one();
        }
        Ok(())
    }

    async fn events_waiting(&self) -> Result<Option<u64>, BrokerError> {
        Ok(Some(self.lock_events().queue.len() as u64))
    }

    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError> {
        loop {
            let notified = self.event_ready.notified();
            {
                let mut events = self.lock_events();
                if !events.queue.is_empty() {
                    let n = max.max(1).min(events.queue.len());
                    let batch: Vec<TaskEvent> = events.queue.drain(..n).collect();
                    events.bytes -= batch.iter().map(TaskEvent::weight).sum::<usize>();
                    drop(events);
                    self.event_room.notify_waiters();
                    return Ok(batch);
                }
                if self.closed() {
                    return Err(closed());
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::{CallKind, Grants, Limits};

    fn task(id: i64, attempt: i64) -> TaskMessage {
        TaskMessage {
            task_id: id,
            job_id: 1,
            attempt,
            priority: 0,
            tenant: String::new(),
            kind: CallKind::Task,
            module: "m".into(),
            input: None,
            input_name: "-".into(),
            params: "{}".into(),
            params_blob: None,
            limits: Limits::default(),
            grants: Grants::default(),
            labels: Default::default(),
            seed: None,
            shuffle: None,
            inputs: Vec::new(),
            preprocess: None,
            output_blob: false,
            delivered: 1,
            ticket: String::new(),
            published_ms: None,
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn a_republished_attempt_is_queued_once() {
        let broker = MemoryBroker::new();
        broker.publish(vec![task(1, 0), task(2, 0)]).await.unwrap();
        broker.publish(vec![task(1, 0), task(1, 1)]).await.unwrap();
        let fetched = broker.fetch(10).await.unwrap();
        let keys: Vec<_> = fetched.iter().map(TaskMessage::dedup_key).collect();
        assert_eq!(keys, vec![(1, 0), (2, 0), (1, 1)]);
    }

    #[tokio::test]
    async fn higher_priorities_are_fetched_first() {
        let broker = MemoryBroker::new();
        let mut urgent = task(9, 0);
        urgent.priority = 9;
        broker
            .publish((1..=5).map(|i| task(i, 0)).collect())
            .await
            .unwrap();
        broker.publish(vec![urgent]).await.unwrap();
        let first = broker.fetch(2).await.unwrap();
        assert_eq!(first[0].task_id, 9);
        assert_eq!(first[1].task_id, 1);
    }

    #[tokio::test]
    async fn tenants_take_turns_within_a_priority() {
        let broker = MemoryBroker::new();
        let of = |tenant: &str, id: i64| TaskMessage {
            tenant: tenant.to_owned(),
            ..task(id, 0)
        };
        // Alpha's sweep is queued; beta's two tasks come after it.
        broker
            .publish((1..=100).map(|i| of("alpha", i)).collect())
            .await
            .unwrap();
        broker
            .publish(vec![of("beta", 101), of("beta", 102)])
            .await
            .unwrap();
        let first: Vec<i64> = broker
            .fetch(4)
            .await
            .unwrap()
            .iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(first, vec![1, 101, 2, 102]);
        // Then alpha's, in order.
        let next: Vec<i64> = broker
            .fetch(2)
            .await
            .unwrap()
            .iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(next, vec![3, 4]);
    }

    #[tokio::test]
    async fn a_lane_is_fetched_alone_and_waited_for_a_while() {
        let broker = std::sync::Arc::new(MemoryBroker::new());
        let mut reserved = task(2, 0);
        reserved.priority = crate::message::RESERVED_LANE;
        broker.publish(vec![task(1, 0), reserved]).await.unwrap();
        let lane = crate::message::RESERVED_LANE;
        let got = broker.fetch_lane(lane, 4, Duration::ZERO).await.unwrap();
        assert_eq!(got.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![2]);
        // Empty: nothing after the wait, and the other lane's task stays.
        let got = broker
            .fetch_lane(lane, 4, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(broker.queued(), 1);
        // One published while it waits is taken.
        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.fetch_lane(lane, 1, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        let mut late = task(3, 0);
        late.priority = lane;
        broker.publish(vec![late]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got[0].task_id, 3);
        assert_eq!(broker.fetch(4).await.unwrap()[0].task_id, 1);
    }

    #[tokio::test]
    async fn it_says_when_more_urgent_work_waits() {
        let broker = MemoryBroker::new();
        broker.publish(vec![task(1, 0)]).await.unwrap();
        assert!(!broker.waiting_above(0));
        let mut urgent = task(2, 0);
        urgent.priority = 9;
        broker.publish(vec![urgent]).await.unwrap();
        assert!(broker.waiting_above(0));
        assert!(!broker.waiting_above(9));
    }

    #[tokio::test]
    async fn a_full_task_queue_makes_the_publisher_wait() {
        let broker = std::sync::Arc::new(MemoryBroker::with_capacity(2, 1 << 20));
        let publisher = tokio::spawn({
            let broker = broker.clone();
            async move { broker.publish((1..=5).map(|i| task(i, 0)).collect()).await }
        });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let batch = tokio::time::timeout(Duration::from_secs(5), broker.fetch(10))
                .await
                .expect("fetched in time")
                .unwrap();
            assert!(batch.len() <= 2, "the queue held {} tasks", batch.len());
            seen.extend(batch.into_iter().map(|t| t.task_id));
        }
        publisher.await.unwrap().unwrap();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn fetch_waits_for_work_and_close_wakes_it() {
        let broker = std::sync::Arc::new(MemoryBroker::new());
        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.fetch(1).await }
        });
        tokio::task::yield_now().await;
        broker.publish(vec![task(7, 0)]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got[0].task_id, 7);

        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.fetch(1).await }
        });
        tokio::task::yield_now().await;
        broker.close();
        let closed = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(closed, Err(e) if e.kind() == BrokerErrorKind::Closed));
    }
}
