//! What the API returns: view types of its own, apart from the store's
//! rows. One form each for times (RFC 3339, UTC, milliseconds), durations
//! (`"1m 30s"`, `"250ms"`: what job files accept) and sizes (`"256MiB"`,
//! `"1500B"`: what job files accept); states, statuses and kinds as enums;
//! nested objects, never JSON inside strings. Every list is a [`Page`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sandmill_runtime::Reason;
use sandmill_runtime::message::Verdict;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::model::{JobKind, JobStatus, TaskState};
use crate::store::{AttemptRow, Counts, JobRow, ModuleRow, SpecRow, TaskRow};

/// A time as RFC 3339 in UTC with milliseconds (`2026-12-01T21:41:10.123Z`).
pub fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Now, as [`time`] writes it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A duration as job files write it (`1m 30s`, `250ms`, `0s`).
pub fn duration(d: Duration) -> String {
    // Whole milliseconds: finer is noise to a person and to a client.
    let d = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if d.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(d).to_string()
}

/// A size as job files write it: exact, in the largest binary unit that
/// divides it (`256MiB`, `1536KiB`, `1500B`).
pub fn size(bytes: u64) -> String {
    for (unit, name) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// A page of a list: its items, and the cursor of the next page (`null`
/// on the last). Pass the cursor back as `?cursor=` to continue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Where the next page starts; `null` when this is the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of `items` (fetched one more than `limit` to know whether
    /// more follow), with the cursor of the last item kept.
    pub fn of<C: Serialize>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> C) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more {
            items.last().map(|last| encode_cursor(&cursor(last)))
        } else {
            None
        };
        Page { items, next_cursor }
    }

    /// The same page with each item turned into another view.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// An opaque cursor: URL-safe base64 of the last item's sort key.
pub fn encode_cursor<C: Serialize>(key: &C) -> String {
    let json = serde_json::to_vec(key).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// Reads back a cursor this API gave.
pub fn decode_cursor<C: serde::de::DeserializeOwned>(cursor: &str) -> Result<C, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| ApiError::bad_field("cursor", "not a cursor this list gave"))
}

/// Paging of a list by name or place: how many, and where to continue.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Where to continue: a `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size (checked) and the cursor (decoded).
    pub fn page<C: serde::de::DeserializeOwned>(&self) -> Result<(usize, Option<C>), ApiError> {
        let limit = page_size(self.limit, 100, 1000)?;
        let after = self.cursor.as_deref().map(decode_cursor::<C>).transpose()?;
        Ok((limit, after))
    }
}

