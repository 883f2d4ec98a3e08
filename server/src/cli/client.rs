//! The commands that talk to a server: submit, status, wait, logs, fetch,
//! cancel, jobs, workers; task, failed, retry, restart, resubmit, replay.
//! `LAST` stands for the last job submitted from this machine. Lists are
//! read a page at a time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sandmill_server::api::reservations::ReservationView;
use sandmill_server::api::schedules::ScheduleView;
use sandmill_server::api::subscriptions::SubscriptionView;
use sandmill_server::api::views::{
    CallView, GraphView, JobCreated, JobView, ModuleView, Page, RestartRequest, ResubmitRequest,
    RetryView, TaskCounts, TaskDetail, TaskView, WorkerView,
};
use sandmill_server::jobfile::LimitsSection;
use sandmill_server::model::{JobKind, JobStatus, TaskState};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::out::{say, tell};
use super::resolve::{Upload, resolve, resolve_subscription};

/// Exit code when the job (or request) failed.
pub(super) const EXIT_FAILED: u8 = 2;

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job file (uploading its module and inputs).
    Submit {
        /// The job file.
        job: PathBuf,
        /// Inputs (files or folders): one task per file.
        #[arg(long, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Wait for the job, with a progress bar.
        #[arg(long)]
        wait: bool,
        /// Run every task, even those whose output is cached.
        #[arg(long)]
        no_cache: bool,
    },
    /// A job's status and task counts (or the job list).
    Status {
        /// Job id or LAST.
        job: Option<String>,
        /// Draw a pipeline's steps and what each reads.
        #[arg(long)]
        graph: bool,
    },
    /// A task: its state, input, output, attempts, and the runs it
    /// replaced or was replaced by.
    Task {
        /// Task id.
        task: i64,
    },
    /// The tasks of a job that did not succeed: a line each, or with
    /// `--csv` their parameters as the CSV they came from.
    Failed {
        /// Job id or LAST.
        job: String,
        /// Write their parameters as CSV, columns in their original order.
        #[arg(long)]
        csv: bool,
    },
    /// Run an ended job's tasks again as a new job, with other limits.
    Resubmit {
        /// Job id or LAST.
        job: String,
        /// Only the tasks that did not succeed.
        #[arg(long)]
        failed: bool,
        /// Memory limit, e.g. 256MiB.
        #[arg(long)]
        memory: Option<String>,
        /// Time limit, e.g. 30s.
        #[arg(long)]
        timeout: Option<String>,
        /// Fuel limit.
        #[arg(long)]
        fuel: Option<u64>,
    },
    /// Run one attempt of a task again here, in the same sandbox, from
    /// what the server recorded: its log, output and classified error.
    Replay {
        /// Task id.
        task: i64,
        /// Which attempt (from 0; default: the last).
        #[arg(long)]
        attempt: Option<i64>,
    },
    /// Run a job's failed tasks again, and its blocked steps.
    Retry {
        /// Job id or LAST.
        job: String,
    },
    /// Run a task that ended again, as a new task linked to it.
    Restart {
        /// Task id.
        task: i64,
        /// Plan every step after it again too (else they keep what they
        /// computed, and only the steps it blocked run).
        #[arg(long)]
        downstream: bool,
    },
    /// Wait for a job, showing task counts per state (from its live
    /// events: no polling); exits 2 unless it succeeded.
    Wait {
        /// Job id or LAST.
        job: String,
    },
    /// Follow a job live: a progress bar, counts per state, failures as
    /// they happen and the guests' progress; exits 2 unless it succeeded.
    Watch {
        /// Job id or LAST.
        job: String,
    },
    /// A task's logs, every attempt.
    Logs {
        /// Task id.
        task: i64,
    },
    /// Write every succeeded task's output to DIR/part-NNNNN.
    Fetch {
        /// Job id or LAST.
        job: String,
        /// Where to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Cancel a running job.
    Cancel {
        /// Job id or LAST.
        job: String,
    },
    /// Delete an ended job: its tasks, attempts, outputs and logs (the
    /// server also deletes jobs past its `--retain`).
    Delete {
        /// Job id or LAST.
        job: String,
    },
    /// List the fleet's workers: live, draining or lost.
    Workers,
    /// The fleet live: workers and their slots, throughput, the busiest
    /// jobs; redrawn every `--every` (from the live event stream).
    Top {
        /// How often to redraw.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        every: std::time::Duration,
        /// Stop after this many frames (default: until Ctrl-C). Frames
        /// follow one another when stdout is not a terminal.
        #[arg(long)]
        frames: Option<u64>,
        /// Busiest jobs shown.
        #[arg(long, default_value_t = 10)]
        jobs: usize,
    },
    /// List schedules (job files with `schedule` or `every`, created by
    /// `sandmill submit`), or pause, resume or delete one.
    Schedules {
        #[command(subcommand)]
        action: Option<ScheduleAction>,
    },
    /// Point a function at a NATS subject, from a subscription file
    /// (uploading its module); a file of a name that exists replaces it.
    Subscribe {
        /// The subscription file (TOML or JSON).
        file: PathBuf,
    },
    /// List subscriptions, or show one's dead letters (`--dead NAME`).
    Subscriptions {
        /// A subscription whose dead letters (messages that failed for
        /// good) to list.
        #[arg(long, value_name = "NAME")]
        dead: Option<String>,
    },
    /// Delete a subscription: its messages stop becoming tasks; its
    /// recorded tasks stay readable.
    Unsubscribe {
        /// Its name.
        name: String,
    },
    /// Book worker slots for a time window: while it holds, that many of
    /// your tasks go to free slots before anyone else's (others use them
    /// while you leave them idle).
    Reserve {
        /// Worker slots.
        #[arg(long)]
        slots: i64,
        /// From: an RFC 3339 time (`2026-12-05T10:00:00Z`) or `now`.
        #[arg(long, default_value = "now")]
        from: String,
        /// Until: an RFC 3339 time, or a duration from `--from` (`2h`).
        #[arg(long)]
        until: String,
        /// For another tenant (an admin's token only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List reservations, or cancel one.
    Reservations {
        #[command(subcommand)]
        action: Option<ReservationAction>,
    },
    /// List jobs, most recently updated first.
    Jobs {
        /// Only jobs with this status (running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<JobStatus>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// What to do to a schedule.
#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Stop firing until resumed.
    Pause {
        /// Its name.
        name: String,
    },
    /// Fire again, from the next time after now.
    Resume {
        /// Its name.
        name: String,
    },
    /// Fire no more (the jobs it submitted stay).
    Delete {
        /// Its name.
        name: String,
    },
}

/// What to do to a reservation.
#[derive(Subcommand, Debug)]
pub enum ReservationAction {
    /// Give the slots back: your tasks take turns with everyone's again.
    Cancel {
        /// Its id.
        id: i64,
    },
}

#[derive(Clone)]
pub(super) struct Server {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
}

/// A refusal from the server, shown as `[code] message`.
#[derive(Debug, thiserror::Error)]
#[error("[{code}] {message}")]
struct Refused {
    code: String,
    message: String,
}

impl Server {
    /// What to say when the server does not answer: where the client
    /// looked, and how to start a server or point at another.
    pub(super) fn unreachable(&self) -> String {
        format!(
            "cannot reach a Sandmill server at {}; start one with `sandmill dev`, or point at yours with --server URL or SANDMILL_SERVER",
            self.base
        )
    }

    pub(super) async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        Err(Refused {
            code: body["code"].as_str().unwrap_or(status.as_str()).to_owned(),
            message: body["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned(),
        }
        .into())
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Self::check(response).await
    }

    pub(super) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get(path)
            .await?
            .json()
            .await
            .with_context(|| format!("the server's answer to {path} is not what this client reads"))
    }

    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Self::check(response).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| self.unreachable())?;
        Self::check(response).await
    }

    pub(super) async fn job(&self, id: i64) -> anyhow::Result<JobView> {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// Every page of a list, item by item, to `each`.
    async fn pages<T: DeserializeOwned>(
        &self,
        path: &str,
        mut each: impl AsyncFnMut(T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(cursor) => format!("{path}{sep}cursor={cursor}"),
                None => path.to_owned(),
            };
            let page: Page<T> = self.get_json(&url).await?;
            for item in page.items {
                each(item).await?;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }
}

#[async_trait::async_trait]
impl Upload for Server {
    async fn module(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        let module: ModuleView = self
            .post("/v1/modules", bytes, "application/wasm")
            .await?
            .json()
            .await?;
        Ok(module.module.trim_start_matches("sha256:").to_owned())
    }
    async fn input(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        let row: Value = self
            .post("/v1/inputs", bytes, "application/octet-stream")
            .await?
            .json()
            .await?;
        let input = row["input"].as_str().context("the server sent no input")?;
        Ok(input.trim_start_matches("sha256:").to_owned())
    }
}

/// An HTTP client that sends `token` (if any) as a bearer token and, over
/// HTTPS, trusts the system's roots and the PEM certificates in `ca_cert`.
fn http_client(token: Option<&str>, ca_cert: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token has characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = sandmill_server::tls::client().default_headers(headers);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-cert {} is not a PEM certificate", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--ca-cert {} holds no certificate (BEGIN CERTIFICATE)",
            path.display()
        );
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

fn last_job_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("sandmill").join("last-job"))
}

