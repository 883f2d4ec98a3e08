//! [`NatsBroker`]: tasks, events and the worker registry on NATS JetStream.
//!
//! - Tasks: stream `SANDMILL_TASKS` (work-queue retention). A task needing
//!   labels `L` at priority `P` is published on
//!   `sandmill.tasks.<token(L)>.<P>.<job>.<task>`, and each (label set,
//!   priority) has its own durable pull consumer `q-<token(L)>-<P>` (its
//!   description holds `L`), shared by every worker: a worker pulls from the
//!   consumers whose labels it offers, highest priority first, so a task
//!   reaches only a worker that can take it and an interactive call never
//!   waits behind a sweep; above them all, lane [`RESERVED_LANE`] holds
//!   tasks in their tenant's reserved slots. A publisher then sends an empty core-NATS
//!   message on `sandmill.wake` so idle workers look at once. Each publish carries `Nats-Msg-Id: task-<id>-<attempt>`,
//!   so a re-publish inside the dedup window is dropped. A worker acks a
//!   task (double ack: confirmed) only after its result is durably
//!   published; while a task runs, the broker sends in-progress acks so the
//!   ack wait never expires under a live worker. A worker that dies leaves
//!   its message unacked, and JetStream delivers it again after the ack
//!   wait; past [`NatsConfig::max_deliveries`] the task fails `worker-lost`.
//! - Events: stream `SANDMILL_EVENTS` on `sandmill.events.<job>.<task>`
//!   (JSON, limits retention, so any NATS client can subscribe); the control
//!   plane reads them with the durable consumer `recorder` and acks each
//!   after the database commit.
//! - Cancels: the control plane publishes a job's id on `sandmill.cancel`
//!   (core NATS) when the job ends early; workers interrupt its running
//!   attempts and drop its fetched ones (see [`crate::cancels`]).
//! - Registry: key/value bucket `sandmill-workers`, one entry per worker id,
//!   rewritten every heartbeat, removed when a worker leaves on purpose.
//!
//! JetStream defaults are set on purpose here: ack wait, redeliveries, the
//! dedup window and the message size are all named constants.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv, stream};
use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use super::{Broker, BrokerError, BrokerErrorKind};
use crate::labels::Labels;
use crate::message::{
    MAX_PRIORITY, RESERVED_LANE, TaskEvent, TaskMessage, TraceContext, WorkerInfo,
};

/// The W3C trace context header task messages and their events carry.
const TRACEPARENT: &str = "traceparent";

/// How long a delivered task may go without an ack or progress before
/// JetStream delivers it to another worker (by default).
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one task attempt a worker may run (by default).
pub const MAX_DELIVERIES: u32 = 5;
/// The longest wait before a lost worker's task is delivered again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Where a queue keeps its delivery limit (consumer metadata).
const MAX_DELIVERIES_KEY: &str = "sandmill.max_deliveries";
/// How long events handed to a control plane that died stay unacked before
/// they go to its successor.
pub const RECORDER_ACK_WAIT: Duration = Duration::from_secs(10);
/// Window in which a re-published task attempt is dropped as a duplicate.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Largest message: task messages and events carry no payloads.
pub const MAX_MESSAGE_BYTES: i32 = 1 << 20;
/// How long events are kept for subscribers (by default).
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bytes of events kept at most (by default): past them the oldest go.
pub const EVENTS_MAX_BYTES: i64 = 1 << 30;
/// How long a registry entry outlives its worker's last heartbeat.
pub const REGISTRY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Task messages delivered and not yet acked, per label set.
pub const MAX_ACK_PENDING: i64 = 10_000;
/// Publish acks awaited at once (async-nats holds publishes back past a
/// few hundred outstanding acks; awaiting only at the end would deadlock).
const PUBLISH_WINDOW: usize = 256;
/// How often a worker looks for new label-set queues.
const QUEUE_REFRESH: Duration = Duration::from_secs(2);
/// How long an idle worker waits for a wake-up before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Where publishers tell idle workers that tasks arrived (core NATS).
const WAKE_SUBJECT: &str = "sandmill.wake";
/// Where the control plane tells workers that a job ended early (core
/// NATS; the payload is the job id in decimal).
pub const CANCEL_SUBJECT: &str = "sandmill.cancel";

const TASK_STREAM: &str = "SANDMILL_TASKS";
const EVENT_STREAM: &str = "SANDMILL_EVENTS";
/// The registry bucket.
pub const REGISTRY_BUCKET: &str = "sandmill-workers";

