//! `cargo bench -p sandmill-server --bench scale`: how cost grows with the
//! work, and the tail of one call.
//!
//! 1. Scale: `count` sweeps of 10^4 … 10^7 no-op tasks through a real
//!    `sandmill dev` (SQLite, two worker threads), each in a fresh data
//!    folder: accept time, tasks/s (next to the bare sandbox on the same
//!    threads, measured in the same run), the server's peak RSS (next to
//!    its RSS idle) and the database's size on disk.
//! 2. Latency: `POST /v1/run` of a stored no-op module, 2,000 sequential
//!    calls over one keep-alive connection, p50 and p99, next to
//!    `GET /healthz` on the same connection (the HTTP floor): embedded and
//!    on the fleet (`serve` + Postgres + nats-server + a worker), idle and
//!    while a 10^6-task sweep runs.
//! 3. Crash: SIGKILL of `sandmill dev` in the middle of a 10^7-task sweep,
//!    a restart on the same folder, and every task recorded once (counts
//!    through the API, the audit through the database).
//!
//! Under `cargo test` (no `--bench`) it runs small sizes as a smoke test.
//! Name parts after `--` to run only those: `cargo bench -p sandmill-server
//! --bench scale -- latency crash`; `SANDMILL_SCALE_SIZES=100000,1000000`
//! sets the sweep sizes of the scale part.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_runtime::{Call, Sandbox, SandboxConfig};
use sandmill_server::store::Store;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::Killed;

/// The sizes, the calls per latency run, the sweep behind the busy
/// latency run, and the crash sweep.
struct Plan {
    sizes: Vec<u64>,
    calls: usize,
    busy_sweep: u64,
    crash_sweep: u64,
}

const WORKERS: usize = 2;

