//! Hostile: panics. The user must see the message and where it happened.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let n = input.len();
    if n < 1_000_000 {
        panic!("the input has only {n} bytes");
    }
    Ok(Vec::new())
}
