//! `sandmill wait` and `sandmill watch`: follow a job through its live
//! events (`GET /v1/jobs/{id}/events`, Server-Sent Events), never by
//! polling. The stream opens with where the job is; a dropped connection
//! is opened again with the last event id seen, so nothing is missed or
//! shown twice.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sandmill_server::api::events::{EventView, JobEventView, SseParser};
use sandmill_server::api::views::TaskCounts;
use sandmill_server::model::{JobStatus, TaskState};

use super::client::{EXIT_FAILED, Server, counts_of};
use super::out::tell;

/// How long a lost connection is tried again before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Follows job `id` until it ends; exits 2 unless it succeeded. With
/// `verbose` (`watch`), failures and guests' progress are shown as they
/// come.
pub async fn follow(server: &Server, id: i64, verbose: bool) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut view = JobWatch::default();
    let mut last_id: Option<String> = None;
    let mut lost_since: Option<std::time::Instant> = None;
    let mut retry = Duration::from_millis(100);
    loop {
        let mut request = server
            .http
            .get(format!("{}/v1/jobs/{id}/events", server.base))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last.as_str());
        }
        let response = match request.send().await {
            Ok(response) => Server::check(response).await?,
            Err(error) => {
                let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(error).with_context(|| server.unreachable());
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        lost_since = None;
        retry = Duration::from_millis(100);
        let mut parser = SseParser::default();
        let mut response = response;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                // The server went away: open the stream again.
                Ok(None) | Err(_) => break,
            };
            for message in parser.push(&chunk)? {
                if message.id.is_some() {
                    last_id = message.id.clone();
                }
                let event: EventView = serde_json::from_str(&message.data).with_context(|| {
                    format!("an event this client cannot read: {}", message.data)
                })?;
                if let Some(status) = view.apply(id, &event, verbose, &bar) {
                    bar.finish();
                    // A pipeline's counts are its steps' sums, which its
                    // stream may not have told (it ended before it was
                    // followed): the server's. A job with tasks of its
                    // own has them in its last event: no second request.
                    let own = view.counts();
                    let counts = if view.steps.is_empty() && own.total > 0 {
                        own
                    } else {
                        server.job(id).await.map_or(own, |job| job.tasks)
                    };
                    tell!("job {id} {status}: {}", counts_of(&counts));
                    return Ok(if status == JobStatus::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_FAILED)
                    });
                }
            }
        }
    }
}

/// What the events said so far about one job.
#[derive(Default)]
struct JobWatch {
    job: Option<JobEventView>,
    /// A pipeline's steps, by job id: their counts are the pipeline's.
    steps: BTreeMap<i64, JobEventView>,
    /// Tasks of the job seen running, with their last progress.
    running: BTreeMap<i64, Option<(u64, u64)>>,
}

impl JobWatch {
    /// Applies an event; the job's final status once it ended.
    fn apply(
        &mut self,
        id: i64,
        event: &EventView,
        verbose: bool,
        bar: &indicatif::ProgressBar,
    ) -> Option<JobStatus> {
        match event {
            EventView::Job(job) if job.job_id == id => {
                bar.set_length(u64::try_from(job.tasks.total).unwrap_or(0));
                self.job = Some(job.clone());
                if job.status.is_final() {
                    self.running.clear();
                }
            }
            EventView::Job(step) if step.parent_id == Some(id) => {
                self.steps.insert(step.job_id, step.clone());
                let total: i64 = self.steps.values().map(|s| s.tasks.total).sum();
                bar.set_length(u64::try_from(total).unwrap_or(0));
            }
            EventView::Job(_) => {}
            EventView::Task(task) => match task.state {
                TaskState::Running => {
                    self.running.insert(task.task_id, None);
                }
                TaskState::Queued => {
                    self.running.remove(&task.task_id);
                    if verbose {
                        line(
                            bar,
                            format!(
                                "task {} attempt {} failed ({}), trying again: {}",
                                task.task_id,
                                task.attempt,
                                task.reason.map_or("unknown".into(), |r| r.to_string()),
                                task.error.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
                state => {
                    self.running.remove(&task.task_id);
                    if verbose && state == TaskState::Failed {
                        line(
                            bar,
                            format!(
                                "task {} failed ({}): {}",
                                task.task_id,
                                task.reason.map_or("unknown".into(), |r| r.to_string()),
                                task.error.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
            },
            EventView::Progress(p) => {
                if self.running.contains_key(&p.task_id) || self.running.len() < 10_000 {
                    self.running.insert(p.task_id, Some((p.done, p.total)));
                }
            }
            // The job event that follows says where things are.
            EventView::Lagged(_) => self.running.clear(),
        }
        let counts = self.counts();
        bar.set_position(
            u64::try_from(counts.succeeded + counts.failed + counts.cancelled).unwrap_or(0),
        );
        let mut message = counts_of(&counts);
        if verbose
            && let Some((task, Some((done, total)))) =
                self.running.iter().rev().find(|(_, p)| p.is_some())
        {
            message.push_str(&format!(" · task {task}: {done}/{total}"));
        }
        bar.set_message(message);
        self.job
            .as_ref()
            .filter(|job| job.status.is_final())
            .map(|job| job.status)
    }

    /// The counts as the events tell them.
    fn counts(&self) -> TaskCounts {
        let Some(job) = &self.job else {
            return TaskCounts::default();
        };
        // A pipeline has no tasks of its own: its steps' add up.
        let mut t = job.tasks;
        for step in self.steps.values() {
            t.total += step.tasks.total;
            t.succeeded += step.tasks.succeeded;
            t.failed += step.tasks.failed;
            t.cancelled += step.tasks.cancelled;
        }
        let running = i64::try_from(self.running.len()).unwrap_or(i64::MAX);
        let rest = (t.total - t.succeeded - t.failed - t.cancelled).max(0);
        let running = if job.status.is_final() {
            0
        } else {
            running.min(rest)
        };
        TaskCounts {
            total: t.total,
            pending: 0,
            queued: if job.status.is_final() {
                0
            } else {
                rest - running
            },
            running,
            succeeded: t.succeeded,
            failed: t.failed,
            cancelled: t.cancelled,
            cached: 0,
        }
    }
}

/// A line above the bar (or on its own when there is no bar to draw).
fn line(bar: &indicatif::ProgressBar, text: String) {
    if bar.is_hidden() {
        tell!("{text}");
    } else {
        bar.println(text);
    }
}
