//! Word count: map + combine + reduce in one module.
//!
//! A word is a maximal run of Unicode alphabetic characters
//! (`char::is_alphabetic`), case-sensitive; bytes that are not valid UTF-8
//! separate words like any other non-letter.
//!
//! Run it: `cargo build --target wasm32-wasip2 --release` in `guest-examples/`, then
//! `sandmill exec target/wasm32-wasip2/release/wordcount.wasm --kind map --input README.md`.

use sandmill_sdk::{Context, Emitter, Result, Values};

#[path = "../../knobs.rs"]
mod knobs;

/// Knobs for tests of the fleet's fault handling (see `knobs.rs`) and of
/// the shuffle; none are needed to count words.
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Params {
    fail_first_attempts: bool,
    spin: u64,
    slow_input: Option<String>,
    slow_spin: u64,
    /// Emit every word with 1, as 6.5840's map does, instead of combining
    /// in the guest (so the output is large: tests of the shuffle).
    plain: bool,
    /// Count the input this many times (default once).
    repeat: Option<u64>,
}

impl Params {
    fn read(ctx: &mut Context) -> Result<Params> {
        if ctx.raw_params() == "{}" {
            return Ok(Params::default());
        }
        Ok(ctx.params()?)
    }

    fn faults(&self) -> knobs::Faults {
        knobs::Faults {
            fail_first_attempts: self.fail_first_attempts,
            spin: self.spin,
            slow_input: self.slow_input.clone(),
            slow_spin: self.slow_spin,
        }
    }
}

/// Calls `f` on every word of `input`.
pub fn words(input: &[u8], mut f: impl FnMut(&str)) {
    for chunk in input.utf8_chunks() {
        for word in chunk.valid().split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                f(word);
            }
        }
    }
}

fn sum(values: &mut Values) -> Result<u64> {
    let mut total = 0u64;
    for value in values {
        total += std::str::from_utf8(&value)?.parse::<u64>()?;
    }
    Ok(total)
}

/// Emits `word N` for every word, N its count in this input: the counts
/// are summed inside the guest as the words are read (in-mapper
/// combining), so one record leaves the guest per distinct word.
#[sandmill_sdk::map]
fn map(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    let params = Params::read(ctx)?;
    params.faults().apply(ctx, input);
    let mut count = 0i64;
    for _ in 0..params.repeat.unwrap_or(1) {
        if params.plain {
            words(input, |word| {
                out.emit(word, "1");
                count += 1;
            });
            continue;
        }
        let mut counts = out.combining(|total: &mut u64, n| *total += n);
        words(input, |word| {
            counts.add(word, 1);
            count += 1;
        });
    }
    ctx.counter("words", count);
    Ok(())
}

/// Sums the counts of one word within one map's output.
#[sandmill_sdk::combine]
fn combine(key: &[u8], values: &mut Values, out: &mut Emitter) -> Result<()> {
    out.emit(key, sum(values)?.to_string());
    Ok(())
}

/// Sums the counts of one word.
#[sandmill_sdk::reduce]
fn reduce(key: &[u8], values: &mut Values, ctx: &mut Context, out: &mut Emitter) -> Result<()> {
    Params::read(ctx)?.faults().apply_once(ctx);
    out.emit(key, sum(values)?.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_and_digits_separate_words() {
        let mut out = Emitter::collecting();
        map(
            b"na\xff\xc3\xafve 42x\xe2\x82",
            &mut Context::local(),
            &mut out,
        )
        .unwrap();
        let keys: Vec<_> = out.records().iter().map(|(k, _)| k.clone()).collect();
        // In byte order, as the combining map emits them.
        assert_eq!(
            keys,
            vec![b"na".to_vec(), b"x".to_vec(), "ïve".as_bytes().to_vec()]
        );
    }

    #[test]
    fn counts_are_summed_in_the_map() {
        let mut out = Emitter::collecting();
        map(b"to be or not to be", &mut Context::local(), &mut out).unwrap();
        assert!(out.records().contains(&(b"be".to_vec(), b"2".to_vec())));
        assert_eq!(out.records().len(), 4);
    }
}
