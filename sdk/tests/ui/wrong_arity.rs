use sandmill_sdk::{Context, Result};

#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context) -> Result<()> {
    let _ = (input, ctx);
    Ok(())
}

fn main() {}
