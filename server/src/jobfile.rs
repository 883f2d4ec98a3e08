//! Job files: TOML on disk, the same shape as JSON over the API.
//!
//! ```toml
//! name = "thumbnails"
//! [sweep]
//! module = "guest-examples/target/wasm32-wasip2/release/noop.wasm"
//! params = "photos.csv"        # or: count = 10000
//! [limits]
//! memory = "128MiB"
//! timeout = "30s"
//! ```
//!
//! Unknown fields are errors naming the field, so a typo never passes
//! silently. A module is a path (the CLI uploads it), `sha256:<hex>`, or a
//! registered spec `name@version` (or `name` for its newest version).

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use sandmill_runtime::labels::Labels;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Tasks one job may have by default: bounds the work of accepting it.
pub const DEFAULT_MAX_TASKS_PER_JOB: usize = 1_000_000;

/// How long tasks wait for a worker that can take them, by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Attempts per task by default, for failures worth retrying (a timeout,
/// a lost worker); deterministic failures are never retried.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A job file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// A name for people.
    pub name: String,
    /// Attempts per task for retryable failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// One call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSection>,
    /// One call per row of a CSV file, or `count` copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSection>,
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
    #[schema(value_type = Object)]
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
    /// its rows as `rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    /// Parameter rows, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<Object>)]
    pub rows: Option<Vec<BTreeMap<String, String>>>,
    /// Or: this many identical tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Or: one task per input, each `sha256:<hex>` with the name the guest
    /// sees (`sandmill run --input` fills this in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<NamedInput>>,
}

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

/// A job file that does not make sense; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Parses TOML.
pub fn from_toml(text: &str) -> Result<JobFile, Invalid> {
    toml::from_str(text).map_err(|e| {
        Invalid(format!("invalid job file: {}", e.message().trim()).replace('\n', " "))
    })
}

/// Parses JSON.
pub fn from_json(text: &[u8]) -> Result<JobFile, Invalid> {
    serde_json::from_slice(text).map_err(|e| Invalid(format!("invalid job file: {e}")))
}

/// What every task of a job calls, with what.
#[derive(Clone, Debug)]
pub struct Template<'a> {
    /// Module reference.
    pub module: &'a str,
    /// Kind, if given.
    pub kind: Option<&'a str>,
    /// Input reference, if any.
    pub input: Option<&'a str>,
}

