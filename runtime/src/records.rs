//! Key/value records: how the host holds what guests emit, and the
//! `key value` line format shown to users.
//!
//! Guests send records in batches of frames (see `sdk/macros/wit/sandmill.wit`). The
//! host appends them to a [`Records`] arena — one allocation for all bytes,
//! one small span per record — so a map emitting millions of records costs
//! no allocation per record.
//!
//! The line format: one record per line, key and value separated by one
//! space. Bytes that would break the format are escaped: `\\`, `\n`, `\r`,
//! `\t`, a space in a key (`\x20`), and every byte of invalid UTF-8
//! (`\xNN`). Valid UTF-8 text passes through unchanged.

use std::io::{self, Write};

/// Bytes each record counts toward an output limit besides its key and
/// value: about what the host holds per record (its span), more than its
/// two 4-byte frame headers.
pub const RECORD_OVERHEAD: usize = 16;

/// Where one record's bytes lie in the arena.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    key_len: u32,
    value_len: u32,
}

/// An arena of key/value records, in emission order until sorted.
#[derive(Default, Debug, Clone)]
pub struct Records {
    data: Vec<u8>,
    spans: Vec<Span>,
}

/// A batch from a guest was not a sequence of whole key/value frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed record batch at byte {offset}")]
pub struct MalformedBatch {
    /// Where the batch stopped making sense.
    pub offset: usize,
}

fn read_frame(batch: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let header = batch.get(pos..pos.checked_add(4)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let end = (pos + 4).checked_add(len)?;
    Some((batch.get(pos + 4..end)?, end))
}

/// Appends each value as one frame: the batch format of `next-values`
/// (and, taken in pairs, of `emit`).
pub fn encode_values<'a>(values: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    for value in values {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&value[..len as usize]);
    }
}

impl Records {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// What the records count toward an output limit: their keys and
    /// values, and [`RECORD_OVERHEAD`] each (so a flood of empty records
    /// is bounded too).
    pub fn counted(&self) -> usize {
        self.data
            .len()
            .saturating_add(self.spans.len().saturating_mul(RECORD_OVERHEAD))
    }

    /// Memory the records take, counting each record's span and its
    /// share of a sort's index: what a shuffle buffer bounds.
    pub fn held(&self) -> usize {
        self.data.len() + self.spans.len() * (std::mem::size_of::<Span>() + 16)
    }

    /// Appends one record.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        self.spans.push(Span {
            start,
            // Keys and values come from 32-bit frames or from host code
            // that builds them from such frames.
            key_len: key.len() as u32,
            value_len: value.len() as u32,
        });
    }

    /// Appends every record of a framed batch; returns what it added to
    /// [`counted`](Self::counted). A malformed batch adds nothing.
    pub fn push_batch(&mut self, batch: &[u8]) -> Result<usize, MalformedBatch> {
        // Validate first so that a bad batch leaves the arena untouched.
        let mut pos = 0;
        let mut frames = 0usize;
        while pos < batch.len() {
            let (_, next) = read_frame(batch, pos).ok_or(MalformedBatch { offset: pos })?;
            pos = next;
            frames += 1;
        }
        if !frames.is_multiple_of(2) {
            return Err(MalformedBatch {
                offset: batch.len(),
            });
        }
        let before = self.counted();
        self.data.reserve(batch.len() - 4 * frames);
        self.spans.reserve(frames / 2);
        let mut pos = 0;
        while pos < batch.len() {
            // Both reads succeed: the loop above checked every frame.
            let Some((key, next)) = read_frame(batch, pos) else {
                break;
            };
            let Some((value, next)) = read_frame(batch, next) else {
                break;
            };
            self.push(key, value);
            pos = next;
        }
        Ok(self.counted() - before)
    }

    fn key_of(&self, span: &Span) -> &[u8] {
        &self.data[span.start..span.start + span.key_len as usize]
    }

    fn value_of(&self, span: &Span) -> &[u8] {
        let start = span.start + span.key_len as usize;
        &self.data[start..start + span.value_len as usize]
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|s| (self.key_of(s), self.value_of(s)))
    }

    /// Sorts by key, keeping emission order among equal keys.
    pub fn sort_by_key(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_by(|a, b| self.key_of(a).cmp(self.key_of(b)));
        self.spans = spans;
    }

    /// The records sorted by (partition of the key, key), keeping emission
    /// order among equal keys: how a map's output is spilled.
    pub fn sorted_by_partition(
        &self,
        part: impl Fn(&[u8]) -> u32,
    ) -> impl Iterator<Item = (u32, &[u8], &[u8])> + '_ {
        let mut order: Vec<(u32, usize)> = self
            .spans
            .iter()
            .enumerate()
            .map(|(i, s)| (part(self.key_of(s)), i))
            .collect();
        order.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                self.key_of(&self.spans[a.1])
                    .cmp(self.key_of(&self.spans[b.1]))
            })
        });
        order.into_iter().map(move |(p, i)| {
            let span = &self.spans[i];
            (p, self.key_of(span), self.value_of(span))
        })
    }

    /// Runs of equal keys, with their values: call after [`sort_by_key`](Self::sort_by_key).
    pub fn groups(&self) -> impl Iterator<Item = (&[u8], Vec<&[u8]>)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = self.spans.get(i)?;
            let key = self.key_of(first);
            let mut values = Vec::new();
            while let Some(span) = self.spans.get(i) {
                if self.key_of(span) != key {
                    break;
                }
                values.push(self.value_of(span));
                i += 1;
            }
            Some((key, values))
        })
    }

    /// Writes every record as a `key value` line.
    pub fn write_lines(&self, out: &mut impl Write) -> io::Result<()> {
        let mut line = Vec::new();
        for (key, value) in self.iter() {
            line.clear();
            encode_line(key, value, &mut line);
            out.write_all(&line)?;
        }
        Ok(())
    }
}

