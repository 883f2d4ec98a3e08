//! Live events, end to end through `sandmill dev` and the CLI: `sandmill
//! wait` follows a job by its event stream (one request, counted by a
//! proxy in front of the server) and ends right after the job; a client
//! that reconnects with `Last-Event-ID` misses no event and sees none
//! twice; guests' progress and failures reach `sandmill watch`.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use sandmill_server::api::events::{EventView, SseParser};
use sandmill_server::model::{JobStatus, TaskState};
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::{dev, free_port, sandmill, submit_json, upload_module};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy to `upstream` that counts the HTTP requests sent through it.
async fn counting_proxy(port: u16, upstream: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async move {
                    // A request line ends with ` HTTP/1.1\r\n`; the tail of
                    // the previous read is kept so one split across two
                    // reads still counts once.
                    let mut tail: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut window = std::mem::take(&mut tail);
                        let old = window.len();
                        window.extend_from_slice(&buf[..n]);
                        let marker = b" HTTP/1.1\r\n";
                        let found = window
                            .windows(marker.len())
                            .enumerate()
                            .filter(|(i, w)| *w == marker && i + marker.len() > old)
                            .count();
                        counted.fetch_add(found, Ordering::SeqCst);
                        tail = window[window.len().saturating_sub(marker.len() - 1)..].to_vec();
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, requests)
}

/// A sweep of `tasks` progress guests, `steps` steps each.
fn sweep(module: &str, tasks: usize, steps: u64, spin: u64, fail: &str) -> Value {
    let rows: Vec<Value> = (0..tasks)
        .map(|i| {
            json!({"steps": steps.to_string(), "spin": spin.to_string(), "echo": format!("t{i}"), "fail": fail})
        })
        .collect();
    json!({"name": "progress", "sweep": {"module": module, "rows": rows}})
}

/// An open event stream.
struct Stream {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<EventView>,
}

impl Stream {
    async fn open(http: &reqwest::Client, url: &str, last_id: Option<u64>) -> Stream {
        let mut request = http.get(url);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            response,
            parser: SseParser::default(),
            ready: Default::default(),
        }
    }

    /// The next event (within 60 s).
    async fn next(&mut self) -> EventView {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("an event within 60 s")
                .unwrap()
                .expect("the stream stays open");
            for message in self.parser.push(&chunk).unwrap() {
                let event: EventView = serde_json::from_str(&message.data).unwrap();
                assert_eq!(message.id, Some(event.id().to_string()));
                assert_eq!(message.event.as_deref(), Some(event.kind()));
                self.ready.push_back(event);
            }
        }
    }
}

