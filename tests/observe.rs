//! Seeing the system, through a real `sandmill dev`: `/metrics` scraped
//! and parsed as Prometheus does while a sweep runs, utilization that adds
//! up, `sandmill top`, and the example Grafana dashboard against the
//! families the server serves.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::{dev, get_json, ok, run_test, sandmill, submit_json, upload_module};

/// Loop turns per task: tens of milliseconds each.
const SPIN: u64 = 300_000_000;

/// A sweep of `tasks` tasks burning `spin` loop turns each.
fn sweep(module: &str, tasks: usize, spin: u64) -> Value {
    let rows: Vec<Value> = (0..tasks)
        .map(|i| json!({"steps": "1", "spin": spin.to_string(), "echo": format!("t{i}")}))
        .collect();
    json!({"name": "spin", "sweep": {"module": module, "rows": rows}, "cache": false})
}

async fn scrape(http: &reqwest::Client, base: &str) -> support::metrics::Scrape {
    support::metrics::scrape(http, &format!("{base}/metrics"))
        .await
        .1
}

async fn job_status(http: &reqwest::Client, base: &str, id: i64) -> String {
    let job = get_json(http, &format!("{base}/v1/jobs/{id}")).await;
    job["status"].as_str().unwrap().to_owned()
}

#[test]
fn metrics_move_during_a_sweep_and_every_family_is_well_formed() {
    run_test(Duration::from_secs(300), async {
        let dev = dev(&[]);
        let http = sandmill_server::tls::default_client();
        let module = upload_module(&http, &dev.base, guests::PROGRESS).await;
        // Parsed and well formed from the start.
        scrape(&http, &dev.base).await;

        let tasks = 60;
        let id = submit_json(&http, &dev.base, &sweep(&module, tasks, SPIN)).await;
        let succeeded = |s: &support::metrics::Scrape| {
            s.sum(
                "sandmill_tasks_finished_total",
                &[
                    ("kind", "task"),
                    ("verdict", "succeeded"),
                    ("reason", "none"),
                ],
            )
        };
        let mut seen = Vec::new();
        let mut waiting_seen = 0.0f64;
        // Families and sample names seen in any scrape (a gauge of label
        // sets has no series when nothing waits).
        let mut names = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let running = job_status(&http, &dev.base, id).await == "running";
            let s = scrape(&http, &dev.base).await;
            let slots = s.sum("sandmill_worker_slots", &[]);
            let busy = s.sum("sandmill_worker_slots", &[("state", "busy")]);
            assert!(
                slots >= 1.0 && (0.0..=slots).contains(&busy),
                "{slots} {busy}"
            );
            waiting_seen = waiting_seen.max(s.sum("sandmill_tasks_waiting", &[("labels", "any")]));
            seen.push(succeeded(&s));
            names.extend(s.families.keys().cloned());
            names.extend(s.samples.iter().map(|(n, _, _)| n.clone()));
            if !running {
                break;
            }
            assert!(Instant::now() < deadline, "the sweep did not end");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(job_status(&http, &dev.base, id).await, "succeeded");
        // The counter moved while the sweep ran, never back.
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        let distinct: BTreeSet<u64> = seen.iter().map(|v| *v as u64).collect();
        assert!(distinct.len() >= 3, "the counter was seen moving: {seen:?}");
        assert!(waiting_seen > 0.0, "tasks were seen waiting");

        let after = scrape(&http, &dev.base).await;
        names.extend(after.families.keys().cloned());
        names.extend(after.samples.iter().map(|(n, _, _)| n.clone()));
        for family in [
            "sandmill_tasks_finished",
            "sandmill_task_duration_seconds",
            "sandmill_task_queue_wait_seconds",
            "sandmill_tasks_waiting",
            "sandmill_worker_slots",
            "sandmill_module_compile_duration_seconds",
            "sandmill_module_loads",
            "sandmill_recorder_events",
            "sandmill_recorder_events_waiting",
            "sandmill_http_request_duration_seconds",
            "sandmill_guest_fuel_used",
            "sandmill_guest_memory_peak_bytes",
            "sandmill_worker_calls",
            "sandmill_worker_call_duration_seconds",
        ] {
            assert!(names.contains(family), "{family} missing");
        }

        assert_eq!(succeeded(&after), tasks as f64);
        assert_eq!(
            after.sum(
                "sandmill_task_queue_wait_seconds_count",
                &[("kind", "task")]
            ),
            tasks as f64
        );
        assert_eq!(
            after.sum("sandmill_task_duration_seconds_count", &[("kind", "task")]),
            tasks as f64
        );
        assert!(
            after.sum(
                "sandmill_worker_calls_total",
                &[("kind", "task"), ("verdict", "succeeded")]
            ) >= tasks as f64
        );
        assert!(after.sum("sandmill_guest_memory_peak_bytes_count", &[]) >= tasks as f64);
        assert!(after.sum("sandmill_module_loads_total", &[]) >= tasks as f64);
        assert!(after.sum("sandmill_module_compile_duration_seconds_count", &[]) >= 1.0);
        assert!(after.sum("sandmill_recorder_events_total", &[]) >= tasks as f64);
        assert_eq!(after.sum("sandmill_tasks_waiting", &[]), 0.0);
        // Requests are counted by route template, never by id.
        let routes = after.label_values("sandmill_http_request_duration_seconds_count", "route");
        assert!(routes.contains(&"/v1/jobs/:id".to_owned()), "{routes:?}");
        assert!(routes.contains(&"/v1/jobs".to_owned()), "{routes:?}");
        assert!(
            routes.iter().all(|r| !r.contains(&format!("/{id}"))),
            "{routes:?}"
        );
        let ok_jobs = after.sum(
            "sandmill_http_request_duration_seconds_count",
            &[
                ("route", "/v1/jobs/:id"),
                ("method", "GET"),
                ("status", "200"),
            ],
        );
        assert!(ok_jobs >= seen.len() as f64, "{ok_jobs}");

        // Every metric the example dashboard plots is one the server
        // serves.
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/grafana/sandmill-dashboard.json"
        ))
        .unwrap();
        let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
        let mut plotted = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in metric_names(expr) {
                    plotted += 1;
                    assert!(
                        names.contains(&name),
                        "the dashboard plots {name}, which /metrics does not serve"
                    );
                }
            }
        }
        assert!(plotted >= 10);
    });
}

