//! Sharing one Sandmill: what an open `sandmill dev` refuses from web
//! pages, the server's grant policy, and what a worker honours. Each test
//! runs a real `sandmill dev` process.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{dev, submit_json, upload_module};

use sandmill_test_artifacts as guests;

/// One test at a time: each runs its own server, and the fair-share test
/// measures time.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` on a runtime, bounded, on its own.
fn run_test(limit: Duration, test: impl std::future::Future<Output = ()>) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(limit, test)
                .await
                .expect("the test finished in time");
        });
}

/// A job running the network guest against `addr`, granted the network.
async fn network_job(http: &reqwest::Client, base: &str, addr: &str) -> Value {
    let module = upload_module(http, base, guests::HOSTILE_NET_ESCAPE).await;
    let input: Value = http
        .post(format!("{base}/v1/inputs"))
        .header("content-type", "application/octet-stream")
        .body(addr.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    json!({"name": "net", "grants": {"allow": ["network"]}, "max_attempts": 1,
        "task": {"module": module, "input": input["input"]}})
}

/// The job's only task once the job has ended.
async fn ended_task(http: &reqwest::Client, base: &str, id: i64) -> Value {
    for _ in 0..600 {
        let job = support::job(http, base, id).await;
        if job["status"] != "running" {
            let tasks: Value = support::get_json(http, &format!("{base}/v1/jobs/{id}/tasks")).await;
            return tasks["items"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not end");
}

async fn jobs_listed(http: &reqwest::Client, base: &str) -> usize {
    let page: Value = support::get_json(http, &format!("{base}/v1/jobs")).await;
    page["items"].as_array().unwrap().len()
}

#[test]
fn an_open_dev_server_refuses_web_pages_and_ungranted_network() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&[]);
        let http = sandmill_server::tls::default_client();
        let base = &dev.base;
        let module = upload_module(&http, base, guests::NOOP).await;
        let job = json!({"name": "one", "task": {"module": module}});

        // A page elsewhere posting JSON (its Origin is its own).
        let cross = http
            .post(format!("{base}/v1/jobs"))
            .header("origin", "http://evil.example")
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403);
        let body: Value = cross.json().await.unwrap();
        assert_eq!(body["code"], "forbidden", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("evil.example"),
            "{body}"
        );
        // A form's body type, which browsers send without asking.
        let form = http
            .post(format!("{base}/v1/jobs"))
            .header("content-type", "text/plain")
            .body(job.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), 403);
        // DNS rebinding: a name of the attacker's resolving to 127.0.0.1.
        let rebound = http
            .post(format!("{base}/v1/jobs"))
            .header("host", format!("rebind.example:{}", dev.port))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403);
        let rebound_read = http
            .get(format!("{base}/v1/jobs"))
            .header("host", format!("rebind.example:{}", dev.port))
            .send()
            .await
            .unwrap();
        assert_eq!(rebound_read.status(), 403);
        assert_eq!(
            jobs_listed(&http, base).await,
            0,
            "a refused request changes nothing"
        );

        // Its own page (same origin) and the CLI's requests are served.
        let own = http
            .post(format!("{base}/v1/jobs"))
            .header("origin", format!("http://localhost:{}", dev.port))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 201);
        assert_eq!(jobs_listed(&http, base).await, 1);

        // No policy: a job granting the network is refused, naming it.
        let (addr, _listener) = support::one_connection();
        let net = network_job(&http, base, &addr).await;
        let refused = http
            .post(format!("{base}/v1/jobs"))
            .json(&net)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "forbidden", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("`network`"),
            "{body}"
        );
        assert_eq!(
            jobs_listed(&http, base).await,
            1,
            "a refused job changes nothing"
        );
        // Nor can a spec carry it.
        let spec = http
            .post(format!("{base}/v1/specs"))
            .json(
                &json!({"name": "net", "version": "1", "module": net["task"]["module"],
                "kind": "task", "grants": {"allow": ["network"]}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(spec.status(), 403);
    });
}

#[test]
fn a_guest_granted_the_internet_cannot_reach_loopback_services() {
    run_test(Duration::from_secs(180), async {
        // The policy lets guests reach a public range, not this machine.
        let dev = dev(&["--allow-network", "203.0.113.0/24:443,0.0.0.0/0:80"]);
        let http = sandmill_server::tls::default_client();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let net = network_job(&http, &dev.base, &addr).await;
        let id = submit_json(&http, &dev.base, &net).await;
        let task = ended_task(&http, &dev.base, id).await;
        assert_eq!(task["state"], "failed", "{task}");
        assert_eq!(task["reason"], "guest-error", "{task}");
        assert!(
            task["error"].as_str().unwrap().contains("cannot connect"),
            "{task}"
        );
        assert_eq!(
            listener.accept().map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "nothing may have connected"
        );
        // The task records where it was allowed.
        let detail: Value =
            support::get_json(&http, &format!("{}/v1/tasks/{}/call", dev.base, task["id"])).await;
        assert_eq!(
            detail["grants"]["hosts"],
            json!(["203.0.113.0/24:443", "0.0.0.0/0:80"]),
            "{detail}"
        );
    });
}

#[test]
fn a_worker_that_does_not_allow_a_grant_refuses_its_tasks() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&[
            "--allow-network",
            "127.0.0.1",
            "--allow-grants",
            "clock,random",
        ]);
        let http = sandmill_server::tls::default_client();
        let (addr, _listener) = support::one_connection();
        let net = network_job(&http, &dev.base, &addr).await;
        let id = submit_json(&http, &dev.base, &net).await;
        let task = ended_task(&http, &dev.base, id).await;
        assert_eq!(task["state"], "failed", "{task}");
        assert_eq!(task["reason"], "bad-grant", "{task}");
        assert!(
            task["error"].as_str().unwrap().contains("--allow-grants"),
            "{task}"
        );
    });
}

/// Sends `head` (and no more) on a new connection to `port`; returns the
/// connection.
async fn stalled(port: u16, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// What the server sends on `stream` until it closes it (bounded).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut all))
        .await
        .expect("the server closed the connection in time")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn slow_clients_and_crowds_are_cut_off_by_the_http_limits() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&[
            "--header-timeout",
            "1s",
            "--body-timeout",
            "2s",
            "--max-requests",
            "2",
        ]);
        let http = sandmill_server::tls::default_client();
        let host = format!("127.0.0.1:{}", dev.port);

        // Headers that never end: the connection is closed.
        let mut slow_head = stalled(
            dev.port,
            &format!("GET /v1/jobs HTTP/1.1\r\nHost: {host}\r\n"),
        )
        .await;
        read_to_close(&mut slow_head).await;

        // Two bodies that stall hold both request slots: a third request
        // is refused at once, /healthz still answers.
        let post = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\""
        );
        let mut first = stalled(dev.port, &post).await;
        let mut second = stalled(dev.port, &post).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let crowded = http
            .get(format!("{}/v1/jobs", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(crowded.status(), 503);
        let body: Value = crowded.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("--max-requests"),
            "{body}"
        );
        let health = http
            .get(format!("{}/healthz", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        // The stalled bodies time out (408) and free their slots.
        for stream in [&mut first, &mut second] {
            let answer = read_to_close(stream).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains("request_timeout"), "{answer}");
        }
        let listed = http
            .get(format!("{}/v1/jobs", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);
        let page: Value = listed.json().await.unwrap();
        assert_eq!(page["items"], json!([]), "nothing half-sent was accepted");
    });
}

