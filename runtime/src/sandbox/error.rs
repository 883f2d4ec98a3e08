//! [`ExecError`]: every way a call can fail, classified in one place.

use std::time::Duration;

use wasmtime::Trap;

use crate::reason::Reason;

/// Why a call failed. Callers decide on the variant (retry, report, fail
/// the job); [`ExecError::reason`] is the stable name stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The wall-time limit passed.
    #[error("timed out after {0:?} (wall-time limit)")]
    Timeout(Duration),
    /// The fuel limit was used up.
    #[error("ran out of fuel after {0} units (fuel limit)")]
    OutOfFuel(u64),
    /// The guest tried to grow its memory past the limit.
    #[error("memory limit of {limit} bytes exceeded")]
    MemoryLimit {
        /// The limit in force.
        limit: u64,
    },
    /// The guest produced more output than allowed.
    #[error("output limit of {limit} bytes exceeded")]
    OutputTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The guest panicked.
    #[error("guest panicked at {location}: {message}")]
    Panic {
        /// The panic message.
        message: String,
        /// `file:line:column` in the guest's source.
        location: String,
    },
    /// The guest trapped.
    #[error("guest trapped: {0}")]
    Trap(TrapKind),
    /// The guest returned an error.
    #[error("guest error: {0}")]
    Guest(String),
    /// The bytes are not a module Sandmill can run.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module is larger than the module size limit.
    #[error("module of {size} bytes exceeds the limit of {limit} bytes")]
    ModuleTooLarge {
        /// Size of the rejected module.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The module does not export the function the call needs.
    #[error(
        "module does not export a {kind} function (`{export}`); mark one with #[sandmill_sdk::{kind}]"
    )]
    MissingExport {
        /// The kind of call.
        kind: &'static str,
        /// The export looked for.
        export: String,
    },
    /// A grant could not be applied (e.g. a granted directory is missing).
    #[error("cannot apply grant: {0}")]
    BadGrant(String),
    /// The host failed, not the guest (e.g. no free instance slot).
    #[error("sandbox failure: {0}")]
    Host(String),
    /// The call's [`Interrupt`](super::Interrupt) was thrown: its job ended
    /// early (cancelled). A worker reports no result for it: the task's
    /// end is already recorded.
    #[error("interrupted: its job was cancelled")]
    Cancelled,
}

/// The kind of trap, as wasmtime reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrapKind {
    /// The wasm call stack overflowed (unbounded recursion).
    #[error("stack overflow")]
    StackOverflow,
    /// A load or store outside linear memory.
    #[error("out-of-bounds memory access")]
    MemoryOutOfBounds,
    /// `unreachable` was executed (an abort).
    #[error("unreachable executed")]
    Unreachable,
    /// Integer division by zero.
    #[error("integer division by zero")]
    DivisionByZero,
    /// Integer overflow (e.g. `i32::MIN / -1`).
    #[error("integer overflow")]
    IntegerOverflow,
    /// An indirect call to a null or mistyped entry.
    #[error("bad indirect call")]
    BadIndirectCall,
    /// Anything else, by wasmtime's description.
    #[error("{0}")]
    Other(String),
}

impl ExecError {
    /// The stable, machine-readable failure reason.
    pub fn reason(&self) -> Reason {
        match self {
            ExecError::Timeout(_) => Reason::Timeout,
            ExecError::OutOfFuel(_) => Reason::OutOfFuel,
            ExecError::MemoryLimit { .. } => Reason::OutOfMemory,
            ExecError::OutputTooLarge { .. } => Reason::OutputTooLarge,
            ExecError::Panic { .. } => Reason::GuestPanic,
            ExecError::Trap(_) => Reason::Trap,
            ExecError::Guest(_) => Reason::GuestError,
            ExecError::InvalidModule(_)
            | ExecError::ModuleTooLarge { .. }
            | ExecError::MissingExport { .. } => Reason::ModuleInvalid,
            ExecError::BadGrant(_) => Reason::BadGrant,
            // Never stored (see the variant); the host stopped it.
            ExecError::Host(_) | ExecError::Cancelled => Reason::HostError,
        }
    }

    /// True when running the same call again would fail the same way.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            ExecError::Timeout(_)
                | ExecError::Host(_)
                | ExecError::BadGrant(_)
                | ExecError::Cancelled
        )
    }
}

/// Raised by host code to stop the guest; carried through wasmtime's error
/// and turned back into its [`ExecError`] by [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostAbort(pub ExecError);

/// One line from an error chain, for messages a user reads in a terminal.
pub(crate) fn one_line(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// What the call knew when it failed, beyond wasmtime's error.
pub(crate) struct FailureContext {
    pub panic: Option<(String, String)>,
    pub timeout: Duration,
    pub fuel: Option<u64>,
}

/// Turns a wasmtime error from instantiating or calling a guest into an
/// [`ExecError`]. The only place that looks inside wasmtime's errors.
pub(crate) fn classify(error: wasmtime::Error, cx: FailureContext) -> ExecError {
    if let Some(HostAbort(abort)) = error.downcast_ref::<HostAbort>() {
        return abort.clone();
    }
    if let Some((message, location)) = cx.panic {
        return ExecError::Panic { message, location };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ExecError::Timeout(cx.timeout),
        Some(Trap::OutOfFuel) => ExecError::OutOfFuel(cx.fuel.unwrap_or(0)),
        Some(Trap::StackOverflow) => ExecError::Trap(TrapKind::StackOverflow),
        Some(Trap::MemoryOutOfBounds) => ExecError::Trap(TrapKind::MemoryOutOfBounds),
        Some(Trap::UnreachableCodeReached) => ExecError::Trap(TrapKind::Unreachable),
        Some(Trap::IntegerDivisionByZero) => ExecError::Trap(TrapKind::DivisionByZero),
        Some(Trap::IntegerOverflow) => ExecError::Trap(TrapKind::IntegerOverflow),
        Some(Trap::IndirectCallToNull | Trap::BadSignature) => {
            ExecError::Trap(TrapKind::BadIndirectCall)
        }
        Some(other) => ExecError::Trap(TrapKind::Other(other.to_string())),
        None => ExecError::Host(one_line(&error)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable_names() {
        assert_eq!(
            ExecError::Timeout(Duration::from_secs(1)).reason().as_str(),
            "timeout"
        );
        assert_eq!(
            ExecError::MemoryLimit { limit: 1 }.reason().as_str(),
            "out-of-memory"
        );
        assert!(!ExecError::Timeout(Duration::ZERO).is_deterministic());
        assert!(ExecError::Guest("x".into()).is_deterministic());
    }

    #[test]
    fn a_host_abort_survives_the_trip_through_wasmtime() {
        let error = wasmtime::Error::new(HostAbort(ExecError::OutputTooLarge { limit: 7 }));
        let cx = FailureContext {
            panic: None,
            timeout: Duration::ZERO,
            fuel: None,
        };
        assert_eq!(classify(error, cx), ExecError::OutputTooLarge { limit: 7 });
    }
}
