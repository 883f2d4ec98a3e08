//! Hostile: tries to read the host's `/etc/passwd` (and the current
//! directory). Without a granted directory both must fail.

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(_input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let passwd = std::fs::read("/etc/passwd")
        .map_err(|e| sandmill_sdk::Error::msg(format!("cannot read /etc/passwd: {e}")))?;
    Ok(passwd)
}
