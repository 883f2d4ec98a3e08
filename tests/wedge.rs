//! Nothing wedges. Arbitrary bytes (every byte value, invalid UTF-8, sizes
//! up to each limit and past it) go through a guest's log, counter name,
//! error and output, and arbitrary text through its parameters, on SQLite,
//! on Postgres and on the fleet. After each case a plain job still
//! completes, and the case's task is recorded with its real outcome. And a
//! result the database refuses is set aside as its task's failure while
//! the rest of its batch is recorded.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sandmill_runtime::message::{MAX_COUNTER_NAME_BYTES, MAX_ERROR_BYTES, clip};
use sandmill_server::api::{self, ApiConfig};
use sandmill_server::embedded::{self, EmbeddedConfig};
use sandmill_server::store::Store;
use sandmill_server::store::types::safe_text;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

/// The log and output limits the cases run under (small, so a case can
/// pass them cheaply).
const LOG_LIMIT: usize = 64 << 10;
const OUTPUT_LIMIT: usize = 1 << 20;
/// The server's parameter limit (its default).
const PARAMS_LIMIT: usize = sandmill_server::scheduler::DEFAULT_MAX_PARAMS_BYTES;

/// What the mirror guest is told to do, and the parameters it gets.
#[derive(Clone, Debug)]
struct Case {
    log: Vec<u8>,
    counter: Vec<u8>,
    error: Vec<u8>,
    output: Vec<u8>,
    params: BTreeMap<String, String>,
}

impl Case {
    fn input(&self) -> Vec<u8> {
        let mut input = Vec::new();
        for part in [&self.log, &self.counter, &self.error, &self.output] {
            input.extend_from_slice(&(part.len() as u32).to_le_bytes());
            input.extend_from_slice(part);
        }
        input
    }

    /// The log as stored: the raw bytes, then the counter's line, cut at
    /// the limit with the sandbox's marker.
    fn expected_log(&self) -> Vec<u8> {
        let mut log = self.log.clone();
        if !self.counter.is_empty() {
            log.extend_from_slice(
                format!("[info] {}\n", String::from_utf8_lossy(&self.counter)).as_bytes(),
            );
        }
        if log.len() > LOG_LIMIT {
            log.truncate(LOG_LIMIT);
            log.extend_from_slice(
                format!("\n[sandmill] log truncated at {LOG_LIMIT} bytes\n").as_bytes(),
            );
        }
        log
    }

    /// The error as stored: the guest's text, bounded by the worker, made
    /// safe by the store.
    fn expected_error(&self) -> String {
        let mut error = format!("guest error: {}", String::from_utf8_lossy(&self.error));
        clip(&mut error, MAX_ERROR_BYTES);
        safe_text(&error, MAX_ERROR_BYTES)
    }

    fn expected_counter(&self) -> Option<String> {
        if self.counter.is_empty() {
            return None;
        }
        let mut name = String::from_utf8_lossy(&self.counter).into_owned();
        clip(&mut name, MAX_COUNTER_NAME_BYTES);
        Some(name)
    }
}

/// Bytes of any value, of a length drawn from small, medium and around
/// `limit` (below, at and above it).
fn bytes(limit: usize) -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        4 => 0usize..64,
        2 => 64usize..20_000,
        1 => (limit - 16)..(limit + 16),
    ];
    (length, any::<u64>()).prop_map(|(len, seed)| {
        // Every byte value, cheaply: a linear congruential walk.
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    })
}

/// Text of any characters (NUL and other controls included).
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

fn case() -> impl Strategy<Value = Case> {
    let params = prop_oneof![
        4 => prop::collection::btree_map(text(16), text(64), 0..4),
        1 => text(8).prop_map(|k| BTreeMap::from([(k, "p".repeat(PARAMS_LIMIT - 64))])),
    ];
    (
        bytes(LOG_LIMIT),
        prop_oneof![2 => bytes(64), 1 => bytes(MAX_COUNTER_NAME_BYTES * 4)],
        prop_oneof![2 => Just(Vec::new()), 1 => bytes(64), 1 => bytes(MAX_ERROR_BYTES)],
        bytes(OUTPUT_LIMIT),
        params,
    )
        .prop_map(|(log, counter, error, output, params)| Case {
            log,
            counter,
            error,
            output,
            params,
        })
}

/// Where the cases go: the API of one deployment.
trait Target {
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = (u16, Vec<u8>)>;
}

/// An embedded instance's router, called in process.
struct Embedded(axum::Router);

