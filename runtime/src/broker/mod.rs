//! The task broker: carries task messages to workers and their events back.
//!
//! A trait with an in-process implementation ([`MemoryBroker`], the
//! embedded mode); the NATS JetStream one implements the same trait. The
//! database is the source of truth: the broker only carries work, and the
//! control plane re-publishes whatever is queued when it starts.

mod memory;
mod nats;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use memory::{DEFAULT_EVENT_BYTES, DEFAULT_TASK_CAPACITY, MemoryBroker};
pub use nats::{MAX_DELIVERIES, NatsBroker, NatsConfig};

use std::collections::BTreeSet;
use std::time::Duration;

use crate::labels::Labels;
use crate::message::{TaskEvent, TaskMessage, WorkerInfo};

/// What kind of failure a broker had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerErrorKind {
    /// The broker was shut down: stop using it.
    #[error("the broker is closed")]
    Closed,
    /// The broker could not be reached or refused the request for now
    /// (NATS down, a timeout, JetStream unavailable): try again later.
    #[error("broker unavailable")]
    Unavailable,
    /// A message could not be encoded, or is larger than the broker takes:
    /// trying again will not help.
    #[error("message refused")]
    Refused,
    /// The broker was used in a way it does not support (a control plane
    /// fetching tasks).
    #[error("unsupported use of the broker")]
    Unsupported,
}

/// The broker failed.
pub type BrokerError = crate::error::Error<BrokerErrorKind>;

/// Carries tasks to workers and events to the control plane.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues task attempts. Publishing an attempt that is already queued
    /// is a no-op, so re-publishing after a crash is safe.
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError>;

    /// Publishes again tasks whose messages the broker lost (the
    /// reconciler found them absent): unlike [`publish`](Broker::publish),
    /// never dropped as a duplicate of the lost message.
    async fn republish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        self.publish(tasks).await
    }

    /// Waits for at least one task and returns up to `max`.
    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError>;

    /// Fetches up to `max` tasks of lane `lane` only, waiting up to `wait`
    /// for one to arrive; empty if none did. A worker slot that ran a task
    /// of a reservation looks here first, so the slot stays the tenant's
    /// while its next task is on the way. Brokers without lanes say none.
    async fn fetch_lane(
        &self,
        _lane: u8,
        _max: usize,
        _wait: Duration,
    ) -> Result<Vec<TaskMessage>, BrokerError> {
        Ok(Vec::new())
    }

    /// Tells the broker a fetched task is finished with (its result was
    /// reported): it will not be delivered again.
    async fn done(&self, _task: &TaskMessage) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Hands a fetched task back unrun (a draining worker): it is
    /// delivered again, to any worker, at once.
    async fn release(&self, task: TaskMessage) -> Result<(), BrokerError>;

    /// Hands a fetched task back unrun, to be delivered again after
    /// `delay` (its worker could not reach the blob store): no attempt is
    /// spent on an outage.
    async fn release_after(&self, task: TaskMessage, delay: Duration) -> Result<(), BrokerError> {
        tokio::time::sleep(delay).await;
        self.release(task).await
    }

    /// Whether a task of a higher priority than `priority` waits now (a
    /// worker then hands back the rest of its batch and fetches again).
    /// `false` when the broker cannot tell cheaply.
    fn waiting_above(&self, _priority: u8) -> bool {
        false
    }

    /// Deliveries of one message a worker may run; a message delivered
    /// more often than this (its workers kept vanishing) is failed as
    /// `worker-lost` instead of run again.
    fn max_deliveries(&self) -> u32 {
        u32::MAX
    }

    /// Sends events from a worker to the control plane; returns once they
    /// are durable.
    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError>;

    /// Sends events without waiting for them to be durable (a start: if
    /// it is lost, the task's end still tells the whole story).
    async fn announce(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        self.report(events).await
    }

    /// Waits for at least one event and returns up to `max` (control plane).
    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError>;

    /// The events last returned by [`events`](Broker::events) are recorded
    /// in the database: they need not be delivered again.
    async fn events_recorded(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Writes a worker's registry entry (its heartbeat).
    async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError>;

    /// Removes a worker's registry entry (it left on purpose).
    async fn leave(&self, id: &str) -> Result<(), BrokerError>;

    /// One registry entry, by id.
    async fn worker(&self, id: &str) -> Result<Option<WorkerInfo>, BrokerError> {
        let mut after: Option<String> = None;
        loop {
            let page = self.workers(after.as_deref(), 256).await?;
            if let Some(found) = page.iter().find(|w| w.id == id) {
                return Ok(Some(found.clone()));
            }
            if page.len() < 256 {
                return Ok(None);
            }
            after = page.last().map(|w| w.id.clone());
        }
    }

    /// Registry entries, the lost ones included, by id: the first `limit`
    /// whose id sorts after `after`.
    async fn workers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkerInfo>, BrokerError>;

    /// Drops every queued message of a job that ended (cancelled, or its
    /// queue timeout passed), so no worker runs its tasks for nothing.
    /// Best effort: a message it misses only runs and is ignored.
    async fn forget_job(&self, _job_id: i64, _labels: &Labels) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Tells workers that these jobs ended early (cancelled, failed for
    /// good, past their queue timeout): they interrupt the jobs' running
    /// attempts and drop their fetched ones (see
    /// [`cancels`](crate::cancels)). Best effort: a worker that misses it
    /// runs them, and their results are ignored.
    async fn cancel_jobs(&self, _jobs: &[i64]) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The jobs that ended early, as the control plane tells them (worker
    /// side), from now on; `None` for a broker that carries no such word.
    async fn cancels(&self) -> Result<Option<BoxStream<'static, i64>>, BrokerError> {
        Ok(None)
    }

    /// Removes the task queues of label sets (and priorities) that held
    /// no task for `idle`: what a label set used once costs nothing for
    /// ever after; its next task makes its queue again. Returns how many
    /// went. A broker without such queues removes nothing.
    async fn remove_idle_queues(&self, _idle: Duration) -> Result<usize, BrokerError> {
        Ok(0)
    }

    /// Whether tasks go only to workers offering their labels (the
    /// embedded mode runs everything on its own workers).
    fn enforces_labels(&self) -> bool {
        false
    }

    /// Of these live tasks, the ones with no message in the broker (lost in
    /// transit, or never published), for the reconciler to publish again;
    /// `None` when the broker cannot tell.
    async fn absent(&self, _tasks: &[i64]) -> Result<Option<BTreeSet<i64>>, BrokerError> {
        Ok(None)
    }

    /// Events reported and not yet taken by the recorder (`None`: this
    /// broker cannot tell, or it is a worker's).
    async fn events_waiting(&self) -> Result<Option<u64>, BrokerError> {
        Ok(None)
    }

    /// How deep each first-in-first-out task queue is, for the dispatcher
    /// to keep only a short stretch of work queued ahead of a job that
    /// comes later; `None` for a broker whose queues take turns between
    /// tenants themselves (the in-process one).
    async fn queue_depths(&self) -> Result<Option<Vec<QueueDepth>>, BrokerError> {
        Ok(None)
    }
}

/// A task queue's depth (see [`Broker::queue_depths`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// The label set it serves ([`Labels::token`]).
    pub token: String,
    /// Its priority.
    pub priority: u8,
    /// Tasks waiting in it, not yet delivered to a worker.
    pub pending: u64,
    /// Deliveries since it was made (a counter: its rate is how fast
    /// workers take its tasks).
    pub delivered: u64,
}
