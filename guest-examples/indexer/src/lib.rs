//! Inverted index: word → sorted, de-duplicated list of the inputs it occurs in.
//!
//! Words follow the word count rule. The reduce output value is the input
//! names joined by `,`.

use std::collections::BTreeSet;

use sandmill_sdk::{Context, Emitter, Result, Values};

#[path = "../../knobs.rs"]
mod knobs;

/// Knobs for tests of the fleet's fault handling (see `knobs.rs`).
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Params {
    fail_first_attempts: bool,
    spin: u64,
}

fn faults(ctx: &mut Context) -> Result<knobs::Faults> {
    if ctx.raw_params() == "{}" {
        return Ok(knobs::Faults::default());
    }
    let params: Params = ctx.params()?;
    Ok(knobs::Faults {
        fail_first_attempts: params.fail_first_attempts,
        spin: params.spin,
        ..knobs::Faults::default()
    })
}

/// Emits `word input-name` once per distinct word of the input.
#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    faults(ctx)?.apply(ctx, input);
    let name = ctx.input_name();
    let mut seen = BTreeSet::new();
    for chunk in input.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() && seen.insert(word) {
                out.emit(word, &name);
            }
        }
    }
    Ok(())
}

fn names(values: &mut Values) -> BTreeSet<Vec<u8>> {
    let mut names = BTreeSet::new();
    for value in values {
        for name in value.split(|b| *b == b',') {
            names.insert(name.to_vec());
        }
    }
    names
}

/// Merges the input lists of one word.
#[sandmill_sdk::combine]
fn combine(key: &[u8], values: &mut Values, out: &mut Emitter) -> Result<()> {
    out.emit(
        key,
        names(values)
            .into_iter()
            .collect::<Vec<_>>()
            .join(&b","[..]),
    );
    Ok(())
}

/// The sorted, de-duplicated inputs of one word.
#[sandmill_sdk::reduce]
fn reduce(key: &[u8], values: &mut Values, ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    faults(ctx)?.apply_once(ctx);
    out.emit(
        key,
        names(values)
            .into_iter()
            .collect::<Vec<_>>()
            .join(&b","[..]),
    );
    Ok(())
}