/// A page size: `limit` (1 to `max`, as the document says), or the
/// default.
pub fn page_size(limit: Option<u32>, default: u32, max: u32) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default as usize),
        Some(n) if n == 0 || n > max => Err(ApiError::bad_field(
            "limit",
            format!("must be between 1 and {max}"),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// Resource limits of a call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitsView {
    /// Memory, e.g. `256MiB`.
    #[schema(example = "256MiB")]
    pub memory: String,
    /// Wall time, e.g. `1m`.
    #[schema(example = "1m")]
    pub timeout: String,
    /// Fuel units; `null`: unmetered.
    pub fuel: Option<u64>,
    /// Bytes of output, e.g. `256MiB`.
    #[schema(example = "256MiB")]
    pub output: String,
    /// Bytes of log kept, e.g. `1MiB`.
    #[schema(example = "1MiB")]
    pub log: String,
}

impl From<&Limits> for LimitsView {
    fn from(limits: &Limits) -> Self {
        LimitsView {
            memory: size(limits.memory_bytes),
            timeout: duration(limits.timeout),
            fuel: limits.fuel,
            output: size(limits.output_bytes),
            log: size(limits.log_bytes),
        }
    }
}

/// Capabilities granted to a call. Environment values are never shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantsView {
    /// Any of clock, random, network.
    pub allow: Vec<String>,
    /// Names of the environment variables set (values are secret).
    pub env: Vec<String>,
    /// Where a call granted `network` may connect: the server's policy
    /// when the job was accepted (`203.0.113.7/32`, `10.0.0.0/8:5432`,
    /// `*` for anything).
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl From<&Grants> for GrantsView {
    fn from(grants: &Grants) -> Self {
        let allow = [
            (grants.clock, "clock"),
            (grants.random, "random"),
            (grants.network, "network"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect();
        GrantsView {
            allow,
            env: grants.env.iter().map(|(k, _)| k.clone()).collect(),
            hosts: grants.hosts.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A job's tasks by state.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    /// Every task of the job.
    pub total: i64,
    /// Not dispatched yet (waiting for room in the dispatch window).
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
    /// Of the succeeded, those that took a cached output (never ran).
    pub cached: i64,
}

/// Where a map-reduce job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Maps run.
    Map,
    /// Every map succeeded; the reduces' inputs are being planned.
    Shuffle,
    /// Reduces run.
    Reduce,
    /// The job ended.
    Done,
}

/// A map-reduce job's phases.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MapReduceView {
    /// Where it is.
    pub phase: Phase,
    /// Its map tasks (one per split) by state.
    pub maps: TaskCounts,
    /// Its reduce tasks (one per partition) by state; `pending` until
    /// every map succeeded.
    pub reduces: TaskCounts,
}

impl MapReduceView {
    /// The view of a map-reduce job's phases.
    pub fn new(job: &JobRow, phases: [crate::store::PhaseCounts; 2]) -> Self {
        let counts = |p: crate::store::PhaseCounts| TaskCounts {
            total: p.pending + p.queued + p.running + p.succeeded + p.failed + p.cancelled,
            pending: p.pending,
            queued: p.queued,
            running: p.running,
            succeeded: p.succeeded,
            failed: p.failed,
            cancelled: p.cancelled,
            cached: 0,
        };
        let [maps, reduces] = phases.map(counts);
        let phase = if job.status().is_final() {
            Phase::Done
        } else if job.planned == 1 && job.reducers > 0 {
            Phase::Reduce
        } else if job.reducers > 0 && maps.succeeded == maps.total {
            Phase::Shuffle
        } else {
            Phase::Map
        };
        MapReduceView {
            phase,
            maps,
            reduces,
        }
    }
}

/// Why a job's queued tasks wait.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    /// E.g. `no live worker offers labels gpu=a100`.
    pub reason: String,
    /// Since when.
    #[schema(format = DateTime)]
    pub since: String,
}

/// A job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Id.
    pub id: i64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Name from the job file.
    pub name: String,
    /// What its file described.
    pub kind: JobKind,
    /// Where it is in its life.
    pub status: JobStatus,
    /// 0 to 9; higher runs first.
    pub priority: u8,
    /// What each task calls.
    #[schema(value_type = String, example = "task")]
    pub task_kind: CallKind,
    /// The module, `sha256:<hex>`.
    pub module: String,
    /// Limits of every task.
    pub limits: LimitsView,
    /// Grants of every task.
    pub grants: GrantsView,
    /// Labels a worker must offer to take its tasks.
    pub labels: BTreeMap<String, String>,
    /// Attempts per task for retryable failures.
    pub max_attempts: i64,
    /// Its tasks queued or running at once, at most (`null`: no cap but
    /// the dispatch window's).
    pub max_running: Option<i64>,
    /// How long its tasks may wait while no live worker can take them.
    #[schema(example = "1h")]
    pub queue_timeout: String,
    /// Its tasks by state.
    pub tasks: TaskCounts,
    /// A map-reduce job's phases (`null` for other jobs).
    pub mapreduce: Option<MapReduceView>,
    /// A step's pipeline (`null` for other jobs).
    pub pipeline: Option<i64>,
    /// A step's name (`null` for other jobs).
    pub step: Option<String>,
    /// The job whose tasks this one runs again (`sandmill resubmit`).
    pub resubmit_of: Option<i64>,
    /// The schedule that submitted it (`null` for other jobs).
    pub schedule: Option<String>,
    /// The guests' counters (`ctx.counter`), summed over every task's
    /// successful attempt.
    pub counters: BTreeMap<String, i64>,
    /// Why its queued tasks wait, while no live worker can take them.
    pub waiting: Option<Waiting>,
    /// Submission time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Last change.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// End time.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// From submission to the end (or to now).
    #[schema(example = "1s 234ms")]
    pub elapsed: String,
}

impl JobView {
    /// The same view with a pipeline's tasks, summed over its steps.
    pub fn with_steps(mut self, sums: Option<(Counts, i64, i64)>) -> Self {
        if let Some((counts, cached, total)) = sums {
            self.tasks = TaskCounts {
                total,
                pending: counts.pending,
                queued: counts.queued,
                running: counts.running,
                succeeded: counts.succeeded,
                failed: counts.failed,
                cancelled: counts.cancelled,
                cached,
            };
        }
        self
    }

    /// The same view with a map-reduce job's phases.
    pub fn with_phases(
        mut self,
        job: &JobRow,
        phases: Option<[crate::store::PhaseCounts; 2]>,
    ) -> Self {
        self.mapreduce = phases.map(|p| MapReduceView::new(job, p));
        self
    }

    /// The view of a job row with its counts.
    pub fn new(job: &JobRow, counts: Counts) -> Self {
        let end = job.finished_at.unwrap_or_else(crate::store::now_ms);
        JobView {
            id: job.id,
            tenant: job.tenant.clone(),
            name: job.name.clone(),
            kind: job.kind.0,
            status: job.status.0,
            priority: u8::try_from(job.priority).unwrap_or(0),
            task_kind: job.task_kind.0,
            module: format!("sha256:{}", job.module_hash),
            limits: LimitsView::from(&job.limits.0),
            grants: GrantsView::from(&job.grants.0),
            labels: job.labels.0.0.clone(),
            max_attempts: job.max_attempts,
            max_running: job.max_running,
            queue_timeout: duration(Duration::from_millis(
                u64::try_from(job.queue_timeout_ms).unwrap_or(0),
            )),
            tasks: TaskCounts {
                total: job.total_tasks + if job.planned == 0 { job.reducers } else { 0 },
                pending: counts.pending,
                queued: counts.queued,
                running: counts.running,
                succeeded: counts.succeeded,
                failed: counts.failed,
                cancelled: counts.cancelled,
                cached: job.cached,
            },
            mapreduce: None,
            pipeline: job.parent_id,
            step: job.step.clone(),
            resubmit_of: job.resubmit_of,
            schedule: job.schedule.clone(),
            counters: job.counters.0.clone(),
            waiting: match (&job.waiting, job.waiting_since) {
                (Some(reason), Some(since)) => Some(Waiting {
                    reason: reason.clone(),
                    since: time(since),
                }),
                _ => None,
            },
            created_at: time(job.created_at),
            updated_at: time(job.updated_at),
            finished_at: job.finished_at.map(time),
            elapsed: duration(Duration::from_millis(
                u64::try_from(end - job.created_at).unwrap_or(0),
            )),
        }
    }
}

/// A pipeline's graph: its steps and which reads which.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GraphView {
    /// The pipeline.
    pub job_id: i64,
    /// Its status.
    pub status: JobStatus,
    /// Its steps, in the order they were accepted (each after those it
    /// reads).
    pub steps: Vec<StepView>,
    /// Which step reads which.
    pub edges: Vec<EdgeView>,
}

