//! [`NatsBroker`]: tasks and events on NATS JetStream.
//!
//! - Tasks: stream `SANDMILL_TASKS` (work-queue retention) on
//!   `sandmill.tasks.default`, one durable pull consumer `workers` shared by
//!   every worker. Each publish carries `Nats-Msg-Id: <task>-<attempt>`, so a
//!   re-publish inside the dedup window is dropped. A worker acks a task
//!   (double ack: confirmed) only after its result is durably published;
//!   while a task runs, the broker sends in-progress acks so the ack wait
//!   never expires under a live worker. A worker that dies leaves its
//!   message unacked, and JetStream delivers it again after the ack wait.
//! - Events: stream `SANDMILL_EVENTS` on `sandmill.events.<job>.<task>`
//!   (JSON, limits retention, so any NATS client can subscribe); the control
//!   plane reads them with the durable consumer `recorder` and acks them
//!   after the database commit.
//!
//! JetStream defaults are set on purpose here: ack wait, redeliveries, the
//! dedup window and the message size are all named constants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Broker, BrokerError};
use crate::message::{TaskEvent, TaskMessage};

/// How long a delivered task may go without an ack or progress before
/// JetStream delivers it to another worker.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// In-progress acks for running tasks, well inside [`ACK_WAIT`].
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Deliveries of one task attempt before JetStream gives up on it.
pub const MAX_DELIVER: i64 = 5;
/// Window in which a re-published task attempt is dropped as a duplicate.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Largest message: task messages and events carry no payloads.
pub const MAX_MESSAGE_BYTES: i32 = 1 << 20;
/// How long events are kept for subscribers.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Publish acks awaited at once (async-nats holds publishes back past a
/// few hundred outstanding acks; awaiting only at the end would deadlock).
const PUBLISH_WINDOW: usize = 256;

const TASK_STREAM: &str = "SANDMILL_TASKS";
const EVENT_STREAM: &str = "SANDMILL_EVENTS";

fn transport(error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Transport(error.to_string())
}

/// The JetStream broker.
#[derive(Clone)]
pub struct NatsBroker {
    js: jetstream::Context,
    tasks: PullConsumer,
    events: PullConsumer,
    /// Fetched, not yet done: acked when their result is published.
    in_flight: Arc<Mutex<HashMap<(i64, i64), jetstream::Message>>>,
    /// Events handed to the recorder, acked once recorded.
    unacked_events: Arc<tokio::sync::Mutex<Vec<jetstream::Message>>>,
}

impl NatsBroker {
    /// Connects and makes sure the streams and consumers exist.
    pub async fn connect(client: async_nats::Client) -> Result<Self, BrokerError> {
        let js = jetstream::new(client);
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
            .map_err(transport)?;
        let event_stream = js
            .get_or_create_stream(stream::Config {
                name: EVENT_STREAM.into(),
                subjects: vec!["sandmill.events.>".into()],
                max_age: EVENTS_MAX_AGE,
                duplicate_window: DEDUP_WINDOW,
                max_message_size: MAX_MESSAGE_BYTES,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(transport)?;
        let tasks = task_stream
            .get_or_create_consumer(
                "workers",
                jetstream::consumer::pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: MAX_DELIVER,
                    ..Default::default()
                },
            )
            .await
            .map_err(transport)?;
        let events = event_stream
            .get_or_create_consumer(
                "recorder",
                jetstream::consumer::pull::Config {
                    durable_name: Some("recorder".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(transport)?;
        let broker = NatsBroker {
            js,
            tasks,
            events,
            in_flight: Arc::default(),
            unacked_events: Arc::default(),
        };
        broker.spawn_progress_acks();
        Ok(broker)
    }

    /// Keeps running tasks' messages alive with in-progress acks.
    fn spawn_progress_acks(&self) {
        let in_flight = Arc::downgrade(&self.in_flight);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let Some(in_flight) = in_flight.upgrade() else {
                    return;
                };
                let messages: Vec<jetstream::Message> = in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
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

    async fn publish_all(&self, items: Vec<(String, String, Vec<u8>)>) -> Result<(), BrokerError> {
        let mut pending = futures_util::stream::FuturesOrdered::new();
        for (subject, id, payload) in items {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(transport)?;
            pending.push_back(ack.into_future());
            if pending.len() >= PUBLISH_WINDOW
                && let Some(ack) = pending.next().await
            {
                ack.map_err(transport)?;
            }
        }
        while let Some(ack) = pending.next().await {
            ack.map_err(transport)?;
        }
        Ok(())
    }
}

/// Waits (5 s at a time) until the consumer has messages and returns up to
/// `max`, decoded; a message nobody can read is terminated, never redelivered.
async fn fetch_json<T: serde::de::DeserializeOwned>(
    consumer: &PullConsumer,
    max: usize,
) -> Result<Vec<(T, jetstream::Message)>, BrokerError> {
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(max.max(1))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(transport)?;
        let mut fetched = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(transport)?;
            match serde_json::from_slice::<T>(&message.payload) {
                Ok(value) => fetched.push((value, message)),
                Err(error) => {
                    tracing::error!(%error, subject = %message.subject, "terminating an unreadable message");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        if !fetched.is_empty() {
            return Ok(fetched);
        }
    }
}

fn event_key(event: &TaskEvent) -> (i64, i64, i64, &'static str) {
    match event {
        TaskEvent::Started {
            job_id,
            task_id,
            attempt,
            ..
        } => (*job_id, *task_id, *attempt, "started"),
        TaskEvent::Finished(r) => (r.job_id, r.task_id, r.attempt, "finished"),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, tasks: Vec<TaskMessage>) -> Result<(), BrokerError> {
        let items = tasks
            .iter()
            .map(|task| {
                let payload = serde_json::to_vec(task).map_err(transport)?;
                Ok((
                    "sandmill.tasks.default".to_owned(),
                    format!("task-{}-{}", task.task_id, task.attempt),
                    payload,
                ))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        self.publish_all(items).await
    }

    async fn fetch(&self, max: usize) -> Result<Vec<TaskMessage>, BrokerError> {
        let fetched = fetch_json::<TaskMessage>(&self.tasks, max).await?;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        Ok(fetched
            .into_iter()
            .map(|(task, message)| {
                in_flight.insert(task.dedup_key(), message);
                task
            })
            .collect())
    }

    async fn done(&self, task: &TaskMessage) -> Result<(), BrokerError> {
        let message = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.dedup_key());
        if let Some(message) = message {
            message.double_ack().await.map_err(transport)?;
        }
        Ok(())
    }

    async fn report(&self, events: Vec<TaskEvent>) -> Result<(), BrokerError> {
        let items = events
            .iter()
            .map(|event| {
                let (job, task, attempt, kind) = event_key(event);
                let payload = serde_json::to_vec(event).map_err(transport)?;
                Ok((
                    format!("sandmill.events.{job}.{task}"),
                    format!("event-{task}-{attempt}-{kind}"),
                    payload,
                ))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        self.publish_all(items).await
    }

    async fn events(&self, max: usize) -> Result<Vec<TaskEvent>, BrokerError> {
        let fetched = fetch_json::<TaskEvent>(&self.events, max).await?;
        let mut unacked = self.unacked_events.lock().await;
        Ok(fetched
            .into_iter()
            .map(|(event, message)| {
                unacked.push(message);
                event
            })
            .collect())
    }

    async fn events_recorded(&self) -> Result<(), BrokerError> {
        let messages = std::mem::take(&mut *self.unacked_events.lock().await);
        for message in messages {
            message.ack().await.map_err(transport)?;
        }
        Ok(())
    }
}
