//! Precompiled modules on disk, keyed by sha256 and engine flavor, so a
//! module is compiled once per machine.
//!
//! Loading an artifact runs its machine code as it is, so every artifact
//! carries a tag: an HMAC-SHA256, under the cache directory's own key
//! (`.key`, made once, readable by its owner only), of the flavor, the
//! module's hash and the artifact's bytes. An artifact whose tag does not
//! match (damaged, truncated, written by hand, or another module's artifact
//! under this one's name) is never loaded: the module is compiled again and
//! the file replaced. So is a file of another wasmtime version or
//! configuration (wasmtime checks that). The cache can only save work,
//! never cause a failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes of the tag at the end of an artifact file.
const TAG_BYTES: usize = 32;

/// `<dir>/<sha256>.<flavor>.cwasm`.
pub(crate) fn artifact_path(dir: &Path, hash: &[u8; 32], flavor: &str) -> PathBuf {
    dir.join(format!("{}.{flavor}.cwasm", hex::encode(hash)))
}

/// The cache directory's key, made on first use; `None` if it can be
/// neither read nor made (then nothing is cached).
pub(crate) fn key(dir: &Path) -> Option<Vec<u8>> {
    let path = dir.join(".key");
    if let Ok(key) = std::fs::read(&path) {
        return (key.len() == 32).then_some(key);
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).ok()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(&key).ok()?;
            file.sync_all().ok()?;
            Some(key)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let key = std::fs::read(&path).ok()?;
            (key.len() == 32).then_some(key)
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot make the module cache's key; not caching");
            None
        }
    }
}

/// The tag of an artifact of module `hash` for engine `flavor`.
fn tag(key: &[u8], flavor: &str, hash: &[u8; 32], artifact: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(&(flavor.len() as u64).to_le_bytes());
    mac.update(flavor.as_bytes());
    mac.update(hash);
    mac.update(artifact);
    mac
}

/// The artifact at `path` of module `hash`, if its tag is right and the
/// engine accepts it.
pub(crate) fn read(
    engine: &Engine,
    key: &[u8],
    flavor: &str,
    hash: &[u8; 32],
    path: &Path,
) -> Option<Component> {
    // Read into memory rather than let wasmtime map the file: a mapped file
    // that someone truncates takes the process down with SIGBUS.
    let mut bytes = std::fs::read(path).ok()?;
    if bytes.len() < TAG_BYTES {
        tracing::warn!(path = %path.display(), "ignoring a cached module without its tag");
        return None;
    }
    let stored = bytes.split_off(bytes.len() - TAG_BYTES);
    if tag(key, flavor, hash, &bytes)
        .verify_slice(&stored)
        .is_err()
    {
        tracing::warn!(path = %path.display(), "ignoring a cached module whose tag is wrong (changed on disk); compiling it again");
        return None;
    }
    // SAFETY: wasmtime requires that deserialized bytes come from
    // `Component::serialize` of a trusted engine. These bytes carry the tag
    // that only `write` makes (with the directory's key) over exactly these
    // bytes, this module and this flavor; wasmtime also checks the header
    // and rejects artifacts of another version or configuration.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, &bytes) };
    match loaded {
        Ok(component) => {
            used(path);
            Some(component)
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring unusable cached module");
            None
        }
    }
}

/// Marks an artifact as used now (its modification time), for
/// [`prune`] to keep the most recently used; at most once a minute.
fn used(path: &Path) {
    let stale = std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|at| at.elapsed().ok())
        .is_none_or(|age| age >= Duration::from_secs(60));
    if stale {
        let _ = std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(SystemTime::now()));
    }
}

/// Keeps the artifacts in `dir` within `max_bytes`: the least recently
/// used go first, never `keep` (the one just written). Temporary files a
/// killed process left go once an hour old. Failures only leave files.
pub(crate) fn prune(dir: &Path, max_bytes: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut artifacts = Vec::new();
    let mut total = 0u64;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".cwasm") {
            total += meta.len();
            artifacts.push((modified, meta.len(), path));
        } else if name.contains(".tmp")
            && modified
                .elapsed()
                .is_ok_and(|age| age >= Duration::from_secs(3600))
        {
            let _ = std::fs::remove_file(&path);
        }
    }
    if total <= max_bytes {
        return;
    }
    artifacts.sort();
    for (_, size, path) in artifacts {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
            tracing::debug!(path = %path.display(), "dropped a cached module (least recently used)");
        }
    }
}

/// Writes the artifact and its tag to a temporary file and renames it into
/// place, so a reader never sees half an artifact. Failure only costs a
/// later recompilation.
pub(crate) fn write(component: &Component, key: &[u8], flavor: &str, hash: &[u8; 32], path: &Path) {
    let result = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|mut bytes| {
            let tag = tag(key, flavor, hash, &bytes).finalize().into_bytes();
            bytes.extend_from_slice(&tag);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| e.to_string())
        });
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot cache compiled module");
    }
}