fn dev(data: &Path, port: u16) -> Killed {
    Killed::spawn(
        Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["dev", "--workers", &WORKERS.to_string(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// (current, peak) resident memory of a process, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of the SQLite database with its WAL.
fn db_bytes(data: &Path) -> u64 {
    ["sandmill.db", "sandmill.db-wal", "sandmill.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn upload_noop(http: &reqwest::Client, base: &str) -> String {
    support::upload_module(http, base, guests::NOOP).await
}

async fn submit(http: &reqwest::Client, base: &str, module: &str, count: u64) -> i64 {
    let created: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"name": "scale", "sweep": {"module": module, "count": count}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    created["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("refused: {created}"))
}

/// Polls the job until it leaves `running`; returns its last view.
async fn finished(http: &reqwest::Client, base: &str, id: i64, every: Duration) -> Value {
    loop {
        let state = support::job(http, base, id).await;
        if state["status"] != "running" {
            return state;
        }
        tokio::time::sleep(every).await;
    }
}

fn bare_rate(calls: u64) -> f64 {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let module = sandbox
        .load(&std::fs::read(guests::NOOP).expect("noop"))
        .expect("load");
    let started = Instant::now();
    let threads: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (sandbox, module) = (sandbox.clone(), module.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                rt.block_on(async {
                    for _ in 0..calls / WORKERS as u64 {
                        assert!(
                            sandbox
                                .call(&module, Call::task(Vec::new()))
                                .await
                                .result
                                .is_ok()
                        );
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// One sweep of `n` in a fresh `sandmill dev`.
async fn scale(n: u64, bare: f64) {
    let data = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = dev(data.path(), port);
    let http = sandmill_server::tls::default_client();
    support::wait_ready(&http, &base).await;
    let module = upload_noop(&http, &base).await;
    let (idle, _) = rss(server.0.id());
    let started = Instant::now();
    let id = submit(&http, &base, &module, n).await;
    let accept = started.elapsed();
    let state = finished(&http, &base, id, Duration::from_millis(200)).await;
    let total = started.elapsed();
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["tasks"]["succeeded"], n, "{state}");
    let (_, peak) = rss(server.0.id());
    let rate = n as f64 / total.as_secs_f64();
    println!(
        "  {n:>10}  accept {:>8.2} ms  {:>8.0} tasks/s ({:.2}x of bare)  peak RSS {:>6.1} MiB (idle {:>5.1})  database {:>8.1} MiB",
        accept.as_secs_f64() * 1e3,
        rate,
        rate / bare,
        peak,
        idle,
        db_bytes(data.path()) as f64 / (1 << 20) as f64,
    );
}

/// p50 and p99 of `calls` sequential requests, in ms.
async fn percentiles<F, Fut>(calls: usize, mut request: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        request().await;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.50), at(0.99))
}

/// Latency of `/v1/run` next to `/healthz`, idle and behind a sweep.
async fn latency(label: &str, base: &str, plan: &Plan) {
    let http = sandmill_server::tls::client()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    support::wait_ready(&http, base).await;
    let module = upload_noop(&http, base).await;
    let run = || {
        let http = http.clone();
        let module = module.clone();
        async move {
            let reply = http
                .post(format!("{base}/v1/run"))
                .json(&json!({"module": module, "input": "x"}))
                .send()
                .await
                .expect("run");
            assert_eq!(reply.status(), 200);
            assert_eq!(&reply.bytes().await.expect("output")[..], b"x");
        }
    };
    let health = || {
        let http = http.clone();
        async move {
            let reply = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .expect("healthz");
            assert_eq!(reply.status(), 200);
            let _ = reply.bytes().await;
        }
    };
    // Warm up: modules compiled, connections open.
    percentiles(50, run).await;
    let (h50, h99) = percentiles(plan.calls, health).await;
    let (p50, p99) = percentiles(plan.calls, run).await;
    println!(
        "  {label:<9} idle: /v1/run p50 {p50:.3} ms, p99 {p99:.3} ms   (GET /healthz p50 {h50:.3} ms, p99 {h99:.3} ms)"
    );
    let id = submit(&http, base, &module, plan.busy_sweep).await;
    // Let the sweep get going.
    loop {
        let state = support::job(&http, base, id).await;
        if state["tasks"]["succeeded"].as_u64().unwrap_or(0) > 1_000 || state["status"] != "running"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b50, b99) = percentiles(plan.calls, run).await;
    let state = support::job(&http, base, id).await;
    println!(
        "  {label:<9} during a {}-task sweep: /v1/run p50 {b50:.3} ms, p99 {b99:.3} ms   (sweep still running: {})",
        plan.busy_sweep,
        state["status"] == "running"
    );
    let _ = http
        .post(format!("{base}/v1/jobs/{id}/cancel"))
        .send()
        .await;
}

async fn embedded_latency(plan: &Plan) {
    let data = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let _server = dev(data.path(), port);
    latency("embedded", &format!("http://127.0.0.1:{port}"), plan).await;
}

async fn fleet_latency(plan: &Plan) {
    let pg = support::Postgres::start();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let sandmill = |args: &[&str]| -> Killed {
        Killed::spawn(
            Command::new(env!("CARGO_BIN_EXE_sandmill"))
                .args(args)
                .arg("--nats")
                .arg(nats.url_for(args))
                .arg("--cache-dir")
                .arg(cache.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let database = pg.database();
    let listen = format!("127.0.0.1:{port}");
    let _serve = sandmill(&[
        "serve",
        "--auth",
        "open",
        "--database",
        &database,
        "--listen",
        &listen,
    ]);
    let _worker = sandmill(&[
        "worker",
        "--id",
        "bench",
        "--concurrency",
        &WORKERS.to_string(),
    ]);
    latency("fleet", &format!("http://127.0.0.1:{port}"), plan).await;
}

/// SIGKILL mid-sweep, restart, every task recorded once.
async fn crash(n: u64) {
    let data = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = sandmill_server::tls::default_client();
    let mut server = dev(data.path(), port);
    support::wait_ready(&http, &base).await;
    let module = upload_noop(&http, &base).await;
    let started = Instant::now();
    let id = submit(&http, &base, &module, n).await;
    let at_kill = loop {
        let done = support::job(&http, &base, id).await["tasks"]["succeeded"]
            .as_u64()
            .unwrap_or(0);
        if done >= n / 3 {
            server.kill();
            break done;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _server = dev(data.path(), port);
    support::wait_ready(&http, &base).await;
    let state = finished(&http, &base, id, Duration::from_millis(500)).await;
    let total = started.elapsed();
    drop(_server);
    let ok = state["tasks"]["succeeded"].as_u64().unwrap_or(0);
    let store = Store::connect(&data.path().join("sandmill.db").display().to_string())
        .await
        .expect("store");
    let (tasks, successes, duplicated) = store.success_audit(id).await.expect("audit");
    println!(
        "  {n} tasks, SIGKILL at {at_kill} succeeded, restarted: status {}, succeeded {ok} (API), \
         task rows {tasks}, succeeded attempts {successes}, duplicated {duplicated}, lost {}; {:.0} s in all",
        state["status"],
        n as i64 - tasks,
        total.as_secs_f64()
    );
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(
        (ok, tasks, successes, duplicated),
        (n, n as i64, n as i64, 0)
    );
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let plan = if quick {
        Plan {
            sizes: vec![2_000],
            calls: 100,
            busy_sweep: 20_000,
            crash_sweep: 5_000,
        }
    } else {
        Plan {
            sizes: vec![10_000, 100_000, 1_000_000, 10_000_000],
            calls: 2_000,
            busy_sweep: 1_000_000,
            crash_sweep: 10_000_000,
        }
    };
    // SANDMILL_SCALE_SIZES=100000,1000000 runs other sizes.
    let mut plan = plan;
    if let Ok(sizes) = std::env::var("SANDMILL_SCALE_SIZES") {
        plan.sizes = sizes
            .split(',')
            .map(|s| s.trim().parse().expect("SANDMILL_SCALE_SIZES: integers"))
            .collect();
    }
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| ["scale", "latency", "crash"].contains(&a.as_str()))
        .collect();
    let part = |name: &str| parts.is_empty() || parts.iter().any(|p| p == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if part("scale") {
        scale_part(&runtime, &plan, quick);
    }
    if part("latency") {
        println!(
            "latency: {} sequential POST /v1/run of a stored noop module over one connection",
            plan.calls
        );
        runtime.block_on(embedded_latency(&plan));
        runtime.block_on(fleet_latency(&plan));
    }
    if part("crash") {
        println!("crash: SIGKILL of sandmill dev mid-sweep and a restart");
        runtime.block_on(crash(plan.crash_sweep));
    }
}

fn scale_part(runtime: &tokio::runtime::Runtime, plan: &Plan, quick: bool) {
    let bare = bare_rate(if quick { 2_000 } else { 20_000 });
    println!(
        "scale: count sweeps of noop tasks through sandmill dev ({WORKERS} worker threads); bare sandbox {bare:.0} calls/s on the same threads"
    );
    for &n in &plan.sizes {
        runtime.block_on(scale(n, bare));
    }
}
