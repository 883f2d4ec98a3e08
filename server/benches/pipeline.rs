//! `cargo bench -p sandmill-server --bench pipeline`: the scheduling cost
//! of a pipeline step. One `sandmill run` (embedded: SQLite, the
//! in-process broker, two worker threads) of a chain of 1,000 `noop`
//! steps, each reading the one before, next to one of a 1,000-task `count`
//! sweep of the same module, in the same run: milliseconds per step and
//! per task, job accepted to job ended (as `run` reports it: after the
//! modules are uploaded). A chain's steps run one at a time (each step's
//! task is created in the transaction that records the step before); a
//! sweep's tasks run two at a time.
//!
//! Under `cargo test` (no `--bench`) it runs 20 of each as a smoke test.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandmill_test_artifacts as guests;

/// Runs a job file with `sandmill run`; the job's own time, as reported.
fn run(dir: &Path, name: &str, text: &str) -> Duration {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .args(["run", "--workers", "2"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(stderr.contains("succeeded"), "{name}: {stderr}");
    // `job N `name` succeeded: ... in 1.23s`
    let took = stderr
        .lines()
        .rev()
        .find_map(|l| l.rsplit_once(" in ").map(|(_, t)| t.trim().to_owned()))
        .unwrap();
    parse_debug_duration(&took)
}

/// `1.234567s`, `812.3ms`, `95µs` as `Debug` prints a `Duration`.
fn parse_debug_duration(text: &str) -> Duration {
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))
        .unwrap();
    let value: f64 = number.parse().unwrap();
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        other => panic!("unit {other} in {text}"),
    };
    Duration::from_secs_f64(seconds)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = if quick { 20 } else { 1_000 };
    let dir = tempfile::tempdir().unwrap();
    let mut chain = String::from("name = \"chain\"\ncache = false\n");
    for i in 0..n {
        chain.push_str(&format!(
            "[[step]]\nname = \"s{i}\"\nmodule = \"{}\"\n",
            guests::NOOP
        ));
        if i > 0 {
            chain.push_str(&format!("inputs = [\"step:s{}\"]\n", i - 1));
        }
    }
    let sweep = format!(
        "name = \"sweep\"\ncache = false\n[sweep]\nmodule = \"{}\"\ncount = {n}\n",
        guests::NOOP
    );
    // Alternate, twice each, so a noisy moment hits both.
    let mut chains = Vec::new();
    let mut sweeps = Vec::new();
    for _ in 0..2 {
        chains.push(run(dir.path(), "chain", &chain));
        sweeps.push(run(dir.path(), "sweep", &sweep));
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap();
    let per = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
    let (chain, sweep) = (best(&chains), best(&sweeps));
    println!(
        "pipeline: {n}-step chain of noop {:.2?} = {:.3} ms/step; {n}-task sweep {:.2?} = {:.3} ms/task; chain/sweep {:.1}x (best of 2 each)",
        chain,
        per(chain),
        sweep,
        per(sweep),
        chain.as_secs_f64() / sweep.as_secs_f64()
    );
}
