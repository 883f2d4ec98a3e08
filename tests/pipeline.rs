//! Pipelines end to end, through the CLI and the HTTP API, embedded and on
//! a fleet of real processes: the example runs and its output is the sum
//! computed here; a graph with a cycle, an unknown step or a fan-out over
//! nothing is refused naming the step; a failing middle step blocks only
//! the steps after it; a second submission is served from the result
//! cache; restarts, retries, resubmits and replays; a server killed
//! between a step and its readers plans them once when started again.

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
        .replace("WORDCOUNT", guests::WORDCOUNT)
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
        let http = sandmill_server::tls::default_client();
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

/// A response body as text.
async fn text(http: &reqwest::Client, base: &str, path: &str) -> String {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .text()
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
    text(http, base, &format!("/v1/tasks/{}/output", items[0]["id"])).await
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

/// The only task of a step, as the API shows it.
async fn only_task(http: &reqwest::Client, base: &str, step: &Value) -> Value {
    let tasks = get(http, base, &format!("/v1/jobs/{}/tasks", step["job_id"])).await;
    let items = tasks["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{tasks}");
    items[0].clone()
}

#[test]
fn a_chain_of_one_task_steps_is_planned_as_each_step_is_recorded() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let state = tempfile::tempdir().unwrap();
        chain_is_followed(&dev.http, &dev.base, state.path()).await;
    });
}

/// Runs a chain of three one-task steps: each step's task is created by
/// the transaction that recorded the step before (same time), reading its
/// output whole from the blob store.
async fn chain_is_followed(http: &reqwest::Client, base: &str, state: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let steps = r#"
[[step]]
name = "parse"
module = "CSV2JSON"
kind = "preprocess"
input = "sales.csv"
[[step]]
name = "clean"
module = "NORMALIZE"
kind = "preprocess"
inputs = ["step:parse"]
[[step]]
name = "again"
module = "NORMALIZE"
kind = "preprocess"
inputs = ["step:clean"]
"#;
    let file = pipeline(dir.path(), "chain", steps);
    let id = submit(state, base, &file, &["--no-cache"]);
    let job = finish(http, base, id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
    let mut outputs = Vec::new();
    let mut last: Option<Value> = None;
    for name in ["parse", "clean", "again"] {
        let task = only_task(http, base, step(&graph, name)).await;
        let output = text(http, base, &format!("/v1/tasks/{}/output", task["id"])).await;
        assert!(output.contains("\"region\""), "{name}: {output}");
        if let Some(before) = &last {
            // Created by the transaction that recorded the step before.
            assert_eq!(
                task["created_at"], before["finished_at"],
                "{name}: {task} after {before}"
            );
            // It reads that step's output whole, from the blob store.
            let call = get(http, base, &format!("/v1/tasks/{}/call", task["id"])).await;
            let inputs = call["inputs"].as_array().unwrap();
            assert_eq!(inputs.len(), 1, "{call}");
            assert_eq!(inputs[0]["offset"], 0, "{call}");
            assert_eq!(inputs[0]["len"], Value::Null, "{call}");
            let blob = inputs[0]["blob"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:");
            assert_eq!(
                &text(http, base, &format!("/v1/blobs/{blob}")).await,
                outputs.last().unwrap(),
                "{name}"
            );
        }
        outputs.push(output);
        last = Some(task);
    }
    // Normalizing twice changes nothing.
    assert_eq!(outputs[1], outputs[2]);
}

/// Words as the wordcount guest cuts them: runs of letters.
fn count_words(text: &str, counts: &mut std::collections::BTreeMap<String, u64>) {
    for word in text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_owned()).or_default() += 1;
    }
}

#[test]
fn a_map_reduce_step_maps_each_output_it_reads_and_its_reduces_feed_the_next() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let state = tempfile::tempdir().unwrap();
        map_reduce_step(&dev.http, &dev.base, state.path()).await;
    });
}

