//! What travels between the control plane and workers. Never a large
//! payload: modules, inputs, large parameters, large logs and large outputs
//! travel as blob references ([`BlobRef`]); the small ones travel inline,
//! bytes as base64 strings (never JSON arrays of numbers).
//!
//! Every field a guest controls is bounded before it leaves the worker
//! ([`TaskResult::bounded`]): an event always fits in one broker message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::reason::Reason;
use crate::sandbox::{CallKind, Grants, Limits};

/// Outputs up to this size travel inside the result; larger ones go to the
/// blob store and the result names their hash.
pub const INLINE_OUTPUT_BYTES: usize = 64 * 1024;

/// Logs up to this size travel inside the result; larger ones go to the
/// blob store.
pub const INLINE_LOG_BYTES: usize = 16 * 1024;

/// Parameters up to this size travel inside the task message; larger ones
/// go to the blob store.
pub const INLINE_PARAMS_BYTES: usize = 16 * 1024;

/// An error message (a guest's, or a panic's) is cut to this many bytes:
/// the first few kilobytes say what went wrong; the rest would only make
/// the event too large to send.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Counters one call may report; names past this many are dropped (and
/// counted under [`DROPPED_COUNTERS`]).
pub const MAX_COUNTERS: usize = 64;

/// Longest counter name kept; longer names are cut.
pub const MAX_COUNTER_NAME_BYTES: usize = 128;

/// The counter that says how many counter names were dropped.
pub const DROPPED_COUNTERS: &str = "sandmill.dropped-counters";

/// Highest job priority; interactive calls (`/v1/run`) use it by default.
pub const MAX_PRIORITY: u8 = 9;

/// The lane above every priority: tasks of a tenant in its reserved slots
/// (a reservation), which go to the next free slot before anyone's.
pub const RESERVED_LANE: u8 = MAX_PRIORITY + 1;

/// A blob: its sha256 and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// sha256 of the bytes, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
}

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
    /// The job's priority (0 to [`MAX_PRIORITY`]; higher runs first), or
    /// [`RESERVED_LANE`] for a task in its tenant's reserved slots.
    #[serde(default)]
    pub priority: u8,
    /// The job's tenant: within a priority, the in-process broker hands
    /// out tasks of the tenants waiting in turn (fair share).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// What to call.
    pub kind: CallKind,
    /// The module's sha256 (a blob).
    pub module: String,
    /// The input's sha256 (a blob); `None` for an empty input.
    pub input: Option<String>,
    /// The name the guest sees for its input.
    pub input_name: String,
    /// JSON parameters (empty when they travel as [`params_blob`](Self::params_blob)).
    pub params: String,
    /// Parameters too large to travel inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_blob: Option<BlobRef>,
    /// Limits of the call.
    pub limits: Limits,
    /// Grants of the call.
    pub grants: Grants,
    /// Labels a worker must offer to take it (none: any worker).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Seeds the guest's randomness (when `random` is not granted); `None`:
    /// the task id. Stored with the task, so every run of it draws the
    /// same numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The task's part in a map-reduce job's shuffle, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<Shuffle>,
    /// Inputs read one after the other, each a slice of a blob (a
    /// pipeline step's); when given, they replace [`input`](Self::input).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputPart>,
    /// A module whose `preprocess` turns the input into the one the call
    /// sees (a pipeline step's preprocessor), by its sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
    /// Store a non-empty output in the blob store whatever its size: a
    /// later pipeline step reads it as it is, so its tasks can be created
    /// in the very transaction that records this one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub output_blob: bool,
    /// How many times the broker has delivered this message, counting this
    /// delivery (set on fetch; not part of the message).
    #[serde(skip, default = "first_delivery")]
    pub delivered: u32,
    /// The control plane's mark of this attempt, which only it can make:
    /// the attempt's events carry it back, and an event without the right
    /// one is not recorded (no one who was not delivered the task can
    /// report on it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ticket: String,
    /// When the broker queued this message (ms since the Unix epoch; set
    /// on fetch, not part of the message): the start of its queue wait.
    #[serde(skip)]
    pub published_ms: Option<i64>,
    /// The W3C `traceparent` its message carried (set on fetch from the
    /// NATS headers, not part of the message).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// A slice of a blob: one of a task's inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPart {
    /// The blob's sha256.
    pub hash: String,
    /// Where the slice starts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// How long it is; `None`: to the blob's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A task's part in a map-reduce job's shuffle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Shuffle {
    /// A map: its output is cut into `partitions` sorted runs in the blob
    /// store, spilled past `buffer` bytes; its result's output is a
    /// [`MapOutput`](crate::shuffle::MapOutput).
    Map {
        /// Partitions (the job's reducers).
        partitions: u32,
        /// Key and value bytes held before a spill.
        buffer: u64,
        /// Run the module's `combine` over the output (when it has one).
        combine: bool,
    },
    /// A reduce: its input is a [`ReduceInput`](crate::shuffle::ReduceInput).
    Reduce,
}

