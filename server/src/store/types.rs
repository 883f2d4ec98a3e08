//! How the store's Rust types meet SQL columns: enums as their names in
//! TEXT columns (a name that does not parse is a decode error, never a
//! default), JSON documents in TEXT columns, and text made safe for every
//! database before it is written.

use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::model::{JobKind, JobStatus, TaskState};
use sandmill_runtime::Reason;
use sandmill_runtime::message::Verdict;
use sandmill_runtime::sandbox::CallKind;

/// A value kept in a TEXT column under its name.
pub trait Named: FromStr + Sized {
    /// The name stored.
    fn name(&self) -> &'static str;
}

impl Named for TaskState {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}
impl Named for JobStatus {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}
impl Named for JobKind {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}
impl Named for CallKind {
    fn name(&self) -> &'static str {
        CallKind::name(*self)
    }
}
impl Named for Reason {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}
impl Named for Verdict {
    fn name(&self) -> &'static str {
        match self {
            Verdict::Succeeded => "succeeded",
            Verdict::Failed => "failed",
        }
    }
}

/// A [`Named`] value as a TEXT column: `Text(TaskState::Queued)` binds
/// `'queued'`, and reading `'bogus'` fails the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Text<T>(pub T);

impl<T, DB: Database> Type<DB> for Text<T>
where
    str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as Type<DB>>::compatible(ty)
    }
}

impl<'q, T: Named, DB: Database> Encode<'q, DB> for Text<T>
where
    &'q str: Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <&str as Encode<DB>>::encode(self.0.name(), buf)
    }
}

impl<'r, T, DB: Database> Decode<'r, DB> for Text<T>
where
    T: Named,
    T::Err: std::error::Error + Send + Sync + 'static,
    &'r str: Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<DB>>::decode(value)?;
        Ok(Text(text.parse::<T>()?))
    }
}

/// A JSON document in a TEXT column (both dialects store it as text, so
/// sqlx's `Json`, which wants a json column on Postgres, does not fit).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonText<T>(pub T);

impl<T, DB: Database> Type<DB> for JsonText<T>
where
    str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as Type<DB>>::compatible(ty)
    }
}

impl<'q, T: Serialize, DB: Database> Encode<'q, DB> for JsonText<T>
where
    String: Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        // serde_json escapes control characters (NUL included), so the
        // text is safe for every database.
        let text = serde_json::to_string(&self.0)?;
        <String as Encode<DB>>::encode(text, buf)
    }
}

impl<'r, T: DeserializeOwned, DB: Database> Decode<'r, DB> for JsonText<T>
where
    &'r str: Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<DB>>::decode(value)?;
        Ok(JsonText(serde_json::from_str(text)?))
    }
}

/// Text as every database stores it: no NUL characters (Postgres refuses
/// them in TEXT; they become U+FFFD), at most `max` bytes (cut on a
/// character boundary, saying so).
pub fn safe_text(text: &str, max: usize) -> String {
    let mut safe = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    };
    sandmill_runtime::message::clip(&mut safe, max);
    safe
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_has_no_nul_and_a_bound() {
        assert_eq!(safe_text("a\0b", 100), "a\u{FFFD}b");
        let long = safe_text(&"x".repeat(1000), 100);
        assert!(long.len() <= 100);
        assert!(long.ends_with("bytes cut]"));
        assert_eq!(safe_text("plain", 100), "plain");
    }
}
