//! The storage suite, run once per backend: SQLite in a temporary folder
//! and a real Postgres started for the test.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use sandmill_runtime::Reason;
use sandmill_runtime::message::{OutputRef, TaskEvent, TaskMessage, TaskResult, Verdict};
use sandmill_runtime::sandbox::CallKind;
use sandmill_server::jobfile::JobFile;
use sandmill_server::model::{JobKind, JobStatus, TaskState};
use sandmill_server::store::{
    CancelRefused, Fired, Item, JobFilter, JobSort, NewJob, NewSchedule, NewSpec, SortValue, Store,
    Stored,
};

fn job(total: i64, items: Vec<Item>, max_attempts: i64) -> NewJob {
    NewJob {
        tenant: "default".into(),
        name: "suite".into(),
        kind: JobKind::Sweep,
        priority: 0,
        task_kind: CallKind::Task,
        module_hash: "ab".repeat(32),
        limits: sandmill_runtime::Limits::default(),
        grants: Default::default(),
        labels: Default::default(),
        definition: "{}".into(),
        task_params: "{\"shared\":true}".into(),
        task_input: None,
        task_input_name: "-".into(),
        total,
        items,
        max_attempts,
        queue_timeout_ms: 3_600_000,
        mapreduce: None,
        cache: false,
        resubmit_of: None,
        max_running: None,
    }
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            params: format!("{{\"i\":{i}}}"),
            input_hash: None,
            input_name: format!("in-{i}"),
            inputs: Vec::new(),
            seed: None,
        })
        .collect()
}

fn result(task_id: i64, attempt: i64, verdict: Verdict, retryable: bool) -> TaskEvent {
    TaskEvent::Finished(TaskResult {
        job_id: 0,
        task_id,
        attempt,
        worker: "w1".into(),
        verdict,
        reason: (verdict == Verdict::Failed).then_some(Reason::Timeout),
        error: (verdict == Verdict::Failed).then(|| "timed out".to_owned()),
        retryable,
        output: (verdict == Verdict::Succeeded).then(|| OutputRef::Inline(b"out".to_vec())),
        log: b"log line\n".to_vec(),
        log_blob: None,
        log_truncated: false,
        counters: BTreeMap::from([("n".to_owned(), 1)]),
        started_ms: None,
        elapsed_ms: 3,
        fuel_used: None,
        ticket: String::new(),
        kind: None,
        waited_ms: None,
        memory_peak: None,
    })
}

fn start(task_id: i64, delivery: u32) -> TaskEvent {
    TaskEvent::Started {
        job_id: 0,
        task_id,
        attempt: 0,
        worker: "w1".into(),
        delivery,
        ticket: String::new(),
    }
}

/// Every page of live messages.
async fn all_live(store: &Store) -> Vec<TaskMessage> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.live_messages_page(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { return all };
        after = last.task_id;
        all.extend(page);
    }
}

