//! Job files: TOML on disk, the same shape as JSON over the API.
//!
//! ```toml
//! name = "thumbnails"
//! priority = 0                 # 0 to 9, higher first (default 0; /v1/run: 9)
//! max_attempts = 3             # for retryable failures (timeouts)
//! max_running = 8              # tasks queued or running at once (default: no cap)
//! [sweep]
//! module = "guest-examples/target/wasm32-wasip2/release/noop.wasm"
//! params = "photos.csv"        # one task per row; or: count = 10000
//!                              # (with [sweep.params], a table every task gets)
//! [limits]
//! memory = "128MiB"
//! timeout = "30s"
//! ```
//!
//! Unknown fields are errors naming the field, and every error names the
//! key and, in a file, the line (`sweep.count, line 4: expected an integer,
//! found a string`), so a typo never passes silently. A module is a path
//! (the CLI uploads it), `sha256:<hex>`, or a registered spec
//! `name@version` (or `name` for its newest version).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use sandmill_runtime::labels::Labels;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Tasks one job may have by default. A `count` sweep costs one row to
/// accept whatever its count, so this only catches a count with a few
/// zeros too many; raise it with `--max-tasks-per-job`.
pub const DEFAULT_MAX_TASKS_PER_JOB: u64 = 1_000_000_000;

/// How long tasks wait for a worker that can take them, by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Attempts per task by default, for failures worth retrying (a timeout,
/// a lost worker); deterministic failures are never retried.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Most attempts a job may ask for: each keeps an attempt row and its log.
pub const MAX_ATTEMPTS: u32 = 100;

/// Longest job name, input name or label, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A job file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// A name for people.
    pub name: String,
    /// 0 to 9; higher runs first (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Attempts per task for retryable failures (1 to 100, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Tasks of this job queued or running at once, at most (default: no
    /// cap but the dispatch window's), like Airflow's `max_active_tasks`;
    /// a pipeline's steps each keep to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_running: Option<u32>,
    /// One call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSection>,
    /// One call per row of a CSV file, or `count` copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSection>,
    /// Maps over splits of inputs, then reduces over key partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapreduce: Option<MapReduceSection>,
    /// Resource limits of every task.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Capabilities of every task.
    #[serde(default)]
    pub grants: GrantsSection,
    /// Labels a worker must offer to run its tasks (default: the spec's;
    /// none: any worker).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Take the output of an earlier task that computed the same thing
    /// instead of running again (default true; `--no-cache` says false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// A pipeline: steps that read files and each other's outputs.
    #[serde(default, rename = "step", skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSection>,
    /// Makes the file a schedule (`sandmill submit` creates it; over HTTP,
    /// `POST /v1/schedules`): a new job each time this cron expression
    /// fires. Six fields, seconds first (`0 */5 * * * *`: every five
    /// minutes), in UTC; a seventh, years, may follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Makes the file a schedule firing at this interval (`30s`, `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// What a schedule's firing does while its previous job still runs:
    /// `skip` (the default), `queue` (fire when it ends) or `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// Makes a schedule a control loop: each firing calls this module
    /// (kind `task`) with the schedule's state as JSON and submits the job
    /// files it returns; the rest of the file is the job it may copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerSection>,
}

/// `[controller]`: the module a control-loop schedule calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// Path, `sha256:<hex>` or `name@version`; exports `task`.
    pub module: String,
    /// Its parameters (any table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Its limits (default: the usual task defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSection>,
}

/// What a schedule's firing does while its previous job still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Nothing: the firing is skipped (and counted).
    #[default]
    Skip,
    /// It fires once the previous job ends (one waits at most).
    Queue,
    /// It fires anyway: jobs may run side by side.
    Allow,
}

impl Overlap {
    /// The stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Allow => "allow",
        }
    }

    /// The value of a stored name.
    pub fn parse(text: &str) -> Option<Overlap> {
        match text {
            "skip" => Some(Overlap::Skip),
            "queue" => Some(Overlap::Queue),
            "allow" => Some(Overlap::Allow),
            _ => None,
        }
    }
}

/// Shortest interval of an `every` schedule: a schedule is for jobs, not
/// for a busy loop.
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq)]
pub enum Firing {
    /// On a cron expression (with seconds), in UTC.
    Cron(String),
    /// At an interval.
    Every(Duration),
}

impl Firing {
    /// The first firing strictly after `after_ms`; an `every` schedule
    /// keeps its phase from `anchor_ms` (its previous firing time).
    pub fn next_after(&self, anchor_ms: i64, after_ms: i64) -> Option<i64> {
        match self {
            Firing::Every(every) => {
                let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
                if anchor_ms > after_ms {
                    return Some(anchor_ms);
                }
                let steps = (after_ms - anchor_ms) / every + 1;
                anchor_ms.checked_add(steps.checked_mul(every)?)
            }
            Firing::Cron(expression) => {
                let schedule: cron::Schedule = expression.parse().ok()?;
                let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms)?;
                schedule
                    .after(&after)
                    .next()
                    .map(|at| at.timestamp_millis())
            }
        }
    }
}

impl JobFile {
    /// Whether the file describes a schedule (`schedule` or `every`).
    pub fn is_schedule(&self) -> bool {
        self.schedule.is_some() || self.every.is_some()
    }