fn first_delivery() -> u32 {
    1
}

impl TaskMessage {
    /// The broker's idempotency key: one live message per task attempt.
    pub fn dedup_key(&self) -> (i64, i64) {
        (self.task_id, self.attempt)
    }

    /// This attempt's trace context: the one its message carried, else
    /// the one derived from its ids.
    pub fn trace(&self) -> TraceContext {
        self.traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .unwrap_or_else(|| TraceContext::of(self.job_id, self.task_id, self.attempt))
    }
}

/// The W3C trace context of one attempt of a task: the trace is the
/// task's, the span its attempt's. Both are derived from the ids, so the
/// server and the worker name the same trace without sharing state; it
/// travels in the task message's `traceparent` header all the same, for
/// tools that follow headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
}

impl TraceContext {
    /// The context of `attempt` of `task_id` of `job_id`.
    pub fn of(job_id: i64, task_id: i64, attempt: i64) -> TraceContext {
        use sha2::{Digest, Sha256};
        let trace = Sha256::digest(format!("sandmill-trace:{job_id}:{task_id}").as_bytes());
        let span = Sha256::digest(format!("sandmill-span:{job_id}:{task_id}:{attempt}").as_bytes());
        TraceContext {
            trace_id: hex::encode(&trace[..16]),
            span_id: hex::encode(&span[..8]),
        }
    }

    /// The `traceparent` header's value (version 00, sampled).
    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// Reads a `traceparent` value; `None` unless well formed.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        (version == "00" && hex(trace, 32) && hex(span, 16) && parts.next().is_none()).then(|| {
            TraceContext {
                trace_id: trace.to_owned(),
                span_id: span.to_owned(),
            }
        })
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

/// A name that is not a [`Verdict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not succeeded or failed")]
pub struct UnknownVerdict(pub String);

impl std::str::FromStr for Verdict {
    type Err = UnknownVerdict;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "succeeded" => Ok(Verdict::Succeeded),
            "failed" => Ok(Verdict::Failed),
            _ => Err(UnknownVerdict(name.to_owned())),
        }
    }
}

/// Where an output is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputRef {
    /// Small outputs travel inline (base64 in JSON).
    Inline(#[serde(with = "base64_bytes")] Vec<u8>),
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
    /// On failure, why.
    pub reason: Option<Reason>,
    /// On failure, the message (at most [`MAX_ERROR_BYTES`]).
    pub error: Option<String>,
    /// Whether running it again could succeed (a timeout, a lost worker).
    pub retryable: bool,
    /// The output on success: `key value` lines for map and reduce.
    pub output: Option<OutputRef>,
    /// The guest's log, when small (base64 in JSON).
    #[serde(default, with = "base64_bytes")]
    pub log: Vec<u8>,
    /// The guest's log, when too large to travel inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_blob: Option<BlobRef>,
    /// Whether the log was cut at the log limit.
    pub log_truncated: bool,
    /// Counters the guest reported (at most [`MAX_COUNTERS`]).
    pub counters: BTreeMap<String, i64>,
    /// When the worker began the attempt (ms since the Unix epoch, the
    /// worker's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// Wall time in milliseconds.
    pub elapsed_ms: i64,
    /// Fuel used, when metered.
    pub fuel_used: Option<u64>,
    /// The task message's [`TaskMessage::ticket`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ticket: String,
    /// The task's kind, as its message said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CallKind>,
    /// How long the attempt waited in its queue, in milliseconds (from
    /// the broker's clock to the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<i64>,
    /// The largest size the guest's linear memory grew to, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
}

impl TaskResult {
    /// The same result with every guest-controlled field bounded: the
    /// error cut to [`MAX_ERROR_BYTES`], counter names to
    /// [`MAX_COUNTER_NAME_BYTES`] and their number to [`MAX_COUNTERS`].
    pub fn bounded(mut self) -> Self {
        if let Some(error) = &mut self.error {
            clip(error, MAX_ERROR_BYTES);
        }
        self.worker = {
            let mut worker = std::mem::take(&mut self.worker);
            clip(&mut worker, 256);
            worker
        };
        self.counters = bound_counters(std::mem::take(&mut self.counters));
        self
    }
}

