//! The HTTP API, per route and per backend, through `oneshot` on the real
//! router over a real embedded instance (workers included), plus one test
//! over a real socket. Every response is checked against the OpenAPI
//! document (route, status, and the body's exact shape), and every
//! documented route and status must have been seen.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use futures_util::StreamExt;
use sandmill_server::api::{self, ApiConfig};
use sandmill_server::embedded::{self, EmbeddedConfig};
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::openapi::Checker;
use tower::ServiceExt;

struct Client {
    router: axum::Router,
    checker: std::sync::Arc<Checker>,
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
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn new(router: axum::Router) -> Self {
        let doc = serde_json::to_value(api::openapi_document()).unwrap();
        Client {
            router,
            checker: std::sync::Arc::new(Checker::new(doc)),
        }
    }

    /// Another router's client, recording into this one's checker.
    fn beside(&self, router: axum::Router) -> Self {
        Client {
            router,
            checker: self.checker.clone(),
        }
    }

    async fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        self.request(request).await
    }
    async fn request(&self, request: Request<Body>) -> Reply {
        let method = request.method().as_str().to_owned();
        let uri = request.uri().to_string();
        let (method, uri) = (method.as_str(), uri.as_str());
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            self.router.clone().oneshot(request),
        )
        .await
        .expect("answered in time")
        .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        if let Err(problem) =
            self.checker
                .check(method, uri, status.as_u16(), content_type.as_deref(), &body)
        {
            panic!("the OpenAPI document does not describe this response: {problem}");
        }
        Reply { status, body }
    }
    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, Vec::new()).await
    }
    /// The first event of an event stream (then the stream is dropped),
    /// checked against the OpenAPI document's `EventView`.
    async fn first_event(&self, uri: &str, last_id: Option<u64>) -> Value {
        let mut request = Request::builder().uri(uri);
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            self.router
                .clone()
                .oneshot(request.body(Body::empty()).unwrap()),
        )
        .await
        .expect("answered in time")
        .unwrap();
        let status = response.status();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        self.checker
            .check("GET", uri, status.as_u16(), Some(&content_type), b"")
            .unwrap();
        let mut body = response.into_body().into_data_stream();
        let mut parser = sandmill_server::api::events::SseParser::default();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
                .await
                .expect("an event in time")
                .expect("the stream stays open")
                .unwrap();
            if let Some(message) = parser.push(&chunk).unwrap().into_iter().next() {
                let event: Value = serde_json::from_str(&message.data).unwrap();
                self.checker.check_schema("EventView", &event).unwrap();
                assert_eq!(
                    message.id.as_deref(),
                    Some(event["id"].to_string().as_str())
                );
                assert_eq!(message.event.as_deref(), event["type"].as_str());
                return event;
            }
        }
    }
    async fn post(&self, uri: &str, body: Vec<u8>) -> Reply {
        self.send("POST", uri, body).await
    }
    async fn post_json(&self, uri: &str, body: Value) -> Reply {
        self.post(uri, body.to_string().into_bytes()).await
    }
    /// Waits (bounded) until the job leaves `running`.
    async fn wait_job(&self, id: i64) -> Value {
        for _ in 0..600 {
            let job = self.get(&format!("/v1/jobs/{id}")).await.json();
            if job["status"] != "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish within 30 s");
    }
    /// Every item of a paged list, following its cursors.
    async fn all(&self, uri: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if uri.contains('?') { '&' } else { '?' };
            let page = match &cursor {
                Some(c) => self.get(&format!("{uri}{sep}cursor={c}")).await.json(),
                None => self.get(uri).await.json(),
            };
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }
}