    /// When the schedule this file describes fires; refuses a file that
    /// is not one, or says both, or a bad expression or interval.
    pub fn firing(&self) -> Result<Firing, Invalid> {
        match (&self.schedule, &self.every) {
            (Some(_), Some(_)) => Err(Invalid::field(
                "every",
                "give `schedule` (cron) or `every`, not both",
            )),
            (Some(expression), None) => {
                let parsed: Result<cron::Schedule, _> = expression.parse();
                match parsed {
                    Ok(schedule) if schedule.upcoming(chrono::Utc).next().is_some() => {
                        Ok(Firing::Cron(expression.clone()))
                    }
                    Ok(_) => Err(Invalid::field(
                        "schedule",
                        "this expression never fires again",
                    )),
                    Err(error) => Err(Invalid::field(
                        "schedule",
                        format!(
                            "not a cron expression with seconds (`sec min hour day month weekday`, e.g. `0 */5 * * * *`): {error}"
                        ),
                    )),
                }
            }
            (None, Some(every)) => {
                let every = parse_duration("every", every)?;
                if every < MIN_EVERY {
                    return Err(Invalid::field(
                        "every",
                        format!("at least {}", humantime::format_duration(MIN_EVERY)),
                    ));
                }
                Ok(Firing::Every(every))
            }
            (None, None) => Err(Invalid::field(
                "schedule",
                "a schedule needs `schedule` (cron) or `every`",
            )),
        }
    }

    /// The job each firing submits (or a controller's template): this
    /// file without its schedule (its controller stays).
    pub fn without_schedule(&self) -> JobFile {
        JobFile {
            schedule: None,
            every: None,
            overlap: None,
            ..self.clone()
        }
    }
}

/// `[[step]]`: one step of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSection {
    /// Its name, unique in the file; other steps read it as `step:<name>`.
    pub name: String,
    /// Path, `sha256:<hex>` or `name@version`.
    pub module: String,
    /// map, reduce, preprocess or task (default: the spec's, else task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// One input: `step:<name>`, a path (CLI) or `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Inputs, read one after the other: `step:<name>` (all of that
    /// step's outputs, in task order), paths (CLI) or `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Fan-out: `line`, one task per line of the inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// A pure module (exporting preprocess) applied to each task's input
    /// before the step's function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
    /// Parameters (any JSON/TOML table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Retries of a failure worth retrying (a timeout, a lost worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSection>,
    /// The step's limits (default: the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSection>,
    /// The step's grants (default: the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<GrantsSection>,
    /// The step's labels (default: the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Run the step as a map-reduce: every output it reads (and every
    /// input it names) is one map's split, then its reduces run; the
    /// step's outputs are the reduces' (the maps' with `reducers = 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapreduce: Option<StepMapReduce>,
}

/// `mapreduce = { reducers = 2 }` in a step: the shape of its map-reduce
/// (its module exports map, and reduce unless `reducers = 0`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepMapReduce {
    /// Reduce tasks, one per partition (default 1); 0: map-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reducers: Option<u32>,
    /// Run the module's combine over each map's output before the shuffle
    /// (default: if the module exports one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<bool>,
    /// Map output held in memory before it is spilled as sorted runs,
    /// e.g. `32MiB` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<String>,
}

/// `retries = { count = 3, backoff = "2s" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesSection {
    /// Attempts after the first (0 to 99).
    pub count: u32,
    /// Wait before each retry, e.g. `2s` (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// How a step fans out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForEach {
    /// One task per line (a trailing newline ends a line; it starts none).
    Line,
}

/// Where a step's input comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepInput {
    /// Every output of another step (by index), in task order.
    Step(usize),
    /// An uploaded input (`sha256:` stripped) or, before the CLI uploads
    /// it, a path.
    File(String),
}

/// A pipeline, checked: each step's inputs resolved and its fan-out, in an
/// order where every step comes after the steps it reads.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Per step (file order): its inputs.
    pub inputs: Vec<Vec<StepInput>>,
    /// Per step: its fan-out.
    pub for_each: Vec<Option<ForEach>>,
    /// Step indexes, every step after those it reads.
    pub order: Vec<usize>,
}

impl Graph {
    /// The steps step `i` reads (each once).
    pub fn needs(&self, i: usize) -> Vec<usize> {
        let mut needs: Vec<usize> = self.inputs[i]
            .iter()
            .filter_map(|input| match input {
                StepInput::Step(j) => Some(*j),
                StepInput::File(_) => None,
            })
            .collect();
        needs.sort_unstable();
        needs.dedup();
        needs
    }
}

/// `[task]`: one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// Path, `sha256:<hex>` or `name@version`.
    pub module: String,
    /// map, reduce, preprocess or task (default: the spec's, else task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Input: a path (CLI) or `sha256:<hex>` of an uploaded input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The input's name as the guest sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_name: Option<String>,
    /// Parameters (any JSON/TOML table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

/// `[sweep]`: one call per parameter row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepSection {
    /// Path, `sha256:<hex>` or `name@version`.
    pub module: String,
    /// map, reduce, preprocess or task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Input shared by every task: a path (CLI) or `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A CSV file whose rows are the tasks' parameters (CLI; the CLI sends
    /// its rows as `rows`); or, with `count`, a table of parameters every
    /// task gets (`[sweep.params]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<SweepParams>,
    /// Parameter rows, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rows: Option<Vec<BTreeMap<String, String>>>,
    /// The rows' columns in the order of the CSV they came from (the CLI
    /// sends them; `sandmill failed --csv` writes them back in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Or: this many identical tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Or: one task per input, each `sha256:<hex>` with the name the guest
    /// sees (`sandmill run --input` fills this in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<NamedInput>>,
}

/// A sweep's `params`: a CSV file of rows, or one table for every task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SweepParams {
    /// The path of a CSV file, one task per row (the CLI reads it).
    Csv(String),
    /// The parameters of every task of a `count` sweep.
    #[schema(value_type = Object)]
    Table(serde_json::Map<String, serde_json::Value>),
}

