//! The web UI in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver), against a real `sandmill dev`. Screenshots of
//! each page are kept in `target/tmp/ui-screenshots/` (test artifacts).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};
use support::{Killed, dev, free_port, ok, run_test, sandmill};

/// chromedriver on a free port, and a headless Chromium session in it.
async fn browser() -> (Killed, Client) {
    for tool in ["chromium", "chromedriver"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: `bash scripts/setup.sh` installs Debian's chromium and chromium-driver"
        );
    }
    let port = free_port();
    let driver = Killed::spawn(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    support::wait_port(port, Duration::from_secs(30));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `css` matches an element whose text satisfies `check`;
/// returns that text.
async fn wait_text(client: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(found) = client.find_all(Locator::Css(css)).await {
            for element in found {
                if let Ok(text) = element.text().await {
                    if check(&text) {
                        return text;
                    }
                    last = text;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css}: no element as expected (last text {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(client: &Client, css: &str) -> usize {
    client.find_all(Locator::Css(css)).await.unwrap().len()
}

/// A pipeline whose first step takes a few seconds and whose second fails
/// with a message after writing a log line.
fn pipeline(dir: &std::path::Path) -> PathBuf {
    let text = format!(
        r#"name = "ui-pipeline"
[[step]]
name = "slow"
module = "{progress}"
params = {{ steps = "12", spin = "4000000000", echo = "slow done" }}
[[step]]
name = "bad"
module = "{progress}"
inputs = ["step:slow"]
params = {{ fail = "the input was bad on purpose", log = "reading what slow wrote" }}
[limits]
timeout = "60s"
"#,
        progress = guests::PROGRESS
    );
    let path = dir.join("ui-pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_ui_follows_a_failing_pipeline_live_to_its_failed_task() {
    run_test(Duration::from_secs(300), async {
        let dev = dev(&[]);
        let state = tempfile::tempdir().unwrap();
        let cli = |args: &[&str]| {
            support::output_within(
                sandmill(state.path())
                    .args(["--server", &dev.base])
                    .args(args),
                Duration::from_secs(60),
            )
        };
        // A plain sweep first, so the status filter has something to
        // leave out.
        let sweep = state.path().join("sweep.toml");
        std::fs::write(
            &sweep,
            format!(
                "name = \"ui-sweep\"\n[sweep]\nmodule = \"{}\"\ncount = 3\n",
                guests::NOOP
            ),
        )
        .unwrap();
        let sweep_id: i64 = ok(&cli(&["submit", sweep.to_str().unwrap(), "--wait"]))
            .trim()
            .parse()
            .unwrap();
        let file = pipeline(state.path());
        let id: i64 = ok(&cli(&["submit", file.to_str().unwrap()]))
            .trim()
            .parse()
            .unwrap();

        let (_driver, client) = browser().await;
        // The job list shows it, running.
        client.goto(&format!("{}/#/jobs", dev.base)).await.unwrap();
        let row = format!("#jobs tr[data-job=\"{id}\"]");
        wait_text(&client, &row, |t| t.contains("ui-pipeline")).await;
        wait_text(
            &client,
            &format!("#jobs tr[data-job=\"{sweep_id}\"]"),
            |t| t.contains("succeeded"),
        )
        .await;
        screenshot(&client, "jobs").await;

        // Its page, opened while it runs, turns to failed without a
        // reload: the graph marks the failing step.
        client
            .find(Locator::Css(&format!("{row} a")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&client, "#job-status", |t| t == "running").await;
        let marker: Value = client
            .execute("window.__sameDocument = 'yes'; return 1;", vec![])
            .await
            .unwrap();
        assert_eq!(marker, json!(1));
        screenshot(&client, "job-running").await;
        wait_text(&client, "#job-status", |t| t == "failed").await;
        let same: Value = client
            .execute("return window.__sameDocument || null;", vec![])
            .await
            .unwrap();
        assert_eq!(same, json!("yes"), "the page was not reloaded");
        assert_eq!(
            count(
                &client,
                "svg#graph g.node[data-step=\"bad\"][data-status=\"failed\"]"
            )
            .await,
            1
        );
        assert_eq!(
            count(
                &client,
                "svg#graph g.node[data-step=\"slow\"][data-status=\"succeeded\"]"
            )
            .await,
            1
        );
        assert_eq!(
            count(
                &client,
                "svg#graph path.edge[data-from=\"slow\"][data-to=\"bad\"]"
            )
            .await,
            1
        );
        wait_text(&client, "#failures li", |t| t.contains("guest-error")).await;
        screenshot(&client, "job").await;

        // Following the failure's sample task shows its error and log.
        client
            .find(Locator::Css("#failures li a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&client, "#task-state", |t| t == "failed").await;
        wait_text(&client, "#task-error", |t| {
            t.contains("the input was bad on purpose")
        })
        .await;
        wait_text(&client, "#task-log", |t| {
            t.contains("reading what slow wrote")
        })
        .await;
        // Its attempt: the worker, and the guest's memory.
        wait_text(&client, "#attempts td.memory", |t| t.ends_with("iB")).await;
        wait_text(&client, "#attempts tr[data-attempt=\"0\"]", |t| {
            t.contains("embedded/")
        })
        .await;
        screenshot(&client, "task").await;

        // Filtering the list by status narrows it.
        client.goto(&format!("{}/#/jobs", dev.base)).await.unwrap();
        wait_text(
            &client,
            &format!("#jobs tr[data-job=\"{sweep_id}\"]"),
            |_| true,
        )
        .await;
        let before = count(&client, "#jobs tbody tr").await;
        assert!(before >= 2);
        client
            .find(Locator::Css("#f-status"))
            .await
            .unwrap()
            .select_by_value("failed")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&client, &format!("#jobs tr[data-job=\"{sweep_id}\"]")).await > 0 {
            assert!(
                Instant::now() < deadline,
                "the filter did not narrow the list"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_text(&client, &row, |t| t.contains("failed")).await;
        assert!(count(&client, "#jobs tbody tr").await < before);
        let url = client.current_url().await.unwrap();
        assert!(url.as_str().contains("status=failed"), "{url}");
        // Sorting by a column orders the rows by it.
        client
            .find(Locator::Css("#f-status"))
            .await
            .unwrap()
            .select_by_value("")
            .await
            .unwrap();
        wait_text(
            &client,
            &format!("#jobs tr[data-job=\"{sweep_id}\"]"),
            |_| true,
        )
        .await;
        client
            .find(Locator::Css("th[data-sort=\"name\"]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&client, "th.sorted[data-sort=\"name\"]", |_| true).await;
        let first = wait_text(&client, "#jobs tbody tr:first-child", |_| true).await;
        assert!(
            first.contains("ui-sweep"),
            "name descending puts ui-sweep first: {first}"
        );
        screenshot(&client, "jobs-sorted").await;

        // The other pages draw.
        for (page, css) in [
            ("workers", "#workers tr[data-worker=\"embedded\"]"),
            ("specs", "#modules tr[data-module]"),
            ("schedules", "h1"),
            ("subscriptions", "h1"),
        ] {
            client
                .goto(&format!("{}/#/{page}", dev.base))
                .await
                .unwrap();
            wait_text(&client, css, |t| !t.is_empty()).await;
            screenshot(&client, page).await;
        }
        client.close().await.unwrap();
    });
}

#[test]
fn the_ui_asks_for_a_token_and_works_with_one() {
    run_test(Duration::from_secs(180), async {
        let pg = support::Postgres::start();
        let database = pg.database();
        let nats = support::Nats::start();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let cache = tempfile::tempdir().unwrap();
        let _serve = Killed::spawn(
            Command::new(env!("CARGO_BIN_EXE_sandmill"))
                .args(["serve", "--database", &database, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--nats", &nats.url(), "--cache-dir"])
                .arg(cache.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &base).await;
        let secret = support::token(&database, "alpha", "reader");
        // The page itself needs no token; the API does.
        let page = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("/ui/app.js"));
        let api = http.get(format!("{base}/v1/jobs")).send().await.unwrap();
        assert_eq!(api.status(), 401);

        let (_driver, client) = browser().await;
        client.goto(&format!("{base}/#/jobs")).await.unwrap();
        let input = client
            .wait()
            .for_element(Locator::Css("#token"))
            .await
            .unwrap();
        screenshot(&client, "login").await;
        input.send_keys(&secret).await.unwrap();
        client
            .find(Locator::Css("#login button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&client, "h1", |t| t == "Jobs").await;
        wait_text(&client, "#live", |t| t.contains("live")).await;

        // A reader is offered no action: a job of its tenant's, made with
        // a user's token, shows none.
        let noop = support::As::new(&http, &base, &database, "alpha", "user");
        let module = noop.upload(guests::NOOP).await;
        let (status, created) = noop
            .post(
                "/v1/jobs",
                json!({"name": "theirs", "task": {"module": module}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_i64().unwrap();
        client.goto(&format!("{base}/#/jobs/{id}")).await.unwrap();
        wait_text(&client, "h1", |t| t.starts_with(&format!("Job {id} "))).await;
        assert_eq!(
            count(&client, "#job-actions").await,
            0,
            "a reader sees no actions"
        );
        assert_eq!(
            count(&client, "#main button").await,
            0,
            "a reader sees no buttons"
        );
        client.close().await.unwrap();
    });
}

/// The API requests (not the event stream) the page made since the last
/// call, read from its own performance entries, and clears them.
async fn requests_since(client: &Client) -> Vec<String> {
    let names: Value = client
        .execute(
            "const names = performance.getEntriesByType('resource')
                .filter((e) => e.name.includes('/v1/') && !e.name.includes('/v1/events'))
                .map((e) => e.name);
             performance.clearResourceTimings();
             performance.setResourceTimingBufferSize(100000);
             return names;",
            vec![],
        )
        .await
        .unwrap();
    names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Leaves the open `page` for `span` while the big job runs; its requests
/// per second, printed. About one a second, whatever the event rate.
async fn calm_for(client: &Client, page: &str, span: Duration) -> f64 {
    requests_since(client).await;
    tokio::time::sleep(span).await;
    let made = requests_since(client).await;
    let rate = made.len() as f64 / span.as_secs_f64();
    eprintln!(
        "ui calm: {page} open {span:?} on a running 300,000-task job: {} requests ({rate:.2}/s) besides one event stream",
        made.len()
    );
    // One a second, give or take the one redraw (up to 4 requests) that
    // the window's edge can cut.
    assert!(
        made.len() as f64 <= span.as_secs_f64() + 4.0,
        "{page}: {} requests in {span:?}: {made:?}",
        made.len()
    );
    rate
}

/// Pages left open on a busy server stay calm: a running 300,000-task
/// job's page, the job list and the workers page each make about a
/// request a second (one event stream besides), still show the live
/// counts, and text typed into a filter is not lost to a redraw.
#[test]
fn pages_left_open_on_a_busy_job_stay_calm_and_live() {
    run_test(Duration::from_secs(300), async {
        let dev = dev(&[]);
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &dev.base).await;
        let noop = support::upload_module(&http, &dev.base, guests::NOOP).await;
        let id = support::submit_json(
            &http,
            &dev.base,
            &json!({"name": "busy", "cache": false, "sweep": {"module": noop, "count": 300000}}),
        )
        .await;
        let (_driver, client) = browser().await;
        let span = Duration::from_secs(20);

        let open = async |page: &str| {
            client.goto(&format!("{}/{page}", dev.base)).await.unwrap();
            wait_text(&client, "#live", |t| t.contains("live")).await;
        };
        let page = format!("#/jobs/{id}");
        open(&page).await;
        // Live: the count of succeeded tasks moves without a reload.
        let first = wait_text(&client, "[data-count=succeeded] .n", |_| true).await;
        let moved = wait_text(&client, "[data-count=succeeded] .n", |t| t != first).await;
        assert_ne!(first, moved);
        calm_for(&client, &page, span).await;
        screenshot(&client, "busy-job").await;

        open("#/jobs").await;
        calm_for(&client, "#/jobs", span / 2).await;
        // Typing into the name filter while rows change is kept.
        let name = client.find(Locator::Css("#f-name")).await.unwrap();
        name.send_keys("bus").await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let value = client
            .execute("return document.querySelector('#f-name').value;", vec![])
            .await
            .unwrap();
        assert_eq!(value, "bus", "typed text lost to a redraw");

        open("#/workers").await;
        calm_for(&client, "#/workers", span / 2).await;
        let job = support::job(&http, &dev.base, id).await;
        eprintln!("ui calm: the job by then: {}", job["tasks"]);
        client.close().await.unwrap();
    });
}

/// Clicks `#id`, then its confirmation `#id-yes`.
async fn click_and_confirm(client: &Client, id: &str) {
    click(client, &format!("#{id}")).await;
    click(client, &format!("#{id}-yes")).await;
}

/// Clicks `css` once it is there; again if a live redraw replaced the
/// element between finding and clicking it.
async fn click(client: &Client, css: &str) {
    for _ in 0..20 {
        let found = client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match found.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css}: replaced under every click");
}

/// Polls `GET base path` until `check` holds (30 s at most); the answer.
async fn until_api(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    check: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if check(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {status} {body}, not as expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The UI acts: cancel, retry, resubmit with another timeout and delete a
/// job; restart a task; pause, resume and delete a schedule; delete a
/// subscription. Each is clicked and confirmed in the page, and the API
/// then shows the change.
#[test]
fn the_ui_cancels_retries_resubmits_restarts_and_deletes() {
    run_test(Duration::from_secs(300), async {
        let nats = support::Nats::start();
        let dev = dev(&["--nats", &nats.url()]);
        let base = dev.base.clone();
        let http = sandmill_server::tls::default_client();
        support::wait_ready(&http, &base).await;
        let looping = support::upload_module(&http, &base, guests::HOSTILE_LOOP).await;
        let noop = support::upload_module(&http, &base, guests::NOOP).await;
        let (_driver, client) = browser().await;

        // Cancel a running job of endless tasks.
        let endless = support::submit_json(
            &http,
            &base,
            &json!({"name": "endless", "cache": false, "max_attempts": 1,
                "limits": {"timeout": "30s"}, "sweep": {"module": looping, "count": 4}}),
        )
        .await;
        client
            .goto(&format!("{base}/#/jobs/{endless}"))
            .await
            .unwrap();
        wait_text(&client, "#job-status", |t| t == "running").await;
        click_and_confirm(&client, "cancel").await;
        until_api(&http, &base, &format!("/v1/jobs/{endless}"), |_, j| {
            j["status"] == "cancelled"
        })
        .await;
        wait_text(&client, "#job-status", |t| t == "cancelled").await;
        screenshot(&client, "job-actions").await;

        // Resubmit as a new job with a 1 s timeout.
        click(&client, "#resubmit").await;
        client
            .find(Locator::Css("#resubmit-timeout"))
            .await
            .unwrap()
            .send_keys("1s")
            .await
            .unwrap();
        click(&client, "#resubmit-go").await;
        let jobs = until_api(
            &http,
            &base,
            "/v1/jobs?sort=id&order=desc&limit=1",
            |_, p| p["items"][0]["resubmit_of"] == endless,
        )
        .await;
        let again = jobs["items"][0].clone();
        assert_eq!(again["limits"]["timeout"], "1s", "{again}");
        let again_id = again["id"].as_i64().unwrap();
        wait_text(&client, "h1", |t| {
            t.starts_with(&format!("Job {again_id} "))
        })
        .await;
        until_api(&http, &base, &format!("/v1/jobs/{again_id}"), |_, j| {
            j["status"] == "failed"
        })
        .await;

        // Retry runs its failed tasks again, as new tasks of the same job.
        wait_text(&client, "#job-status", |t| t == "failed").await;
        click_and_confirm(&client, "retry").await;
        until_api(
            &http,
            &base,
            &format!("/v1/jobs/{again_id}/tasks?limit=100"),
            |_, p| {
                p["items"].as_array().is_some_and(|tasks| {
                    tasks.iter().filter(|t| t["restart_of"].is_i64()).count() == 4
                })
            },
        )
        .await;
        until_api(&http, &base, &format!("/v1/jobs/{again_id}"), |_, j| {
            j["status"] == "failed"
        })
        .await;

        // Delete the first job.
        client
            .goto(&format!("{base}/#/jobs/{endless}"))
            .await
            .unwrap();
        click_and_confirm(&client, "delete").await;
        until_api(&http, &base, &format!("/v1/jobs/{endless}"), |s, _| {
            s == 404
        })
        .await;
        wait_text(&client, "h1", |t| t == "Jobs").await;

        // Restart a task: a new run that names the old.
        let one = support::submit_json(
            &http,
            &base,
            &json!({"name": "one", "task": {"module": noop}}),
        )
        .await;
        let tasks = until_api(&http, &base, &format!("/v1/jobs/{one}/tasks"), |_, p| {
            p["items"][0]["state"] == "succeeded"
        })
        .await;
        let task = tasks["items"][0]["id"].as_i64().unwrap();
        client
            .goto(&format!("{base}/#/tasks/{task}"))
            .await
            .unwrap();
        click_and_confirm(&client, "restart").await;
        wait_text(&client, "h1", |t| {
            t.starts_with("Task ") && !t.starts_with(&format!("Task {task} "))
        })
        .await;
        let heading = wait_text(&client, "h1", |_| true).await;
        let run: i64 = heading.split_whitespace().nth(1).unwrap().parse().unwrap();
        let detail = until_api(&http, &base, &format!("/v1/tasks/{run}"), |s, _| s == 200).await;
        assert_eq!(detail["task"]["restart_of"], task, "{detail}");

        // A schedule: pause, resume, delete.
        let created = http
            .post(format!("{base}/v1/schedules"))
            .json(&json!({"name": "hourly", "every": "1h", "task": {"module": noop}}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        client.goto(&format!("{base}/#/schedules")).await.unwrap();
        click_and_confirm(&client, "pause-hourly").await;
        until_api(&http, &base, "/v1/schedules/hourly", |_, s| {
            s["paused"] == true
        })
        .await;
        click_and_confirm(&client, "resume-hourly").await;
        until_api(&http, &base, "/v1/schedules/hourly", |_, s| {
            s["paused"] == false
        })
        .await;
        click_and_confirm(&client, "delete-hourly").await;
        until_api(&http, &base, "/v1/schedules/hourly", |s, _| s == 404).await;

        // A subscription: delete.
        let created = http
            .post(format!("{base}/v1/subscriptions"))
            .json(&json!({"name": "echo", "subject": "ui.echo", "module": noop, "queue": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        client
            .goto(&format!("{base}/#/subscriptions"))
            .await
            .unwrap();
        screenshot(&client, "subscriptions-actions").await;
        click_and_confirm(&client, "delete-echo").await;
        until_api(&http, &base, "/v1/subscriptions/echo", |s, _| s == 404).await;
        client.close().await.unwrap();
    });
}
