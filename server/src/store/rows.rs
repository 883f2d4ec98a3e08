//! Rows as the store reads them: typed (enums, JSON documents), never
//! shown to users as they are — the API has view types of its own.

use std::collections::BTreeMap;

use sandmill_runtime::Reason;
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::Verdict;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};

use super::types::{JsonText, Text};
use crate::model::{JobKind, JobStatus, TaskState};

/// Columns of [`JobRow`], in order.
pub const JOB_COLUMNS: &str = "id, name, kind, status, priority, task_kind, module_hash, limits, grants, \
     labels, task_params, task_input_hash, task_input_name, has_items, total_tasks, dispatched, \
     succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting, waiting_since, created_at, \
     updated_at, finished_at, maps, reducers, planned, counters, parent_id, step, cache, cached, reruns, resubmit_of, preprocess_hash, tenant, max_running, schedule";

/// Columns of [`TaskRow`], in order, from `tasks t JOIN jobs j`.
pub const TASK_COLUMNS: &str = "t.id, t.job_id, t.seq, t.state, COALESCE(t.params, j.task_params) AS params, \
     CASE WHEN t.input_name IS NULL THEN j.task_input_hash ELSE t.input_hash END AS input_hash, \
     COALESCE(t.input_name, j.task_input_name) AS input_name, t.attempt, t.reason, t.error, \
     t.output_hash, t.output_size, t.starts, t.created_at, t.started_at, t.finished_at, \
     t.restart_of, t.cache_key, t.replaced_by, t.inputs, t.seed";

/// Columns of [`AttemptRow`], in order.
pub const ATTEMPT_COLUMNS: &str = "task_id, attempt, state, reason, error, worker, elapsed_ms, fuel_used, \
     log_size, log_hash, log_truncated, counters, finished_at, started_at, memory_peak";

/// The kinds a module exports, stored comma-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exports(pub Vec<CallKind>);

impl TryFrom<String> for Exports {
    type Error = sandmill_runtime::sandbox::UnknownKind;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Exports)
    }
}

impl Exports {
    /// Whether calls of `kind` can run.
    pub fn has(&self, kind: CallKind) -> bool {
        self.0.contains(&kind)
    }

    /// `task,map`, for messages.
    pub fn list(&self) -> String {
        self.0
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A stored module.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ModuleRow {
    /// sha256 of the module's bytes.
    pub hash: String,
    /// Size in bytes.
    pub size: i64,
    /// The kinds it can run.
    #[sqlx(try_from = "String")]
    pub exports: Exports,
    /// When it was first uploaded (ms since the epoch).
    pub created_at: i64,
}

/// A registered spec version.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SpecRow {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Module hash.
    pub module_hash: String,
    /// Call kind.
    pub kind: Text<CallKind>,
    /// Default limits.
    pub limits: JsonText<Limits>,
    /// Default grants.
    pub grants: JsonText<Grants>,
    /// Default labels.
    pub labels: JsonText<Labels>,
    /// Registration time (ms).
    pub created_at: i64,
}

/// A job.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobRow {
    /// Id.
    pub id: i64,
    /// Name from the job file.
    pub name: String,
    /// What its file described.
    pub kind: Text<JobKind>,
    /// Where it is in its life.
    pub status: Text<JobStatus>,
    /// 0 to 9; higher runs first.
    pub priority: i64,
    /// What each task calls.
    pub task_kind: Text<CallKind>,
    /// Module hash.
    pub module_hash: String,
    /// Limits of every task.
    pub limits: JsonText<Limits>,
    /// Grants of every task.
    pub grants: JsonText<Grants>,
    /// Labels a worker must offer to take its tasks.
    pub labels: JsonText<Labels>,
    /// Parameters of tasks that have none of their own (JSON).
    pub task_params: String,
    /// Input of tasks that have none of their own.
    pub task_input_hash: Option<String>,
    /// Its name.
    pub task_input_name: String,
    /// 1 when each task has its own parameters or input (`job_items`).
    pub has_items: i64,
    /// Number of tasks.
    pub total_tasks: i64,
    /// Tasks taken from the backlog so far (created as rows).
    pub dispatched: i64,
    /// Tasks that succeeded.
    pub succeeded: i64,
    /// Tasks that failed.
    pub failed: i64,
    /// Tasks cancelled (with those never dispatched).
    pub cancelled: i64,
    /// Attempts per task for retryable failures.
    pub max_attempts: i64,
    /// How long its tasks may wait while no live worker can take them (ms).
    pub queue_timeout_ms: i64,
    /// Why its queued tasks are waiting, while no live worker can take them.
    pub waiting: Option<String>,
    /// Since when (ms).
    pub waiting_since: Option<i64>,
    /// Submission time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
    /// End time (ms).
    pub finished_at: Option<i64>,
    /// A map-reduce job's map tasks (its first tasks); `None` for others.
    pub maps: Option<i64>,
    /// A map-reduce job's reduce tasks.
    pub reducers: i64,
    /// 0 while a map-reduce job's reduces are not yet planned.
    pub planned: i64,
    /// The guests' counters, summed over every task's successful attempt.
    pub counters: JsonText<BTreeMap<String, i64>>,
    /// A step's pipeline.
    pub parent_id: Option<i64>,
    /// A step's name.
    pub step: Option<String>,
    /// 0 when its tasks never take cached outputs.
    pub cache: i64,
    /// Tasks that took a cached output (counted in `succeeded` too).
    pub cached: i64,
    /// Tasks run again that wait for room (`pending`).
    pub reruns: i64,
    /// The job whose tasks it runs again (`sandmill resubmit`).
    pub resubmit_of: Option<i64>,
    /// A step's preprocessor, applied to each task's input first.
    pub preprocess_hash: Option<String>,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Tasks queued or running at once, at most (`None`: no cap).
    pub max_running: Option<i64>,
    /// The schedule that submitted it.
    pub schedule: Option<String>,
}

