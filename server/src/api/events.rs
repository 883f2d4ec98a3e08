//! Live events as Server-Sent Events: `GET /v1/events` (everything) and
//! `GET /v1/jobs/{id}/events` (one job, its pipeline steps included).
//!
//! Each SSE message has `id:` (the event's id), `event:` (its `type`) and
//! `data:` (the [`EventView`] as JSON). A client that reconnects with
//! `Last-Event-ID` gets exactly the events after that one; if they are no
//! longer kept, a `lagged` event says so first (re-read what you follow).
//! A job's stream opens with a `job` event of its status and counts, so a
//! client never misses an end that came before it connected.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use sandmill_runtime::Reason;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::views::time;
use super::{ApiPath, AppState};
use crate::events::{Event, Hub, JobCounts, Lagged, What};
use crate::model::{JobKind, JobStatus, TaskState};
use crate::store::Store;

/// Events looked at per read of the ring: a stream yields between reads,
/// so one client never holds the ring's lock for long.
const SCAN: usize = 1024;

/// Steps of one pipeline a job stream follows at most.
const MAX_STEPS: i64 = 10_000;

/// Jobs whose tenant one stream remembers (then it forgets them all).
const MAX_KNOWN_JOBS: usize = 4096;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(all_events))
        .route("/v1/jobs/{id}/events", get(job_events))
}

/// A live event: the `data:` of one Server-Sent Event, whose `event:` is
/// this `type` and whose `id:` is this `id`. Tell them apart by `type`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventView {
    /// A task changed state: `running` (a worker took an attempt), `queued`
    /// (an attempt failed and another follows; `reason` and `error` say
    /// why), or a final state.
    Task(TaskEventView),
    /// A running task's guest said how far it is (`host.progress`); sent
    /// at most every 250 ms per task, never stored.
    Progress(ProgressEventView),
    /// A job's status or counts changed; a final status is the job's end.
    Job(JobEventView),
    /// Events after the `Last-Event-ID` given are no longer kept (or come
    /// from before the server restarted): re-read what you follow. The
    /// stream goes on after this `id`.
    Lagged(LaggedView),
}

impl EventView {
    /// Its id.
    pub fn id(&self) -> u64 {
        match self {
            EventView::Task(e) => e.id,
            EventView::Progress(e) => e.id,
            EventView::Job(e) => e.id,
            EventView::Lagged(e) => e.id,
        }
    }

    /// Its type, as the SSE `event:` field says it.
    pub fn kind(&self) -> &'static str {
        match self {
            EventView::Task(_) => "task",
            EventView::Progress(_) => "progress",
            EventView::Job(_) => "job",
            EventView::Lagged(_) => "lagged",
        }
    }
}

/// The `type` of a [`TaskEventView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    /// The only value.
    Task,
}

/// A task's change of state.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskEventView {
    /// `task`.
    pub r#type: TaskType,
    /// The event's id.
    pub id: u64,
    /// When it happened.
    #[schema(format = DateTime)]
    pub at: String,
    /// The task's job.
    pub job_id: i64,
    /// The task.
    pub task_id: i64,
    /// The attempt (from 0).
    pub attempt: i64,
    /// The task's new state.
    pub state: TaskState,
    /// Why the attempt failed.
    #[schema(value_type = Option<String>, example = "timeout")]
    pub reason: Option<Reason>,
    /// What went wrong, cut to 512 bytes (the task has all of it).
    pub error: Option<String>,
    /// The worker of the attempt.
    pub worker: Option<String>,
}

/// The `type` of a [`ProgressEventView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProgressType {
    /// The only value.
    Progress,
}

/// A running task's progress.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressEventView {
    /// `progress`.
    pub r#type: ProgressType,
    /// The event's id.
    pub id: u64,
    /// When it was received.
    #[schema(format = DateTime)]
    pub at: String,
    /// The task's job.
    pub job_id: i64,
    /// The task.
    pub task_id: i64,
    /// The attempt (from 0).
    pub attempt: i64,
    /// Units done, as the guest counts them.
    pub done: u64,
    /// Units in all, as the guest counts them.
    pub total: u64,
}

/// The `type` of a [`JobEventView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// The only value.
    Job,
}

/// A job's status and counts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEventView {
    /// `job`.
    pub r#type: JobType,
    /// The event's id.
    pub id: u64,
    /// When it happened.
    #[schema(format = DateTime)]
    pub at: String,
    /// The job.
    pub job_id: i64,
    /// The pipeline it is a step of.
    pub parent_id: Option<i64>,
    /// Its status; anything but `running` is its end.
    pub status: JobStatus,
    /// Its tasks.
    pub tasks: JobEventCounts,
}

