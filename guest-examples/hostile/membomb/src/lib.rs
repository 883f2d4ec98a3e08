//! Hostile: allocates without end. Stopped by the memory limit.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(_input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}
