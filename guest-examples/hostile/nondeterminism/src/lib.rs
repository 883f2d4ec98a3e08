//! Hostile: reads the wall clock, the monotonic clock and random numbers
//! and returns them. Without grants, every run must return the same bytes.

use std::hash::BuildHasher;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(_input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let start = Instant::now();
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| sandmill_sdk::Error::msg(e.to_string()))?;
    // std seeds HashMap's hasher from WASI's randomness too.
    let hashed = std::collections::hash_map::RandomState::new().hash_one(42u32);
    let elapsed = start.elapsed().as_nanos();
    Ok(format!("wall={wall} elapsed={elapsed} random={random:02x?} hash={hashed}").into_bytes())
}
