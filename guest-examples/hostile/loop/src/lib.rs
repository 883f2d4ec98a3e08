//! Hostile: never returns. Stopped by the wall-time limit (or fuel).

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let mut x = input.len() as u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
