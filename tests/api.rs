//! The HTTP API, per route and per backend, through `oneshot` on the real
//! router over a real embedded instance (workers included), plus one test
//! over a real socket.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use sandmill_server::api::{self, ApiConfig};
use sandmill_server::embedded::{self, EmbeddedConfig};
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Client {
    router: axum::Router,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

impl Client {
    async fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            self.router.clone().oneshot(request),
        )
        .await
        .expect("answered in time")
        .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply { status, body }
    }
    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, Vec::new()).await
    }
    async fn post(&self, uri: &str, body: Vec<u8>) -> Reply {
        self.send("POST", uri, body).await
    }
    async fn post_json(&self, uri: &str, body: Value) -> Reply {
        self.post(uri, body.to_string().into_bytes()).await
    }
    /// Polls the job until it leaves `running` (bounded).
    async fn wait_job(&self, id: i64) -> Value {
        for _ in 0..600 {
            let job = self.get(&format!("/v1/jobs/{id}")).await.json();
            if job["job"]["status"] != "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish within 30 s");
    }
}

async fn suite(database: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.database = database;
    config.workers = 2;
    let instance = embedded::start(config).await.unwrap();
    let client = Client {
        router: api::router(
            instance.engine.clone(),
            ApiConfig {
                max_body_bytes: 4 << 20,
                ..ApiConfig::default()
            },
        ),
    };

    // Health and the OpenAPI document.
    assert_eq!(client.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(client.get("/readyz").await.status, StatusCode::OK);
    let openapi = client.get("/v1/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    for path in [
        "/v1/run",
        "/v1/jobs/{id}/cancel",
        "/v1/tasks/{id}/logs",
        "/v1/specs/{name}",
        "/v1/workers",
    ] {
        assert!(
            openapi.json()["paths"].get(path).is_some(),
            "{path} documented"
        );
    }

    // The registry: the embedded worker pool is one live worker.
    let workers = client.get("/v1/workers").await;
    assert_eq!(workers.status, StatusCode::OK);
    let workers = workers.json();
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");
    assert_eq!(workers[0]["id"], "embedded");
    assert_eq!(workers[0]["status"], "live");
    assert_eq!(workers[0]["capacity"], 2);

    // Modules: idempotent upload; garbage is 400 and stores nothing; too big is 413.
    let noop = std::fs::read(guests::NOOP).unwrap();
    let up = client.post("/v1/modules", noop.clone()).await;
    assert_eq!(
        up.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&up.body)
    );
    let hash = up.json()["hash"].as_str().unwrap().to_owned();
    assert_eq!(up.json()["exports"], "task");
    assert_eq!(
        client.post("/v1/modules", noop.clone()).await.json()["hash"],
        hash.as_str()
    );
    let garbage = client
        .post("/v1/modules", b"not wasm at all".to_vec())
        .await;
    assert_eq!(
        (garbage.status, garbage.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_module")
    );
    let garbage_hash = sandmill_runtime::blob::hash(b"not wasm at all");
    assert_eq!(
        client
            .get(&format!("/v1/modules/{garbage_hash}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let huge = client.post("/v1/modules", vec![0u8; 5 << 20]).await;
    assert_eq!(
        (huge.status, huge.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(
        client.get(&format!("/v1/modules/{hash}")).await.json()["size"],
        noop.len()
    );
    assert_eq!(
        client
            .get(&format!("/v1/modules/{}", "0".repeat(64)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Specs.
    let spec = json!({"name": "echo", "version": "1", "module": format!("sha256:{hash}"), "kind": "task",
                      "limits": {"timeout": "10s"}});
    let created = client.post_json("/v1/specs", spec.clone()).await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(
        client.post_json("/v1/specs", spec.clone()).await.status,
        StatusCode::CREATED
    );
    let mut changed = spec.clone();
    changed["limits"]["timeout"] = json!("20s");
    assert_eq!(
        client.post_json("/v1/specs", changed).await.status,
        StatusCode::CONFLICT
    );
    let mut wrong_kind = spec.clone();
    wrong_kind["version"] = json!("2");
    wrong_kind["kind"] = json!("map");
    let refused = client.post_json("/v1/specs", wrong_kind).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("kind:")
    );
    let mut unknown_module = spec.clone();
    unknown_module["module"] = json!(format!("sha256:{}", "1".repeat(64)));
    assert_eq!(
        client.post_json("/v1/specs", unknown_module).await.status,
        StatusCode::NOT_FOUND
    );
    let mut typo = spec.clone();
    typo["lmits"] = json!({});
    let typo = client.post_json("/v1/specs", typo).await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert!(typo.json()["message"].as_str().unwrap().contains("lmits"));
    assert_eq!(
        client
            .get("/v1/specs")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(client.get("/v1/specs/echo").await.json()[0]["version"], "1");
    assert_eq!(
        client.get("/v1/specs/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Inputs and jobs.
    let input = client.post("/v1/inputs", b"payload".to_vec()).await.json()["input"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = json!({"name": "one", "task": {"module": "echo@1", "input": input}});
    let created = client.post_json("/v1/jobs", job).await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let job_id = created.json()["id"].as_i64().unwrap();
    let done = client.wait_job(job_id).await;
    assert_eq!(done["job"]["status"], "succeeded");
    assert_eq!(done["counts"]["succeeded"], 1);
    let tasks = client.get(&format!("/v1/jobs/{job_id}/tasks")).await.json();
    let task_id = tasks[0]["id"].as_i64().unwrap();
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{task_id}/output"))
            .await
            .body,
        b"payload"
    );
    let task = client.get(&format!("/v1/tasks/{task_id}")).await.json();
    assert_eq!(task["attempts"][0]["state"], "succeeded");
    let logs = client.get(&format!("/v1/tasks/{task_id}/logs")).await;
    assert!(String::from_utf8_lossy(&logs.body).starts_with("== attempt 0 on embedded/"));

    let sweep = json!({"name": "sweep", "sweep": {"module": format!("sha256:{hash}"), "count": 5}});
    let sweep_id = client.post_json("/v1/jobs", sweep).await.json()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(client.wait_job(sweep_id).await["counts"]["succeeded"], 5);
    let listed = client.get("/v1/jobs?status=succeeded").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["id"], sweep_id, "most recently updated first");
    assert_eq!(
        client.get("/v1/jobs?status=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .get("/v1/jobs?limit=1")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Bad jobs change nothing.
    let before = client
        .get("/v1/jobs")
        .await
        .json()
        .as_array()
        .unwrap()
        .len();
    let bad = client
        .post_json(
            "/v1/jobs",
            json!({"name": "x", "task": {"module": "echo@1", "prams": {}}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["message"].as_str().unwrap().contains("prams"),
        "{}",
        bad.json()
    );
    let bad = client
        .post_json(
            "/v1/jobs",
            json!({"name": "x", "task": {"module": "echo@1"}, "limits": {"memory": "lots"}}),
        )
        .await;
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("limits.memory")
    );
    for (field, job) in [
        (
            "limits.queue_timeout",
            json!({"name": "x", "task": {"module": "echo@1"}, "limits": {"queue_timeout": "soon"}}),
        ),
        (
            "labels",
            json!({"name": "x", "task": {"module": "echo@1"}, "labels": {"gpu": ""}}),
        ),
    ] {
        let bad = client.post_json("/v1/jobs", job).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let message = bad.json()["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(field), "{message}");
    }
    let missing = client
        .post_json(
            "/v1/jobs",
            json!({"name": "x", "task": {"module": "nope@3"}}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        client
            .get("/v1/jobs")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // Cancel: finished 409, unknown 404, running 200.
    let finished = client
        .post(&format!("/v1/jobs/{job_id}/cancel"), Vec::new())
        .await;
    assert_eq!(
        (finished.status, finished.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert_eq!(
        client
            .post("/v1/jobs/99999/cancel", Vec::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/jobs/99999").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/jobs/99999/tasks").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/tasks/99999").await.status,
        StatusCode::NOT_FOUND
    );
    let looping = client
        .post("/v1/modules", std::fs::read(guests::HOSTILE_LOOP).unwrap())
        .await
        .json()["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = json!({"name": "slow", "task": {"module": format!("sha256:{looping}")}, "limits": {"timeout": "2s"}});
    let slow_id = client.post_json("/v1/jobs", slow).await.json()["id"]
        .as_i64()
        .unwrap();
    let cancelled = client
        .post(&format!("/v1/jobs/{slow_id}/cancel"), Vec::new())
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.json()["job"]["status"], "cancelled");
    assert_eq!(cancelled.json()["counts"]["cancelled"], 1);

    // Upload-and-run.
    let b64 = base64::engine::general_purpose::STANDARD;
    let ran = client
        .post_json(
            "/v1/run",
            json!({"module_base64": b64.encode(&noop), "input": "echo me"}),
        )
        .await;
    assert_eq!(
        ran.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&ran.body)
    );
    assert_eq!(ran.body, b"echo me");
    let panic = std::fs::read(guests::HOSTILE_PANIC).unwrap();
    let failed = client
        .post_json("/v1/run", json!({"module_base64": b64.encode(&panic)}))
        .await;
    assert_eq!(
        (failed.status, failed.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "guest-panic")
    );
    assert!(
        failed.json()["message"]
            .as_str()
            .unwrap()
            .contains("src/lib.rs")
    );
    let later = client
        .post_json(
            "/v1/run",
            json!({"module": "echo@1", "input": "x", "wait": false}),
        )
        .await;
    assert_eq!(later.status, StatusCode::ACCEPTED);
    let outlasted = client
        .post_json("/v1/run", json!({"module": format!("sha256:{looping}"), "limits": {"timeout": "1s"}, "wait_timeout": "100ms"}))
        .await;
    assert_eq!(
        outlasted.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&outlasted.body)
    );
    assert!(outlasted.json()["id"].as_i64().is_some());
    let garbage = client
        .post_json("/v1/run", json!({"module_base64": b64.encode(b"junk")}))
        .await;
    assert_eq!(
        (garbage.status, garbage.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_module")
    );

    instance.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_on_sqlite() {
    tokio::time::timeout(Duration::from_secs(180), suite(None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn api_on_postgres() {
    let pg = support::Postgres::start();
    let url = pg.database();
    tokio::time::timeout(Duration::from_secs(180), suite(Some(url)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn api_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let instance = embedded::start(EmbeddedConfig::new(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(instance.engine.clone(), ApiConfig::default());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
    server.abort();
    instance.shutdown().await;
}
