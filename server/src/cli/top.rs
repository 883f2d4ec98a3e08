//! `sandmill top`: the fleet live in the terminal — workers and their
//! slots, throughput, and the busiest jobs — refreshed every `--every`.
//! Throughput comes from the live event stream (`GET /v1/events`), read
//! in the background; workers from `/v1/workers` at each frame.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandmill_server::api::events::{EventView, SseParser};
use sandmill_server::api::views::{JobView, Page, WorkerStatus, WorkerView};
use sandmill_server::model::TaskState;

use super::client::Server;
use super::out::say;

/// Seconds of events throughput is measured over.
const WINDOW_SECONDS: usize = 10;
/// Workers shown at most (the first by id).
const MAX_WORKERS: usize = 50;
/// Jobs counted per second at most: past them a second's other jobs
/// count in the totals only.
const MAX_JOBS_PER_SECOND: usize = 10_000;

/// Tasks begun and ended in one second, in total and per job.
#[derive(Default)]
struct Second {
    started: u64,
    finished: u64,
    by_job: HashMap<i64, u64>,
}

/// What the event stream told, over the last [`WINDOW_SECONDS`].
struct Activity {
    began: Instant,
    /// (second since `began`, what happened in it), oldest first.
    seconds: VecDeque<(u64, Second)>,
    /// Whether the stream is connected.
    connected: bool,
}

impl Activity {
    fn now(&self) -> u64 {
        self.began.elapsed().as_secs()
    }

    fn second(&mut self) -> &mut Second {
        let now = self.now();
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s + (WINDOW_SECONDS as u64) <= now)
        {
            self.seconds.pop_front();
        }
        if self.seconds.back().is_none_or(|(s, _)| *s != now) {
            self.seconds.push_back((now, Second::default()));
        }
        // Just pushed or found.
        &mut self.seconds.back_mut().expect("a second was pushed").1
    }

    fn record(&mut self, event: &EventView) {
        let EventView::Task(task) = event else {
            return;
        };
        let second = self.second();
        match task.state {
            TaskState::Running => second.started += 1,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                second.finished += 1;
                let room = second.by_job.len() < MAX_JOBS_PER_SECOND;
                if let Some(n) = second.by_job.get_mut(&task.job_id) {
                    *n += 1;
                } else if room {
                    second.by_job.insert(task.job_id, 1);
                }
            }
            _ => {}
        }
    }

    /// Tasks per second begun and ended, and the busiest jobs' rates.
    fn rates(&mut self, jobs: usize) -> (f64, f64, Vec<(i64, f64)>) {
        let _ = self.second();
        let span = (self.now() + 1).min(WINDOW_SECONDS as u64) as f64;
        let mut started = 0;
        let mut finished = 0;
        let mut by_job: HashMap<i64, u64> = HashMap::new();
        for (_, second) in &self.seconds {
            started += second.started;
            finished += second.finished;
            for (job, n) in &second.by_job {
                *by_job.entry(*job).or_default() += n;
            }
        }
        let mut busiest: Vec<(i64, f64)> = by_job
            .into_iter()
            .map(|(job, n)| (job, n as f64 / span))
            .collect();
        busiest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        busiest.truncate(jobs);
        (started as f64 / span, finished as f64 / span, busiest)
    }
}

/// Shows the fleet every `every`, `frames` times (or until stopped).
pub async fn top(
    server: &Server,
    every: Duration,
    frames: Option<u64>,
    jobs: usize,
) -> anyhow::Result<ExitCode> {
    let activity = Arc::new(Mutex::new(Activity {
        began: Instant::now(),
        seconds: VecDeque::new(),
        connected: false,
    }));
    let follower = tokio::spawn(follow(server.clone(), activity.clone()));
    let clear = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    // The first frame comes one period in, so its rates mean something.
    let every = every.max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        ticks.tick().await;
        if let Err(error) = frame(server, &activity, jobs, clear).await {
            break Err(error);
        }
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            break Ok(ExitCode::SUCCESS);
        }
    };
    follower.abort();
    result
}

