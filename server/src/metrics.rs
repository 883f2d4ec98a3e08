//! The control plane's Prometheus metrics, beside the worker's in
//! [`sandmill_runtime::metrics`]: tasks finished, their durations and
//! queue waits (from the events the recorder records), HTTP requests by
//! route, and, read at each scrape, tasks waiting per label set and events
//! waiting for the recorder.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use sandmill_runtime::message::{TaskEvent, TaskResult, Verdict};
use sandmill_runtime::metrics::{KindLabels, duration_buckets};

use crate::scheduler::Scheduler;

/// Label sets shown in `sandmill_tasks_waiting` at most (the busiest).
pub const MAX_LABEL_SETS: i64 = 100;

/// How a task's attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    /// The task's kind (`unknown` when its worker did not say).
    pub kind: &'static str,
    /// `succeeded` or `failed`.
    pub verdict: &'static str,
    /// Why it failed (`none` when it succeeded).
    pub reason: String,
}

/// An HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Its method.
    pub method: String,
    /// The route it matched (its template, never its ids), or `unmatched`.
    pub route: String,
    /// The answer's status code.
    pub status: u16,
}

/// Tasks of one label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelSetLabels {
    /// `k=v,k2=v2`, or `any`.
    pub labels: String,
}

/// The control plane's families.
pub struct ServerMetrics {
    /// Attempts recorded as ended.
    pub finished: Family<FinishedLabels, Counter>,
    /// Wall time of ended attempts.
    pub duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// Time attempts waited in their queue.
    pub queue_wait: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// HTTP requests answered.
    pub http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Events the recorder wrote to the database.
    pub recorded: Counter,
    /// Tasks waiting to start, per label set (read at each scrape).
    pub waiting: Family<LabelSetLabels, Gauge>,
    /// Events reported and not yet recorded (read at each scrape).
    pub recorder_lag: Gauge,
}

/// This process's [`ServerMetrics`].
pub static SERVER: LazyLock<ServerMetrics> = LazyLock::new(|| {
    let metrics = ServerMetrics {
        finished: Family::default(),
        duration: Family::new_with_constructor(duration_buckets),
        queue_wait: Family::new_with_constructor(duration_buckets),
        http: Family::new_with_constructor(duration_buckets),
        recorded: Counter::default(),
        waiting: Family::default(),
        recorder_lag: Gauge::default(),
    };
    sandmill_runtime::metrics::register(|r| {
        r.register(
            "tasks_finished",
            "Task attempts recorded as ended, by task kind, verdict and failure reason",
            metrics.finished.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Wall time of ended task attempts, as their workers measured it",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        r.register_with_unit(
            "task_queue_wait",
            "Time task attempts waited in their queue before a worker started them",
            Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP requests answered, by method, route and status",
            Unit::Seconds,
            metrics.http.clone(),
        );
        r.register(
            "recorder_events",
            "Worker events the recorder wrote to the database",
            metrics.recorded.clone(),
        );
        r.register(
            "tasks_waiting",
            "Tasks of running jobs waiting to start, per label set (the busiest label sets)",
            metrics.waiting.clone(),
        );
        r.register(
            "recorder_events_waiting",
            "Worker events reported and not yet recorded (the recorder's lag)",
            metrics.recorder_lag.clone(),
        );
    });
    metrics
});

impl ServerMetrics {
    /// Counts recorded events.
    pub fn recorded(&self, events: &[TaskEvent]) {
        self.recorded.inc_by(events.len() as u64);
        for event in events {
            if let TaskEvent::Finished(result) = event {
                self.finished(result);
            }
        }
    }

    /// Counts an ended attempt.
    pub fn finished(&self, result: &TaskResult) {
        {
            let kind = result.kind.map_or("unknown", |k| k.name());
            let (verdict, reason) = match result.verdict {
                Verdict::Succeeded => ("succeeded", "none".to_owned()),
                Verdict::Failed => (
                    "failed",
                    result
                        .reason
                        .map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
                ),
            };
            self.finished
                .get_or_create(&FinishedLabels {
                    kind,
                    verdict,
                    reason,
                })
                .inc();
            let labels = KindLabels { kind };
            self.duration
                .get_or_create(&labels)
                .observe(result.elapsed_ms.max(0) as f64 / 1000.0);
            if let Some(waited) = result.waited_ms {
                self.queue_wait
                    .get_or_create(&labels)
                    .observe(waited.max(0) as f64 / 1000.0);
            }
        }
    }

    /// Counts an answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }
}

/// The text of `/metrics`: the gauges read now, then every family.
pub async fn scrape(scheduler: &Scheduler) -> String {
    let metrics = &*SERVER;
    match scheduler.store().queued_by_labels(MAX_LABEL_SETS).await {
        Ok(sets) => {
            metrics.waiting.clear();
            for (labels, waiting) in sets {
                let labels = if labels.is_empty() {
                    "any".to_owned()
                } else {
                    labels.to_string()
                };
                metrics
                    .waiting
                    .get_or_create(&LabelSetLabels { labels })
                    .set(waiting);
            }
        }
        Err(error) => tracing::warn!(%error, "reading waiting tasks for /metrics failed"),
    }
    match scheduler.broker().events_waiting().await {
        Ok(Some(waiting)) => {
            metrics
                .recorder_lag
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "reading the recorder's lag for /metrics failed"),
    }
    sandmill_runtime::metrics::encode()
}

/// Registers the control plane's families (so a scrape shows them before
/// anything happened).
pub fn init() {
    LazyLock::force(&SERVER);
}
