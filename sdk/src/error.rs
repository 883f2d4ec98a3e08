//! The guest's error type: a message that reaches the user as a guest error.

use std::fmt;

/// An error returned by a guest function. The host reports it as a guest
/// error carrying this message.
///
/// Any `std::error::Error` converts into it with `?`, keeping its chain of
/// causes in the message.
pub struct Error {
    message: String,
}

/// `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }

    /// The message the user will see.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// `Error` deliberately does not implement `std::error::Error`: that is what
// lets this blanket conversion coexist with `From<T> for T`.
impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_the_cause_chain() {
        let parse = "x".parse::<u32>().unwrap_err();
        let error = Error::from(parse);
        assert_eq!(error.message(), "invalid digit found in string");
    }
}
