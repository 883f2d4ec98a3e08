//! The storage suite, run once per backend: SQLite in a temporary folder
//! and a real Postgres started for the test.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use sandmill_runtime::message::{OutputRef, TaskEvent, TaskResult, Verdict};
use sandmill_runtime::sandbox::CallKind;
use sandmill_server::store::{CancelRefused, NewJob, NewTask, SpecRow, Store};

fn job(n: usize, max_attempts: i64) -> NewJob {
    NewJob {
        name: "suite".into(),
        kind: "sweep".into(),
        task_kind: CallKind::Task,
        module_hash: "ab".repeat(32),
        limits: serde_json::to_string(&sandmill_runtime::Limits::default()).unwrap(),
        grants: "{}".into(),
        definition: "{}".into(),
        max_attempts,
        labels: Default::default(),
        queue_timeout_ms: 3_600_000,
        tasks: (0..n)
            .map(|i| NewTask {
                params: format!("{{\"i\":{i}}}"),
                input_hash: None,
                input_name: "-".into(),
            })
            .collect(),
    }
}

fn result(task_id: i64, attempt: i64, verdict: Verdict, retryable: bool) -> TaskEvent {
    TaskEvent::Finished(TaskResult {
        job_id: 0,
        task_id,
        attempt,
        worker: "w1".into(),
        verdict,
        reason: (verdict == Verdict::Failed).then(|| "timeout".to_owned()),
        error: (verdict == Verdict::Failed).then(|| "timed out".to_owned()),
        retryable,
        output: (verdict == Verdict::Succeeded).then(|| OutputRef::Inline(b"out".to_vec())),
        log: b"log line\n".to_vec(),
        log_truncated: false,
        counters: BTreeMap::from([("n".to_owned(), 1)]),
        elapsed_ms: 3,
        fuel_used: None,
    })
}