/// The `sandmill_…` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sandmill_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn utilization_adds_up_over_a_run_and_top_shows_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let dev = dev(&["--utilization-every", "200ms"]);
        let http = sandmill_server::tls::default_client();
        let module = upload_module(&http, &dev.base, guests::PROGRESS).await;
        let from = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // `sandmill top` while a sweep runs: the workers, and the sweep
        // among the busiest jobs.
        let state = tempfile::tempdir().unwrap();
        let top = tokio::task::spawn_blocking({
            let base = dev.base.clone();
            let state = state.path().to_owned();
            move || {
                support::output_within(
                    sandmill(&state)
                        .args(["--server", &base, "top", "--every", "1s", "--frames", "3"]),
                    Duration::from_secs(60),
                )
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tasks = 40;
        let id = submit_json(&http, &dev.base, &sweep(&module, tasks, SPIN)).await;
        let top = top.await.unwrap();
        let shown = ok(&top);
        assert_eq!(shown.matches("WORKER").count(), 3, "three frames:\n{shown}");
        assert!(shown.contains("workers: 1 live"), "{shown}");
        assert!(shown.contains("tasks/s finished"), "{shown}");
        let last = shown.rsplit("sandmill top").next().unwrap();
        assert!(
            last.lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("spin")),
            "the job among the busiest:\n{shown}"
        );

        let deadline = Instant::now() + Duration::from_secs(240);
        while job_status(&http, &dev.base, id).await == "running" {
            assert!(Instant::now() < deadline, "the sweep did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A sample after the worker's next heartbeat (every 3 s) holds the
        // last counts: read until one does, or a deadline far past it.
        let ended_at = Instant::now();
        let finished_in = |view: &Value| -> i64 {
            view["total"].as_array().map_or(0, |points| {
                points.iter().filter_map(|p| p["finished"].as_i64()).sum()
            })
        };
        let (view, to) = loop {
            let to = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let url = format!("{}/v1/utilization?from={from}&to={to}&step=1s", dev.base);
            let view = get_json(&http, &url).await;
            if finished_in(&view) >= tasks as i64 || ended_at.elapsed() > Duration::from_secs(15) {
                break (view, to);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(view["step"], "1s", "{view}");
        assert_eq!(view["sampled_every"], "200ms", "{view}");
        let total = view["total"].as_array().unwrap();
        assert!(total.len() >= 2, "{view}");
        let f = |p: &Value, k: &str| p[k].as_f64().unwrap();
        let mut finished = 0;
        let mut busiest = 0.0f64;
        for point in total {
            assert!(
                (f(point, "busy") + f(point, "free") - f(point, "slots")).abs() < 1e-9,
                "busy + free = slots: {point}"
            );
            assert!(f(point, "busy") <= f(point, "slots"));
            finished += point["finished"].as_i64().unwrap();
            busiest = busiest.max(f(point, "busy"));
        }
        assert_eq!(finished, tasks as i64, "every task ended once: {view}");
        assert!(busiest > 0.0, "slots were seen busy: {view}");
        // Per worker: the same sums, and the same equation.
        let workers = view["workers"]["items"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{view}");
        let mut by_worker = 0;
        for point in workers[0]["points"].as_array().unwrap() {
            assert!((f(point, "busy") + f(point, "free") - f(point, "slots")).abs() < 1e-9);
            by_worker += point["finished"].as_i64().unwrap();
        }
        assert_eq!(by_worker, finished);
        assert_eq!(view["workers"]["next_cursor"], Value::Null);

        // Refused cleanly: too many buckets, a bad step, an empty span.
        for (query, field) in [
            (format!("from={from}&to={to}&step=1s&x=1"), "x"),
            (
                "from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z&step=1m".to_owned(),
                "step",
            ),
            (format!("from={from}&to={to}&step=10ms"), "step"),
            (format!("from={to}&to={from}"), "from"),
            ("from=yesterday".to_owned(), "from"),
        ] {
            let response = http
                .get(format!("{}/v1/utilization?{query}", dev.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{query}");
            let body: Value = response.json().await.unwrap();
            assert!(
                body["message"].as_str().unwrap().contains(field),
                "{query}: {body}"
            );
        }
    });
}
