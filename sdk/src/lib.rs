//! # sandmill-sdk
//!
//! Write the functions Sandmill runs — map, combine, reduce, preprocess and
//! plain tasks — as ordinary Rust functions, build them for `wasm32-wasip2`,
//! and hand the `.wasm` to `sandmill`. An attribute names what the function
//! is; the SDK generates every line of component glue.
//!
//! ```
//! use sandmill_sdk::{Context, Emitter, Result, Values};
//!
//! /// Word count: a word is a maximal run of alphabetic characters.
//! #[sandmill_sdk::map]
//! fn map(input: &[u8], _ctx: &mut Context, out: &mut Emitter) -> Result<()> {
//!     for word in String::from_utf8_lossy(input).split(|c: char| !c.is_alphabetic()) {
//!         if !word.is_empty() {
//!             out.emit(word, "1");
//!         }
//!     }
//!     Ok(())
//! }
//!
//! #[sandmill_sdk::reduce]
//! fn reduce(key: &[u8], values: &mut Values, _ctx: &mut Context, out: &mut Emitter) -> Result<()> {
//!     let mut total = 0u64;
//!     for value in values {
//!         total += std::str::from_utf8(&value)?.parse::<u64>()?;
//!     }
//!     out.emit(key, total.to_string());
//!     Ok(())
//! }
//!
//! // The same functions run natively, so plain `cargo test` checks the logic.
//! let mut out = Emitter::collecting();
//! map(b"to be or not to be", &mut Context::local(), &mut out).unwrap();
//! assert_eq!(out.records().len(), 6);
//! let mut reduced = Emitter::collecting();
//! let mut ones = Values::from_vec(vec![b"1".to_vec(), b"1".to_vec()]);
//! reduce(b"be", &mut ones, &mut Context::local(), &mut reduced).unwrap();
//! assert_eq!(reduced.records(), &[(b"be".to_vec(), b"2".to_vec())]);
//! ```
//!
//! ## The attributes and their signatures
//! | attribute | signature |
//! | --- | --- |
//! | `#[map]` | `fn(&[u8], &mut Context, &mut Emitter) -> Result<()>` |
//! | `#[combine]` | `fn(&[u8], &mut Values, &mut Emitter) -> Result<()>` |
//! | `#[reduce]` | `fn(&[u8], &mut Values, &mut Context, &mut Emitter) -> Result<()>` |
//! | `#[preprocess]` | `fn(&[u8], &mut Context) -> Result<Vec<u8>>` |
//! | `#[task]` | `fn(&[u8], &mut Context) -> Result<Vec<u8>>` |
//!
//! A crate may carry `map`, `combine` and `reduce` together (one module for a
//! whole MapReduce job); each attribute may appear once per crate. Build with
//! `crate-type = ["cdylib"]` and `cargo build --target wasm32-wasip2 --release`.
//!
//! ## What crosses the boundary
//! [`Emitter`] buffers records and hands them to the host in batches of
//! [`EMIT_BATCH_BYTES`], so emitting a record costs a memcpy, not a host call.
//! [`Values`] streams a key's values from the host in batches; a reduce never
//! needs all values of a key in memory at once. Typed parameters come from
//! [`Context::params`], as JSON deserialized with serde.
//!
//! A panic reaches the user with its message and source location: the glue
//! installs a panic hook that reports it to the host before the guest aborts.

mod context;
mod emit;
mod error;
mod frame;
mod host;
mod values;

pub use context::{Context, Level};
pub use emit::{COMBINE_BUDGET_BYTES, Combining, EMIT_BATCH_BYTES, Emitter};
pub use error::{Error, Result};
pub use values::Values;

pub use sandmill_sdk_macros::{combine, map, preprocess, reduce, task};

/// Glue used by the attribute macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::host::{HostFns, run_bytes, run_combine, run_map, run_reduce};
    pub use wit_bindgen;
}

/// Returns early with an [`Error`] built from a format string.
///
/// ```
/// fn check(n: u32) -> sandmill_sdk::Result<()> {
///     if n > 3 {
///         sandmill_sdk::bail!("too many: {n}");
///     }
///     Ok(())
/// }
/// assert_eq!(check(4).unwrap_err().to_string(), "too many: 4");
/// ```
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}