#[test]
fn an_upload_that_stalls_holds_up_no_other_upload() {
    use tokio::io::AsyncReadExt;
    run_test(Duration::from_secs(120), async {
        let dev = dev(&[]);
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &dev.base).await;
        // Half of a 1 MiB module, then nothing: bodies take turns at being
        // copied, and one that waits for its client must not keep the
        // turn.
        let half = "\0".repeat(512 << 10);
        let mut stalled = stalled(
            dev.port,
            &format!(
                "POST /v1/modules HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\n\r\n{half}",
                dev.port,
                1 << 20
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another upload is stored while the stalled one still waits for
        // its body (unanswered until its 60 s --body-timeout).
        let module = upload_module(&http, &dev.base, guests::NOOP).await;
        assert!(!module.is_empty());
        let mut answer = [0u8; 1];
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), stalled.read(&mut answer)).await;
        assert!(waiting.is_err(), "the stalled upload was answered first");
    });
}

#[test]
fn run_calls_past_the_waiting_cap_are_accepted_without_waiting() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&["--max-waiting-runs", "1"]);
        let http = sandmill_server::tls::default_client();
        let looping = upload_module(&http, &dev.base, guests::HOSTILE_LOOP).await;
        let noop = upload_module(&http, &dev.base, guests::NOOP).await;
        let run = |body: Value| {
            let http = http.clone();
            let url = format!("{}/v1/run", dev.base);
            async move { http.post(url).json(&body).send().await.unwrap() }
        };
        // One call waits (a guest that loops until its 3 s timeout) ...
        let waiting = tokio::spawn(run(json!({"module": looping, "kind": "task",
            "limits": {"timeout": "3s"}})));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // ... so another is accepted and answered with its job at once.
        let second = run(json!({"module": noop, "kind": "task"})).await;
        assert_eq!(second.status(), 202);
        let created: Value = second.json().await.unwrap();
        let id = created["id"].as_i64().unwrap();
        let waited = waiting.await.unwrap();
        assert_eq!(waited.status(), 422);
        let task = ended_task(&http, &dev.base, id).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        // With the room free again, a call waits and gets its output.
        let third = run(json!({"module": noop, "kind": "task"})).await;
        assert_eq!(third.status(), 200);
    });
}

#[test]
fn retention_removes_ended_jobs_and_nothing_a_running_one_needs() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&["--retain", "2s"]);
        let http = sandmill_server::tls::default_client();
        let base = &dev.base;
        let noop = upload_module(&http, base, guests::NOOP).await;
        let looping = upload_module(&http, base, guests::HOSTILE_LOOP).await;
        // A job that ends at once, and one that runs for 6 s meanwhile.
        let running = submit_json(
            &http,
            base,
            &json!({"name": "long", "task": {"module": looping}, "max_attempts": 1,
                "limits": {"timeout": "6s"}}),
        )
        .await;
        let ended = submit_json(
            &http,
            base,
            &json!({"name": "short", "sweep": {"module": noop, "count": 3}}),
        )
        .await;
        let first = ended_task(&http, base, ended).await;
        assert_eq!(first["state"], "succeeded");
        let first = first["id"].as_i64().unwrap();

        // The ended job goes once 2 s have passed since its end.
        let mut waited = 0;
        while support::collection::status_of(&http, base, &format!("/v1/jobs/{ended}")).await == 200
        {
            waited += 1;
            assert!(waited < 150, "job {ended} was never removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            support::collection::status_of(&http, base, &format!("/v1/jobs/{ended}")).await,
            404
        );
        assert_eq!(
            support::collection::status_of(&http, base, &format!("/v1/tasks/{first}")).await,
            404
        );
        // The running job and its task stay, and it still ends well.
        let job = support::job(&http, base, running).await;
        assert_eq!(job["status"], "running", "{job}");
        let task = ended_task(&http, base, running).await;
        assert_eq!(task["state"], "failed", "{task}");
        assert_eq!(task["reason"], "timeout", "{task}");
        // Then it goes too.
        let mut waited = 0;
        while support::collection::status_of(&http, base, &format!("/v1/jobs/{running}")).await
            == 200
        {
            waited += 1;
            assert!(waited < 150, "job {running} was never removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(jobs_listed(&http, base).await, 0);
    });
}

