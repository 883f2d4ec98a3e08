//! grep: emits `input-name line-number:line` for every line matching the
//! regular expression in the `pattern` parameter.
//!
//! `sandmill exec grep.wasm --kind map --params '{"pattern":"err(or)?"}' --input log.txt`

use sandmill_sdk::{Context, Emitter, Result};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    pattern: String,
}

#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    let params: Params = ctx.params()?;
    let regex = regex_lite::Regex::new(&params.pattern)?;
    let name = ctx.input_name();
    let mut matched = 0;
    for (number, line) in input.split(|b| *b == b'\n').enumerate() {
        let line = String::from_utf8_lossy(line);
        if regex.is_match(&line) {
            out.emit(&name, format!("{}:{}", number + 1, line));
            matched += 1;
        }
    }
    ctx.counter("matched-lines", matched);
    Ok(())
}