/// One step of a pipeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// Its name.
    pub name: String,
    /// Its job (its tasks are `/v1/jobs/{job_id}/tasks`).
    pub job_id: i64,
    /// running (also while it waits for its inputs), succeeded, failed,
    /// cancelled, or blocked (an input failed).
    pub status: JobStatus,
    /// What its tasks call.
    #[schema(value_type = String, example = "task")]
    pub kind: CallKind,
    /// The module, `sha256:<hex>`.
    pub module: String,
    /// Whether it has its tasks yet (its inputs are ready).
    pub planned: bool,
    /// Its tasks by state.
    pub tasks: TaskCounts,
}

/// `to` reads `from`'s outputs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EdgeView {
    /// The step read.
    pub from: String,
    /// The step reading it.
    pub to: String,
}

/// A task's input.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InputView {
    /// The blob, `sha256:<hex>`; `null` for an empty input.
    pub blob: Option<String>,
    /// The name the guest sees.
    pub name: String,
}

/// A task's output.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputView {
    /// Bytes.
    pub size: i64,
    /// Where to read it.
    #[schema(example = "/v1/tasks/7/output")]
    pub href: String,
}

/// A task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// Id.
    pub id: i64,
    /// Its job.
    pub job_id: i64,
    /// Its index within the job.
    pub seq: i64,
    /// Where it is in its life.
    pub state: TaskState,
    /// Its current attempt (from 0).
    pub attempt: i64,
    /// Its parameters.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Its input.
    pub input: InputView,
    /// Why it failed.
    #[schema(value_type = Option<String>, example = "timeout")]
    pub reason: Option<Reason>,
    /// What went wrong, for people.
    pub error: Option<String>,
    /// Its output, once it succeeded.
    pub output: Option<OutputView>,
    /// Creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Start of the current attempt.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// End time.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// The task this run replaces (it was restarted, or retried).
    pub restart_of: Option<i64>,
    /// The run that replaced it; or, for a task of a step planned again
    /// after a restart upstream, the restarted run that caused it. A
    /// replaced task is not listed with its job's tasks, and not read by
    /// the steps after it.
    pub replaced_by: Option<i64>,
}

