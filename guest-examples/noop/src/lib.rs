//! noop: a task that returns its input unchanged.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    Ok(input.to_vec())
}
