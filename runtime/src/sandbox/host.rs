//! The host side of `sdk/macros/wit/sandmill.wit` and the per-call store state.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::error::{ExecError, HostAbort};
use super::limits::MAX_TABLE_ELEMENTS;
use crate::records::{Records, encode_values};

wasmtime::component::bindgen!({
    path: "../sdk/macros/wit",
    world: "host-imports",
    imports: { default: trappable },
});

pub(crate) use sandmill::guest::host::{Host, Level, add_to_linker};

/// Largest batch of values handed to a guest by one `next-values` call,
/// and the size past which a batch of groups is handed over.
pub(crate) const VALUES_BATCH_BYTES: usize = 64 * 1024;

/// A call's log: host `log` lines and the guest's stdout and stderr, in the
/// order written, cut at the log limit with one marker line.
#[derive(Clone)]
pub(crate) struct LogSink(Arc<Mutex<LogBuf>>);

struct LogBuf {
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl LogSink {
    pub fn new(limit: u64) -> Self {
        LogSink(Arc::new(Mutex::new(LogBuf {
            bytes: Vec::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            truncated: false,
        })))
    }

    pub fn write(&self, data: &[u8]) {
        // A poisoned lock means a panic while appending bytes; the buffer
        // is still a valid Vec, so keep going.
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if buf.truncated {
            return;
        }
        let room = buf.limit.saturating_sub(buf.bytes.len());
        if data.len() <= room {
            buf.bytes.extend_from_slice(data);
        } else {
            buf.bytes.extend_from_slice(&data[..room]);
            let marker = format!("\n[sandmill] log truncated at {} bytes\n", buf.limit);
            buf.bytes.extend_from_slice(marker.as_bytes());
            buf.truncated = true;
        }
    }

    /// The log and whether it was cut.
    pub fn take(&self) -> (Vec<u8>, bool) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut buf.bytes), buf.truncated)
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        LogSink::write(self, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: bytes past the limit are dropped, never blocked on.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        LogSink::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Denies memory growth past the call's limit, by raising [`HostAbort`] so
/// the failure is classified as a memory limit, not a confusing trap.
pub(crate) struct MemoryLimiter {
    pub limit: u64,
    /// The largest size a memory grew to (or asked to).
    pub peak: u64,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        self.peak = self.peak.max(desired as u64);
        if desired as u64 > self.limit {
            return Err(wasmtime::Error::new(HostAbort(ExecError::MemoryLimit {
                limit: self.limit,
            })));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Values of the key being reduced or combined.
pub(crate) type ValueIter = Box<dyn Iterator<Item = Vec<u8>> + Send>;

/// A partitioned map's spilling state.
pub(crate) struct Spilling {
    pub spiller: crate::shuffle::Spiller,
    /// Bytes held before a spill.
    pub buffer: u64,
    /// Bytes emitted in all (bounded by the output limit).
    pub emitted: u64,
}

/// Everything one call's store holds.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub log: LogSink,
    pub params: String,
    pub input_name: String,
    pub records: Records,
    pub output_limit: u64,
    pub spill: Option<Spilling>,
    pub attempt: u32,
    pub values: Option<ValueIter>,
    pub counters: BTreeMap<String, i64>,
    pub progress: Option<(u64, u64)>,
    pub progress_sink: Option<super::ProgressSink>,
    pub panic: Option<(String, String)>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let mut line = Vec::with_capacity(message.len() + 10);
        line.extend_from_slice(format!("[{level}] ").as_bytes());
        line.extend_from_slice(message.as_bytes());
        line.push(b'\n');
        self.log.write(&line);
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> Result<()> {
        self.progress = Some((done, total));
        if let Some(sink) = &self.progress_sink {
            sink(done, total);
        }
        Ok(())
    }

    fn counter(&mut self, name: String, delta: i64) -> Result<()> {
        let slot = self.counters.entry(name).or_default();
        *slot = slot.saturating_add(delta);
        Ok(())
    }

    fn params(&mut self) -> Result<String> {
        Ok(self.params.clone())
    }

    fn input_name(&mut self) -> Result<String> {
        Ok(self.input_name.clone())
    }

    fn emit(&mut self, batch: Vec<u8>) -> Result<()> {
        let added = self.records.push_batch(&batch).map_err(guest_bug)?;
        if let Some(spilling) = &mut self.spill {
            // A partitioned map's output goes to disk past the buffer; the
            // output limit bounds all it writes.
            spilling.emitted += added as u64;
            if spilling.emitted > self.output_limit {
                return Err(wasmtime::Error::new(HostAbort(ExecError::OutputTooLarge {
                    limit: self.output_limit,
                })));
            }
            if self.records.held() as u64 >= spilling.buffer {
                spilling.spiller.spill(&mut self.records).map_err(|e| {
                    wasmtime::Error::new(HostAbort(ExecError::Host(format!(
                        "spilling the map's output: {e}"
                    ))))
                })?;
            }
            return Ok(());
        }
        // Held output (with each record's overhead) may pass the limit by
        // one batch (64 KiB) at most.
        if self.records.counted() as u64 > self.output_limit {
            return Err(wasmtime::Error::new(HostAbort(ExecError::OutputTooLarge {
                limit: self.output_limit,
            })));
        }
        Ok(())
    }

    fn next_values(&mut self) -> Result<Vec<u8>> {
        let mut batch = Vec::new();
        if let Some(values) = &mut self.values {
            for value in values.by_ref() {
                encode_values([value.as_slice()], &mut batch);
                if batch.len() >= VALUES_BATCH_BYTES {
                    break;
                }
            }
        }
        Ok(batch)
    }

    fn attempt(&mut self) -> Result<u32> {
        Ok(self.attempt)
    }

    fn report_panic(&mut self, message: String, location: String) -> Result<()> {
        self.log
            .write(format!("[panic] {location}: {message}\n").as_bytes());
        self.panic = Some((message, location));
        Ok(())
    }
}

fn guest_bug(error: crate::records::MalformedBatch) -> wasmtime::Error {
    wasmtime::Error::new(HostAbort(ExecError::Guest(format!(
        "the guest sent a {error}; is it built with a matching sandmill-sdk?"
    ))))
}
