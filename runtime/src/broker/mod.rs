//! The task broker: carries task messages to workers and their events back.
//!
//! A trait with an in-process implementation ([`MemoryBroker`], the
//! embedded mode); the NATS JetStream one implements the same trait. The
//! database is the source of truth: the broker only carries work, and the
//! control plane re-publishes whatever is queued when it starts.

mod memory;
mod nats;

use async_trait::async_trait;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;

use crate::message::{TaskEvent, TaskMessage};

/// The broker failed (connection lost, closed).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker was shut down.
    #[error("the broker is closed")]
    Closed,
    /// Anything the transport reports.
    #[error("broker: {0}")]
    Transport(String),
}

/// Carries tasks to workers and events to the control plane.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues task attempts. Publishing an attempt that is already queued
    /// is a no-op, so re-publishing after a crash is safe.
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError>;

    /// Waits for at least one task and returns up to `max`.
    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError>;

    /// Tells the broker a fetched task is finished with (its result was
    /// reported): it will not be delivered again.
    async fn done(&self, _task: &TaskMessage) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Sends events from a worker to the control plane; returns once they
    /// are durable.
    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError>;

    /// Waits for at least one event and returns up to `max` (control plane).
    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError>;

    /// The events last returned by [`events`](Broker::events) are recorded
    /// in the database: they need not be delivered again.
    async fn events_recorded(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