impl JobFile {
    /// The one section saying what to run.
    pub fn template(&self) -> Result<Template<'_>, Invalid> {
        match (&self.task, &self.sweep) {
            (Some(task), None) => Ok(Template {
                module: &task.module,
                kind: task.kind.as_deref(),
                input: task.input.as_deref(),
            }),
            (None, Some(sweep)) => Ok(Template {
                module: &sweep.module,
                kind: sweep.kind.as_deref(),
                input: sweep.input.as_deref(),
            }),
            _ => Err(Invalid(
                "a job file needs exactly one of [task] or [sweep]".into(),
            )),
        }
    }

    /// `task` or `sweep`.
    pub fn kind(&self) -> &'static str {
        if self.sweep.is_some() {
            "sweep"
        } else {
            "task"
        }
    }

    /// The parameters of each task, as JSON documents.
    pub fn task_params(&self, max_tasks: usize) -> Result<Vec<String>, Invalid> {
        if let Some(task) = &self.task {
            let params = task.params.clone().unwrap_or_else(|| serde_json::json!({}));
            if !params.is_object() {
                return Err(Invalid("task.params must be a table".into()));
            }
            return Ok(vec![params.to_string()]);
        }
        let Some(sweep) = &self.sweep else {
            return Err(Invalid(
                "a job file needs exactly one of [task] or [sweep]".into(),
            ));
        };
        if let Some(inputs) = &sweep.inputs {
            if sweep.rows.is_some() || sweep.count.is_some() || sweep.params.is_some() {
                return Err(Invalid(
                    "sweep.inputs cannot be combined with params, rows or count".into(),
                ));
            }
            if inputs.is_empty() || inputs.len() > max_tasks {
                return Err(Invalid(format!(
                    "sweep.inputs must name 1 to {max_tasks} inputs"
                )));
            }
            return Ok(vec!["{}".to_owned(); inputs.len()]);
        }
        match (&sweep.rows, sweep.count, &sweep.params) {
            (Some(rows), None, None) => {
                if rows.len() > max_tasks {
                    return Err(Invalid(format!(
                        "sweep.rows: {} tasks exceed the limit of {max_tasks} per job",
                        rows.len()
                    )));
                }
                Ok(rows
                    .iter()
                    .map(|row| serde_json::to_string(row).unwrap_or_else(|_| "{}".into()))
                    .collect())
            }
            (None, Some(count), None) => {
                if count == 0 || count > max_tasks as u64 {
                    return Err(Invalid(format!(
                        "sweep.count must be between 1 and {max_tasks}, not {count}"
                    )));
                }
                Ok(vec!["{}".to_owned(); count as usize])
            }
            (None, None, Some(path)) => Err(Invalid(format!(
                "sweep.params names a file ({path}); submit with the CLI, which sends its rows"
            ))),
            _ => Err(Invalid(
                "[sweep] needs exactly one of params (a CSV file), rows, count or inputs".into(),
            )),
        }
    }

    /// The limits, parsed, over the defaults.
    pub fn limits(&self) -> Result<Limits, Invalid> {
        let mut limits = Limits::default();
        let size = |field: &str, value: &Option<String>| -> Result<Option<u64>, Invalid> {
            value
                .as_deref()
                .map(|v| {
                    v.parse::<ByteSize>().map(|b| b.0).map_err(|e| {
                        Invalid(format!(
                            "limits.{field}: `{v}` is not a size like 128MiB ({e})"
                        ))
                    })
                })
                .transpose()
        };
        if let Some(memory) = size("memory", &self.limits.memory)? {
            limits.memory_bytes = memory;
        }
        if let Some(output) = size("output", &self.limits.output)? {
            limits.output_bytes = output;
        }
        if let Some(log) = size("log", &self.limits.log)? {
            limits.log_bytes = log;
        }
        if let Some(timeout) = &self.limits.timeout {
            limits.timeout = humantime::parse_duration(timeout).map_err(|e| {
                Invalid(format!(
                    "limits.timeout: `{timeout}` is not a duration like 30s ({e})"
                ))
            })?;
            if limits.timeout.is_zero() || limits.timeout > Duration::from_secs(24 * 3600) {
                return Err(Invalid("limits.timeout must be between 1ms and 24h".into()));
            }
        }
        limits.fuel = self.limits.fuel;
        Ok(limits)
    }

    /// The queue timeout, parsed (see [`LimitsSection::queue_timeout`]).
    pub fn queue_timeout(&self) -> Result<Duration, Invalid> {
        let Some(text) = &self.limits.queue_timeout else {
            return Ok(DEFAULT_QUEUE_TIMEOUT);
        };
        let timeout = humantime::parse_duration(text).map_err(|e| {
            Invalid(format!(
                "limits.queue_timeout: `{text}` is not a duration like 10m ({e})"
            ))
        })?;
        if timeout.is_zero() || timeout > Duration::from_secs(7 * 24 * 3600) {
            return Err(Invalid(
                "limits.queue_timeout must be between 1ms and 7 days".into(),
            ));
        }
        Ok(timeout)
    }

    /// The labels, checked.
    pub fn labels(&self) -> Result<Labels, Invalid> {
        Labels::new(self.labels.clone()).map_err(|e| Invalid(e.to_string()))
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
                    return Err(Invalid(format!(
                        "grants.allow: unknown capability `{other}` (expected clock, random or network)"
                    )));
                }
            }
        }
        grants.env = self.grants.env.clone().into_iter().collect();
        Ok(grants)
    }
}

/// Parses a call kind named in a job file.
pub fn parse_kind(field: &str, name: &str) -> Result<CallKind, Invalid> {
    CallKind::parse(name).ok_or_else(|| {
        Invalid(format!(
            "{field}: `{name}` is not one of map, reduce, preprocess, task"
        ))
    })
}

/// Reads CSV text into parameter rows, one per record, keyed by the header.
pub fn csv_rows(text: &[u8]) -> Result<Vec<BTreeMap<String, String>>, Invalid> {
    let mut reader = csv::Reader::from_reader(text);
    let headers = reader
        .headers()
        .map_err(|e| Invalid(format!("sweep.params: {e}")))?
        .clone();
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| Invalid(format!("sweep.params: {e}")))?;
            Ok(headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect())
        })
        .collect()
}

#[cfg(test)]
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
        assert_eq!(job.kind(), "sweep");
        assert_eq!(job.task_params(10).unwrap().len(), 3);
        let limits = job.limits().unwrap();
        assert_eq!(limits.memory_bytes, 128 << 20);
        assert_eq!(limits.timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_typo_names_the_field() {
        let err = from_toml("name = \"x\"\n[task]\nmodule = \"m\"\n[limits]\nmemroy = \"1MiB\"\n")
            .unwrap_err();
        assert!(err.0.contains("memroy"), "{err}");
        let err = from_json(br#"{"name":"x","task":{"module":"m","parms":{}}}"#).unwrap_err();
        assert!(err.0.contains("parms"), "{err}");
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
        assert!(job.limits().unwrap_err().0.starts_with("limits.memory"));
        job.limits.memory = None;
        job.limits.timeout = Some("soon".into());
        assert!(job.limits().unwrap_err().0.starts_with("limits.timeout"));
        job.grants.allow = vec!["files".into()];
        assert!(job.grants().unwrap_err().0.starts_with("grants.allow"));
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
            job.task_params(10)
                .unwrap_err()
                .0
                .contains("between 1 and 10")
        );
        let rows = csv_rows(b"size,name\n1,a\n2,b\n").unwrap();
        assert_eq!(rows[1]["name"], "b");
    }
}
