//! Hostile: emits records without end. Stopped by the output limit.

use sandmill_sdk::{Context, Emitter, Result};

#[sandmill_sdk::map]
fn map(_input: &[u8], _ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    let value = vec![b'x'; 1024];
    let mut n = 0u64;
    loop {
        out.emit(n.to_string(), &value);
        n += 1;
    }
}