/// A pipeline with a map-reduce step over a step's output and a file:
/// one map each, two reduces, their counts the words of what it read;
/// the step after it reads the reduces' outputs. A map-reduce step
/// without inputs is refused.
async fn map_reduce_step(http: &reqwest::Client, base: &str, state: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus/gettysburg.txt");
    std::fs::copy(&corpus, dir.path().join("gettysburg.txt")).unwrap();
    let steps = r#"
[[step]]
name = "parse"
module = "CSV2JSON"
kind = "preprocess"
input = "sales.csv"
[[step]]
name = "count"
module = "WORDCOUNT"
inputs = ["step:parse", "gettysburg.txt"]
mapreduce = { reducers = 2 }
[[step]]
name = "after"
module = "NOOP"
inputs = ["step:count"]
"#;
    let file = pipeline(dir.path(), "words", steps);
    let id = submit(state, base, &file, &[]);
    let job = finish(http, base, id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
    let count = step(&graph, "count");
    // Two maps (parse's output, the file), two reduces.
    assert_eq!(count["tasks"]["total"], 4, "{graph}");
    assert_eq!(count["tasks"]["succeeded"], 4, "{graph}");
    let detail = get(http, base, &format!("/v1/jobs/{}", count["job_id"])).await;
    assert_eq!(detail["mapreduce"]["maps"]["total"], 2, "{detail}");
    assert_eq!(detail["mapreduce"]["reduces"]["total"], 2, "{detail}");
    // The words of what it read, counted here.
    let parse = only_task(http, base, step(&graph, "parse")).await;
    let parsed = text(http, base, &format!("/v1/tasks/{}/output", parse["id"])).await;
    let mut expected = std::collections::BTreeMap::new();
    count_words(&parsed, &mut expected);
    count_words(&std::fs::read_to_string(&corpus).unwrap(), &mut expected);
    let mut counted = std::collections::BTreeMap::new();
    let tasks = tasks_of(http, base, count).await;
    for (_, _, output) in &tasks[2..] {
        for line in output.lines() {
            let (word, n) = line.split_once(' ').unwrap();
            assert!(
                counted
                    .insert(word.to_owned(), n.parse::<u64>().unwrap())
                    .is_none(),
                "{word} twice"
            );
        }
    }
    assert_eq!(counted, expected);
    // The step after it reads the two reduces' outputs, not the maps'.
    let after = only_task(http, base, step(&graph, "after")).await;
    let call = get(http, base, &format!("/v1/tasks/{}/call", after["id"])).await;
    let mut read = String::new();
    for part in call["inputs"].as_array().unwrap() {
        let blob = part["blob"].as_str().unwrap().trim_start_matches("sha256:");
        let bytes = text(http, base, &format!("/v1/blobs/{blob}")).await;
        let offset = part["offset"].as_u64().unwrap() as usize;
        let len = part["len"]
            .as_u64()
            .map_or(bytes.len() - offset, |l| l as usize);
        read.push_str(&bytes[offset..offset + len]);
    }
    let reduced: String = tasks[2..].iter().map(|(_, _, o)| o.as_str()).collect();
    assert_eq!(read, reduced);
    // A map-reduce step that fans out by line, or has no input, is refused.
    let bad = pipeline(
        dir.path(),
        "bad",
        "[[step]]\nname = \"count\"\nmodule = \"WORDCOUNT\"\nmapreduce = { reducers = 1 }\n",
    );
    let out = support::output_within(
        sandmill(state).args(["--server", base, "submit", bad.to_str().unwrap()]),
        LIMIT,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step.count.inputs") && stderr.contains("needs inputs"),
        "{stderr}"
    );
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

        // The CLI on the pipeline and on its step: `failed` lists the
        // step's failures (naming it), `status --graph` each step's job.
        let cli = |args: &[&str]| {
            let mut all = vec!["--server", dev.base.as_str()];
            all.extend_from_slice(args);
            support::output_within(sandmill(state.path()).args(&all), LIMIT)
        };
        let id_text = id.to_string();
        let failed = cli(&["failed", &id_text]);
        let listed = ok(&failed);
        let said = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(listed.lines().count(), 2, "{listed}");
        assert!(
            listed.lines().all(|l| l.starts_with("step score: task ")),
            "{listed}"
        );
        assert!(said.contains("2 task(s) of pipeline"), "{said}");
        let score_job = score["job_id"].as_i64().unwrap().to_string();
        let of_step = ok(&cli(&["failed", &score_job]));
        assert_eq!(of_step.lines().count(), 2, "{of_step}");
        let csv = ok(&cli(&["failed", &score_job, "--csv"]));
        assert_eq!(csv.lines().count(), 3, "a header and two rows: {csv}");
        let refused = cli(&["failed", &id_text, "--csv"]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("STEP_JOB --csv"));
        let drawn = ok(&cli(&["status", &id_text, "--graph"]));
        assert!(drawn.contains(&format!("[job {score_job}]")), "{drawn}");
        // watch of the ended pipeline: its steps' counts, exit 2.
        let watched = cli(&["watch", &id_text]);
        assert_eq!(watched.status.code(), Some(2));
        let said = String::from_utf8_lossy(&watched.stderr);
        assert!(said.contains(&format!("job {id} failed: ")), "{said}");
        assert!(
            said.contains("2 failed") && !said.contains("no tasks"),
            "{said}"
        );
        // fetch writes each step's outputs in a folder of its own, with
        // its index.csv.
        let out = tempfile::tempdir().unwrap();
        let fetched = cli(&["fetch", &id_text, "-o", out.path().to_str().unwrap()]);
        ok(&fetched);
        for name in ["parse", "score", "copy"] {
            let index = std::fs::read_to_string(out.path().join(name).join("index.csv")).unwrap();
            assert!(
                index.starts_with("part,task_id,seq,params\n"),
                "{name}: {index}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(out.path().join("copy").join("part-00000")).unwrap(),
            copied
        );
        // score's two failures wrote no part; total was never planned.
        let scored = std::fs::read_dir(out.path().join("score")).unwrap().count();
        assert_eq!(scored, 6 + 1, "six parts and the index");
        assert_eq!(
            std::fs::read_dir(out.path().join("total")).unwrap().count(),
            1
        );

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
        let http = sandmill_server::tls::default_client();
        let fleet = |args: &[&str]| -> support::Killed {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
            command
                .args(args)
                .arg("--nats")
                .arg(nats.url_for(args))
                .arg("--cache-dir")
                .arg(cache.path());
            support::Killed::spawn(quiet(&mut command))
        };
        let listen = format!("127.0.0.1:{port}");
        let _serve = fleet(&["serve", "--auth", "open", "--database", &database, "--listen", &listen]);
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

        // A step needing a label no worker offers fails once it waited too
        // long, blocking total; once a worker offering it joins, a retry
        // runs it and what it blocked.
        let dir = tempfile::tempdir().unwrap();
        let steps = sales_steps("{ weight = 3 }").replace(
            "params = { weight = 3 }",
            "params = { weight = 3 }\nlabels = { zone = \"b\" }\nlimits = { queue_timeout = \"2s\", timeout = \"10s\" }",
        );
        let file = pipeline(dir.path(), "zoned", &steps);
        let id = submit(state.path(), &base, &file, &[]);
        let job = finish(&http, &base, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        let graph = get(&http, &base, &format!("/v1/jobs/{id}/graph")).await;
        assert_eq!(step(&graph, "score")["tasks"]["failed"], 8, "{graph}");
        assert_eq!(step(&graph, "total")["status"], "blocked", "{graph}");
        let _zoned = fleet(&["worker", "--id", "w3", "--labels", "zone=b"]);
        let out = ok(&support::output_within(
            sandmill(state.path()).args(["--server", &base, "retry", &id.to_string()]),
            LIMIT,
        ));
        assert!(out.contains("8 task(s) and 1 step(s) run again"), "{out}");
        let job = finish(&http, &base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(&http, &base, &format!("/v1/jobs/{id}/graph")).await;
        let total = step_output(&http, &base, step(&graph, "total")).await;
        assert!(total.ends_with(&format!("total\t{}\n", 3.0 * 287.5)), "{total}");
        // parse ran once: the retry left what succeeded alone.
        let parse = tasks_of(&http, &base, step(&graph, "parse")).await;
        let detail = get(&http, &base, &format!("/v1/tasks/{}", parse[0].0)).await;
        assert_eq!(detail["attempts"].as_array().unwrap().len(), 1, "{detail}");
        assert_eq!(detail["task"]["restart_of"], Value::Null, "{detail}");

        // The server killed (SIGKILL) after a step succeeded and before
        // what reads it was planned: started again, it plans them, and
        // every task runs once.
        drop(_serve);
        let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
        command
            .args(["serve", "--auth", "open", "--database", &database, "--listen", &listen])
            .arg("--nats")
            .arg(nats.url())
            .arg("--cache-dir")
            .arg(cache.path())
            .stdout(Stdio::null());
        let (mut serve, paused) = start_paused(&mut command);
        support::wait_ready(&http, &base).await;
        let id = submit(state.path(), &base, &example("sales.toml"), &["--no-cache"]);
        paused.recv_timeout(LIMIT).expect("the fault was never hit");
        serve.kill();
        let _serve = fleet(&["serve", "--auth", "open", "--database", &database, "--listen", &listen]);
        support::wait_ready(&http, &base).await;
        let job = finish(&http, &base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        ran_once(&http, &base, id).await;
        chain_is_followed(&http, &base, state.path()).await;
        map_reduce_step(&http, &base, state.path()).await;
        drop(pg);
    });
}

/// Submits a job file to a server through the CLI; returns its id.
fn submit(state: &Path, base: &str, file: &Path, extra: &[&str]) -> i64 {
    ok(&support::output_within(
        sandmill(state)
            .args(["--server", base, "submit", file.to_str().unwrap()])
            .args(extra),
        LIMIT,
    ))
    .trim()
    .parse()
    .unwrap()
}

/// Every task of a job (one page): its id, state and output.
async fn tasks_of(http: &reqwest::Client, base: &str, job: &Value) -> Vec<(i64, String, String)> {
    let tasks = get(
        http,
        base,
        &format!(
            "/v1/jobs/{}/tasks",
            job["job_id"].as_i64().or(job["id"].as_i64()).unwrap()
        ),
    )
    .await;
    let mut out = Vec::new();
    for task in tasks["items"].as_array().unwrap() {
        let id = task["id"].as_i64().unwrap();
        let output = text(http, base, &format!("/v1/tasks/{id}/output")).await;
        out.push((id, task["state"].as_str().unwrap().to_owned(), output));
    }
    out
}

#[test]
fn a_pipeline_submitted_again_takes_its_cached_outputs_unless_told_not_to() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = pipeline(dir.path(), "sales", &sales_steps("{}"));
        let first = finish(http, base, submit(state.path(), base, &file, &[])).await;
        assert_eq!(first["status"], "succeeded", "{first}");
        assert_eq!(first["tasks"]["cached"], 0, "{first}");

        // The same code on the same inputs: nothing runs again.
        let id = submit(state.path(), base, &file, &[]);
        let again = finish(http, base, id).await;
        assert_eq!(again["status"], "succeeded", "{again}");
        assert_eq!(again["tasks"]["cached"], 10, "{again}");
        assert_eq!(again["tasks"]["succeeded"], 10, "{again}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        for name in ["parse", "score", "total"] {
            let step = step(&graph, name);
            assert_eq!(step["tasks"]["cached"], step["tasks"]["total"], "{graph}");
        }
        assert_eq!(
            step_output(http, base, step(&graph, "total")).await,
            expected_sales()
        );
        for (task, state, _) in tasks_of(http, base, step(&graph, "score")).await {
            assert_eq!(state, "cached");
            // Zero executions: no attempt, so no log.
            let logs = text(http, base, &format!("/v1/tasks/{task}/logs")).await;
            assert_eq!(logs, "", "task {task}");
        }

        // --no-cache runs everything again, to the same result.
        let id = submit(state.path(), base, &file, &["--no-cache"]);
        let fresh = finish(http, base, id).await;
        assert_eq!(fresh["status"], "succeeded", "{fresh}");
        assert_eq!(fresh["tasks"]["cached"], 0, "{fresh}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        assert_eq!(
            step_output(http, base, step(&graph, "total")).await,
            expected_sales()
        );

        // Other params for one step: it and what reads it run; the step
        // before it is cached (under another job name).
        let weighted = pipeline(dir.path(), "weighted", &sales_steps("{ weight = 2 }"));
        let id = submit(state.path(), base, &weighted, &[]);
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        assert_eq!(step(&graph, "parse")["tasks"]["cached"], 1, "{graph}");
        assert_eq!(step(&graph, "score")["tasks"]["cached"], 0, "{graph}");
        assert_eq!(step(&graph, "total")["tasks"]["cached"], 0, "{graph}");
        let total = step_output(http, base, step(&graph, "total")).await;
        assert!(
            total.ends_with(&format!("total\t{}\n", 2.0 * 287.5)),
            "{total}"
        );
    });
}

