//! Pipelines end to end, through the CLI and the HTTP API, embedded and on
//! a fleet of real processes: the example runs and its output is the sum
//! computed here; a graph with a cycle, an unknown step or a fan-out over
//! nothing is refused naming the step; a failing middle step blocks only
//! the steps after it.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::{ok, sandmill};

/// A command that ends on its own; killed (and the test failed) past this.
const LIMIT: Duration = Duration::from_secs(300);

/// The example's output, computed here from its CSV: per lower-cased,
/// trimmed region, the sum of amount × quantity, then the total.
fn expected_sales() -> String {
    let csv = std::fs::read_to_string(example("sales.csv")).unwrap();
    let mut sums = std::collections::BTreeMap::<String, f64>::new();
    let mut total = 0.0;
    for line in csv.lines().skip(1).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let score = fields[1].parse::<f64>().unwrap() * fields[2].parse::<f64>().unwrap();
        *sums.entry(fields[0].to_lowercase()).or_default() += score;
        total += score;
    }
    let mut out = String::new();
    for (region, sum) in sums {
        out.push_str(&format!("{region}\t{sum}\n"));
    }
    out.push_str(&format!("total\t{total}\n"));
    out
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pipeline")
        .join(name)
}

/// A pipeline file in `dir` reading the example's CSV.
fn pipeline(dir: &Path, name: &str, steps: &str) -> PathBuf {
    std::fs::copy(example("sales.csv"), dir.join("sales.csv")).unwrap();
    let text = format!("name = \"{name}\"\n{steps}\n[limits]\ntimeout = \"10s\"\n")
        .replace("CSV2JSON", guests::CSV2JSON)
        .replace("NORMALIZE", guests::NORMALIZE)
        .replace("SCORE", guests::SCORE)
        .replace("TOTAL", guests::TOTAL)
        .replace("NOOP", guests::NOOP);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The example's three steps; `score_params` are the scoring step's.
fn sales_steps(score_params: &str) -> String {
    format!(
        r#"
[[step]]
name = "parse"
module = "CSV2JSON"
kind = "preprocess"
input = "sales.csv"
[[step]]
name = "score"
module = "SCORE"
inputs = ["step:parse"]
for_each = "line"
preprocess = "NORMALIZE"
params = {score_params}
[[step]]
name = "total"
module = "TOTAL"
inputs = ["step:score"]
"#
    )
}

#[test]
fn the_example_pipeline_runs_embedded_and_its_total_is_right() {
    let state = tempfile::tempdir().unwrap();
    let out = support::output_within(
        sandmill(state.path()).args(["run", example("sales.toml").to_str().unwrap()]),
        LIMIT,
    );
    let stdout = ok(&out);
    assert_eq!(stdout, expected_sales());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let records = std::fs::read_to_string(example("sales.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .count();
    assert!(
        stderr.contains(&format!("step score succeeded: {records} task(s)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("step total succeeded: 1 task(s)"),
        "{stderr}"
    );
}

#[test]
fn bad_graphs_are_refused_in_one_line_naming_the_step() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cycle",
            r#"
[[step]]
name = "a"
module = "NOOP"
inputs = ["step:c"]
[[step]]
name = "b"
module = "NOOP"
inputs = ["step:a"]
[[step]]
name = "c"
module = "NOOP"
inputs = ["step:b"]
"#,
            "the steps form a cycle: ",
        ),
        (
            "unknown",
            "[[step]]\nname = \"a\"\nmodule = \"NOOP\"\ninputs = [\"step:nope\"]\n",
            "step.a.inputs: `step:nope` names no step of this job",
        ),
        (
            "fan-nothing",
            "[[step]]\nname = \"a\"\nmodule = \"NOOP\"\nfor_each = \"line\"\n",
            "step.a.for_each: fans out over nothing",
        ),
        (
            "kind",
            "[[step]]\nname = \"a\"\nmodule = \"NOOP\"\nkind = \"task\"\n[[step]]\nname = \"b\"\nmodule = \"NOOP\"\nkind = \"reduce\"\ninputs = [\"step:a\"]\n",
            "step.b.kind: a reduce reads records, and step `a` is a",
        ),
        (
            "export",
            "[[step]]\nname = \"a\"\nmodule = \"NOOP\"\npreprocess = \"SCORE\"\n",
            "step.a.preprocess: ",
        ),
    ];
    for (name, steps, said) in cases {
        let file = pipeline(dir.path(), name, steps);
        let out = support::output_within(
            sandmill(state.path()).args(["run", file.to_str().unwrap()]),
            LIMIT,
        );
        assert_ne!(out.status.code(), Some(0), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        if name == "cycle" {
            // Every step of the cycle is named, in the order they read.
            let cycle = stderr.split("cycle: ").nth(1).unwrap().trim();
            let steps: Vec<&str> = cycle.split(" → ").collect();
            assert_eq!(steps.len(), 4, "{stderr}");
            assert_eq!(steps.first(), steps.last());
            let mut named: Vec<&str> = steps[..3].to_vec();
            named.sort_unstable();
            assert_eq!(named, ["a", "b", "c"]);
        }
    }
}

/// A `sandmill dev` on a free port, killed on drop.
struct Dev {
    _dev: support::Killed,
    _data: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

impl Dev {
    async fn start() -> Dev {
        let data = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let dev = support::Killed::spawn(&mut support::dev_command(data.path(), port));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        support::wait_ready(&http, &base).await;
        Dev {
            _dev: dev,
            _data: data,
            base,
            http,
        }
    }
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the job until it ends.
async fn finish(http: &reqwest::Client, base: &str, id: i64) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let job = support::job(http, base, id).await;
        if job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The output of the only task of a step.
async fn step_output(http: &reqwest::Client, base: &str, step: &Value) -> String {
    let tasks = get(http, base, &format!("/v1/jobs/{}/tasks", step["job_id"])).await;
    let items = tasks["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{tasks}");
    http.get(format!("{base}/v1/tasks/{}/output", items[0]["id"]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn step<'a>(graph: &'a Value, name: &str) -> &'a Value {
    graph["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {graph}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_failing_middle_step_blocks_only_what_reads_it() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // score fails on the east records; `copy` reads parse too.
        let steps = format!(
            "{}\n[[step]]\nname = \"copy\"\nmodule = \"NOOP\"\ninputs = [\"step:parse\"]\n",
            sales_steps("{ fail_region = \"east\" }")
        );
        let file = pipeline(dir.path(), "blocked", &steps);
        let id: i64 = ok(&support::output_within(
            sandmill(state.path()).args(["--server", &dev.base, "submit", file.to_str().unwrap()]),
            LIMIT,
        ))
        .trim()
        .parse()
        .unwrap();
        let job = finish(&dev.http, &dev.base, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["kind"], "pipeline", "{job}");
        let graph = get(&dev.http, &dev.base, &format!("/v1/jobs/{id}/graph")).await;
        assert_eq!(step(&graph, "parse")["status"], "succeeded", "{graph}");
        assert_eq!(step(&graph, "copy")["status"], "succeeded", "{graph}");
        let score = step(&graph, "score");
        assert_eq!(score["status"], "failed", "{graph}");
        assert_eq!(score["tasks"]["failed"], 2, "{graph}");
        assert_eq!(score["tasks"]["succeeded"], 6, "{graph}");
        let total = step(&graph, "total");
        assert_eq!(total["status"], "blocked", "{graph}");
        assert_eq!(total["planned"], false, "{graph}");
        assert_eq!(total["tasks"]["total"], 0, "{graph}");
        let mut edges: Vec<(String, String)> = graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["from"].as_str().unwrap().to_owned(),
                    e["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        edges.sort();
        assert_eq!(
            edges,
            [("parse", "copy"), ("parse", "score"), ("score", "total")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // The independent branch read parse's whole output.
        let copied = step_output(&dev.http, &dev.base, step(&graph, "copy")).await;
        assert_eq!(copied.lines().count(), 8, "{copied}");
        assert!(copied.starts_with("{\"region\":\"North\""), "{copied}");
        // The job list shows the pipeline, not its steps; the job's counts
        // are its steps' sums.
        let list = get(&dev.http, &dev.base, "/v1/jobs").await;
        let ids: Vec<i64> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [id], "{list}");
        assert_eq!(job["tasks"]["failed"], 2, "{job}");
        assert_eq!(job["tasks"]["succeeded"], 6 + 1 + 1, "{job}");

        // Over HTTP, a cycle is a 400 naming its step.
        let response = dev
            .http
            .post(format!("{}/v1/jobs", dev.base))
            .json(&json!({
                "name": "loop",
                "step": [
                    {"name": "x", "module": "noop@1", "inputs": ["step:y"]},
                    {"name": "y", "module": "noop@1", "inputs": ["step:x"]},
                ]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("x → y → x")
                || body["message"].as_str().unwrap().contains("y → x → y"),
            "{body}"
        );
        assert!(
            body["field"].as_str().unwrap().starts_with("step."),
            "{body}"
        );
    });
}

/// Keeps a child's output quiet.
fn quiet(command: &mut Command) -> &mut Command {
    command.stdout(Stdio::null()).stderr(Stdio::null())
}

#[test]
fn the_example_pipeline_runs_on_a_fleet() {
    runtime().block_on(async {
        let pg = support::Postgres::start();
        let database = pg.database();
        let nats = support::Nats::start();
        let cache = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let fleet = |args: &[&str]| -> support::Killed {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
            command
                .args(args)
                .arg("--nats")
                .arg(nats.url())
                .arg("--cache-dir")
                .arg(cache.path());
            support::Killed::spawn(quiet(&mut command))
        };
        let listen = format!("127.0.0.1:{port}");
        let _serve = fleet(&["serve", "--database", &database, "--listen", &listen]);
        support::wait_ready(&http, &base).await;
        let _workers: Vec<support::Killed> = ["w1", "w2"]
            .iter()
            .map(|id| fleet(&["worker", "--id", id, "--concurrency", "1"]))
            .collect();
        let state = tempfile::tempdir().unwrap();
        let id: i64 = ok(&support::output_within(
            sandmill(state.path()).args([
                "--server",
                &base,
                "submit",
                example("sales.toml").to_str().unwrap(),
            ]),
            LIMIT,
        ))
        .trim()
        .parse()
        .unwrap();
        let job = finish(&http, &base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(&http, &base, &format!("/v1/jobs/{id}/graph")).await;
        for name in ["parse", "score", "total"] {
            assert_eq!(step(&graph, name)["status"], "succeeded", "{graph}");
        }
        assert_eq!(step(&graph, "score")["tasks"]["succeeded"], 8, "{graph}");
        let total = step_output(&http, &base, step(&graph, "total")).await;
        assert_eq!(total, expected_sales());
        drop(pg);
    });
}
