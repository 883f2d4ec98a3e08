//! Prometheus metrics of this process: one registry, filled by whichever
//! parts run here (a worker's slots and sandbox in [`worker`], the control
//! plane's families registered by the server crate through
//! [`register`]), encoded in the OpenMetrics text format by [`encode`].
//!
//! Label sets are bounded by design: kinds, verdicts, reasons, cache
//! sources, routes; never a job, task or module id.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client;

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("sandmill")));

/// Adds families to this process's registry (names get the `sandmill_`
/// prefix).
pub fn register(add: impl FnOnce(&mut Registry)) {
    // Registering holds no invariant a panic elsewhere could break.
    add(&mut REGISTRY.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Every family of this process, in the OpenMetrics text format.
pub fn encode() -> String {
    LazyLock::force(&WORKER);
    let mut text = String::new();
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Buckets for durations from 1 ms to about 9 minutes.
pub fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn fuel_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e3, 10.0, 10))
}

fn memory_buckets() -> Histogram {
    Histogram::new(exponential_buckets(65536.0, 4.0, 10))
}

/// A task kind (`map`, `reduce`, `preprocess`, `task`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind's name.
    pub kind: &'static str,
}

/// How a call ended on a worker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The task's kind.
    pub kind: &'static str,
    /// `succeeded` or `failed`.
    pub verdict: &'static str,
}

/// Where a module came from when a call needed it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `memory` (kept compiled), `disk` (the artifact cache) or `compiled`.
    pub source: &'static str,
}

/// Busy or free slots.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `busy` or `free`.
    pub state: &'static str,
}

/// What the sandbox and the worker loop of this process measure.
pub struct WorkerMetrics {
    /// Calls run here, by kind and verdict.
    pub runs: Family<RunLabels, Counter>,
    /// Wall time of calls run here.
    pub run_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Slots of the workers in this process, busy and free.
    pub slots: Family<SlotLabels, Gauge>,
    /// Time to compile a module with cranelift.
    pub compile_seconds: Histogram,
    /// Modules made ready, by where they came from.
    pub module_loads: Family<SourceLabels, Counter>,
    /// Fuel a metered call used.
    pub fuel_used: Histogram,
    /// Peak linear memory of a call.
    pub memory_bytes: Histogram,
}

/// This process's [`WorkerMetrics`].
pub static WORKER: LazyLock<WorkerMetrics> = LazyLock::new(|| {
    let metrics = WorkerMetrics {
        runs: Family::default(),
        run_seconds: Family::new_with_constructor(duration_buckets),
        slots: Family::default(),
        compile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        module_loads: Family::default(),
        fuel_used: fuel_buckets(),
        memory_bytes: memory_buckets(),
    };
    register(|r| {
        r.register(
            "worker_calls",
            "Calls run by this process's worker slots, by task kind and verdict",
            metrics.runs.clone(),
        );
        r.register_with_unit(
            "worker_call_duration",
            "Wall time of calls run by this process's worker slots",
            Unit::Seconds,
            metrics.run_seconds.clone(),
        );
        r.register(
            "worker_slots",
            "Task slots of this process's workers, busy and free",
            metrics.slots.clone(),
        );
        r.register_with_unit(
            "module_compile_duration",
            "Time to compile a module with cranelift",
            Unit::Seconds,
            metrics.compile_seconds.clone(),
        );
        r.register(
            "module_loads",
            "Modules made ready for a call, by source: memory (kept compiled), disk (artifact cache) or compiled",
            metrics.module_loads.clone(),
        );
        r.register(
            "guest_fuel_used",
            "Fuel used by a metered call",
            metrics.fuel_used.clone(),
        );
        r.register_with_unit(
            "guest_memory_peak",
            "Peak linear memory of a call",
            Unit::Bytes,
            metrics.memory_bytes.clone(),
        );
    });
    metrics
});

impl WorkerMetrics {
    /// Counts a module made ready from `source`.
    pub fn module_load(&self, source: &'static str) {
        self.module_loads
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Adds `capacity` slots, all free.
    pub fn add_slots(&self, capacity: usize) {
        self.slots
            .get_or_create(&SlotLabels { state: "free" })
            .inc_by(i64::try_from(capacity).unwrap_or(i64::MAX));
        // Shown as 0 from the start.
        let _ = self.slots.get_or_create(&SlotLabels { state: "busy" });
    }

    /// Takes `capacity` free slots away (a worker stopped).
    pub fn remove_slots(&self, capacity: usize) {
        self.slots
            .get_or_create(&SlotLabels { state: "free" })
            .dec_by(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// A slot turned busy.
    pub fn slot_busy(&self) {
        self.slots
            .get_or_create(&SlotLabels { state: "free" })
            .dec();
        self.slots
            .get_or_create(&SlotLabels { state: "busy" })
            .inc();
    }

    /// A slot turned free.
    pub fn slot_free(&self) {
        self.slots
            .get_or_create(&SlotLabels { state: "busy" })
            .dec();
        self.slots
            .get_or_create(&SlotLabels { state: "free" })
            .inc();
    }

    /// Records a finished call.
    pub fn call(
        &self,
        kind: &'static str,
        succeeded: bool,
        elapsed: Duration,
        fuel: Option<u64>,
        memory: u64,
    ) {
        let verdict = if succeeded { "succeeded" } else { "failed" };
        self.runs.get_or_create(&RunLabels { kind, verdict }).inc();
        self.run_seconds
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
        if let Some(fuel) = fuel {
            self.fuel_used.observe(fuel as f64);
        }
        if memory > 0 {
            self.memory_bytes.observe(memory as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_worker_family_once_and_ends_with_eof() {
        WORKER.call("map", true, Duration::from_millis(3), Some(5000), 1 << 20);
        WORKER.module_load("compiled");
        WORKER.add_slots(1);
        WORKER.remove_slots(1);
        let text = encode();
        for family in [
            "sandmill_worker_calls",
            "sandmill_worker_call_duration_seconds",
            "sandmill_worker_slots",
            "sandmill_module_compile_duration_seconds",
            "sandmill_module_loads",
            "sandmill_guest_fuel_used",
            "sandmill_guest_memory_peak_bytes",
        ] {
            let typed = format!("# TYPE {family} ");
            assert_eq!(text.matches(&typed).count(), 1, "{family} in\n{text}");
        }
        assert!(text.contains("sandmill_worker_calls_total{kind=\"map\",verdict=\"succeeded\"} "));
        assert!(text.ends_with("# EOF\n"));
    }
}
