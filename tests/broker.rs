//! Delivery semantics through the `Broker` trait, against both
//! implementations: the in-process one and JetStream on a real
//! `nats-server -js`. Same suite, same assertions.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use sandmill_runtime::broker::{Broker, MemoryBroker, NatsBroker, NatsConfig};
use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{TaskEvent, TaskMessage, TraceContext, WorkerInfo, now_ms};
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};

fn task(id: i64, attempt: i64, labels: &str) -> TaskMessage {
    TaskMessage {
        task_id: id,
        job_id: 1,
        attempt,
        priority: 0,
        tenant: String::new(),
        kind: CallKind::Task,
        module: "m".into(),
        input: None,
        input_name: "-".into(),
        params: "{}".into(),
        params_blob: None,
        limits: Limits::default(),
        grants: Grants::default(),
        labels: Labels::parse(labels).unwrap(),
        seed: None,
        shuffle: None,
        inputs: Vec::new(),
        preprocess: None,
        output_blob: false,
        delivered: 1,
        ticket: String::new(),
        published_ms: None,
        traceparent: None,
    }
}

fn entry(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        instance: "i1".into(),
        labels: Labels::parse("zone=eu").unwrap(),
        capacity: 2,
        version: "test".into(),
        running: vec![7],
        started: 4,
        busy_ms: 1234,
        finished: 3,
        started_at: now_ms(),
        last_seen: now_ms(),
        draining: false,
    }
}

async fn fetch(broker: &dyn Broker, max: usize) -> Vec<TaskMessage> {
    tokio::time::timeout(Duration::from_secs(20), broker.fetch(max))
        .await
        .expect("a task within 20 s")
        .expect("fetch")
}

/// What both brokers promise. `publisher` publishes and records; `worker`
/// fetches (for the memory broker they are the same object).
async fn suite(publisher: Arc<dyn Broker>, worker: Arc<dyn Broker>, headers: bool) {
    let before = now_ms();
    // A re-published attempt is dropped; a new attempt is not.
    publisher
        .publish(vec![task(1, 0, ""), task(2, 0, "")])
        .await
        .unwrap();
    publisher
        .publish(vec![task(1, 0, ""), task(1, 1, "")])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(fetch(worker.as_ref(), 10).await);
    }
    let mut keys: Vec<_> = got.iter().map(TaskMessage::dedup_key).collect();
    keys.sort();
    assert_eq!(keys, vec![(1, 0), (1, 1), (2, 0)]);
    assert!(got.iter().all(|t| t.delivered == 1));
    // Each comes with when it was queued, and (on NATS) its trace context
    // in a `traceparent` header.
    for t in &got {
        let at = t
            .published_ms
            .expect("a fetched task says when it was queued");
        assert!(
            at >= before - 1000 && at <= now_ms() + 1000,
            "{at} vs {before}"
        );
        let header = TraceContext::of(t.job_id, t.task_id, t.attempt).header();
        if headers {
            assert_eq!(t.traceparent.as_deref(), Some(header.as_str()));
        }
        assert_eq!(t.trace(), TraceContext::parse(&header).unwrap());
    }

    // Released (a draining worker) comes back at once; done does not.
    for t in &got[1..] {
        worker.done(t).await.unwrap();
    }
    let first = got[0].clone();
    worker.release(first.clone()).await.unwrap();
    let again = fetch(worker.as_ref(), 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dedup_key(), first.dedup_key());
    worker.done(&again[0]).await.unwrap();

    // Higher priorities first: an interactive call does not wait behind a
    // sweep.
    let sweep: Vec<TaskMessage> = (30..40).map(|i| task(i, 0, "")).collect();
    publisher.publish(sweep).await.unwrap();
    let mut urgent = task(40, 0, "");
    urgent.priority = 9;
    publisher.publish(vec![urgent]).await.unwrap();
    let first = fetch(worker.as_ref(), 1).await;
    assert_eq!(first[0].task_id, 40, "the priority-9 task comes first");
    worker.done(&first[0]).await.unwrap();
    let mut rest = Vec::new();
    while rest.len() < 10 {
        rest.extend(fetch(worker.as_ref(), 10).await);
    }
    for t in &rest {
        worker.done(t).await.unwrap();
    }

    // Handed back after a delay (the blob store was out): delivered again.
    publisher.publish(vec![task(50, 0, "")]).await.unwrap();
    let held = fetch(worker.as_ref(), 1).await;
    worker
        .release_after(held[0].clone(), Duration::from_millis(200))
        .await
        .unwrap();
    let back = fetch(worker.as_ref(), 1).await;
    assert_eq!(back[0].task_id, 50);
    worker.done(&back[0]).await.unwrap();

    // Registry pages: by id, after a cursor.
    // (Checked below with the entries.)

    // An ended job's queued messages are dropped; others stay.
    let mut doomed = task(20, 0, "");
    doomed.job_id = 5;
    let mut kept = task(21, 0, "");
    kept.job_id = 6;
    publisher.publish(vec![doomed, kept]).await.unwrap();
    publisher.forget_job(5, &Labels::default()).await.unwrap();
    let left = fetch(worker.as_ref(), 10).await;
    assert_eq!(left.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![21]);
    worker.done(&left[0]).await.unwrap();

    // Events: reported durably, received by the control plane.
    worker
        .report(vec![TaskEvent::Started {
            job_id: 1,
            task_id: 1,
            attempt: 0,
            worker: "w/0".into(),
            delivery: 1,
            ticket: String::new(),
        }])
        .await
        .unwrap();
    // The recorder's lag: the event waits until taken and acked.
    let waiting = async |want: u64| {
        for _ in 0..100 {
            if publisher.events_waiting().await.unwrap() == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("events waiting never became {want}");
    };
    waiting(1).await;
    let events = tokio::time::timeout(Duration::from_secs(20), publisher.events(100))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        events[..],
        [TaskEvent::Started { task_id: 1, .. }]
    ));
    publisher.events_recorded().await.unwrap();
    waiting(0).await;

    // Registry: an entry per worker, gone when it leaves.
    worker.heartbeat(&entry("alpha")).await.unwrap();
    worker.heartbeat(&entry("beta")).await.unwrap();
    let mut ids: Vec<_> = publisher
        .workers(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["alpha", "beta"]);
    let page = publisher.workers(Some("alpha"), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        vec!["beta"]
    );
    assert_eq!(publisher.workers(None, 1).await.unwrap().len(), 1);
    assert_eq!(
        publisher.worker("beta").await.unwrap().map(|w| w.id),
        Some("beta".into())
    );
    assert!(publisher.worker("gamma").await.unwrap().is_none());
    entry_like(&publisher, "alpha").await;
    worker.leave("alpha").await.unwrap();
    let ids: Vec<_> = publisher
        .workers(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, vec!["beta"]);
}

