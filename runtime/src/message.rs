//! What travels between the control plane and workers. Never a payload:
//! inputs, modules and large outputs travel as blob hashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    },
    /// An attempt ended.
    Finished(TaskResult),
}
