//! Schedules, end to end through `sandmill dev` and the CLI: an `every`
//! schedule fires on time; a server killed for a while catches up once,
//! not once per missed firing; `overlap = "skip"` and `"queue"` never
//! run two of a schedule's jobs at once; pause, resume and delete. And
//! subscriptions in the embedded mode (`sandmill dev --nats`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sandmill_test_artifacts as guests;
use serde_json::Value;
use support::{Killed, dev_command, free_port, ok, output_within, sandmill, wait_port};

/// `sandmill dev` on a data folder, on a free port.
fn start(data: &Path) -> (Killed, String) {
    let port = free_port();
    let process = Killed::spawn(&mut dev_command(data, port));
    wait_port(port, Duration::from_secs(60));
    (process, format!("http://127.0.0.1:{port}"))
}

fn cli(state: &Path, base: &str, args: &[&str]) -> std::process::Output {
    let mut command = sandmill(state);
    command.args(["--server", base]).args(args);
    output_within(&mut command, Duration::from_secs(60))
}

async fn schedule(http: &reqwest::Client, base: &str, name: &str) -> (u16, Value) {
    let response = http
        .get(format!("{base}/v1/schedules/{name}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn fired(http: &reqwest::Client, base: &str, name: &str) -> i64 {
    schedule(http, base, name).await.1["fired"]
        .as_i64()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_every_schedule_fires_on_time_and_catches_up_once_after_a_crash() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let http = sandmill_server::tls::default_client();
        let (mut dev, base) = start(data.path());
        let file = write(
            state.path(),
            "tick.toml",
            &format!(
                "name = \"tick\"\nevery = \"1s\"\n[task]\nmodule = \"{}\"\n",
                guests::NOOP
            ),
        );

        // A schedule is refused as a job, and a bad interval is refused.
        let bad = write(
            state.path(),
            "bad.toml",
            &format!("name = \"bad\"\nevery = \"soon\"\n[task]\nmodule = \"{}\"\n", guests::NOOP),
        );
        let refused = cli(state.path(), &base, &["submit", &bad]);
        assert_eq!(refused.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("every"));

        let created = ok(&cli(state.path(), &base, &["submit", &file]));
        assert_eq!(created.trim(), "tick");
        let started = Instant::now();
        let again = cli(state.path(), &base, &["submit", &file]);
        assert!(String::from_utf8_lossy(&again.stderr).contains("conflict"), "one schedule per name");

        // Ten seconds: ten firings, give or take one.
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
        let count = fired(&http, &base, "tick").await;
        println!("every = 1s fired {count} times in 10 s");
        assert!((9..=11).contains(&count), "fired {count} times in 10 s");
        let listed = ok(&cli(state.path(), &base, &["schedules"]));
        assert!(listed.contains("tick") && listed.contains("every 1s"), "{listed}");
        let (_, row) = schedule(&http, &base, "tick").await;
        let last_job = row["last_job_id"].as_i64().unwrap();
        let job: Value = support::job(&http, &base, last_job).await;
        assert_eq!(job["name"], "tick");
        assert_eq!(job["schedule"], "tick", "a job names the schedule that submitted it");

        // The job list can leave a schedule's runs out, or list only them.
        let plain = support::submit_json(
            &http,
            &base,
            &serde_json::json!({"name": "plain", "task": {"module": support::upload_module(&http, &base, guests::NOOP).await}}),
        )
        .await;
        let names = |page: &Value| -> Vec<String> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let unscheduled =
            support::get_json(&http, &format!("{base}/v1/jobs?scheduled=false&limit=1000")).await;
        assert_eq!(names(&unscheduled), ["plain"], "{unscheduled}");
        let ticks = support::get_json(&http, &format!("{base}/v1/jobs?schedule=tick&limit=1000")).await;
        assert!(names(&ticks).len() >= 9 && names(&ticks).iter().all(|n| n == "tick"), "{ticks}");
        // (It goes on firing meanwhile: counts only grow.)
        let only = support::get_json(&http, &format!("{base}/v1/jobs?scheduled=true&limit=1000")).await;
        assert!(names(&only).len() >= names(&ticks).len(), "{only}");
        assert!(names(&only).iter().all(|n| n == "tick"), "{only}");
        let all = support::get_json(&http, &format!("{base}/v1/jobs?limit=1000")).await;
        assert!(names(&all).len() > names(&ticks).len(), "{all}");
        assert!(names(&all).contains(&"plain".to_owned()), "{all}");
        assert_eq!(support::job(&http, &base, plain).await["schedule"], Value::Null);

        // Killed for five seconds: on start it fires once for all it
        // missed, then on time again (a burst would be five or more).
        let before = fired(&http, &base, "tick").await;
        dev.kill();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (dev2, base) = start(data.path());
        let restarted = Instant::now();
        while fired(&http, &base, "tick").await == before {
            assert!(restarted.elapsed() < Duration::from_secs(5), "no catch-up after the start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let caught_up_in = restarted.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let extra = fired(&http, &base, "tick").await - before;
        println!(
            "after 5 s down: the first firing {} ms after the start; {extra} firing(s) within {} ms (a firing may race the kill, one may be on time)",
            caught_up_in.as_millis(),
            restarted.elapsed().as_millis()
        );
        assert!((1..=3).contains(&extra), "{extra} firings after the restart: a burst");
        assert_eq!(schedule(&http, &base, "tick").await.1["skipped"], 0);

        // Paused: no more firings; resumed: on again; deleted: gone, its
        // jobs stay.
        ok(&cli(state.path(), &base, &["schedules", "pause", "tick"]));
        let paused = fired(&http, &base, "tick").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(fired(&http, &base, "tick").await, paused);
        ok(&cli(state.path(), &base, &["schedules", "resume", "tick"]));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(fired(&http, &base, "tick").await > paused);
        ok(&cli(state.path(), &base, &["schedules", "delete", "tick"]));
        assert_eq!(schedule(&http, &base, "tick").await.0, 404);
        assert_eq!(support::job(&http, &base, last_job).await["name"], "tick");
        let missing = cli(state.path(), &base, &["schedules", "pause", "tick"]);
        assert_eq!(missing.status.code(), Some(1));
        drop(dev2);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn overlap_skip_and_queue_never_run_two_of_a_schedules_jobs_at_once() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let http = sandmill_server::tls::default_client();
        let (_dev, base) = start(data.path());
        // Each job runs a second or so (never from the cache); the
        // schedules fire every 500 ms.
        for (name, overlap) in [("skipping", "skip"), ("queueing", "queue")] {
            let file = write(
                state.path(),
                &format!("{name}.toml"),
                &format!(
                    "name = \"{name}\"\nevery = \"500ms\"\noverlap = \"{overlap}\"\ncache = false\n[task]\nmodule = \"{}\"\nparams = {{ steps = 10, spin = 900000000 }}\n",
                    guests::PROGRESS
                ),
            );
            ok(&cli(state.path(), &base, &["submit", &file]));
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut skipped = Vec::new();
        for name in ["skipping", "queueing"] {
            skipped.push(schedule(&http, &base, name).await.1["skipped"].as_i64().unwrap());
            ok(&cli(state.path(), &base, &["schedules", "delete", name]));
        }
        assert!(skipped[0] > 0, "`skip` skipped no firing");
        assert_eq!(skipped[1], 0, "`queue` skips nothing");
        let jobs: Value = http
            .get(format!("{base}/v1/jobs?limit=200"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for name in ["skipping", "queueing"] {
            let mut spans: Vec<(String, String)> = Vec::new();
            for job in jobs["items"].as_array().unwrap() {
                if job["name"] != name {
                    continue;
                }
                let finished = match job["finished_at"].as_str() {
                    Some(at) => at.to_owned(),
                    None => "9999".to_owned(),
                };
                spans.push((job["created_at"].as_str().unwrap().to_owned(), finished));
            }
            spans.sort();
            println!("overlap: {name}: {} jobs in 6 s, skipped {skipped:?}", spans.len());
            assert!(spans.len() >= 2, "{name}: {spans:?}");
            for pair in spans.windows(2) {
                assert!(pair[1].0 >= pair[0].1, "{name}: two jobs ran at once: {pair:?}");
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_controller_reaches_its_target_and_stops_submitting() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let http = sandmill_server::tls::default_client();
        let (_dev, base) = start(data.path());
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/controller/controller.toml");
        let created = ok(&cli(
            state.path(),
            &base,
            &["submit", &example.display().to_string()],
        ));
        assert_eq!(created.trim(), "keep-twenty");

        // Its work jobs are sweeps named as the schedule; its own calls
        // are jobs named `keep-twenty.controller`.
        let work = async || -> (usize, i64, usize) {
            let jobs: Value = http
                .get(format!("{base}/v1/jobs?limit=1000"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let items = jobs["items"].as_array().unwrap();
            let work: Vec<&Value> = items
                .iter()
                .filter(|j| j["name"] == "keep-twenty")
                .collect();
            let succeeded = work
                .iter()
                .map(|j| j["tasks"]["succeeded"].as_i64().unwrap())
                .sum();
            let calls = items
                .iter()
                .filter(|j| j["name"] == "keep-twenty.controller")
                .count();
            (work.len(), succeeded, calls)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, succeeded, _) = work().await;
            if succeeded >= 20 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the target was not reached in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (jobs, succeeded, calls) = work().await;
        // Three more firings: the controller runs and submits nothing.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let (jobs_after, succeeded_after, calls_after) = work().await;
        println!(
            "controller: target 20 reached with {jobs} jobs; {} more calls submitted {} jobs",
            calls_after - calls,
            jobs_after - jobs
        );
        assert_eq!(succeeded, 20, "exactly the target");
        assert_eq!(jobs, 4, "sweeps of 5");
        assert!(calls_after > calls, "the controller was still called");
        assert_eq!(
            (jobs_after, succeeded_after),
            (jobs, succeeded),
            "nothing more was submitted"
        );
        let (_, row) = schedule(&http, &base, "keep-twenty").await;
        assert_eq!(row["fired"], 4);
        ok(&cli(
            state.path(),
            &base,
            &["schedules", "delete", "keep-twenty"],
        ));
    })
    .await
    .unwrap();
}

/// `sandmill dev --nats`: subscriptions run with the in-process work
/// queue; a request is answered, a durable message recorded and acked,
/// and `keep` bounds the finished tasks kept.
#[tokio::test(flavor = "multi_thread")]
async fn sandmill_dev_with_nats_runs_subscriptions_and_keeps_what_keep_says() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let nats = support::Nats::start();
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let _dev = Killed::spawn(dev_command(data.path(), port).args(["--nats", &nats.url()]));
        wait_port(port, Duration::from_secs(60));
        let base = format!("http://127.0.0.1:{port}");
        let http = sandmill_server::tls::default_client();
        let echo = write(
            state.path(),
            "echo.toml",
            &format!(
                "name = \"echo\"\nsubject = \"dev.echo\"\nmodule = \"{}\"\nqueue = false\nkeep = 5\n",
                guests::NOOP
            ),
        );
        assert_eq!(ok(&cli(state.path(), &base, &["subscribe", &echo])).trim(), "echo");
        let durable = write(
            state.path(),
            "log.toml",
            &format!("name = \"log\"\nsubject = \"dev.log.*\"\nmodule = \"{}\"\n", guests::NOOP),
        );
        assert_eq!(ok(&cli(state.path(), &base, &["subscribe", &durable])).trim(), "log");
        let subscription = |name: &'static str| {
            let http = http.clone();
            let base = base.clone();
            async move {
                http.get(format!("{base}/v1/subscriptions/{name}"))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let echo_job = subscription("echo").await["job_id"].as_i64().unwrap();
        let log_job = subscription("log").await["job_id"].as_i64().unwrap();

        let client = support::nats_client(&nats.url()).await;
        for i in 0..12 {
            let payload = format!("call {i}");
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                client.request("dev.echo", payload.clone().into()),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(&answer.payload[..], payload.as_bytes());
        }
        let js = async_nats::jetstream::new(client.clone());
        for i in 0..3 {
            js.publish(format!("dev.log.{i}"), "line".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let job = |id: i64| {
            let http = http.clone();
            let base = base.clone();
            async move { support::job(&http, &base, id).await }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while job(log_job).await["tasks"]["succeeded"] != 3 {
            assert!(Instant::now() < deadline, "durable messages not recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut stream = js.get_stream("SANDMILL_SUB_log").await.unwrap();
        while stream.info().await.unwrap().state.messages > 0 {
            assert!(Instant::now() < deadline, "durable messages never acked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // keep = 5: the older finished tasks go (within a retention round);
        // the job's counts stay.
        let deadline = Instant::now() + Duration::from_secs(30);
        let kept = loop {
            let tasks: Value = http
                .get(format!("{base}/v1/jobs/{echo_job}/tasks"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let seqs: Vec<i64> = tasks["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["seq"].as_i64().unwrap())
                .collect();
            if seqs.len() <= 5 {
                break seqs;
            }
            assert!(Instant::now() < deadline, "retention kept {seqs:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(!kept.is_empty() && kept.iter().all(|s| *s >= 7), "{kept:?}");
        assert_eq!(job(echo_job).await["tasks"]["succeeded"], 12);
    })
    .await
    .unwrap();
}
