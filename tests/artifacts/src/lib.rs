//! Paths of the guest examples, built for `wasm32-wasip2` by this crate's
//! build script once per test run.
//!
//! ```
//! let wasm = std::fs::read(sandmill_test_artifacts::NOOP).unwrap();
//! assert!(wasm.starts_with(b"\0asm"));
//! ```

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// Every guest in the guest workspace is built, and every constant names
    /// a file: a guest without a test would still show up here.
    #[test]
    fn every_guest_is_built() {
        assert!(super::ALL.len() >= 14);
        for (name, path) in super::ALL {
            assert!(std::path::Path::new(path).exists(), "{name}: {path}");
        }
    }
}