async fn suite(database: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.database = database;
    config.workers = 2;
    config.scheduler.reservations = sandmill_server::scheduler::ReservationLimits {
        slots: 4,
        ahead: Duration::from_secs(24 * 3600),
        per_tenant: 3,
    };
    let instance = embedded::start(config).await.unwrap();
    let client = Client::new(api::router(
        instance.scheduler.clone(),
        ApiConfig {
            max_body_bytes: 4 << 20,
            ..ApiConfig::default()
        },
    ));

    // Health and the OpenAPI document.
    assert_eq!(client.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(client.get("/readyz").await.status, StatusCode::OK);
    let openapi = client.get("/v1/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    // An open server's document asks for no token anywhere.
    let document = openapi.json();
    assert!(document["security"].is_null(), "{}", document["security"]);
    assert!(
        document["components"]["securitySchemes"]
            .as_object()
            .is_none_or(|s| s.is_empty())
    );
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["security"].is_null(), "{method} {path}");
            assert!(operation["responses"]["401"].is_null(), "{method} {path}");
        }
    }
    // An open server's one person: the default tenant, as an admin.
    let me = client.get("/v1/whoami").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json(), json!({"tenant": "default", "role": "admin"}));

    // The registry: the embedded worker pool is one live worker.
    let workers = client.get("/v1/workers").await;
    assert_eq!(workers.status, StatusCode::OK);
    let workers = workers.json();
    assert_eq!(
        workers["items"].as_array().map(Vec::len),
        Some(1),
        "{workers}"
    );
    assert_eq!(workers["items"][0]["id"], "embedded");
    assert_eq!(workers["items"][0]["status"], "live");
    assert_eq!(workers["items"][0]["capacity"], 2);
    assert!(workers["next_cursor"].is_null());
    assert_eq!(
        client.get("/v1/workers?cursor=garbage").await.code(),
        "bad_request"
    );

    // Modules: idempotent upload; garbage is 400 and stores nothing; too big is 413.
    let noop = std::fs::read(guests::NOOP).unwrap();
    let up = client.post("/v1/modules", noop.clone()).await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text());
    let module = up.json()["module"].as_str().unwrap().to_owned();
    assert_eq!(up.json()["exports"], json!(["task"]));
    assert_eq!(
        client.post("/v1/modules", noop.clone()).await.json()["module"],
        module.as_str()
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
        client.get(&format!("/v1/modules/{module}")).await.json()["size"],
        noop.len()
    );
    // Listed, once, a page at a time; the refused upload is not there.
    let modules = client.all("/v1/modules?limit=1").await;
    assert_eq!(
        modules
            .iter()
            .map(|m| m["module"].clone())
            .collect::<Vec<_>>(),
        vec![json!(module)]
    );
    assert_eq!(
        client.get("/v1/modules?cursor=garbage").await.code(),
        "bad_request"
    );

    // Specs.
    let spec = json!({"name": "echo", "version": "1", "module": module, "kind": "task",
                      "limits": {"timeout": "10s"}});
    let created = client.post_json("/v1/specs", spec.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["limits"]["timeout"], "10s");
    assert_eq!(created.json()["limits"]["memory"], "256MiB");
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
    assert_eq!(refused.json()["field"], "kind");
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
    assert_eq!(client.all("/v1/specs").await.len(), 1);
    assert_eq!(
        client.get("/v1/specs/echo").await.json()["items"][0]["version"],
        "1"
    );
    assert_eq!(
        client.get("/v1/specs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/specs?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    // Past a list's documented maximum is refused too, not cut.
    for (path, max) in [
        ("/v1/specs", 1000),
        ("/v1/workers", 1000),
        ("/v1/jobs", 1000),
    ] {
        let past = client.get(&format!("{path}?limit={}", max + 1)).await;
        assert_eq!(past.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            past.text().contains(&format!("between 1 and {max}")),
            "{}",
            past.text()
        );
        assert_eq!(
            client.get(&format!("{path}?limit={max}")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        client.get("/v1/specs/echo?cursor=x").await.status,
        StatusCode::BAD_REQUEST
    );

    // Inputs and jobs.
    let input = client.post("/v1/inputs", b"payload".to_vec()).await.json();
    assert_eq!(input["size"], 7);
    let input = input["input"].as_str().unwrap().to_owned();
    let job = json!({"name": "one", "task": {"module": "echo@1", "input": input}});
    let created = client.post_json("/v1/jobs", job).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let job_id = created.json()["id"].as_i64().unwrap();
    let done = client.wait_job(job_id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["tasks"]["succeeded"], 1);
    assert_eq!(done["limits"]["timeout"], "10s", "the spec's limits");
    assert!(done["created_at"].as_str().unwrap().ends_with('Z'));
    let tasks = client.get(&format!("/v1/jobs/{job_id}/tasks")).await.json();
    let task_id = tasks["items"][0]["id"].as_i64().unwrap();
    assert_eq!(
        tasks["items"][0]["params"],
        json!({}),
        "params are an object, not a string"
    );
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{task_id}/output"))
            .await
            .body,
        b"payload"
    );
    let task = client.get(&format!("/v1/tasks/{task_id}")).await.json();
    assert_eq!(task["attempts"][0]["state"], "succeeded");
    assert_eq!(task["task"]["output"]["size"], 7);
    // The guest's peak memory, as a size: whole 64 KiB pages.
    let memory = task["attempts"][0]["memory_peak"]
        .as_str()
        .unwrap_or_default();
    assert!(memory.ends_with("KiB") || memory.ends_with("MiB"), "{task}");
    let logs = client.get(&format!("/v1/tasks/{task_id}/logs")).await;
    assert!(logs.text().starts_with("== attempt 0 on embedded/"));
    // A job without steps is a one-step graph.
    let graph = client.get(&format!("/v1/jobs/{job_id}/graph")).await.json();
    assert_eq!(graph["steps"].as_array().unwrap().len(), 1, "{graph}");
    assert_eq!(graph["steps"][0]["job_id"], job_id, "{graph}");
    assert_eq!(graph["steps"][0]["tasks"]["succeeded"], 1, "{graph}");
    assert_eq!(graph["edges"], json!([]), "{graph}");
    assert_eq!(
        client.get("/v1/jobs/99999/graph").await.status,
        StatusCode::NOT_FOUND
    );
    // Failures by reason: none here.
    let failures = client.get(&format!("/v1/jobs/{job_id}/failures")).await;
    assert_eq!(failures.status, StatusCode::OK);
    assert_eq!(failures.json(), json!({"items": [], "next_cursor": null}));
    assert_eq!(
        client.get("/v1/jobs/99999/failures").await.status,
        StatusCode::NOT_FOUND
    );
    // Metrics, in the OpenMetrics text format.
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().ends_with("# EOF\n"), "{}", metrics.text());
    // Utilization: the embedded worker's slots, in buckets.
    let use_ = client.get("/v1/utilization?step=1m").await;
    assert_eq!(use_.status, StatusCode::OK, "{}", use_.text());
    assert_eq!(use_.json()["step"], "1m");
    let bad = client.get("/v1/utilization?step=10ms").await;
    assert_eq!(
        (bad.status, bad.json()["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("step"))
    );
    for path in [
        "/v1/tasks/abc",
        "/v1/tasks/abc/output",
        "/v1/tasks/abc/logs",
        "/v1/jobs/abc",
        "/v1/jobs/abc/graph",
        "/v1/jobs/abc/failures",
    ] {
        assert_eq!(client.get(path).await.code(), "bad_request", "{path}");
    }
    assert_eq!(
        client.post("/v1/jobs/abc/cancel", Vec::new()).await.status,
        StatusCode::BAD_REQUEST
    );

    // A sweep, read back a page at a time and by state.
    let sweep = json!({"name": "sweep", "sweep": {"module": module, "count": 5}, "priority": 3});
    let sweep_id = client.post_json("/v1/jobs", sweep).await.json()["id"]
        .as_i64()
        .unwrap();
    let finished = client.wait_job(sweep_id).await;
    assert_eq!(finished["tasks"]["succeeded"], 5);
    assert_eq!(finished["priority"], 3);
    let pages: Vec<i64> = client
        .all(&format!("/v1/jobs/{sweep_id}/tasks?limit=2"))
        .await
        .iter()
        .map(|t| t["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(pages, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        client
            .all(&format!("/v1/jobs/{sweep_id}/tasks?state=succeeded"))
            .await
            .len(),
        5
    );
    assert!(
        client
            .all(&format!("/v1/jobs/{sweep_id}/tasks?state=failed"))
            .await
            .is_empty()
    );
    let bad_state = client
        .get(&format!("/v1/jobs/{sweep_id}/tasks?state=done"))
        .await;
    assert_eq!(
        (bad_state.status, bad_state.json()["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("state"))
    );
    let listed = client.all("/v1/jobs?status=succeeded&limit=1").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], sweep_id, "most recently updated first");
    assert_eq!(
        client.get("/v1/jobs?status=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
    // Sorted by any column either way, filtered by name, label and time;
    // a cursor holds to its order.
    let by_name = client.all("/v1/jobs?sort=name&order=asc&limit=1").await;
    let names: Vec<&str> = by_name
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let named = client.all("/v1/jobs?name=SWE").await;
    assert!(
        !named.is_empty() && named.iter().all(|j| j["name"] == "sweep"),
        "{named:?}"
    );
    assert!(client.all("/v1/jobs?label=gpu%3Da100").await.is_empty());
    assert!(
        client
            .all("/v1/jobs?from=2999-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    let first = client.get("/v1/jobs?sort=name&limit=1").await.json();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    for (query, field) in [
        ("sort=bogus".to_owned(), "sort"),
        ("order=up".to_owned(), "order"),
        ("label=no%20equals".to_owned(), "label"),
        ("from=yesterday".to_owned(), "from"),
        (format!("sort=id&cursor={cursor}"), "cursor"),
    ] {
        let bad = client.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(bad.json()["field"], field, "{query}");
    }

    // Bad jobs change nothing, and say which field.
    let before = client.all("/v1/jobs").await.len();
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
    for (field, job) in [
        (
            "limits.memory",
            json!({"name": "x", "task": {"module": "echo@1"}, "limits": {"memory": "lots"}}),
        ),
        (
            "limits.queue_timeout",
            json!({"name": "x", "task": {"module": "echo@1"}, "limits": {"queue_timeout": "soon"}}),
        ),
        (
            "labels",
            json!({"name": "x", "task": {"module": "echo@1"}, "labels": {"gpu": ""}}),
        ),
        (
            "sweep.count",
            json!({"name": "x", "sweep": {"module": "echo@1", "count": "ten"}}),
        ),
        (
            "priority",
            json!({"name": "x", "task": {"module": "echo@1"}, "priority": 10}),
        ),
        (
            "name",
            json!({"name": "x\u{0}y", "task": {"module": "echo@1"}}),
        ),
        (
            "task.params",
            json!({"name": "x", "task": {"module": "echo@1", "params": {"big": "x".repeat(1 << 20)}}}),
        ),
    ] {
        let bad = client.post_json("/v1/jobs", job).await;
        assert_eq!(
            bad.status,
            StatusCode::BAD_REQUEST,
            "{field}: {}",
            bad.text()
        );
        assert_eq!(bad.json()["field"], field, "{}", bad.text());
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
    let huge = client.post("/v1/jobs", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(client.all("/v1/jobs").await.len(), before);

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
    assert_eq!(
        client.get("/v1/tasks/99999/output").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/tasks/99999/logs").await.status,
        StatusCode::NOT_FOUND
    );
    let looping = client
        .post("/v1/modules", std::fs::read(guests::HOSTILE_LOOP).unwrap())
        .await
        .json()["module"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = json!({"name": "slow", "sweep": {"module": looping, "count": 1000000}, "limits": {"timeout": "2s"}});
    let slow_id = client.post_json("/v1/jobs", slow).await.json()["id"]
        .as_i64()
        .unwrap();
    let cancelled = client
        .post(&format!("/v1/jobs/{slow_id}/cancel"), Vec::new())
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(
        cancelled.json()["tasks"]["cancelled"],
        1_000_000,
        "the backlog is cancelled too"
    );

    // Upload-and-run.
    let b64 = base64::engine::general_purpose::STANDARD;
    let ran = client
        .post_json(
            "/v1/run",
            json!({"module_base64": b64.encode(&noop), "input": "echo me"}),
        )
        .await;
    assert_eq!(ran.status, StatusCode::OK, "{}", ran.text());
    assert_eq!(ran.body, b"echo me");
    // Recorded before it was answered: a job with its task and attempt.
    let run = client.get("/v1/jobs?limit=1").await.json()["items"][0].clone();
    assert_eq!(
        (run["name"].as_str(), run["status"].as_str()),
        (Some("run"), Some("succeeded"))
    );
    assert_eq!(run["tasks"]["succeeded"], 1);
    let tasks = client
        .get(&format!("/v1/jobs/{}/tasks", run["id"]))
        .await
        .json();
    let task = tasks["items"][0]["id"].as_i64().unwrap();
    assert_eq!(
        client.get(&format!("/v1/tasks/{task}/output")).await.body,
        b"echo me"
    );
    assert_eq!(
        client.get(&format!("/v1/tasks/{task}")).await.json()["attempts"][0]["state"],
        "succeeded"
    );
    // The same call again is answered from the result cache: its task
    // never ran.
    let again = client
        .post_json(
            "/v1/run",
            json!({"module_base64": b64.encode(&noop), "input": "echo me"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.body, b"echo me");
    let cached = client.get("/v1/jobs?limit=1").await.json()["items"][0].clone();
    assert_eq!(cached["tasks"]["cached"], 1, "{cached}");
    // An output past the inline size comes from the blob store, sent as
    // it is read, the first time and from the cache.
    let large: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for _ in 0..2 {
        let ran = client
            .post_json(
                "/v1/run",
                json!({"module_base64": b64.encode(&noop), "input": large}),
            )
            .await;
        assert_eq!(ran.status, StatusCode::OK, "{}", ran.text());
        assert_eq!(ran.body, large.as_bytes());
    }
    let cached = client.get("/v1/jobs?limit=1").await.json()["items"][0].clone();
    assert_eq!(cached["tasks"]["cached"], 1, "{cached}");
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
        .post_json(
            "/v1/run",
            json!({"module": looping, "limits": {"timeout": "1s"}, "wait_timeout": "100ms"}),
        )
        .await;
    assert_eq!(
        outlasted.status,
        StatusCode::ACCEPTED,
        "{}",
        outlasted.text()
    );
    assert!(outlasted.json()["id"].as_i64().is_some());
    let garbage = client
        .post_json("/v1/run", json!({"module_base64": b64.encode(b"junk")}))
        .await;
    assert_eq!(
        (garbage.status, garbage.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_module")
    );
    let nothing = client.post_json("/v1/run", json!({"input": "x"})).await;
    assert_eq!(nothing.json()["field"], "module");
    assert_eq!(
        client
            .post_json("/v1/run", json!({"module": "nope@1"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let huge = client.post("/v1/run", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    let huge = client.post("/v1/inputs", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    let huge = client.post("/v1/specs", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Running again: restarts, retries, resubmits; what a job was made
    // of, what a task ran with, and the blobs behind them.
    let again = client
        .post_json(
            "/v1/jobs",
            json!({"name": "again", "sweep": {"module": "echo@1", "count": 2}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    let again = again.json()["id"].as_i64().unwrap();
    assert_eq!(client.wait_job(again).await["status"], "succeeded");
    let definition = client.get(&format!("/v1/jobs/{again}/definition")).await;
    assert_eq!(definition.status, StatusCode::OK);
    assert_eq!(definition.json()["name"], "again");
    assert_eq!(definition.json()["sweep"]["count"], 2);
    assert_eq!(
        client.get("/v1/jobs/x/definition").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client.get("/v1/jobs/999999/definition").await.status,
        StatusCode::NOT_FOUND
    );
    let first = client.get(&format!("/v1/jobs/{again}/tasks")).await.json()["items"][0].clone();
    let first_id = first["id"].as_i64().unwrap();
    let call = client.get(&format!("/v1/tasks/{first_id}/call")).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    let call = call.json();
    assert_eq!(call["module"], module.as_str());
    assert_eq!(call["attempt"], 0);
    assert_eq!(call["recorded"]["state"], "succeeded");
    assert!(call["seed"].as_u64().is_some(), "{call}");
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{first_id}/call?attempt=4"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("/v1/tasks/x/call").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client.get("/v1/tasks/999999/call").await.status,
        StatusCode::NOT_FOUND
    );
    let blob = client.get(&format!("/v1/blobs/{module}")).await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.body, noop);
    // The blobs a task's call reads, through the task.
    let through = client
        .get(&format!("/v1/tasks/{first_id}/blobs/{module}"))
        .await;
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(through.body, noop);
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{first_id}/blobs/not-hex"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{first_id}/blobs/{}", "0".repeat(64)))
            .await
            .status,
        StatusCode::NOT_FOUND,
        "a blob its call does not read"
    );
    assert_eq!(
        client.get("/v1/blobs/not-hex").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .get(&format!("/v1/blobs/{}", "0".repeat(64)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let restarted = client
        .post_json(&format!("/v1/tasks/{first_id}/restart"), json!({}))
        .await;
    assert_eq!(
        restarted.status,
        StatusCode::CREATED,
        "{}",
        restarted.text()
    );
    let rerun = restarted.json()["task"]["id"].as_i64().unwrap();
    assert_eq!(restarted.json()["task"]["restart_of"], first_id);
    let twice = client
        .post(&format!("/v1/tasks/{first_id}/restart"), Vec::new())
        .await;
    assert_eq!(twice.status, StatusCode::OK);
    assert_eq!(twice.json()["task"]["id"], rerun);
    // A `null` body is an absent one.
    let null = client
        .post(&format!("/v1/tasks/{first_id}/restart"), b"null".to_vec())
        .await;
    assert_eq!(null.status, StatusCode::OK, "{}", null.text());
    assert_eq!(
        client
            .post_json("/v1/tasks/x/restart", json!({}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .post_json("/v1/tasks/999999/restart", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(client.wait_job(again).await["status"], "succeeded");
    let retried = client
        .post(&format!("/v1/jobs/{again}/retry"), Vec::new())
        .await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.json()["tasks"], 0);
    assert_eq!(
        client.post("/v1/jobs/x/retry", Vec::new()).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .post("/v1/jobs/999999/retry", Vec::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let resubmitted = client
        .post_json(
            &format!("/v1/jobs/{again}/resubmit"),
            json!({"limits": {"timeout": "5s"}}),
        )
        .await;
    assert_eq!(
        resubmitted.status,
        StatusCode::CREATED,
        "{}",
        resubmitted.text()
    );
    let copy = client
        .wait_job(resubmitted.json()["id"].as_i64().unwrap())
        .await;
    assert_eq!(copy["resubmit_of"], again);
    assert_eq!(copy["limits"]["timeout"], "5s");
    assert_eq!(
        client
            .post_json(
                &format!("/v1/jobs/{again}/resubmit"),
                json!({"failed": true})
            )
            .await
            .code(),
        "conflict"
    );
    assert_eq!(
        client
            .post_json("/v1/jobs/x/resubmit", json!({}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .post_json("/v1/jobs/999999/resubmit", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Quotas: a tenant at one is refused (429 over_quota, naming it) on
    // every route that starts tasks, and nothing is created.
    let store = instance.scheduler.store();
    let jobs_before = client.all("/v1/jobs").await.len();
    let day = sandmill_server::store::Quota {
        open_tasks: None,
        tasks_per_day: Some(0),
        cpu_seconds_per_day: None,
        storage_bytes: None,
    };
    store.put_quota("default", day).await.unwrap();
    for (uri, body) in [
        (
            "/v1/jobs".to_owned(),
            json!({"name": "over", "task": {"module": module}}),
        ),
        ("/v1/run".to_owned(), json!({"module": module})),
        (format!("/v1/jobs/{again}/resubmit"), json!({})),
    ] {
        let refused = client.post_json(&uri, body).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{uri}");
        assert_eq!(refused.code(), "over_quota");
        assert!(
            refused.text().contains("tasks_per_day"),
            "{}",
            refused.text()
        );
    }
    assert_eq!(client.all("/v1/jobs").await.len(), jobs_before);
    assert!(store.delete_quota("default").await.unwrap());
    // Deleting an ended job: it goes with its tasks (one restarted within
    // it); the job resubmitted from it forgets it.
    let copy_id = copy["id"].as_i64().unwrap();
    let deleted = client
        .send("DELETE", &format!("/v1/jobs/{again}"), Vec::new())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    for gone in [
        format!("/v1/jobs/{again}"),
        format!("/v1/tasks/{first_id}"),
        format!("/v1/tasks/{rerun}"),
    ] {
        assert_eq!(
            client.get(&gone).await.status,
            StatusCode::NOT_FOUND,
            "{gone}"
        );
    }
    let copy = client.get(&format!("/v1/jobs/{copy_id}")).await.json();
    assert!(copy["resubmit_of"].is_null(), "{copy}");
    assert_eq!(copy["status"], "succeeded");
    assert_eq!(
        client
            .send("DELETE", &format!("/v1/jobs/{again}"), Vec::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.send("DELETE", "/v1/jobs/x", Vec::new()).await.status,
        StatusCode::BAD_REQUEST
    );
    // A task still running cannot be restarted; a map-reduce job's tasks
    // are neither restarted, retried nor replayed one by one.
    let busy = json!({"name": "busy", "task": {"module": looping}, "limits": {"timeout": "30s"}});
    let busy = client.post_json("/v1/jobs", busy).await.json()["id"]
        .as_i64()
        .unwrap();
    let running = client
        .send("DELETE", &format!("/v1/jobs/{busy}"), Vec::new())
        .await;
    assert_eq!(running.status, StatusCode::CONFLICT);
    assert!(
        running.text().contains("cancel it first"),
        "{}",
        running.text()
    );
    let busy_task = client.get(&format!("/v1/jobs/{busy}/tasks")).await.json()["items"][0]["id"]
        .as_i64()
        .unwrap();
    let live = client
        .post_json(&format!("/v1/tasks/{busy_task}/restart"), json!({}))
        .await;
    assert_eq!(live.status, StatusCode::CONFLICT, "{}", live.text());
    client
        .post(&format!("/v1/jobs/{busy}/cancel"), Vec::new())
        .await;
    let words = client
        .post("/v1/modules", std::fs::read(guests::WORDCOUNT).unwrap())
        .await
        .json()["module"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = client.post("/v1/inputs", b"a b a".to_vec()).await.json()["input"]
        .as_str()
        .unwrap()
        .to_owned();
    let counted = client
        .post_json(
            "/v1/jobs",
            json!({"name": "words", "mapreduce": {"module": words, "inputs": [],
                   "splits": [{"input": text, "name": "t"}], "reducers": 1}}),
        )
        .await;
    assert_eq!(counted.status, StatusCode::CREATED, "{}", counted.text());
    let counted = counted.json()["id"].as_i64().unwrap();
    client.wait_job(counted).await;
    let map_task = client
        .get(&format!("/v1/jobs/{counted}/tasks"))
        .await
        .json()["items"][0]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{map_task}/call"))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        client
            .get(&format!("/v1/tasks/{map_task}/blobs/{}", "0".repeat(64)))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        client
            .post(&format!("/v1/jobs/{counted}/retry"), Vec::new())
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        client
            .post_json(&format!("/v1/tasks/{map_task}/restart"), json!({}))
            .await
            .status,
        StatusCode::CONFLICT
    );

    // Reservations (in an hour: none holds while the suite runs jobs):
    // booked, listed, read, cancelled; refused past the limits the suite's
    // server has (4 slots at once, 3 per tenant, a day ahead).
    let at = |hours: u64| {
        humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(hours * 3600))
            .to_string()
    };
    let book = |slots: i64, from: u64, until: u64| json!({"slots": slots, "from": at(from), "until": at(until)});
    let booked = client.post_json("/v1/reservations", book(3, 1, 2)).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.text());
    let booked = booked.json();
    assert_eq!(booked["slots"], 3);
    assert_eq!(booked["tenant"], "default");
    assert_eq!(booked["active"], false);
    let other = json!({"slots": 1, "from": at(1), "until": at(2), "tenant": "other"});
    let other = client.post_json("/v1/reservations", other).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text());
    assert_eq!(other.json()["tenant"], "other");
    let full = client.post_json("/v1/reservations", book(1, 1, 3)).await;
    assert_eq!(full.status, StatusCode::CONFLICT, "{}", full.text());
    assert!(
        full.text().contains("--reservable-slots"),
        "{}",
        full.text()
    );
    for (body, field) in [
        (book(5, 1, 2), "slots"),
        (book(1, 2, 1), "until"),
        (book(1, 1, 30), "until"),
        (json!({"slots": 1, "until": "tomorrow"}), "until"),
        (json!({"slots": 1, "until": at(1), "seats": 2}), ""),
    ] {
        let refused = client.post_json("/v1/reservations", body).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{}",
            refused.text()
        );
        if !field.is_empty() {
            assert_eq!(refused.json()["field"], field, "{}", refused.text());
        }
    }
    let huge = client.post("/v1/reservations", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    for hours in [3, 5] {
        let later = client
            .post_json("/v1/reservations", book(1, hours, hours + 1))
            .await;
        assert_eq!(later.status, StatusCode::CREATED, "{}", later.text());
    }
    let many = client.post_json("/v1/reservations", book(1, 7, 8)).await;
    assert_eq!(
        many.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        many.text()
    );
    assert!(
        many.text().contains("--max-reservations"),
        "{}",
        many.text()
    );
    let page = client.get("/v1/reservations?limit=2").await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    let rest = client
        .get(&format!(
            "/v1/reservations?cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await
        .json();
    let ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(
        client.get("/v1/reservations?cursor=zz").await.status,
        StatusCode::BAD_REQUEST
    );
    let one = client
        .get(&format!("/v1/reservations/{}", booked["id"]))
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["until"], booked["until"]);
    for id in ids {
        let path = format!("/v1/reservations/{id}");
        assert_eq!(
            client.send("DELETE", &path, Vec::new()).await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(client.get(&path).await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            client.send("DELETE", &path, Vec::new()).await.status,
            StatusCode::NOT_FOUND
        );
    }

    // Schedules: created from a job file with `every`, listed, paused,
    // resumed, deleted; refused as a job; bad ones refused.
    let tick =
        json!({"name": "tick", "every": "1h", "overlap": "queue", "task": {"module": "echo@1"}});
    let created = client.post_json("/v1/schedules", tick.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    assert_eq!(created["every"], "1h");
    assert_eq!(created["overlap"], "queue");
    assert_eq!(created["paused"], false);
    assert_eq!(created["job"]["task"]["module"], "echo@1");
    assert!(
        created["job"]["every"].is_null(),
        "the job it submits has no schedule"
    );
    assert_eq!(
        client.post_json("/v1/schedules", tick.clone()).await.code(),
        "conflict"
    );
    assert_eq!(
        client.post_json("/v1/jobs", tick).await.code(),
        "bad_request"
    );
    for (body, field) in [
        (
            json!({"name": "x", "every": "soon", "task": {"module": "echo@1"}}),
            "every",
        ),
        (
            json!({"name": "x", "every": "10ms", "task": {"module": "echo@1"}}),
            "every",
        ),
        (
            json!({"name": "x", "schedule": "every day", "task": {"module": "echo@1"}}),
            "schedule",
        ),
        (
            json!({"name": "x", "schedule": "0 * * * * *", "every": "1s", "task": {"module": "echo@1"}}),
            "every",
        ),
        (
            json!({"name": "x", "task": {"module": "echo@1"}}),
            "schedule",
        ),
    ] {
        let refused = client.post_json("/v1/schedules", body).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{}",
            refused.text()
        );
        assert_eq!(refused.json()["field"], field, "{}", refused.text());
    }
    assert_eq!(
        client
            .post_json(
                "/v1/schedules",
                json!({"name": "x", "every": "1s", "task": {"module": "nope@1"}})
            )
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let huge = client.post("/v1/schedules", vec![b' '; 5 << 20]).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    let cron = json!({"name": "nightly", "schedule": "0 0 3 * * *", "task": {"module": "echo@1"}});
    assert_eq!(
        client.post_json("/v1/schedules", cron).await.status,
        StatusCode::CREATED
    );
    let names: Vec<String> = client
        .all("/v1/schedules?limit=1")
        .await
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["nightly", "tick"]);
    assert_eq!(
        client.get("/v1/schedules?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    let paused = client
        .post("/v1/schedules/tick/pause", Vec::new())
        .await
        .json();
    assert_eq!(paused["paused"], true);
    assert!(paused["next_at"].is_null());
    let resumed = client
        .post("/v1/schedules/tick/resume", Vec::new())
        .await
        .json();
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_at"].is_string());
    assert_eq!(
        client.get("/v1/schedules/nightly").await.json()["schedule"],
        "0 0 3 * * *"
    );
    for name in ["tick", "nightly"] {
        assert_eq!(
            client
                .send("DELETE", &format!("/v1/schedules/{name}"), Vec::new())
                .await
                .status,
            StatusCode::NO_CONTENT
        );
    }
    for (method, uri) in [
        ("GET", "/v1/schedules/tick"),
        ("DELETE", "/v1/schedules/tick"),
        ("POST", "/v1/schedules/tick/pause"),
        ("POST", "/v1/schedules/tick/resume"),
    ] {
        assert_eq!(
            client.send(method, uri, Vec::new()).await.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}"
        );
    }

    // Subscriptions: need NATS (409 without), then the whole resource.
    let echo = json!({"name": "echo", "subject": "api.echo.>", "module": module, "queue": false});
    let refused = client.post_json("/v1/subscriptions", echo.clone()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    assert!(refused.text().contains("NATS"), "{}", refused.text());
    assert_eq!(
        client.get("/v1/subscriptions").await.json()["items"],
        json!([])
    );
    let nats = support::Nats::start();
    instance
        .scheduler
        .set_nats(support::nats_client(&nats.url()).await);
    let created = client.post_json("/v1/subscriptions", echo.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    assert_eq!(created["version"], 1);
    assert_eq!(created["results_subject"], "sandmill.results.echo");
    assert_eq!(created["keep"]["within"], "1day");
    let durable =
        json!({"name": "durable", "subject": "api.durable", "module": module, "keep": 10});
    let replaced = client.post_json("/v1/subscriptions", durable.clone()).await;
    assert_eq!(replaced.status, StatusCode::CREATED, "{}", replaced.text());
    let again = client
        .post_json("/v1/subscriptions", durable.clone())
        .await
        .json();
    assert_eq!(again["version"], 2, "{again}");
    assert_eq!(again["stream"], "SANDMILL_SUB_durable", "{again}");
    assert_eq!(again["keep"], json!({"within": null, "count": 10}));
    let first_job = replaced.json()["job_id"].as_i64().unwrap();
    assert_ne!(again["job_id"], first_job, "a new version, a new job");
    assert_ne!(
        client.get(&format!("/v1/jobs/{first_job}")).await.json()["status"],
        "running"
    );
    for (body, status, field) in [
        (
            json!({"name": "bad", "subject": "a..b", "module": module}),
            StatusCode::BAD_REQUEST,
            "subject",
        ),
        (
            json!({"name": "bad name", "subject": "a.b", "module": module}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "bad", "subject": "a.b", "module": module, "max_in_flight": 0}),
            StatusCode::BAD_REQUEST,
            "max_in_flight",
        ),
        (
            json!({"name": "bad", "subject": "a.b", "module": "nosuch@1"}),
            StatusCode::NOT_FOUND,
            "",
        ),
        // Its subject overlaps `durable`'s stream.
        (
            json!({"name": "overlap", "subject": "api.*", "module": module}),
            StatusCode::CONFLICT,
            "",
        ),
    ] {
        let reply = client.post_json("/v1/subscriptions", body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        if !field.is_empty() {
            assert_eq!(reply.json()["field"], field, "{}", reply.text());
        }
        assert_eq!(
            client.get("/v1/subscriptions/bad").await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        client
            .post("/v1/subscriptions", vec![b' '; 5 << 20])
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let listed = client.all("/v1/subscriptions?limit=1").await;
    let names: Vec<&str> = listed.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["durable", "echo"]);
    assert_eq!(
        client.get("/v1/subscriptions?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client.get("/v1/subscriptions/echo").await.json()["subject"],
        "api.echo.>"
    );
    assert_eq!(
        client
            .get("/v1/subscriptions/durable/dead-letters")
            .await
            .json()["items"],
        json!([])
    );
    assert_eq!(
        client
            .get("/v1/subscriptions/durable/dead-letters?cursor=@@")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    for name in ["echo", "durable"] {
        assert_eq!(
            client
                .send("DELETE", &format!("/v1/subscriptions/{name}"), Vec::new())
                .await
                .status,
            StatusCode::NO_CONTENT
        );
    }
    for (method, uri) in [
        ("GET", "/v1/subscriptions/echo"),
        ("DELETE", "/v1/subscriptions/echo"),
        ("GET", "/v1/subscriptions/echo/dead-letters"),
    ] {
        assert_eq!(
            client.send(method, uri, Vec::new()).await.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}"
        );
    }
    drop(nats);

    // Live events: a job's stream opens with where it is; everything's
    // stream goes on from a Last-Event-ID; each event is an EventView.
    let opening = client
        .first_event(&format!("/v1/jobs/{sweep_id}/events"), None)
        .await;
    assert_eq!(opening["type"], "job");
    assert_eq!(opening["job_id"], sweep_id);
    assert_eq!(opening["status"], "succeeded");
    assert_eq!(opening["tasks"]["succeeded"], 5);
    let from = opening["id"].as_u64().unwrap() - 1;
    let replayed = client.first_event("/v1/events", Some(from)).await;
    assert_eq!(replayed["id"].as_u64().unwrap(), from + 1);
    for (uri, status) in [
        (
            format!("/v1/jobs/{sweep_id}/events"),
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/events".to_owned(), StatusCode::BAD_REQUEST),
        ("/v1/jobs/424242/events".to_owned(), StatusCode::NOT_FOUND),
    ] {
        let request = Request::builder()
            .uri(&uri)
            .header(
                "last-event-id",
                if status == StatusCode::NOT_FOUND {
                    "1"
                } else {
                    "x"
                },
            )
            .body(Body::empty())
            .unwrap();
        assert_eq!(client.request(request).await.status, status, "{uri}");
    }

    // With tokens: every route but /healthz is 401 without a live one, and
    // a reader's token may not change anything (403).
    let (_, reader) = sandmill_server::api::auth::new_token().unwrap();
    instance
        .scheduler
        .store()
        .put_token(
            "reader-suite",
            &sandmill_server::api::auth::hash_secret(&reader),
            "suite",
            "reader",
        )
        .await
        .unwrap();
    let guarded = client.beside(api::router(
        instance.scheduler.clone(),
        ApiConfig {
            auth: sandmill_server::api::auth::AuthMode::Tokens,
            ..ApiConfig::default()
        },
    ));
    // An open server on loopback: a web page's request (another Origin)
    // is 403 on every route but /healthz.
    let local = client.beside(api::router(
        instance.scheduler.clone(),
        ApiConfig {
            local: Some(sandmill_server::api::auth::LocalGuard {
                hosts: vec!["127.0.0.1:7878".to_owned()],
            }),
            ..ApiConfig::default()
        },
    ));
    // A body that never arrives: 408 once `body_timeout` has passed.
    let slow = client.beside(api::router(
        instance.scheduler.clone(),
        ApiConfig {
            body_timeout: Duration::from_millis(50),
            ..ApiConfig::default()
        },
    ));
    let documented = client.checker.documented();
    let routes: std::collections::BTreeSet<(String, String)> = client
        .checker
        .documented()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    for (method, path) in routes {
        let uri = path
            .replace("{id}", "1")
            .replace("{name}", "x")
            .replace("{hash}", "00");
        let method = method.to_uppercase();
        if path.contains("{id}") {
            // An id past i64 is a 400 (documented), never a 404 or 500.
            let past = uri.replace("/1", "/9223372036854775808");
            let reply = client.send(&method, &past, Vec::new()).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {past}");
        }
        let bare = guarded.send(&method, &uri, Vec::new()).await;
        if path == "/healthz" {
            assert_eq!(bare.status, StatusCode::OK);
            continue;
        }
        let request = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header("host", "127.0.0.1:7878")
            .header("origin", "https://page.example")
            .body(Body::empty())
            .unwrap();
        let cross = local.request(request).await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert_eq!(cross.code(), "forbidden");
        if documented.contains(&(method.to_lowercase(), path.clone(), 408)) {
            let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            let request = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .body(Body::from_stream(never))
                .unwrap();
            let late = slow.request(request).await;
            assert_eq!(late.status, StatusCode::REQUEST_TIMEOUT, "{method} {uri}");
            assert_eq!(late.code(), "request_timeout");
        }
        assert_eq!(bare.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(bare.code(), "unauthorized");
        if method != "GET" {
            let request = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .header("authorization", format!("Bearer {reader}"))
                .body(Body::empty())
                .unwrap();
            let read_only = guarded.request(request).await;
            assert_eq!(read_only.status, StatusCode::FORBIDDEN, "{method} {uri}");
            assert_eq!(read_only.code(), "forbidden");
        }
    }

    // A server with tokens documents the bearer token it asks for.
    let request = Request::builder()
        .uri("/v1/openapi.json")
        .header("authorization", format!("Bearer {reader}"))
        .body(Body::empty())
        .unwrap();
    let document = guarded.request(request).await.json();
    assert_eq!(document["security"], json!([{"bearer": []}]));
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Every documented route and status was seen, except those that need
    // a dependency down or a blob bucket full (checked where one is: the
    // fleet tests).
    let seen = client.checker.seen();
    let unseen: Vec<_> = client
        .checker
        .documented()
        .into_iter()
        .filter(|key| !seen.contains(key))
        .filter(|(_, _, status)| *status != 503 && *status != 507)
        .collect();
    assert!(unseen.is_empty(), "documented but never seen: {unseen:?}");

    instance.shutdown(Duration::from_secs(10)).await;
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
    let app = api::router(instance.scheduler.clone(), ApiConfig::default());
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
    instance.shutdown(Duration::from_secs(10)).await;
}

/// A thread's nice value, from `/proc/self/task/<tid>/stat` (or the
/// process's own, from `/proc/self/stat`).
#[cfg(target_os = "linux")]
fn nice_of(stat: &str) -> i32 {
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    // Fields from the third (state) on; nice is the 19th.
    after_name
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

/// The embedded worker slots run below the process's CPU priority, so an
/// interactive call does not wait for a core behind a sweep.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn embedded_slots_run_below_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.workers = 2;
    let instance = embedded::start(config).await.unwrap();
    let process = nice_of(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let expected = (process + embedded::BATCH_NICE).min(19);
    let slots = || {
        let mut slots = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            // A thread names itself (and lowers its priority) once it runs.
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("stat")),
            ) else {
                continue;
            };
            if name.trim().starts_with("sandmill-slot-") {
                slots.push(nice_of(&stat));
            }
        }
        slots
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = slots();
    // Named first, then lowered: wait for both.
    while !(seen.len() >= 2 && seen.iter().all(|&n| n == expected))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = slots();
    }
    assert!(seen.len() >= 2, "slot threads: {seen:?}");
    assert!(
        seen.iter().all(|&n| n == expected),
        "{seen:?}, process {process}"
    );
    instance.shutdown(Duration::from_secs(10)).await;
}
