//! Collecting blobs, as the embedded server and the fleet both must: a
//! blob no row names goes once its grace is over; every blob a kept or
//! running job names stays (inputs, outputs, logs, modules, a
//! map-reduce's runs).

use std::time::Duration;

use serde_json::{Value, json};

use sandmill_test_artifacts as guests;

use super::{get_json, job, submit_json, upload_module};

/// The mirror guest's input: it logs `log` and answers `output`.
fn mirrored(log: &[u8], output: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(log.len() + output.len() + 16);
    input.extend_from_slice(&(log.len() as u32).to_le_bytes());
    input.extend_from_slice(log);
    input.extend_from_slice(&0u32.to_le_bytes());
    input.extend_from_slice(&0u32.to_le_bytes());
    input.extend_from_slice(&(output.len() as u32).to_le_bytes());
    input.extend_from_slice(output);
    input
}

/// `bytes` uploaded as an input: its hash (without `sha256:`).
async fn upload_input(http: &reqwest::Client, base: &str, bytes: Vec<u8>) -> String {
    let (status, uploaded) =
        post_raw(http, base, "/v1/inputs", "application/octet-stream", bytes).await;
    assert_eq!(status, 200, "{uploaded}");
    uploaded["input"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned()
}

/// The hashes named in `text` (64 lowercase hex digits).
fn hashes_in(text: &str) -> Vec<String> {
    text.split(|c: char| !matches!(c, '0'..='9' | 'a'..='f'))
        .filter(|word| word.len() == 64)
        .map(str::to_owned)
        .collect()
}

/// The status of `GET path`.
pub async fn status_of(http: &reqwest::Client, base: &str, path: &str) -> u16 {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `POST path` with the raw `body` of `content_type`: the status and the
/// JSON answer (null if it is none).
pub async fn post_raw(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let response = http
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The job once it has ended.
async fn ended(http: &reqwest::Client, base: &str, id: i64) -> Value {
    for _ in 0..1200 {
        let job = job(http, base, id).await;
        if job["status"] != "running" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not end");
}

/// The tasks of a job (its first page).
async fn tasks(http: &reqwest::Client, base: &str, id: i64) -> Vec<Value> {
    let page = get_json(http, &format!("{base}/v1/jobs/{id}/tasks")).await;
    page["items"].as_array().unwrap().clone()
}

/// The bytes of `GET path`, which must answer 200.
async fn bytes_of(http: &reqwest::Client, base: &str, path: &str) -> Vec<u8> {
    let response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.bytes().await.unwrap().to_vec()
}

/// The scenario, on a server collecting blobs with `--blob-grace 1s`
/// and room for two tasks at once.
pub async fn unnamed_blobs_go_named_ones_stay(http: &reqwest::Client, base: &str) {
    let hash = sandmill_runtime::blob::hash;
    let mirror = upload_module(http, base, guests::HOSTILE_MIRROR).await;
    let looping = upload_module(http, base, guests::HOSTILE_LOOP).await;
    let words = upload_module(http, base, guests::WORDCOUNT).await;

    // Outputs and logs large enough to be blobs of their own.
    let blob = |tag: &str| -> Vec<u8> { tag.bytes().cycle().take(300 << 10).collect() };
    let (kept_log, kept_output) = (blob("kept log "), blob("kept output "));
    let (gone_log, gone_output) = (blob("gone log "), blob("gone output "));
    let kept_input = upload_input(http, base, mirrored(&kept_log, &kept_output)).await;
    let gone_input = upload_input(http, base, mirrored(&gone_log, &gone_output)).await;
    let orphan = upload_input(http, base, b"named by nothing".to_vec()).await;
    let running_input = upload_input(http, base, b"read by a running job".to_vec()).await;
    let text = upload_input(http, base, b"a b a c b a".to_vec()).await;
    let mirror_job = |input: &str| {
        json!({"name": "mirror", "task": {"module": mirror, "input": format!("sha256:{input}")},
               "limits": {"output": "1MiB", "log": "1MiB"}})
    };
    let running = submit_json(
        http,
        base,
        &json!({"name": "long", "max_attempts": 1, "limits": {"timeout": "120s"},
                "task": {"module": looping, "input": format!("sha256:{running_input}")}}),
    )
    .await;
    let kept = submit_json(http, base, &mirror_job(&kept_input)).await;
    let gone = submit_json(http, base, &mirror_job(&gone_input)).await;
    let counted = submit_json(
        http,
        base,
        &json!({"name": "words", "mapreduce": {"module": words, "inputs": [],
                "splits": [{"input": format!("sha256:{text}"), "name": "t"}], "reducers": 2}}),
    )
    .await;
    for id in [kept, gone, counted] {
        let job = ended(http, base, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let kept_task = tasks(http, base, kept).await[0]["id"].as_i64().unwrap();
    let words_tasks = tasks(http, base, counted).await;
    assert_eq!(words_tasks.len(), 3, "a map and two reduces");
    // The map's output is its run list: the runs the reduces read.
    let map = words_tasks[0]["id"].as_i64().unwrap();
    let runs = bytes_of(http, base, &format!("/v1/tasks/{map}/output")).await;
    let runs = hashes_in(&String::from_utf8_lossy(&runs));
    assert!(!runs.is_empty(), "the map names no run");
    let mut reduce_outputs = Vec::new();
    for task in &words_tasks[1..] {
        let path = format!("/v1/tasks/{}/output", task["id"]);
        reduce_outputs.push((path.clone(), bytes_of(http, base, &path).await));
    }
    let status = http
        .delete(format!("{base}/v1/jobs/{gone}"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");

    // The unnamed blob goes a second or two on; then one more collection.
    let mut waited = 0;
    while status_of(http, base, &format!("/v1/blobs/{orphan}")).await != 404 {
        waited += 1;
        assert!(waited < 300, "the unnamed blob was never collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The deleted job's input, output and log went with it.
    for (what, blob) in [
        ("input", gone_input.clone()),
        ("output", hash(&gone_output)),
        ("log", hash(&gone_log)),
    ] {
        let status = status_of(http, base, &format!("/v1/blobs/{blob}")).await;
        assert_eq!(status, 404, "the deleted job's {what}");
    }
    // What kept jobs name stays.
    let mut named = vec![
        ("kept input", kept_input.clone()),
        ("kept output", hash(&kept_output)),
        ("kept log", hash(&kept_log)),
        ("module", mirror.trim_start_matches("sha256:").to_owned()),
        ("running job's input", running_input.clone()),
        ("map-reduce's input", text.clone()),
    ];
    named.extend(runs.iter().map(|run| ("map-reduce's run", run.clone())));
    for (what, blob) in named {
        let status = status_of(http, base, &format!("/v1/blobs/{blob}")).await;
        assert_eq!(status, 200, "the {what} {blob}");
    }
    let output = bytes_of(http, base, &format!("/v1/tasks/{kept_task}/output")).await;
    assert!(output == kept_output, "the kept output changed");
    for (path, before) in reduce_outputs {
        assert_eq!(bytes_of(http, base, &path).await, before, "{path}");
    }
    // The running job runs on; the modules still run new jobs.
    assert_eq!(job(http, base, running).await["status"], "running");
    let fresh = upload_input(http, base, mirrored(b"log", b"fresh")).await;
    let again = submit_json(http, base, &mirror_job(&fresh)).await;
    let again = ended(http, base, again).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    let status = http
        .post(format!("{base}/v1/jobs/{running}/cancel"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}