/// Draws one frame.
async fn frame(
    server: &Server,
    activity: &Mutex<Activity>,
    jobs: usize,
    clear: bool,
) -> anyhow::Result<()> {
    let workers: Page<WorkerView> = server
        .get_json(&format!("/v1/workers?limit={MAX_WORKERS}"))
        .await?;
    let (started, finished, busiest, connected) = {
        let mut activity = activity.lock().unwrap_or_else(|e| e.into_inner());
        let (started, finished, busiest) = activity.rates(jobs);
        (started, finished, busiest, activity.connected)
    };
    let mut lines = Vec::new();
    let count = |status: WorkerStatus| workers.items.iter().filter(|w| w.status == status).count();
    let live: Vec<&WorkerView> = workers
        .items
        .iter()
        .filter(|w| w.status != WorkerStatus::Lost)
        .collect();
    let slots: usize = live.iter().map(|w| w.capacity).sum();
    let busy: usize = live.iter().map(|w| w.running.len().min(w.capacity)).sum();
    lines.push(format!(
        "sandmill top  {}  {}",
        server.base,
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    ));
    lines.push(format!(
        "workers: {} live, {} draining, {} lost{}   slots: {busy} busy, {} free of {slots}",
        count(WorkerStatus::Live),
        count(WorkerStatus::Draining),
        count(WorkerStatus::Lost),
        if workers.next_cursor.is_some() {
            " (first 50)"
        } else {
            ""
        },
        slots - busy,
    ));
    lines.push(format!(
        "throughput: {finished:.1} tasks/s finished, {started:.1} started (last {WINDOW_SECONDS}s){}",
        if connected {
            ""
        } else {
            "  [event stream not connected]"
        }
    ));
    lines.push(String::new());
    lines.push(format!(
        "{:<24} {:<9} {:>5} {:>6} {:>10}",
        "WORKER", "STATUS", "BUSY", "SLOTS", "FINISHED"
    ));
    for w in &workers.items {
        let status = match w.status {
            WorkerStatus::Live => "live",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Lost => "lost",
        };
        lines.push(format!(
            "{:<24} {:<9} {:>5} {:>6} {:>10}",
            clip(&w.id, 24),
            status,
            w.running.len(),
            w.capacity,
            w.finished
        ));
    }
    lines.push(String::new());
    lines.push(format!(
        "{:<8} {:<24} {:>9} {:>17} {:<9}",
        "JOB", "NAME", "TASKS/S", "DONE/TOTAL", "STATUS"
    ));
    for (id, rate) in busiest {
        // A job deleted meanwhile, or hidden from this token: its id only.
        let (name, done, status) = match server.get_json::<JobView>(&format!("/v1/jobs/{id}")).await
        {
            Ok(job) => {
                let t = &job.tasks;
                let status = serde_json::to_value(job.status)?;
                (
                    job.name,
                    format!(
                        "{}/{}",
                        t.succeeded + t.failed + t.cancelled + t.cached,
                        t.total
                    ),
                    status.as_str().unwrap_or_default().to_owned(),
                )
            }
            Err(_) => (String::new(), String::new(), String::new()),
        };
        lines.push(format!(
            "{id:<8} {:<24} {rate:>9.1} {done:>17} {status:<9}",
            clip(&name, 24)
        ));
    }
    let mut text = String::new();
    if clear {
        text.push_str("\x1b[H\x1b[2J");
    }
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    if !clear {
        text.push('\n');
    }
    say!("{}", text.trim_end_matches('\n'));
    if !clear {
        say!("");
    }
    Ok(())
}

/// At most `n` characters of `s`.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Reads the event stream into `activity` until aborted, connecting again
/// (from the last event seen) when it drops.
async fn follow(server: Server, activity: Arc<Mutex<Activity>>) {
    let mut last_id: Option<String> = None;
    let mut retry = Duration::from_millis(200);
    loop {
        let mut request = server
            .http
            .get(format!("{}/v1/events", server.base))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last.as_str());
        }
        let response = match request.send().await.map_err(anyhow::Error::from) {
            Ok(response) => Server::check(response).await,
            Err(error) => Err(error),
        };
        let mut response = match response {
            Ok(response) => response,
            Err(_) => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        set_connected(&activity, true);
        let mut parser = SseParser::default();
        while let Ok(Some(chunk)) = response.chunk().await {
            let Ok(messages) = parser.push(&chunk) else {
                break;
            };
            let mut activity = activity.lock().unwrap_or_else(|e| e.into_inner());
            for message in messages {
                if message.id.is_some() {
                    last_id = message.id.clone();
                }
                if let Ok(event) = serde_json::from_str::<EventView>(&message.data) {
                    activity.record(&event);
                }
            }
        }
        set_connected(&activity, false);
    }
}

fn set_connected(activity: &Mutex<Activity>, connected: bool) {
    activity.lock().unwrap_or_else(|e| e.into_inner()).connected = connected;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_ends_per_job_over_the_window() {
        let mut activity = Activity {
            began: Instant::now(),
            seconds: VecDeque::new(),
            connected: true,
        };
        let second = activity.second();
        second.finished = 20;
        second.started = 2;
        second.by_job.insert(7, 15);
        second.by_job.insert(9, 5);
        let (started, finished, busiest) = activity.rates(1);
        assert_eq!((started, finished), (2.0, 20.0));
        assert_eq!(busiest, vec![(7, 15.0)]);
    }
}
