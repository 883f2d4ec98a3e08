//! [`Emitter`]: where map, combine and reduce put their records.

use crate::frame;

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

    /// The records kept by a collecting emitter (empty inside a sandbox).
    pub fn records(&self) -> &[(Vec<u8>, Vec<u8>)] {
        match &self.sink {
            Sink::Host { .. } => &[],
            Sink::Collect(records) => records,
        }
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
}