fn ended(event: &EventView, job: i64) -> bool {
    matches!(event, EventView::Job(j) if j.job_id == job && j.status.is_final())
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_event_stream_with_one_request_and_ends_with_the_job() {
    tokio::time::timeout(Duration::from_secs(300), async {
        // The proxy's name is one the open dev server answers to.
        let proxy_port = free_port();
        let dev = dev(&["--allow-host", &format!("127.0.0.1:{proxy_port}")]);
        let http = sandmill_server::tls::default_client();
        let module = upload_module(&http, &dev.base, guests::PROGRESS).await;
        let (proxy, requests) = counting_proxy(proxy_port, dev.port).await;
        let state = tempfile::tempdir().unwrap();

        // A job of a few seconds: `wait` must sit on its stream meanwhile.
        let id = submit_json(&http, &dev.base, &sweep(&module, 4, 20, 100_000_000, "")).await;
        let mut wait = sandmill(state.path());
        wait.args([
            "--server",
            &format!("http://127.0.0.1:{proxy}"),
            "wait",
            &id.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let child = wait.spawn().unwrap();
        let waited = tokio::task::spawn_blocking(move || {
            let output = child.wait_with_output().unwrap();
            (output, SystemTime::now())
        });
        let (output, exited) = waited.await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("job {id} succeeded: 4 succeeded")),
            "{stderr}"
        );
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "`sandmill wait` made one request (its event stream), no polling"
        );
        let job = support::job(&http, &dev.base, id).await;
        assert_eq!(job["status"], "succeeded");
        let finished = humantime::parse_rfc3339(job["finished_at"].as_str().unwrap()).unwrap();
        let after = exited.duration_since(finished).unwrap_or_default();
        println!(
            "sandmill wait exited {} ms after the job ended",
            after.as_millis()
        );
        assert!(
            after <= Duration::from_millis(50),
            "`sandmill wait` returned {after:?} after the job's end"
        );

        // A job that already ended: `wait` ends at once, exit 2 for a failure.
        let failed = submit_json(&http, &dev.base, &sweep(&module, 2, 1, 0, "boom")).await;
        let mut watch = sandmill(state.path());
        watch.args(["--server", &dev.base, "watch", &failed.to_string()]);
        let output = support::output_within(&mut watch, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("job {failed} failed: 2 failed")),
            "{stderr}"
        );
        // Failures are printed as they happen (the job may have ended
        // before `watch` connected: then there is nothing to print).
        let mut late = sandmill(state.path());
        let slow_fail = submit_json(
            &http,
            &dev.base,
            &sweep(&module, 1, 60, 150_000_000, "boom"),
        )
        .await;
        late.args(["--server", &dev.base, "watch", &slow_fail.to_string()]);
        let output = support::output_within(&mut late, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("failed (guest-error): guest error: boom"),
            "{stderr}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reconnects_with_last_event_id_misses_nothing_and_sees_nothing_twice() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let dev = dev(&[]);
        let http = sandmill_server::tls::default_client();
        let module = upload_module(&http, &dev.base, guests::PROGRESS).await;

        // Everything, in one connection: the reference.
        let mut all = Stream::open(&http, &format!("{}/v1/events", dev.base), None).await;
        let tasks = 30;
        let id = submit_json(&http, &dev.base, &sweep(&module, tasks, 5, 60_000_000, "")).await;
        let url = format!("{}/v1/jobs/{id}/events", dev.base);

        // The job's stream, dropped three times and resumed from the last id.
        let mut seen: Vec<EventView> = Vec::new();
        let mut stream = Stream::open(&http, &url, None).await;
        let first = stream.next().await;
        assert!(
            matches!(&first, EventView::Job(j) if j.job_id == id),
            "a job stream opens with where the job is: {first:?}"
        );
        let mut reconnects = 0;
        loop {
            let event = stream.next().await;
            let last = event.id();
            let done = ended(&event, id);
            seen.push(event);
            if done {
                break;
            }
            if seen.len().is_multiple_of(15) && reconnects < 3 {
                drop(stream);
                reconnects += 1;
                stream = Stream::open(&http, &url, Some(last)).await;
            }
        }
        assert_eq!(
            reconnects,
            3,
            "the stream was resumed: {} events",
            seen.len()
        );

        // The reference, up to the same job's end.
        let mut reference = Vec::new();
        loop {
            let event = all.next().await;
            let done = ended(&event, id);
            // What happened after the job's stream opened.
            if event_job(&event) == Some(id) && event.id() > first.id() {
                reference.push(event);
            }
            if done {
                break;
            }
        }
        let ids: Vec<u64> = seen.iter().map(EventView::id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "no event twice, in order: {ids:?}"
        );
        let reference_ids: Vec<u64> = reference.iter().map(EventView::id).collect();
        assert_eq!(
            ids, reference_ids,
            "the resumed stream saw exactly what one connection saw"
        );

        // Each task ended once, and reported progress.
        let mut finals: BTreeMap<i64, usize> = BTreeMap::new();
        let mut progressed = BTreeSet::new();
        for event in &seen {
            match event {
                EventView::Task(t) if t.state == TaskState::Succeeded => {
                    *finals.entry(t.task_id).or_default() += 1
                }
                EventView::Progress(p) => {
                    assert_eq!(p.total, 5);
                    assert!((1..=5).contains(&p.done));
                    progressed.insert(p.task_id);
                }
                _ => {}
            }
        }
        assert_eq!(finals.len(), tasks);
        assert!(finals.values().all(|n| *n == 1));
        assert!(
            !progressed.is_empty(),
            "the guests' progress calls are events"
        );
        let EventView::Job(end) = seen.last().unwrap() else {
            unreachable!()
        };
        assert_eq!(end.status, JobStatus::Succeeded);
        assert_eq!(end.tasks.succeeded, tasks as i64);

        // An id from before this server started: told it lagged, then
        // where the job is.
        let mut stale = Stream::open(&http, &url, Some(1)).await;
        assert!(matches!(stale.next().await, EventView::Lagged(_)));
        assert!(ended(&stale.next().await, id));

        // Bad requests.
        let bad = http
            .get(&url)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        let missing = http
            .get(format!("{}/v1/jobs/999999/events", dev.base))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    })
    .await
    .unwrap();
}

fn event_job(event: &EventView) -> Option<i64> {
    match event {
        EventView::Task(t) => Some(t.job_id),
        EventView::Progress(p) => Some(p.job_id),
        EventView::Job(j) => Some(j.job_id),
        EventView::Lagged(_) => None,
    }
}