impl Target for Embedded {
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .unwrap();
        let response =
            tokio::time::timeout(Duration::from_secs(60), self.0.clone().oneshot(request))
                .await
                .expect("answered in time")
                .unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }
}

/// A server over HTTP.
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Target for Http {
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.client.post(url).body(body),
            _ => self.client.get(url),
        };
        let response = tokio::time::timeout(Duration::from_secs(60), request.send())
            .await
            .expect("answered in time")
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }
}

async fn json_of(target: &impl Target, method: &str, path: &str, body: Vec<u8>) -> Value {
    let (status, body) = target.request(method, path, body).await;
    let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {status}: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    assert!(status < 300, "{method} {path}: {status}: {value}");
    value
}

/// Waits until the job ends; returns its only task's detail.
async fn finish(target: &impl Target, job: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = json_of(target, "GET", &format!("/v1/jobs/{job}"), Vec::new()).await;
        if state["status"] != "running" {
            break;
        }
        assert!(Instant::now() < deadline, "job {job} did not end: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tasks = json_of(target, "GET", &format!("/v1/jobs/{job}/tasks"), Vec::new()).await;
    let id = tasks["items"][0]["id"].as_i64().unwrap();
    json_of(target, "GET", &format!("/v1/tasks/{id}"), Vec::new()).await
}

async fn upload(target: &impl Target, path: &str, bytes: Vec<u8>) -> String {
    let reply = json_of(target, "POST", path, bytes).await;
    reply[if path == "/v1/modules" {
        "module"
    } else {
        "input"
    }]
    .as_str()
    .unwrap()
    .to_owned()
}

async fn submit(target: &impl Target, job: Value) -> i64 {
    json_of(target, "POST", "/v1/jobs", job.to_string().into_bytes()).await["id"]
        .as_i64()
        .unwrap()
}

/// Runs one case, then a plain job; checks both.
async fn one_case(
    target: &impl Target,
    mirror: &str,
    noop: &str,
    case: &Case,
) -> Result<(), TestCaseError> {
    let input = upload(target, "/v1/inputs", case.input()).await;
    let job = submit(
        target,
        json!({"name": "mirror", "task": {"module": mirror, "input": input, "params": case.params},
               "limits": {"log": format!("{LOG_LIMIT}B"), "output": format!("{OUTPUT_LIMIT}B")}}),
    )
    .await;
    let detail = finish(target, job).await;
    let task = &detail["task"];
    let attempt = &detail["attempts"][0];
    let expect_error = !case.error.is_empty();
    let too_large = !expect_error && case.output.len() > OUTPUT_LIMIT;
    if expect_error {
        prop_assert_eq!(&task["state"], "failed");
        prop_assert_eq!(&task["reason"], "guest-error");
        prop_assert_eq!(task["error"].as_str().unwrap(), case.expected_error());
    } else if too_large {
        prop_assert_eq!(&task["reason"], "output-too-large");
    } else {
        prop_assert_eq!(&task["state"], "succeeded", "{}", task);
        let (status, output) = target
            .request(
                "GET",
                &format!("/v1/tasks/{}/output", task["id"]),
                Vec::new(),
            )
            .await;
        prop_assert_eq!(status, 200);
        prop_assert!(output == case.output, "the output came back changed");
    }
    prop_assert_eq!(&task["params"], &json!(case.params));
    if let Some(name) = case.expected_counter() {
        prop_assert_eq!(
            &attempt["counters"][name.as_str()],
            1,
            "{}",
            attempt["counters"]
        );
    }
    let (status, logs) = target
        .request("GET", &format!("/v1/tasks/{}/logs", task["id"]), Vec::new())
        .await;
    prop_assert_eq!(status, 200);
    let header_end = logs.iter().position(|b| *b == b'\n').unwrap() + 1;
    prop_assert!(
        logs[header_end..] == case.expected_log()[..],
        "the log came back changed"
    );

    // Recording goes on.
    // Run, not served from the cache: the point is that work still runs.
    let plain = submit(
        target,
        json!({"name": "plain", "cache": false, "task": {"module": noop}}),
    )
    .await;
    let plain = finish(target, plain).await;
    prop_assert_eq!(&plain["task"]["state"], "succeeded");
    Ok(())
}

/// Runs `cases` cases against `target`, reporting the failing one.
async fn drive(target: &impl Target, cases: u32) {
    let mirror = upload(
        target,
        "/v1/modules",
        std::fs::read(guests::HOSTILE_MIRROR).unwrap(),
    )
    .await;
    let noop = upload(target, "/v1/modules", std::fs::read(guests::NOOP).unwrap()).await;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing case is kept as found: shrinking megabytes is slow.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let strategy = case();
    let mut n = 0;
    loop {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        if let Err(failure) = one_case(target, &mirror, &noop, &case).await {
            panic!(
                "case {n} failed: {failure}\n(log {} bytes, counter {} bytes, error {} bytes, output {} bytes, params {} keys)",
                case.log.len(),
                case.counter.len(),
                case.error.len(),
                case.output.len(),
                case.params.len()
            );
        }
        n += 1;
        if n >= cases {
            break;
        }
    }
    // Parameters past the limit are refused at submit, naming the field,
    // and change nothing.
    let before = json_of(target, "GET", "/v1/jobs?limit=1000", Vec::new()).await["items"]
        .as_array()
        .unwrap()
        .len();
    let (status, body) = target
        .request(
            "POST",
            "/v1/jobs",
            json!({"name": "big", "task": {"module": noop, "params": {"p": "x".repeat(PARAMS_LIMIT)}}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["field"], "task.params");
    let after = json_of(target, "GET", "/v1/jobs?limit=1000", Vec::new()).await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

async fn embedded_suite(database: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.database = database;
    config.workers = 2;
    let instance = embedded::start(config).await.unwrap();
    let target = Embedded(api::router(
        instance.scheduler.clone(),
        ApiConfig::default(),
    ));
    drive(&target, 24).await;
    set_aside(&target, instance.scheduler.store()).await;
    instance.shutdown(Duration::from_secs(10)).await;
}

/// Makes the database refuse any task row whose error mentions `poison`.
async fn refuse_poison(store: &Store) {
    match store {
        Store::Sqlite(pool) => {
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE UPDATE ON tasks WHEN NEW.error LIKE '%poison%' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        Store::Postgres(pool) => {
            sqlx::query(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.error LIKE '%poison%' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
            )
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

/// A result the database refuses is recorded as its task's failure; the
/// others of its batch are recorded as they were.
async fn set_aside(target: &impl Target, store: &Store) {
    refuse_poison(store).await;
    let mirror = upload(
        target,
        "/v1/modules",
        std::fs::read(guests::HOSTILE_MIRROR).unwrap(),
    )
    .await;
    let poison = Case {
        log: Vec::new(),
        counter: Vec::new(),
        error: b"poison".to_vec(),
        output: Vec::new(),
        params: BTreeMap::new(),
    };
    let fine = Case {
        error: Vec::new(),
        output: b"fine".to_vec(),
        ..poison.clone()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ids = Vec::new();
    for case in [&fine, &poison, &fine, &fine] {
        let input = upload(target, "/v1/inputs", case.input()).await;
        ids.push(
            submit(
                target,
                json!({"name": "batch", "cache": false, "task": {"module": mirror, "input": input}}),
            )
            .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let detail = finish(target, *id).await;
        let task = &detail["task"];
        if i == 1 {
            assert_eq!(task["state"], "failed", "{task}");
            assert_eq!(task["reason"], "store-rejected", "{task}");
            let error = task["error"].as_str().unwrap();
            assert!(error.contains("refused by the test"), "{error}");
        } else {
            assert_eq!(task["state"], "succeeded", "{task}");
            let (_, output) = target
                .request(
                    "GET",
                    &format!("/v1/tasks/{}/output", task["id"]),
                    Vec::new(),
                )
                .await;
            assert_eq!(b64.encode(output), b64.encode(b"fine"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_bytes_never_wedge_sqlite() {
    tokio::time::timeout(Duration::from_secs(300), embedded_suite(None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_bytes_never_wedge_postgres() {
    let pg = support::Postgres::start();
    let url = pg.database();
    tokio::time::timeout(Duration::from_secs(300), embedded_suite(Some(url)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_bytes_never_wedge_the_fleet() {
    let pg = support::Postgres::start();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let sandmill = |args: &[&str]| {
        support::Killed::spawn(
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
    let _worker = sandmill(&["worker", "--id", "wedge", "--concurrency", "2"]);
    let target = Http {
        base: format!("http://127.0.0.1:{port}"),
        client: sandmill_server::tls::default_client(),
    };
    support::wait_ready(&target.client, &target.base).await;
    tokio::time::timeout(Duration::from_secs(300), drive(&target, 12))
        .await
        .unwrap();
}
