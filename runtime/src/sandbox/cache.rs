//! Precompiled modules on disk, keyed by sha256 and engine flavor, so a
//! module is compiled once per machine.
//!
//! A file that cannot be used (written by another wasmtime version or
//! configuration, or damaged) is ignored and replaced: the cache can only
//! save work, never cause a failure.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// `<dir>/<sha256>.<flavor>.cwasm`.
pub(crate) fn artifact_path(dir: &Path, hash: &[u8; 32], flavor: &str) -> PathBuf {
    dir.join(format!("{}.{flavor}.cwasm", hex::encode(hash)))
}

pub(crate) fn read(engine: &Engine, path: &Path) -> Option<Component> {
    // Read into memory rather than let wasmtime map the file: a mapped file
    // that someone truncates takes the process down with SIGBUS.
    let bytes = std::fs::read(path).ok()?;
    // SAFETY: wasmtime requires that deserialized bytes come from
    // `Component::serialize` of a trusted engine. Only this sandbox writes
    // this directory, atomically (see `write`), and wasmtime checks the
    // header and rejects artifacts of another version or configuration.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, &bytes) };
    match loaded {
        Ok(component) => Some(component),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring unusable cached module");
            None
        }
    }
}

/// Writes to a temporary file and renames it into place, so a reader never
/// sees half an artifact. Failure only costs a later recompilation.
pub(crate) fn write(component: &Component, path: &Path) {
    let result = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| e.to_string())
        });
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot cache compiled module");
    }
}
