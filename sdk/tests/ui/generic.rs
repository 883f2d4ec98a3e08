use sandmill_sdk::{Context, Result};

#[sandmill_sdk::preprocess]
fn preprocess<T>(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    Ok(input.to_vec())
}

fn main() {}