impl TaskView {
    /// The view of a task row.
    pub fn new(task: &TaskRow) -> Self {
        TaskView {
            id: task.id,
            job_id: task.job_id,
            seq: task.seq,
            state: task.state.0,
            attempt: task.attempt,
            // Stored as JSON written by the server; an unreadable one is
            // shown as what it is rather than failing the whole list.
            params: serde_json::from_str(&task.params)
                .unwrap_or_else(|_| serde_json::Value::String(task.params.clone())),
            input: InputView {
                blob: task.input_hash.as_ref().map(|h| format!("sha256:{h}")),
                name: task.input_name.clone(),
            },
            reason: task.reason.map(|r| r.0),
            error: task.error.clone(),
            output: matches!(task.state.0, TaskState::Succeeded | TaskState::Cached).then(|| {
                OutputView {
                    size: task.output_size.unwrap_or(0),
                    href: format!("/v1/tasks/{}/output", task.id),
                }
            }),
            created_at: time(task.created_at),
            started_at: task.started_at.map(time),
            finished_at: task.finished_at.map(time),
            restart_of: task.restart_of,
            replaced_by: task.replaced_by,
        }
    }
}

/// An attempt's log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    /// Bytes kept.
    pub size: i64,
    /// Whether it was cut at the log limit.
    pub truncated: bool,
}

/// One attempt of a task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// Its number (from 0).
    pub attempt: i64,
    /// How it ended.
    #[schema(value_type = String, example = "succeeded")]
    pub state: Verdict,
    /// Why it failed.
    #[schema(value_type = Option<String>, example = "timeout")]
    pub reason: Option<Reason>,
    /// What went wrong, for people.
    pub error: Option<String>,
    /// The worker slot that ran it.
    pub worker: String,
    /// Its wall time.
    #[schema(example = "3ms")]
    pub elapsed: String,
    /// Fuel used, when metered.
    pub fuel_used: Option<i64>,
    /// The largest the guest's linear memory grew to (`null` when the
    /// worker did not say).
    #[schema(example = "1088KiB")]
    pub memory_peak: Option<String>,
    /// Its log (read it at `/v1/tasks/{id}/logs`).
    pub log: LogView,
    /// Counters the guest reported.
    pub counters: BTreeMap<String, i64>,
    /// When the worker began it, by the worker's clock (`null` when it did
    /// not say).
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// End time.
    #[schema(format = DateTime)]
    pub finished_at: String,
}

