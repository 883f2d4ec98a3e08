//! The control plane's closed vocabularies: task states, job statuses and
//! job kinds. One enum each, used by the store (CHECKed columns), the
//! scheduler and the API (as strings in JSON); the migrations list the same
//! names and a test keeps them in step.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A name that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}")]
pub struct UnknownName {
    /// What was expected (`task state`).
    pub what: &'static str,
    /// What was found.
    pub value: String,
}

macro_rules! names {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name, as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: $what, value: text.to_owned() }),
                }
            }
        }
    };
}

names!(
    /// Where a task is in its life.
    TaskState, "task state", {
        /// Created, waiting for what it depends on.
        Pending => "pending",
        /// Published; waiting for a worker.
        Queued => "queued",
        /// A worker took it.
        Running => "running",
        /// It produced its output.
        Succeeded => "succeeded",
        /// It failed for good (the reason says why).
        Failed => "failed",
        /// Its job was cancelled before it ended.
        Cancelled => "cancelled",
        /// It took the output of an earlier task that computed the same
        /// thing (the result cache): it never ran.
        Cached => "cached",
    }
);

impl TaskState {
    /// A task in this state may still change.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            TaskState::Pending | TaskState::Queued | TaskState::Running
        )
    }
}

names!(
    /// Where a job is in its life.
    JobStatus, "job status", {
        /// Some of its tasks may still run.
        Running => "running",
        /// Every task succeeded.
        Succeeded => "succeeded",
        /// It ended with failed tasks.
        Failed => "failed",
        /// It was cancelled.
        Cancelled => "cancelled",
        /// A pipeline step that cannot run: a step it reads failed.
        Blocked => "blocked",
    }
);

impl JobStatus {
    /// The job has ended.
    pub fn is_final(self) -> bool {
        self != JobStatus::Running
    }
}

names!(
    /// What a job file describes.
    JobKind, "job kind", {
        /// One call (`[task]`).
        Task => "task",
        /// Many calls of one module (`[sweep]`).
        Sweep => "sweep",
        /// Maps over splits, then reduces over partitions (`[mapreduce]`).
        MapReduce => "mapreduce",
        /// A graph of steps (`[[step]]`); its steps are jobs of their own.
        Pipeline => "pipeline",
        /// One step of a pipeline.
        Step => "step",
        /// The tasks a subscription made of messages; it ends when the
        /// subscription is deleted or replaced.
        Subscription => "subscription",
    }
);

/// How an attempt ended, as its row says.
pub type AttemptState = sandmill_runtime::message::Verdict;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(*state));
            assert_eq!(
                serde_json::to_string(state).unwrap(),
                format!("\"{state}\"")
            );
            assert_eq!(
                serde_json::from_str::<TaskState>(&format!("\"{state}\"")).unwrap(),
                *state
            );
        }
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(*status));
        }
        let error = "done".parse::<JobStatus>().unwrap_err();
        assert_eq!(error.to_string(), "`done` is not a job status");
    }

    /// The migrations CHECK the same names the enums have.
    #[test]
    fn the_schema_checks_every_name() {
        for dialect in ["sqlite", "postgres"] {
            // The newest CHECK of each column is the one in force.
            let dir = format!("{}/../migrations/{dialect}", env!("CARGO_MANIFEST_DIR"));
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let schema: String = files
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap())
                .collect();
            let quoted = |names: Vec<&str>| {
                names
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let states = quoted(TaskState::ALL.iter().map(|s| s.as_str()).collect());
            let statuses = quoted(JobStatus::ALL.iter().map(|s| s.as_str()).collect());
            let kinds = quoted(JobKind::ALL.iter().map(|s| s.as_str()).collect());
            let reasons = quoted(
                sandmill_runtime::Reason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect(),
            );
            let flat = schema.split_whitespace().collect::<Vec<_>>().join(" ");
            for list in [states, statuses, kinds, reasons] {
                assert!(flat.contains(&list), "{dialect}: no CHECK lists {list}");
            }
        }
    }
}