async fn entry_like(broker: &Arc<dyn Broker>, id: &str) -> WorkerInfo {
    let stored = broker
        .workers(None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == id)
        .unwrap();
    let mut expected = entry(id);
    expected.started_at = stored.started_at;
    expected.last_seen = stored.last_seen;
    assert_eq!(stored, expected, "the entry comes back as written");
    stored
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_broker_semantics() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    suite(broker.clone(), broker, false).await;
}

async fn nats(config: NatsConfig, url: &str) -> Arc<dyn Broker> {
    let client = support::nats_client(url).await;
    Arc::new(NatsBroker::connect(client, config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_broker_semantics() {
    let server = support::Nats::start();
    let publisher = nats(NatsConfig::default(), &server.url()).await;
    let worker = nats(
        NatsConfig {
            offers: Some(Labels::default()),
            ..NatsConfig::default()
        },
        &server.worker_url(),
    )
    .await;
    suite(publisher, worker, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_redelivers_what_a_vanished_worker_held_and_routes_by_labels() {
    let server = support::Nats::start();
    let publisher = nats(
        NatsConfig {
            ack_wait: Duration::from_secs(1),
            max_deliveries: 2,
            ..NatsConfig::default()
        },
        &server.url(),
    )
    .await;
    let offering = |labels: &str| NatsConfig {
        offers: Some(Labels::parse(labels).unwrap()),
        ..NatsConfig::default()
    };
    // Published first: the publisher creates the queues, with its settings.
    publisher
        .publish(vec![task(10, 0, "gpu=a100"), task(11, 0, "")])
        .await
        .unwrap();

    // A plain worker takes the unlabelled task and vanishes holding it.
    let plain = nats(offering(""), &server.worker_url()).await;
    let got = fetch(plain.as_ref(), 10).await;
    assert_eq!(got.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![11]);
    drop(plain);

    // After the ack wait it is delivered again, counted; the gpu worker
    // also gets the labelled one, and knows the delivery limit.
    let gpu = nats(offering("gpu=a100,zone=eu"), &server.worker_url()).await;
    let mut all: Vec<TaskMessage> = Vec::new();
    while !(all.iter().any(|t| t.task_id == 10) && all.iter().any(|t| t.task_id == 11)) {
        all.extend(fetch(gpu.as_ref(), 10).await);
    }
    let delivered = |id| all.iter().find(|t| t.task_id == id).unwrap().delivered;
    assert_eq!((delivered(10), delivered(11)), (1, 2));
    assert_eq!(gpu.max_deliveries(), 2);
    for t in &all {
        gpu.done(t).await.unwrap();
    }

    // A worker without gpu=a100 never receives a gpu task.
    publisher
        .publish(vec![task(13, 0, "gpu=a100")])
        .await
        .unwrap();
    let other = nats(offering("zone=eu"), &server.worker_url()).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(3), other.fetch(10))
            .await
            .is_err(),
        "a worker without gpu=a100 received the gpu task"
    );
    let thirteen = fetch(gpu.as_ref(), 10).await;
    assert_eq!(thirteen[0].task_id, 13);
    gpu.done(&thirteen[0]).await.unwrap();

    // Which live tasks have no message in the stream (for the reconciler).
    let absent = publisher.absent(&[10, 11, 12]).await.unwrap().unwrap();
    assert_eq!(absent.into_iter().collect::<Vec<_>>(), vec![10, 11, 12]);
    publisher.publish(vec![task(12, 0, "")]).await.unwrap();
    let absent = publisher.absent(&[12, 14]).await.unwrap().unwrap();
    assert_eq!(absent.into_iter().collect::<Vec<_>>(), vec![14]);

    // How deep each queue is, for the dispatcher: task 12 waits in the
    // unlabelled queue; taking it counts a delivery.
    let depth = |depths: Vec<sandmill_runtime::broker::QueueDepth>| {
        depths
            .into_iter()
            .find(|d| d.token == "any" && d.priority == 0)
            .map(|d| (d.pending, d.delivered))
            .unwrap()
    };
    let (pending, delivered) = depth(publisher.queue_depths().await.unwrap().unwrap());
    assert_eq!(pending, 1);
    let twelve = fetch(gpu.as_ref(), 10).await;
    assert_eq!(twelve[0].task_id, 12);
    let after = depth(publisher.queue_depths().await.unwrap().unwrap());
    assert_eq!(after, (0, delivered + 1));
    // The in-process broker's queues take turns themselves: no depths.
    assert!(MemoryBroker::new().queue_depths().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_blobs_are_listed_and_deleted_from_both_buckets_without_a_trace() {
    use futures_util::StreamExt;
    use sandmill_runtime::blob::{BlobStore, NatsBlobStore, Writer};
    use std::time::{Duration, SystemTime};
    let server = support::Nats::start();
    let control = NatsBlobStore::connect(
        support::nats_client(&server.url()).await,
        Writer::ControlPlane,
    )
    .await
    .unwrap();
    let worker = NatsBlobStore::connect(
        support::nats_client(&server.worker_url()).await,
        Writer::Worker,
    )
    .await
    .unwrap();
    let input = control.put(b"an input").await.unwrap();
    let output = worker.put(&vec![3u8; 300 << 10]).await.unwrap();
    let listed = |store: NatsBlobStore| async move {
        let mut names: Vec<(String, u64)> = store
            .list()
            .await
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.hash, e.size)
            })
            .collect()
            .await;
        names.sort();
        names
    };
    let mut both = vec![(input.clone(), 8), (output.clone(), 300 << 10)];
    both.sort();
    assert_eq!(listed(control.clone()).await, both);

    // Stored after the cutoff: spared.
    let past = SystemTime::now() - Duration::from_secs(60);
    assert!(!control.delete(&output, past).await.unwrap());
    // Before it: gone from the worker's bucket, through the control
    // plane, and from every listing (no tombstone left).
    let soon = SystemTime::now() + Duration::from_secs(1);
    assert!(control.delete(&output, soon).await.unwrap());
    assert_eq!(control.get(&output).await.unwrap(), None);
    assert!(!worker.contains(&output).await.unwrap());
    assert_eq!(listed(control.clone()).await, vec![(input.clone(), 8)]);
    assert!(
        !control.delete(&output, soon).await.unwrap(),
        "gone already"
    );
    // Stored again: back whole.
    worker.put(&vec![3u8; 300 << 10]).await.unwrap();
    assert_eq!(
        control.get(&output).await.unwrap().map(|b| b.len()),
        Some(300 << 10)
    );
    // A worker cannot delete (it may not purge a bucket).
    assert!(worker.delete(&input, soon).await.is_err());
    assert!(control.contains(&input).await.unwrap());
}