fn escape(bytes: &[u8], in_key: bool, out: &mut Vec<u8>) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                ' ' if in_key => out.extend_from_slice(b"\\x20"),
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for b in chunk.invalid() {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
}

/// Appends `key value\n`, escaped.
pub fn encode_line(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    escape(key, true, out);
    out.push(b' ');
    escape(value, false, out);
    out.push(b'\n');
}

/// A line of the `key value` format could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    /// No space separates key and value.
    #[error("expected `key value`, found no space")]
    NoSeparator,
    /// A backslash starts no known escape.
    #[error("bad escape at byte {0}")]
    BadEscape(usize),
}

fn unescape(text: &[u8]) -> Result<Vec<u8>, LineError> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
            continue;
        }
        match text.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hex = text.get(i + 2..i + 4).ok_or(LineError::BadEscape(i))?;
                let hex = std::str::from_utf8(hex).map_err(|_| LineError::BadEscape(i))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| LineError::BadEscape(i))?);
                i += 2;
            }
            _ => return Err(LineError::BadEscape(i)),
        }
        i += 2;
    }
    Ok(out)
}

/// Reads one `key value` line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), LineError> {
    let space = line
        .iter()
        .position(|b| *b == b' ')
        .ok_or(LineError::NoSeparator)?;
    Ok((unescape(&line[..space])?, unescape(&line[space + 1..])?))
}

/// Reads `key value` lines into keys in order with their values: the input
/// of a reduce.
pub fn parse_groups(input: &[u8]) -> Result<Vec<crate::sandbox::Group>, String> {
    let mut records = Records::new();
    for (number, line) in input.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = parse_line(line).map_err(|e| format!("line {}: {e}", number + 1))?;
        records.push(&key, &value);
    }
    records.sort_by_key();
    Ok(records
        .groups()
        .map(|(key, values)| {
            let values: Vec<Vec<u8>> = values.into_iter().map(<[u8]>::to_vec).collect();
            (
                key.to_vec(),
                Box::new(values.into_iter()) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
            )
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            encode_values([*k, *v], &mut out);
        }
        out
    }

    #[test]
    fn batches_land_in_order_and_sort_stably() {
        let mut records = Records::new();
        let added = records
            .push_batch(&batch(&[(b"b", b"1"), (b"a", b"2"), (b"b", b"3")]))
            .unwrap();
        // Six bytes of keys and values, and the overhead of each record.
        assert_eq!(added, 6 + 3 * RECORD_OVERHEAD);
        assert_eq!(records.counted(), added);
        records.sort_by_key();
        let groups: Vec<_> = records.groups().collect();
        assert_eq!(
            groups,
            vec![
                (&b"a"[..], vec![&b"2"[..]]),
                (&b"b"[..], vec![&b"1"[..], &b"3"[..]])
            ]
        );
    }

    #[test]
    fn a_malformed_batch_changes_nothing() {
        let mut records = Records::new();
        let mut bad = batch(&[(b"k", b"v")]);
        bad.extend_from_slice(&[9, 0, 0, 0, b'x']);
        assert!(records.push_batch(&bad).is_err());
        let odd = {
            let mut out = Vec::new();
            encode_values([&b"lonely"[..]], &mut out);
            out
        };
        assert_eq!(records.push_batch(&odd), Err(MalformedBatch { offset: 10 }));
        assert!(records.is_empty());
    }

    #[test]
    fn lines_round_trip_any_bytes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"word", b"12"),
            ("gr\u{fc}\u{df}e".as_bytes(), b"a b c"),
            (b"with space\\", b"line\nbreak\ttab\r"),
            (b"\xff\xfe", b"\x80"),
            (b"", b""),
        ];
        for (key, value) in cases {
            let mut line = Vec::new();
            encode_line(key, value, &mut line);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let parsed = parse_line(&line[..line.len() - 1]).unwrap();
            assert_eq!((parsed.0.as_slice(), parsed.1.as_slice()), (*key, *value));
        }
        assert_eq!(parse_line(b"nospace"), Err(LineError::NoSeparator));
        assert_eq!(parse_line(b"k \\q"), Err(LineError::BadEscape(0)));
    }
}
