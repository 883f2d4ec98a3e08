//! Subscriptions: functions on NATS subjects. Each message becomes a task
//! of the subscription's job; its result is recorded like any task's, then
//! published on `sandmill.results.<name>` and answered on the message's
//! reply subject, and only then is a durable message acked.
//!
//! - Durable (`queue = true`): a JetStream stream (`SANDMILL_SUB_<name>`,
//!   work-queue retention) captures the subject, so messages published
//!   while no server runs wait. A message's task sits at the place of its
//!   stream sequence, so a message delivered again (the server died before
//!   acking it) finds its task, running or done, instead of running twice.
//!   A worker that dies mid-task is covered by the task queue's own
//!   redelivery. The message is kept in progress while its task runs.
//!   JetStream keeps no reply subject (a request to a captured subject is
//!   answered by the stream's publish ack), so a durable message names
//!   where its result should also go in a `Sandmill-Reply` header.
//! - Core (`queue = false`): a queue subscription, at most once; a
//!   request's reply subject gets the result.
//!
//! A task that fails for good is the message's dead letter: recorded with
//! its error, listed by `GET /v1/subscriptions/{name}/dead-letters`, and
//! the message is acked (it would fail again).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use sandmill_runtime::message::{OutputRef, TaskResult, Verdict};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{Owner, Scheduler, SchedulerError, SubmitOptions, Waiter};
use crate::jobfile::check_params_size;
use crate::model::{JobKind, TaskState};
use crate::store::{Item, NewSubscription, Stored, SubscriptionRow};
use crate::subscription::{PARAM_HEADER, SubscriptionFile};

/// How long a durable message may go without a sign of life before
/// JetStream delivers it again, by default; a message whose task runs is
/// marked in progress every third of it. `sandmill serve` uses its
/// `--ack-wait`.
pub const SUBSCRIPTION_ACK_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting message looks at its task's row (a result the
/// recorder handed to no waiter: expired, cancelled, or recorded before
/// this delivery waited).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// How often retention runs, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The header that carries a message's failure reason.
pub const ERROR_HEADER: &str = "Sandmill-Error";

/// The header through which a durable message names a reply subject.
pub const REPLY_HEADER: &str = "Sandmill-Reply";

/// The stream that captures a durable subscription's subject.
pub fn stream_name(subscription: &str) -> String {
    format!("SANDMILL_SUB_{subscription}")
}

/// Where a subscription's results are published.
pub fn results_subject(subscription: &str) -> String {
    format!("sandmill.results.{subscription}")
}

/// A running subscription's consumer: stopped by sending `true`.
pub(super) struct Consumer {
    version: i64,
    stop: watch::Sender<bool>,
}

/// What the consumer of one subscription knows of it.
struct Sub {
    /// Where messages' tasks are made, a batch at a time.
    make: mpsc::Sender<Make>,
    name: String,
    job_id: i64,
    params: serde_json::Map<String, serde_json::Value>,
    results: String,
}

/// One message, from either kind of subscription.
struct Delivery {
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    reply: Option<async_nats::Subject>,
    /// The stream sequence of a durable message.
    seq: Option<i64>,
    /// Marks a durable message in progress.
    jetstream: Option<jetstream::Message>,
}

/// A message's task as made: its id, its state, and a waiter for its
/// result; `None` once the subscription's job has ended.
type Made = Result<Option<(i64, TaskState, Waiter)>, String>;

/// A message's task to make, with where to say what was made.
struct Make {
    seq: Option<i64>,
    item: Item,
    made: oneshot::Sender<Made>,
}

/// Messages whose tasks are made in one transaction, at most.
const MAKE_BATCH: usize = 256;

/// How a message ended.
struct Outcome {
    task_id: i64,
    output: Result<Vec<u8>, (String, String)>,
}