/// A job's task counts in an event.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEventCounts {
    /// Every task of the job.
    pub total: i64,
    /// Done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// The `type` of a [`LaggedView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LaggedType {
    /// The only value.
    Lagged,
}

/// Events were missed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LaggedView {
    /// `lagged`.
    pub r#type: LaggedType,
    /// The id the stream goes on after.
    pub id: u64,
    /// When it was noticed.
    #[schema(format = DateTime)]
    pub at: String,
}

fn view(event: &Event) -> EventView {
    let at = time(event.at_ms);
    match &event.what {
        What::Task {
            task_id,
            attempt,
            state,
            reason,
            error,
            worker,
        } => EventView::Task(TaskEventView {
            r#type: TaskType::Task,
            id: event.id,
            at,
            job_id: event.job_id,
            task_id: *task_id,
            attempt: *attempt,
            state: *state,
            reason: *reason,
            error: error.clone(),
            worker: worker.clone(),
        }),
        What::Progress {
            task_id,
            attempt,
            done,
            total,
        } => EventView::Progress(ProgressEventView {
            r#type: ProgressType::Progress,
            id: event.id,
            at,
            job_id: event.job_id,
            task_id: *task_id,
            attempt: *attempt,
            done: *done,
            total: *total,
        }),
        What::Job(counts) => job_view(event.id, at, event.job_id, counts),
    }
}

fn job_view(id: u64, at: String, job_id: i64, counts: &JobCounts) -> EventView {
    EventView::Job(JobEventView {
        r#type: JobType::Job,
        id,
        at,
        job_id,
        parent_id: counts.parent_id,
        status: counts.status,
        tasks: JobEventCounts {
            total: counts.total,
            succeeded: counts.succeeded,
            failed: counts.failed,
            cancelled: counts.cancelled,
        },
    })
}

/// The `Last-Event-ID` a client sent, if any.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_field("Last-Event-ID", "not an event id (a whole number)"))
}

/// What one stream follows.
enum Follow {
    /// Everything.
    All,
    /// One job and its pipeline's steps.
    Job { id: i64, steps: BTreeSet<i64> },
}

impl Follow {
    fn keeps(&mut self, event: &Event) -> bool {
        match self {
            Follow::All => true,
            Follow::Job { id, steps } => {
                if event.job_id == *id || steps.contains(&event.job_id) {
                    return true;
                }
                // A step of the pipeline it did not know of.
                if let What::Job(counts) = &event.what
                    && counts.parent_id == Some(*id)
                {
                    steps.insert(event.job_id);
                    return true;
                }
                false
            }
        }
    }
}

/// A stream's state between two events.
struct Cursor {
    hub: Hub,
    wake: tokio::sync::watch::Receiver<u64>,
    after: u64,
    follow: Follow,
    ready: VecDeque<EventView>,
    store: Store,
    /// Only this tenant's jobs' events (`None`: every tenant's).
    tenant: Option<String>,
    /// Whether a job is the tenant's, for the jobs seen lately.
    known: std::collections::HashMap<i64, bool>,
}

impl Cursor {
    /// Whether the stream's caller may see a job's events.
    async fn shows(&mut self, job_id: i64) -> bool {
        let Some(tenant) = &self.tenant else {
            return true;
        };
        if let Some(known) = self.known.get(&job_id) {
            return *known;
        }
        let Ok(job) = self.store.job(job_id).await else {
            // Not known now; asked again at its next event.
            return false;
        };
        let shows = job.is_some_and(|job| &job.tenant == tenant);
        if self.known.len() >= MAX_KNOWN_JOBS {
            self.known.clear();
        }
        self.known.insert(job_id, shows);
        shows
    }

    /// The next event to send; `None` when the server stops.
    async fn next(&mut self) -> Option<EventView> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.hub.is_closed() {
                return None;
            }
            // Marked seen before reading: a push after the read wakes us.
            self.wake.borrow_and_update();
            let follow = &mut self.follow;
            match self.hub.read(self.after, SCAN, |e| follow.keeps(e)) {
                Ok((events, seen)) => {
                    let moved = seen != self.after;
                    self.after = seen;
                    for event in &events {
                        if self.shows(event.job_id).await {
                            self.ready.push_back(view(event));
                        }
                    }
                    if !moved && self.wake.changed().await.is_err() {
                        return None;
                    }
                }
                Err(Lagged) => {
                    self.after = self.hub.last_id();
                    self.ready.push_back(EventView::Lagged(LaggedView {
                        r#type: LaggedType::Lagged,
                        id: self.after,
                        at: super::views::now(),
                    }));
                    if let Follow::Job { id, .. } = self.follow
                        && let Ok(Some(job)) = self.store.job(id).await
                    {
                        let counts = crate::scheduler::job_counts(&job);
                        self.ready.push_back(job_view(
                            self.after,
                            super::views::now(),
                            id,
                            &counts,
                        ));
                    }
                }
            }
        }
    }
}

