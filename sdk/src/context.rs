//! [`Context`]: what a guest function may ask of the host besides its input.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::Error;
use crate::host::HostFns;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong but the call goes on.
    Warn,
    /// Something failed.
    Error,
}

/// The task's view of the host: parameters, the input's name, logs,
/// progress and counters.
///
/// Inside a sandbox it talks to the host; [`Context::local`] makes one for
/// native tests that records what the function did.
pub struct Context {
    backend: Backend,
    params: Option<String>,
}

enum Backend {
    Host(&'static HostFns),
    Local(Local),
}

/// What a local context records, for tests.
#[derive(Default)]
struct Local {
    params: String,
    input_name: String,
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, i64>,
    progress: Option<(u64, u64)>,
    attempt: u32,
}

impl Context {
    pub(crate) fn host(host: &'static HostFns) -> Self {
        Context {
            backend: Backend::Host(host),
            params: None,
        }
    }

    /// A context for running a guest function natively (in `cargo test`):
    /// no parameters (`{}`), input name `-`, and logs, counters and
    /// progress kept for inspection.
    pub fn local() -> Self {
        Context {
            backend: Backend::Local(Local {
                params: "{}".into(),
                input_name: "-".into(),
                ..Local::default()
            }),
            params: None,
        }
    }

    /// Sets the JSON parameters of a local context.
    pub fn with_params(mut self, json: impl Into<String>) -> Self {
        if let Backend::Local(local) = &mut self.backend {
            local.params = json.into();
        }
        self
    }

    /// Sets the input name of a local context.
    pub fn with_input_name(mut self, name: impl Into<String>) -> Self {
        if let Backend::Local(local) = &mut self.backend {
            local.input_name = name.into();
        }
        self
    }

    /// Sets the attempt number of a local context.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        if let Backend::Local(local) = &mut self.backend {
            local.attempt = attempt;
        }
        self
    }

    /// Which attempt of the task this is, from 0: a retry (after a timeout,
    /// a lost worker or a failure of a map-reduce task) sees 1 or more.
    pub fn attempt(&self) -> u32 {
        match &self.backend {
            Backend::Host(host) => (host.attempt)(),
            Backend::Local(local) => local.attempt,
        }
    }

    /// The task's parameters as raw JSON (`{}` when none were given).
    pub fn raw_params(&mut self) -> &str {
        let backend = &self.backend;
        self.params.get_or_insert_with(|| match backend {
            Backend::Host(host) => (host.params)(),
            Backend::Local(local) => local.params.clone(),
        })
    }

    /// The task's parameters, deserialized.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Params { pattern: String }
    /// let mut ctx = sandmill_sdk::Context::local().with_params(r#"{"pattern":"ab"}"#);
    /// assert_eq!(ctx.params::<Params>().unwrap().pattern, "ab");
    /// ```
    pub fn params<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        serde_json::from_str(self.raw_params())
            .map_err(|e| Error::msg(format!("invalid task parameters: {e}")))
    }

    /// The name of the input being processed: a file name, or `-`.
    pub fn input_name(&self) -> String {
        match &self.backend {
            Backend::Host(host) => (host.input_name)(),
            Backend::Local(local) => local.input_name.clone(),
        }
    }

    /// Appends a line to the task's log.
    pub fn log(&mut self, level: Level, message: &str) {
        match &mut self.backend {
            Backend::Host(host) => (host.log)(level, message),
            Backend::Local(local) => local.logs.push((level, message.to_owned())),
        }
    }

    /// Appends an info line to the task's log.
    pub fn info(&mut self, message: &str) {
        self.log(Level::Info, message);
    }

    /// Appends a warning to the task's log.
    pub fn warn(&mut self, message: &str) {
        self.log(Level::Warn, message);
    }

    /// Reports progress: `done` of `total` units (`total` 0 when unknown).
    pub fn progress(&mut self, done: u64, total: u64) {
        match &mut self.backend {
            Backend::Host(host) => (host.progress)(done, total),
            Backend::Local(local) => local.progress = Some((done, total)),
        }
    }

    /// Adds `delta` to the task's counter `name`.
    ///
    /// Each call crosses into the host: count in a local variable inside a
    /// loop and report the total once.
    pub fn counter(&mut self, name: &str, delta: i64) {
        match &mut self.backend {
            Backend::Host(host) => (host.counter)(name, delta),
            Backend::Local(local) => *local.counters.entry(name.to_owned()).or_default() += delta,
        }
    }

    /// Log lines recorded by a local context (empty inside a sandbox).
    pub fn logs(&self) -> &[(Level, String)] {
        match &self.backend {
            Backend::Host(_) => &[],
            Backend::Local(local) => &local.logs,
        }
    }

    /// A counter's value in a local context (0 inside a sandbox).
    pub fn counter_value(&self, name: &str) -> i64 {
        match &self.backend {
            Backend::Host(_) => 0,
            Backend::Local(local) => local.counters.get(name).copied().unwrap_or(0),
        }
    }

    /// The last progress reported to a local context.
    pub fn last_progress(&self) -> Option<(u64, u64)> {
        match &self.backend {
            Backend::Host(_) => None,
            Backend::Local(local) => local.progress,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_context_records_what_the_function_did() {
        let mut ctx = Context::local().with_input_name("a.txt");
        ctx.info("hello");
        ctx.counter("words", 2);
        ctx.counter("words", 3);
        ctx.progress(1, 4);
        assert_eq!(ctx.input_name(), "a.txt");
        assert_eq!(ctx.logs(), &[(Level::Info, "hello".to_owned())]);
        assert_eq!(ctx.counter_value("words"), 5);
        assert_eq!(ctx.last_progress(), Some((1, 4)));
    }

    #[test]
    fn bad_params_name_the_problem() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            n: u32,
        }
        let mut ctx = Context::local().with_params(r#"{"n":"x"}"#);
        let err = ctx.params::<P>().unwrap_err();
        assert!(
            err.message().starts_with("invalid task parameters"),
            "{err}"
        );
    }
}