#[test]
fn a_guests_seed_follows_its_cache_key_and_real_randomness_is_never_cached() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sweep = |name: &str, grants: &str| {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &path,
                format!(
                    "name = \"{name}\"\n[sweep]\nmodule = \"{}\"\ncount = 2\n{grants}",
                    guests::HOSTILE_NONDETERMINISM
                ),
            )
            .unwrap();
            path
        };
        let fixed = sweep("fixed", "");
        let run = |extra: &'static [&'static str], file: PathBuf| {
            let state = state.path().to_owned();
            async move {
                let id = submit(&state, base, &file, extra);
                let job = finish(http, base, id).await;
                assert_eq!(job["status"], "succeeded", "{job}");
                let tasks = tasks_of(http, base, &job).await;
                (job, tasks)
            }
        };
        let (_, first) = run(&[], fixed.clone()).await;
        assert_eq!(first.len(), 2);
        // Two tasks of a sweep see two seeds.
        assert_ne!(first[0].2, first[1].2);
        // Run again without the cache: the same seeds, so the same bytes.
        let (job, fresh) = run(&["--no-cache"], fixed.clone()).await;
        assert_eq!(job["tasks"]["cached"], 0, "{job}");
        let outputs = |tasks: &[(i64, String, String)]| -> Vec<String> {
            tasks.iter().map(|t| t.2.clone()).collect()
        };
        assert_eq!(outputs(&fresh), outputs(&first));
        assert!(fresh.iter().all(|t| t.1 == "succeeded"), "{fresh:?}");
        // With the cache: taken from it.
        let (job, cached) = run(&[], fixed).await;
        assert_eq!(job["tasks"]["cached"], 2, "{job}");
        assert_eq!(outputs(&cached), outputs(&first));

        // Granted the real clock and randomness: never cached, and each
        // run sees other values.
        let real = sweep("real", "[grants]\nallow = [\"clock\", \"random\"]\n");
        let (_, one) = run(&[], real.clone()).await;
        let (job, two) = run(&[], real).await;
        assert_eq!(job["tasks"]["cached"], 0, "{job}");
        assert!(two.iter().all(|t| t.1 == "succeeded"), "{two:?}");
        assert_ne!(outputs(&one), outputs(&two));
    });
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[test]
fn restarts_replace_one_run_and_with_downstream_what_reads_it() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `copy` reads parse too: a branch beside score and total.
        let steps = format!(
            "{}\n[[step]]\nname = \"copy\"\nmodule = \"NOOP\"\ninputs = [\"step:parse\"]\n",
            sales_steps("{}")
        );
        let file = pipeline(dir.path(), "sales", &steps);
        let id = submit(state.path(), base, &file, &["--no-cache"]);
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let scores = tasks_of(http, base, step(&graph, "score")).await;
        let totals = tasks_of(http, base, step(&graph, "total")).await;
        let (old, _, old_output) = scores[3].clone();

        // Two restarts of one task at once make one new run.
        let path = format!("/v1/tasks/{old}/restart");
        let (a, b) = tokio::join!(
            post(http, base, &path, json!({})),
            post(http, base, &path, json!({}))
        );
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
        let new = a.1["task"]["id"].as_i64().unwrap();
        assert_eq!(b.1["task"]["id"], new, "{a:?} {b:?}");
        assert_eq!(a.1["task"]["restart_of"], old, "{a:?}");
        assert_eq!(a.1["task"]["seq"], 3, "{a:?}");
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let old_view = get(http, base, &format!("/v1/tasks/{old}")).await;
        assert_eq!(old_view["task"]["replaced_by"], new, "{old_view}");
        assert_eq!(old_view["task"]["state"], "succeeded", "{old_view}");
        let new_view = get(http, base, &format!("/v1/tasks/{new}")).await;
        assert_eq!(new_view["task"]["state"], "succeeded", "{new_view}");
        assert_eq!(
            new_view["attempts"].as_array().unwrap().len(),
            1,
            "{new_view}"
        );
        // The new run is listed at its place; the old stays readable.
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let now = tasks_of(http, base, step(&graph, "score")).await;
        assert_eq!(now.len(), 8);
        assert_eq!(now[3].0, new);
        assert_eq!(now[3].2, old_output);
        // Without --downstream, what reads it keeps its run.
        assert_eq!(tasks_of(http, base, step(&graph, "total")).await, totals);
        // `sandmill task` shows the links.
        let shown = ok(&support::output_within(
            sandmill(state.path()).args(["--server", base, "task", &new.to_string()]),
            LIMIT,
        ));
        assert!(
            shown.contains(&format!("restart of: task {old}")),
            "{shown}"
        );

        // With --downstream: that task again, and every step after it
        // (total) planned again; the step before, the branch beside, and
        // the step's other tasks are left alone.
        let other = now[5].0;
        let (status, body) = post(
            http,
            base,
            &format!("/v1/tasks/{new}/restart"),
            json!({"downstream": true}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let newer = body["task"]["id"].as_i64().unwrap();
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let retotaled = tasks_of(http, base, step(&graph, "total")).await;
        assert_eq!(retotaled.len(), 1);
        assert_ne!(retotaled[0].0, totals[0].0);
        assert_eq!(retotaled[0].2, expected_sales());
        let replaced = get(http, base, &format!("/v1/tasks/{}", totals[0].0)).await;
        assert_eq!(replaced["task"]["replaced_by"], newer, "{replaced}");
        for (name, task) in [("parse", 0), ("copy", 0), ("score", 5)] {
            let tasks = tasks_of(http, base, step(&graph, name)).await;
            let detail = get(http, base, &format!("/v1/tasks/{}", tasks[task].0)).await;
            assert_eq!(
                detail["task"]["restart_of"],
                Value::Null,
                "{name}: {detail}"
            );
            assert_eq!(
                detail["attempts"].as_array().unwrap().len(),
                1,
                "{name}: {detail}"
            );
        }
        assert_eq!(
            tasks_of(http, base, step(&graph, "score")).await[5].0,
            other
        );
        let now = tasks_of(http, base, step(&graph, "score")).await;
        let new = newer;

        // With --downstream, through the CLI: parse runs again, and score,
        // total and copy are planned again from its new output.
        let parse = tasks_of(http, base, step(&graph, "parse")).await[0].0;
        let out = ok(&support::output_within(
            sandmill(state.path()).args([
                "--server",
                base,
                "restart",
                &parse.to_string(),
                "--downstream",
            ]),
            LIMIT,
        ));
        let parse_run: i64 = out.trim().parse().unwrap();
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let rescored = tasks_of(http, base, step(&graph, "score")).await;
        assert_eq!(rescored.len(), 8);
        assert!(
            rescored.iter().all(|t| !now.iter().any(|o| o.0 == t.0)),
            "{rescored:?}"
        );
        let replaced = get(http, base, &format!("/v1/tasks/{new}")).await;
        assert_eq!(replaced["task"]["replaced_by"], parse_run, "{replaced}");
        assert_eq!(
            step_output(http, base, step(&graph, "total")).await,
            expected_sales()
        );
        // A restart of a replaced task names the run that replaced it.
        let (status, body) = post(http, base, &format!("/v1/tasks/{new}/restart"), json!({})).await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("task {parse_run}")),
            "{body}"
        );
        let (status, _) = post(http, base, "/v1/tasks/999999/restart", json!({})).await;
        assert_eq!(status, 404);
        let (status, body) = post(
            http,
            base,
            &format!("/v1/tasks/{parse_run}/restart"),
            json!({"down": true}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
    });
}

