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
    let http = reqwest::Client::new();

    let mut dev = start_dev(data.path(), port);
    support::wait_ready(&http, &base).await;
    let module: Value = http
        .post(format!("{base}/v1/modules"))
        .body(std::fs::read(guests::NOOP).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hash = module["module"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
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
