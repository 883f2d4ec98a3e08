//! Subscription files: a function pointed at a NATS subject. Each message
//! becomes a task of the subscription's job, whose input is the payload
//! and whose params come from `Sandmill-Param-*` headers; its result is
//! published on `sandmill.results.<name>` and answered on the message's
//! reply subject.
//!
//! ```toml
//! name = "thumbnails"
//! subject = "uploads.images.>"
//! module = "thumb@2"
//! queue = true          # durable (JetStream); false: core NATS, at most once
//! max_in_flight = 64
//! keep = "24h"          # or a count of finished tasks
//! [limits]
//! timeout = "5s"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::jobfile::{GrantsSection, Invalid, JobFile, LimitsSection, TaskSection, parse_duration};

/// Messages of one subscription being handled at once, by default.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// The most `max_in_flight` may say.
pub const MAX_IN_FLIGHT: u32 = 4096;

/// How long finished tasks are kept, by default.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Messages a durable subscription's stream holds, by default, before
/// publishers are refused (it holds what is not handled yet).
pub const DEFAULT_MAX_BACKLOG: u64 = 1_000_000;

/// Longest subscription name.
pub const MAX_NAME: usize = 64;

/// Prefix of the headers that carry a message's params.
pub const PARAM_HEADER: &str = "Sandmill-Param-";

/// A subscription, as a user writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFile {
    /// Its name: letters, digits, `-` and `_` (it names a NATS stream).
    pub name: String,
    /// The NATS subject, wildcards allowed (not `sandmill.` or `$`).
    pub subject: String,
    /// `sha256:<hex>`, a spec `name@version`, or (in a file) a path the
    /// CLI uploads.
    pub module: String,
    /// map, reduce, preprocess or task (default task, or the spec's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Durable (default): a JetStream stream captures the subject, each
    /// message is acked once its result is recorded. `false`: core NATS,
    /// at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<bool>,
    /// Messages handled at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// How long finished tasks are kept (`24h`, the default), or how
    /// many (a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Keep>,
    /// Messages a durable subscription's stream holds before publishers
    /// are refused (default 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<u64>,
    /// Params every task gets; a message's `Sandmill-Param-*` headers
    /// override them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Attempts per message before a retryable failure is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// 0 to 9, higher first (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Limits of each call.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Grants of each call.
    #[serde(default)]
    pub grants: GrantsSection,
    /// Labels a worker must offer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Retention of a subscription's finished tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Keep {
    /// The newest this many.
    Count(u64),
    /// Those that finished within this long (`24h`).
    For(String),
}

/// A subscription file's settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Durable.
    pub queue: bool,
    /// Messages at once.
    pub max_in_flight: u32,
    /// Keep finished tasks this long (ms), or
    pub keep_ms: Option<i64>,
    /// this many.
    pub keep_count: Option<i64>,
    /// The durable stream's message limit.
    pub max_backlog: u64,
}

/// Whether a subject is one a subscription may capture: tokens of
/// printable characters without spaces, `*` or `>` (last) as wildcards,
/// not Sandmill's own (`sandmill.`) nor the server's (`$`).
pub fn check_subject(subject: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(Invalid::field("subject", format!("`{subject}`: {why}")));
    if subject.is_empty() || subject.len() > 256 {
        return bad("give 1 to 256 characters");
    }
    if subject.starts_with('$') || subject == "sandmill" || subject.starts_with("sandmill.") {
        return bad("subjects under `sandmill.` and `$` are reserved");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return bad("has an empty token (`..`, or a `.` at an end)");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("has spaces or control characters");
        }
        if token.contains(['*', '>']) && token.len() > 1 {
            return bad("`*` and `>` are whole tokens");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return bad("`>` is the last token");
        }
    }
    if tokens == [">"] {
        return bad("`>` alone would capture every message of the server");
    }
    Ok(())
}

