//! The bridge between the generated bindings and the user's function.
//!
//! Bindings are generated in the user's crate (one `generate!` per
//! attribute), so this crate never names a generated type: the glue hands it
//! a table of plain function pointers to the host imports.

use std::sync::Once;

use crate::{Context, Emitter, Level, Result, Values};

/// The host imports, as plain functions.
pub struct HostFns {
    /// `host.log`.
    pub log: fn(Level, &str),
    /// `host.progress`.
    pub progress: fn(u64, u64),
    /// `host.counter`.
    pub counter: fn(&str, i64),
    /// `host.params`.
    pub params: fn() -> String,
    /// `host.input-name`.
    pub input_name: fn() -> String,
    /// `host.emit`.
    pub emit: fn(&[u8]),
    /// `host.next-values`.
    pub next_values: fn() -> Vec<u8>,
    /// `host.report-panic`.
    pub report_panic: fn(&str, &str),
    /// `host.attempt`.
    pub attempt: fn() -> u32,
}

static PANIC_HOOK: Once = Once::new();

/// Reports a panic's message and location to the host before the guest
/// aborts; without it the user would see only an `unreachable` trap.
fn install_panic_hook(host: &'static HostFns) {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "Box<dyn Any>".to_owned());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            (host.report_panic)(&message, &location);
        }));
    });
}

fn to_wire<T>(result: Result<T>) -> core::result::Result<T, String> {
    result.map_err(|e| e.to_string())
}

/// Runs a `#[map]` function on one input.
pub fn run_map(
    host: &'static HostFns,
    f: fn(&[u8], &mut Context, &mut Emitter) -> Result<()>,
    input: &[u8],
) -> core::result::Result<(), String> {
    install_panic_hook(host);
    let mut ctx = Context::host(host);
    let mut out = Emitter::host(host.emit);
    let result = f(input, &mut ctx, &mut out);
    out.flush();
    to_wire(result)
}

/// Calls `f` on each group (key and values) of a batch, in order (see the
/// WIT for the layout); an error names the key it came from.
fn each_group(
    host: &'static HostFns,
    groups: &[u8],
    mut f: impl FnMut(&[u8], &mut Values) -> Result<()>,
) -> core::result::Result<(), String> {
    let mut pos = 0;
    while pos < groups.len() {
        let (Some(key), Some(header)) = (
            crate::frame::next(groups, &mut pos),
            crate::frame::next(groups, &mut pos),
        ) else {
            return Err("a malformed batch of groups from the host".to_owned());
        };
        let (count, more) = match header {
            [a, b, c, d, more] => (u32::from_le_bytes([*a, *b, *c, *d]), *more == 1),
            _ => return Err("a malformed group header from the host".to_owned()),
        };
        let start = pos;
        for _ in 0..count {
            if crate::frame::next(groups, &mut pos).is_none() {
                return Err("a malformed group from the host".to_owned());
            }
        }
        let mut values = Values::batch(
            groups[start..pos].to_vec(),
            more.then_some(host.next_values),
        );
        f(key, &mut values).map_err(|e| format!("key {}: {e}", crate::frame::shown(key)))?;
    }
    Ok(())
}

/// Runs a `#[combine]` function on each key of a batch of groups.
pub fn run_combine(
    host: &'static HostFns,
    f: fn(&[u8], &mut Values, &mut Emitter) -> Result<()>,
    groups: &[u8],
) -> core::result::Result<(), String> {
    install_panic_hook(host);
    let mut out = Emitter::host(host.emit);
    let result = each_group(host, groups, |key, values| f(key, values, &mut out));
    out.flush();
    result
}

/// Runs a `#[reduce]` function on each key of a batch of groups.
pub fn run_reduce(
    host: &'static HostFns,
    f: fn(&[u8], &mut Values, &mut Context, &mut Emitter) -> Result<()>,
    groups: &[u8],
) -> core::result::Result<(), String> {
    install_panic_hook(host);
    let mut ctx = Context::host(host);
    let mut out = Emitter::host(host.emit);
    let result = each_group(host, groups, |key, values| {
        f(key, values, &mut ctx, &mut out)
    });
    out.flush();
    result
}

/// Runs a `#[preprocess]` or `#[task]` function on one input.
pub fn run_bytes(
    host: &'static HostFns,
    f: fn(&[u8], &mut Context) -> Result<Vec<u8>>,
    input: &[u8],
) -> core::result::Result<Vec<u8>, String> {
    install_panic_hook(host);
    let mut ctx = Context::host(host);
    to_wire(f(input, &mut ctx))
}