async fn catalogue(store: &Store) {
    // Modules: content-addressed and idempotent.
    let hash = "ab".repeat(32);
    assert!(
        store
            .put_module(&hash, 10, &[CallKind::Task])
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_module(&hash, 10, &[CallKind::Task])
            .await
            .unwrap()
    );
    assert!(
        store
            .module(&hash)
            .await
            .unwrap()
            .unwrap()
            .exports
            .has(CallKind::Task)
    );
    assert!(store.module(&"cd".repeat(32)).await.unwrap().is_none());

    // Specs: versions are immutable.
    let spec = NewSpec {
        tenant: "default".into(),
        name: "thumb".into(),
        version: "1".into(),
        module_hash: hash.clone(),
        kind: CallKind::Task,
        limits: Default::default(),
        grants: Default::default(),
        labels: Default::default(),
    };
    assert!(store.put_spec(&spec).await.unwrap());
    assert!(
        store.put_spec(&spec).await.unwrap(),
        "the same again is fine"
    );
    let changed = NewSpec {
        kind: CallKind::Map,
        ..spec.clone()
    };
    assert!(
        !store.put_spec(&changed).await.unwrap(),
        "a changed version is refused"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    let v2 = NewSpec {
        version: "2".into(),
        ..spec.clone()
    };
    assert!(store.put_spec(&v2).await.unwrap());
    assert_eq!(
        store
            .spec("default", "thumb", None)
            .await
            .unwrap()
            .unwrap()
            .version,
        "2"
    );
    assert_eq!(
        store
            .spec("default", "thumb", Some("1"))
            .await
            .unwrap()
            .unwrap()
            .kind
            .0,
        CallKind::Task
    );
    // Names are per tenant: another tenant's "thumb" 1 is its own, and
    // neither sees the other's.
    let theirs = NewSpec {
        tenant: "other".into(),
        kind: CallKind::Map,
        ..spec.clone()
    };
    assert!(store.put_spec(&theirs).await.unwrap());
    assert!(
        store
            .spec("other", "thumb", Some("2"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .spec("other", "thumb", None)
            .await
            .unwrap()
            .unwrap()
            .kind
            .0,
        CallKind::Map
    );
    assert_eq!(
        store
            .specs(Some("other"), None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // Paged: one at a time, newest first.
    let first = store.specs(Some("default"), None, None, 1).await.unwrap();
    assert_eq!(first[0].version, "2");
    let cursor = (
        first[0].name.clone(),
        first[0].tenant.clone(),
        first[0].created_at,
        first[0].version.clone(),
    );
    let second = store
        .specs(Some("default"), None, Some(cursor), 1)
        .await
        .unwrap();
    assert_eq!(second[0].version, "1");
    assert_eq!(store.specs(None, None, None, 10).await.unwrap().len(), 3);
}

/// Schedules: one per name; a firing is taken once (compare-and-set on
/// its time); the jobs it submitted add up.
async fn schedules(store: &Store) {
    let new = NewSchedule {
        tenant: "default".into(),
        name: "tick".into(),
        job: JobFile {
            name: "tick".into(),
            ..JobFile::default()
        },
        cron: None,
        every_ms: Some(1_000),
        overlap: "skip",
        next_at: 5_000,
    };
    assert!(store.put_schedule(&new).await.unwrap());
    assert!(!store.put_schedule(&new).await.unwrap(), "one per name");
    assert!(store.due_schedules(4_999, 10).await.unwrap().is_empty());
    assert_eq!(store.due_schedules(5_000, 10).await.unwrap().len(), 1);
    assert_eq!(store.next_firing().await.unwrap(), Some(5_000));
    assert!(
        store
            .take_firing("tick", (5_000, 0), 6_000, Fired::Submits)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_firing("tick", (5_000, 0), 6_000, Fired::Submits)
            .await
            .unwrap(),
        "a firing is taken once"
    );
    assert!(
        store
            .take_firing("tick", (6_000, 0), 7_000, Fired::Skipped)
            .await
            .unwrap()
    );
    let (job_id, _) = store.create_job(&job(3, items(3), 1), 3).await.unwrap();
    store.schedule_fired("tick", job_id).await.unwrap();
    let row = store.schedule("tick").await.unwrap().unwrap();
    assert_eq!(
        (row.fired, row.skipped, row.next_at, row.last_job_id),
        (1, 1, 7_000, Some(job_id))
    );
    let totals = store.schedule_totals("tick").await.unwrap();
    assert_eq!(
        (totals.jobs, totals.running, totals.tasks, totals.succeeded),
        (1, 1, 3, 0)
    );
    assert_eq!(store.schedule_jobs("tick", 10).await.unwrap()[0].id, job_id);
    let paused = store
        .pause_schedule("tick", true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paused.paused, 1);
    assert!(store.due_schedules(i64::MAX, 10).await.unwrap().is_empty());
    assert!(
        !store
            .take_firing("tick", (7_000, 0), 8_000, Fired::Submits)
            .await
            .unwrap()
    );
    assert_eq!(store.schedules(None, None, 10).await.unwrap().len(), 1);
    assert!(store.delete_schedule("tick").await.unwrap());
    assert!(!store.delete_schedule("tick").await.unwrap());
    assert!(store.schedule("tick").await.unwrap().is_none());
    let _ = store.cancel_job(job_id).await.unwrap();
}

async fn suite(store: Store) {
    // A setting is made once; later makers get the first value.
    let first = store.setting_or("test-key", || "one".into()).await.unwrap();
    let again = store.setting_or("test-key", || "two".into()).await.unwrap();
    assert_eq!((first.as_str(), again.as_str()), ("one", "one"));
    catalogue(&store).await;

    // A sweep over items larger than one insert statement: nothing is a
    // task until dispatched, a window at a time.
    let (job_id, messages) = store
        .create_job(&job(2_500, items(2_500), 2), 0)
        .await
        .unwrap();
    assert!(messages.messages.is_empty());
    let row = store.job(job_id).await.unwrap().unwrap();
    let counts = store.counts(&row).await.unwrap();
    assert_eq!((counts.pending, counts.queued), (2_500, 0));
    let backlog = store.backlog(10).await.unwrap();
    assert_eq!((backlog[0].job_id, backlog[0].remaining), (job_id, 2_500));
    let mut messages = store.dispatch(job_id, 1_000).await.unwrap().messages;
    messages.extend(store.dispatch(job_id, 2_000).await.unwrap().messages);
    assert_eq!(messages.len(), 2_500);
    assert!(
        store
            .dispatch(job_id, 10)
            .await
            .unwrap()
            .messages
            .is_empty(),
        "nothing left"
    );
    assert!(store.backlog(10).await.unwrap().is_empty());
    assert_eq!(messages[2_499].params, "{\"i\":2499}");
    assert_eq!(messages[2_499].input_name, "in-2499");
    let row = store.job(job_id).await.unwrap().unwrap();
    let counts = store.counts(&row).await.unwrap();
    assert_eq!((counts.pending, counts.queued), (0, 2_500));
    assert_eq!(store.live_count().await.unwrap(), 2_500);
    // Tasks page by seq, and by state.
    let page = store.tasks(job_id, None, Some(999), 10).await.unwrap();
    assert_eq!(page[0].seq, 1_000);
    assert_eq!(page[0].id, messages[1_000].task_id);
    assert_eq!(page[0].params, "{\"i\":1000}");

    // Recording: started, succeeded; a duplicate and a stale result change nothing.
    let first = messages[0].task_id;
    let events = vec![
        start(first, 1),
        result(first, 0, Verdict::Succeeded, false),
        result(first, 0, Verdict::Succeeded, false),
        result(messages[1].task_id, 5, Verdict::Succeeded, false),
    ];
    let recorded = store.record(&events).await.unwrap();
    assert_eq!(
        (recorded.finished_tasks.clone(), recorded.ignored),
        (vec![first], 2)
    );
    let task = store.task(first).await.unwrap().unwrap();
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(
        store.task_output(first).await.unwrap(),
        Some(Stored::Inline(b"out".to_vec()))
    );
    let attempts = store.attempts(first).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].log_size, 9);
    assert_eq!(
        store.attempt_log(first, 0).await.unwrap(),
        Stored::Inline(b"log line\n".to_vec())
    );
    let succeeded = store
        .tasks(job_id, Some(TaskState::Succeeded), None, 10)
        .await
        .unwrap();
    assert_eq!(
        succeeded.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![first]
    );

    // Two different results of one attempt in one batch: the first is
    // recorded, in the task row and the attempt row alike.
    let fourth = messages[3].task_id;
    let mut other = result(fourth, 0, Verdict::Succeeded, false);
    if let TaskEvent::Finished(r) = &mut other {
        r.output = Some(OutputRef::Inline(b"second".to_vec()));
        r.worker = "w2".into();
    }
    store
        .record(&[result(fourth, 0, Verdict::Succeeded, false), other])
        .await
        .unwrap();
    assert_eq!(
        store.task_output(fourth).await.unwrap(),
        Some(Stored::Inline(b"out".to_vec()))
    );
    assert_eq!(store.attempts(fourth).await.unwrap()[0].worker, "w1");

    // A retryable failure is queued again as the next attempt, once.
    let second = messages[1].task_id;
    let recorded = store
        .record(&[result(second, 0, Verdict::Failed, true)])
        .await
        .unwrap();
    assert_eq!(recorded.retried, vec![second]);
    let again = store.queued_messages(&[second]).await.unwrap();
    assert_eq!((again.len(), again[0].attempt), (1, 1));
    let recorded = store
        .record(&[result(second, 1, Verdict::Failed, true)])
        .await
        .unwrap();
    assert!(recorded.retried.is_empty(), "max_attempts = 2");
    let task = store.task(second).await.unwrap().unwrap();
    assert_eq!(
        (task.state(), task.reason.map(|r| r.0)),
        (TaskState::Failed, Some(Reason::Timeout))
    );

    // Recovery after a crash: queued and running tasks are published again
    // at their attempt (a fleet's worker may still be running one); its
    // result counts once.
    let third = messages[2].task_id;
    store.record(&[start(third, 1)]).await.unwrap();
    let recovered = all_live(&store).await;
    assert_eq!(recovered.len(), 2_497);
    let third_msg = recovered.iter().find(|m| m.task_id == third).unwrap();
    assert_eq!(third_msg.attempt, 0);
    let late = store
        .record(&[
            result(third, 0, Verdict::Succeeded, false),
            result(third, 0, Verdict::Succeeded, false),
        ])
        .await
        .unwrap();
    assert_eq!((late.finished_tasks.len(), late.ignored), (1, 1));
    let recovered: Vec<_> = recovered
        .into_iter()
        .filter(|m| m.task_id != third)
        .collect();

    // A task its workers vanished under: `worker-lost` after one start,
    // `crash-loop` after two.
    let (lost, crashed) = (recovered[0].task_id, recovered[1].task_id);
    store
        .record(&[start(lost, 1), start(crashed, 1), start(crashed, 2)])
        .await
        .unwrap();
    let gone = |task_id| {
        let mut r = result(task_id, 0, Verdict::Failed, false);
        if let TaskEvent::Finished(r) = &mut r {
            r.reason = Some(Reason::WorkerLost);
        }
        r
    };
    store.record(&[gone(lost), gone(crashed)]).await.unwrap();
    let reason = |row: sandmill_server::store::TaskRow| row.reason.map(|r| r.0);
    assert_eq!(
        reason(store.task(lost).await.unwrap().unwrap()),
        Some(Reason::WorkerLost)
    );
    assert_eq!(
        reason(store.task(crashed).await.unwrap().unwrap()),
        Some(Reason::CrashLoop)
    );
    let recovered: Vec<_> = recovered[2..].to_vec();

    // Finishing every task finishes the job; one failure fails it; the
    // counts come from the job's counters.
    let rest: Vec<TaskEvent> = recovered
        .iter()
        .map(|m| result(m.task_id, m.attempt, Verdict::Succeeded, false))
        .collect();
    let recorded = store.record(&rest).await.unwrap();
    assert_eq!(recorded.finished_jobs, vec![job_id]);
    let finished = store.job(job_id).await.unwrap().unwrap();
    assert_eq!(finished.status(), JobStatus::Failed);
    assert!(finished.finished_at.is_some());
    let counts = store.counts(&finished).await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.failed, counts.finished()),
        (2_497, 3, 2_500)
    );
    assert_eq!(store.live_count().await.unwrap(), 0);
    let (tasks, successes, duplicated) = store.success_audit(job_id).await.unwrap();
    assert_eq!((tasks, successes, duplicated), (2_500, 2_497, 0));

    // A count sweep: accepted as one row whatever the count; a small
    // first batch dispatched in the accepting transaction.
    let (counted, now) = store
        .create_job(&job(10_000_000, Vec::new(), 1), 5)
        .await
        .unwrap();
    let now = now.messages;
    assert_eq!(now.len(), 5);
    assert_eq!(now[0].params, "{\"shared\":true}");
    let row = store.job(counted).await.unwrap().unwrap();
    assert_eq!((row.total_tasks, row.dispatched), (10_000_000, 5));
    let more = store.dispatch(counted, 3).await.unwrap().messages;
    assert_eq!(more.len(), 3);
    let seqs: Vec<i64> = store
        .tasks(counted, None, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.seq)
        .collect();
    assert_eq!(seqs, (0..8).collect::<Vec<i64>>());

    // Cancel: live tasks and the backlog; a late result is ignored; a
    // finished job no, an unknown one 404.
    assert_eq!(store.cancel_job(counted).await.unwrap(), Ok(8));
    let row = store.job(counted).await.unwrap().unwrap();
    let counts = store.counts(&row).await.unwrap();
    assert_eq!(
        (counts.cancelled, counts.pending, counts.queued),
        (10_000_000, 0, 0)
    );
    assert!(
        store
            .dispatch(counted, 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let late = store
        .record(&[result(now[0].task_id, 0, Verdict::Succeeded, false)])
        .await
        .unwrap();
    assert_eq!(late.ignored, 1);
    assert_eq!(
        store.cancel_job(job_id).await.unwrap(),
        Err(CancelRefused::Finished(JobStatus::Failed))
    );
    assert_eq!(
        store.cancel_job(987_654).await.unwrap(),
        Err(CancelRefused::NotFound)
    );

    // Queue timeout: queued tasks and the backlog fail; the job ends.
    let (expiring, _) = store
        .create_job(&job(100, Vec::new(), 1), 10)
        .await
        .unwrap();
    let expired = store.expire_queued(expiring, "no worker").await.unwrap();
    assert_eq!((expired.tasks, expired.ended), (10, true));
    let row = store.job(expiring).await.unwrap().unwrap();
    assert_eq!(row.status(), JobStatus::Failed);
    assert_eq!(store.counts(&row).await.unwrap().failed, 100);

    // Listing: filter by status, newest update first, a page at a time.
    let newest = JobFilter {
        descending: true,
        ..JobFilter::default()
    };
    let all = store.jobs(None, &newest, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let page = store.jobs(None, &newest, None, 2).await.unwrap();
    let after = (SortValue::Number(page[1].updated_at), page[1].id);
    let rest = store.jobs(None, &newest, Some(after), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(!page.iter().any(|j| j.id == rest[0].id));
    let status = |status| JobFilter {
        status: Some(status),
        ..newest.clone()
    };
    let failed = store
        .jobs(None, &status(JobStatus::Failed), None, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 2);
    assert!(
        store
            .jobs(None, &status(JobStatus::Running), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    job_list_filters_and_sorts(&store, &all).await;
    schedules(&store).await;
    tenants_take_turns(&store).await;
}

/// Name (any case, wildcards literal), label and time filters; every sort
/// column both ways, a page at a time, gives each job once in order.
async fn job_list_filters_and_sorts(store: &Store, all: &[sandmill_server::store::JobRow]) {
    let named = |name: &str| JobFilter {
        name: Some(name.to_owned()),
        ..JobFilter::default()
    };
    let first = &all[0].name;
    let upper = first.to_uppercase();
    let found = store.jobs(None, &named(&upper), None, 10).await.unwrap();
    assert!(found.iter().any(|j| j.id == all[0].id), "{upper}");
    assert!(
        store
            .jobs(None, &named("%"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .jobs(None, &named("_"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let labelled = JobFilter {
        labels: vec![("zone".into(), "nowhere".into())],
        ..JobFilter::default()
    };
    assert!(
        store
            .jobs(None, &labelled, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let created = all.iter().map(|j| j.created_at).max().unwrap();
    let later = JobFilter {
        created_from: Some(created + 1),
        ..JobFilter::default()
    };
    assert!(store.jobs(None, &later, None, 10).await.unwrap().is_empty());
    let earlier = JobFilter {
        created_to: Some(created + 1),
        ..JobFilter::default()
    };
    assert_eq!(
        store.jobs(None, &earlier, None, 10).await.unwrap().len(),
        all.len()
    );
    for sort in [
        JobSort::Updated,
        JobSort::Created,
        JobSort::Id,
        JobSort::Name,
        JobSort::Status,
        JobSort::Tasks,
        JobSort::Priority,
    ] {
        for descending in [false, true] {
            let filter = JobFilter {
                sort,
                descending,
                ..JobFilter::default()
            };
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store.jobs(None, &filter, after.clone(), 1).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some((sort.value_of(last), last.id));
                seen.push(last.clone());
            }
            let ids: Vec<i64> = seen.iter().map(|j| j.id).collect();
            let mut expected: Vec<&sandmill_server::store::JobRow> = all.iter().collect();
            expected.sort_by(|a, b| {
                let key = |j: &sandmill_server::store::JobRow| (sort.value_of(j), j.id);
                let (a, b) = (key(a), key(b));
                let order = match (&a.0, &b.0) {
                    (SortValue::Number(x), SortValue::Number(y)) => x.cmp(y),
                    (SortValue::Text(x), SortValue::Text(y)) => x.cmp(y),
                    _ => unreachable!(),
                }
                .then(a.1.cmp(&b.1));
                if descending { order.reverse() } else { order }
            });
            let expected: Vec<i64> = expected.iter().map(|j| j.id).collect();
            assert_eq!(ids, expected, "{sort:?} descending {descending}");
        }
    }
}

/// The backlog gives each tenant's jobs in turn: one tenant's many jobs
/// do not keep another's out of a dispatch round. Lists keep to a tenant.
async fn tenants_take_turns(store: &Store) {
    let mut alphas = Vec::new();
    for _ in 0..12 {
        let new = NewJob {
            tenant: "alpha".into(),
            ..job(5, items(5), 1)
        };
        alphas.push(store.create_job(&new, 0).await.unwrap().0);
    }
    let new = NewJob {
        tenant: "beta".into(),
        ..job(5, items(5), 1)
    };
    let beta = store.create_job(&new, 0).await.unwrap().0;
    let round = store.backlog(4).await.unwrap();
    let ids: Vec<i64> = round.iter().map(|b| b.job_id).collect();
    assert_eq!(ids, vec![alphas[0], beta, alphas[1], alphas[2]]);
    assert_eq!(round[1].tenant, "beta");
    let listed = store
        .jobs(Some("beta"), &JobFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![beta]);
    assert_eq!(
        store
            .jobs(Some("alpha"), &JobFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        12
    );
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
