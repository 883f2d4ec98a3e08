//! Rows as the store returns them and the API shows them.

use serde::Serialize;
use utoipa::ToSchema;

/// Columns of [`JobRow`], in order.
pub const JOB_COLUMNS: &str = "id, name, kind, status, task_kind, module_hash, limits, grants, total_tasks, \
     max_attempts, created_at, updated_at, finished_at, labels, queue_timeout_ms, waiting, waiting_since";

/// Columns of [`TaskRow`], in order.
pub const TASK_COLUMNS: &str = "id, job_id, seq, state, params, input_hash, input_name, attempt, reason, error, \
     output_hash, output_size, created_at, started_at, finished_at";

/// A stored module.
#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ModuleRow {
    /// sha256 of the module's bytes.
    pub hash: String,
    /// Size in bytes.
    pub size: i64,
    /// Comma-separated kinds it exports (map, reduce, preprocess, task).
    pub exports: String,
    /// When it was first uploaded (ms since the epoch).
    pub created_at: i64,
}

/// A registered spec version.
#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SpecRow {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Module hash.
    pub module_hash: String,
    /// Call kind.
    pub kind: String,
    /// Limits, JSON.
    pub limits: String,
    /// Grants, JSON.
    pub grants: String,
    /// Labels, JSON.
    pub labels: String,
    /// Registration time (ms).
    pub created_at: i64,
}

/// A job.
#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct JobRow {
    /// Id.
    pub id: i64,
    /// Name from the job file.
    pub name: String,
    /// `task` or `sweep`.
    pub kind: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// What each task calls.
    pub task_kind: String,
    /// Module hash.
    pub module_hash: String,
    /// Limits, JSON.
    pub limits: String,
    /// Grants, JSON.
    pub grants: String,
    /// Number of tasks.
    pub total_tasks: i64,
    /// Attempts per task for retryable failures.
    pub max_attempts: i64,
    /// Submission time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
    /// End time (ms).
    pub finished_at: Option<i64>,
    /// Labels a worker must offer to take its tasks, JSON.
    pub labels: String,
    /// How long its tasks may wait while no live worker can take them (ms).
    pub queue_timeout_ms: i64,
    /// Why its queued tasks are waiting, while no live worker can take them.
    pub waiting: Option<String>,
    /// Since when (ms).
    pub waiting_since: Option<i64>,
}

/// A task.
#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct TaskRow {
    /// Id.
    pub id: i64,
    /// Job id.
    pub job_id: i64,
    /// Index within the job.
    pub seq: i64,
    /// `pending`, `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Parameters, JSON.
    pub params: String,
    /// Input blob.
    pub input_hash: Option<String>,
    /// Input name.
    pub input_name: String,
    /// Current attempt (from 0).
    pub attempt: i64,
    /// Failure reason.
    pub reason: Option<String>,
    /// Failure message.
    pub error: Option<String>,
    /// Output blob, when too large to keep inline.
    pub output_hash: Option<String>,
    /// Output size.
    pub output_size: Option<i64>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Start of the current attempt (ms).
    pub started_at: Option<i64>,
    /// End time (ms).
    pub finished_at: Option<i64>,
}

/// One attempt of a task.
#[derive(Clone, Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AttemptRow {
    /// Task id.
    pub task_id: i64,
    /// Attempt number.
    pub attempt: i64,
    /// `succeeded` or `failed`.
    pub state: String,
    /// Failure reason.
    pub reason: Option<String>,
    /// Failure message.
    pub error: Option<String>,
    /// Worker that ran it.
    pub worker: String,
    /// Wall time (ms).
    pub elapsed_ms: i64,
    /// Fuel used.
    pub fuel_used: Option<i64>,
    /// The log.
    #[serde(skip)]
    pub log: Vec<u8>,
    /// Whether the log was cut.
    pub log_truncated: i64,
    /// Counters, JSON.
    pub counters: String,
    /// End time (ms).
    pub finished_at: i64,
}