async fn suite(store: Store) {
    // Modules: content-addressed and idempotent.
    let hash = "ab".repeat(32);
    assert!(store.put_module(&hash, 10, &["task"]).await.unwrap());
    assert!(!store.put_module(&hash, 10, &["task"]).await.unwrap());
    assert_eq!(store.module(&hash).await.unwrap().unwrap().exports, "task");
    assert!(store.module(&"cd".repeat(32)).await.unwrap().is_none());

    // Specs: versions are immutable.
    let spec = SpecRow {
        name: "thumb".into(),
        version: "1".into(),
        module_hash: hash.clone(),
        kind: "task".into(),
        limits: "{}".into(),
        grants: "{}".into(),
        labels: "{}".into(),
        created_at: 1,
    };
    assert!(store.put_spec(&spec).await.unwrap());
    assert!(
        store.put_spec(&spec).await.unwrap(),
        "the same again is fine"
    );
    let changed = SpecRow {
        kind: "map".into(),
        ..spec.clone()
    };
    assert!(
        !store.put_spec(&changed).await.unwrap(),
        "a changed version is refused"
    );
    let v2 = SpecRow {
        version: "2".into(),
        created_at: 2,
        ..spec.clone()
    };
    assert!(store.put_spec(&v2).await.unwrap());
    assert_eq!(
        store.spec("thumb", None).await.unwrap().unwrap().version,
        "2"
    );
    assert_eq!(
        store.spec("thumb", Some("1")).await.unwrap().unwrap().kind,
        "task"
    );
    assert_eq!(store.specs().await.unwrap().len(), 2);

    // A job with more tasks than one insert statement holds.
    let (job_id, messages) = store.create_job(&job(2_500, 2)).await.unwrap();
    assert_eq!(messages.len(), 2_500);
    assert_eq!(messages[2_499].params, "{\"i\":2499}");
    let counts = store.task_counts(job_id).await.unwrap();
    assert_eq!(counts.get("queued"), Some(&2_500));
    let tasks = store.tasks(job_id, 10, 1_000).await.unwrap();
    assert_eq!(tasks[0].seq, 1_000);
    assert_eq!(tasks[0].id, messages[1_000].task_id);

    // Recording: started, succeeded; a duplicate and a stale result change nothing.
    let first = messages[0].task_id;
    let events = vec![
        TaskEvent::Started {
            job_id: 0,
            task_id: first,
            attempt: 0,
            worker: "w1".into(),
            delivery: 1,
        },
        result(first, 0, Verdict::Succeeded, false),
        result(first, 0, Verdict::Succeeded, false),
        result(messages[1].task_id, 5, Verdict::Succeeded, false),
    ];
    let recorded = store.record(&events).await.unwrap();
    assert_eq!((recorded.accepted, recorded.ignored), (1, 2));
    let task = store.task(first).await.unwrap().unwrap();
    assert_eq!(task.state, "succeeded");
    assert_eq!(
        store.task_output(first).await.unwrap(),
        Some((Some(b"out".to_vec()), None))
    );
    let attempts = store.attempts(first).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].log, b"log line\n");

    // A retryable failure is queued again as the next attempt, once.
    let second = messages[1].task_id;
    let recorded = store
        .record(&[result(second, 0, Verdict::Failed, true)])
        .await
        .unwrap();
    assert_eq!(recorded.retried, vec![second]);
    let again = store.messages_for(&[second]).await.unwrap();
    assert_eq!((again.len(), again[0].attempt), (1, 1));
    let recorded = store
        .record(&[result(second, 1, Verdict::Failed, true)])
        .await
        .unwrap();
    assert!(recorded.retried.is_empty(), "max_attempts = 2");
    let task = store.task(second).await.unwrap().unwrap();
    assert_eq!(
        (task.state.as_str(), task.reason.as_deref()),
        ("failed", Some("timeout"))
    );

    // Recovery after a crash: queued and running tasks are published again
    // at their attempt (a fleet's worker may still be running one); its
    // result counts once.
    let third = messages[2].task_id;
    store
        .record(&[TaskEvent::Started {
            job_id: 0,
            task_id: third,
            attempt: 0,
            worker: "w1".into(),
            delivery: 1,
        }])
        .await
        .unwrap();
    let recovered = store.recover().await.unwrap();
    assert_eq!(recovered.len(), 2_498);
    let third_msg = recovered.iter().find(|m| m.task_id == third).unwrap();
    assert_eq!(third_msg.attempt, 0);
    let late = store
        .record(&[
            result(third, 0, Verdict::Succeeded, false),
            result(third, 0, Verdict::Succeeded, false),
        ])
        .await
        .unwrap();
    assert_eq!((late.accepted, late.ignored), (1, 1));
    let recovered: Vec<_> = recovered
        .into_iter()
        .filter(|m| m.task_id != third)
        .collect();

    // A task its workers vanished under: `worker-lost` after one start,
    // `crash-loop` after two.
    let (lost, crashed) = (recovered[0].task_id, recovered[1].task_id);
    let start = |task_id, delivery| TaskEvent::Started {
        job_id: 0,
        task_id,
        attempt: 0,
        worker: "w1".into(),
        delivery,
    };
    store
        .record(&[start(lost, 1), start(crashed, 1), start(crashed, 2)])
        .await
        .unwrap();
    let gone = |task_id| {
        let mut r = result(task_id, 0, Verdict::Failed, false);
        if let TaskEvent::Finished(r) = &mut r {
            r.reason = Some("worker-lost".into());
        }
        r
    };
    store.record(&[gone(lost), gone(crashed)]).await.unwrap();
    let reason = |row: sandmill_server::store::TaskRow| row.reason.unwrap_or_default();
    assert_eq!(
        reason(store.task(lost).await.unwrap().unwrap()),
        "worker-lost"
    );
    assert_eq!(
        reason(store.task(crashed).await.unwrap().unwrap()),
        "crash-loop"
    );
    let recovered: Vec<_> = recovered[2..].to_vec();

    // Finishing every task finishes the job; one failure fails it.
    let rest: Vec<TaskEvent> = recovered
        .iter()
        .map(|m| result(m.task_id, m.attempt, Verdict::Succeeded, false))
        .collect();
    let recorded = store.record(&rest).await.unwrap();
    assert_eq!(recorded.finished_jobs, vec![job_id]);
    let finished = store.job(job_id).await.unwrap().unwrap();
    assert_eq!(finished.status, "failed");
    assert!(finished.finished_at.is_some());

    // Cancel: a running job yes, a finished one no, an unknown one 404.
    let (running, msgs) = store.create_job(&job(3, 1)).await.unwrap();
    assert_eq!(store.cancel_job(running).await.unwrap(), Ok(()));
    assert_eq!(
        store.task_counts(running).await.unwrap().get("cancelled"),
        Some(&3)
    );
    let late = store
        .record(&[result(msgs[0].task_id, 0, Verdict::Succeeded, false)])
        .await
        .unwrap();
    assert_eq!(late.ignored, 1);
    assert_eq!(
        store.cancel_job(job_id).await.unwrap(),
        Err(CancelRefused::Finished("failed".into()))
    );
    assert_eq!(
        store.cancel_job(987_654).await.unwrap(),
        Err(CancelRefused::NotFound)
    );

    // Listing: filter by status, newest update first.
    let all = store.jobs(None, 10, 0).await.unwrap();
    assert_eq!(all.len(), 2);
    let failed = store.jobs(Some("failed"), 10, 0).await.unwrap();
    assert_eq!(
        failed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job_id]
    );
    assert!(store.jobs(Some("running"), 10, 0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("s.db").display().to_string();
    let store = tokio::time::timeout(Duration::from_secs(30), Store::connect(&url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.backend(), "sqlite");
    tokio::time::timeout(Duration::from_secs(120), suite(store))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_suite_on_postgres() {
    let pg = support::Postgres::start();
    let url = pg.database();
    let store = tokio::time::timeout(Duration::from_secs(30), Store::connect(&url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.backend(), "postgres");
    tokio::time::timeout(Duration::from_secs(120), suite(store))
        .await
        .unwrap();
}
