//! [`MemoryBroker`]: the in-process broker of the embedded mode.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Broker, BrokerError};
use crate::labels::Labels;
use crate::message::{TaskEvent, TaskMessage, WorkerInfo};

/// Queues in memory. Nothing here needs to survive a crash: the control
/// plane re-publishes queued tasks from the database on start.
#[derive(Default)]
pub struct MemoryBroker {
    tasks: Mutex<Tasks>,
    task_ready: Notify,
    events: Mutex<VecDeque<TaskEvent>>,
    event_ready: Notify,
    workers: Mutex<BTreeMap<String, WorkerInfo>>,
}

#[derive(Default)]
struct Tasks {
    queue: VecDeque<TaskMessage>,
    queued: HashSet<(i64, i64)>,
    closed: bool,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every waiting fetch with [`BrokerError::Closed`].
    pub fn close(&self) {
        self.lock_tasks().closed = true;
        self.task_ready.notify_waiters();
        self.event_ready.notify_waiters();
    }

    /// Tasks waiting for a worker.
    pub fn queued(&self) -> usize {
        self.lock_tasks().queue.len()
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // Queue operations cannot panic halfway; a poisoned lock is usable.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerInfo>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_events(&self) -> std::sync::MutexGuard<'_, VecDeque<TaskEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        let mut state = self.lock_tasks();
        if state.closed {
            return Err(BrokerError::Closed);
        }
        let mut added = 0;
        for task in tasks {
            if state.queued.insert(task.dedup_key()) {
                state.queue.push_back(task);
                added += 1;
            }
        }
        drop(state);
        for _ in 0..added {
            self.task_ready.notify_one();
        }
        Ok(())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError> {
        loop {
            let notified = self.task_ready.notified();
            {
                let mut state = self.lock_tasks();
                if state.closed {
                    return Err(BrokerError::Closed);
                }
                if !state.queue.is_empty() {
                    let n = max.max(1).min(state.queue.len());
                    let batch: Vec<_> = state.queue.drain(..n).collect();
                    for task in &batch {
                        state.queued.remove(&task.dedup_key());
                    }
                    if !state.queue.is_empty() {
                        // Pass the wake-up on to another worker.
                        self.task_ready.notify_one();
                    }
                    return Ok(batch);
                }
            }
            notified.await;
        }
    }

    async fn release(&self, task: TaskMessage) -> Result<(), BrokerError> {
        let mut state = self.lock_tasks();
        if state.queued.insert(task.dedup_key()) {
            state.queue.push_front(task);
        }
        drop(state);
        self.task_ready.notify_one();
        Ok(())
    }

    async fn forget_job(&self, job_id: i64, _labels: &Labels) -> Result<(), BrokerError> {
        let mut state = self.lock_tasks();
        let Tasks { queue, queued, .. } = &mut *state;
        queue.retain(|task| {
            let keep = task.job_id != job_id;
            if !keep {
                queued.remove(&task.dedup_key());
            }
            keep
        });
        Ok(())
    }

    async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        self.lock_workers().insert(info.id.clone(), info.clone());
        Ok(())
    }

    async fn leave(&self, id: &str) -> Result<(), BrokerError> {
        self.lock_workers().remove(id);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        Ok(self.lock_workers().values().cloned().collect())
    }

    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        self.lock_events().extend(events);
        self.event_ready.notify_one();
        Ok(())
    }

    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError> {
        loop {
            let notified = self.event_ready.notified();
            {
                let mut events = self.lock_events();
                if !events.is_empty() {
                    let n = max.max(1).min(events.len());
                    return Ok(events.drain(..n).collect());
                }
                if self.lock_tasks().closed {
                    return Err(BrokerError::Closed);
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{CallKind, Grants, Limits};

    fn task(id: i64, attempt: i64) -> TaskMessage {
        TaskMessage {
            task_id: id,
            job_id: 1,
            attempt,
            kind: CallKind::Task,
            module: "m".into(),
            input: None,
            input_name: "-".into(),
            params: "{}".into(),
            limits: Limits::default(),
            grants: Grants::default(),
            labels: Default::default(),
            delivered: 1,
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
    async fn fetch_waits_for_work_and_close_wakes_it() {
        let broker = std::sync::Arc::new(MemoryBroker::new());
        let waiter = tokio::spawn({
            let broker = broker.clone();
            async move { broker.fetch(1).await }
        });
        tokio::task::yield_now().await;
        broker.publish(vec![task(7, 0)]).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
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
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(closed, Err(BrokerError::Closed)));
    }
}
