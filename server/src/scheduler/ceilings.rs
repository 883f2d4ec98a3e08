//! The most a job may ask for: the server's ceilings on every limit
//! (`serve`/`dev --max-memory`, `--max-timeout`, `--max-fuel`,
//! `--max-output`, `--max-log`, `--max-attempts`). A job, spec default or
//! resubmission above one is refused with a 400 naming the field and the
//! ceiling; nothing is changed.

use std::time::Duration;

use sandmill_runtime::sandbox::{
    DEFAULT_LOG_BYTES, DEFAULT_MAX_MEMORY_CEILING, DEFAULT_MEMORY_BYTES, DEFAULT_OUTPUT_BYTES,
    DEFAULT_TIMEOUT, Limits,
};

use crate::api::views::size;
use crate::jobfile::{Invalid, MAX_ATTEMPTS};

/// The server's ceilings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// Linear memory of a call (all its memories together).
    pub memory_bytes: u64,
    /// Wall time of a call.
    pub timeout: Duration,
    /// Fuel of a call.
    pub fuel: u64,
    /// Output (records or bytes) of a call.
    pub output_bytes: u64,
    /// Log kept of a call.
    pub log_bytes: u64,
    /// Attempts of a task.
    pub attempts: u32,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            memory_bytes: DEFAULT_MAX_MEMORY_CEILING,
            timeout: Duration::from_secs(24 * 3600),
            fuel: 1_000_000_000_000,
            output_bytes: 1 << 30,
            log_bytes: 64 << 20,
            attempts: MAX_ATTEMPTS,
        }
    }
}

impl Ceilings {
    /// Brings limits left at Sandmill's defaults down to the ceilings
    /// (a server whose ceiling is under a default does not refuse jobs
    /// that asked for nothing), then checks them.
    pub fn hold(&self, limits: &mut Limits) -> Result<(), Invalid> {
        if limits.memory_bytes == DEFAULT_MEMORY_BYTES {
            limits.memory_bytes = limits.memory_bytes.min(self.memory_bytes);
        }
        if limits.timeout == DEFAULT_TIMEOUT {
            limits.timeout = limits.timeout.min(self.timeout);
        }
        if limits.output_bytes == DEFAULT_OUTPUT_BYTES {
            limits.output_bytes = limits.output_bytes.min(self.output_bytes);
        }
        if limits.log_bytes == DEFAULT_LOG_BYTES {
            limits.log_bytes = limits.log_bytes.min(self.log_bytes);
        }
        self.check(limits)
    }

    /// Whether `limits` stay under the ceilings; the first one over is
    /// named.
    pub fn check(&self, limits: &Limits) -> Result<(), Invalid> {
        let over = |field: &str, asked: String, ceiling: String, flag: &str| {
            Err(Invalid::field(
                format!("limits.{field}"),
                format!("{asked} is over this server's ceiling of {ceiling} (--max-{flag})"),
            ))
        };
        if limits.memory_bytes > self.memory_bytes {
            return over(
                "memory",
                size(limits.memory_bytes),
                size(self.memory_bytes),
                "memory",
            );
        }
        if limits.timeout > self.timeout {
            return over(
                "timeout",
                humantime::format_duration(limits.timeout).to_string(),
                humantime::format_duration(self.timeout).to_string(),
                "timeout",
            );
        }
        if let Some(fuel) = limits.fuel
            && fuel > self.fuel
        {
            return over("fuel", fuel.to_string(), self.fuel.to_string(), "fuel");
        }
        if limits.output_bytes > self.output_bytes {
            return over(
                "output",
                size(limits.output_bytes),
                size(self.output_bytes),
                "output",
            );
        }
        if limits.log_bytes > self.log_bytes {
            return over("log", size(limits.log_bytes), size(self.log_bytes), "log");
        }
        Ok(())
    }

    /// Whether `attempts` is between 1 and the ceiling.
    pub fn check_attempts(&self, attempts: u32) -> Result<(), Invalid> {
        if attempts == 0 || attempts > self.attempts {
            return Err(Invalid::field(
                "max_attempts",
                format!(
                    "{attempts} is not between 1 and {} (--max-attempts)",
                    self.attempts
                ),
            ));
        }
        Ok(())
    }
}
