//! Labels: what a worker offers (`gpu=a100,zone=eu`) and what a task needs.
//! A task goes only to a worker whose labels include all of the task's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Labels in one set, at most this many.
pub const MAX_LABELS: usize = 16;

/// A set of `key=value` labels, kept sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

/// A label list that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("labels: {0}")]
pub struct BadLabels(String);

impl Labels {
    /// Parses `k=v,k2=v2` (whitespace around items is ignored).
    pub fn parse(text: &str) -> Result<Labels, BadLabels> {
        Self::from_pairs(text.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// Builds from `k=v` items.
    pub fn from_pairs<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Labels, BadLabels> {
        let mut labels = BTreeMap::new();
        for item in items {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| BadLabels(format!("`{item}` is not key=value")))?;
            labels.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Labels::new(labels)
    }

    /// Checks keys and values: non-empty, no `,` or `=`, at most
    /// [`MAX_LABELS`].
    pub fn new(labels: BTreeMap<String, String>) -> Result<Labels, BadLabels> {
        if labels.len() > MAX_LABELS {
            return Err(BadLabels(format!(
                "{} labels, at most {MAX_LABELS} allowed",
                labels.len()
            )));
        }
        for (key, value) in &labels {
            let bad = |s: &str| s.is_empty() || s.contains([',', '=']) || s.len() > 128;
            if bad(key) || bad(value) {
                return Err(BadLabels(format!(
                    "`{key}={value}`: keys and values are 1 to 128 characters without `,` or `=`"
                )));
            }
        }
        Ok(Labels(labels))
    }

    /// No labels: any worker will do.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a worker offering `offered` may take a task needing `self`.
    pub fn satisfied_by(&self, offered: &Labels) -> bool {
        self.0.iter().all(|(k, v)| offered.0.get(k) == Some(v))
    }

    /// A short name for this label set usable as a NATS subject token and
    /// consumer name: `any`, or 16 hex digits of the sha256 of its text.
    pub fn token(&self) -> String {
        if self.is_empty() {
            return "any".to_owned();
        }
        let digest = Sha256::digest(self.to_string().as_bytes());
        hex::encode(&digest[..8])
    }
}

impl fmt::Display for Labels {
    /// `k=v,k2=v2`, sorted by key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_and_match() {
        let worker = Labels::parse("zone=eu, gpu=a100").unwrap();
        assert_eq!(worker.to_string(), "gpu=a100,zone=eu");
        assert!(Labels::default().satisfied_by(&worker));
        assert!(Labels::parse("gpu=a100").unwrap().satisfied_by(&worker));
        assert!(!Labels::parse("gpu=h100").unwrap().satisfied_by(&worker));
        assert!(!Labels::parse("arch=arm").unwrap().satisfied_by(&worker));
        assert_eq!(Labels::default().token(), "any");
        assert_eq!(worker.token().len(), 16);
        assert_eq!(
            worker.token(),
            Labels::parse("gpu=a100,zone=eu").unwrap().token()
        );
    }

    #[test]
    fn bad_labels_are_named() {
        let error = Labels::parse("gpu").unwrap_err().to_string();
        assert!(error.contains("`gpu` is not key=value"), "{error}");
        let many = (0..=MAX_LABELS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>();
        let error = Labels::parse(&many.join(",")).unwrap_err().to_string();
        assert!(error.contains("at most 16"), "{error}");
        assert!(Labels::parse("=v").is_err());
    }
}