#[test]
fn limits_past_the_servers_ceilings_are_refused_naming_them() {
    run_test(Duration::from_secs(180), async {
        let dev = dev(&[
            "--max-memory",
            "64MiB",
            "--max-timeout",
            "5s",
            "--max-fuel",
            "1000000",
            "--max-output",
            "1MiB",
            "--max-log",
            "4KiB",
            "--max-attempts",
            "2",
        ]);
        let http = sandmill_server::tls::default_client();
        let base = &dev.base;
        let noop = upload_module(&http, base, guests::NOOP).await;
        let post = |path: &'static str, body: Value| {
            let http = http.clone();
            let url = format!("{base}{path}");
            async move {
                let response = http.post(url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        for (field, limits, ceiling) in [
            ("limits.memory", json!({"memory": "65MiB"}), "64MiB"),
            ("limits.timeout", json!({"timeout": "6s"}), "5s"),
            ("limits.fuel", json!({"fuel": 1_000_001}), "1000000"),
            ("limits.output", json!({"output": "2MiB"}), "1MiB"),
            ("limits.log", json!({"log": "5KiB"}), "4KiB"),
        ] {
            let (status, body) = post(
                "/v1/jobs",
                json!({"name": "big", "task": {"module": noop}, "limits": limits}),
            )
            .await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["field"], field, "{body}");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(ceiling) && message.contains("--max-"),
                "{body}"
            );
        }
        let (status, body) = post(
            "/v1/jobs",
            json!({"name": "big", "task": {"module": noop}, "max_attempts": 3}),
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("max_attempts")),
            "{body}"
        );
        // A spec's defaults are held to them when a job uses it.
        let (status, body) = post(
            "/v1/specs",
            json!({"name": "big", "version": "1", "module": noop, "kind": "task",
                "limits": {"memory": "128MiB"}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = post(
            "/v1/jobs",
            json!({"name": "big", "task": {"module": "big@1"}}),
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("limits.memory")),
            "{body}"
        );
        // Within them, it runs; resubmitted with more, it is refused.
        let (status, body) = post(
            "/v1/jobs",
            json!({"name": "ok", "task": {"module": noop}, "max_attempts": 2,
                "limits": {"memory": "64MiB", "timeout": "5s", "output": "1MiB", "log": "4KiB"}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_i64().unwrap();
        assert_eq!(ended_task(&http, base, id).await["state"], "succeeded");
        let response = http
            .post(format!("{base}/v1/jobs/{id}/resubmit"))
            .json(&json!({"limits": {"memory": "1GiB"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(jobs_listed(&http, base).await, 1, "refusals change nothing");
    });
}

/// Tenants: every route answers 404 for another tenant's job, task, blob,
/// module, spec, schedule and subscription, as if it did not exist; lists
/// and the event stream leave them out; nothing of theirs can be named in
/// a job; names of specs are per tenant; an admin sees everything. An
/// `env` grant's value appears in no response and no log line.
#[test]
fn tenants_see_only_their_own_and_env_secrets_never_show() {
    run_test(Duration::from_secs(240), async {
        const SECRET: &str = "s3cr3t-value-7f1d2c";
        let nats = support::Nats::start();
        let data = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let log = data.path().join("dev.log");
        let mut command = support::dev_command(data.path(), port);
        command
            .args(["--auth", "tokens", "--nats", &nats.url()])
            .env("SANDMILL_LOG", "debug")
            .stderr(std::fs::File::create(&log).unwrap());
        let _process = support::Killed::spawn(&mut command);
        support::wait_port(port, Duration::from_secs(60));
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        let database = dev_database(data.path());
        let who =
            |tenant: &str, role: &str| support::As::new(&http, &base, &database, tenant, role);
        let alpha = who("alpha", "user");
        let beta = who("beta", "user");
        let admin = who("ops", "admin");

        // Alpha's objects: a module, an input, a spec, a job with a secret,
        // a schedule and a subscription.
        let module = alpha.upload(guests::NOOP).await;
        let hash = module.trim_start_matches("sha256:").to_owned();
        let (status, text) = alpha
            .send(
                "POST",
                "/v1/inputs",
                Some(("application/octet-stream", b"alpha's own".to_vec())),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let input = serde_json::from_str::<Value>(&text).unwrap()["input"]
            .as_str()
            .unwrap()
            .to_owned();
        let spec = json!({"name": "echo", "version": "1", "module": module, "kind": "task"});
        assert_eq!(alpha.post("/v1/specs", spec.clone()).await.0, 201);
        let secret_grants = json!({"env": {"API_KEY": SECRET}});
        let (status, created) = alpha
            .post(
                "/v1/jobs",
                json!({"name": "secretive", "grants": secret_grants,
                    "task": {"module": "echo@1", "input": input}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let job = created["id"].as_i64().unwrap();
        let task = ended_task_as(&alpha, job).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        let task = task["id"].as_i64().unwrap();
        let (status, schedule) = alpha
            .post(
                "/v1/schedules",
                json!({"name": "alpha-tick", "every": "1h", "grants": secret_grants,
                    "task": {"module": "echo@1"}}),
            )
            .await;
        assert_eq!(status, 201, "{schedule}");
        let (status, subscription) = alpha
            .post(
                "/v1/subscriptions",
                json!({"name": "alpha-echo", "subject": "alpha.echo.>", "module": module,
                    "queue": false, "grants": secret_grants}),
            )
            .await;
        assert_eq!(status, 201, "{subscription}");

        // Alpha sees its own, with the secret's name and never its value.
        let (status, definition) = alpha.get(&format!("/v1/jobs/{job}/definition")).await;
        assert_eq!(status, 200);
        assert_eq!(definition["grants"]["env"]["API_KEY"], "(hidden)");
        let (_, call) = alpha.get(&format!("/v1/tasks/{task}/call")).await;
        assert_eq!(call["grants"]["env"], json!(["API_KEY"]), "{call}");
        let (_, shown) = alpha.get("/v1/schedules/alpha-tick").await;
        assert_eq!(
            shown["job"]["grants"]["env"]["API_KEY"], "(hidden)",
            "{shown}"
        );
        assert_eq!(alpha.get("/v1/subscriptions/alpha-echo").await.0, 200);
        assert_eq!(
            alpha.get(&format!("/v1/jobs/{job}")).await.1["tenant"],
            "alpha"
        );

        // Beta: every route with alpha's ids, names and hashes is 404.
        let routes = [
            ("GET", format!("/v1/jobs/{job}")),
            ("GET", format!("/v1/jobs/{job}/definition")),
            ("GET", format!("/v1/jobs/{job}/events")),
            ("GET", format!("/v1/jobs/{job}/graph")),
            ("GET", format!("/v1/jobs/{job}/tasks")),
            ("POST", format!("/v1/jobs/{job}/cancel")),
            ("POST", format!("/v1/jobs/{job}/resubmit")),
            ("POST", format!("/v1/jobs/{job}/retry")),
            ("DELETE", format!("/v1/jobs/{job}")),
            ("GET", format!("/v1/tasks/{task}")),
            ("GET", format!("/v1/tasks/{task}/output")),
            ("GET", format!("/v1/tasks/{task}/logs")),
            ("GET", format!("/v1/tasks/{task}/call")),
            ("GET", format!("/v1/tasks/{task}/blobs/{hash}")),
            ("POST", format!("/v1/tasks/{task}/restart")),
            ("GET", format!("/v1/blobs/{hash}")),
            (
                "GET",
                format!("/v1/blobs/{}", input.trim_start_matches("sha256:")),
            ),
            ("GET", format!("/v1/modules/{hash}")),
            ("GET", "/v1/specs/echo".to_owned()),
            ("GET", "/v1/schedules/alpha-tick".to_owned()),
            ("POST", "/v1/schedules/alpha-tick/pause".to_owned()),
            ("POST", "/v1/schedules/alpha-tick/resume".to_owned()),
            ("DELETE", "/v1/schedules/alpha-tick".to_owned()),
            ("GET", "/v1/subscriptions/alpha-echo".to_owned()),
            (
                "GET",
                "/v1/subscriptions/alpha-echo/dead-letters".to_owned(),
            ),
            ("DELETE", "/v1/subscriptions/alpha-echo".to_owned()),
        ];
        for (method, path) in &routes {
            let body = (method == &"POST").then(|| ("application/json", b"{}".to_vec()));
            let (status, text) = beta.send(method, path, body).await;
            assert_eq!(status, 404, "{method} {path}: {text}");
            let error: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(error["code"], "not_found", "{method} {path}: {text}");
        }
        for list in [
            "/v1/jobs",
            "/v1/modules",
            "/v1/specs",
            "/v1/schedules",
            "/v1/subscriptions",
        ] {
            let (status, page) = beta.get(list).await;
            assert_eq!(status, 200);
            assert_eq!(page["items"], json!([]), "{list}");
        }
        // Nothing of alpha's can be named in beta's jobs and specs.
        for job in [
            json!({"name": "theirs", "task": {"module": module}}),
            json!({"name": "theirs", "task": {"module": "echo@1"}}),
        ] {
            let (status, refused) = beta.post("/v1/jobs", job.clone()).await;
            assert_eq!(status, 404, "{job}: {refused}");
        }
        let (status, refused) = beta.post("/v1/run", json!({"module": module})).await;
        assert_eq!(status, 404, "{refused}");
        assert_eq!(beta.post("/v1/specs", spec.clone()).await.0, 404);
        // Its own upload of the same bytes is its own: then it may, and
        // "echo" 1 is a name of its own.
        beta.upload(guests::NOOP).await;
        let (status, input_refused) = beta
            .post(
                "/v1/jobs",
                json!({"name": "in", "task": {"module": module, "input": input}}),
            )
            .await;
        assert_eq!(status, 404, "alpha's input: {input_refused}");
        assert_eq!(beta.post("/v1/specs", spec.clone()).await.0, 201);
        let (status, specs) = beta.get("/v1/specs").await;
        assert_eq!((status, specs["items"].as_array().unwrap().len()), (200, 1));
        assert_eq!(specs["items"][0]["tenant"], "beta");
        // Schedule and subscription names are server-wide (they name
        // streams): taken by another tenant is a conflict, not a takeover.
        let (status, taken) = beta
            .post(
                "/v1/schedules",
                json!({"name": "alpha-tick", "every": "1h", "task": {"module": "echo@1"}}),
            )
            .await;
        assert_eq!(status, 409, "{taken}");
        let (status, taken) = beta
            .post("/v1/subscriptions", json!({"name": "alpha-echo", "subject": "beta.>", "module": module, "queue": false}))
            .await;
        assert_eq!(status, 409, "{taken}");
        assert_eq!(
            alpha.get("/v1/subscriptions/alpha-echo").await.1["subject"],
            "alpha.echo.>"
        );
        // Its own job runs; the event streams keep to each tenant.
        let (beta_events, admin_events) = (beta.events().await, admin.events().await);
        let (status, own) = beta
            .post(
                "/v1/jobs",
                json!({"name": "own", "task": {"module": "echo@1"}}),
            )
            .await;
        assert_eq!(status, 201, "{own}");
        let own = own["id"].as_i64().unwrap();
        let (status, again) = alpha
            .post(
                "/v1/jobs",
                json!({"name": "again", "task": {"module": "echo@1"}}),
            )
            .await;
        assert_eq!(status, 201, "{again}");
        let again = again["id"].as_i64().unwrap();
        ended_task_as(&beta, own).await;
        ended_task_as(&alpha, again).await;
        let job_event = |id: i64| format!("\"job_id\":{id},");
        let seen = support::read_for(beta_events, Duration::from_secs(1)).await;
        assert!(seen.contains(&job_event(own)), "{seen}");
        assert!(!seen.contains(&job_event(again)), "alpha's events: {seen}");
        let seen = support::read_for(admin_events, Duration::from_secs(1)).await;
        assert!(
            seen.contains(&job_event(own)) && seen.contains(&job_event(again)),
            "{seen}"
        );

        // Outputs are cached per tenant: beta's first call identical to
        // alpha's runs; its second takes its own cached output.
        let same = json!({"name": "same", "task": {"module": "echo@1", "params": {"p": 1}}});
        let mut states = Vec::new();
        for caller in [&alpha, &beta, &beta] {
            let (status, made) = caller.post("/v1/jobs", same.clone()).await;
            assert_eq!(status, 201, "{made}");
            let task = ended_task_as(caller, made["id"].as_i64().unwrap()).await;
            states.push(task["state"].as_str().unwrap().to_owned());
        }
        assert_eq!(states, ["succeeded", "succeeded", "cached"]);

        // The admin sees both tenants'.
        let (status, shown) = admin.get(&format!("/v1/jobs/{job}")).await;
        assert_eq!((status, shown["tenant"].as_str()), (200, Some("alpha")));
        let listed: Vec<i64> = admin.get("/v1/jobs").await.1["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        for id in [job, own, again] {
            assert!(listed.contains(&id), "{id} in {listed:?}");
        }
        assert_eq!(
            admin.get("/v1/specs").await.1["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(admin.get(&format!("/v1/tasks/{task}/call")).await.0, 200);
        assert_eq!(admin.get("/v1/schedules/alpha-tick").await.0, 200);
        assert_eq!(admin.get(&format!("/v1/blobs/{hash}")).await.0, 200);

        // The secret: in no answer to anyone, and in no log line.
        for caller in [&alpha, &beta, &admin] {
            for body in caller.bodies.lock().unwrap().iter() {
                assert!(
                    !body.contains(SECRET),
                    "a response showed the secret: {body}"
                );
            }
        }
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("DEBUG"), "the log is on: {logged:.2000}");
        assert!(!logged.contains(SECRET), "a log line showed the secret");
    });
}

/// The job's only task once the job has ended, as `caller`.
async fn ended_task_as(caller: &support::As<'_>, id: i64) -> Value {
    for _ in 0..600 {
        let (_, job) = caller.get(&format!("/v1/jobs/{id}")).await;
        if job["status"] != "running" {
            return caller.get(&format!("/v1/jobs/{id}/tasks")).await.1["items"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not end");
}

/// Fair share with long tasks, embedded: the in-process queues take
/// turns between tenants.
#[test]
fn one_tenants_long_tasks_do_not_hold_up_anothers_job() {
    run_test(Duration::from_secs(300), async {
        let dev = two_tenants(&[]);
        support::fair_share_long_tasks(&dev.base, &dev.database, "embedded", 2).await;
    });
}

/// Fair share between tenants: alpha's sweep of 100,000 no-op tasks is
/// running when beta submits 10; beta's job ends within a second.
#[test]
fn one_tenants_big_sweep_does_not_hold_up_anothers_small_job() {
    run_test(Duration::from_secs(300), async {
        let dev = two_tenants(&[]);
        support::fair_share(&dev.base, &dev.database, "embedded").await;
    });
}

/// The database of a `sandmill dev` on `data`.
fn dev_database(data: &std::path::Path) -> String {
    data.join("sandmill.db").display().to_string()
}

/// A `sandmill dev` with tokens and `extra` flags, whose tenants' tokens
/// come from its database.
struct TwoTenants {
    _process: support::Killed,
    _data: tempfile::TempDir,
    base: String,
    database: String,
    http: reqwest::Client,
}

impl TwoTenants {
    /// A user of `tenant`.
    fn tenant(&self, tenant: &str) -> support::As<'_> {
        support::As::new(&self.http, &self.base, &self.database, tenant, "user")
    }
}

fn two_tenants(extra: &[&str]) -> TwoTenants {
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut command = support::dev_command(data.path(), port);
    command.args(["--auth", "tokens"]).args(extra);
    let process = support::Killed::spawn(&mut command);
    support::wait_port(port, Duration::from_secs(60));
    TwoTenants {
        _process: process,
        database: dev_database(data.path()),
        _data: data,
        base: format!("http://127.0.0.1:{port}"),
        http: sandmill_server::tls::default_client(),
    }
}

/// `sandmill quota ARGS` on `database`, which must succeed.
fn quota(database: &str, args: &[&str]) -> std::process::Output {
    let out = support::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["quota", "--database", database])
            .args(args),
        Duration::from_secs(60),
    );
    support::ok(&out);
    out
}

/// Quotas: past its open tasks (the server's default here) or its own
/// tasks per day (`sandmill quota set`), a tenant's job is refused with
/// 429 naming the quota; another tenant is not affected; ending a job
/// gives its room back; removing a tenant's quotas restores the default.
#[test]
fn tenants_over_a_quota_are_refused_naming_it() {
    run_test(Duration::from_secs(180), async {
        let dev = two_tenants(&["--quota-open-tasks", "30"]);
        let (alpha, beta) = (dev.tenant("alpha"), dev.tenant("beta"));
        let database = &dev.database;
        let module = alpha.upload(guests::HOSTILE_LOOP).await;
        beta.upload(guests::HOSTILE_LOOP).await;
        // Tasks that loop until their timeout: they stay open.
        let sweep = |count: u64| {
            json!({"name": "waits", "limits": {"timeout": "1m"}, "max_attempts": 1,
                "sweep": {"module": module, "count": count}})
        };
        let quota =
            |args: &[&str]| String::from_utf8_lossy(&quota(database, args).stdout).into_owned();

        let (status, first) = alpha.post("/v1/jobs", sweep(20)).await;
        assert_eq!(status, 201, "{first}");
        let (status, refused) = alpha.post("/v1/jobs", sweep(11)).await;
        assert_eq!(status, 429, "{refused}");
        assert_eq!(refused["code"], "over_quota");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("20 open tasks") && message.contains("quota of 30 (open_tasks)"),
            "{message}"
        );
        assert_eq!(alpha.post("/v1/jobs", sweep(10)).await.0, 201, "up to it");
        assert_eq!(beta.post("/v1/jobs", sweep(20)).await.0, 201, "beta's own");

        // Beta's own quota per day.
        quota(&["set", "--tenant", "beta", "--tasks-per-day", "25"]);
        let listed = quota(&["list"]);
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("beta") && l.contains("25")),
            "{listed}"
        );
        let (status, refused) = beta.post("/v1/jobs", sweep(10)).await;
        assert_eq!(status, 429, "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("tasks_per_day"),
            "{refused}"
        );
        assert_eq!(beta.post("/v1/jobs", sweep(5)).await.0, 201);
        quota(&["remove", "--tenant", "beta"]);
        assert_eq!(
            beta.post("/v1/jobs", sweep(5)).await.0,
            201,
            "the default again (30 open)"
        );
        assert_eq!(beta.post("/v1/jobs", sweep(1)).await.0, 429);

        // Alpha's first job ends (cancelled): its room comes back.
        let first = first["id"].as_i64().unwrap();
        let (status, _) = alpha
            .post(&format!("/v1/jobs/{first}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(alpha.post("/v1/jobs", sweep(20)).await.0, 201);
    });
}

/// A quota of CPU seconds per day: a tenant whose tasks ran longer than
/// it is refused new jobs (429 naming cpu_seconds_per_day), its running
/// job's backlog waits while others' tasks run, and raising its quota
/// (`sandmill quota set`) lets the job go on.
#[test]
fn a_tenant_past_its_cpu_seconds_waits_and_is_refused() {
    run_test(Duration::from_secs(180), async {
        let dev = two_tenants(&["--window", "1", "--quota-cpu-seconds-per-day", "1"]);
        let (alpha, beta) = (dev.tenant("alpha"), dev.tenant("beta"));
        let database = &dev.database;
        let module = alpha.upload(guests::HOSTILE_LOOP).await;
        beta.upload(guests::HOSTILE_LOOP).await;
        // Each task loops to its timeout: 600 ms of a slot, one at a time.
        let sweep = |count: u64| {
            json!({"name": "spends", "limits": {"timeout": "600ms"}, "max_attempts": 1,
                "sweep": {"module": module, "count": count}})
        };
        let ended = |job: &Value| job["tasks"]["failed"].as_i64().unwrap();

        // More than a small job, which goes out whole on submission.
        let (status, job) = alpha.post("/v1/jobs", sweep(100)).await;
        assert_eq!(status, 201, "{job}");
        let path = format!("/v1/jobs/{}", job["id"]);
        // Past its second (1.2 s of the 1 s), it stops within a few tasks.
        let mut last = -1;
        let mut still = 0;
        for _ in 0..300 {
            let job = alpha.get(&path).await.1;
            let now = ended(&job);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if now >= 2 && still >= 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(still >= 30, "alpha's job never stopped: {last} tasks ended");
        assert!(
            (2..20).contains(&last),
            "{last} tasks ended before it stopped"
        );
        eprintln!("alpha's job held after {last} tasks of 600 ms (quota 1 s)");
        let job = alpha.get(&path).await.1;
        assert_eq!(job["status"], "running", "{job}");
        let (status, refused) = alpha.post("/v1/jobs", sweep(1)).await;
        assert_eq!(status, 429, "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("CPU seconds") && message.contains("(cpu_seconds_per_day)"),
            "{message}"
        );

        // Beta's task runs in the window alpha's held job leaves free.
        let (status, theirs) = beta.post("/v1/jobs", sweep(1)).await;
        assert_eq!(status, 201, "{theirs}");
        let theirs = format!("/v1/jobs/{}", theirs["id"]);
        let mut beta_ended = false;
        for _ in 0..100 {
            if ended(&beta.get(&theirs).await.1) == 1 {
                beta_ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(beta_ended, "beta's task did not run");
        assert_eq!(ended(&alpha.get(&path).await.1), last, "alpha still held");

        // An operator raises alpha's quota: its job goes on.
        let out = quota(
            database,
            &["set", "--tenant", "alpha", "--cpu-seconds-per-day", "1000"],
        );
        let told = String::from_utf8_lossy(&out.stderr);
        assert!(told.contains("CPU seconds per day 1000"), "{told}");
        let mut now = last;
        for _ in 0..300 {
            now = ended(&alpha.get(&path).await.1);
            if now >= last + 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(now >= last + 3, "alpha's job did not go on: {now} ended");
        let (status, _) = alpha.post(&format!("{path}/cancel"), json!({})).await;
        assert_eq!(status, 200);
    });
}

/// `module` with a custom section of `size` bytes (all `fill`) appended:
/// the same code, another hash.
fn padded(module: &[u8], fill: u8, size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut content = Vec::with_capacity(size + 16);
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.resize(content.len() + size, fill);
    let mut out = module.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_memory(pid: u32) -> u64 {
    memory_figure(pid, "VmHWM:")
}

/// A process's resident memory now (VmRSS), in bytes.
fn resident_memory(pid: u32) -> u64 {
    memory_figure(pid, "VmRSS:")
}

/// The figure after `name` in `/proc/{pid}/status`, in bytes.
fn memory_figure(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .expect("the figure");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// The byte at `i` of the test pattern.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Downloads `path` as it comes, checking each byte against [`pattern`]
/// (after the first line, with `header`); returns the bytes checked and
/// how far the server's resident memory rose above what it was before.
async fn download(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    pid: u32,
    header: bool,
) -> (usize, u64) {
    let before = resident_memory(pid);
    let mut response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let (mut in_header, mut checked, mut highest) = (header, 0usize, before);
    while let Some(chunk) = response.chunk().await.unwrap() {
        for byte in chunk.iter() {
            if in_header {
                in_header = *byte != b'\n';
                continue;
            }
            assert_eq!(*byte, pattern(checked), "{path}: byte {checked}");
            checked += 1;
        }
        highest = highest.max(resident_memory(pid));
    }
    (checked, highest.saturating_sub(before))
}

/// Outputs and logs are streamed, not loaded whole: a task's 96 MiB
/// output and 48 MiB log are downloaded whole and intact while the
/// server's resident memory rises by a small part of them (loaded whole,
/// by all of each).
#[test]
fn large_outputs_and_logs_are_streamed_not_loaded_whole() {
    run_test(Duration::from_secs(300), async {
        const OUTPUT: usize = 96 << 20;
        const LOG: usize = 48 << 20;
        let dev = dev(&["--max-body", &(160usize << 20).to_string()]);
        let pid = dev.process.0.id();
        let http = sandmill_server::tls::default_client();
        let mirror = upload_module(&http, &dev.base, guests::HOSTILE_MIRROR).await;
        // The mirror's input: its log, a counter name and an error (both
        // empty), and its output, each a u32 length then the bytes.
        let mut input = Vec::with_capacity(OUTPUT + LOG + 16);
        input.extend_from_slice(&(LOG as u32).to_le_bytes());
        input.extend((0..LOG).map(pattern));
        input.extend_from_slice(&0u32.to_le_bytes());
        input.extend_from_slice(&0u32.to_le_bytes());
        input.extend_from_slice(&(OUTPUT as u32).to_le_bytes());
        input.extend((0..OUTPUT).map(pattern));
        let (status, uploaded) = support::collection::post_raw(
            &http,
            &dev.base,
            "/v1/inputs",
            "application/octet-stream",
            input,
        )
        .await;
        assert_eq!(status, 200, "{uploaded}");
        let job = submit_json(
            &http,
            &dev.base,
            &json!({"name": "big", "task": {"module": mirror, "input": uploaded["input"]},
                "limits": {"memory": "1GiB", "output": "128MiB", "log": "64MiB"}}),
        )
        .await;
        let task = ended_task(&http, &dev.base, job).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        let id = task["id"].as_i64().unwrap();

        let (received, rose) = download(
            &http,
            &dev.base,
            &format!("/v1/tasks/{id}/output"),
            pid,
            false,
        )
        .await;
        assert_eq!(received, OUTPUT);
        println!(
            "a {} MiB output downloaded; the server's memory rose by {} MiB",
            OUTPUT >> 20,
            rose >> 20
        );
        assert!(rose < (OUTPUT / 4) as u64, "memory rose by {rose} bytes");

        // The logs: the attempt's header line, then its log.
        let (received, rose) =
            download(&http, &dev.base, &format!("/v1/tasks/{id}/logs"), pid, true).await;
        assert_eq!(received, LOG);
        println!(
            "a {} MiB log downloaded; the server's memory rose by {} MiB",
            LOG >> 20,
            rose >> 20
        );
        assert!(rose < (LOG / 4) as u64, "memory rose by {rose} bytes");

        // A byte of the stored output changed on disk: the download is
        // cut off before its end, never completed with the wrong bytes.
        let stored = walk_files(&dev.data.path().join("blobs"))
            .into_iter()
            .find(|path| std::fs::metadata(path).unwrap().len() == OUTPUT as u64)
            .expect("the output's blob file");
        let mut bytes = std::fs::read(&stored).unwrap();
        bytes[OUTPUT / 2] ^= 0xff;
        std::fs::write(&stored, bytes).unwrap();
        let response = http
            .get(format!("{}/v1/tasks/{id}/output", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.is_err(),
            "a changed output was sent whole"
        );
    });
}

/// Every file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn fifty_big_uploads_at_once_leave_the_server_answering_within_its_memory() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    run_test(Duration::from_secs(300), async {
        // Room for 4 bodies of 30 MiB and 2 modules kept loaded: small
        // enough that the 50 bodies (1.5 GiB) would show past it.
        let dev = dev(&["--max-body-memory", "128MiB", "--max-kept-modules", "64MiB"]);
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &dev.base).await;
        let pid = dev.process.0.id();
        let before = peak_memory(pid);
        let noop = std::fs::read(guests::NOOP).unwrap();
        // 50 distinct modules of 30 MiB each, made before the clock starts.
        let bodies: Vec<Vec<u8>> = (0..50u8).map(|n| padded(&noop, n, 30 << 20)).collect();
        // What earlier tests wrote goes to disk first: with gigabytes
        // still to write back, the storm's first second was 100–240 ms
        // slower to answer, the machine's leftovers, not the server's.
        let synced = std::process::Command::new("sync").status().unwrap();
        assert!(synced.success());
        let done = Arc::new(AtomicBool::new(false));

        // The machine's own stalls, as the baseline: this machine is a VM
        // on shared cores, and under the storm's writes a thread of this
        // test that only sleeps 5 ms at a time wakes up to 50 ms late now
        // and then. Each lateness over a millisecond is kept (when it
        // ended, how long).
        let stalls: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
        let control = std::thread::spawn({
            let (stalls, done) = (stalls.clone(), done.clone());
            move || {
                while !done.load(Ordering::Relaxed) {
                    let slept = Instant::now();
                    std::thread::sleep(Duration::from_millis(5));
                    let late = slept.elapsed().saturating_sub(Duration::from_millis(5));
                    if late > Duration::from_millis(1) {
                        stalls.lock().unwrap().push((Instant::now(), late));
                    }
                }
            }
        });

        // /healthz, every 20 ms while the uploads go on: when each was
        // asked and how long its answer took (from a thread and a client
        // of its own, so the test's own sending does not delay it). And
        // next to each, the same of an idle server on the same machine,
        // the baseline.
        let idle = support::dev(&[]);
        support::wait_ready(&http, &idle.base).await;
        let probe = std::thread::spawn({
            let (base, done) = (dev.base.clone(), done.clone());
            let idle = idle.base.clone();
            move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let http = sandmill_server::tls::default_client();
                        let mut answers = Vec::new();
                        let mut idle_slowest = Duration::ZERO;
                        while !done.load(Ordering::Relaxed) {
                            let asked = Instant::now();
                            let status = http
                                .get(format!("{base}/healthz"))
                                .send()
                                .await
                                .map(|r| r.status().as_u16());
                            answers.push((asked, asked.elapsed()));
                            assert_eq!(status.ok(), Some(200));
                            let asked = Instant::now();
                            let status = http.get(format!("{idle}/healthz")).send().await;
                            idle_slowest = idle_slowest.max(asked.elapsed());
                            assert_eq!(status.ok().map(|r| r.status().as_u16()), Some(200));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        (answers, idle_slowest)
                    })
            }
        });

        // All sent at once, from a thread at the background priority, on
        // connections of its own (one pooled by the test's runtime would
        // be sent from there): a user's uploads come from elsewhere, and
        // on this machine's two cores the sending (1.5 GiB) would
        // otherwise delay the probe's own thread and be counted as the
        // server's slowness.
        let started = Instant::now();
        let sender = std::thread::spawn({
            let base = dev.base.clone();
            move || {
                sandmill_server::background::lower_priority();
                let http = sandmill_server::tls::default_client();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(futures_util::future::join_all(bodies.into_iter().map(
                        |body| {
                            support::collection::post_raw(
                                &http,
                                &base,
                                "/v1/modules",
                                "application/wasm",
                                body,
                            )
                        },
                    )))
            }
        });
        let answers = tokio::task::spawn_blocking(move || sender.join().unwrap())
            .await
            .unwrap();
        let mut stored = 0;
        for (status, body) in answers {
            assert_eq!(status, 200, "{body}");
            stored += 1;
        }
        let took = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let (probes, idle_slowest) = probe.join().unwrap();
        control.join().unwrap();
        let stalls = stalls.lock().unwrap();
        let peak = peak_memory(pid);

        // Each answer's time less the machine's stalls that ended while it
        // was awaited: the server's share of it.
        let (slowest, share) = probes
            .iter()
            .map(|&(asked, took)| {
                let stalled: Duration = stalls
                    .iter()
                    .filter(|&&(ended, _)| ended >= asked && ended <= asked + took)
                    .map(|&(_, late)| late)
                    .sum();
                (took, took.saturating_sub(stalled))
            })
            .fold((Duration::ZERO, Duration::ZERO), |(a, b), (c, d)| {
                (a.max(c), b.max(d))
            });
        let worst_stall = stalls.iter().map(|s| s.1).max().unwrap_or_default();
        println!(
            "50 uploads of 30 MiB in {:.1} s; /healthz answered {} times, the slowest in {} ms \
             ({} ms less the machine's stalls meanwhile; its worst stall {} ms; an idle \
             server's slowest answer meanwhile {} ms); the server's peak memory {} MiB \
             (before: {} MiB)",
            took.as_secs_f64(),
            probes.len(),
            slowest.as_millis(),
            share.as_millis(),
            worst_stall.as_millis(),
            idle_slowest.as_millis(),
            peak >> 20,
            before >> 20
        );
        assert_eq!(stored, 50);
        assert!(probes.len() > 50, "only {} answers", probes.len());
        // The goal: 100 ms throughout, of the server's own. On
        // this machine's 2 shared cores, with 12–16 GiB of page cache, the
        // slowest answer was 15–34 ms (before bodies took turns at being
        // copied: 21–117 ms); with 3 GB of other writes during the storm,
        // 24–78 ms (the server's share 16–59 ms).
        assert!(
            share < Duration::from_millis(100),
            "/healthz took {share:?} of the server's (slowest answer {slowest:?})"
        );
        // Bodies held at once (128 MiB), modules kept loaded (64 MiB), the
        // compiles' copies and the process itself: 300–320 MiB measured;
        // with room for every body (--max-body-memory 4GiB) the run peaked
        // at 2.3 GiB.
        assert!(peak < 512 << 20, "peak memory {} MiB", peak >> 20);
    });
}

#[test]
fn uploads_past_the_body_room_or_the_compile_timeout_are_refused_and_leave_nothing() {
    run_test(Duration::from_secs(180), async {
        // Room for 2 MiB of bodies (the body limit; room is never smaller).
        let dev = dev(&[
            "--max-body",
            "2097152",
            "--max-body-memory",
            "1MiB",
            "--body-timeout",
            "1s",
        ]);
        let http = sandmill_server::tls::default_client();
        let looping = upload_module(&http, &dev.base, guests::HOSTILE_LOOP).await;

        // A call of 2 MiB (a JSON body padded with spaces) that waits for
        // its task (a guest looping for 4 s) holds all the room for bodies
        // until it is answered: an upload meanwhile waits for room until
        // its body deadline, then is refused naming the limit; /healthz
        // still answers.
        let mut call = serde_json::to_vec(&json!({"module": looping, "kind": "task",
            "limits": {"timeout": "4s"}}))
        .unwrap();
        call.resize(2 << 20, b' ');
        let holding = tokio::spawn({
            let (http, url) = (http.clone(), format!("{}/v1/run", dev.base));
            async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(call)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = http
            .post(format!("{}/v1/inputs", dev.base))
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 100 << 10])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 503);
        // Its body unread, the connection ends: the client does not send
        // its next request (the /healthz below) into the rest of it.
        assert_eq!(refused.headers()["connection"], "close");
        let body: Value = refused.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("--max-body-memory"),
            "{body}"
        );
        let health = http
            .get(format!("{}/healthz", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        // Once the call is answered (its guest timed out), the room is back.
        assert_eq!(holding.await.unwrap(), 422);
        let (status, _) = support::collection::post_raw(
            &http,
            &dev.base,
            "/v1/inputs",
            "application/octet-stream",
            vec![7u8; 100 << 10],
        )
        .await;
        assert_eq!(status, 200);

        let dev = support::dev(&["--compile-timeout", "1ms", "--max-compiles", "1"]);
        // A module that takes longer to compile than --compile-timeout is
        // refused (400) and leaves nothing: not found afterwards.
        let wasm = std::fs::read(guests::NOOP).unwrap();
        let hash = sandmill_runtime::blob::hash(&wasm);
        let (status, body) = support::collection::post_raw(
            &http,
            &dev.base,
            "/v1/modules",
            "application/wasm",
            wasm.clone(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("--compile-timeout"),
            "{body}"
        );
        let missing = |hash: String| {
            let (http, base) = (http.clone(), dev.base.clone());
            async move {
                http.get(format!("{base}/v1/modules/sha256:{hash}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(missing(hash).await, 404);

        // Four distinct modules at once, one compile turn: the first
        // keeps its turn while it compiles (past its timeout); the others
        // find no turn within the timeout and are refused naming
        // --max-compiles. None leaves anything.
        let modules: Vec<Vec<u8>> = (0..4u8).map(|i| padded(&wasm, i, 64)).collect();
        let answers = futures_util::future::join_all(modules.iter().map(|module| {
            support::collection::post_raw(
                &http,
                &dev.base,
                "/v1/modules",
                "application/wasm",
                module.clone(),
            )
        }))
        .await;
        let mut waited = 0;
        for (status, body) in &answers {
            let message = body["message"].as_str().unwrap_or_default();
            match status {
                400 => assert!(message.contains("--compile-timeout"), "{body}"),
                503 => {
                    assert!(message.contains("--max-compiles"), "{body}");
                    waited += 1;
                }
                other => panic!("upload answered {other}: {body}"),
            }
        }
        assert!(waited >= 1, "no upload waited for a turn: {answers:?}");
        for module in &modules {
            let hash = sandmill_runtime::blob::hash(module);
            assert_eq!(missing(hash).await, 404);
        }
    });
}

/// Reservations: `sandmill reserve` books slots that run the tenant's
/// tasks first (see [`support::reserved_slots`]); bookings past the
/// server's limits are refused naming them and change nothing; another
/// tenant's reservation answers 404; a reader cannot book.
#[test]
fn a_tenants_reserved_slots_run_its_tasks_first() {
    run_test(Duration::from_secs(300), async {
        let data = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sandmill"));
        command
            .args(["dev", "--workers", "4", "--auth", "tokens"])
            .args(["--reservable-slots", "3", "--max-reservations", "2"])
            .args(["--max-reservation-ahead", "1day"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _process = support::Killed::spawn(&mut command);
        support::wait_port(port, Duration::from_secs(60));
        let base = format!("http://127.0.0.1:{port}");
        let database = dev_database(data.path());
        let http = sandmill_server::tls::default_client();
        let (gamma, delta, reader) = (
            support::As::new(&http, &base, &database, "gamma", "user"),
            support::As::new(&http, &base, &database, "delta", "user"),
            support::As::new(&http, &base, &database, "gamma", "reader"),
        );
        let hours = |h: u64| {
            humantime::format_rfc3339_millis(
                std::time::SystemTime::now() + Duration::from_secs(h * 3600),
            )
            .to_string()
        };
        let book = |slots: i64, from: u64, until: u64| json!({"slots": slots, "from": hours(from), "until": hours(until)});
        let refused = async |caller: &support::As<'_>, body: Value, status: u16, naming: &str| {
            let (got, answer) = caller.post("/v1/reservations", body).await;
            assert_eq!(got, status, "{answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains(naming), "{answer}");
        };
        // Past the server's slots, too far ahead, backwards, none.
        refused(&gamma, book(4, 1, 2), 400, "--reservable-slots").await;
        refused(&gamma, book(1, 1, 25), 400, "--max-reservation-ahead").await;
        refused(&gamma, book(1, 2, 1), 400, "after").await;
        refused(&gamma, book(0, 1, 2), 400, "at least 1").await;
        refused(&reader, book(1, 1, 2), 403, "reader").await;
        // Two of gamma's; a third is one too many.
        let (status, first) = gamma.post("/v1/reservations", book(2, 1, 3)).await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["active"], false);
        assert_eq!(gamma.post("/v1/reservations", book(1, 4, 5)).await.0, 201);
        refused(&gamma, book(1, 6, 7), 429, "--max-reservations").await;
        // Delta: 1 more fits beside gamma's 2, 2 more do not (409); back
        // to back with gamma's is no overlap.
        refused(&delta, book(2, 2, 4), 409, "--reservable-slots").await;
        assert_eq!(delta.post("/v1/reservations", book(1, 2, 4)).await.0, 201);
        assert_eq!(delta.post("/v1/reservations", book(2, 3, 4)).await.0, 409);
        let (_, listed) = delta.get("/v1/reservations").await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
        // Gamma's is not delta's to see or cancel.
        let gamma_first = first["id"].as_i64().unwrap();
        let path = format!("/v1/reservations/{gamma_first}");
        assert_eq!(delta.get(&path).await.0, 404);
        assert_eq!(delta.send("DELETE", &path, None).await.0, 404);
        assert_eq!(gamma.send("DELETE", &path, None).await.0, 204);
        assert_eq!(gamma.get(&path).await.0, 404);
        // Cancelled, the room is back (and gamma may book again).
        assert_eq!(gamma.post("/v1/reservations", book(2, 1, 3)).await.0, 201);
        let id = listed["items"][0]["id"].as_i64().unwrap();
        let path = format!("/v1/reservations/{id}");
        assert_eq!(delta.send("DELETE", &path, None).await.0, 204);

        // Now: 3 slots of 4, held by beta for 50 minutes (gamma's start
        // in an hour).
        support::reserved_slots(&base, &database, "embedded").await;
    });
}

/// A storage quota: once a tenant's kept jobs hold more outputs and logs
/// than its quota, its new jobs are refused (429 naming `storage`);
/// another tenant is not affected; deleting the job makes room again.
/// Uploaded inputs count, once each, until the collector takes them.
#[test]
fn a_tenant_past_its_storage_is_refused_until_it_deletes_jobs() {
    run_test(Duration::from_secs(180), async {
        let dev = two_tenants(&["--quota-storage", "3KiB", "--blob-grace", "1s"]);
        let (alpha, beta) = (dev.tenant("alpha"), dev.tenant("beta"));
        let module = alpha.upload(guests::HOSTILE_LOG_SPAM).await;
        beta.upload(guests::HOSTILE_LOG_SPAM).await;
        // Each task keeps a log cut at 2 KiB (and a 4-byte output); run
        // each time, not taken from the cache.
        let job = json!({"name": "spam", "limits": {"log": "2KiB"}, "cache": false,
            "task": {"module": module}});
        let run = |who: &'static str| {
            let (tenant, job) = (if who == "alpha" { &alpha } else { &beta }, job.clone());
            async move {
                let (status, made) = tenant.post("/v1/jobs", job).await;
                assert_eq!(status, 201, "{made}");
                let path = format!("/v1/jobs/{}", made["id"]);
                for _ in 0..300 {
                    let job = tenant.get(&path).await.1;
                    if job["status"] != "running" {
                        assert_eq!(job["status"], "succeeded", "{job}");
                        return path;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{path} did not end");
            }
        };
        // 2 KiB kept: under the quota, so a second job is accepted.
        let first = run("alpha").await;
        let second = run("alpha").await;
        // 4 KiB kept: refused, naming the quota.
        let (status, refused) = alpha.post("/v1/jobs", job.clone()).await;
        assert_eq!(status, 429, "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("its quota is 3.0 KiB (storage)"),
            "{message}"
        );
        // Beta keeps nothing yet.
        run("beta").await;
        // Deleting one of alpha's jobs makes room.
        for path in [&first, &second] {
            let (status, text) = alpha.send("DELETE", path, None).await;
            assert_eq!(status, 204, "{text}");
        }
        run("alpha").await;

        // Uploaded inputs count too: once each, until they are collected.
        let upload = |tenant: &'static str, size: usize, fill: u8| {
            let tenant = if tenant == "alpha" { &alpha } else { &beta };
            async move {
                let body = Some(("application/octet-stream", vec![fill; size]));
                tenant.send("POST", "/v1/inputs", body).await
            }
        };
        let (status, text) = upload("alpha", 2048, b'a').await;
        assert_eq!(status, 429, "{text}");
        assert!(
            text.contains("this input of 2.0 KiB would pass its quota of 3.0 KiB (storage)"),
            "{text}"
        );
        // Beta keeps a 2 KiB log: 600 bytes more fit, the same 600 again
        // count nothing, 900 more do not.
        assert_eq!(upload("beta", 600, b'b').await.0, 200);
        assert_eq!(upload("beta", 600, b'b').await.0, 200);
        let (status, text) = upload("beta", 900, b'c').await;
        assert_eq!(status, 429, "{text}");
        // Nothing names the 600 bytes: once collected (`--blob-grace 1s`)
        // they are given back, and the 900 fit.
        let mut tries = 0;
        loop {
            let (status, text) = upload("beta", 900, b'c').await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 429, "{text}");
            tries += 1;
            assert!(tries < 100, "the collected input was never given back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn unnamed_blobs_are_collected_and_every_blob_a_kept_job_names_stays() {
    run_test(Duration::from_secs(240), async {
        let dev = dev(&["--blob-grace", "1s"]);
        let http = sandmill_server::tls::default_client();
        support::collection::unnamed_blobs_go_named_ones_stay(&http, &dev.base).await;
    });
}