/// How the task queues behave; the process that creates a queue first sets
/// them (normally `sandmill serve`).
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// See [`ACK_WAIT`].
    pub ack_wait: Duration,
    /// See [`MAX_DELIVERIES`].
    pub max_deliveries: u32,
    /// What this process offers as a worker; `None` for the control plane.
    pub offers: Option<Labels>,
    /// How long events are kept (see [`EVENTS_MAX_AGE`]); the control
    /// plane sets it on the events stream, made or found.
    pub events_max_age: Duration,
    /// Bytes of events kept (see [`EVENTS_MAX_BYTES`]); the oldest go
    /// first. Likewise set by the control plane.
    pub events_max_bytes: i64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            ack_wait: ACK_WAIT,
            max_deliveries: MAX_DELIVERIES,
            offers: None,
            events_max_age: EVENTS_MAX_AGE,
            events_max_bytes: EVENTS_MAX_BYTES,
        }
    }
}

/// The broker could not do what was asked for now.
fn unavailable(error: impl Into<crate::error::Source>) -> BrokerError {
    BrokerError::with_source(BrokerErrorKind::Unavailable, error)
}

/// A message that cannot be encoded.
fn refused(error: impl Into<crate::error::Source>) -> BrokerError {
    BrokerError::with_source(BrokerErrorKind::Refused, error)
}

/// The subject of a task message.
fn task_subject(token: &str, priority: u8, job_id: i64, task_id: i64) -> String {
    format!("sandmill.tasks.{token}.{priority}.{job_id}.{task_id}")
}

/// The queue (consumer) of a label set at a priority.
fn queue_name(token: &str, priority: u8) -> String {
    format!("q-{token}-{priority}")
}

