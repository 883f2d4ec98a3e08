//! The task broker: carries task messages to workers and their events back.
//!
//! A trait with an in-process implementation ([`MemoryBroker`], the
//! embedded mode); the NATS JetStream one implements the same trait. The
//! database is the source of truth: the broker only carries work, and the
//! control plane re-publishes whatever is queued when it starts.

mod memory;

use async_trait::async_trait;

pub use memory::MemoryBroker;

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

    /// Sends events from a worker to the control plane.
    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError>;

    /// Waits for at least one event and returns up to `max` (control plane).
    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError>;
}