/// `[mapreduce]`: the module's map over each split of the inputs, its
/// output cut by key hash into `reducers` partitions, and its reduce over
/// each partition's keys in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapReduceSection {
    /// Path, `sha256:<hex>` or `name@version`; it exports map (and reduce,
    /// unless `reducers = 0`).
    pub module: String,
    /// Paths and globs (the CLI cuts them into splits and uploads them),
    /// or `sha256:<hex>` of uploaded inputs (one split each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The splits, each `sha256:<hex>` with the name its map sees (its
    /// file's name); the CLI fills this in from `inputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<NamedInput>>,
    /// Reduce tasks, one per partition (default 1); 0: map-only, the maps'
    /// outputs are the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reducers: Option<u32>,
    /// Largest split the CLI cuts a file into, at a line boundary, e.g.
    /// `32MiB` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_size: Option<String>,
    /// Run the module's combine over each map's output before the shuffle
    /// (default: if the module exports one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<bool>,
    /// Map output held in memory before it is spilled as sorted runs,
    /// e.g. `32MiB` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<String>,
    /// Start a backup attempt of a task running far longer than its
    /// phase's median (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<bool>,
    /// Parameters of every map and reduce (any JSON/TOML table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

/// How a map-reduce job's maps hand their output to its reduces (stored
/// with the job, as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleSettings {
    /// Map output bytes held before a spill.
    pub buffer: u64,
    /// Combine each map's output (when the module exports combine).
    pub combine: bool,
    /// Back up stragglers.
    pub speculation: bool,
}

/// Largest split the CLI cuts by default.
pub const DEFAULT_SPLIT_SIZE: u64 = 32 << 20;

/// An input of a sweep over inputs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedInput {
    /// The name the guest sees.
    pub name: String,
    /// `sha256:<hex>` of the uploaded input.
    pub input: String,
}

/// `[limits]`: sizes like `128MiB`, durations like `30s`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Memory, e.g. `128MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Wall time, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Fuel units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Output bytes, e.g. `64MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Log bytes, e.g. `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// How long tasks may wait while no live worker can take them, e.g.
    /// `10m` (default: 1h); then they fail as `queue-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
}

/// `[grants]`: capabilities beyond the sandbox's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSection {
    /// Any of clock, random, network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// What the API shows for an `env` grant's value: values are secret.
pub const HIDDEN: &str = "(hidden)";

impl GrantsSection {
    /// Its `env` values replaced by [`HIDDEN`] (the names stay).
    pub fn hide_secrets(&mut self) {
        for value in self.env.values_mut() {
            HIDDEN.clone_into(value);
        }
    }
}

impl LimitsSection {
    /// Sets the limits this section names over `limits`, checked.
    pub fn apply_to(&self, limits: &mut Limits) -> Result<(), Invalid> {
        let size = |field: &str, value: &Option<String>| -> Result<Option<u64>, Invalid> {
            value
                .as_deref()
                .map(|v| {
                    v.parse::<ByteSize>().map(|b| b.0).map_err(|e| {
                        Invalid::field(
                            format!("limits.{field}"),
                            format!("`{v}` is not a size like 128MiB ({e})"),
                        )
                    })
                })
                .transpose()
        };
        if let Some(memory) = size("memory", &self.memory)? {
            limits.memory_bytes = memory;
        }
        if let Some(output) = size("output", &self.output)? {
            limits.output_bytes = output;
        }
        if let Some(log) = size("log", &self.log)? {
            limits.log_bytes = log;
        }
        if let Some(timeout) = &self.timeout {
            limits.timeout = parse_duration("limits.timeout", timeout)?;
            if limits.timeout.is_zero() || limits.timeout > Duration::from_secs(24 * 3600) {
                return Err(Invalid::field(
                    "limits.timeout",
                    "must be between 1ms and 24h",
                ));
            }
        }
        if let Some(fuel) = self.fuel {
            limits.fuel = Some(fuel);
        }
        Ok(())
    }
}

/// A job file that does not make sense: which key, on which line (of a
/// file), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    field: String,
    line: Option<usize>,
    problem: String,
}

impl Invalid {
    /// A problem with the whole file (no one key).
    pub fn whole(problem: impl Into<String>) -> Self {
        Invalid {
            field: String::new(),
            line: None,
            problem: problem.into(),
        }
    }

    /// A problem with one key (`sweep.count`).
    pub fn field(field: impl AsRef<str>, problem: impl Into<String>) -> Self {
        Invalid {
            field: field.as_ref().to_owned(),
            line: None,
            problem: problem.into(),
        }
    }

    /// The same problem, said of a pipeline step's key: `task.kind` and
    /// `limits.memory` of the step's own job become `step.<name>.kind`
    /// and `step.<name>.limits.memory`.
    pub fn within_step(self, step: &str) -> Self {
        let field = match self.field.strip_prefix("task.") {
            Some(rest) => format!("step.{step}.{rest}"),
            None if self.field.is_empty() => format!("step.{step}"),
            None => format!("step.{step}.{}", self.field),
        };
        Invalid {
            field,
            line: None,
            problem: self.problem,
        }
    }

    /// The key at fault (dotted, `sweep.rows[3]`), empty for the file.
    pub fn key(&self) -> &str {
        &self.field
    }

    /// The line (from 1) in the file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// What is wrong.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.field.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{}, line {line}: {}", self.field, self.problem),
            (false, None) => write!(f, "{}: {}", self.field, self.problem),
            (true, Some(line)) => write!(f, "line {line}: {}", self.problem),
            (true, None) => write!(f, "{}", self.problem),
        }
    }
}

impl std::error::Error for Invalid {}

/// The key path serde_path_to_error found, as users write it.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Parses TOML; errors name the key and the line.
pub fn from_toml(text: &str) -> Result<JobFile, Invalid> {
    parse_toml(text)
}

/// Parses TOML into any file type; errors name the key and the line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Invalid> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| toml_invalid(text, String::new(), &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = key_path(e.path());
        toml_invalid(text, field, e.inner())
    })
}

fn toml_invalid(text: &str, field: String, error: &toml::de::Error) -> Invalid {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    Invalid {
        field,
        line,
        problem: plain_serde_message(error.message()),
    }
}

/// Parses JSON; errors name the key and the line.
pub fn from_json(text: &[u8]) -> Result<JobFile, Invalid> {
    parse_json(text)
}