/// The example with score failing on the east records, run to its end
/// on `dev`: the CLI's state folder and the job.
async fn failing(dev: &Dev) -> (tempfile::TempDir, i64) {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let steps = sales_steps("{ fail_region = \"east\" }");
    let file = pipeline(dir.path(), "failing", &steps);
    let id = submit(state.path(), &dev.base, &file, &[]);
    let job = finish(&dev.http, &dev.base, id).await;
    assert_eq!(job["status"], "failed", "{job}");
    (state, id)
}

#[test]
fn a_retry_runs_failed_tasks_again_and_plans_blocked_steps_again() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let (state, id) = failing(&dev).await;
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let failed: Vec<i64> = tasks_of(http, base, step(&graph, "score"))
            .await
            .into_iter()
            .filter(|t| t.1 == "failed")
            .map(|t| t.0)
            .collect();
        assert_eq!(failed.len(), 2);
        let out = ok(&support::output_within(
            sandmill(state.path()).args(["--server", base, "retry", &id.to_string()]),
            LIMIT,
        ));
        assert!(out.contains("2 task(s) and 1 step(s) run again"), "{out}");
        // The failure is in the data: the new runs fail the same way, and
        // total is blocked again.
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["tasks"]["failed"], 2, "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        assert_eq!(step(&graph, "total")["status"], "blocked", "{graph}");
        let score_job = step(&graph, "score")["job_id"].as_i64().unwrap();
        let tasks = get(
            http,
            base,
            &format!("/v1/jobs/{score_job}/tasks?state=failed"),
        )
        .await;
        let reruns: Vec<i64> = tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["restart_of"].as_i64().unwrap())
            .collect();
        assert_eq!(reruns, failed, "{tasks}");
        // A map-reduce job cannot be retried task by task; nor can what
        // does not exist.
        let (status, _) = post(http, base, "/v1/jobs/999999/retry", json!({})).await;
        assert_eq!(status, 404);
    });
}