/// Whether a `Sandmill-Reply` header names a subject a result may be
/// published on: one without wildcards or spaces, not Sandmill's own.
pub fn check_reply(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 256
        && !subject.starts_with("sandmill.")
        && !subject.starts_with("$JS.")
        && subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

impl SubscriptionFile {
    /// Checks every field that does not need the server's catalogue.
    pub fn check(&self) -> Result<Checked, Invalid> {
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(Invalid::field(
                "name",
                format!(
                    "`{}`: use 1 to {MAX_NAME} letters, digits, `-` and `_`",
                    self.name
                ),
            ));
        }
        check_subject(&self.subject)?;
        if self.module.is_empty() {
            return Err(Invalid::field("module", "name a module"));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > MAX_IN_FLIGHT {
            return Err(Invalid::field(
                "max_in_flight",
                format!("{max_in_flight} is not between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        if let Some(params) = &self.params
            && !params.is_object()
        {
            return Err(Invalid::field("params", "give a table (a JSON object)"));
        }
        let (keep_ms, keep_count) = match &self.keep {
            None => (Some(DEFAULT_KEEP.as_millis() as i64), None),
            Some(Keep::Count(0)) => {
                return Err(Invalid::field("keep", "keep at least one task"));
            }
            Some(Keep::Count(n)) => (None, Some(i64::try_from(*n).unwrap_or(i64::MAX))),
            Some(Keep::For(text)) => {
                let keep = parse_duration("keep", text)?;
                if keep < Duration::from_secs(1) {
                    return Err(Invalid::field("keep", "keep tasks at least 1s"));
                }
                (
                    Some(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)),
                    None,
                )
            }
        };
        let max_backlog = self.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG);
        if max_backlog == 0 || max_backlog > i64::MAX as u64 {
            return Err(Invalid::field("max_backlog", "give a positive number"));
        }
        let checked = Checked {
            queue: self.queue.unwrap_or(true),
            max_in_flight,
            keep_ms,
            keep_count,
            max_backlog,
        };
        self.job_file().check()?;
        Ok(checked)
    }

    /// The job each of its tasks belongs to, as a job file (one task, no
    /// input: each message brings its own).
    pub fn job_file(&self) -> JobFile {
        JobFile {
            name: self.name.clone(),
            priority: Some(self.priority.unwrap_or(5)),
            max_attempts: self.max_attempts,
            task: Some(TaskSection {
                module: self.module.clone(),
                kind: self.kind.clone(),
                input: None,
                input_name: None,
                params: self.params.clone(),
            }),
            limits: self.limits.clone(),
            grants: self.grants.clone(),
            labels: self.labels.clone(),
            // The same payload may deserve a fresh answer (a function
            // with grants, or a retried request): every message runs.
            cache: Some(false),
            ..JobFile::default()
        }
    }
}

/// Parses a subscription file (TOML); errors name the key and the line.
pub fn from_toml(text: &str) -> Result<SubscriptionFile, Invalid> {
    crate::jobfile::parse_toml(text)
}

/// Parses a subscription (JSON); errors name the key and the line.
pub fn from_json(text: &[u8]) -> Result<SubscriptionFile, Invalid> {
    crate::jobfile::parse_json(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Checked, Invalid> {
        from_toml(text)?.check()
    }

    #[test]
    fn a_whole_file_parses_with_its_defaults() {
        let checked = file(
            "name = \"thumbs\"\nsubject = \"uploads.images.>\"\nmodule = \"thumb@2\"\n[limits]\ntimeout = \"5s\"\n",
        )
        .unwrap();
        assert!(checked.queue);
        assert_eq!(checked.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(checked.keep_ms, Some(86_400_000));
        let count =
            file("name = \"a\"\nsubject = \"a.*\"\nmodule = \"m\"\nkeep = 100\nqueue = false\n")
                .unwrap();
        assert_eq!((count.keep_ms, count.keep_count), (None, Some(100)));
        assert!(!count.queue);
    }

    #[test]
    fn bad_fields_are_named() {
        let base = "subject = \"a.b\"\nmodule = \"m\"\n";
        for (text, field) in [
            (format!("name = \"a b\"\n{base}"), "name"),
            (
                format!("name = \"a\"\n{base}max_in_flight = 0\n"),
                "max_in_flight",
            ),
            (format!("name = \"a\"\n{base}keep = \"soon\"\n"), "keep"),
            (format!("name = \"a\"\n{base}keep = 0\n"), "keep"),
            (format!("name = \"a\"\n{base}params = 3\n"), "params"),
            (format!("name = \"a\"\n{base}topic = 3\n"), "topic"),
            (
                "name = \"a\"\nsubject = \"sandmill.tasks\"\nmodule = \"m\"\n".to_owned(),
                "subject",
            ),
        ] {
            let error = file(&text).unwrap_err();
            assert_eq!(error.key(), field, "{text}: {error}");
        }
    }

    #[test]
    fn subjects_are_checked_token_by_token() {
        for good in ["a", "a.b.c", "a.*.c", "uploads.>", "*"] {
            check_subject(good).unwrap();
        }
        for bad in [
            "",
            ">",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a.b>",
            "a.>.c",
            "$JS.API",
            "sandmill.results.x",
        ] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
    }
}