/// What handling a message came to.
enum Handled {
    /// Its result was recorded and sent.
    Done,
    /// The subscription's job ended (deleted or replaced) before the
    /// message had a task: a durable one goes to its next version.
    Gone,
    /// The server stops: a durable message comes again after the restart.
    Stopping,
    /// Something failed on the way; a durable message comes again.
    Failed(SchedulerError),
}

impl Scheduler {
    /// Lets subscriptions run: they need a NATS client (the fleet's, or
    /// `sandmill dev --nats`).
    pub fn set_nats(&self, client: async_nats::Client) {
        let _ = self.inner.nats.set(client);
    }

    fn nats(&self) -> Result<&async_nats::Client, SchedulerError> {
        self.inner.nats.get().ok_or_else(|| {
            SchedulerError::Conflict(
                "subscriptions need NATS: this server has none (start `sandmill dev --nats URL`, or use `sandmill serve`)"
                    .to_owned(),
            )
        })
    }

    /// Creates a subscription, or replaces the one of its name (a new
    /// version: new messages' tasks go to a new job; a durable stream and
    /// what waits in it are kept). A refused one changes nothing.
    pub async fn create_subscription(
        &self,
        owner: &Owner,
        file: &SubscriptionFile,
    ) -> Result<SubscriptionRow, SchedulerError> {
        let checked = file.check()?;
        let client = self.nats()?.clone();
        let mut job = self
            .prepare(owner, &file.job_file(), SubmitOptions::default())
            .await?;
        let taken = || {
            SchedulerError::Conflict(format!(
                "the subscription name `{}` is another tenant's",
                file.name
            ))
        };
        if let Some(existing) = self.inner.store.subscription(&file.name).await?
            && existing.tenant != owner.tenant
        {
            return Err(taken());
        }
        job.kind = JobKind::Subscription;
        job.total = 0;
        job.items.clear();
        job.task_input = None;
        let js = jetstream::new(client);
        let name = stream_name(&file.name);
        if checked.queue {
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![file.subject.clone()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                max_messages: i64::try_from(checked.max_backlog).unwrap_or(i64::MAX),
                discard: jetstream::stream::DiscardPolicy::New,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            let result = match js.get_stream(&name).await {
                Ok(_) => js
                    .update_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(_) => js
                    .create_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            result.map_err(|e| {
                SchedulerError::Conflict(format!(
                    "cannot capture `{}` in a stream: {e}",
                    file.subject
                ))
            })?;
        } else {
            // Durable before, core now: what waited in the stream goes.
            let _ = js.delete_stream(&name).await;
        }
        let (row, old) = self
            .inner
            .store
            .put_subscription(
                &NewSubscription {
                    file: file.clone(),
                    checked,
                },
                &job,
            )
            .await?
            .ok_or_else(taken)?;
        if let Some(old) = old {
            self.job_changed(old);
        }
        self.announce_job(row.job_id);
        self.start_consumer(row.clone());
        Ok(row)
    }

    /// Deletes a subscription: no new message becomes a task; its job
    /// ends, and its tasks stay readable. A durable one's stream goes,
    /// with what waited in it.
    pub async fn delete_subscription(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<SubscriptionRow, SchedulerError> {
        self.subscription(owner, name).await?;
        let row = self
            .inner
            .store
            .delete_subscription(name)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("subscription {name}")))?;
        if let Some(consumer) = self.lock_consumers().remove(name) {
            consumer.stop.send_replace(true);
        }
        if row.queue == 1
            && let Some(client) = self.inner.nats.get()
            && let Err(error) = jetstream::new(client.clone())
                .delete_stream(stream_name(name))
                .await
        {
            tracing::warn!(subscription = name, %error, "could not delete the subscription's stream");
        }
        self.job_changed(row.job_id);
        Ok(row)
    }

    /// Starts the consumers of every subscription (at start-up); does
    /// nothing without NATS.
    pub async fn run_subscriptions(&self) -> Result<(), SchedulerError> {
        if self.inner.nats.get().is_none() {
            return Ok(());
        }
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .store
                .subscriptions(None, after.as_deref(), 100)
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.name.clone());
            for row in page {
                self.start_consumer(row);
            }
        }
    }

    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Consumer>> {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or restarts, for a new version) a subscription's consumer.
    fn start_consumer(&self, row: SubscriptionRow) {
        let (stop, stopped) = watch::channel(false);
        let old = self.lock_consumers().insert(
            row.name.clone(),
            Consumer {
                version: row.version,
                stop,
            },
        );
        if let Some(old) = old {
            old.stop.send_replace(true);
            tracing::debug!(
                subscription = row.name,
                old = old.version,
                "subscription replaced"
            );
        }
        let scheduler = self.clone();
        tokio::spawn(async move { scheduler.consume(row, stopped).await });
    }

    /// Takes a subscription's messages until it is stopped (or the
    /// server), retrying with backoff when NATS fails.
    async fn consume(self, row: SubscriptionRow, mut stopped: watch::Receiver<bool>) {
        let file = row.definition.0.clone();
        let (make, to_make) = mpsc::channel(MAKE_BATCH);
        tokio::spawn(self.clone().make_tasks(row.job_id, to_make));
        let sub = Arc::new(Sub {
            make,
            name: row.name.clone(),
            job_id: row.job_id,
            params: file
                .params
                .as_ref()
                .and_then(|p| p.as_object().cloned())
                .unwrap_or_default(),
            results: results_subject(&row.name),
        });
        let slots = Arc::new(Semaphore::new(
            usize::try_from(row.max_in_flight).unwrap_or(1).max(1),
        ));
        let mut stopping = self.inner.stopping.subscribe();
        let mut delay = Duration::from_millis(200);
        tokio::spawn(self.clone().prune(
            row.clone(),
            stopped.clone(),
            self.inner.stopping.subscribe(),
        ));
        loop {
            if *stopped.borrow() || *stopping.borrow() {
                return;
            }
            let run = self.take_messages(&row, &sub, &slots);
            let error = tokio::select! {
                error = run => error,
                _ = stopped.changed() => return,
                _ = stopping.changed() => return,
            };
            tracing::warn!(subscription = row.name, %error, retry_in = ?delay, "subscription's messages stopped coming");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => return,
                _ = stopping.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// One run of a consumer: returns why it stopped.
    async fn take_messages(
        &self,
        row: &SubscriptionRow,
        sub: &Arc<Sub>,
        slots: &Arc<Semaphore>,
    ) -> String {
        let Some(client) = self.inner.nats.get().cloned() else {
            return "no NATS".to_owned();
        };
        if row.queue == 0 {
            let mut messages = match client
                .queue_subscribe(row.subject.clone(), format!("sandmill.{}", row.name))
                .await
            {
                Ok(messages) => messages,
                Err(error) => return error.to_string(),
            };
            while let Some(message) = messages.next().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return "stopped".to_owned();
                };
                let delivery = Delivery {
                    subject: message.subject.to_string(),
                    headers: message.headers,
                    payload: message.payload,
                    reply: message.reply,
                    seq: None,
                    jetstream: None,
                };
                let scheduler = self.clone();
                let sub = sub.clone();
                tokio::spawn(async move {
                    scheduler.deliver(&sub, delivery).await;
                    drop(permit);
                });
            }
            return "the subscription closed".to_owned();
        }
        let js = jetstream::new(client);
        let consumer = match js.get_stream(stream_name(&row.name)).await {
            Ok(stream) => {
                stream
                    .get_or_create_consumer(
                        "sandmill",
                        jetstream::consumer::pull::Config {
                            durable_name: Some("sandmill".to_owned()),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: self.inner.config.subscription_ack_wait,
                            max_ack_pending: row.max_in_flight,
                            // Never given up on: a message the server
                            // cannot take is tried again; one whose task
                            // fails for good is a dead letter.
                            max_deliver: -1,
                            ..Default::default()
                        },
                    )
                    .await
            }
            Err(error) => return format!("no stream: {error}"),
        };
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => return error.to_string(),
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => return error.to_string(),
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => return error.to_string(),
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return "stopped".to_owned();
            };
            let seq = match message.info() {
                Ok(info) => i64::try_from(info.stream_sequence).ok(),
                Err(error) => {
                    tracing::warn!(subscription = row.name, %error, "a message without JetStream info; it is left to come again");
                    continue;
                }
            };
            let delivery = Delivery {
                subject: message.subject.to_string(),
                headers: message.headers.clone(),
                payload: message.payload.clone(),
                reply: None,
                seq,
                jetstream: Some(message),
            };
            let scheduler = self.clone();
            let sub = sub.clone();
            tokio::spawn(async move {
                scheduler.deliver(&sub, delivery).await;
                drop(permit);
            });
        }
        "the consumer closed".to_owned()
    }

    /// Makes the tasks of messages a batch at a time (whatever arrived
    /// while the previous batch was made), registers their waiters, and
    /// publishes the new ones together; ends when the consumer does.
    async fn make_tasks(self, job_id: i64, mut to_make: mpsc::Receiver<Make>) {
        let mut batch = Vec::with_capacity(MAKE_BATCH);
        while to_make.recv_many(&mut batch, MAKE_BATCH).await > 0 {
            let mut replies = Vec::with_capacity(batch.len());
            let mut items = Vec::with_capacity(batch.len());
            for make in batch.drain(..) {
                replies.push(make.made);
                items.push((make.seq, make.item));
            }
            match self.inner.store.message_tasks(job_id, &items).await {
                Ok(Some(tasks)) => {
                    let mut messages = Vec::new();
                    for (task, reply) in tasks.into_iter().zip(replies) {
                        // Waiting before publishing: no result is missed.
                        let waiter = self.add_waiter(task.task_id);
                        messages.extend(task.message);
                        let _ = reply.send(Ok(Some((task.task_id, task.state, waiter))));
                    }
                    self.inner
                        .live
                        .fetch_add(messages.len() as i64, Ordering::Relaxed);
                    self.publish(messages).await;
                }
                Ok(None) => {
                    for reply in replies {
                        let _ = reply.send(Ok(None));
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Retention: every [`PRUNE_EVERY`], drops the subscription's finished
    /// tasks beyond `keep`, until the consumer stops.
    async fn prune(
        self,
        row: SubscriptionRow,
        mut stopped: watch::Receiver<bool>,
        mut stopping: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stopped.changed() => return,
                _ = stopping.changed() => return,
            }
            let before = row.keep_ms.map(|ms| crate::store::now_ms() - ms);
            loop {
                match self
                    .inner
                    .store
                    .prune_tasks(row.job_id, before, row.keep_count)
                    .await
                {
                    Ok(n) if n > 0 => {
                        tracing::debug!(subscription = row.name, removed = n, "old tasks removed")
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(subscription = row.name, %error, "removing old tasks failed; tried again later");
                        break;
                    }
                }
            }
        }
    }

    /// Handles one message and settles it with NATS.
    async fn deliver(&self, sub: &Sub, delivery: Delivery) {
        let jetstream = delivery.jetstream.clone();
        match self.handle(sub, delivery).await {
            Handled::Done => {
                if let Some(message) = jetstream
                    && let Err(error) = message.ack().await
                {
                    tracing::warn!(subscription = sub.name, %error, "ack failed; the message comes again and finds its recorded task");
                }
            }
            Handled::Gone | Handled::Stopping => {
                if let Some(message) = jetstream {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            }
            Handled::Failed(error) => {
                tracing::warn!(subscription = sub.name, %error, "a message could not be handled; it comes again");
                if let Some(message) = jetstream {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }

    async fn handle(&self, sub: &Sub, delivery: Delivery) -> Handled {
        let item = match self.item_of(sub, &delivery).await {
            Ok(item) => item,
            Err(SchedulerError::BadRequest(invalid)) => {
                // A message that can never be a task: answered with why,
                // and settled (it would fail again).
                self.send(
                    sub,
                    &delivery,
                    &Outcome {
                        task_id: 0,
                        output: Err(("bad-message".to_owned(), invalid.to_string())),
                    },
                )
                .await;
                tracing::warn!(subscription = sub.name, error = %invalid, "a message refused");
                return Handled::Done;
            }
            Err(error) => return Handled::Failed(error),
        };
        let (made, task) = oneshot::channel();
        if sub
            .make
            .send(Make {
                seq: delivery.seq,
                item,
                made,
            })
            .await
            .is_err()
        {
            return Handled::Stopping;
        }
        let (task_id, state, mut waiter) = match task.await {
            Ok(Ok(Some(made))) => made,
            Ok(Ok(None)) => return Handled::Gone,
            Ok(Err(error)) => return Handled::Failed(SchedulerError::Internal(error)),
            Err(_) => return Handled::Stopping,
        };
        let mut stopping = self.inner.stopping.subscribe();
        let mut marked = Instant::now();
        let mut check = !state.is_live();
        let outcome = loop {
            if check {
                match self.recorded_outcome(task_id).await {
                    Ok(Some(outcome)) => break outcome,
                    Ok(None) => {}
                    Err(error) => return Handled::Failed(error),
                }
            }
            if *stopping.borrow() {
                return Handled::Stopping;
            }
            // Marked in progress well within the ack wait.
            if marked.elapsed() >= self.inner.config.subscription_ack_wait / 3 {
                marked = Instant::now();
                if let Some(message) = &delivery.jetstream {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
            tokio::select! {
                result = waiter.next(RECHECK_EVERY) => match result {
                    Some(result) => match self.outcome_of(result).await {
                        Ok(outcome) => break outcome,
                        Err(error) => return Handled::Failed(error),
                    },
                    None => check = true,
                },
                _ = stopping.changed() => return Handled::Stopping,
            }
        };
        self.send(sub, &delivery, &outcome).await;
        Handled::Done
    }

    /// A message as a task's item: its payload stored as the input, its
    /// params over the subscription's.
    async fn item_of(&self, sub: &Sub, delivery: &Delivery) -> Result<Item, SchedulerError> {
        let mut params = sub.params.clone();
        if let Some(headers) = &delivery.headers {
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                let Some(key) = strip_prefix_ignore_case(name, PARAM_HEADER) else {
                    continue;
                };
                if let Some(value) = values.last() {
                    let text = value.as_str();
                    let value = serde_json::from_str(text)
                        .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
                    params.insert(key.to_owned(), value);
                }
            }
        }
        let params = serde_json::Value::Object(params).to_string();
        check_params_size(
            "Sandmill-Param-*",
            &params,
            self.inner.config.max_params_bytes,
        )?;
        let input_hash = if delivery.payload.is_empty() {
            None
        } else {
            Some(self.inner.blobs.put(&delivery.payload).await?)
        };
        Ok(Item {
            params,
            input_hash,
            input_name: delivery.subject.clone(),
            inputs: Vec::new(),
            seed: None,
        })
    }

    /// A recorded result, as the recorder handed it over.
    async fn outcome_of(&self, result: TaskResult) -> Result<Outcome, SchedulerError> {
        let output = match result.verdict {
            Verdict::Failed => Err((
                result.reason.map_or("failed", |r| r.as_str()).to_owned(),
                result.error.unwrap_or_else(|| "the call failed".to_owned()),
            )),
            Verdict::Succeeded => Ok(match result.output {
                Some(OutputRef::Inline(bytes)) => bytes,
                Some(OutputRef::Blob { hash, .. }) => self.blob(&hash).await?,
                None => Vec::new(),
            }),
        };
        Ok(Outcome {
            task_id: result.task_id,
            output,
        })
    }

    /// A task's result as its row says; `None` while it is live.
    async fn recorded_outcome(&self, task_id: i64) -> Result<Option<Outcome>, SchedulerError> {
        let Some(task) = self.inner.store.task(task_id).await? else {
            return Err(SchedulerError::NotFound(format!("task {task_id}")));
        };
        let output = match task.state() {
            state if state.is_live() => return Ok(None),
            TaskState::Succeeded | TaskState::Cached => {
                Ok(match self.inner.store.task_output(task_id).await? {
                    Some(Stored::Inline(bytes)) => bytes,
                    Some(Stored::Blob(hash)) => self.blob(&hash).await?,
                    Some(Stored::Nothing) | None => Vec::new(),
                })
            }
            state => Err((
                task.reason
                    .map_or(state.as_str(), |r| r.0.as_str())
                    .to_owned(),
                task.error
                    .unwrap_or_else(|| format!("the task was {state}")),
            )),
        };
        Ok(Some(Outcome { task_id, output }))
    }

    async fn blob(&self, hash: &str) -> Result<Vec<u8>, SchedulerError> {
        self.inner
            .blobs
            .get(hash)
            .await?
            .ok_or_else(|| SchedulerError::Internal(format!("output blob {hash} is missing")))
    }

    /// Publishes a message's result on the subscription's results subject
    /// and answers its reply subject (or `Sandmill-Reply`), best effort.
    async fn send(&self, sub: &Sub, delivery: &Delivery, outcome: &Outcome) {
        let Some(client) = self.inner.nats.get() else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert("Sandmill-Task", outcome.task_id.to_string().as_str());
        headers.insert("Sandmill-Job", sub.job_id.to_string().as_str());
        headers.insert("Sandmill-Subject", delivery.subject.as_str());
        if let Some(seq) = delivery.seq {
            headers.insert("Sandmill-Seq", seq.to_string().as_str());
        }
        let payload: Bytes = match &outcome.output {
            Ok(bytes) => Bytes::from(bytes.clone()),
            Err((code, message)) => {
                headers.insert(ERROR_HEADER, code.as_str());
                let body = serde_json::json!({
                    "code": code,
                    "message": message,
                    "task_id": (outcome.task_id > 0).then_some(outcome.task_id),
                });
                Bytes::from(body.to_string())
            }
        };
        let reply = delivery.reply.clone().map(|s| s.to_string()).or_else(|| {
            delivery
                .headers
                .as_ref()
                .and_then(|h| h.get(REPLY_HEADER))
                .map(|v| v.as_str().to_owned())
                .filter(|s| crate::subscription::check_reply(s))
        });
        if let Some(reply) = reply
            && let Err(error) = client
                .publish_with_headers(reply, headers.clone(), payload.clone())
                .await
        {
            tracing::debug!(subscription = sub.name, %error, "answering a message failed");
        }
        if let Err(error) = client
            .publish_with_headers(sub.results.clone(), headers, payload)
            .await
        {
            tracing::debug!(subscription = sub.name, %error, "publishing a result failed");
        }
    }

    /// A subscription `owner` may see.
    pub async fn subscription(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<SubscriptionRow, SchedulerError> {
        self.inner
            .store
            .subscription(name)
            .await?
            .filter(|row| owner.sees(&row.tenant))
            .ok_or_else(|| SchedulerError::NotFound(format!("subscription {name}")))
    }

    /// A page of a subscription's dead letters: its tasks that failed for
    /// good, by place, after `after`.
    pub async fn dead_letters(
        &self,
        owner: &Owner,
        name: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<(SubscriptionRow, Vec<crate::store::TaskRow>), SchedulerError> {
        let row = self.subscription(owner, name).await?;
        let tasks = self
            .inner
            .store
            .tasks(row.job_id, Some(TaskState::Failed), after, limit)
            .await?;
        Ok((row, tasks))
    }
}

/// `name` without `prefix`, matched without regard to case.
fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    let rest = &name[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix) && !rest.is_empty()).then_some(rest)
}