/// Parses JSON into any file type; errors name the key and the line.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, Invalid> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let job: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = key_path(e.path());
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde_json appends " at line L column C"; we say it our way.
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        Invalid {
            field,
            line: (inner.line() > 0).then_some(inner.line()),
            problem: plain_serde_message(&message),
        }
    })?;
    deserializer.end().map_err(|e| {
        Invalid::whole(format!(
            "trailing characters after the job (line {})",
            e.line()
        ))
    })?;
    Ok(job)
}

/// Serde's `invalid type: string "ten", expected u64`, as a person says
/// it: `expected an integer, found a string ("ten")`.
fn plain_serde_message(message: &str) -> String {
    let message = message.trim().replace('\n', " ");
    let rewrite = |prefix: &str| -> Option<String> {
        let rest = message.strip_prefix(prefix)?;
        let (found, expected) = rest.rsplit_once(", expected ")?;
        Some(format!(
            "expected {}, found {}",
            describe_expected(expected),
            describe_found(found)
        ))
    };
    rewrite("invalid type: ")
        .or_else(|| rewrite("invalid value: "))
        .unwrap_or(message)
}

fn describe_expected(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "an integer".to_owned()
        }
        "f32" | "f64" => "a number".to_owned(),
        "a map" => "a table".to_owned(),
        "a sequence" => "a list".to_owned(),
        _ if expected.starts_with("struct ") => "a table".to_owned(),
        _ => expected.to_owned(),
    }
}

fn describe_found(found: &str) -> String {
    let found = found.trim();
    for (prefix, name) in [
        ("string ", "a string"),
        ("integer ", "an integer"),
        ("floating point ", "a number"),
        ("boolean ", "a boolean"),
    ] {
        if let Some(value) = found.strip_prefix(prefix) {
            return format!("{name} ({})", value.trim_matches('`'));
        }
    }
    match found {
        "map" => "a table".to_owned(),
        "sequence" => "a list".to_owned(),
        other => other.to_owned(),
    }
}

/// What every task of a job calls, with what.
#[derive(Clone, Debug)]
pub struct Template<'a> {
    /// `task` or `sweep`: the section it came from.
    pub section: &'static str,
    /// Module reference.
    pub module: &'a str,
    /// Kind, if given.
    pub kind: Option<&'a str>,
    /// Input reference, if any.
    pub input: Option<&'a str>,
}

impl Template<'_> {
    /// `task.module`: a key of the section, for errors.
    pub fn section_field(&self, key: &str) -> String {
        format!("{}.{key}", self.section)
    }
}