#[test]
fn failed_rows_come_back_as_their_csv_and_resubmit_with_new_limits() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("record.json"),
            r#"{"region":"east","amount":2,"quantity":3}"#,
        )
        .unwrap();
        // Columns in an order that is not alphabetical.
        std::fs::write(
            dir.path().join("rows.csv"),
            "zone,weight,fail_region\nz1,1,west\nz2,2,east\nz3,3,north\nz4,4,east\n",
        )
        .unwrap();
        let file = dir.path().join("sweep.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"rows\"\n[sweep]\nmodule = \"{}\"\ninput = \"record.json\"\nparams = \"rows.csv\"\n",
                guests::SCORE
            ),
        )
        .unwrap();
        let id = submit(state.path(), base, &file, &[]);
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["tasks"]["failed"], 2, "{job}");
        let csv = ok(&support::output_within(
            sandmill(state.path()).args(["--server", base, "failed", &id.to_string(), "--csv"]),
            LIMIT,
        ));
        assert_eq!(csv, "zone,weight,fail_region\nz2,2,east\nz4,4,east\n");
        let lines = ok(&support::output_within(
            sandmill(state.path()).args(["--server", base, "failed", &id.to_string()]),
            LIMIT,
        ));
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(lines.contains("region east is refused"), "{lines}");

        // The failed rows again, as a new job with other limits.
        let again: i64 = ok(&support::output_within(
            sandmill(state.path()).args([
                "--server",
                base,
                "resubmit",
                &id.to_string(),
                "--failed",
                "--memory",
                "64MiB",
                "--timeout",
                "20s",
            ]),
            LIMIT,
        ))
        .trim()
        .parse()
        .unwrap();
        let job = finish(http, base, again).await;
        assert_eq!(job["resubmit_of"], id, "{job}");
        assert_eq!(job["tasks"]["total"], 2, "{job}");
        assert_eq!(job["limits"]["memory"], "64MiB", "{job}");
        assert_eq!(job["limits"]["timeout"], "20s", "{job}");
        let tasks = get(http, base, &format!("/v1/jobs/{again}/tasks")).await;
        let zones: Vec<&str> = tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["params"]["zone"].as_str().unwrap())
            .collect();
        assert_eq!(zones, ["z2", "z4"], "{tasks}");
        // The CSV round-trips: a sweep over it has the same tasks.
        std::fs::write(dir.path().join("failed.csv"), &csv).unwrap();
        let from_csv = dir.path().join("from-csv.toml");
        std::fs::write(
            &from_csv,
            std::fs::read_to_string(&file).unwrap().replace("rows.csv", "failed.csv"),
        )
        .unwrap();
        let round = finish(http, base, submit(state.path(), base, &from_csv, &["--no-cache"])).await;
        let params = |tasks: &Value| -> Vec<Value> {
            tasks["items"].as_array().unwrap().iter().map(|t| t["params"].clone()).collect()
        };
        let round_tasks = get(http, base, &format!("/v1/jobs/{}/tasks", round["id"])).await;
        assert_eq!(params(&round_tasks), params(&tasks));
        // Bad limits are refused, and change nothing.
        let (status, body) = post(
            http,
            base,
            &format!("/v1/jobs/{id}/resubmit"),
            json!({"limits": {"memory": "lots"}}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["field"], "limits.memory", "{body}");

        // A count sweep resubmitted whole keeps each task's seed.
        let random = dir.path().join("random.toml");
        std::fs::write(
            &random,
            format!(
                "name = \"seeds\"\ncache = false\n[sweep]\nmodule = \"{}\"\ncount = 3\n",
                guests::HOSTILE_NONDETERMINISM
            ),
        )
        .unwrap();
        let first = finish(http, base, submit(state.path(), base, &random, &[])).await;
        let again: i64 = ok(&support::output_within(
            sandmill(state.path()).args(["--server", base, "resubmit", &first["id"].to_string()]),
            LIMIT,
        ))
        .trim()
        .parse()
        .unwrap();
        let second = finish(http, base, again).await;
        let outputs = |tasks: Vec<(i64, String, String)>| -> Vec<String> {
            tasks.into_iter().map(|t| t.2).collect()
        };
        let before = outputs(tasks_of(http, base, &first).await);
        assert_eq!(before.len(), 3);
        assert_eq!(outputs(tasks_of(http, base, &second).await), before);
    });
}

