//! Crash recovery of the embedded mode: SIGKILL `sandmill dev` in the
//! middle of a sweep, start it again on the same data folder, and the sweep
//! finishes with every task recorded once. Reported as ok / lost /
//! duplicated counts.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sandmill_server::store::Store;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

const TASKS: i64 = 30_000;

fn start_dev(data: &Path, port: u16) -> support::Killed {
    support::Killed::spawn(&mut support::dev_command(data, port))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_sweep_loses_nothing_and_records_each_task_once() {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .expect("within 5 minutes");
}

async fn scenario() {
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = sandmill_server::tls::default_client();

    let mut dev = start_dev(data.path(), port);
    support::wait_ready(&http, &base).await;
    let module = support::upload_module(&http, &base, guests::NOOP).await;
    let hash = module.trim_start_matches("sha256:");
    let created: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"name": "crash", "sweep": {"module": format!("sha256:{hash}"), "count": TASKS}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("job accepted");

    // Kill it for real once some, not all, tasks are recorded.
    let done_at_kill = loop {
        let state = support::job(&http, &base, id).await;
        let done = state["tasks"]["succeeded"].as_i64().unwrap_or(0);
        assert_eq!(
            state["status"], "running",
            "the sweep ended before the kill"
        );
        if done >= 500 {
            dev.kill();
            break done;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(done_at_kill < TASKS);

    let mut dev = start_dev(data.path(), port);
    support::wait_ready(&http, &base).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    let finished = loop {
        let state = support::job(&http, &base, id).await;
        if state["status"] != "running" {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep did not finish after the restart: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    dev.kill();

    let store = Store::connect(&data.path().join("sandmill.db").display().to_string())
        .await
        .unwrap();
    let (tasks, successes, duplicated) = store.success_audit(id).await.unwrap();
    let ok = finished["tasks"]["succeeded"].as_i64().unwrap_or(0);
    let lost = tasks - ok;
    println!(
        "crash test: killed at {done_at_kill}/{TASKS} recorded; after restart: ok {ok}, lost {lost}, \
         duplicated {duplicated}, unknown {}",
        successes - ok - duplicated
    );
    assert_eq!(finished["status"], "succeeded");
    assert_eq!((tasks, ok, lost, duplicated), (TASKS, TASKS, 0, 0));
    assert_eq!(successes, TASKS, "one succeeded attempt per task");
}

/// A stop takes a bounded time whatever the database is doing: with its
/// Postgres gone, `sandmill dev` still stops on SIGTERM within its
/// `--stop-within`, and says what it could not record.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_dev_in_bounded_time_with_its_database_gone() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut pg = support::Postgres::start();
        let database = pg.database();
        let data = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        let log = data.path().join("dev.log");
        let mut dev = support::Killed::spawn(
            support::dev_command(data.path(), port)
                .args(["--database", &database, "--stop-within", "3s"])
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        support::wait_ready(&http, &base).await;
        let module = support::upload_module(&http, &base, guests::NOOP).await;
        let created: Value = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"name": "busy", "sweep": {"module": module, "count": 1_000_000}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_i64().unwrap();
        // Busy: tasks running and being recorded.
        while support::job(&http, &base, id).await["tasks"]["succeeded"]
            .as_i64()
            .unwrap_or(0)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pg.stop();
        let term = std::process::Command::new("kill")
            .arg(dev.0.id().to_string())
            .status()
            .unwrap();
        assert!(term.success());
        let stopped_at = Instant::now();
        let status = loop {
            if let Some(status) = dev.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                stopped_at.elapsed() < Duration::from_secs(15),
                "still running 15 s after SIGTERM: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        println!(
            "stopped in {:.1} s with its database gone (exit {status}); it said: {}",
            stopped_at.elapsed().as_secs_f64(),
            said.lines()
                .filter(|l| l.starts_with("sandmill dev"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert!(status.success(), "{said}");
        assert!(said.contains("sandmill dev: stopping"), "{said}");
    })
    .await
    .expect("within 2 minutes");
}
