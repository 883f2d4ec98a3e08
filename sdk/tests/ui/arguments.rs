use sandmill_sdk::{Context, Emitter, Result, Values};

#[sandmill_sdk::reduce(fast)]
fn reduce(_key: &[u8], _values: &mut Values, _ctx: &mut Context, _out: &mut Emitter) -> Result<()> {
    Ok(())
}

fn main() {}
