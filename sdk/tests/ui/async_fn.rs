use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
async fn run(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    Ok(input.to_vec())
}

fn main() {}
