//! Inverted index: word → sorted, de-duplicated list of the inputs it occurs in.
//!
//! Words follow the word count rule. The reduce output value is the input
//! names joined by `,`.

use std::collections::BTreeSet;

use sandmill_sdk::{Context, Emitter, Result, Values};

/// Emits `word input-name` once per distinct word of the input.
#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
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
    out.emit(key, names(values).into_iter().collect::<Vec<_>>().join(&b","[..]));
    Ok(())
}

/// The sorted, de-duplicated inputs of one word.
#[sandmill_sdk::reduce]
fn reduce(key: &[u8], values: &mut Values, _ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    out.emit(key, names(values).into_iter().collect::<Vec<_>>().join(&b","[..]));
    Ok(())
}