fn remember(id: i64) {
    if let Some(file) = last_job_file() {
        let _ = file.parent().map(std::fs::create_dir_all);
        let _ = std::fs::write(file, id.to_string());
    }
}

fn job_id(text: &str) -> anyhow::Result<i64> {
    if text == "LAST" {
        let file = last_job_file().context("no home folder to remember LAST in")?;
        let saved = std::fs::read_to_string(&file)
            .context("no job submitted from this machine yet (LAST)")?;
        return saved
            .trim()
            .parse()
            .context("the remembered LAST job is damaged");
    }
    text.parse()
        .with_context(|| format!("`{text}` is not a job id (or LAST)"))
}

/// `9 succeeded, 1 failed` (states with no tasks left out).
fn counts_line(job: &JobView) -> String {
    counts_of(&job.tasks)
}

pub(super) fn counts_of(t: &TaskCounts) -> String {
    let parts: Vec<String> = [
        (t.pending, "pending"),
        (t.queued, "queued"),
        (t.running, "running"),
        (t.succeeded, "succeeded"),
        (t.failed, "failed"),
        (t.cancelled, "cancelled"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, state)| format!("{n} {state}"))
    .collect();
    if parts.is_empty() {
        "no tasks".to_owned()
    } else {
        parts.join(", ")
    }
}

