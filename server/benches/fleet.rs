//! `cargo bench -p sandmill-server --bench fleet`: tasks per second of a
//! 10,000-task `noop` sweep through `sandmill serve` + Postgres + a real
//! `nats-server -js` with two `sandmill worker` processes, next to the same
//! sweep through `sandmill dev` (embedded: SQLite, in-process broker, two
//! worker threads) measured in the same run, both driven over HTTP the way
//! a user would. Every task is accepted durably and every result recorded.
//!
//! Under `cargo test` (no `--bench`) it runs 500 tasks as a smoke test.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sandmill(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sandmill")
}

/// Uploads noop, submits the sweep, waits for it; returns (accept, total).
async fn sweep(base: &str, tasks: u64) -> (Duration, Duration) {
    let http = sandmill_server::tls::default_client();
    support::wait_ready(&http, base).await;
    let module: Value = http
        .post(format!("{base}/v1/modules"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(guests::NOOP).expect("noop built"))
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("module");
    let hash = module["module"]
        .as_str()
        .expect("module")
        .trim_start_matches("sha256:");
    let started = Instant::now();
    let created: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"name": "bench", "sweep": {"module": format!("sha256:{hash}"), "count": tasks}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    let accept = started.elapsed();
    let id = created["id"].as_i64().expect("accepted");
    loop {
        let state = support::job(&http, base, id).await;
        if state["status"] != "running" {
            let total = started.elapsed();
            assert_eq!(state["status"], "succeeded", "{state}");
            assert_eq!(state["tasks"]["succeeded"], tasks, "{state}");
            return (accept, total);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks: u64 = if quick { 500 } else { 10_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The fleet: serve on Postgres and NATS, two worker processes.
    let pg = support::Postgres::start();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().display().to_string();
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let database = pg.database();
    let nats_url = nats.url();
    let worker_url = nats.worker_url();
    let mut fleet = Killed(vec![sandmill(&[
        "serve",
        "--auth",
        "open",
        "--nats",
        &nats_url,
        "--database",
        &database,
        "--listen",
        &listen,
        "--cache-dir",
        &cache_dir,
    ])]);
    let base = format!("http://127.0.0.1:{port}");
    runtime.block_on(support::wait_ready(
        &sandmill_server::tls::default_client(),
        &base,
    ));
    for id in ["bench-1", "bench-2"] {
        fleet.0.push(sandmill(&[
            "worker",
            "--nats",
            &worker_url,
            "--id",
            id,
            "--concurrency",
            "1",
            "--cache-dir",
            &cache_dir,
        ]));
    }
    let (fleet_accept, fleet_total) = runtime.block_on(sweep(&base, tasks));
    drop(fleet);
    drop(nats);
    drop(pg);

    // Embedded: one `sandmill dev` process with two worker threads.
    let data = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let dev = Killed(vec![
        support::dev_command(data.path(), port)
            .spawn()
            .expect("start dev"),
    ]);
    let (dev_accept, dev_total) =
        runtime.block_on(sweep(&format!("http://127.0.0.1:{port}"), tasks));
    drop(dev);

    let rate = |d: Duration| tasks as f64 / d.as_secs_f64();
    println!("{tasks} noop tasks over HTTP, two workers each:");
    println!(
        "  fleet (serve + Postgres + nats-server, 2 worker processes): {:>7.0} tasks/s (accepted in {:.0} ms)",
        rate(fleet_total),
        fleet_accept.as_secs_f64() * 1e3
    );
    println!(
        "  embedded (sandmill dev, SQLite, in-process broker):        {:>7.0} tasks/s (accepted in {:.0} ms)",
        rate(dev_total),
        dev_accept.as_secs_f64() * 1e3
    );
    println!(
        "  ratio fleet / embedded: {:.2}x",
        rate(fleet_total) / rate(dev_total)
    );
}