fn sse(cursor: Cursor) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next().await?;
        let message = SseEvent::default()
            .id(event.id().to_string())
            .event(event.kind())
            .json_data(&event)
            .unwrap_or_else(|_| SseEvent::default().comment("an event could not be encoded"));
        Some((Ok(message), cursor))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Every task and job event of the caller's tenant (an admin: of every
/// tenant), live (for dashboards). Resumable: send the last `id` seen as
/// `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "the last event id seen: resume after it", pattern = "^[0-9]{1,19}$")),
    responses((status = 200, description = "Server-Sent Events; each `data:` is an EventView", content_type = "text/event-stream", body = EventView),
        (status = 400, description = "a bad Last-Event-ID", body = ErrorBody)))]
pub async fn all_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let hub = state.scheduler.events().clone();
    let wake = hub.subscribe();
    let after = last_event_id(&headers)?.unwrap_or_else(|| hub.last_id());
    Ok(sse(Cursor {
        hub,
        wake,
        after,
        follow: Follow::All,
        ready: VecDeque::new(),
        store: state.scheduler.store().clone(),
        tenant: caller.scope().map(str::to_owned),
        known: std::collections::HashMap::new(),
    }))
}

/// One job's events, live: its tasks' changes and progress, its counts,
/// its end (a `job` event whose status is not `running`); a pipeline's
/// steps' too. Opens with a `job` event of where it is now (unless
/// resuming). Resumable: send the last `id` seen as `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "events",
    params(("id" = i64, Path),
        ("Last-Event-ID" = Option<String>, Header, description = "the last event id seen: resume after it", pattern = "^[0-9]{1,19}$")),
    responses((status = 200, description = "Server-Sent Events; each `data:` is an EventView", content_type = "text/event-stream", body = EventView),
        (status = 400, description = "a bad id or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let resume = last_event_id(&headers)?;
    let hub = state.scheduler.events().clone();
    // Subscribed before the job is read: nothing after the read is missed.
    let wake = hub.subscribe();
    let now = hub.last_id();
    let store = state.scheduler.store().clone();
    let job = super::jobs::visible_job(&store, &caller, id).await?;
    let steps = if job.kind.0 == JobKind::Pipeline {
        store
            .steps_of(id, MAX_STEPS)
            .await?
            .iter()
            .map(|s| s.id)
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut ready = VecDeque::new();
    if resume.is_none() {
        let counts = crate::scheduler::job_counts(&job);
        ready.push_back(job_view(now, super::views::now(), id, &counts));
    }
    Ok(sse(Cursor {
        hub,
        wake,
        after: resume.unwrap_or(now),
        follow: Follow::Job { id, steps },
        ready,
        store,
        // The job is the caller's: so are its steps.
        tenant: None,
        known: std::collections::HashMap::new(),
    }))
}

/// Largest SSE message a client of these streams reads (an event is a few hundred bytes).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
pub struct Message {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:`.
    pub event: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// An SSE message was longer than [`MAX_MESSAGE_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("a Server-Sent Event longer than {MAX_MESSAGE_BYTES} bytes")]
pub struct TooLarge;

/// Splits a byte stream into Server-Sent Events: the client side of these
/// streams (the CLI and the tests read them with it).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Adds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Message>, TooLarge> {
        self.buffer
            .extend(bytes.iter().copied().filter(|b| *b != b'\r'));
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let mut message = Message::default();
            let mut lines = Vec::new();
            for line in String::from_utf8_lossy(&block).lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => message.id = Some(value.to_owned()),
                    "event" => message.event = Some(value.to_owned()),
                    "data" => lines.push(value.to_owned()),
                    // Comments (keep-alives) and unknown fields.
                    _ => {}
                }
            }
            if !lines.is_empty() {
                message.data = lines.join("\n");
                messages.push(message);
            }
        }
        if self.buffer.len() > MAX_MESSAGE_BYTES {
            return Err(TooLarge);
        }
        Ok(messages)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_lines_are_put_together() {
        let mut parser = SseParser::default();
        assert!(
            parser
                .push(b": keep-alive\n\nid: 7\r\nevent: jo")
                .unwrap()
                .is_empty()
        );
        let messages = parser.push(b"b\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(
            messages,
            vec![Message {
                id: Some("7".into()),
                event: Some("job".into()),
                data: "{\"a\":\n1}".into(),
            }]
        );
        assert!(parser.push(&vec![b'x'; MAX_MESSAGE_BYTES + 1]).is_err());
    }
}
