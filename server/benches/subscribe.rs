//! `cargo bench -p sandmill-server --bench subscribe`: functions on NATS
//! subjects, through `sandmill serve` + Postgres + a real `nats-server -js`
//! with two `sandmill worker` processes, in one run:
//!
//! - request/reply latency (p50, p99) of a `noop` subscription
//!   (`queue = false`), next to a bare NATS request/reply echo service on
//!   the same server (the floor: one hop there and back);
//! - messages per second through a durable subscription (`queue = true`):
//!   every message published with a JetStream ack, each recorded as a task
//!   and acked.
//!
//! Under `cargo test` (no `--bench`) it runs a few hundred messages as a
//! smoke test.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sandmill(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sandmill")
}

/// p50 and p99 of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// `n` sequential requests on `subject`; each answer must echo its payload.
async fn latencies(client: &async_nats::Client, subject: &str, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("request {i}");
        let started = Instant::now();
        let answer = client
            .request(subject.to_owned(), payload.clone().into())
            .await
            .expect("an answer");
        samples.push(started.elapsed());
        assert_eq!(&answer.payload[..], payload.as_bytes());
    }
    samples
}

async fn subscribe(http: &reqwest::Client, base: &str, body: Value) -> Value {
    let response = http
        .post(format!("{base}/v1/subscriptions"))
        .json(&body)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(response.status(), 201);
    response.json().await.expect("subscription")
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (requests, messages) = if quick { (50, 300) } else { (2_000, 20_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let pg = support::Postgres::start();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().display().to_string();
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let database = pg.database();
    let nats_url = nats.url();
    let worker_url = nats.worker_url();
    let mut fleet = Killed(vec![sandmill(&[
        "serve",
        "--auth",
        "open",
        "--nats",
        &nats_url,
        "--database",
        &database,
        "--listen",
        &listen,
        "--cache-dir",
        &cache_dir,
    ])]);
    let base = format!("http://127.0.0.1:{port}");
    let http = sandmill_server::tls::default_client();
    runtime.block_on(support::wait_ready(&http, &base));
    for id in ["bench-1", "bench-2"] {
        fleet.0.push(sandmill(&[
            "worker",
            "--nats",
            &worker_url,
            "--id",
            id,
            "--concurrency",
            "1",
            "--cache-dir",
            &cache_dir,
        ]));
    }

    runtime.block_on(async {
        let module = support::upload_module(&http, &base, guests::NOOP).await;
        let client = support::nats_client(&nats_url).await;

        // The floor: a bare echo service on the same NATS server.
        let mut echo = client.subscribe("bench.echo").await.unwrap();
        let responder = client.clone();
        tokio::spawn(async move {
            while let Some(message) = echo.next().await {
                if let Some(reply) = message.reply {
                    let _ = responder.publish(reply, message.payload).await;
                }
            }
        });
        client.flush().await.unwrap();
        let _ = latencies(&client, "bench.echo", 20).await;
        let bare = percentiles(latencies(&client, "bench.echo", requests).await);

        subscribe(
            &http,
            &base,
            json!({"name": "fn", "subject": "bench.fn", "module": module, "queue": false}),
        )
        .await;
        // Warm: the workers compile the module once.
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .request("bench.fn", "warm".into())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the subscription never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = latencies(&client, "bench.fn", 20).await;
        let call = percentiles(latencies(&client, "bench.fn", requests).await);
        // The same call over HTTP (`POST /v1/run`), for comparison.
        let mut samples = Vec::with_capacity(requests);
        for i in 0..requests {
            let input = format!("request {i}");
            let started = Instant::now();
            let answer = http
                .post(format!("{base}/v1/run"))
                .json(&json!({"module": module, "input": input}))
                .send()
                .await
                .unwrap();
            samples.push(started.elapsed());
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.bytes().await.unwrap(), input.as_bytes());
        }
        let run = percentiles(samples);

        let durable = subscribe(
            &http,
            &base,
            json!({"name": "ingest", "subject": "bench.ingest.>", "module": module,
                   "max_in_flight": 1024}),
        )
        .await;
        let job_id = durable["job_id"].as_i64().unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let started = Instant::now();
        for chunk in 0..messages / 1000 + 1 {
            let mut acks = Vec::new();
            for i in chunk * 1000..((chunk + 1) * 1000).min(messages) {
                acks.push(
                    js.publish(format!("bench.ingest.{}", i % 16), i.to_string().into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
        let published = started.elapsed();
        loop {
            let job = support::job(&http, &base, job_id).await;
            if job["tasks"]["succeeded"].as_u64().unwrap_or(0) >= messages as u64 {
                assert_eq!(job["tasks"]["failed"], 0, "{job}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("functions on NATS subjects (serve + Postgres + nats-server, 2 worker processes):");
        println!(
            "  bare NATS echo, request/reply ({requests} requests): p50 {:.3} ms, p99 {:.3} ms",
            ms(bare.0),
            ms(bare.1)
        );
        println!(
            "  noop subscription, request/reply:                 p50 {:.3} ms, p99 {:.3} ms ({:.1}x / {:.1}x the echo)",
            ms(call.0),
            ms(call.1),
            call.0.as_secs_f64() / bare.0.as_secs_f64(),
            call.1.as_secs_f64() / bare.1.as_secs_f64()
        );
        println!(
            "  the same call as POST /v1/run over HTTP:          p50 {:.3} ms, p99 {:.3} ms",
            ms(run.0),
            ms(run.1)
        );
        println!(
            "  durable subscription, {messages} messages: {:.0} msg/s recorded (published in {:.0} ms)",
            messages as f64 / elapsed.as_secs_f64(),
            ms(published)
        );
    });
    drop(fleet);
}
