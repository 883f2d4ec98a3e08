//! # sandmill-server
//!
//! The control plane: it keeps the catalogue (modules, specs), the jobs and
//! every task's state, attempts, logs and outputs, and serves them.
//!
//! - [`store`]: SQLite or Postgres through sqlx — the source of truth.
//! - [`jobfile`]: job files (TOML, or the same shape as JSON), validated.
//! - [`engine`]: accepts jobs, publishes their tasks, records what workers
//!   report, re-publishes what was queued after a restart.
//! - [`api`]: the HTTP API (axum) and its OpenAPI document.
//! - [`embedded`]: server, in-process broker and blob store and workers in
//!   one process (`sandmill dev`, `sandmill run`).
//!
//! Only this crate touches SQL; only the binary reads the environment.

pub mod api;
pub mod embedded;
pub mod engine;
pub mod jobfile;
pub mod store;
