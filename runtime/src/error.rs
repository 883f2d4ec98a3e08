//! [`Error<Kind>`]: an error callers match on by kind, keeping its source,
//! as async-nats shapes its errors. Broker and blob store errors use it.

use std::fmt;

/// The source of an [`Error`]: anything that is an error.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of kind `K` with the error that caused it, if any.
pub struct Error<K> {
    kind: K,
    source: Option<Source>,
}

impl<K: Copy> Error<K> {
    /// An error of this kind caused by `source`.
    pub fn with_source(kind: K, source: impl Into<Source>) -> Self {
        Error {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of this kind with nothing more to say.
    pub fn new(kind: K) -> Self {
        Error { kind, source: None }
    }

    /// What kind of failure this is: what the caller decides on.
    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl<K: Copy> From<K> for Error<K> {
    fn from(kind: K) -> Self {
        Error::new(kind)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Down,
    }

    impl fmt::Display for Kind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the thing is down")
        }
    }

    #[test]
    fn keeps_kind_and_source() {
        let io = std::io::Error::other("connection reset");
        let error = Error::with_source(Kind::Down, io);
        assert_eq!(error.kind(), Kind::Down);
        assert_eq!(error.to_string(), "the thing is down: connection reset");
        assert!(std::error::Error::source(&error).is_some());
        assert_eq!(Error::new(Kind::Down).to_string(), "the thing is down");
    }
}