#[test]
fn replay_reproduces_a_recorded_attempt_here() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let (state, id) = failing(&dev).await;
        let dir = tempfile::tempdir().unwrap();
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let scores = tasks_of(http, base, step(&graph, "score")).await;
        let replay = |task: i64| {
            support::output_within(
                sandmill(state.path()).args(["--server", base, "replay", &task.to_string()]),
                LIMIT,
            )
        };
        // A failure: the same classified error, and exit code 2.
        let failed = scores.iter().find(|t| t.1 == "failed").unwrap();
        let out = replay(failed.0);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr
                .contains("error[guest-error]: guest error: region east is refused by fail_region"),
            "{stderr}"
        );
        assert!(
            stderr.contains("reproduces what was recorded (failed [guest-error])"),
            "{stderr}"
        );
        // A success (read through its preprocessor and its slice of the
        // step before): the same bytes.
        let succeeded = scores.iter().find(|t| t.1 == "succeeded").unwrap();
        let out = replay(succeeded.0);
        assert_eq!(ok(&out), succeeded.2);
        // A hostile guest's out-of-memory, at its recorded limit.
        let bomb = dir.path().join("bomb.toml");
        std::fs::write(
            &bomb,
            format!(
                "name = \"bomb\"\n[task]\nmodule = \"{}\"\n[limits]\nmemory = \"16MiB\"\n",
                guests::HOSTILE_MEMBOMB
            ),
        )
        .unwrap();
        let job = finish(http, base, submit(state.path(), base, &bomb, &[])).await;
        let task = tasks_of(http, base, &job).await[0].0;
        let out = replay(task);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error[out-of-memory]"), "{stderr}");
        assert!(stderr.contains("reproduces what was recorded"), "{stderr}");
        // No such attempt.
        let out = support::output_within(
            sandmill(state.path()).args([
                "--server",
                base,
                "replay",
                &task.to_string(),
                "--attempt",
                "7",
            ]),
            LIMIT,
        );
        assert_ne!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("attempt 7"),
            "{out:?}"
        );
    });
}