/// At most [`MAX_COUNTERS`] counters, names at most
/// [`MAX_COUNTER_NAME_BYTES`]; what is dropped is counted under
/// [`DROPPED_COUNTERS`].
pub fn bound_counters(counters: BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut kept = BTreeMap::new();
    let mut dropped = 0i64;
    for (mut name, value) in counters {
        clip(&mut name, MAX_COUNTER_NAME_BYTES);
        if kept.len() < MAX_COUNTERS - 1 || kept.contains_key(&name) {
            let slot: &mut i64 = kept.entry(name).or_default();
            *slot = slot.saturating_add(value);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        kept.insert(DROPPED_COUNTERS.to_owned(), dropped);
    }
    kept
}

/// Cuts `text` to at most `max` bytes on a character boundary, saying how
/// much was cut.
pub fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let marker = format!(" [... {} bytes cut]", text.len() - max);
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&marker);
}

/// What workers tell the control plane.
// Most events are `Finished`: boxing it would cost an allocation per
// event to shrink the rare others.
#[allow(clippy::large_enum_variant)]
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
        /// The task message's [`TaskMessage::ticket`].
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ticket: String,
    },
    /// An attempt ended.
    Finished(TaskResult),
    /// A running attempt's guest reported how far it is (`host.progress`):
    /// shown live, never stored (the latest of a task is sent at most every
    /// [`PROGRESS_EVERY`]).
    Progress {
        /// The task's job.
        job_id: i64,
        /// The task.
        task_id: i64,
        /// The attempt.
        attempt: i64,
        /// Units done, as the guest counts them.
        done: u64,
        /// Units in all, as the guest counts them.
        total: u64,
    },
}

/// How often a running task's progress is sent at most: a guest calling
/// `host.progress` in a tight loop costs the broker nothing more.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl TaskEvent {
    /// The task this event is about.
    pub fn task_id(&self) -> i64 {
        match self {
            TaskEvent::Started { task_id, .. } | TaskEvent::Progress { task_id, .. } => *task_id,
            TaskEvent::Finished(result) => result.task_id,
        }
    }

    /// Roughly the bytes this event holds in memory (for bounded queues).
    pub fn weight(&self) -> usize {
        match self {
            TaskEvent::Started { worker, .. } => 64 + worker.len(),
            TaskEvent::Progress { .. } => 64,
            TaskEvent::Finished(r) => {
                256 + r.worker.len()
                    + r.log.len()
                    + r.error.as_ref().map_or(0, String::len)
                    + r.counters.keys().map(|k| k.len() + 16).sum::<usize>()
                    + match &r.output {
                        Some(OutputRef::Inline(bytes)) => bytes.len(),
                        _ => 0,
                    }
            }
        }
    }
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
    /// Tasks it is running now (at most its capacity).
    pub running: Vec<i64>,
    /// Tasks it has begun since it started.
    #[serde(default)]
    pub started: u64,
    /// Slot-milliseconds it has spent running tasks since it started, as
    /// of `last_seen` (its utilization is the rise of this over time).
    #[serde(default)]
    pub busy_ms: u64,
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
            started: 0,
            busy_ms: 0,
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

/// Bytes as a base64 string in JSON (standard alphabet, padded).
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn result() -> TaskResult {
        TaskResult {
            job_id: 1,
            task_id: 2,
            attempt: 0,
            worker: "w/0".into(),
            verdict: Verdict::Failed,
            reason: Some(Reason::GuestError),
            error: Some("x".repeat(MAX_ERROR_BYTES * 3)),
            retryable: false,
            output: Some(OutputRef::Inline(vec![0, 255, 10])),
            log: vec![0xff; 10],
            log_blob: None,
            log_truncated: false,
            counters: (0..200).map(|i| (format!("c{i}"), 1)).collect(),
            started_ms: None,
            elapsed_ms: 1,
            fuel_used: None,
            ticket: String::new(),
            kind: None,
            waited_ms: None,
            memory_peak: None,
        }
    }

    #[test]
    fn bytes_travel_as_base64_and_guest_fields_are_bounded() {
        let bounded = result().bounded();
        assert!(bounded.error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
        assert!(bounded.error.as_ref().unwrap().ends_with("bytes cut]"));
        assert_eq!(bounded.counters.len(), MAX_COUNTERS);
        assert_eq!(bounded.counters[DROPPED_COUNTERS], 200 - 63);
        let json = serde_json::to_string(&TaskEvent::Finished(bounded.clone())).unwrap();
        assert!(json.contains(r#""log":"/////////////w==""#));
        assert!(json.contains(r#""output":{"inline":"AP8K"}"#));
        let back: TaskEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TaskEvent::Finished(bounded));
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let mut text = "é".repeat(100);
        clip(&mut text, 51);
        assert!(text.len() <= 51, "{}", text.len());
        assert!(text.ends_with("bytes cut]"));
        let mut short = "abc".to_owned();
        clip(&mut short, 3);
        assert_eq!(short, "abc");
    }
}
