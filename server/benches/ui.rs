//! `cargo bench -p sandmill-server --bench ui`: how fast the web UI's
//! page and the reads behind its views answer with a 1,000,000-task job in
//! the database (a real `sandmill dev`, SQLite, after the sweep ran).
//! Each read is timed 200 times over one keep-alive connection, p50 and
//! p99, next to `GET /healthz` on the same connection (the HTTP floor);
//! the goal is under 50 ms for `GET /` and the job list.
//!
//! Under `cargo test` (no `--bench`) it runs a 2,000-task job as a smoke
//! test. `SANDMILL_UI_TASKS=N` sets the job's size.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::Killed;

/// The goal for `GET /` and the job list.
const GOAL: Duration = Duration::from_millis(50);

async fn timed(http: &reqwest::Client, url: &str, times: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(times);
    for _ in 0..times {
        let began = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let _ = response.bytes().await.unwrap();
        took.push(began.elapsed());
    }
    took.sort();
    (took[times / 2], took[times * 99 / 100])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks: u64 = std::env::var("SANDMILL_UI_TASKS")
        .ok()
        .map(|n| n.parse().expect("SANDMILL_UI_TASKS: a number"))
        .unwrap_or(if quick { 2_000 } else { 1_000_000 });
    let times = if quick { 20 } else { 200 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let data = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let _dev = Killed::spawn(
            Command::new(env!("CARGO_BIN_EXE_sandmill"))
                .args(["dev", "--workers", "2", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data")
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &base).await;
        let module = support::upload_module(&http, &base, guests::NOOP).await;
        let began = Instant::now();
        let id = support::submit_json(
            &http,
            &base,
            &json!({"name": "big", "sweep": {"module": module, "count": tasks}}),
        )
        .await;
        // A few small jobs beside it, some failed, for the list to hold.
        for n in 0..20 {
            support::submit_json(
                &http,
                &base,
                &json!({"name": format!("small-{n}"), "sweep": {"module": module, "count": 2}}),
            )
            .await;
        }
        loop {
            let job: Value = support::job(&http, &base, id).await;
            if job["status"] != "running" {
                assert_eq!(job["status"], "succeeded", "{job}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "ui: a {tasks}-task job ran in {:.1} s; reads, {times} each (p50 / p99):",
            began.elapsed().as_secs_f64()
        );
        let floor = timed(&http, &format!("{base}/healthz"), times).await;
        println!(
            "  {:<44} {:>7.2} / {:>7.2} ms   (the HTTP floor)",
            "GET /healthz",
            ms(floor.0),
            ms(floor.1)
        );
        let mut over = Vec::new();
        for (path, goal) in [
            ("/".to_owned(), true),
            ("/ui/app.js".to_owned(), false),
            ("/v1/jobs?limit=50".to_owned(), true),
            ("/v1/jobs?limit=50&sort=tasks&order=desc".to_owned(), true),
            (
                "/v1/jobs?limit=50&status=succeeded&name=big".to_owned(),
                true,
            ),
            (format!("/v1/jobs/{id}"), false),
            (format!("/v1/jobs/{id}/tasks?limit=50"), false),
            (format!("/v1/jobs/{id}/tasks?limit=50&state=failed"), false),
            (format!("/v1/jobs/{id}/failures"), false),
            ("/v1/workers".to_owned(), false),
        ] {
            let (p50, p99) = timed(&http, &format!("{base}{path}"), times).await;
            println!(
                "  GET {:<40} {:>7.2} / {:>7.2} ms   p50 {:>5.1}x the floor{}",
                path,
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / floor.0.as_secs_f64().max(1e-9),
                if goal {
                    "   (goal: p50 under 50 ms)"
                } else {
                    ""
                }
            );
            if goal && p50 >= GOAL {
                over.push(path);
            }
        }
        assert!(over.is_empty(), "over the 50 ms goal: {over:?}");
    });
}