/// Where a job's tasks come from.
#[derive(Clone, Copy, Debug)]
pub enum Backlog<'a> {
    /// This many identical tasks.
    Count(u64),
    /// One task per row of parameters.
    Rows(&'a [BTreeMap<String, String>]),
    /// One task per input.
    Inputs(&'a [NamedInput]),
}

impl JobFile {
    /// A pipeline's graph, checked: names unique, every `step:` input a
    /// step of the file, no cycle (one is named, step by step), fan-out
    /// over something, a reduce reading records; `None` for a job without
    /// steps. Errors name the step (`step.score.inputs: ...`).
    pub fn graph(&self, max_steps: u64) -> Result<Option<Graph>, Invalid> {
        if self.steps.is_empty() {
            return Ok(None);
        }
        if self.task.is_some() || self.sweep.is_some() || self.mapreduce.is_some() {
            return Err(Invalid::whole(
                "a job file has either [[step]]s or one of [task], [sweep] or [mapreduce], not both",
            ));
        }
        if self.steps.len() as u64 > max_steps {
            return Err(Invalid::field(
                "step",
                format!(
                    "{} steps exceed the limit of {max_steps} per job",
                    self.steps.len()
                ),
            ));
        }
        let mut index = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("step[{i}].name");
            if step.name.is_empty()
                || !step
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Invalid::field(
                    field,
                    format!(
                        "`{}` is not a step name (letters, digits, -, _ and .)",
                        step.name
                    ),
                ));
            }
            check_name(&field, &step.name)?;
            if index.insert(step.name.as_str(), i).is_some() {
                return Err(Invalid::field(
                    format!("step.{}", step.name),
                    "two steps have this name",
                ));
            }
        }
        let mut inputs = Vec::with_capacity(self.steps.len());
        let mut for_each = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let at = |key: &str| format!("step.{}.{key}", step.name);
            if step.input.is_some() && !step.inputs.is_empty() {
                return Err(Invalid::field(
                    at("input"),
                    "give input or inputs, not both",
                ));
            }
            let mut list = Vec::new();
            for text in step.input.iter().chain(&step.inputs) {
                match text.strip_prefix("step:") {
                    Some(name) => match index.get(name) {
                        Some(j) if *j == i => {
                            return Err(Invalid::field(at("inputs"), "a step cannot read itself"));
                        }
                        Some(j) => list.push(StepInput::Step(*j)),
                        None => {
                            return Err(Invalid::field(
                                at("inputs"),
                                format!("`{text}` names no step of this job"),
                            ));
                        }
                    },
                    None => {
                        check_name(&at("inputs"), text)?;
                        list.push(StepInput::File(
                            text.strip_prefix("sha256:").unwrap_or(text).to_owned(),
                        ));
                    }
                }
            }
            let fan = match step.for_each.as_deref() {
                None => None,
                Some("line") => Some(ForEach::Line),
                Some(other) => {
                    return Err(Invalid::field(
                        at("for_each"),
                        format!("`{other}` is not a fan-out (expected line)"),
                    ));
                }
            };
            if step.mapreduce.is_some() {
                if fan.is_some() {
                    return Err(Invalid::field(
                        at("for_each"),
                        "a map-reduce step's maps are its inputs' outputs: it does not fan out by line",
                    ));
                }
                if step.preprocess.is_some() {
                    return Err(Invalid::field(
                        at("preprocess"),
                        "a map-reduce step takes no preprocessor",
                    ));
                }
                if let Some(kind) = step.kind.as_deref()
                    && kind != "map"
                {
                    return Err(Invalid::field(
                        at("kind"),
                        format!("a map-reduce step runs map (and reduce), not {kind}"),
                    ));
                }
                if list.is_empty() {
                    return Err(Invalid::field(
                        at("inputs"),
                        "a map-reduce step needs inputs: each output it reads is a map's split",
                    ));
                }
            }
            if fan.is_some() && list.is_empty() {
                return Err(Invalid::field(
                    at("for_each"),
                    "fans out over nothing: the step has no input",
                ));
            }
            if let Some(kind) = &step.kind {
                let kind = parse_kind(&at("kind"), kind)?;
                if kind == CallKind::Reduce {
                    for input in &list {
                        let StepInput::Step(j) = input else { continue };
                        let theirs = self.steps[*j].kind.as_deref();
                        if let Some(theirs) = theirs
                            && !matches!(theirs, "map" | "reduce")
                        {
                            return Err(Invalid::field(
                                at("kind"),
                                format!(
                                    "a reduce reads records, and step `{}` is a {theirs}, which writes bytes",
                                    self.steps[*j].name
                                ),
                            ));
                        }
                    }
                }
            }
            if let Some(retries) = &step.retries {
                if retries.count >= MAX_ATTEMPTS {
                    return Err(Invalid::field(
                        at("retries.count"),
                        format!("{} is more than {}", retries.count, MAX_ATTEMPTS - 1),
                    ));
                }
                if let Some(backoff) = &retries.backoff {
                    let wait = parse_duration(&at("retries.backoff"), backoff)?;
                    if wait > Duration::from_secs(3600) {
                        return Err(Invalid::field(at("retries.backoff"), "is more than 1h"));
                    }
                }
            }
            inputs.push(list);
            for_each.push(fan);
        }
        let mut graph = Graph {
            inputs,
            for_each,
            order: Vec::new(),
        };
        // Kahn's algorithm; what is left over lies on or behind a cycle.
        let n = self.steps.len();
        let needs: Vec<Vec<usize>> = (0..n).map(|i| graph.needs(i)).collect();
        let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
        let mut readers = vec![Vec::new(); n];
        for (i, list) in needs.iter().enumerate() {
            for j in list {
                readers[*j].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..n).filter(|i| waiting[*i] == 0).collect();
        ready.reverse();
        while let Some(i) = ready.pop() {
            graph.order.push(i);
            for r in &readers[i] {
                waiting[*r] -= 1;
                if waiting[*r] == 0 {
                    ready.push(*r);
                }
            }
        }
        if graph.order.len() < n {
            // Walk back along unfinished inputs until a step repeats.
            let start = (0..n).find(|i| waiting[*i] > 0).unwrap_or(0);
            let mut path = vec![start];
            let mut at = start;
            while let Some(next) = needs[at].iter().copied().find(|j| waiting[*j] > 0) {
                if let Some(pos) = path.iter().position(|p| *p == next) {
                    path.drain(..pos);
                    path.push(next);
                    break;
                }
                path.push(next);
                at = next;
            }
            path.reverse();
            let names: Vec<&str> = path.iter().map(|i| self.steps[*i].name.as_str()).collect();
            return Err(Invalid::field(
                format!("step.{}", names[0]),
                format!("the steps form a cycle: {}", names.join(" → ")),
            ));
        }
        Ok(Some(graph))
    }

    /// Step `i` as a job of its own: one `[task]` of its module, kind and
    /// parameters (a `[mapreduce]` without splits when it is one), with
    /// its limits, grants and labels (the job's where it has none of its
    /// own) and its retries as attempts.
    pub fn step_job(&self, i: usize) -> JobFile {
        let step = &self.steps[i];
        JobFile {
            name: step.name.clone(),
            priority: self.priority,
            max_attempts: step
                .retries
                .as_ref()
                .map(|r| r.count + 1)
                .or(self.max_attempts),
            max_running: self.max_running,
            task: step.mapreduce.is_none().then(|| TaskSection {
                module: step.module.clone(),
                kind: step.kind.clone(),
                input: None,
                input_name: None,
                params: step.params.clone(),
            }),
            sweep: None,
            mapreduce: step.mapreduce.as_ref().map(|mr| MapReduceSection {
                module: step.module.clone(),
                inputs: Vec::new(),
                splits: None,
                reducers: mr.reducers,
                split_size: None,
                combine: mr.combine,
                buffer: mr.buffer.clone(),
                speculation: Some(false),
                params: step.params.clone(),
            }),
            limits: step.limits.clone().unwrap_or_else(|| self.limits.clone()),
            grants: step.grants.clone().unwrap_or_else(|| self.grants.clone()),
            labels: step.labels.clone().unwrap_or_else(|| self.labels.clone()),
            cache: self.cache,
            steps: Vec::new(),
            schedule: None,
            every: None,
            overlap: None,
            controller: None,
        }
    }

    /// The one section saying what to run.
    pub fn template(&self) -> Result<Template<'_>, Invalid> {
        match (&self.task, &self.sweep, &self.mapreduce) {
            (None, None, Some(mr)) => Ok(Template {
                section: "mapreduce",
                module: &mr.module,
                kind: Some("map"),
                input: None,
            }),
            (Some(task), None, None) => Ok(Template {
                section: "task",
                module: &task.module,
                kind: task.kind.as_deref(),
                input: task.input.as_deref(),
            }),
            (None, Some(sweep), None) => Ok(Template {
                section: "sweep",
                module: &sweep.module,
                kind: sweep.kind.as_deref(),
                input: sweep.input.as_deref(),
            }),
            _ => Err(Invalid::whole(
                "a job file needs exactly one of [task], [sweep] or [mapreduce]",
            )),
        }
    }

    /// What can be checked without the server: names are text every
    /// database stores (at most [`MAX_NAME_BYTES`], no control
    /// characters), the priority and attempts are in range.
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(p) = self.priority
            && p > sandmill_runtime::message::MAX_PRIORITY
        {
            return Err(Invalid::field(
                "priority",
                format!(
                    "{p} is not between 0 and {}",
                    sandmill_runtime::message::MAX_PRIORITY
                ),
            ));
        }
        if self.max_running == Some(0) {
            return Err(Invalid::field(
                "max_running",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if let Some(n) = self.max_attempts
            && (n == 0 || n > MAX_ATTEMPTS)
        {
            return Err(Invalid::field(
                "max_attempts",
                format!("{n} is not between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        check_name("name", &self.name)?;
        if let Some(name) = self.task.as_ref().and_then(|t| t.input_name.as_ref()) {
            check_name("task.input_name", name)?;
        }
        if let Some(inputs) = self.sweep.as_ref().and_then(|s| s.inputs.as_ref()) {
            for (i, input) in inputs.iter().enumerate() {
                check_name(&format!("sweep.inputs[{i}].name"), &input.name)?;
            }
        }
        if let Some(splits) = self.mapreduce.as_ref().and_then(|m| m.splits.as_ref()) {
            for (i, split) in splits.iter().enumerate() {
                check_name(&format!("mapreduce.splits[{i}].name"), &split.name)?;
            }
        }
        Ok(())
    }

    /// The job with a `[mapreduce]` whose inputs are all `sha256:` refs
    /// (and no splits) given one split per input, named by its ref: what
    /// a client that uploaded its inputs itself sends. Otherwise as it is.
    pub fn with_uploaded_splits(&self) -> std::borrow::Cow<'_, JobFile> {
        match &self.mapreduce {
            Some(mr)
                if mr.splits.is_none()
                    && !mr.inputs.is_empty()
                    && mr.inputs.iter().all(|i| i.starts_with("sha256:")) =>
            {
                let mut job = self.clone();
                if let Some(mr) = &mut job.mapreduce {
                    mr.splits = Some(
                        mr.inputs
                            .iter()
                            .map(|i| NamedInput {
                                name: i.clone(),
                                input: i.clone(),
                            })
                            .collect(),
                    );
                }
                std::borrow::Cow::Owned(job)
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    /// Where the tasks come from, bounded by `max_tasks`.
    pub fn backlog(&self, max_tasks: u64) -> Result<Backlog<'_>, Invalid> {
        if self.task.is_some() {
            return Ok(Backlog::Count(1));
        }
        if let Some(mr) = &self.mapreduce {
            let Some(splits) = &mr.splits else {
                return Err(Invalid::field(
                    "mapreduce.inputs",
                    "are not uploaded: name them sha256:<hash> (the CLI uploads paths and globs)",
                ));
            };
            if splits.is_empty() {
                return Err(Invalid::field("mapreduce.inputs", "names no input"));
            }
            if splits.len() as u64 > max_tasks {
                return Err(Invalid::field(
                    "mapreduce.inputs",
                    format!(
                        "{} splits exceed the limit of {max_tasks} tasks per job",
                        splits.len()
                    ),
                ));
            }
            return Ok(Backlog::Inputs(splits));
        }
        let Some(sweep) = &self.sweep else {
            return Err(Invalid::whole(
                "a job file needs exactly one of [task], [sweep] or [mapreduce]",
            ));
        };
        let too_many = |field: &str, n: usize| {
            Invalid::field(
                field,
                format!("{n} tasks exceed the limit of {max_tasks} per job"),
            )
        };
        if let Some(inputs) = &sweep.inputs {
            if sweep.rows.is_some() || sweep.count.is_some() || sweep.params.is_some() {
                return Err(Invalid::field(
                    "sweep.inputs",
                    "cannot be combined with params, rows or count",
                ));
            }
            if inputs.is_empty() {
                return Err(Invalid::field("sweep.inputs", "names no input"));
            }
            if inputs.len() as u64 > max_tasks {
                return Err(too_many("sweep.inputs", inputs.len()));
            }
            return Ok(Backlog::Inputs(inputs));
        }
        // A table of parameters goes with `count`; it is the tasks'
        // parameters, not a source of tasks.
        let csv = match &sweep.params {
            Some(SweepParams::Csv(path)) => Some(path),
            Some(SweepParams::Table(_)) if sweep.count.is_none() => {
                return Err(Invalid::field(
                    "sweep.params",
                    "a table of parameters goes with count (every task gets it); \
                     for parameters per task, use rows or a CSV file",
                ));
            }
            Some(SweepParams::Table(_)) | None => None,
        };
        match (&sweep.rows, sweep.count, csv) {
            (Some(rows), None, None) => {
                if rows.len() as u64 > max_tasks {
                    return Err(too_many("sweep.rows", rows.len()));
                }
                Ok(Backlog::Rows(rows))
            }
            (None, Some(count), None) => {
                if count == 0 || count > max_tasks {
                    return Err(Invalid::field(
                        "sweep.count",
                        format!("must be between 1 and {max_tasks}, not {count}"),
                    ));
                }
                Ok(Backlog::Count(count))
            }
            (None, None, Some(path)) => Err(Invalid::field(
                "sweep.params",
                format!("names a file ({path}); submit with the CLI, which sends its rows"),
            )),
            _ => Err(Invalid::field(
                "sweep",
                "needs exactly one of params (a CSV file), rows, count or inputs",
            )),
        }
    }

    /// The parameters of tasks without rows of their own, as JSON: the
    /// task's table, or `{}`.
    pub fn task_params(&self, max_bytes: usize) -> Result<String, Invalid> {
        let (field, params) = match (&self.task, &self.mapreduce, &self.sweep) {
            (Some(task), _, _) => ("task.params", task.params.clone()),
            (None, Some(mr), _) => ("mapreduce.params", mr.params.clone()),
            (None, None, Some(sweep)) => match &sweep.params {
                Some(SweepParams::Table(table)) => (
                    "sweep.params",
                    Some(serde_json::Value::Object(table.clone())),
                ),
                _ => ("", None),
            },
            (None, None, None) => ("", None),
        };
        let Some(params) = params else {
            return Ok("{}".to_owned());
        };
        if !params.is_object() {
            return Err(Invalid::field(field, "must be a table"));
        }
        let text = params.to_string();
        check_params_size(field, &text, max_bytes)?;
        Ok(text)
    }

    /// The input name of tasks without inputs of their own.
    pub fn task_input_name(&self) -> String {
        self.task
            .as_ref()
            .and_then(|t| t.input_name.clone())
            .unwrap_or_else(|| "-".to_owned())
    }

    /// The file with every `env` grant's value hidden, to be shown.
    pub fn without_secrets(&self) -> JobFile {
        let mut copy = self.clone();
        copy.grants.hide_secrets();
        for step in &mut copy.steps {
            if let Some(grants) = &mut step.grants {
                grants.hide_secrets();
            }
        }
        copy
    }

    /// The file as JSON, without its rows and inputs (kept per task) and
    /// its secrets, for the record.
    pub fn definition(&self) -> String {
        let mut copy = self.without_secrets();
        if let Some(sweep) = &mut copy.sweep {
            if let Some(rows) = sweep.rows.take() {
                sweep.count = Some(rows.len() as u64);
            }
            if let Some(inputs) = sweep.inputs.take() {
                sweep.count = Some(inputs.len() as u64);
            }
        }
        if let Some(mr) = &mut copy.mapreduce
            && let Some(splits) = mr.splits.take()
        {
            // What was uploaded, not every split's hash.
            mr.inputs = splits
                .iter()
                .map(|s| s.name.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
        }
        // Serializing plain data into a String cannot fail.
        serde_json::to_string(&copy).unwrap_or_default()
    }

    /// A map-reduce job's reducers and shuffle settings, checked; `None`
    /// for other jobs.
    pub fn shuffle(&self) -> Result<Option<(u32, ShuffleSettings)>, Invalid> {
        use sandmill_runtime::shuffle::{DEFAULT_SHUFFLE_BUFFER, MAX_REDUCERS, MIN_SHUFFLE_BUFFER};
        let Some(mr) = &self.mapreduce else {
            return Ok(None);
        };
        let reducers = mr.reducers.unwrap_or(1);
        if reducers > MAX_REDUCERS {
            return Err(Invalid::field(
                "mapreduce.reducers",
                format!("{reducers} is more than {MAX_REDUCERS}"),
            ));
        }
        let buffer = match &mr.buffer {
            None => DEFAULT_SHUFFLE_BUFFER,
            Some(text) => {
                let bytes = text.parse::<ByteSize>().map(|b| b.0).map_err(|e| {
                    Invalid::field(
                        "mapreduce.buffer",
                        format!("`{text}` is not a size like 32MiB ({e})"),
                    )
                })?;
                if bytes < MIN_SHUFFLE_BUFFER {
                    return Err(Invalid::field(
                        "mapreduce.buffer",
                        format!(
                            "`{text}` is below the smallest buffer, {}",
                            ByteSize(MIN_SHUFFLE_BUFFER)
                        ),
                    ));
                }
                bytes
            }
        };
        if let Some(text) = &mr.split_size {
            let bytes = text.parse::<ByteSize>().map(|b| b.0).map_err(|e| {
                Invalid::field(
                    "mapreduce.split_size",
                    format!("`{text}` is not a size like 32MiB ({e})"),
                )
            })?;
            if bytes == 0 {
                return Err(Invalid::field("mapreduce.split_size", "must be above 0"));
            }
        }
        Ok(Some((
            reducers,
            ShuffleSettings {
                buffer,
                combine: mr.combine.unwrap_or(true),
                speculation: mr.speculation.unwrap_or(true),
            },
        )))
    }

    /// The limits, parsed, over the defaults.
    pub fn limits(&self) -> Result<Limits, Invalid> {
        let mut limits = Limits::default();
        self.limits.apply_to(&mut limits)?;
        Ok(limits)
    }

    /// The queue timeout, parsed (see [`LimitsSection::queue_timeout`]).
    pub fn queue_timeout(&self) -> Result<Duration, Invalid> {
        let Some(text) = &self.limits.queue_timeout else {
            return Ok(DEFAULT_QUEUE_TIMEOUT);
        };
        let timeout = parse_duration("limits.queue_timeout", text)?;
        if timeout.is_zero() || timeout > Duration::from_secs(7 * 24 * 3600) {
            return Err(Invalid::field(
                "limits.queue_timeout",
                "must be between 1ms and 7 days",
            ));
        }
        Ok(timeout)
    }

    /// The labels, checked.
    pub fn labels(&self) -> Result<Labels, Invalid> {
        Labels::new(self.labels.clone()).map_err(|e| Invalid::field("labels", e.to_string()))
    }

    /// The grants, checked.
    pub fn grants(&self) -> Result<Grants, Invalid> {
        let mut grants = Grants::default();
        for name in &self.grants.allow {
            match name.as_str() {
                "clock" => grants.clock = true,
                "random" => grants.random = true,
                "network" => grants.network = true,
                other => {
                    return Err(Invalid::field(
                        "grants.allow",
                        format!("unknown capability `{other}` (expected clock, random or network)"),
                    ));
                }
            }
        }
        for (key, value) in &self.grants.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(Invalid::field(
                    format!("grants.env.{key}"),
                    "names and values have no NUL, and names no `=`",
                ));
            }
        }
        grants.env = self.grants.env.clone().into_iter().collect();
        Ok(grants)
    }
}

/// Parameters larger than `max` bytes are refused.
pub fn check_params_size(field: &str, params: &str, max: usize) -> Result<(), Invalid> {
    if params.len() > max {
        return Err(Invalid::field(
            field,
            format!(
                "parameters of {} bytes exceed the limit of {max} bytes",
                params.len()
            ),
        ));
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Invalid::field(
            field,
            format!("{} bytes, at most {MAX_NAME_BYTES}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::field(field, "has control characters"));
    }
    Ok(())
}

/// A duration like `30s`, `1h 30m`, `250ms`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(text)
        .map_err(|e| Invalid::field(field, format!("`{text}` is not a duration like 30s ({e})")))
}

/// Parses a call kind named in a job file.
pub fn parse_kind(field: &str, name: &str) -> Result<CallKind, Invalid> {
    CallKind::parse(name).ok_or_else(|| {
        Invalid::field(
            field,
            format!("`{name}` is not one of map, reduce, preprocess, task"),
        )
    })
}

/// The header of CSV text: its columns, in order.
pub fn csv_columns(text: &[u8]) -> Result<Vec<String>, Invalid> {
    let mut reader = csv::Reader::from_reader(text);
    Ok(reader
        .headers()
        .map_err(|e| Invalid::field("sweep.params", e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect())
}

/// Reads CSV text into parameter rows, one per record, keyed by the header.
pub fn csv_rows(text: &[u8]) -> Result<Vec<BTreeMap<String, String>>, Invalid> {
    let mut reader = csv::Reader::from_reader(text);
    let headers = reader
        .headers()
        .map_err(|e| Invalid::field("sweep.params", e.to_string()))?
        .clone();
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| Invalid::field("sweep.params", e.to_string()))?;
            Ok(headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses() {
        let job = from_toml(
            r#"
            name = "thumbnails"
            [sweep]
            module = "noop.wasm"
            count = 3
            [limits]
            memory = "128MiB"
            timeout = "30s"
            "#,
        )
        .unwrap();
        assert!(matches!(job.backlog(10).unwrap(), Backlog::Count(3)));
        let limits = job.limits().unwrap();
        assert_eq!(limits.memory_bytes, 128 << 20);
        assert_eq!(limits.timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_line() {
        let err =
            from_toml("name = \"x\"\n[sweep]\nmodule = \"m\"\ncount = \"ten\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "sweep.count, line 4: expected an integer, found a string (\"ten\")"
        );
        assert_eq!(err.key(), "sweep.count");
        assert_eq!(err.line(), Some(4));
        let err =
            from_json(b"{\"name\": \"x\",\n \"sweep\": {\"module\": \"m\", \"count\": \"ten\"}}")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sweep.count, line 2: expected an integer, found a string (\"ten\")"
        );
    }

    #[test]
    fn a_typo_names_the_field() {
        let err = from_toml("name = \"x\"\n[task]\nmodule = \"m\"\n[limits]\nmemroy = \"1MiB\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
        assert_eq!(err.line(), Some(5), "{err}");
        let err = from_json(br#"{"name":"x","task":{"module":"m","parms":{}}}"#).unwrap_err();
        assert!(err.to_string().contains("parms"), "{err}");
        let err = from_toml("name = \"x\"\n[task\n").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut job = JobFile {
            name: "x".into(),
            task: Some(TaskSection {
                module: "m".into(),
                ..TaskSection::default()
            }),
            ..JobFile::default()
        };
        job.limits.memory = Some("lots".into());
        assert_eq!(job.limits().unwrap_err().key(), "limits.memory");
        job.limits.memory = None;
        job.limits.timeout = Some("soon".into());
        assert_eq!(job.limits().unwrap_err().key(), "limits.timeout");
        job.grants.allow = vec!["files".into()];
        assert_eq!(job.grants().unwrap_err().key(), "grants.allow");
        job.name = "a\u{0}b".into();
        assert_eq!(job.check().unwrap_err().key(), "name");
        job.name = "x".into();
        job.priority = Some(10);
        assert_eq!(job.check().unwrap_err().key(), "priority");
        job.sweep = Some(SweepSection::default());
        assert!(job.template().is_err());
    }

    #[test]
    fn sweeps_are_bounded() {
        let job = JobFile {
            name: "x".into(),
            sweep: Some(SweepSection {
                module: "m".into(),
                count: Some(11),
                ..SweepSection::default()
            }),
            ..JobFile::default()
        };
        assert!(
            job.backlog(10)
                .unwrap_err()
                .to_string()
                .contains("between 1 and 10")
        );
        let rows = csv_rows(b"size,name\n1,a\n2,b\n").unwrap();
        assert_eq!(rows[1]["name"], "b");
    }

    #[test]
    fn a_count_sweep_takes_one_table_of_params_for_every_task() {
        let job: JobFile = toml::from_str(
            "name = \"x\"\n[sweep]\nmodule = \"m\"\ncount = 3\n[sweep.params]\nsize = 7\nmode = \"fast\"\n",
        )
        .unwrap();
        assert!(matches!(job.backlog(10), Ok(Backlog::Count(3))));
        let params: serde_json::Value =
            serde_json::from_str(&job.task_params(1 << 10).unwrap()).unwrap();
        assert_eq!(params, serde_json::json!({"size": 7, "mode": "fast"}));
        // A path is still a CSV file's; a table without count is refused.
        let csv: JobFile =
            toml::from_str("name = \"x\"\n[sweep]\nmodule = \"m\"\nparams = \"p.csv\"\n").unwrap();
        assert!(matches!(
            csv.sweep.as_ref().unwrap().params,
            Some(SweepParams::Csv(_))
        ));
        let rows: JobFile = toml::from_str(
            "name = \"x\"\n[sweep]\nmodule = \"m\"\nrows = [{a = \"1\"}]\n[sweep.params]\nsize = 7\n",
        )
        .unwrap();
        let refused = rows.backlog(10).unwrap_err().to_string();
        assert!(refused.contains("goes with count"), "{refused}");
    }
}