impl AttemptView {
    /// The view of an attempt row.
    pub fn new(attempt: &AttemptRow) -> Self {
        AttemptView {
            attempt: attempt.attempt,
            state: attempt.state.0,
            reason: attempt.reason.map(|r| r.0),
            error: attempt.error.clone(),
            worker: attempt.worker.clone(),
            elapsed: duration(Duration::from_millis(
                u64::try_from(attempt.elapsed_ms).unwrap_or(0),
            )),
            fuel_used: attempt.fuel_used,
            memory_peak: attempt
                .memory_peak
                .map(|m| size(u64::try_from(m).unwrap_or(0))),
            log: LogView {
                size: attempt.log_size,
                truncated: attempt.log_truncated != 0,
            },
            counters: attempt.counters.0.clone(),
            started_at: attempt.started_at.map(time),
            finished_at: time(attempt.finished_at),
        }
    }
}

/// A task with its attempts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskDetail {
    /// The task.
    pub task: TaskView,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// A stored module.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModuleView {
    /// `sha256:<hex>`, to name in job files.
    pub module: String,
    /// Size in bytes.
    pub size: i64,
    /// The kinds of call it can run.
    #[schema(value_type = Vec<String>, example = json!(["task"]))]
    pub exports: Vec<CallKind>,
    /// When it was first uploaded.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl ModuleView {
    /// The view of a module row.
    pub fn new(module: &ModuleRow) -> Self {
        ModuleView {
            module: format!("sha256:{}", module.hash),
            size: module.size,
            exports: module.exports.0.clone(),
            created_at: time(module.created_at),
        }
    }
}

/// A stored input.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InputRef {
    /// `sha256:<hex>`, to name in job files.
    pub input: String,
    /// Size in bytes.
    pub size: u64,
}

/// A registered spec version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpecView {
    /// The tenant it belongs to (spec names are per tenant).
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The module, `sha256:<hex>`.
    pub module: String,
    /// What it calls.
    #[schema(value_type = String, example = "task")]
    pub kind: CallKind,
    /// Default limits.
    pub limits: LimitsView,
    /// Default grants.
    pub grants: GrantsView,
    /// Default labels.
    pub labels: BTreeMap<String, String>,
    /// Registration time.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl SpecView {
    /// The view of a spec row.
    pub fn new(spec: &SpecRow) -> Self {
        SpecView {
            tenant: spec.tenant.clone(),
            name: spec.name.clone(),
            version: spec.version.clone(),
            module: format!("sha256:{}", spec.module_hash),
            kind: spec.kind.0,
            limits: LimitsView::from(&spec.limits.0),
            grants: GrantsView::from(&spec.grants.0),
            labels: spec.labels.0.0.clone(),
            created_at: time(spec.created_at),
        }
    }
}

/// Everything one attempt of a task ran with, to run it again elsewhere
/// (`sandmill replay`): fetch its blobs from
/// `/v1/tasks/{task_id}/blobs/{hash}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallView {
    /// The task.
    pub task_id: i64,
    /// Its job.
    pub job_id: i64,
    /// The attempt (the guest's `attempt()`).
    pub attempt: i64,
    /// What it calls.
    #[schema(value_type = String, example = "task")]
    pub kind: CallKind,
    /// The module, `sha256:<hex>`.
    pub module: String,
    /// Its preprocessor, `sha256:<hex>`, applied to its input first.
    pub preprocess: Option<String>,
    /// Its input (when it reads one blob whole).
    pub input: InputView,
    /// The slices of blobs it reads one after the other (a pipeline
    /// step's task); empty: `input`.
    pub inputs: Vec<InputPartView>,
    /// Its parameters.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Its limits.
    pub limits: LimitsView,
    /// Its grants (environment values are not shown).
    pub grants: GrantsView,
    /// The seed its guest's randomness is drawn from.
    pub seed: u64,
    /// How the attempt ended, as recorded (`null`: no attempt ran, e.g. a
    /// cached task).
    pub recorded: Option<AttemptView>,
}