/// The fault that leaves a succeeded step's readers unplanned.
const PAUSE: &str = "SANDMILL_FAULT_PAUSE_BEFORE_PLANNING";

/// Starts `command` with the fault set and returns it once it says it
/// stopped after a step's success (its stderr is read to that line).
fn start_paused(command: &mut Command) -> (support::Killed, std::sync::mpsc::Receiver<()>) {
    use std::io::BufRead;
    let mut child = command
        .env(PAUSE, "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the process");
    let stderr = child.stderr.take().unwrap();
    let (paused, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("fault injected") {
                let _ = paused.send(());
            }
        }
    });
    (support::Killed(child), wait)
}

/// Each task of every step ran once: one attempt each, and as many tasks
/// as the example has.
async fn ran_once(http: &reqwest::Client, base: &str, id: i64) {
    let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
    for (name, n) in [("parse", 1), ("score", 8), ("total", 1)] {
        let tasks = tasks_of(http, base, step(&graph, name)).await;
        assert_eq!(tasks.len(), n, "{name}: {graph}");
        for (task, state, _) in tasks {
            assert_eq!(state, "succeeded", "{name}");
            let detail = get(http, base, &format!("/v1/tasks/{task}")).await;
            assert_eq!(detail["attempts"].as_array().unwrap().len(), 1, "{detail}");
        }
    }
    assert_eq!(
        step_output(http, base, step(&graph, "total")).await,
        expected_sales()
    );
}

