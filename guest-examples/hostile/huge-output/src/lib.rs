//! Hostile: emits records without end. Stopped by the output limit.
//!
//! With the parameters `"empty"`, the records are empty (no key, no
//! value): stopped by the overhead each record counts toward the limit.

use sandmill_sdk::{Context, Emitter, Result};

#[sandmill_sdk::map]
fn map(_input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    if ctx.raw_params() == r#""empty""# {
        loop {
            out.emit("", "");
        }
    }
    let value = vec![b'x'; 1024];
    let mut n = 0u64;
    loop {
        out.emit(n.to_string(), &value);
        n += 1;
    }
}
