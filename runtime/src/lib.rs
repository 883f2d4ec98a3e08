//! # sandmill-runtime
//!
//! What runs on a worker: the sandbox that executes one guest call under hard
//! limits, and the record format that guests and the host exchange.
//!
//! - [`sandbox`]: the only user of wasmtime. One [`Sandbox`] per process
//!   holds the engine, the pooling allocator, the module cache (in memory and
//!   on disk, keyed by sha256) and runs [`Call`]s, each in a fresh instance,
//!   returning an [`Outcome`] whose failure is a classified [`ExecError`].
//! - [`records`]: key/value records as the host keeps them (an arena), and
//!   the `key value` line format users see.
//!
//! - [`broker`] and [`blob`]: traits for the task broker and the
//!   content-addressed blob store, with their in-process implementations
//!   (the embedded mode); [`message`]: what travels through them.
//! - [`labels`]: what workers offer and tasks need.
//! - [`reason`]: why an attempt failed, one list for every part.
//! - [`error`]: errors callers match on by kind, keeping their source.
//! - [`shuffle`]: a map-reduce job's partitions, spills and merges.
//! - [`worker`]: the loop that fetches tasks, runs them and reports back;
//!   [`cancels`]: how it stops the attempts of jobs that ended early.
//!
//! This crate knows nothing of HTTP or SQL.

pub mod background;
pub mod blob;
pub mod broker;
pub mod cancels;
pub mod error;
pub mod labels;
pub mod message;
pub mod metrics;
pub mod reason;
pub mod records;
pub mod sandbox;
pub mod shuffle;
pub mod worker;

/// What a guest's output depends on besides its module, inputs, params,
/// limits and grants: the guest contract (the WIT package) and this
/// runtime. Part of every result-cache key, so that an upgrade that could
/// change what a guest computes never serves a result of the old one.
pub const RUNTIME_SCOPE: &str = concat!(
    "sandmill:guest@0.2.0 sandmill-runtime/",
    env!("CARGO_PKG_VERSION")
);

pub use reason::Reason;
pub use sandbox::{
    Call, CallKind, ExecError, Grants, Limits, Module, Outcome, Output, Sandbox, SandboxConfig,
    TrapKind,
};