/// The JetStream broker.
#[derive(Clone)]
pub struct NatsBroker {
    js: jetstream::Context,
    config: NatsConfig,
    task_stream: stream::Stream,
    /// The recorder's queue of events (control plane only: a worker may
    /// not read it under the least-privilege NATS configuration).
    events: Option<PullConsumer>,
    registry: kv::Store,
    /// (label-set token, priority) whose queue is known to exist
    /// (publisher side).
    queues_made: Arc<Mutex<HashSet<(String, u8)>>>,
    /// Held (shared) by every publish, (alone) by the removal of an idle
    /// queue: a queue is never removed between a publisher's finding it
    /// and its message landing.
    queue_gate: Arc<tokio::sync::RwLock<()>>,
    /// Each queue's last delivery (stream sequence) and when it was first
    /// seen at it with nothing pending: how long it has been idle
    /// (control plane; pruned to the queues that exist).
    queue_quiet: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
    /// Set when a publisher says tasks arrived (worker side).
    wake: Arc<tokio::sync::Notify>,
    client: async_nats::Client,
    /// The queues this worker pulls from, refreshed now and then.
    pulls: Arc<tokio::sync::Mutex<Pulls>>,
    /// The shortest ack wait of the queues pulled from (ms): in-progress
    /// acks go out three times within it.
    ack_wait_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The smallest delivery limit of the queues pulled from (their
    /// creator set it): a delivery past it fails the task as worker-lost.
    max_deliveries: Arc<std::sync::atomic::AtomicU32>,
    /// Fetched, not yet done: acked when their result is published. (Two
    /// messages may carry one attempt: both are done with its result.)
    in_flight: Arc<Mutex<InFlight>>,
    /// Events handed to the recorder, acked once recorded. (Each one: an
    /// ack-all of the last would also ack a message lost in transit during
    /// a reconnect, which then is never recorded.)
    unacked_events: Arc<tokio::sync::Mutex<Vec<jetstream::Message>>>,
}

/// Fetched messages by (task, attempt).
type InFlight = HashMap<(i64, i64), Vec<jetstream::Message>>;

#[derive(Default)]
struct Pulls {
    /// Highest priority first.
    consumers: Vec<(u8, PullConsumer)>,
    names: BTreeSet<String>,
    refreshed: Option<Instant>,
    next: usize,
}

impl NatsBroker {
    /// Connects and makes sure the streams, the events consumer and the
    /// registry exist.
    pub async fn connect(
        client: async_nats::Client,
        config: NatsConfig,
    ) -> Result<Self, BrokerError> {
        let js = jetstream::new(client.clone());
        let task_stream = js
            .get_or_create_stream(stream::Config {
                name: TASK_STREAM.into(),
                subjects: vec!["sandmill.tasks.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: DEDUP_WINDOW,
                max_message_size: MAX_MESSAGE_BYTES,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut event_stream = js
            .get_or_create_stream(stream::Config {
                name: EVENT_STREAM.into(),
                subjects: vec!["sandmill.events.>".into()],
                max_age: config.events_max_age,
                max_bytes: config.events_max_bytes,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: DEDUP_WINDOW,
                max_message_size: MAX_MESSAGE_BYTES,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        if config.offers.is_none() {
            // Found with other limits (made by an older Sandmill, or
            // another setting): the control plane's settings win.
            let found = event_stream.cached_info().config.clone();
            if found.max_age != config.events_max_age || found.max_bytes != config.events_max_bytes
            {
                js.update_stream(stream::Config {
                    max_age: config.events_max_age,
                    max_bytes: config.events_max_bytes,
                    discard: stream::DiscardPolicy::Old,
                    ..found
                })
                .await
                .map_err(unavailable)?;
                event_stream = js.get_stream(EVENT_STREAM).await.map_err(unavailable)?;
            }
        }
        let events = if config.offers.is_some() {
            None
        } else {
            Some(
                event_stream
                    .get_or_create_consumer(
                        "recorder",
                        jetstream::consumer::pull::Config {
                            durable_name: Some("recorder".into()),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: RECORDER_ACK_WAIT,
                            max_ack_pending: 100_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(unavailable)?,
            )
        };
        let registry = match js.get_key_value(REGISTRY_BUCKET).await {
            Ok(registry) => registry,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: REGISTRY_BUCKET.into(),
                    description: "Sandmill workers, one entry each, rewritten every heartbeat"
                        .into(),
                    history: 1,
                    max_age: REGISTRY_TTL,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?,
        };
        let broker = NatsBroker {
            js,
            config: config.clone(),
            task_stream,
            events,
            registry,
            queues_made: Arc::default(),
            queue_gate: Arc::default(),
            queue_quiet: Arc::default(),
            wake: Arc::default(),
            client: client.clone(),
            pulls: Arc::default(),
            ack_wait_ms: Arc::new(std::sync::atomic::AtomicU64::new(
                u64::try_from(config.ack_wait.as_millis()).unwrap_or(u64::MAX),
            )),
            max_deliveries: Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX)),
            in_flight: Arc::default(),
            unacked_events: Arc::default(),
        };
        broker.drop_legacy_queues().await?;
        // Unlabelled work at the lowest and highest priority, and in
        // reserved slots, needs no publisher to have run first (other
        // lanes appear as used).
        for priority in [0, MAX_PRIORITY, RESERVED_LANE] {
            broker.queue(&Labels::default(), priority).await?;
        }
        if broker.config.offers.is_some() {
            broker.spawn_progress_acks();
            broker.spawn_wake_listener().await?;
        }
        Ok(broker)
    }

    /// What the task stream's consumers (the queues) are.
    async fn queue_infos(&self) -> Result<Vec<jetstream::consumer::Info>, BrokerError> {
        self.task_stream
            .consumers()
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Every task queue's depth.
    async fn depths(&self) -> Result<Vec<super::QueueDepth>, BrokerError> {
        Ok(self
            .queue_infos()
            .await?
            .into_iter()
            .filter_map(|info| {
                let (token, priority) = parse_queue_name(&info.name)?;
                Some(super::QueueDepth {
                    token: token.to_owned(),
                    priority,
                    pending: info.num_pending,
                    delivered: info.delivered.consumer_sequence,
                })
            })
            .collect())
    }

    /// Queues of the layout before priorities (`q-<token>` over
    /// `sandmill.tasks.<token>.>`) overlap the new ones, which a work-queue
    /// stream refuses: they are removed with their messages (the control
    /// plane publishes every live task again when it starts).
    async fn drop_legacy_queues(&self) -> Result<(), BrokerError> {
        let infos = self.queue_infos().await?;
        for info in infos {
            if info.name.starts_with("q-") && parse_queue_name(&info.name).is_none() {
                tracing::warn!(queue = %info.name, "removing a task queue of the old layout");
                self.task_stream
                    .delete_consumer(&info.name)
                    .await
                    .map_err(unavailable)?;
                let token = &info.name[2..];
                self.task_stream
                    .purge()
                    .filter(format!("sandmill.tasks.{token}.>"))
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// The queue (durable consumer) of one label set at one priority,
    /// created if missing.
    async fn queue(&self, labels: &Labels, priority: u8) -> Result<PullConsumer, BrokerError> {
        let token = labels.token();
        let name = queue_name(&token, priority);
        self.task_stream
            .get_or_create_consumer(
                &name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(labels.to_string()),
                    filter_subject: format!("sandmill.tasks.{token}.{priority}.>"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    // A lost worker's task comes back after the ack wait,
                    // then after twice, four times that...
                    backoff: (0..self.config.max_deliveries.min(16))
                        .map(|i| (self.config.ack_wait * 2u32.pow(i)).min(MAX_BACKOFF))
                        .collect(),
                    // ...with no limit in JetStream: the workers enforce
                    // ours (a delivery past it fails the task as
                    // worker-lost, unrun), so a task is never stranded,
                    // even if the worker holding its last delivery dies.
                    max_deliver: -1,
                    metadata: [(
                        MAX_DELIVERIES_KEY.to_owned(),
                        self.config.max_deliveries.to_string(),
                    )]
                    .into(),
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)
    }

    /// Listens for publishers' wake-ups (worker side).
    async fn spawn_wake_listener(&self) -> Result<(), BrokerError> {
        let mut wakes = self
            .client
            .subscribe(WAKE_SUBJECT)
            .await
            .map_err(unavailable)?;
        let wake = Arc::downgrade(&self.wake);
        tokio::spawn(async move {
            while wakes.next().await.is_some() {
                let Some(wake) = wake.upgrade() else { return };
                wake.notify_waiters();
            }
        });
        Ok(())
    }

    /// The queues a worker offering `offers` pulls from: every label set's
    /// queues (one per priority) whose labels it has. Looked up again every [`QUEUE_REFRESH`].
    async fn refresh_pulls(&self, offers: &Labels) -> Result<(), BrokerError> {
        let mut pulls = self.pulls.lock().await;
        if pulls
            .refreshed
            .is_some_and(|at| at.elapsed() < QUEUE_REFRESH)
        {
            return Ok(());
        }
        let infos = self.queue_infos().await?;
        // Queues removed as idle (see `remove_idle_queues`) are dropped.
        let listed: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        pulls.names.retain(|name| listed.contains(name.as_str()));
        pulls
            .consumers
            .retain(|(_, queue)| listed.contains(queue.cached_info().name.as_str()));
        for info in &infos {
            let Some((token, priority)) = parse_queue_name(&info.name) else {
                continue;
            };
            let wanted = Labels::parse(info.config.description.as_deref().unwrap_or(""))
                .is_ok_and(|needs| needs.token() == token && needs.satisfied_by(offers));
            if wanted && !pulls.names.contains(&info.name) {
                let consumer = self
                    .task_stream
                    .get_consumer(&info.name)
                    .await
                    .map_err(unavailable)?;
                // The queue's creator set its ack wait: keep in-progress
                // acks well inside it.
                let ack_wait = u64::try_from(info.config.ack_wait.as_millis()).unwrap_or(u64::MAX);
                self.ack_wait_ms
                    .fetch_min(ack_wait.max(300), std::sync::atomic::Ordering::Relaxed);
                let limit = info
                    .config
                    .metadata
                    .get(MAX_DELIVERIES_KEY)
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(MAX_DELIVERIES)
                    .max(1);
                self.max_deliveries
                    .fetch_min(limit, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(queue = %info.name, labels = info.config.description.as_deref().unwrap_or(""), "pulling from a new queue");
                pulls.names.insert(info.name.clone());
                pulls.consumers.push((priority, consumer));
            }
        }
        pulls
            .consumers
            .sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
        pulls.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Whether `queue` no longer exists (removed as idle); if so this
    /// worker stops pulling from it.
    async fn removed(&self, queue: &PullConsumer) -> bool {
        let name = queue.cached_info().name.clone();
        match self.task_stream.consumer_info(&name).await {
            Err(error) if error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                let mut pulls = self.pulls.lock().await;
                pulls.names.remove(&name);
                pulls
                    .consumers
                    .retain(|(_, queue)| queue.cached_info().name != name);
                true
            }
            _ => false,
        }
    }

    /// Keeps running tasks' messages alive with in-progress acks.
    fn spawn_progress_acks(&self) {
        let in_flight = Arc::downgrade(&self.in_flight);
        let ack_wait_ms = self.ack_wait_ms.clone();
        tokio::spawn(async move {
            loop {
                let ack_wait = ack_wait_ms.load(std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(ack_wait / 3)).await;
                let Some(in_flight) = in_flight.upgrade() else {
                    return;
                };
                let messages: Vec<jetstream::Message> = in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .flatten()
                    .cloned()
                    .collect();
                for message in messages {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(%error, "in-progress ack failed");
                    }
                }
            }
        });
    }

    /// Fetched tasks, their delivery counts set and their messages kept
    /// alive while they run.
    fn take_fetched(&self, fetched: Vec<(TaskMessage, jetstream::Message)>) -> Vec<TaskMessage> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        fetched
            .into_iter()
            .map(|(mut task, message)| {
                if let Ok(info) = message.info() {
                    task.delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
                    task.published_ms =
                        i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok();
                }
                task.traceparent = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TRACEPARENT))
                    .map(|v| v.as_str().to_owned());
                in_flight.entry(task.dedup_key()).or_default().push(message);
                task
            })
            .collect()
    }

    /// The messages of a fetched task, no longer kept alive.
    fn take_in_flight(&self, task: &TaskMessage) -> Vec<jetstream::Message> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.dedup_key())
            .unwrap_or_default()
    }

    /// Publishes task messages, creating label-set queues as needed;
    /// `again` marks a re-publish of a lost message (another message id).
    async fn publish_tasks(
        &self,
        tasks: Vec<TaskMessage>,
        again: Option<i64>,
    ) -> Result<(), BrokerError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let _gate = self.queue_gate.read().await;
        let mut items = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let token = task.labels.token();
            let priority = task.priority.min(RESERVED_LANE);
            let key = (token.clone(), priority);
            let known = self
                .queues_made
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key);
            if !known {
                self.queue(&task.labels, priority).await?;
                self.queues_made
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key);
            }
            let payload = serde_json::to_vec(task).map_err(refused)?;
            if payload.len() > MAX_MESSAGE_BYTES as usize {
                return Err(BrokerError::with_source(
                    BrokerErrorKind::Refused,
                    format!(
                        "task {} is a message of {} bytes, over the {} byte limit",
                        task.task_id,
                        payload.len(),
                        MAX_MESSAGE_BYTES
                    ),
                ));
            }
            let mut id = format!("task-{}-{}", task.task_id, task.attempt);
            if let Some(at) = again {
                id.push_str(&format!("-again-{at}"));
            }
            items.push((
                task_subject(&token, priority, task.job_id, task.task_id),
                id,
                payload,
                TraceContext::of(task.job_id, task.task_id, task.attempt).header(),
            ));
        }
        self.publish_all(items).await?;
        // Idle workers look at once (best effort: they look every second
        // anyway).
        let _ = self.client.publish(WAKE_SUBJECT, bytes::Bytes::new()).await;
        Ok(())
    }

    /// Publishes `(subject, message id, payload, traceparent)` items.
    async fn publish_all(
        &self,
        items: Vec<(String, String, Vec<u8>, String)>,
    ) -> Result<(), BrokerError> {
        let mut pending = futures_util::stream::FuturesOrdered::new();
        for (subject, id, payload, trace) in items {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(TRACEPARENT, trace.as_str());
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(unavailable)?;
            pending.push_back(ack.into_future());
            if pending.len() >= PUBLISH_WINDOW
                && let Some(ack) = pending.next().await
            {
                ack.map_err(unavailable)?;
            }
        }
        while let Some(ack) = pending.next().await {
            ack.map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Fetches up to `max` messages, waiting up to `wait` for the first, and
/// decodes them; a message nobody can read is terminated, never redelivered.
async fn fetch_json<T: serde::de::DeserializeOwned>(
    consumer: &PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<(T, jetstream::Message)>, BrokerError> {
    // With `expires`, an empty queue holds the request until the first
    // message or the expiry; without, it answers at once.
    let mut fetch = consumer.fetch().max_messages(max.max(1));
    if let Some(wait) = wait {
        fetch = fetch.expires(wait);
    }
    let mut batch = fetch.messages().await.map_err(unavailable)?;
    let mut fetched = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.map_err(unavailable)?;
        match serde_json::from_slice::<T>(&message.payload) {
            Ok(value) => fetched.push((value, message)),
            Err(error) => {
                tracing::error!(%error, subject = %message.subject, "terminating an unreadable message");
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
    Ok(fetched)
}

/// (job, task, attempt, what): the subject and the message id of an event.
/// Every delivery's start is its own event; an attempt ends once. `what`
/// ends with the start of the attempt's ticket, which the control plane
/// checks: a publisher who does not know it cannot take the id of a real
/// event (whose publish JetStream would then drop as a duplicate).
fn event_key(event: &TaskEvent) -> (i64, i64, i64, String) {
    let mark = |ticket: &str| ticket.get(..8).unwrap_or(ticket).to_owned();
    match event {
        TaskEvent::Started {
            job_id,
            task_id,
            attempt,
            delivery,
            ticket,
            ..
        } => (
            *job_id,
            *task_id,
            *attempt,
            format!("started-{delivery}-{}", mark(ticket)),
        ),
        TaskEvent::Finished(r) => (
            r.job_id,
            r.task_id,
            r.attempt,
            format!("finished-{}", mark(&r.ticket)),
        ),
        TaskEvent::Progress {
            job_id,
            task_id,
            attempt,
            done,
            total,
        } => (
            *job_id,
            *task_id,
            *attempt,
            format!("progress-{done}-{total}"),
        ),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        self.publish_tasks(tasks, None).await
    }

    async fn republish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        // A fresh message id: the lost message's id may still sit in the
        // dedup window, which would drop this publish.
        self.publish_tasks(tasks, Some(crate::message::now_ms()))
            .await
    }

    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError> {
        let offers = self.config.offers.clone().ok_or_else(|| {
            BrokerError::with_source(
                BrokerErrorKind::Unsupported,
                "this broker was not opened as a worker",
            )
        })?;
        loop {
            // Armed before looking, so a wake-up sent while we look counts.
            let wake = self.wake.clone();
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.refresh_pulls(&offers).await?;
            let queues = {
                let mut pulls = self.pulls.lock().await;
                pulls.next = pulls.next.wrapping_add(1);
                rotate_within_priority(&pulls.consumers, pulls.next)
            };
            // Highest priority first: a queue answers at once, with what
            // it has or with nothing.
            for (_, queue) in &queues {
                let fetched = match fetch_json::<TaskMessage>(queue, max, None).await {
                    Ok(fetched) => fetched,
                    Err(error) if self.removed(queue).await => {
                        tracing::debug!(%error, "a queue pulled from was removed");
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                if fetched.is_empty() {
                    continue;
                }
                return Ok(self.take_fetched(fetched));
            }
            // Nothing anywhere: wait for a publisher's wake-up (or look
            // again after a while, should one be lost).
            let _ = tokio::time::timeout(IDLE_WAIT, woken).await;
        }
    }

    async fn fetch_lane(
        &self,
        lane: u8,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<TaskMessage>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let queues: Vec<PullConsumer> = {
            let pulls = self.pulls.lock().await;
            pulls
                .consumers
                .iter()
                .filter(|(priority, _)| *priority == lane)
                .map(|(_, queue)| queue.clone())
                .collect()
        };
        loop {
            let wake = self.wake.clone();
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            for queue in &queues {
                let fetched = match fetch_json::<TaskMessage>(queue, max, None).await {
                    Ok(fetched) => fetched,
                    Err(_) if self.removed(queue).await => continue,
                    Err(error) => return Err(error),
                };
                if !fetched.is_empty() {
                    return Ok(self.take_fetched(fetched));
                }
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn done(&self, task: &TaskMessage) -> Result<(), BrokerError> {
        for message in self.take_in_flight(task) {
            message.double_ack().await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn release(&self, task: TaskMessage) -> Result<(), BrokerError> {
        for message in self.take_in_flight(&task) {
            message
                .ack_with(AckKind::Nak(None))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn release_after(&self, task: TaskMessage, delay: Duration) -> Result<(), BrokerError> {
        // JetStream delivers it again after the delay: the worker need not
        // wait for it.
        for message in self.take_in_flight(&task) {
            message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn max_deliveries(&self) -> u32 {
        self.max_deliveries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        let items = events
            .iter()
            .map(|event| {
                let (job, task, attempt, kind) = event_key(event);
                let payload = serde_json::to_vec(event).map_err(refused)?;
                Ok((
                    format!("sandmill.events.{job}.{task}"),
                    format!("event-{task}-{attempt}-{kind}"),
                    payload,
                    TraceContext::of(job, task, attempt).header(),
                ))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        self.publish_all(items).await
    }

    async fn announce(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        for event in &events {
            let (job, task, attempt, kind) = event_key(event);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("event-{task}-{attempt}-{kind}").as_str(),
            );
            let payload = serde_json::to_vec(event).map_err(refused)?;
            // The ack future is dropped: async-nats awaits it in the
            // background, within its bound on acks in flight.
            drop(
                self.js
                    .publish_with_headers(
                        format!("sandmill.events.{job}.{task}"),
                        headers,
                        payload.into(),
                    )
                    .await
                    .map_err(unavailable)?,
            );
        }
        Ok(())
    }

    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError> {
        let Some(events) = &self.events else {
            return Err(refused("a worker's broker does not read the events"));
        };
        loop {
            let fetched =
                fetch_json::<TaskEvent>(events, max, Some(Duration::from_secs(5))).await?;
            if fetched.is_empty() {
                continue;
            }
            let mut unacked = self.unacked_events.lock().await;
            return Ok(fetched
                .into_iter()
                .map(|(event, message)| {
                    unacked.push(message);
                    event
                })
                .collect());
        }
    }

    async fn events_recorded(&self) -> Result<(), BrokerError> {
        let messages = std::mem::take(&mut *self.unacked_events.lock().await);
        // An ack is one publish, no reply awaited: these go out as fast as
        // the connection takes them.
        for message in messages {
            message.ack().await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        let value = serde_json::to_vec(info).map_err(refused)?;
        self.registry
            .put(&info.id, value.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn leave(&self, id: &str) -> Result<(), BrokerError> {
        self.registry.purge(id).await.map_err(unavailable)
    }

    async fn worker(&self, id: &str) -> Result<Option<WorkerInfo>, BrokerError> {
        match self.registry.get(id).await.map_err(unavailable)? {
            Some(value) => Ok(serde_json::from_slice(&value).ok()),
            None => Ok(None),
        }
    }

    async fn workers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkerInfo>, BrokerError> {
        // Keys only, then the entries of one page: a page costs `limit`
        // reads however large the fleet.
        let mut keys: Vec<String> = self
            .registry
            .keys()
            .await
            .map_err(unavailable)?
            .try_filter(|key| std::future::ready(after.is_none_or(|after| key.as_str() > after)))
            .try_collect()
            .await
            .map_err(unavailable)?;
        keys.sort();
        let mut workers = Vec::with_capacity(limit.min(keys.len()));
        for key in keys {
            if workers.len() >= limit {
                break;
            }
            // None: purged between the listing and the read (it left).
            if let Some(value) = self.registry.get(&key).await.map_err(unavailable)? {
                match serde_json::from_slice::<WorkerInfo>(&value) {
                    Ok(info) => workers.push(info),
                    Err(error) => {
                        tracing::warn!(key, %error, "skipping an unreadable registry entry")
                    }
                }
            }
        }
        Ok(workers)
    }

    async fn absent(&self, tasks: &[i64]) -> Result<Option<BTreeSet<i64>>, BrokerError> {
        let mut present = HashSet::new();
        let mut subjects = self
            .task_stream
            .info_with_subjects("sandmill.tasks.>")
            .await
            .map_err(unavailable)?;
        while let Some((subject, _count)) = subjects.try_next().await.map_err(unavailable)? {
            if let Some(id) = subject
                .rsplit('.')
                .next()
                .and_then(|id| id.parse::<i64>().ok())
            {
                present.insert(id);
            }
        }
        Ok(Some(
            tasks
                .iter()
                .copied()
                .filter(|id| !present.contains(id))
                .collect(),
        ))
    }

    fn enforces_labels(&self) -> bool {
        true
    }

    async fn queue_depths(&self) -> Result<Option<Vec<super::QueueDepth>>, BrokerError> {
        Ok(Some(self.depths().await?))
    }

    async fn events_waiting(&self) -> Result<Option<u64>, BrokerError> {
        let Some(events) = &self.events else {
            return Ok(None);
        };
        let mut events = events.clone();
        let info = events.info().await.map_err(unavailable)?;
        Ok(Some(info.num_pending + info.num_ack_pending as u64))
    }

    async fn cancel_jobs(&self, jobs: &[i64]) -> Result<(), BrokerError> {
        for job in jobs {
            self.client
                .publish(CANCEL_SUBJECT, job.to_string().into())
                .await
                .map_err(unavailable)?;
        }
        // Out now, not with the next batch of writes.
        self.client.flush().await.map_err(unavailable)
    }

    async fn cancels(&self) -> Result<Option<BoxStream<'static, i64>>, BrokerError> {
        let heard = self
            .client
            .subscribe(CANCEL_SUBJECT)
            .await
            .map_err(unavailable)?;
        let jobs = heard.filter_map(|message| async move {
            let job = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| text.parse::<i64>().ok());
            if job.is_none() {
                tracing::warn!(subject = %message.subject, "ignoring a cancel that names no job");
            }
            job
        });
        Ok(Some(Box::pin(jobs)))
    }

    async fn forget_job(&self, job_id: i64, labels: &Labels) -> Result<(), BrokerError> {
        let purged = self
            .task_stream
            .purge()
            .filter(format!("sandmill.tasks.{}.*.{job_id}.>", labels.token()))
            .await
            .map_err(unavailable)?;
        tracing::debug!(
            job_id,
            messages = purged.purged,
            "purged the task messages of an ended job"
        );
        Ok(())
    }

    async fn remove_idle_queues(&self, idle: Duration) -> Result<usize, BrokerError> {
        let infos = self.queue_infos().await?;
        let now = Instant::now();
        let quiet =
            |info: &jetstream::consumer::Info| info.num_pending == 0 && info.num_ack_pending == 0;
        let mut idle_queues = Vec::new();
        {
            let mut seen = self.queue_quiet.lock().unwrap_or_else(|e| e.into_inner());
            let listed: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
            seen.retain(|name, _| listed.contains(name.as_str()));
            for info in &infos {
                let Some((token, priority)) = parse_queue_name(&info.name) else {
                    continue;
                };
                if is_standing_queue(token, priority) {
                    continue;
                }
                let last = info.delivered.stream_sequence;
                let since = seen.entry(info.name.clone()).or_insert((last, now));
                if !quiet(info) || since.0 != last {
                    *since = (last, now);
                } else if now.duration_since(since.1) >= idle {
                    idle_queues.push((info.name.clone(), token.to_owned(), priority, last));
                }
            }
        }
        let mut removed = 0;
        for (name, token, priority, last) in idle_queues {
            // No publish runs while the gate is held: looked at again,
            // the queue is still idle when it goes, and the next publish
            // for its labels makes it again.
            let _gate = self.queue_gate.write().await;
            let info = match self.task_stream.consumer_info(&name).await {
                Ok(info) => info,
                Err(error)
                    if error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound =>
                {
                    continue;
                }
                Err(error) => return Err(unavailable(error)),
            };
            if !quiet(&info) || info.delivered.stream_sequence != last {
                continue;
            }
            self.queues_made
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(token, priority));
            self.task_stream
                .delete_consumer(&name)
                .await
                .map_err(unavailable)?;
            self.queue_quiet
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            tracing::info!(queue = %name, labels = info.config.description.as_deref().unwrap_or(""), "removed an idle task queue");
            removed += 1;
        }
        Ok(removed)
    }
}

/// The queues made when a broker connects (unlabelled work at the lowest
/// and highest priority, and in reserved slots): never removed as idle.
fn is_standing_queue(token: &str, priority: u8) -> bool {
    token == "any" && [0, MAX_PRIORITY, RESERVED_LANE].contains(&priority)
}

/// The queues, highest priority first, each run of equal priority
/// rotated by `turn` so no label set's queue always goes first.
fn rotate_within_priority<T: Clone>(queues: &[(u8, T)], turn: usize) -> Vec<(u8, T)> {
    let mut ordered = Vec::with_capacity(queues.len());
    let mut start = 0;
    while start < queues.len() {
        let priority = queues[start].0;
        let end = start
            + queues[start..]
                .iter()
                .take_while(|(p, _)| *p == priority)
                .count();
        let run = &queues[start..end];
        let shift = turn % run.len();
        ordered.extend(run[shift..].iter().chain(&run[..shift]).cloned());
        start = end;
    }
    ordered
}

/// `(token, priority)` of a queue named `q-<token>-<priority>`.
fn parse_queue_name(name: &str) -> Option<(&str, u8)> {
    let (token, priority) = name.strip_prefix("q-")?.rsplit_once('-')?;
    let priority = priority
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= RESERVED_LANE)?;
    Some((token, priority))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_carry_token_and_priority() {
        assert_eq!(queue_name("any", 9), "q-any-9");
        assert_eq!(parse_queue_name("q-any-9"), Some(("any", 9)));
        // The reserved lane, above every priority.
        assert_eq!(parse_queue_name("q-any-10"), Some(("any", RESERVED_LANE)));
        assert_eq!(
            parse_queue_name("q-0123456789abcdef-0"),
            Some(("0123456789abcdef", 0))
        );
        // The layout before priorities, and strangers.
        assert_eq!(parse_queue_name("q-any"), None);
        assert_eq!(parse_queue_name("q-any-12"), None);
        assert_eq!(parse_queue_name("recorder"), None);
        assert_eq!(task_subject("any", 3, 7, 11), "sandmill.tasks.any.3.7.11");
    }

    #[test]
    fn queues_go_by_priority_then_take_turns() {
        let queues = [(9, 'a'), (9, 'b'), (0, 'c'), (0, 'd'), (0, 'e')];
        let order = |turn| -> String {
            rotate_within_priority(&queues, turn)
                .into_iter()
                .map(|(_, q)| q)
                .collect()
        };
        assert_eq!(order(0), "abcde");
        assert_eq!(order(1), "badec");
        assert_eq!(order(2), "abecd");
    }
}
