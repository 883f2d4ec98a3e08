//! # sandmill-server
//!
//! The control plane: it keeps the catalogue (modules, specs), the jobs and
//! every task's state, attempts, logs and outputs, and serves them.
//!
//! - [`model`]: task states, job statuses and kinds, one enum each.
//! - [`store`]: SQLite or Postgres through sqlx — the source of truth.
//! - [`jobfile`]: job files (TOML, or the same shape as JSON), validated,
//!   errors naming the key and line.
//! - [`scheduler`]: accepts jobs, dispatches their tasks a window at a
//!   time, records what workers report, keeps the broker in step.
//! - [`events`]: live events of tasks and jobs, kept in a bounded ring
//!   for clients that reconnect.
//! - [`api`]: the HTTP API (axum), its view types and OpenAPI document.
//! - [`embedded`]: scheduler, in-process broker and blob store and workers
//!   in one process (`sandmill dev`, `sandmill run`).
//! - [`fleet`]: the parts of `sandmill serve` and `sandmill worker`, on
//!   NATS JetStream.
//! - [`metrics`]: the control plane's Prometheus metrics.
//!
//! Only [`store`] touches SQL; only the binary reads the environment.

pub mod api;
pub mod background;
pub mod embedded;
pub mod events;
pub mod fleet;
pub mod jobfile;
pub mod metrics;
pub mod model;
pub mod scheduler;
pub mod store;
pub mod subscription;
pub mod tls;
