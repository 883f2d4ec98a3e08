//! The distributed mode with real processes: `sandmill serve` on Postgres,
//! `sandmill worker` processes, and a real `nats-server -js`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandmill_server::store::Store;
use sandmill_test_artifacts as guests;
use serde_json::{Value, json};

struct Fleet {
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sandmill(args: &[&str], cache: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sandmill"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sandmill")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_runs_on_worker_processes_and_survives_a_killed_worker() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("within 4 minutes");
}

async fn scenario() {
    let pg = support::Postgres::start();
    let database = pg.database();
    let nats = support::Nats::start();
    let cache = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let nats_url = nats.url();
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    fleet.children.push(sandmill(
        &[
            "serve",
            "--nats",
            &nats_url,
            "--database",
            &database,
            "--listen",
            &listen,
        ],
        cache.path(),
    ));
    for id in ["w1", "w2"] {
        fleet.children.push(sandmill(
            &[
                "worker",
                "--nats",
                &nats_url,
                "--id",
                id,
                "--concurrency",
                "1",
            ],
            cache.path(),
        ));
    }
    let http = reqwest::Client::new();
    support::wait_ready(&http, &base).await;

    let module: Value = http
        .post(format!("{base}/v1/modules"))
        .body(std::fs::read(guests::NOOP).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hash = module["hash"].as_str().unwrap().to_owned();
    let total = 2_000;
    let created: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"name": "fleet", "sweep": {"module": format!("sha256:{hash}"), "count": total}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("accepted");

    // Kill -9 one worker once work is under way; the other finishes, and the
    // killed one's unacked tasks come back after the ack wait.
    loop {
        let state = support::job(&http, &base, id).await;
        if state["counts"]["succeeded"].as_i64().unwrap_or(0) >= 100 {
            break;
        }
        assert_eq!(state["job"]["status"], "running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut killed = fleet.children.remove(1);
    killed.kill().unwrap();
    killed.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(180);
    let finished = loop {
        let state = support::job(&http, &base, id).await;
        if state["job"]["status"] != "running" {
            break state;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(fleet);
    let store = Store::connect(&database).await.unwrap();
    let (tasks, successes, duplicated) = store.success_audit(id).await.unwrap();
    let ok = finished["counts"]["succeeded"].as_i64().unwrap_or(0);
    println!(
        "fleet test: ok {ok}, lost {}, duplicated {duplicated}",
        tasks - ok
    );
    assert_eq!(finished["job"]["status"], "succeeded");
    assert_eq!((ok, successes, duplicated), (total, total, 0));
}
