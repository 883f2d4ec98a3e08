//! Where two features meet, as scenarios any server can be put through
//! (`sandmill dev` on either database, or a fleet): each takes the
//! server's base URL (an open server) and asserts what a user would see.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Waits up to `limit` for job `id` to leave `running`; the job then.
pub async fn wait_ended(http: &reqwest::Client, base: &str, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = super::job(http, base, id).await;
        if job["status"] != "running" {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still running after {limit:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A sweep three times the dispatch window (`window` tasks), run once,
/// then again from the result cache: every task of the second is a cache
/// hit, which takes no room in the window, and the job still ends.
pub async fn cached_sweep_past_the_window(base: &str, window: u64, mode: &str) {
    let http = sandmill_server::tls::default_client();
    let noop = super::upload_module(&http, base, sandmill_test_artifacts::NOOP).await;
    let count = 3 * window;
    let sweep = json!({"name": "cached", "sweep": {"module": noop, "count": count}});
    let first = super::submit_json(&http, base, &sweep).await;
    let first = wait_ended(&http, base, first, Duration::from_secs(120)).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let began = Instant::now();
    let again = super::submit_json(&http, base, &sweep).await;
    // Well inside the reconciler's period (60 s by default; the fleet test
    // sets it longer), whose recount would otherwise wake the dispatcher
    // and hide a stall.
    let again = wait_ended(&http, base, again, Duration::from_secs(30)).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["tasks"]["succeeded"], count, "{again}");
    assert_eq!(
        again["tasks"]["cached"], count,
        "every task a cache hit: {again}"
    );
    eprintln!(
        "cached sweep ({mode}): {count} cached tasks through a window of {window} in {:?}",
        began.elapsed()
    );
}

/// Cancel stops work: 40 tasks that never end by themselves (30 s
/// timeout) fill `slots` slots; the job is cancelled; a one-task job then
/// succeeds long before any timeout could free a slot, and the cancelled
/// tasks stay cancelled. Prints how soon. `busy` reads how many slots
/// are busy (from a `/metrics`), when the server can say.
pub async fn cancel_frees_the_slots(base: &str, slots: u64, metrics: Option<&str>, mode: &str) {
    let http = sandmill_server::tls::default_client();
    let looping = super::upload_module(&http, base, sandmill_test_artifacts::HOSTILE_LOOP).await;
    let noop = super::upload_module(&http, base, sandmill_test_artifacts::NOOP).await;
    let endless = super::submit_json(
        &http,
        base,
        &json!({"name": "endless", "sweep": {"module": looping, "count": 40},
            "limits": {"timeout": "30s"}, "max_attempts": 1, "cache": false}),
    )
    .await;
    // Every slot runs one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = super::job(&http, base, endless).await;
        if job["tasks"]["running"].as_u64() == Some(slots) {
            break;
        }
        assert!(Instant::now() < deadline, "the slots never filled: {job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cancelled = http
        .post(format!("{base}/v1/jobs/{endless}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancelled.status(), 200);
    let began = Instant::now();
    let quick = super::submit_json(
        &http,
        base,
        &json!({"name": "after", "task": {"module": noop}, "cache": false}),
    )
    .await;
    // A timeout would free a slot after 30 s; an interrupt within a tick.
    let quick = wait_ended(&http, base, quick, Duration::from_secs(20)).await;
    let took = began.elapsed();
    assert_eq!(quick["status"], "succeeded", "{quick}");
    let job = super::job(&http, base, endless).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["tasks"]["cancelled"], 40, "{job}");
    assert_eq!(
        job["tasks"]["failed"], 0,
        "no interrupted task is recorded failed: {job}"
    );
    eprintln!(
        "cancel ({mode}): 40 endless tasks on {slots} slots cancelled; a one-task job succeeded {took:?} later"
    );
    // The guests stopped: no slot stays busy.
    if let Some(url) = metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, scrape) = super::metrics::scrape(&http, url).await;
            let busy = scrape.sum("sandmill_worker_slots", &[("state", "busy")]);
            if busy == 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{busy} slots still busy 10 s after the cancel"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Labels on a server whose workers offer `offered` (an open server): a
/// job needing `gpu=a100` runs where they are offered, and elsewhere
/// waits, saying why as the fleet does, until its queue timeout fails it.
pub async fn labels_decide_where_tasks_run(base: &str, offered: bool, mode: &str) {
    let http = sandmill_server::tls::default_client();
    let noop = super::upload_module(&http, base, sandmill_test_artifacts::NOOP).await;
    let id = super::submit_json(
        &http,
        base,
        &json!({"name": "gpu", "labels": {"gpu": "a100"}, "cache": false,
            "limits": {"queue_timeout": "4s"}, "sweep": {"module": noop, "count": 3}}),
    )
    .await;
    if offered {
        let job = wait_ended(&http, base, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let job = super::job(&http, base, id).await;
        if job["waiting"]["reason"].is_string() {
            break job;
        }
        assert!(Instant::now() < deadline, "no waiting reason: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        waiting["waiting"]["reason"], "no live worker offers labels gpu=a100",
        "{waiting}"
    );
    assert_eq!(waiting["tasks"]["succeeded"], 0, "{waiting}");
    let job = wait_ended(&http, base, id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["tasks"]["failed"], 3, "{job}");
    eprintln!("labels ({mode}): a gpu=a100 job waited, said why, and timed out");
}

/// `max_running = cap` on a server whose slots outnumber it: the job's
/// tasks (12 of 300 ms each) never run more than `cap` at once, by their
/// recorded start and end times, and do run `cap` at once; the job ends.
pub async fn max_running_caps_a_job(base: &str, cap: u64, mode: &str) {
    let http = sandmill_server::tls::default_client();
    let looping = super::upload_module(&http, base, sandmill_test_artifacts::HOSTILE_LOOP).await;
    let id = super::submit_json(
        &http,
        base,
        &json!({"name": "capped", "max_running": cap, "cache": false, "max_attempts": 1,
            "limits": {"timeout": "300ms"}, "sweep": {"module": looping, "count": 12}}),
    )
    .await;
    let job = wait_ended(&http, base, id, Duration::from_secs(120)).await;
    assert_eq!(job["max_running"], cap, "{job}");
    assert_eq!(job["tasks"]["failed"], 12, "each task times out: {job}");
    let page = super::get_json(&http, &format!("{base}/v1/jobs/{id}/tasks?limit=100")).await;
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for task in page["items"].as_array().expect("tasks") {
        let (start, end) = super::run_times(task).unwrap_or_else(|| panic!("no run times: {task}"));
        edges.push((start, 1));
        edges.push((end, -1));
    }
    // Ends before starts at the same millisecond: a task dispatched
    // after another's end was recorded started no earlier.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    eprintln!("max_running ({mode}): at most {most} of the job's tasks ran at once (cap {cap})");
    if most != cap as i32 {
        for task in page["items"].as_array().expect("tasks") {
            eprintln!(
                "  task {} {:?} {} {}",
                task["id"],
                super::run_times(task),
                task["started_at"],
                task["finished_at"]
            );
        }
    }
    assert_eq!(most, cap as i32, "the cap holds, and is used");
}
