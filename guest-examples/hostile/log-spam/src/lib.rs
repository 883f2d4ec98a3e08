//! Hostile: writes far more log than the log limit, through the log import
//! and through stdout. The log is cut at the limit and the call succeeds.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(_input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let line = "spam ".repeat(200);
    for i in 0..20_000 {
        ctx.info(&line);
        println!("{i} {line}");
    }
    Ok(b"done".to_vec())
}