impl JobRow {
    /// Its status.
    pub fn status(&self) -> JobStatus {
        self.status.0
    }
}

/// Tasks of a job per state. Finished states come from the job's
/// counters; live ones from the (small, indexed) live rows; `pending` is
/// what has not been dispatched yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not dispatched yet.
    pub pending: i64,
    /// Waiting for a worker.
    pub queued: i64,
    /// On a worker.
    pub running: i64,
    /// Done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

impl Counts {
    /// Tasks that ended.
    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// A task, its parameters and input resolved (its own, or its job's).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskRow {
    /// Id.
    pub id: i64,
    /// Job id.
    pub job_id: i64,
    /// Index within the job.
    pub seq: i64,
    /// Where it is in its life.
    pub state: Text<TaskState>,
    /// Parameters, JSON.
    pub params: String,
    /// Input blob.
    pub input_hash: Option<String>,
    /// Input name.
    pub input_name: String,
    /// Current attempt (from 0).
    pub attempt: i64,
    /// Failure reason.
    pub reason: Option<Text<Reason>>,
    /// Failure message.
    pub error: Option<String>,
    /// Output blob, when too large to keep inline.
    pub output_hash: Option<String>,
    /// Output size.
    pub output_size: Option<i64>,
    /// Deliveries a worker started.
    pub starts: i64,
    /// Creation time (ms).
    pub created_at: i64,
    /// Start of the current attempt (ms).
    pub started_at: Option<i64>,
    /// End time (ms).
    pub finished_at: Option<i64>,
    /// The task this one was restarted from.
    pub restart_of: Option<i64>,
    /// What it computes, hashed (the result cache's key).
    pub cache_key: Option<String>,
    /// The run that replaced it (it was restarted), or, for a task of a
    /// step planned again, the restarted run upstream that caused it.
    pub replaced_by: Option<i64>,
    /// The slices of blobs it reads (a pipeline step's task), if any.
    pub inputs: Option<JsonText<Vec<sandmill_runtime::message::InputPart>>>,
    /// The seed its guest's randomness is drawn from; `None`: its id.
    pub seed: Option<i64>,
}

impl TaskRow {
    /// Its state.
    pub fn state(&self) -> TaskState {
        self.state.0
    }
}

/// One attempt of a task (its log is read on its own).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    /// Task id.
    pub task_id: i64,
    /// Attempt number.
    pub attempt: i64,
    /// How it ended.
    pub state: Text<Verdict>,
    /// Failure reason.
    pub reason: Option<Text<Reason>>,
    /// Failure message.
    pub error: Option<String>,
    /// Worker that ran it.
    pub worker: String,
    /// Wall time (ms).
    pub elapsed_ms: i64,
    /// Fuel used.
    pub fuel_used: Option<i64>,
    /// Bytes of log.
    pub log_size: i64,
    /// The log's blob, when it was too large to keep inline.
    pub log_hash: Option<String>,
    /// 1 when the log was cut at the limit.
    pub log_truncated: i64,
    /// Counters.
    pub counters: JsonText<BTreeMap<String, i64>>,
    /// End time (ms).
    pub finished_at: i64,
    /// When the worker began it (ms, the worker's clock), if it said.
    pub started_at: Option<i64>,
    /// The guest's peak linear memory in bytes, if the worker said.
    pub memory_peak: Option<i64>,
}