pub fn run(
    server: &str,
    token: Option<&str>,
    ca_cert: Option<&Path>,
    command: ClientCommand,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let server = Server {
        base: server.trim_end_matches('/').to_owned(),
        http: http_client(token, ca_cert)?,
    };
    runtime.block_on(async move {
        match command {
            ClientCommand::Submit {
                job,
                input,
                wait,
                no_cache,
            } => {
                let mut resolved = resolve(&job, &input, &server).await?;
                if no_cache {
                    resolved.cache = Some(false);
                }
                let body = serde_json::to_vec(&resolved)?;
                if resolved.is_schedule() {
                    anyhow::ensure!(
                        !wait,
                        "a schedule has no end to wait for (`sandmill schedules` shows it)"
                    );
                    let schedule: ScheduleView = server
                        .post("/v1/schedules", body, "application/json")
                        .await?
                        .json()
                        .await?;
                    say!("{}", schedule.name);
                    tell!(
                        "schedule `{}` created; next firing {}",
                        schedule.name,
                        schedule.next_at.as_deref().unwrap_or("-")
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let created: JobCreated = server
                    .post("/v1/jobs", body, "application/json")
                    .await?
                    .json()
                    .await?;
                remember(created.id);
                say!("{}", created.id);
                if wait {
                    return super::watch::follow(&server, created.id, false).await;
                }
                // The id alone on stdout (for scripts); what next on stderr.
                tell!(
                    "job {} submitted; follow it with `sandmill watch {}` (or `sandmill status {}`)",
                    created.id,
                    created.id,
                    created.id
                );
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Status { job: None, .. } => list(&server, None, 20).await,
            ClientCommand::Status {
                job: Some(job),
                graph,
            } => {
                let job = server.job(job_id(&job)?).await?;
                say!(
                    "job {} `{}` {}: {} ({})",
                    job.id,
                    job.name,
                    job.status,
                    counts_line(&job),
                    job.elapsed
                );
                if let Some(mr) = &job.mapreduce {
                    say!(
                        "phase: {}; maps: {}; reduces: {}",
                        serde_json::to_value(mr.phase)?.as_str().unwrap_or("?"),
                        counts_of(&mr.maps),
                        counts_of(&mr.reduces)
                    );
                }
                if !job.counters.is_empty() {
                    let counters: Vec<String> = job
                        .counters
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    say!("counters: {}", counters.join(" "));
                }
                if !job.labels.is_empty() {
                    let labels: Vec<String> =
                        job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    say!("labels: {}", labels.join(","));
                }
                // The parameters every task gets (a sweep's rows are its
                // tasks': `sandmill task` shows each).
                let definition: Value = server
                    .get_json(&format!("/v1/jobs/{}/definition", job.id))
                    .await?;
                let params = ["task", "mapreduce", "sweep"]
                    .iter()
                    .map(|section| &definition[section]["params"])
                    .find(|p| p.as_object().is_some_and(|p| !p.is_empty()));
                if let Some(params) = params {
                    say!("params: {params}");
                }
                if let Some(waiting) = &job.waiting {
                    say!("waiting: {} (since {})", waiting.reason, waiting.since);
                }
                if graph {
                    let graph: GraphView = server
                        .get_json(&format!("/v1/jobs/{}/graph", job.id))
                        .await?;
                    for line in draw_graph(&graph) {
                        say!("{line}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Task { task } => {
                let detail: TaskDetail = server.get_json(&format!("/v1/tasks/{task}")).await?;
                for line in describe_task(&detail) {
                    say!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Failed { job, csv } => failed(&server, job_id(&job)?, csv).await,
            ClientCommand::Resubmit {
                job,
                failed,
                memory,
                timeout,
                fuel,
            } => {
                let id = job_id(&job)?;
                let body = serde_json::to_vec(&ResubmitRequest {
                    failed,
                    limits: LimitsSection {
                        memory,
                        timeout,
                        fuel,
                        ..LimitsSection::default()
                    },
                })?;
                let created: JobCreated = server
                    .post(&format!("/v1/jobs/{id}/resubmit"), body, "application/json")
                    .await?
                    .json()
                    .await?;
                remember(created.id);
                say!("{}", created.id);
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Replay { task, attempt } => {
                let path = match attempt {
                    Some(n) => format!("/v1/tasks/{task}/call?attempt={n}"),
                    None => format!("/v1/tasks/{task}/call"),
                };
                let call: CallView = server.get_json(&path).await?;
                let mut blobs = Vec::new();
                for hash in call.blobs() {
                    let bytes = server
                        .get(&format!("/v1/tasks/{task}/blobs/{hash}"))
                        .await?
                        .bytes()
                        .await?;
                    blobs.push((hash, bytes.to_vec()));
                }
                super::replay::replay(&call, blobs).await
            }
            ClientCommand::Retry { job } => {
                let id = job_id(&job)?;
                let retried: RetryView = server
                    .post(
                        &format!("/v1/jobs/{id}/retry"),
                        Vec::new(),
                        "application/json",
                    )
                    .await?
                    .json()
                    .await?;
                say!(
                    "job {id}: {} task(s) and {} step(s) run again",
                    retried.tasks,
                    retried.steps
                );
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Restart { task, downstream } => {
                let body = serde_json::to_vec(&RestartRequest { downstream })?;
                let detail: TaskDetail = server
                    .post(
                        &format!("/v1/tasks/{task}/restart"),
                        body,
                        "application/json",
                    )
                    .await?
                    .json()
                    .await?;
                say!("{}", detail.task.id);
                tell!(
                    "task {task} runs again as task {} (job {})",
                    detail.task.id,
                    detail.task.job_id
                );
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Wait { job } => {
                super::watch::follow(&server, job_id(&job)?, false).await
            }
            ClientCommand::Watch { job } => {
                super::watch::follow(&server, job_id(&job)?, true).await
            }
            ClientCommand::Logs { task } => {
                let text = server
                    .get(&format!("/v1/tasks/{task}/logs"))
                    .await?
                    .bytes()
                    .await?;
                super::out::stdout(&text)?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Fetch { job, output } => fetch(&server, job_id(&job)?, &output).await,
            ClientCommand::Cancel { job } => {
                let id = job_id(&job)?;
                let job: JobView = server
                    .post(
                        &format!("/v1/jobs/{id}/cancel"),
                        Vec::new(),
                        "application/json",
                    )
                    .await?
                    .json()
                    .await?;
                say!("job {id} {}: {}", job.status, counts_line(&job));
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Delete { job } => {
                let id = job_id(&job)?;
                server.delete(&format!("/v1/jobs/{id}")).await?;
                tell!("job {id} deleted");
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Jobs { status, limit } => list(&server, status, limit).await,
            ClientCommand::Schedules { action } => schedules(&server, action).await,
            ClientCommand::Reserve {
                slots,
                from,
                until,
                tenant,
            } => reserve(&server, slots, &from, &until, tenant).await,
            ClientCommand::Reservations { action } => reservations(&server, action).await,
            ClientCommand::Subscribe { file } => {
                let file = resolve_subscription(&file, &server).await?;
                let view: SubscriptionView = server
                    .post(
                        "/v1/subscriptions",
                        serde_json::to_vec(&file)?,
                        "application/json",
                    )
                    .await?
                    .json()
                    .await?;
                say!("{}", view.name);
                tell!(
                    "subscription `{}` v{} on `{}` ({}); tasks in job {}, results on {}",
                    view.name,
                    view.version,
                    view.subject,
                    if view.queue {
                        "durable"
                    } else {
                        "at most once"
                    },
                    view.job_id,
                    view.results_subject
                );
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Subscriptions { dead: None } => {
                say!(
                    "{:<24}  {:>3}  {:<28}  {:<7}  {:>8}  job",
                    "name",
                    "ver",
                    "subject",
                    "mode",
                    "inflight"
                );
                server
                    .pages("/v1/subscriptions", async |s: SubscriptionView| {
                        say!(
                            "{:<24}  {:>3}  {:<28}  {:<7}  {:>8}  {}",
                            s.name,
                            s.version,
                            s.subject,
                            if s.queue { "durable" } else { "core" },
                            s.max_in_flight,
                            s.job_id
                        );
                        Ok(())
                    })
                    .await?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Subscriptions { dead: Some(name) } => {
                say!("{:>10}  {:>10}  {:<16}  error", "place", "task", "reason");
                server
                    .pages(
                        &format!("/v1/subscriptions/{name}/dead-letters"),
                        async |t: TaskView| {
                            say!(
                                "{:>10}  {:>10}  {:<16}  {}",
                                t.seq,
                                t.id,
                                t.reason.map_or("-".to_owned(), |r| r.to_string()),
                                t.error.as_deref().unwrap_or("-").replace('\n', " ")
                            );
                            Ok(())
                        },
                    )
                    .await?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Unsubscribe { name } => {
                server.delete(&format!("/v1/subscriptions/{name}")).await?;
                tell!("subscription `{name}` deleted");
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Top {
                every,
                frames,
                jobs,
            } => super::top::top(&server, every, frames, jobs).await,
            ClientCommand::Workers => {
                say!(
                    "{:<20}  {:<8}  {:>8}  {:>7}  {:>9}  labels",
                    "id",
                    "status",
                    "capacity",
                    "running",
                    "finished"
                );
                let mut any = false;
                server
                    .pages("/v1/workers", async |w: WorkerView| {
                        any = true;
                        let labels = w
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",");
                        let status = serde_json::to_value(w.status)?;
                        say!(
                            "{:<20}  {:<8}  {:>8}  {:>7}  {:>9}  {labels}",
                            w.id,
                            status.as_str().unwrap_or_default(),
                            w.capacity,
                            w.running.len(),
                            w.finished,
                        );
                        Ok(())
                    })
                    .await?;
                if !any {
                    tell!("no workers have registered");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// A pipeline drawn a step a line, each under the steps it reads (by
/// depth: the longest chain of steps before it), with its status and
/// counts and the steps it reads.
fn draw_graph(graph: &GraphView) -> Vec<String> {
    let reads = |name: &str| -> Vec<&str> {
        graph
            .edges
            .iter()
            .filter(|e| e.to == name)
            .map(|e| e.from.as_str())
            .collect()
    };
    let mut depth = std::collections::BTreeMap::<&str, usize>::new();
    // Steps come in an order where every step follows those it reads.
    for step in &graph.steps {
        let d = reads(&step.name)
            .iter()
            .filter_map(|r| depth.get(r))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(&step.name, d);
    }
    let width = graph
        .steps
        .iter()
        .map(|s| s.name.len() + 2 * depth[s.name.as_str()])
        .max()
        .unwrap_or(0);
    graph
        .steps
        .iter()
        .map(|step| {
            let d = depth[step.name.as_str()];
            let mark = match step.status {
                JobStatus::Succeeded => "✓",
                JobStatus::Failed => "✗",
                JobStatus::Blocked => "⊘",
                JobStatus::Cancelled => "-",
                JobStatus::Running => "…",
            };
            let arrow = if d == 0 { "" } else { "└▶" };
            let name = format!("{}{arrow}{}", "  ".repeat(d.saturating_sub(1)), step.name);
            let inputs = reads(&step.name);
            let mut line = format!(
                "{mark} {name:<width$}  {:<9}  {}",
                step.status.as_str(),
                if step.planned || step.tasks.total > 0 {
                    counts_of(&step.tasks)
                } else {
                    "not planned".to_owned()
                },
                width = width + 2
            );
            if step.tasks.cached > 0 {
                line.push_str(&format!(" ({} cached)", step.tasks.cached));
            }
            // The step's own job: what `failed`, `fetch`, `logs` take.
            line.push_str(&format!("  [job {}]", step.job_id));
            if !inputs.is_empty() {
                line.push_str(&format!("  ← {}", inputs.join(", ")));
            }
            line
        })
        .collect()
}

/// Outputs downloaded at once by `fetch`.
const FETCH_AT_ONCE: usize = 16;

/// Tasks `fetch` holds at a time (their outputs are written before the
/// next are listed), so memory does not grow with the job.
const FETCH_BATCH: usize = 256;

/// Writes a job's outputs into `dir` as `part-NNNNN` (a map-reduce job's:
/// its last phase's, numbered by partition), with `index.csv` beside them
/// (part, task id, seq, params); a pipeline's, a folder per step.
async fn fetch(server: &Server, id: i64, dir: &Path) -> anyhow::Result<ExitCode> {
    let job = server.job(id).await?;
    if job.kind != JobKind::Pipeline {
        let written = fetch_job(server, &job, dir).await?;
        tell!(
            "wrote {written} output(s) and index.csv to {}",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let graph: GraphView = server.get_json(&format!("/v1/jobs/{id}/graph")).await?;
    let mut written = 0;
    for step in &graph.steps {
        let step_job = server.job(step.job_id).await?;
        written += fetch_job(server, &step_job, &dir.join(folder_name(&step.name))).await?;
    }
    tell!(
        "wrote {written} output(s) of {} step(s) to {}, a folder per step with its index.csv",
        graph.steps.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A step's name as a folder name: what is not a letter, digit, `.`, `-`
/// or `_` becomes `_` (and `.` or `..` alone would climb out).
fn folder_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.chars().all(|c| c == '.') {
        safe.replace('.', "_")
    } else {
        safe
    }
}

/// [`fetch`] of one job (not a pipeline); how many outputs it wrote.
async fn fetch_job(server: &Server, job: &JobView, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let first_output = match &job.mapreduce {
        Some(mr) if mr.reduces.total > 0 => mr.maps.total,
        _ => 0,
    };
    let index_path = dir.join("index.csv");
    let mut index = csv::Writer::from_path(&index_path)
        .with_context(|| format!("cannot write {}", index_path.display()))?;
    index.write_record(["part", "task_id", "seq", "params"])?;
    let mut batch: Vec<TaskView> = Vec::with_capacity(FETCH_BATCH);
    let mut written = 0;
    server
        .pages(
            &format!("/v1/jobs/{}/tasks?limit=1000", job.id),
            async |task: TaskView| {
                let done = matches!(task.state, TaskState::Succeeded | TaskState::Cached);
                if done && task.seq >= first_output {
                    batch.push(task);
                }
                if batch.len() >= FETCH_BATCH {
                    written +=
                        write_parts(server, &mut batch, first_output, dir, &mut index).await?;
                }
                Ok(())
            },
        )
        .await?;
    written += write_parts(server, &mut batch, first_output, dir, &mut index).await?;
    index.flush()?;
    Ok(written)
}

/// Downloads the outputs of `tasks` ([`FETCH_AT_ONCE`] at a time), writes
/// each as its part and a row of `index`; empties `tasks`.
async fn write_parts(
    server: &Server,
    tasks: &mut Vec<TaskView>,
    first_output: i64,
    dir: &Path,
    index: &mut csv::Writer<std::fs::File>,
) -> anyhow::Result<u64> {
    use futures_util::{StreamExt, TryStreamExt};
    let downloads = tasks.iter().map(|task| async move {
        let bytes = server
            .get(&format!("/v1/tasks/{}/output", task.id))
            .await?
            .bytes()
            .await?;
        let part = format!("part-{:05}", task.seq - first_output);
        std::fs::write(dir.join(&part), &bytes)
            .with_context(|| format!("cannot write {}", dir.join(&part).display()))?;
        anyhow::Ok(part)
    });
    // In order, so index.csv follows the parts.
    let parts: Vec<String> = futures_util::stream::iter(downloads)
        .buffered(FETCH_AT_ONCE)
        .try_collect()
        .await?;
    for (task, part) in tasks.iter().zip(&parts) {
        index.write_record([
            part.clone(),
            task.id.to_string(),
            task.seq.to_string(),
            task.params.to_string(),
        ])?;
    }
    let n = tasks.len() as u64;
    tasks.clear();
    Ok(n)
}

/// The tasks of a job that did not succeed, in order: a line each, or
/// their parameters as CSV (the columns of the CSV the sweep came from,
/// in its order; else the parameters' names). A pipeline's are its
/// steps', each line naming its step.
async fn failed(server: &Server, id: i64, csv: bool) -> anyhow::Result<ExitCode> {
    let job = server.job(id).await?;
    if job.kind != JobKind::Pipeline {
        let n = failed_of(server, id, csv, None).await?;
        tell!("{n} task(s) of job {id} did not succeed");
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        !csv,
        "a pipeline's steps each have their own parameters: run `sandmill failed STEP_JOB --csv` \
         for one step (`sandmill status {id} --graph` shows their job ids)"
    );
    let graph: GraphView = server.get_json(&format!("/v1/jobs/{id}/graph")).await?;
    let mut n = 0;
    for step in &graph.steps {
        n += failed_of(server, step.job_id, false, Some(&step.name)).await?;
    }
    tell!("{n} task(s) of pipeline {id}'s steps did not succeed");
    Ok(ExitCode::SUCCESS)
}

/// [`failed`] of one job (a pipeline's step: `step` names it on each
/// line); how many did not succeed.
async fn failed_of(server: &Server, id: i64, csv: bool, step: Option<&str>) -> anyhow::Result<u64> {
    // Read loosely: a step's definition is its step section, not a job
    // file.
    let definition: Value = server
        .get_json(&format!("/v1/jobs/{id}/definition"))
        .await?;
    let mut columns: Option<Vec<String>> = definition["sweep"]["columns"].as_array().map(|names| {
        names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    });
    let mut writer = csv.then(|| csv::Writer::from_writer(std::io::stdout()));
    if let (Some(writer), Some(columns)) = (writer.as_mut(), &columns) {
        writer.write_record(columns)?;
    }
    let mut n = 0;
    server
        .pages(
            &format!("/v1/jobs/{id}/tasks?limit=1000"),
            async |task: TaskView| {
                if matches!(task.state, TaskState::Succeeded | TaskState::Cached)
                    || task.state.is_live()
                {
                    return Ok(());
                }
                n += 1;
                let Some(writer) = writer.as_mut() else {
                    let step = step.map(|s| format!("step {s}: ")).unwrap_or_default();
                    say!(
                        "{step}task {} #{} {}[{}]: {}",
                        task.id,
                        task.seq,
                        task.state,
                        task.reason.map_or("-", |r| r.as_str()),
                        task.error.as_deref().unwrap_or("")
                    );
                    return Ok(());
                };
                let params = task.params.as_object().cloned().unwrap_or_default();
                let columns = match &columns {
                    Some(columns) => columns,
                    None => {
                        let names: Vec<String> = params.keys().cloned().collect();
                        writer.write_record(&names)?;
                        columns.insert(names)
                    }
                };
                writer.write_record(columns.iter().map(|c| match params.get(c) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }))?;
                Ok(())
            },
        )
        .await?;
    if let Some(mut writer) = writer {
        writer.flush()?;
    }
    Ok(n)
}

/// A task's detail, a line a fact.
fn describe_task(detail: &TaskDetail) -> Vec<String> {
    let task = &detail.task;
    let mut lines = vec![format!(
        "task {} (job {}, #{}) {}",
        task.id, task.job_id, task.seq, task.state
    )];
    lines.push(match &task.input.blob {
        Some(blob) => format!("input: {} {blob}", task.input.name),
        None => format!("input: {}", task.input.name),
    });
    if task.params != serde_json::json!({}) {
        lines.push(format!("params: {}", task.params));
    }
    if let Some(output) = &task.output {
        lines.push(format!(
            "output: {} byte(s) at {}",
            output.size, output.href
        ));
    }
    if let Some(error) = &task.error {
        let reason = task.reason.map(|r| r.as_str()).unwrap_or("-");
        lines.push(format!("error [{reason}]: {error}"));
    }
    if let Some(of) = task.restart_of {
        lines.push(format!("restart of: task {of}"));
    }
    if let Some(by) = task.replaced_by {
        lines.push(format!("replaced by: task {by}"));
    }
    if detail.attempts.is_empty() {
        lines.push(match task.state {
            TaskState::Cached => "attempts: none (its output was cached)".to_owned(),
            _ => "attempts: none".to_owned(),
        });
    }
    for a in &detail.attempts {
        let verdict = serde_json::to_value(a.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        lines.push(format!(
            "attempt {} on {}: {verdict}{} in {}{}",
            a.attempt,
            a.worker,
            a.reason
                .map(|r| format!(" [{}]", r.as_str()))
                .unwrap_or_default(),
            a.elapsed,
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    lines
}

async fn list(server: &Server, status: Option<JobStatus>, limit: u32) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/jobs?limit={}", limit.clamp(1, 1000));
    if let Some(status) = status {
        path.push_str(&format!("&status={status}"));
    }
    let jobs: Page<JobView> = server.get_json(&path).await?;
    say!("{:>8}  {:<10}  {:>10}  name", "id", "status", "tasks");
    for job in jobs.items {
        say!(
            "{:>8}  {:<10}  {:>10}  {}",
            job.id,
            job.status.as_str(),
            job.tasks.total,
            job.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandmill reserve --slots N [--from T] --until T|DURATION`.
async fn reserve(
    server: &Server,
    slots: i64,
    from: &str,
    until: &str,
    tenant: Option<String>,
) -> anyhow::Result<ExitCode> {
    // A duration counts from `--from`.
    let until = match humantime::parse_duration(until) {
        Ok(length) => {
            let start = if from.trim() == "now" {
                std::time::SystemTime::now()
            } else {
                humantime::parse_rfc3339_weak(from)
                    .with_context(|| format!("--from `{from}` is not an RFC 3339 time or `now`"))?
            };
            humantime::format_rfc3339_millis(start + length).to_string()
        }
        Err(_) => until.to_owned(),
    };
    let body = serde_json::json!({"slots": slots, "from": from, "until": until, "tenant": tenant});
    let made: ReservationView = server
        .post(
            "/v1/reservations",
            body.to_string().into_bytes(),
            "application/json",
        )
        .await?
        .json()
        .await?;
    say!("{}", made.id);
    tell!(
        "reservation {}: {} slots for `{}` from {} until {}",
        made.id,
        made.slots,
        made.tenant,
        made.from,
        made.until
    );
    Ok(ExitCode::SUCCESS)
}

/// `sandmill reservations [cancel ID]`.
async fn reservations(
    server: &Server,
    action: Option<ReservationAction>,
) -> anyhow::Result<ExitCode> {
    if let Some(ReservationAction::Cancel { id }) = action {
        server.delete(&format!("/v1/reservations/{id}")).await?;
        tell!("reservation {id} cancelled");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:>6}  {:<16}  {:>5}  {:<24}  {:<24}  now",
        "id",
        "tenant",
        "slots",
        "from",
        "until"
    );
    server
        .pages("/v1/reservations", async |r: ReservationView| {
            say!(
                "{:>6}  {:<16}  {:>5}  {:<24}  {:<24}  {}",
                r.id,
                r.tenant,
                r.slots,
                r.from,
                r.until,
                if r.active { "holding" } else { "-" }
            );
            Ok(())
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// `sandmill schedules [pause|resume|delete NAME]`.
async fn schedules(server: &Server, action: Option<ScheduleAction>) -> anyhow::Result<ExitCode> {
    let (path, verb) = match &action {
        None => {
            say!(
                "{:<24}  {:<16}  {:<6}  {:>6}  {:>7}  {:<24}  last job",
                "name",
                "when",
                "overlap",
                "fired",
                "skipped",
                "next"
            );
            server
                .pages("/v1/schedules", async |s: ScheduleView| {
                    let when = match (&s.schedule, &s.every) {
                        (Some(cron), _) => cron.clone(),
                        (None, Some(every)) => format!("every {every}"),
                        (None, None) => "-".to_owned(),
                    };
                    let overlap = serde_json::to_value(s.overlap)?;
                    say!(
                        "{:<24}  {:<16}  {:<6}  {:>6}  {:>7}  {:<24}  {}",
                        s.name,
                        when,
                        overlap.as_str().unwrap_or_default(),
                        s.fired,
                        s.skipped,
                        s.next_at.as_deref().unwrap_or("paused"),
                        s.last_job_id.map_or("-".to_owned(), |id| id.to_string())
                    );
                    Ok(())
                })
                .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(ScheduleAction::Pause { name }) => (format!("/v1/schedules/{name}/pause"), "paused"),
        Some(ScheduleAction::Resume { name }) => {
            (format!("/v1/schedules/{name}/resume"), "resumed")
        }
        Some(ScheduleAction::Delete { name }) => {
            server.delete(&format!("/v1/schedules/{name}")).await?;
            tell!("schedule `{name}` deleted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let schedule: ScheduleView = server
        .post(&path, Vec::new(), "application/json")
        .await?
        .json()
        .await?;
    tell!(
        "schedule `{}` {verb}; next firing {}",
        schedule.name,
        schedule.next_at.as_deref().unwrap_or("-")
    );
    Ok(ExitCode::SUCCESS)
}