impl CallView {
    /// The blobs it reads (module, preprocessor, inputs), as hashes
    /// without `sha256:`, each once.
    pub fn blobs(&self) -> Vec<String> {
        let mut hashes: Vec<String> = [
            Some(&self.module),
            self.preprocess.as_ref(),
            self.input.blob.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.inputs.iter().map(|p| &p.blob))
        .map(|r| r.strip_prefix("sha256:").unwrap_or(r).to_owned())
        .collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes
    }
}

/// A slice of a blob.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InputPartView {
    /// The blob, `sha256:<hex>`.
    pub blob: String,
    /// Where the slice starts.
    pub offset: u64,
    /// How long it is; `null`: to the blob's end.
    pub len: Option<u64>,
}

/// How to restart a task.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    /// Plan every step after the task's again once the new run ends
    /// (default: only steps it blocked run; the others keep what they
    /// computed).
    #[serde(default)]
    pub downstream: bool,
}

/// Which of a job's tasks to run again as a new job, and with what
/// limits.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResubmitRequest {
    /// Only the tasks that did not succeed (default: every task).
    #[serde(default)]
    pub failed: bool,
    /// Limits over the old job's (those not named stay as they were).
    #[serde(default)]
    pub limits: crate::jobfile::LimitsSection,
}

/// What a retry runs again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryView {
    /// The job.
    pub job_id: i64,
    /// Failed tasks run again (each a new task linked to the old one).
    pub tasks: i64,
    /// Steps that were blocked (or failed before they had tasks) and will
    /// be planned again.
    pub steps: i64,
}

/// An accepted job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobCreated {
    /// Its id.
    pub id: i64,
}

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Heard from lately, taking tasks.
    Live,
    /// Finishing its tasks, taking no new ones.
    Draining,
    /// Not heard from for a while.
    Lost,
}

/// A worker process.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// Its name, stable across restarts.
    pub id: String,
    /// Where it is in its life.
    pub status: WorkerStatus,
    /// What it offers.
    pub labels: BTreeMap<String, String>,
    /// Tasks it runs at once.
    pub capacity: usize,
    /// Tasks it is running now.
    pub running: Vec<i64>,
    /// Tasks it has finished since it started.
    pub finished: u64,
    /// Its sandmill version.
    pub version: String,
    /// When it started.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Its last heartbeat.
    #[schema(format = DateTime)]
    pub last_seen: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_form_for_times_durations_and_sizes() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_234), "1970-01-01T00:00:01.234Z");
        assert_eq!(duration(Duration::from_secs(60)), "1m");
        assert_eq!(duration(Duration::from_millis(1_234)), "1s 234ms");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_micros(1_500)), "1ms");
        for d in ["1m", "1s 234ms", "1h", "250ms"] {
            let parsed = humantime::parse_duration(d).unwrap();
            assert_eq!(duration(parsed), d, "durations read back as written");
        }
        assert_eq!(size(256 << 20), "256MiB");
        assert_eq!(size(1536 << 10), "1536KiB");
        assert_eq!(size(1500), "1500B");
        assert_eq!(size(0), "0B");
        for s in ["256MiB", "1536KiB", "1500B"] {
            let parsed: bytesize::ByteSize = s.parse().unwrap();
            assert_eq!(size(parsed.0), s, "sizes read back as written");
        }
    }

    #[test]
    fn cursors_are_opaque_and_checked() {
        let cursor = encode_cursor(&(1_700_000_000_000i64, 42i64));
        assert!(!cursor.contains(','));
        let back: (i64, i64) = decode_cursor(&cursor).unwrap();
        assert_eq!(back, (1_700_000_000_000, 42));
        assert!(decode_cursor::<(i64, i64)>("not a cursor!").is_err());
        let page = Page::of(vec![1, 2, 3], 2, |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(
            decode_cursor::<i32>(page.next_cursor.as_deref().unwrap()).unwrap(),
            2
        );
        assert!(Page::of(vec![1, 2], 2, |n| *n).next_cursor.is_none());
    }
}
