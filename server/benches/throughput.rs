//! `cargo bench -p sandmill-server`: tasks per second of a 10,000-task
//! `noop` sweep in embedded mode, end to end (accepted durably in SQLite,
//! published, run in the sandbox, every result recorded), next to the same
//! 10,000 calls straight through the sandbox on as many threads (no
//! database, no broker) measured in the same run.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sandmill_runtime::{Call, Sandbox, SandboxConfig};
use sandmill_server::embedded::{self, EmbeddedConfig};
use sandmill_server::jobfile::{JobFile, SweepSection};
use sandmill_server::model::JobStatus;
use sandmill_server::scheduler::{DEFAULT_TENANT, Owner};
use sandmill_test_artifacts as guests;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks: u64 = if quick { 500 } else { 10_000 };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let wasm = std::fs::read(guests::NOOP).expect("noop built");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Baseline: the sandbox alone, `workers` threads sharing the calls.
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let module = sandbox.load(&wasm).expect("load");
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|i| {
            let (sandbox, module) = (sandbox.clone(), module.clone());
            let share = tasks / workers as u64 + u64::from((i as u64) < tasks % workers as u64);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                rt.block_on(async {
                    for _ in 0..share {
                        let outcome = sandbox.call(&module, Call::task(Vec::new())).await;
                        assert!(outcome.result.is_ok());
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("baseline thread");
    }
    let bare = started.elapsed();

    // Embedded, end to end.
    let (accept, total) = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = EmbeddedConfig::new(dir.path());
        config.workers = workers;
        let instance = embedded::start(config).await.expect("embedded");
        let scheduler = instance.scheduler.clone();
        let hash = scheduler
            .upload_module(DEFAULT_TENANT, wasm.clone().into())
            .await
            .expect("upload")
            .hash;
        let job = JobFile {
            name: "bench".into(),
            sweep: Some(SweepSection {
                module: format!("sha256:{hash}"),
                count: Some(tasks),
                ..SweepSection::default()
            }),
            ..JobFile::default()
        };
        let started = Instant::now();
        let id = scheduler
            .submit(&Owner::local(), &job)
            .await
            .expect("submit");
        let accept = started.elapsed();
        let done = scheduler
            .wait(id, Duration::from_secs(600))
            .await
            .expect("wait");
        let total = started.elapsed();
        assert_eq!(done.status(), JobStatus::Succeeded);
        let counts = scheduler.store().counts(&done).await.expect("counts");
        assert_eq!(counts.succeeded, tasks as i64);
        instance.shutdown(Duration::from_secs(10)).await;
        (accept, total)
    });

    let rate = |d: Duration| tasks as f64 / d.as_secs_f64();
    println!("{tasks} noop tasks, {workers} workers:");
    println!(
        "  accept (one row; tasks are created as the window has room): {:>9.1} ms",
        accept.as_secs_f64() * 1e3
    );
    println!(
        "  embedded end to end (SQLite WAL, recorded): {:>9.0} tasks/s",
        rate(total)
    );
    println!(
        "  bare sandbox calls, same threads, no control plane: {:>9.0} tasks/s",
        rate(bare)
    );
    println!(
        "  ratio bare / embedded: {:.2}x",
        total.as_secs_f64() / bare.as_secs_f64()
    );
}
