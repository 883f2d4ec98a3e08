//! Hostile: recurses without end. Stopped by the wasm stack limit.

use sandmill_sdk::{Context, Result};

#[inline(never)]
fn deeper(n: u64) -> u64 {
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    std::hint::black_box(deeper(std::hint::black_box(n + 1))) + 1
}

#[sandmill_sdk::task]
fn run(_input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    Ok(deeper(0).to_le_bytes().to_vec())
}
