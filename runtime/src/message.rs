//! What travels between the control plane and workers. Never a payload:
//! inputs, modules and large outputs travel as blob hashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::sandbox::{CallKind, Grants, Limits};

/// Outputs up to this size travel inside the result; larger ones go to the
/// blob store and the result names their hash.
pub const INLINE_OUTPUT_BYTES: usize = 64 * 1024;

/// One attempt of one task, as a worker receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// The task.
    pub task_id: i64,
    /// Its job.
    pub job_id: i64,
    /// Which attempt this is; a result names it, and a result for an
    /// attempt that is no longer current changes nothing.
    pub attempt: i64,
    /// What to call.
    pub kind: CallKind,
    /// The module's sha256 (a blob).
    pub module: String,
    /// The input's sha256 (a blob); `None` for an empty input.
    pub input: Option<String>,
    /// The name the guest sees for its input.
    pub input_name: String,
    /// JSON parameters.
    pub params: String,
    /// Limits of the call.
    pub limits: Limits,
    /// Grants of the call.
    pub grants: Grants,
    /// Labels a worker must offer to take it (none: any worker).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// How many times the broker has delivered this message, counting this
    /// delivery (set on fetch; not part of the message).
    #[serde(skip, default = "first_delivery")]
    pub delivered: u32,
}

fn first_delivery() -> u32 {
    1
}

impl TaskMessage {
    /// The broker's idempotency key: one live message per task attempt.
    pub fn dedup_key(&self) -> (i64, i64) {
        (self.task_id, self.attempt)
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The call produced its output.
    Succeeded,
    /// The call failed; the result's reason says why.
    Failed,
}

/// Where an output is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputRef {
    /// Small outputs travel inline.
    Inline(Vec<u8>),
    /// Large ones are in the blob store.
    Blob {
        /// The blob's sha256.
        hash: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// The end of one attempt, as a worker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's job.
    pub job_id: i64,
    /// The task.
    pub task_id: i64,
    /// The attempt this result belongs to.
    pub attempt: i64,
    /// The worker that ran it.
    pub worker: String,
    /// Success or failure.
    pub verdict: Verdict,
    /// On failure, the stable reason (`timeout`, `guest-error`, ...).
    pub reason: Option<String>,
    /// On failure, the message.
    pub error: Option<String>,
    /// Whether running it again could succeed (a timeout, a lost worker).
    pub retryable: bool,
    /// The output on success: `key value` lines for map and reduce.
    pub output: Option<OutputRef>,
    /// The guest's log.
    pub log: Vec<u8>,
    /// Whether the log was cut.
    pub log_truncated: bool,
    /// Counters the guest reported.
    pub counters: BTreeMap<String, i64>,
    /// Wall time in milliseconds.
    pub elapsed_ms: i64,
    /// Fuel used, when metered.
    pub fuel_used: Option<u64>,
}

/// What workers tell the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TaskEvent {
    /// A worker took an attempt.
    Started {
        /// The task's job.
        job_id: i64,
        /// The task.
        task_id: i64,
        /// The attempt.
        attempt: i64,
        /// The worker.
        worker: String,
        /// Which delivery of the attempt this is (more than 1: a worker
        /// that took it before vanished).
        #[serde(default = "first_delivery")]
        delivery: u32,
    },
    /// An attempt ended.
    Finished(TaskResult),
}

/// A worker process as the registry knows it. Written by the worker every
/// [`HEARTBEAT_EVERY`]; one whose `last_seen` is older than [`LOST_AFTER`]
/// is lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its name, stable across restarts.
    pub id: String,
    /// Random per process start: tells a restart from a second process
    /// claiming the same name.
    pub instance: String,
    /// What it offers.
    pub labels: Labels,
    /// Tasks it runs at once.
    pub capacity: usize,
    /// The sandmill version it runs.
    pub version: String,
    /// Tasks it is running now.
    pub running: Vec<i64>,
    /// Tasks it has finished since it started.
    pub finished: u64,
    /// When it started (ms since the Unix epoch).
    pub started_at: i64,
    /// Its last heartbeat (ms since the Unix epoch).
    pub last_seen: i64,
    /// It is draining: taking no new tasks, finishing its running ones.
    pub draining: bool,
}

/// How often a worker writes its registry entry.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// A worker not heard from for this long is lost.
pub const LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl WorkerInfo {
    /// A worker process starting now, of this sandmill version.
    pub fn starting(id: impl Into<String>, labels: Labels, capacity: usize) -> Self {
        let now = now_ms();
        WorkerInfo {
            id: id.into(),
            instance: format!("{}-{now}", std::process::id()),
            labels,
            capacity,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            running: Vec::new(),
            finished: 0,
            started_at: now,
            last_seen: now,
            draining: false,
        }
    }

    /// Whether it has gone quiet, as of `now_ms`.
    pub fn is_lost(&self, now_ms: i64) -> bool {
        now_ms - self.last_seen > LOST_AFTER.as_millis() as i64
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
