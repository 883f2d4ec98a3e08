//! [`Emitter`]: where map, combine and reduce put their records, and
//! [`Combining`]: values of one key merged inside the guest before they
//! are emitted.

use std::fmt::Display;

use rustc_hash::FxHashMap;

use crate::frame;

/// Bytes of keys and values a [`Combining`] holds before it emits them all
/// (see [`Combining::budget`]).
pub const COMBINE_BUDGET_BYTES: usize = 16 << 20;

/// What a [`Combining`] counts for one key beyond its bytes (the map's
/// entry and allocation overhead, roughly).
const ENTRY_OVERHEAD: usize = 48;

/// Records are handed to the host once this many bytes are buffered: large
/// enough that the host call costs nothing per record, small enough to keep
/// guest memory flat.
pub const EMIT_BATCH_BYTES: usize = 64 * 1024;

/// Collects the records a function emits.
///
/// Inside a sandbox, records are buffered and sent to the host in batches;
/// [`Emitter::collecting`] keeps them in memory for native tests.
pub struct Emitter {
    sink: Sink,
}

enum Sink {
    Host { emit: fn(&[u8]), buf: Vec<u8> },
    Collect(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Emitter {
    pub(crate) fn host(emit: fn(&[u8])) -> Self {
        Emitter {
            sink: Sink::Host {
                emit,
                buf: Vec::with_capacity(EMIT_BATCH_BYTES + 1024),
            },
        }
    }

    /// An emitter that keeps every record, for running guest functions natively.
    pub fn collecting() -> Self {
        Emitter {
            sink: Sink::Collect(Vec::new()),
        }
    }

    /// Emits one record.
    #[inline]
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        match &mut self.sink {
            Sink::Host { emit, buf } => {
                frame::push(buf, key.as_ref());
                frame::push(buf, value.as_ref());
                if buf.len() >= EMIT_BATCH_BYTES {
                    emit(buf);
                    buf.clear();
                }
            }
            Sink::Collect(records) => {
                records.push((key.as_ref().to_vec(), value.as_ref().to_vec()));
            }
        }
    }

    /// Sends buffered records to the host now. The glue calls this when the
    /// function returns; calling it earlier is never needed.
    pub fn flush(&mut self) {
        if let Sink::Host { emit, buf } = &mut self.sink
            && !buf.is_empty()
        {
            emit(buf);
            buf.clear();
        }
    }

    /// In-mapper combining: values added under one key are merged by
    /// `merge` inside the guest, and each key is emitted once, with its
    /// merged value written by [`Display`], when the held keys pass the
    /// budget and when the [`Combining`] is dropped (keys in byte order
    /// within each flush). A word count's map then costs a hash-map update
    /// per word, and the records that leave the guest are one per distinct
    /// word, not one per occurrence.
    ///
    /// ```
    /// use sandmill_sdk::Emitter;
    /// let mut out = Emitter::collecting();
    /// {
    ///     let mut counts = out.combining(|total: &mut u64, n| *total += n);
    ///     for word in "to be or not to be".split(' ') {
    ///         counts.add(word, 1);
    ///     }
    /// }
    /// assert_eq!(out.records()[0], (b"be".to_vec(), b"2".to_vec()));
    /// ```
    pub fn combining<V: Display, F: FnMut(&mut V, V)>(&mut self, merge: F) -> Combining<'_, V, F> {
        Combining {
            out: self,
            held: FxHashMap::default(),
            merge,
            bytes: 0,
            budget: COMBINE_BUDGET_BYTES,
        }
    }

    /// The records kept by a collecting emitter (empty inside a sandbox).
    pub fn records(&self) -> &[(Vec<u8>, Vec<u8>)] {
        match &self.sink {
            Sink::Host { .. } => &[],
            Sink::Collect(records) => records,
        }
    }
}

/// Values merged per key inside the guest; see [`Emitter::combining`].
pub struct Combining<'a, V: Display, F: FnMut(&mut V, V)> {
    out: &'a mut Emitter,
    // Fx: a hash a few times faster than std's SipHash on short keys. Its
    // weakness to chosen keys only slows the guest that holds it.
    held: FxHashMap<Box<[u8]>, V>,
    merge: F,
    bytes: usize,
    budget: usize,
}

impl<V: Display, F: FnMut(&mut V, V)> Combining<'_, V, F> {
    /// Holds at most about `bytes` of keys (and per-key overhead) before
    /// emitting everything held (default [`COMBINE_BUDGET_BYTES`]); the
    /// guest's memory limit must leave room for it.
    #[must_use]
    pub fn budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// Adds `value` under `key`, merging it into the value held for `key`.
    #[inline]
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: V) {
        let key = key.as_ref();
        if let Some(held) = self.held.get_mut(key) {
            (self.merge)(held, value);
            return;
        }
        self.bytes += key.len() + std::mem::size_of::<V>() + ENTRY_OVERHEAD;
        self.held.insert(key.into(), value);
        if self.bytes >= self.budget {
            self.flush();
        }
    }

    /// Emits every key held, in byte order, and starts empty.
    pub fn flush(&mut self) {
        let mut held: Vec<(Box<[u8]>, V)> = self.held.drain().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut text = String::new();
        for (key, value) in held {
            use std::fmt::Write as _;
            text.clear();
            let _ = write!(text, "{value}");
            self.out.emit(&key, &text);
        }
        self.bytes = 0;
    }
}

impl<V: Display, F: FnMut(&mut V, V)> Drop for Combining<'_, V, F> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SENT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    fn record_batch(batch: &[u8]) {
        SENT.lock().unwrap().push(batch.len());
    }

    #[test]
    fn records_cross_in_batches_not_one_by_one() {
        let mut out = Emitter::host(record_batch);
        for _ in 0..10_000 {
            out.emit("word", "1");
        }
        out.flush();
        let sent = SENT.lock().unwrap();
        // 10,000 records of 13 bytes each: two full batches and the rest.
        assert_eq!(sent.iter().sum::<usize>(), 10_000 * 13);
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn combining_merges_per_key_and_flushes_past_its_budget() {
        let mut out = Emitter::collecting();
        {
            // Room for about two keys: the third add flushes.
            let mut counts = out
                .combining(|total: &mut u64, n| *total += n)
                .budget(2 * (1 + 8 + ENTRY_OVERHEAD) + 1);
            for word in ["b", "a", "b", "c", "a"] {
                counts.add(word, 1);
            }
        }
        let records: Vec<(&[u8], &[u8])> = out
            .records()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        // First flush (a, b, c held): in byte order; then "a" again.
        assert_eq!(
            records,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"b", b"2"),
                (b"c", b"1"),
                (b"a", b"1")
            ]
        );
    }
}
