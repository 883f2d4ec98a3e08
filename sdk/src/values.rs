//! [`Values`]: the values of one key, streamed from the host.

use crate::frame;

/// The values of the key being reduced or combined, in the order the host
/// delivers them. An iterator: values arrive from the host in batches, so a
/// key with more values than fit in guest memory can still be reduced.
pub struct Values {
    source: Source,
    batch: Vec<u8>,
    pos: usize,
}

enum Source {
    Host(fn() -> Vec<u8>),
    Local(std::vec::IntoIter<Vec<u8>>),
    Done,
}

impl Values {
    #[cfg(test)]
    pub(crate) fn host(next_values: fn() -> Vec<u8>) -> Self {
        Self::batch(Vec::new(), Some(next_values))
    }

    /// The values framed in `batch`, then, if `more` is given, those the
    /// host hands out after them.
    pub(crate) fn batch(batch: Vec<u8>, more: Option<fn() -> Vec<u8>>) -> Self {
        Values {
            source: more.map_or(Source::Done, Source::Host),
            batch,
            pos: 0,
        }
    }

    /// Values from a vector, for running guest functions natively.
    pub fn from_vec(values: Vec<Vec<u8>>) -> Self {
        Values {
            source: Source::Local(values.into_iter()),
            batch: Vec::new(),
            pos: 0,
        }
    }
}

impl Iterator for Values {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(value) = frame::next(&self.batch, &mut self.pos) {
                return Some(value.to_vec());
            }
            match &mut self.source {
                Source::Local(values) => return values.next(),
                Source::Done => return None,
                Source::Host(fetch) => {
                    self.batch = fetch();
                    self.pos = 0;
                    if self.batch.is_empty() {
                        self.source = Source::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn two_batches() -> Vec<u8> {
        let mut batch = Vec::new();
        match CALLS.fetch_add(1, Ordering::SeqCst) {
            0 => {
                frame::push(&mut batch, b"1");
                frame::push(&mut batch, b"22");
            }
            1 => frame::push(&mut batch, b"333"),
            _ => {}
        }
        batch
    }

    #[test]
    fn values_stream_across_batches_and_stop_at_empty() {
        let values: Vec<_> = Values::host(two_batches).collect();
        assert_eq!(values, vec![b"1".to_vec(), b"22".to_vec(), b"333".to_vec()]);
        assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    }
}