#[test]
fn a_server_killed_between_a_step_and_its_readers_plans_them_once_embedded() {
    runtime().block_on(async {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        let (mut dev, paused) = start_paused(&mut support::dev_command(data.path(), port));
        support::wait_ready(&http, &base).await;
        let id = submit(state.path(), &base, &example("sales.toml"), &["--no-cache"]);
        paused.recv_timeout(LIMIT).expect("the fault was never hit");
        dev.kill();
        let graph = get_after_restart(data.path(), port, &http, &base, id).await;
        assert_eq!(step(&graph.1, "parse")["status"], "succeeded");
        drop(graph.0);
    });
}

/// Starts `sandmill dev` again on the same data, waits for the job, and
/// checks every task ran once; returns the server and the graph.
async fn get_after_restart(
    data: &Path,
    port: u16,
    http: &reqwest::Client,
    base: &str,
    id: i64,
) -> (support::Killed, Value) {
    let dev = support::Killed::spawn(&mut support::dev_command(data, port));
    support::wait_ready(http, base).await;
    let job = finish(http, base, id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    ran_once(http, base, id).await;
    (dev, get(http, base, &format!("/v1/jobs/{id}/graph")).await)
}

#[test]
fn a_steps_retries_wait_out_their_backoff_and_run_out() {
    runtime().block_on(async {
        let dev = Dev::start().await;
        let (http, base) = (&dev.http, dev.base.as_str());
        let state = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let steps = |retries: &str| {
            sales_steps("{ hang_first_attempt = true }").replace(
                "params = { hang_first_attempt = true }",
                &format!(
                    "params = {{ hang_first_attempt = true }}\nretries = {retries}\nlimits = {{ timeout = \"300ms\" }}"
                ),
            )
        };
        // One retry, a second apart: every score task succeeds on its
        // second attempt, which starts no sooner than the backoff.
        let file = pipeline(dir.path(), "retried", &steps("{ count = 1, backoff = \"1s\" }"));
        let id = submit(state.path(), base, &file, &[]);
        let job = finish(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let graph = get(http, base, &format!("/v1/jobs/{id}/graph")).await;
        let at = |text: &Value| humantime::parse_rfc3339(text.as_str().unwrap()).unwrap();
        for (task, _, _) in tasks_of(http, base, step(&graph, "score")).await {
            let detail = get(http, base, &format!("/v1/tasks/{task}")).await;
            let attempts = detail["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 2, "{detail}");
            assert_eq!(attempts[0]["reason"], "timeout", "{detail}");
            let waited = at(&attempts[1]["started_at"])
                .duration_since(at(&attempts[0]["finished_at"]))
                .unwrap();
            assert!(waited >= Duration::from_millis(1000), "{waited:?}: {detail}");
        }
        // No retry: the first attempt's timeout is final.
        let file = pipeline(dir.path(), "unretried", &steps("{ count = 0 }"));
        let job = finish(http, base, submit(state.path(), base, &file, &["--no-cache"])).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["tasks"]["failed"], 8, "{job}");
        // A backoff past its bound is refused.
        let file = pipeline(dir.path(), "slow", &steps("{ count = 1, backoff = \"2h\" }"));
        let out = support::output_within(
            sandmill(state.path()).args(["--server", base, "submit", file.to_str().unwrap()]),
            LIMIT,
        );
        assert_ne!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("step.score.retries.backoff: is more than 1h"),
            "{out:?}"
        );
    });
}
