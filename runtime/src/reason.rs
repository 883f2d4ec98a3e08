//! [`Reason`]: why a task attempt failed, as stored, shown and matched on.
//!
//! One closed list, shared by the sandbox (which classifies guest
//! failures), the worker (lost deliveries) and the control plane (queue
//! timeouts, results the database refused). The database keeps the same
//! names under a CHECK constraint; new reasons come with a migration.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an attempt failed. Serialized as its kebab-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The wall-time limit passed.
    Timeout,
    /// The fuel limit was used up.
    OutOfFuel,
    /// The guest asked for more memory than its limit.
    OutOfMemory,
    /// The guest produced more output than its limit.
    OutputTooLarge,
    /// The guest panicked (message and location in the error).
    GuestPanic,
    /// The guest trapped (stack overflow, unreachable, ...).
    Trap,
    /// The guest returned an error.
    GuestError,
    /// The module cannot run: not a component, too large, missing the
    /// export the task needs.
    ModuleInvalid,
    /// A grant could not be applied on the worker.
    BadGrant,
    /// The host failed, not the guest.
    HostError,
    /// Every worker that took the task vanished before finishing it.
    WorkerLost,
    /// Workers died while running the task, more than once.
    CrashLoop,
    /// No live worker could take the task within its queue timeout.
    QueueTimeout,
    /// The database refused to store the task's result (it is set aside
    /// so the rest of its batch is recorded).
    StoreRejected,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 14] = [
        Reason::Timeout,
        Reason::OutOfFuel,
        Reason::OutOfMemory,
        Reason::OutputTooLarge,
        Reason::GuestPanic,
        Reason::Trap,
        Reason::GuestError,
        Reason::ModuleInvalid,
        Reason::BadGrant,
        Reason::HostError,
        Reason::WorkerLost,
        Reason::CrashLoop,
        Reason::QueueTimeout,
        Reason::StoreRejected,
    ];

    /// The stable name (`out-of-memory`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::OutOfFuel => "out-of-fuel",
            Reason::OutOfMemory => "out-of-memory",
            Reason::OutputTooLarge => "output-too-large",
            Reason::GuestPanic => "guest-panic",
            Reason::Trap => "trap",
            Reason::GuestError => "guest-error",
            Reason::ModuleInvalid => "module-invalid",
            Reason::BadGrant => "bad-grant",
            Reason::HostError => "host-error",
            Reason::WorkerLost => "worker-lost",
            Reason::CrashLoop => "crash-loop",
            Reason::QueueTimeout => "queue-timeout",
            Reason::StoreRejected => "store-rejected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a failure reason")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| UnknownReason(name.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
        assert!("crash_loop".parse::<Reason>().is_err());
    }
}
