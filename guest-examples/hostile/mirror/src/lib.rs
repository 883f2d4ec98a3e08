//! Hostile: does what its input says, byte for byte. It writes the log it
//! is given (raw bytes to stdout), logs the counter name as a line,
//! reports a counter of that name, and fails with the error it is given or
//! returns the output it is given. The tests drive arbitrary bytes (every
//! byte value, invalid UTF-8, sizes up to each limit) through it.
//!
//! Input: four frames, each a little-endian `u32` length then the bytes:
//! log, counter name, error (empty: succeed), output.

use std::io::Write;

use sandmill_sdk::{Context, Error, Result};

/// The frames of `input`; missing ones are empty.
fn frames(input: &[u8]) -> [&[u8]; 4] {
    let mut out: [&[u8]; 4] = [&[]; 4];
    let mut at = 0;
    for frame in &mut out {
        let Some(header) = input.get(at..at + 4) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(bytes) = input.get(at + 4..at + 4 + len) else {
            break;
        };
        *frame = bytes;
        at += 4 + len;
    }
    out
}

#[sandmill_sdk::task]
fn run(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>> {
    let [log, counter, error, output] = frames(input);
    std::io::stdout().write_all(log)?;
    std::io::stdout().flush()?;
    if !counter.is_empty() {
        let name = String::from_utf8_lossy(counter);
        ctx.info(&name);
        ctx.counter(&name, 1);
    }
    if !error.is_empty() {
        return Err(Error::msg(String::from_utf8_lossy(error).into_owned()));
    }
    Ok(output.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_in_order_and_missing_ones_are_empty() {
        let mut input = Vec::new();
        for part in [&b"log"[..], b"n", b""] {
            input.extend_from_slice(&(part.len() as u32).to_le_bytes());
            input.extend_from_slice(part);
        }
        assert_eq!(frames(&input), [&b"log"[..], b"n", b"", b""]);
        assert_eq!(frames(b"\xff"), [&b""[..]; 4]);
    }
}
