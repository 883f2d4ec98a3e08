//! The distributed mode with real processes: `sandmill serve` on Postgres,
//! `sandmill worker` processes, and a real `nats-server -js`. Each test
//! runs its own fleet; they take turns, since two cores hold one fleet.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sandmill_runtime::message::TaskMessage;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use sandmill_server::store::Store;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

/// One fleet at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    _pg: support::Postgres,
    nats: support::Nats,
    database: String,
    cache: tempfile::TempDir,
    port: u16,
    base: String,
    serve: Option<Child>,
    serve_args: Vec<String>,
    workers: Vec<(String, Child)>,
    http: reqwest::Client,
    /// Where processes write JSON logs (debug for the scheduler and the
    /// worker loop), one file each, when set.
    json_logs: Option<std::path::PathBuf>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let children = self
            .serve
            .iter_mut()
            .chain(self.workers.iter_mut().map(|(_, c)| c));
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Fleet {
    /// Postgres, nats-server and `sandmill serve` (with `serve_args`).
    async fn start(serve_args: &[&str]) -> Fleet {
        Fleet::start_with(serve_args, None).await
    }

    /// [`Fleet::start`] with every process logging JSON into `logs`.
    async fn start_logging_json(serve_args: &[&str], logs: &std::path::Path) -> Fleet {
        Fleet::start_with(serve_args, Some(logs.to_owned())).await
    }

    async fn start_with(serve_args: &[&str], json_logs: Option<std::path::PathBuf>) -> Fleet {
        let pg = support::Postgres::start();
        let database = pg.database();
        let nats = support::Nats::start();
        let port = support::free_port();
        let mut fleet = Fleet {
            _pg: pg,
            nats,
            database,
            cache: tempfile::tempdir().unwrap(),
            port,
            base: format!("http://127.0.0.1:{port}"),
            serve: None,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            workers: Vec::new(),
            http: sandmill_server::tls::default_client(),
            json_logs,
        };
        fleet.start_serve().await;
        fleet
    }

    /// A fleet with a short ack wait (a killed worker's tasks come back
    /// soon), workers w1 and w2, and a sweep of `total` noop tasks.
    async fn two_workers_on_a_sweep(total: u64) -> (Fleet, i64) {
        let mut fleet = Fleet::start(&["--ack-wait", "5s"]).await;
        let hash = fleet.upload(guests::NOOP).await;
        fleet.start_worker("w1", "", 1);
        fleet.start_worker("w2", "", 1);
        let id = fleet.submit(sweep(&hash, total)).await;
        (fleet, id)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
        command
            .args(args)
            .arg("--nats")
            .arg(self.nats.url_for(args))
            .arg("--cache-dir")
            .arg(self.cache.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SANDMILL_TEST_LOGS=DIR keeps each process's log there.
        if let Some(dir) = std::env::var_os("SANDMILL_TEST_LOGS") {
            let name = format!(
                "{}-{}.log",
                args.join("-").replace('/', "_"),
                support::free_port()
            );
            if let Ok(file) = std::fs::File::create(std::path::Path::new(&dir).join(name)) {
                command.stderr(file);
            }
        }
        if let Some(dir) = &self.json_logs {
            let file = std::fs::File::create(dir.join(format!("{}.log", args[0]))).unwrap();
            command
                .env("SANDMILL_LOG_FORMAT", "json")
                .env(
                    "SANDMILL_LOG",
                    "warn,sandmill_server::scheduler=debug,sandmill_runtime::worker=debug",
                )
                .stderr(file);
        }
        command
    }

    async fn start_serve(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["serve", "--database", &self.database, "--listen", &listen];
        let extra = self.serve_args.clone();
        // Open unless the test is about tokens.
        if !extra.iter().any(|a| a == "--auth") {
            args.extend(["--auth", "open"]);
        }
        args.extend(extra.iter().map(String::as_str));
        self.serve = Some(self.command(&args).spawn().expect("start serve"));
        support::wait_ready(&self.http, &self.base).await;
    }

    fn kill_serve(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill().unwrap();
            serve.wait().unwrap();
        }
    }

    fn start_worker(&mut self, id: &str, labels: &str, concurrency: usize) {
        self.start_worker_with(id, labels, concurrency, &[]);
    }

    fn start_worker_with(&mut self, id: &str, labels: &str, concurrency: usize, extra: &[&str]) {
        let concurrency = concurrency.to_string();
        let mut args = vec![
            "worker",
            "--id",
            id,
            "--labels",
            labels,
            "--concurrency",
            &concurrency,
        ];
        args.extend_from_slice(extra);
        let child = self.command(&args).spawn().expect("start worker");
        self.workers.push((id.to_owned(), child));
    }

    fn take_worker(&mut self, id: &str) -> Child {
        let i = self
            .workers
            .iter()
            .position(|(w, _)| w == id)
            .expect("a worker by that id");
        self.workers.remove(i).1
    }

    async fn upload(&self, module: &str) -> String {
        support::upload_module(&self.http, &self.base, module)
            .await
            .trim_start_matches("sha256:")
            .to_owned()
    }

    /// `POST /v1/inputs` of `bytes`.
    async fn post_input(&self, bytes: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/inputs", self.base))
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, job: Value) -> i64 {
        support::submit_json(&self.http, &self.base, &job).await
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/jobs/{id}/tasks`.
    async fn tasks(&self, id: i64) -> Vec<Value> {
        let tasks = self.get(&format!("/v1/jobs/{id}/tasks")).await;
        tasks["items"].as_array().cloned().unwrap_or_default()
    }

    async fn job(&self, id: i64) -> Value {
        support::job(&self.http, &self.base, id).await
    }

    /// Waits (polling the API, which may be down a moment) until `done`.
    async fn until(
        &self,
        id: i64,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/v1/jobs/{id}", self.base))
                .send()
                .await
                && let Ok(state) = response.json::<Value>().await
                && done(&state)
            {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: {what} did not happen within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finished(&self, id: i64, limit: Duration) -> Value {
        self.until(id, "finishing", limit, |s| s["status"] != "running")
            .await
    }

    async fn workers(&self) -> Vec<Value> {
        serde_json::from_value(self.get("/v1/workers").await["items"].clone()).unwrap()
    }

    async fn worker(&self, id: &str) -> Option<Value> {
        self.workers().await.into_iter().find(|w| w["id"] == id)
    }

    /// Task messages of job `id` in the task stream.
    async fn queued_messages(&self, id: i64) -> usize {
        use futures_util::TryStreamExt;
        let client = support::nats_client(&self.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SANDMILL_TASKS").await.unwrap();
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("sandmill.tasks.*.*.{id}.>"))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        subjects.iter().map(|(_, n)| n).sum()
    }

    /// The task queues (consumers of the task stream): name and labels.
    async fn queues(&self) -> Vec<(String, String)> {
        use futures_util::TryStreamExt;
        let client = support::nats_client(&self.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SANDMILL_TASKS").await.unwrap();
        let infos: Vec<async_nats::jetstream::consumer::Info> =
            stream.consumers().try_collect().await.unwrap();
        infos
            .into_iter()
            .filter(|info| info.name.starts_with("q-"))
            .map(|info| (info.name, info.config.description.unwrap_or_default()))
            .collect()
    }

    /// Waits until worker `id`'s registry entry satisfies `done`.
    async fn until_worker(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let entry = self.worker(id).await;
            if let Some(entry) = entry.as_ref().filter(|w| done(w)) {
                return entry.clone();
            }
            assert!(
                Instant::now() < deadline,
                "worker {id}: not as expected: {entry:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prints and returns (ok, lost, duplicated) the way Jepsen reports.
    async fn audit(&self, name: &str, id: i64) -> (i64, i64, i64) {
        let store = Store::connect(&self.database).await.unwrap();
        let (tasks, successes, duplicated) = store.success_audit(id).await.unwrap();
        let ok = successes - duplicated;
        println!(
            "{name}: ok {ok}, lost {}, duplicated {duplicated}, unknown 0",
            tasks - ok
        );
        (ok, tasks - ok, duplicated)
    }
}

fn sweep(hash: &str, count: u64) -> Value {
    json!({"name": "sweep", "sweep": {"module": format!("sha256:{hash}"), "count": count}})
}

async fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_test<F: Future<Output = ()>>(limit: Duration, test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _turn = TURN.lock().await;
        let started = Instant::now();
        tokio::time::timeout(limit, test)
            .await
            .expect("the test ran out of time");
        println!("(took {:.1} s)", started.elapsed().as_secs_f64());
    });
}

#[test]
fn a_killed_worker_s_tasks_complete_on_another_recorded_once() {
    run_test(Duration::from_secs(240), async {
        let total = 2_000;
        let (mut fleet, id) = Fleet::two_workers_on_a_sweep(total).await;
        fleet
            .until(id, "100 successes", Duration::from_secs(60), |s| {
                s["tasks"]["succeeded"].as_i64().unwrap_or(0) >= 100
            })
            .await;
        let mut killed = fleet.take_worker("w1");
        killed.kill().unwrap();
        killed.wait().unwrap();

        let finished = fleet.finished(id, Duration::from_secs(180)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let (ok, lost, duplicated) = fleet.audit("killed worker", id).await;
        assert_eq!((ok, lost, duplicated), (total as i64, 0, 0));

        // The registry: the killed worker goes quiet and shows as lost.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let w1 = fleet.worker("w1").await.expect("w1 registered");
            let w2 = fleet.worker("w2").await.expect("w2 registered");
            assert_eq!(w2["status"], "live", "{w2}");
            if w1["status"] == "lost" {
                assert!(w2["finished"].as_u64().unwrap() > 0, "{w2}");
                break;
            }
            assert!(Instant::now() < deadline, "w1 never shown as lost: {w1}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let listed = Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["--server", &fleet.base, "workers"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.status.success());
        assert!(
            text.lines()
                .any(|l| l.starts_with("w1 ") && l.contains("lost")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("w2 ") && l.contains("live")),
            "{text}"
        );
    });
}

#[test]
fn restarting_nats_server_and_serve_mid_job_loses_nothing() {
    run_test(Duration::from_secs(400), async {
        let total = 12_000;
        let (mut fleet, id) = Fleet::two_workers_on_a_sweep(total).await;
        let succeeded =
            |n: i64| move |s: &Value| s["tasks"]["succeeded"].as_i64().unwrap_or(0) >= n;

        fleet
            .until(
                id,
                "1,000 successes",
                Duration::from_secs(120),
                succeeded(1_000),
            )
            .await;
        fleet.nats.restart();
        let after_nats = fleet.job(id).await["tasks"]["succeeded"]
            .as_i64()
            .unwrap_or(0);
        let began = Instant::now();
        println!("nats-server restarted at {after_nats} successes");

        fleet
            .until(
                id,
                "progress after the nats restart",
                Duration::from_secs(120),
                succeeded(after_nats + 2_000),
            )
            .await;
        fleet.kill_serve();
        fleet.start_serve().await;
        let after_serve = fleet.job(id).await["tasks"]["succeeded"]
            .as_i64()
            .unwrap_or(0);
        println!(
            "serve killed and started again at {after_serve} successes, {:.1} s after the nats restart",
            began.elapsed().as_secs_f64()
        );

        let finished = fleet.finished(id, Duration::from_secs(240)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        println!(
            "finished {:.1} s after the nats restart",
            began.elapsed().as_secs_f64()
        );
        let (ok, lost, duplicated) = fleet.audit("restarts", id).await;
        assert_eq!((ok, lost, duplicated), (total as i64, 0, 0));
    });
}

#[test]
fn a_task_delivered_twice_keeps_one_result() {
    run_test(Duration::from_secs(120), async {
        let mut fleet = Fleet::start(&[]).await;
        let hash = fleet.upload(guests::NOOP).await;
        // No worker yet: the task waits in its queue.
        let id = fleet
            .submit(json!({"name": "twice", "task": {"module": format!("sha256:{hash}"), "params": {"n": 1}}}))
            .await;
        let tasks: Vec<Value> = fleet.tasks(id).await;
        let task_id = tasks[0]["id"].as_i64().unwrap();
        // A second message for the same attempt, past the broker's dedup (as
        // a redelivery after a lost ack, or a re-publish after the window).
        let copy = TaskMessage {
            task_id,
            job_id: id,
            attempt: 0,
            priority: 0,
            tenant: "default".into(),
            kind: CallKind::Task,
            module: hash.clone(),
            input: None,
            input_name: "-".into(),
            params: r#"{"n":1}"#.into(),
            params_blob: None,
            limits: Limits::default(),
            grants: Grants::default(),
            labels: Default::default(),
            seed: None,
            shuffle: None,
            inputs: Vec::new(),
            preprocess: None,
            output_blob: false,
            delivered: 1,
            ticket: String::new(),
            published_ms: None,
            traceparent: None,
        };
        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "a-copy");
        js.publish_with_headers(
            format!("sandmill.tasks.any.0.{id}.{task_id}"),
            headers,
            serde_json::to_vec(&copy).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

        fleet.start_worker("solo", "", 1);
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        // The worker ran both deliveries...
        fleet.until_worker("solo", |w| w["finished"] == 2).await;
        // ...and one result was kept.
        let attempts: Value = fleet.get(&format!("/v1/tasks/{task_id}")).await;
        assert_eq!(
            attempts["attempts"].as_array().map(Vec::len),
            Some(1),
            "{attempts}"
        );
        let (ok, lost, duplicated) = fleet.audit("delivered twice", id).await;
        assert_eq!((ok, lost, duplicated), (1, 0, 0));
    });
}

#[test]
fn labelled_tasks_go_only_to_workers_offering_the_labels() {
    run_test(Duration::from_secs(180), async {
        let mut fleet = Fleet::start(&[]).await;
        let hash = fleet.upload(guests::NOOP).await;
        fleet.start_worker("cpu", "zone=eu", 1);
        let module = format!("sha256:{hash}");
        let gpu = fleet
            .submit(json!({"name": "gpu", "labels": {"gpu": "a100"}, "sweep": {"module": module, "count": 5}}))
            .await;
        let doomed = fleet
            .submit(json!({"name": "doomed", "labels": {"gpu": "h100"},
                "limits": {"queue_timeout": "3s"}, "sweep": {"module": module, "count": 2}}))
            .await;

        // Nobody offers gpu=a100: the job waits, and says why.
        let waiting = fleet
            .until(gpu, "a waiting reason", Duration::from_secs(30), |s| {
                s["waiting"]["reason"].is_string()
            })
            .await;
        assert_eq!(
            waiting["waiting"]["reason"], "no live worker offers labels gpu=a100",
            "{waiting}"
        );
        assert_eq!(waiting["tasks"]["queued"], 5, "{waiting}");
        let status = Command::new(env!("CARGO_BIN_EXE_sandmill"))
            .args(["--server", &fleet.base, "status", &gpu.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.contains("waiting: no live worker offers labels gpu=a100"),
            "{text}"
        );

        // Past its queue timeout a job fails, naming why, and its queued
        // messages are dropped.
        assert_eq!(fleet.queued_messages(doomed).await, 2);
        let failed = fleet.finished(doomed, Duration::from_secs(30)).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["tasks"]["failed"], 2, "{failed}");
        let tasks: Vec<Value> = fleet.tasks(doomed).await;
        assert!(
            tasks.iter().all(|t| t["reason"] == "queue-timeout"),
            "{tasks:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.queued_messages(doomed).await > 0 {
            assert!(
                Instant::now() < deadline,
                "the timed-out job's messages stayed queued"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let error = tasks[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("no live worker offers labels gpu=h100"),
            "{error}"
        );

        // Cancelling a job drops its queued messages at once.
        let cancelled = fleet
            .submit(json!({"name": "cancelled", "labels": {"gpu": "h100"}, "sweep": {"module": module, "count": 3}}))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.queued_messages(cancelled).await < 3 {
            assert!(
                Instant::now() < deadline,
                "the job's tasks were never published"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = fleet
            .http
            .post(format!("{}/v1/jobs/{cancelled}/cancel", fleet.base))
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
        assert_eq!(fleet.queued_messages(cancelled).await, 0);

        // A second process under a live worker's name is refused.
        fleet.until_worker("cpu", |w| w["status"] == "live").await;
        let twin = fleet
            .command(&["worker", "--id", "cpu", "--concurrency", "1"])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&twin.stderr);
        assert!(!twin.status.success());
        assert!(
            said.contains("worker id `cpu` is taken by a live worker"),
            "{said}"
        );

        // A worker with the labels joins and takes the work; the other one
        // never received any.
        fleet.start_worker("gpu-1", "gpu=a100,zone=us", 1);
        let done = fleet.finished(gpu, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert!(done["waiting"].is_null(), "{done}");
        // (The registry is written every few seconds.)
        fleet.until_worker("gpu-1", |w| w["finished"] == 5).await;
        let cpu = fleet.worker("cpu").await.expect("cpu registered");
        assert_eq!(cpu["finished"], 0, "{cpu}");
        assert_eq!(cpu["labels"], json!({"zone": "eu"}));
    });
}

#[test]
fn sigterm_drains_a_worker_and_it_leaves_the_registry() {
    run_test(Duration::from_secs(180), async {
        let mut fleet = Fleet::start(&[]).await;
        let hash = fleet.upload(guests::HOSTILE_LOOP).await;
        // Two tasks that each run 3 s (then time out); one attempt each.
        let id = fleet
            .submit(
                json!({"name": "slow", "max_attempts": 1, "limits": {"timeout": "3s"},
                "sweep": {"module": format!("sha256:{hash}"), "count": 2}}),
            )
            .await;
        fleet.start_worker("drained", "", 1);
        fleet
            .until(id, "a task starting", Duration::from_secs(30), |s| {
                s["tasks"]["running"] == 1
            })
            .await;
        let mut drained = fleet.take_worker("drained");
        let term = Command::new("kill")
            .arg(drained.id().to_string())
            .status()
            .unwrap();
        assert!(term.success());
        // The running task finishes (its 3 s), the other goes back unrun.
        let status = wait_exit(&mut drained, Duration::from_secs(30)).await;
        assert!(status.success(), "a drained worker exits 0, not {status}");
        // Its result is durable in NATS before it exits; the server
        // records it a moment later.
        let state = fleet
            .until(
                id,
                "the drained worker's result recorded",
                Duration::from_secs(30),
                |s| s["tasks"]["failed"] == 1,
            )
            .await;
        assert_eq!(state["tasks"]["running"], 0, "{state}");
        assert!(
            fleet.worker("drained").await.is_none(),
            "a drained worker leaves the registry"
        );

        fleet.start_worker("next", "", 1);
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["tasks"]["failed"], 2, "{finished}");
        let tasks: Vec<Value> = fleet.tasks(id).await;
        let mut workers = Vec::new();
        for task in &tasks {
            assert_eq!(task["reason"], "timeout", "{task}");
            let view: Value = fleet.get(&format!("/v1/tasks/{}", task["id"])).await;
            workers.push(
                view["attempts"][0]["worker"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        workers.sort();
        assert_eq!(workers, vec!["drained/0", "next/0"]);
    });
}

#[test]
fn a_task_whose_workers_keep_dying_fails_as_a_crash_loop() {
    run_test(Duration::from_secs(180), async {
        let mut fleet = Fleet::start(&["--ack-wait", "1s", "--max-deliveries", "2"]).await;
        let hash = fleet.upload(guests::HOSTILE_LOOP).await;
        let id = fleet
            .submit(json!({"name": "deadly", "limits": {"timeout": "60s"},
                "task": {"module": format!("sha256:{hash}")}}))
            .await;
        // Each worker that takes the task is killed while running it.
        // Each time the worker (the same name: a restart after a crash is
        // no twin) takes the task, it is killed while running it.
        // Times are RFC 3339 in one format: they order as strings.
        let mut last_start = String::new();
        for _ in 0..2 {
            fleet.start_worker("victim", "", 1);
            let entry = fleet
                .until_worker("victim", |w| {
                    w["started_at"].as_str().unwrap_or_default() > last_start.as_str()
                        && w["running"].as_array().is_some_and(|r| !r.is_empty())
                })
                .await;
            last_start = entry["started_at"].as_str().unwrap().to_owned();
            let mut victim = fleet.take_worker("victim");
            victim.kill().unwrap();
            victim.wait().unwrap();
        }
        // The next worker sees the third delivery and fails the task.
        fleet.start_worker("survivor", "", 1);
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "failed", "{finished}");
        let tasks: Vec<Value> = fleet.tasks(id).await;
        assert_eq!(tasks[0]["reason"], "crash-loop", "{:?}", tasks[0]);
        let error = tasks[0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("delivered 2 times"), "{error}");
    });
}

#[test]
fn task_messages_lost_by_nats_are_published_again() {
    run_test(Duration::from_secs(120), async {
        let mut fleet = Fleet::start(&["--reconcile-every", "2s"]).await;
        let hash = fleet.upload(guests::NOOP).await;
        let total = 50;
        let id = fleet.submit(sweep(&hash, total)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.queued_messages(id).await < total as usize {
            assert!(Instant::now() < deadline, "the tasks were never published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The messages vanish (as with a nats-server that lost its disk);
        // the database still says queued.
        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SANDMILL_TASKS").await.unwrap();
        stream.purge().await.unwrap();
        assert_eq!(fleet.queued_messages(id).await, 0);

        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.queued_messages(id).await < total as usize {
            assert!(
                Instant::now() < deadline,
                "the reconciler never published the lost tasks again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fleet.start_worker("w1", "", 1);
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let (ok, lost, duplicated) = fleet.audit("lost messages", id).await;
        assert_eq!((ok, lost, duplicated), (total as i64, 0, 0));
    });
}

#[test]
fn a_guest_granted_the_network_connects_from_a_worker() {
    run_test(Duration::from_secs(120), async {
        // The server's policy lists the loopback address the guest dials.
        let mut fleet = Fleet::start(&["--allow-network", "127.0.0.1"]).await;
        let hash = fleet.upload(guests::HOSTILE_NET_ESCAPE).await;
        let (addr, accepted) = support::one_connection();
        let input: Value = fleet
            .http
            .post(format!("{}/v1/inputs", fleet.base))
            .body(addr)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        fleet.start_worker("net", "", 1);
        let id = fleet
            .submit(json!({"name": "net", "grants": {"allow": ["network"]},
                "task": {"module": format!("sha256:{hash}"), "input": input["input"]}}))
            .await;
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        assert_eq!(accepted.join().unwrap(), "escaped\n");
        let task = &fleet.tasks(id).await[0];
        let output = fleet
            .http
            .get(format!("{}/v1/tasks/{}/output", fleet.base, task["id"]))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&output[..], b"connected");
    });
}

impl Fleet {
    /// Runs a client command of the CLI against this fleet's server.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        support::output_within(
            Command::new(env!("CARGO_BIN_EXE_sandmill"))
                .args(["--server", &self.base])
                .args(args),
            Duration::from_secs(60),
        )
    }

    /// SIGKILLs a worker, and starts it again a second later.
    async fn kill_and_restart_worker(&mut self, id: &str) {
        let mut worker = self.take_worker(id);
        worker.kill().unwrap();
        worker.wait().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.start_worker(id, "", 2);
    }

    /// `sandmill subscribe` of a file with `text`; returns the view.
    async fn subscribe(&self, dir: &std::path::Path, name: &str, text: &str) -> Value {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = self.cli(&["subscribe", path.to_str().unwrap()]);
        assert_eq!(support::ok(&out).trim(), name);
        self.get(&format!("/v1/subscriptions/{name}")).await
    }
}

/// Messages on a subject become tasks: a request is answered with the
/// function's output (params from headers), results are published, a
/// failure answers with `Sandmill-Error`; a durable subscription's poison
/// message becomes a dead letter; deleting one stops new tasks and leaves
/// its tasks readable.
#[test]
fn subscriptions_answer_requests_and_keep_dead_letters() {
    use futures_util::StreamExt;
    run_test(Duration::from_secs(240), async {
        let mut fleet = Fleet::start(&[]).await;
        fleet.start_worker("w1", "", 2);
        let dir = tempfile::tempdir().unwrap();
        let noop = guests::NOOP;
        let echo = fleet
            .subscribe(
                dir.path(),
                "echo",
                &format!(
                    "name = \"echo\"\nsubject = \"echo.>\"\nmodule = \"{noop}\"\nqueue = false\n\
                     [params]\ngreeting = \"hi\"\n[limits]\noutput = \"1KiB\"\n"
                ),
            )
            .await;
        assert_eq!(echo["version"], 1, "{echo}");
        assert_eq!(echo["queue"], false, "{echo}");
        let job_id = echo["job_id"].as_i64().unwrap();

        let client = support::nats_client(&fleet.nats.url()).await;
        let mut results = client.subscribe("sandmill.results.echo").await.unwrap();
        client.flush().await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Sandmill-Param-n", "42");
        headers.insert("Sandmill-Param-who", "world");
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            client.request_with_headers("echo.a.b", headers, "hello".into()),
        )
        .await
        .expect("an answer within 30 s")
        .unwrap();
        assert_eq!(&answer.payload[..], b"hello");
        let answer_headers = answer.headers.clone().expect("headers");
        assert!(answer_headers.get("Sandmill-Error").is_none());
        let task_id: i64 = answer_headers
            .get("Sandmill-Task")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let task = fleet.get(&format!("/v1/tasks/{task_id}")).await["task"].clone();
        assert_eq!(task["job_id"], job_id, "{task}");
        assert_eq!(task["input"]["name"], "echo.a.b", "{task}");
        assert_eq!(
            task["params"],
            json!({"greeting": "hi", "n": 42, "who": "world"}),
            "{task}"
        );
        assert_eq!(task["state"], "succeeded", "{task}");
        let published = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a result on sandmill.results.echo")
            .unwrap();
        assert_eq!(&published.payload[..], b"hello");

        // A failure: the reason in a header, the error as JSON.
        let big = vec![b'x'; 4096];
        let failed = tokio::time::timeout(
            Duration::from_secs(30),
            client.request("echo.big", big.into()),
        )
        .await
        .unwrap()
        .unwrap();
        let reason = failed
            .headers
            .as_ref()
            .unwrap()
            .get("Sandmill-Error")
            .unwrap();
        assert_eq!(reason.as_str(), "output-too-large");
        let body: Value = serde_json::from_slice(&failed.payload).unwrap();
        assert_eq!(body["code"], "output-too-large", "{body}");

        // A durable subscription: a poison message is a dead letter.
        let strict = fleet
            .subscribe(
                dir.path(),
                "strict",
                &format!(
                    "name = \"strict\"\nsubject = \"strict.in\"\nmodule = \"{noop}\"\nmax_attempts = 2\n\
                     [limits]\noutput = \"1KiB\"\n"
                ),
            )
            .await;
        assert_eq!(strict["queue"], true, "{strict}");
        let strict_job = strict["job_id"].as_i64().unwrap();
        let js = async_nats::jetstream::new(client.clone());
        for payload in [b"one".to_vec(), vec![b'p'; 4096], b"three".to_vec()] {
            js.publish("strict.in", payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let job = fleet
            .until(
                strict_job,
                "3 messages handled",
                Duration::from_secs(60),
                |s| s["tasks"]["succeeded"] == 2 && s["tasks"]["failed"] == 1,
            )
            .await;
        assert_eq!(
            job["status"], "running",
            "a subscription's job goes on: {job}"
        );
        let dead = fleet.get("/v1/subscriptions/strict/dead-letters").await;
        let dead = dead["items"].as_array().unwrap().clone();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["seq"], 2, "the poison message's stream sequence");
        assert_eq!(dead[0]["reason"], "output-too-large");
        assert!(
            dead[0]["error"].as_str().unwrap().contains("output"),
            "{dead:?}"
        );
        let listed = support::ok(&fleet.cli(&["subscriptions", "--dead", "strict"]));
        assert!(
            listed
                .lines()
                .any(|l| l.trim_start().starts_with("2 ") && l.contains("output-too-large")),
            "{listed}"
        );
        // Every message was acked once its result was recorded.
        let mut stream = js.get_stream("SANDMILL_SUB_strict").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stream.info().await.unwrap().state.messages > 0 {
            assert!(Instant::now() < deadline, "messages were never acked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listed = support::ok(&fleet.cli(&["subscriptions"]));
        assert!(listed.lines().any(|l| l.starts_with("echo ")), "{listed}");
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("strict ") && l.contains("durable")),
            "{listed}"
        );

        // Deleting stops new tasks; recorded ones stay readable.
        support::ok(&fleet.cli(&["unsubscribe", "echo"]));
        let gone = client.request("echo.a", "again".into()).await;
        assert!(gone.is_err(), "nothing answers a deleted subscription");
        let job = fleet.job(job_id).await;
        assert_ne!(job["status"], "running", "{job}");
        assert_eq!(job["tasks"]["total"], 2, "{job}");
        let task = fleet.get(&format!("/v1/tasks/{task_id}")).await["task"].clone();
        assert_eq!(task["state"], "succeeded", "{task}");
        let missing = fleet
            .http
            .get(format!("{}/v1/subscriptions/echo", fleet.base))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        support::ok(&fleet.cli(&["unsubscribe", "strict"]));
        assert!(
            js.get_stream("SANDMILL_SUB_strict").await.is_err(),
            "its stream goes too"
        );
    });
}

/// Jepsen-style: 10,000 messages published to a durable subscription
/// while a worker is killed with SIGKILL and started again each get
/// exactly one recorded result.
#[test]
fn a_durable_subscription_records_every_message_once_through_a_worker_kill() {
    run_test(Duration::from_secs(420), async {
        let total: i64 = 10_000;
        let mut fleet = Fleet::start(&["--ack-wait", "3s"]).await;
        fleet.start_worker("w1", "", 2);
        fleet.start_worker("w2", "", 2);
        let dir = tempfile::tempdir().unwrap();
        let noop = guests::NOOP;
        let sub = fleet
            .subscribe(
                dir.path(),
                "ingest",
                &format!(
                    "name = \"ingest\"\nsubject = \"ingest.>\"\nmodule = \"{noop}\"\nmax_in_flight = 512\n"
                ),
            )
            .await;
        let job_id = sub["job_id"].as_i64().unwrap();
        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client.clone());
        let started = Instant::now();
        let mut killed = false;
        for chunk in 0..(total / 500) {
            let mut acks = Vec::new();
            for i in chunk * 500..(chunk + 1) * 500 {
                acks.push(
                    js.publish(format!("ingest.{}", i % 7), i.to_string().into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
            if !killed
                && fleet.job(job_id).await["tasks"]["succeeded"]
                    .as_i64()
                    .unwrap_or(0)
                    > 500
            {
                fleet.kill_and_restart_worker("w1").await;
                killed = true;
            }
        }
        let published = started.elapsed();
        if !killed {
            fleet
                .until(job_id, "500 results", Duration::from_secs(120), |s| {
                    s["tasks"]["succeeded"].as_i64().unwrap_or(0) > 500
                })
                .await;
            fleet.kill_and_restart_worker("w1").await;
            killed = true;
        }
        let job = fleet
            .until(
                job_id,
                "every message recorded",
                Duration::from_secs(300),
                |s| {
                    s["tasks"]["succeeded"].as_i64().unwrap_or(0)
                        + s["tasks"]["failed"].as_i64().unwrap_or(0)
                        >= total
                },
            )
            .await;
        let elapsed = started.elapsed();
        // Every message's place (its stream sequence) has one task.
        let mut seqs = std::collections::BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/jobs/{job_id}/tasks?limit=5000&cursor={c}"),
                None => format!("/v1/jobs/{job_id}/tasks?limit=5000"),
            };
            let page = fleet.get(&path).await;
            for task in page["items"].as_array().unwrap() {
                *seqs.entry(task["seq"].as_i64().unwrap()).or_insert(0) +=
                    i64::from(task["state"] == "succeeded");
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let ok = (1..=total).filter(|s| seqs.get(s) == Some(&1)).count() as i64;
        let (_, _, duplicated) = fleet.audit("subscription", job_id).await;
        println!(
            "durable subscription, worker SIGKILLed: ok {ok}, lost {}, duplicated {duplicated}; \
             published in {:.1} s, all recorded in {:.1} s ({:.0} msg/s)",
            total - ok,
            published.as_secs_f64(),
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
        assert!(killed, "the worker was killed mid-run");
        assert_eq!((ok, total - ok, duplicated), (total, 0, 0), "{job}");
        assert_eq!(seqs.len() as i64, total);
        assert_eq!(job["tasks"]["failed"], 0, "{job}");
        let mut stream = js.get_stream("SANDMILL_SUB_ingest").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stream.info().await.unwrap().state.messages > 0 {
            assert!(Instant::now() < deadline, "messages were never acked");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `sandmill serve` SIGKILLed while a durable subscription's messages are
/// handled, then started again: every message gets exactly one recorded
/// result (a message delivered again finds its task).
#[test]
fn a_durable_subscription_loses_nothing_when_serve_is_killed() {
    run_test(Duration::from_secs(300), async {
        let total: i64 = 2_000;
        let mut fleet = Fleet::start(&["--ack-wait", "3s"]).await;
        fleet.start_worker("w1", "", 2);
        let dir = tempfile::tempdir().unwrap();
        let sub = fleet
            .subscribe(
                dir.path(),
                "orders",
                &format!(
                    "name = \"orders\"\nsubject = \"orders.*\"\nmodule = \"{}\"\nmax_in_flight = 256\n",
                    guests::NOOP
                ),
            )
            .await;
        let job_id = sub["job_id"].as_i64().unwrap();
        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client.clone());
        let mut acks = Vec::new();
        for i in 0..total {
            acks.push(
                js.publish(format!("orders.{}", i % 3), i.to_string().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
        fleet
            .until(job_id, "200 results", Duration::from_secs(120), |s| {
                s["tasks"]["succeeded"].as_i64().unwrap_or(0) >= 200
            })
            .await;
        fleet.kill_serve();
        tokio::time::sleep(Duration::from_millis(500)).await;
        fleet.start_serve().await;
        let job = fleet
            .until(
                job_id,
                "every message recorded",
                Duration::from_secs(180),
                |s| s["tasks"]["succeeded"].as_i64().unwrap_or(0) >= total,
            )
            .await;
        let (ok, lost, duplicated) = fleet.audit("subscription, serve SIGKILLed", job_id).await;
        assert_eq!((ok, lost, duplicated), (total, 0, 0), "{job}");
        assert_eq!(job["tasks"]["total"], total, "one task per message: {job}");
        let mut stream = js.get_stream("SANDMILL_SUB_orders").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stream.info().await.unwrap().state.messages > 0 {
            assert!(Instant::now() < deadline, "messages were never acked");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `serve --auth tokens`: every route but /healthz needs a live token; a
/// reader cannot change anything; a revoked token is refused; the CLI
/// sends `--token`.
#[test]
fn serve_with_tokens_refuses_requests_without_a_live_token() {
    run_test(Duration::from_secs(180), async {
        let fleet = Fleet::start(&["--auth", "tokens"]).await;
        let token = |args: &[&str]| {
            let out = support::output_within(
                Command::new(env!("CARGO_BIN_EXE_sandmill"))
                    .args(["token", "--database", &fleet.database])
                    .args(args),
                Duration::from_secs(60),
            );
            support::ok(&out).trim().to_owned()
        };
        let admin = token(&["create", "--tenant", "ops", "--role", "admin"]);
        let reader = token(&["create", "--tenant", "ops", "--role", "reader"]);
        assert!(admin.starts_with("smt_") && reader.starts_with("smt_"));
        let listed = token(&["list"]);
        assert_eq!(listed.lines().count(), 3, "{listed}");
        assert!(!listed.contains(&admin[4..]), "a secret is never listed");

        let get = |path: &str, secret: Option<&str>| {
            let mut request = fleet.http.get(format!("{}{path}", fleet.base));
            if let Some(secret) = secret {
                request = request.bearer_auth(secret);
            }
            request.send()
        };
        assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
        let refused = get("/v1/jobs", None).await.unwrap();
        assert_eq!(refused.status(), 401);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert_eq!(
            get("/v1/jobs", Some("smt_nonsense"))
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(get("/v1/jobs", Some(&admin)).await.unwrap().status(), 200);
        assert_eq!(get("/v1/jobs", Some(&reader)).await.unwrap().status(), 200);
        let posted = fleet
            .http
            .post(format!("{}/v1/inputs", fleet.base))
            .bearer_auth(&reader)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 403, "a reader cannot upload");
        let posted = fleet
            .http
            .post(format!("{}/v1/inputs", fleet.base))
            .bearer_auth(&admin)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200);

        // The CLI: without a token it fails; with one it works.
        let jobs = |secret: Option<&str>| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sandmill"));
            command.args(["--server", &fleet.base]);
            if let Some(secret) = secret {
                command.args(["--token", secret]);
            }
            command.arg("jobs");
            support::output_within(&mut command, Duration::from_secs(60))
        };
        assert!(!jobs(None).status.success());
        assert!(jobs(Some(&reader)).status.success());

        let reader_id = &reader[4..16];
        token(&["revoke", reader_id]);
        assert_eq!(get("/v1/jobs", Some(&reader)).await.unwrap().status(), 401);
        assert!(
            token(&["list"])
                .lines()
                .any(|l| l.starts_with(reader_id) && l.ends_with("revoked"))
        );
    });
}

/// Fair share on the fleet: tenant alpha's sweep of 100,000 no-op tasks
/// is running when tenant beta submits 10; beta's job ends within a
/// second.
#[test]
fn one_tenants_big_sweep_does_not_hold_up_anothers_small_job_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&["--auth", "tokens"]).await;
        fleet.start_worker("w1", "", 2);
        support::fair_share(&fleet.base, &fleet.database, "fleet").await;
    });
}

/// Publishes `subject` through JetStream and waits for the stream's ack.
async fn published(js: &async_nats::jetstream::Context, subject: &str) -> bool {
    match js.publish(subject.to_owned(), "{}".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[test]
fn worker_and_client_credentials_cannot_publish_tasks_or_overwrite_blobs() {
    use async_nats::jetstream;
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    run_test(Duration::from_secs(180), async {
        // The whole fleet runs under the documented configuration: serve
        // as `sandmill-server`, the worker as `sandmill-worker`.
        let mut fleet = Fleet::start(&[]).await;
        let hash = fleet.upload(guests::NOOP).await;
        fleet.start_worker("w1", "", 1);
        let task = json!({"module": format!("sha256:{hash}"), "params": {"n": 1}});
        let id = fleet.submit(json!({"name": "first", "task": task})).await;
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");

        // Requests a permission stops get no answer: a short wait will do.
        let worker = support::nats_client(&fleet.nats.worker_url()).await;
        let mut js = jetstream::new(worker.clone());
        js.set_timeout(Duration::from_secs(2));
        // A worker cannot publish a task...
        assert!(!published(&js, &format!("sandmill.tasks.any.0.{id}.424242")).await);
        // ...nor delete, purge or read around the queues and buckets.
        assert!(js.delete_stream("SANDMILL_TASKS").await.is_err());
        assert!(js.delete_stream("SANDMILL_EVENTS").await.is_err());
        assert!(js.delete_key_value("sandmill-workers").await.is_err());
        assert!(js.delete_object_store("sandmill-blobs").await.is_err());
        let tasks = js.get_stream("SANDMILL_TASKS").await.unwrap();
        assert!(tasks.purge().await.is_err());
        let thief = tasks
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("thief".into()),
                filter_subject: "sandmill.tasks.>".into(),
                ..Default::default()
            })
            .await;
        assert!(thief.is_err(), "a worker made a queue of its own");
        assert!(
            js.create_stream(jetstream::stream::Config {
                name: "STEAL".into(),
                subjects: vec!["sandmill.wake.>".into()],
                ..Default::default()
            })
            .await
            .is_err()
        );
        // A worker writes results, never over a module or an input.
        let modules = js.get_object_store("sandmill-blobs").await.unwrap();
        let mut other: &[u8] = b"not the module";
        assert!(modules.put(hash.as_str(), &mut other).await.is_err());
        assert!(modules.delete(hash.as_str()).await.is_err());
        let results = js.get_object_store("sandmill-results").await.unwrap();
        let mut result: &[u8] = b"a result";
        results.put("a-result", &mut result).await.unwrap();
        // The recorder's queue is the control plane's alone.
        let recorder = js
            .get_stream("SANDMILL_EVENTS")
            .await
            .unwrap()
            .get_consumer::<jetstream::consumer::pull::Config>("recorder")
            .await;
        assert!(recorder.is_err(), "a worker opened the recorder's queue");
        // A program following Sandmill reads events but publishes neither
        // events nor tasks.
        let client = support::nats_client(&fleet.nats.client_url()).await;
        let mut following = jetstream::new(client.clone());
        following.set_timeout(Duration::from_secs(2));
        assert!(!published(&following, &format!("sandmill.events.{id}.1")).await);
        assert!(!published(&following, &format!("sandmill.tasks.any.0.{id}.424243")).await);
        let mut events = client.subscribe("sandmill.events.>").await.unwrap();
        client.flush().await.unwrap();

        // Nothing of that got through: no stray task reached the queue,
        // and the fleet goes on working (the follower sees its events).
        let admin = jetstream::new(support::nats_client(&fleet.nats.url()).await);
        let mut stream = admin.get_stream("SANDMILL_TASKS").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 0);
        assert!(admin.get_stream("SANDMILL_EVENTS").await.is_ok());
        let mut module = Vec::new();
        admin
            .get_object_store("sandmill-blobs")
            .await
            .unwrap()
            .get(hash.as_str())
            .await
            .expect("the module is still there")
            .read_to_end(&mut module)
            .await
            .unwrap();
        assert_eq!(
            sandmill_runtime::blob::hash(&module),
            hash,
            "the module's bytes are intact"
        );
        // (Other parameters: the first job's output is cached.)
        let task = json!({"module": format!("sha256:{hash}"), "params": {"n": 2}});
        let id = fleet.submit(json!({"name": "second", "task": task})).await;
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the follower sees the second job's events")
            .unwrap();
        assert!(
            event.subject.starts_with(&format!("sandmill.events.{id}.")),
            "{}",
            event.subject
        );
        let tasks: Vec<Value> = fleet.tasks(id).await;
        assert_eq!(tasks.len(), 1);
    });
}

#[test]
fn a_forged_finished_event_is_not_recorded() {
    use async_nats::jetstream;
    use sandmill_runtime::message::{TaskEvent, TaskResult, Verdict};
    run_test(Duration::from_secs(180), async {
        let mut fleet = Fleet::start(&[]).await;
        let hash = fleet.upload(guests::HOSTILE_LOOP).await;
        fleet.start_worker("w1", "", 1);
        // One attempt that runs 4 s, then times out.
        let id = fleet
            .submit(
                json!({"name": "slow", "max_attempts": 1, "limits": {"timeout": "4s"},
                "task": {"module": format!("sha256:{hash}"), "params": {}}}),
            )
            .await;
        fleet
            .until(id, "the task starting", Duration::from_secs(30), |s| {
                s["tasks"]["running"] == 1
            })
            .await;
        let task_id = fleet.tasks(id).await[0]["id"].as_i64().unwrap();

        // Someone with a worker's NATS password, who was not delivered the
        // task, reports it succeeded: without a ticket, with a made-up one,
        // and under every message id the real worker could use.
        let forger = jetstream::new(support::nats_client(&fleet.nats.worker_url()).await);
        for (n, ticket) in ["", "0123456789abcdef0123456789abcdef"].iter().enumerate() {
            let forged = TaskEvent::Finished(TaskResult {
                job_id: id,
                task_id,
                attempt: 0,
                worker: "w1".into(),
                verdict: Verdict::Succeeded,
                reason: None,
                error: None,
                retryable: false,
                output: None,
                log: b"forged\n".to_vec(),
                log_blob: None,
                log_truncated: false,
                counters: Default::default(),
                started_ms: None,
                elapsed_ms: 1,
                fuel_used: None,
                ticket: ticket.to_string(),
                kind: None,
                waited_ms: None,
                memory_peak: None,
            });
            for msg_id in [
                format!("forged-{n}"),
                format!(
                    "event-{task_id}-0-finished-{}",
                    &ticket.get(..8).unwrap_or("")
                ),
            ] {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                forger
                    .publish_with_headers(
                        format!("sandmill.events.{id}.{task_id}"),
                        headers,
                        serde_json::to_vec(&forged).unwrap().into(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
        // The forgeries reached the stream, and the task still runs.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fleet.job(id).await["tasks"]["running"], 1);

        // The real end is what is recorded: the timeout, from w1.
        let finished = fleet.finished(id, Duration::from_secs(60)).await;
        assert_eq!(finished["status"], "failed", "{finished}");
        let task: Value = fleet.get(&format!("/v1/tasks/{task_id}")).await;
        assert_eq!(task["task"]["reason"], "timeout", "{task}");
        let attempts = task["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{task}");
        assert!(
            attempts[0]["worker"].as_str().unwrap().starts_with("w1/"),
            "{task}"
        );
        let log = fleet
            .http
            .get(format!("{}/v1/tasks/{task_id}/logs", fleet.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!log.contains("forged"), "{log}");
    });
}

/// Fair share with long tasks on the fleet: what alpha's sweep has queued
/// ahead in the first-in-first-out task queue is a short stretch of work,
/// so beta's job waits a few task lengths, not the sweep.
#[test]
fn one_tenants_long_tasks_do_not_hold_up_anothers_job_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&["--auth", "tokens"]).await;
        fleet.start_worker("w1", "", 2);
        support::fair_share_long_tasks(&fleet.base, &fleet.database, "fleet", 2).await;
    });
}

/// Reservations on the fleet: beta's 3 reserved slots (of a worker's 4)
/// run its tasks before alpha's sweep queued ahead of them; alpha uses
/// them while beta leaves them idle.
#[test]
fn a_tenants_reserved_slots_run_its_tasks_first_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&["--auth", "tokens"]).await;
        fleet.start_worker("w1", "", 4);
        support::reserved_slots(&fleet.base, &fleet.database, "fleet").await;
    });
}

/// Idle queues go: a label set's queue is removed once it held nothing
/// for `--queue-idle`, while the standing queues (unlabelled work at the
/// lowest and highest priority, reserved slots) stay; the label set's next
/// job makes its queue again and runs on the worker that offers it, which
/// let go of the removed queue.
#[test]
fn idle_label_queues_are_removed_and_made_again() {
    run_test(Duration::from_secs(180), async {
        let mut fleet = Fleet::start(&["--queue-idle", "2s"]).await;
        let module = format!("sha256:{}", fleet.upload(guests::NOOP).await);
        fleet.start_worker("g1", "gpu=a100", 1);
        let job = json!({"name": "gpu", "labels": {"gpu": "a100"}, "cache": false,
            "sweep": {"module": module, "count": 3}});
        let first = fleet.submit(job.clone()).await;
        let ended = fleet.finished(first, Duration::from_secs(60)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");

        let deadline = Instant::now() + Duration::from_secs(30);
        let started = Instant::now();
        loop {
            let queues = fleet.queues().await;
            if queues.iter().all(|(_, labels)| labels != "gpu=a100") {
                let standing: Vec<&str> = queues
                    .iter()
                    .filter(|(_, labels)| labels.is_empty())
                    .map(|(name, _)| name.as_str())
                    .collect();
                for name in ["q-any-0", "q-any-9", "q-any-10"] {
                    assert!(standing.contains(&name), "{name} went: {queues:?}");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the idle queue stayed: {queues:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "the idle gpu=a100 queue went {:?} after its job ended (--queue-idle 2s)",
            started.elapsed()
        );

        let second = fleet.submit(job).await;
        let ended = fleet.finished(second, Duration::from_secs(60)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        let tasks = fleet.tasks(second).await;
        assert_eq!(tasks.len(), 3);
        // Run, not taken from the cache: by g1, the only worker.
        for task in &tasks {
            assert_eq!(task["state"], "succeeded", "{task}");
        }
    });
}

#[test]
fn unnamed_blobs_are_collected_from_both_buckets_and_named_ones_stay() {
    run_test(Duration::from_secs(240), async {
        let mut fleet = Fleet::start(&["--blob-grace", "1s"]).await;
        fleet.start_worker("w1", "", 2);
        support::collection::unnamed_blobs_go_named_ones_stay(&fleet.http, &fleet.base).await;
    });
}

#[test]
fn the_event_stream_keeps_to_its_byte_limit_and_loses_no_result() {
    run_test(Duration::from_secs(240), async {
        const TASKS: u64 = 4_000;
        let limit: i64 = 1 << 20;
        let mut fleet = Fleet::start(&[
            "--events-max-bytes",
            "1MiB",
            "--events-max-age",
            "1h",
            "--reconcile-every",
            "2s",
        ])
        .await;
        let hash = fleet.upload(guests::NOOP).await;
        fleet.start_worker("w1", "", 2);
        let id = fleet.submit(sweep(&hash, TASKS)).await;
        let ended = fleet.finished(id, Duration::from_secs(200)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        assert_eq!(ended["tasks"]["succeeded"], TASKS, "{ended}");

        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("SANDMILL_EVENTS").await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.max_bytes, limit);
        assert_eq!(info.config.max_age, Duration::from_secs(3600));
        println!(
            "{TASKS} tasks: the event stream holds {} events in {} bytes (limit {limit}), {} gone",
            info.state.messages,
            info.state.bytes,
            info.state.first_sequence - 1
        );
        assert!(info.state.bytes <= limit as u64, "{:?}", info.state);
        assert!(info.state.first_sequence > 1, "the limit was never reached");

        // A restart with other limits changes the stream's.
        fleet.kill_serve();
        fleet.serve_args = vec!["--events-max-bytes".into(), "2MiB".into()];
        fleet.start_serve().await;
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.max_bytes, 2 << 20);
        assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    });
}

#[test]
fn blob_buckets_keep_to_their_byte_limits_and_refuse_cleanly() {
    run_test(Duration::from_secs(240), async {
        let mut fleet =
            Fleet::start(&["--blobs-max-bytes", "3MiB", "--results-max-bytes", "1MiB"]).await;
        let hash = fleet.upload(guests::NOOP).await;
        let input = |seed: u8| -> Vec<u8> {
            (0..1_600_000u32)
                .map(|i| b'a' + ((i as u8) ^ seed) % 26)
                .collect()
        };
        let first = fleet.post_input(input(1)).await;
        assert_eq!(first.status(), 200);
        let first = first.json::<Value>().await.unwrap()["input"]
            .as_str()
            .unwrap()
            .to_owned();

        // The second does not fit: refused with the flag named, and
        // nothing of it stored (not a chunk).
        let client = support::nats_client(&fleet.nats.url()).await;
        let js = async_nats::jetstream::new(client);
        let blobs = js.get_stream("OBJ_sandmill-blobs").await.unwrap();
        let held = blobs.get_info().await.unwrap().state.bytes;
        let second = input(2);
        let second_hash = sandmill_runtime::blob::hash(&second);
        let refused = fleet.post_input(second.clone()).await;
        assert_eq!(refused.status(), 507);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "storage_full", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("--blobs-max-bytes"), "{message}");
        // So is a call whose input does not fit.
        let call = fleet
            .http
            .post(format!("{}/v1/run", fleet.base))
            .json(&json!({"module": format!("sha256:{hash}"),
                "input": String::from_utf8(second.clone()).unwrap()}))
            .send()
            .await
            .unwrap();
        assert_eq!(call.status(), 507);
        let body: Value = call.json().await.unwrap();
        assert_eq!(body["code"], "storage_full", "{body}");
        let absent = format!("/v1/blobs/{second_hash}");
        assert_eq!(
            support::collection::status_of(&fleet.http, &fleet.base, &absent).await,
            404
        );
        assert_eq!(blobs.get_info().await.unwrap().state.bytes, held);

        // An output past the workers' bucket fails its task, clearly; one
        // that fits inline still runs.
        fleet.start_worker("w1", "", 1);
        let big = fleet
            .submit(json!({"name": "big", "max_attempts": 1,
                "task": {"module": format!("sha256:{hash}"), "input": first}}))
            .await;
        let ended = fleet.finished(big, Duration::from_secs(60)).await;
        assert_eq!(ended["status"], "failed", "{ended}");
        let task = &fleet.tasks(big).await[0];
        assert_eq!(task["reason"], "host-error", "{task}");
        let error = task["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("sandmill-results is full") && error.contains("--results-max-bytes"),
            "{task}"
        );
        let small = fleet.submit(sweep(&hash, 3)).await;
        let ended = fleet.finished(small, Duration::from_secs(60)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");

        // A limit below what a bucket holds is refused at start, changing
        // nothing; a larger one lets the second input in.
        fleet.kill_serve();
        let listen = format!("127.0.0.1:{}", fleet.port);
        let mut low = fleet.command(&[
            "serve",
            "--database",
            &fleet.database,
            "--listen",
            &listen,
            "--auth",
            "open",
            "--blobs-max-bytes",
            "1MiB",
        ]);
        let out = tokio::task::spawn_blocking(move || low.stderr(Stdio::piped()).output())
            .await
            .unwrap()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("more than the limit"), "{stderr}");
        let info = blobs.get_info().await.unwrap();
        assert_eq!(info.config.max_bytes, 3 << 20);
        assert_eq!(info.state.bytes, held);
        fleet.serve_args = vec!["--blobs-max-bytes".into(), "8MiB".into()];
        fleet.start_serve().await;
        assert_eq!(fleet.post_input(second).await.status(), 200);
        let info = blobs.get_info().await.unwrap();
        assert_eq!(info.config.max_bytes, 8 << 20);
        // Without the flag, the workers' bucket has no limit again.
        let results = js.get_stream("OBJ_sandmill-results").await.unwrap();
        assert!(results.get_info().await.unwrap().config.max_bytes <= 0);
    });
}

#[test]
fn worker_metrics_and_json_logs_of_server_and_worker_join_by_trace() {
    run_test(Duration::from_secs(240), async {
        let logs = tempfile::tempdir().unwrap();
        let mut fleet = Fleet::start_logging_json(&[], logs.path()).await;
        let hash = fleet.upload(guests::NOOP).await;
        let metrics_port = support::free_port();
        let listen = format!("127.0.0.1:{metrics_port}");
        fleet.start_worker_with("w1", "", 2, &["--metrics-listen", &listen]);
        support::wait_port(metrics_port, Duration::from_secs(30));
        let total = 200;
        let id = fleet.submit(sweep(&hash, total)).await;
        let finished = fleet.finished(id, Duration::from_secs(120)).await;
        assert_eq!(finished["status"], "succeeded", "{finished}");

        // The worker's own metrics: its two slots, the calls it ran.
        let (text, worker) =
            support::metrics::scrape(&fleet.http, &format!("http://{listen}/metrics")).await;
        assert_eq!(worker.sum("sandmill_worker_slots", &[]), 2.0, "{text}");
        let ran = worker.sum(
            "sandmill_worker_calls_total",
            &[("kind", "task"), ("verdict", "succeeded")],
        );
        assert!(ran >= total as f64, "{text}");
        // The server's: every attempt recorded, with its queue wait.
        let (text, server) =
            support::metrics::scrape(&fleet.http, &format!("{}/metrics", fleet.base)).await;
        let recorded = server.sum(
            "sandmill_tasks_finished_total",
            &[("kind", "task"), ("verdict", "succeeded")],
        );
        assert!(recorded >= total as f64, "{text}");
        assert!(server.sum("sandmill_task_queue_wait_seconds_count", &[]) >= total as f64);

        // The logs: JSON lines; the server's line about a task and the
        // worker's name the same job, task, attempt and trace.
        let read = |name: &str| -> Vec<Value> {
            std::fs::read_to_string(logs.path().join(name))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        };
        let serve = read("serve.log");
        let recorded: Vec<&Value> = serve
            .iter()
            .filter(|l| l["message"] == "attempt recorded")
            .collect();
        assert!(
            recorded.len() >= total as usize,
            "{} recorded lines",
            recorded.len()
        );
        let line = recorded[recorded.len() / 2];
        let field = |l: &Value, k: &str| l[k].clone();
        let (task, trace) = (field(line, "task_id"), field(line, "trace_id"));
        assert_eq!(field(line, "job_id"), json!(id), "{line}");
        assert_eq!(trace.as_str().unwrap().len(), 32, "{line}");
        let queued = serve.iter().any(|l| {
            l["message"] == "attempt queued" && l["task_id"] == task && l["trace_id"] == trace
        });
        assert!(
            queued,
            "the server's queueing of task {task} names its trace"
        );
        let worker = read("worker.log");
        let ended = worker.iter().find(|l| {
            l["message"] == "attempt ended"
                && l["spans"].as_array().is_some_and(|spans| {
                    spans.iter().any(|s| {
                        s["task_id"] == task
                            && s["trace_id"] == trace
                            && s["job_id"] == json!(id)
                            && s["attempt"] == json!(0)
                    })
                })
        });
        assert!(
            ended.is_some(),
            "no worker line about task {task} with trace {trace}"
        );
    });
}

/// A cached sweep three windows long ends on the fleet too: cache hits
/// take no room in the window, and the dispatcher goes on without an
/// event to wake it.
#[test]
fn a_cached_sweep_past_the_window_ends_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&["--window", "64", "--reconcile-every", "10m"]).await;
        fleet.start_worker("w1", "", 2);
        support::seams::cached_sweep_past_the_window(&fleet.base, 64, "fleet").await;
    });
}

/// Cancel on the fleet: the workers hear of it on `sandmill.cancel`
/// (under the least-privilege worker user), interrupt their running
/// guests and drop what they fetched; their slots take other work at once.
#[test]
fn cancel_interrupts_running_guests_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&[]).await;
        let metrics_port = support::free_port();
        let listen = format!("127.0.0.1:{metrics_port}");
        fleet.start_worker_with("w1", "", 2, &["--metrics-listen", &listen]);
        support::wait_port(metrics_port, Duration::from_secs(30));
        let metrics = format!("http://{listen}/metrics");
        support::seams::cancel_frees_the_slots(&fleet.base, 2, Some(&metrics), "fleet").await;
    });
}

/// `max_running = 2` on a fleet worker with three slots.
#[test]
fn max_running_caps_a_job_on_the_fleet() {
    run_test(Duration::from_secs(300), async {
        let mut fleet = Fleet::start(&[]).await;
        fleet.start_worker("w1", "", 3);
        support::seams::max_running_caps_a_job(&fleet.base, 2, "fleet, 3 slots").await;
    });
}
