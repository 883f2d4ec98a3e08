//! The commands that talk to a server: submit, status, wait, logs, fetch,
//! cancel, jobs. `LAST` stands for the last job submitted from this machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::resolve::{Upload, resolve};

/// Exit code when the job (or request) failed.
const EXIT_FAILED: u8 = 2;

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
    },
    /// A job's status and task counts (or the job list).
    Status {
        /// Job id or LAST.
        job: Option<String>,
    },
    /// Wait for a job, showing task counts per state.
    Wait {
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
    /// List the fleet's workers: live, draining or lost.
    Workers,
    /// List jobs, most recently updated first.
    Jobs {
        /// Only jobs with this status.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

struct Server {
    base: String,
    http: reqwest::Client,
}

/// A refusal from the server, shown as `error[code]: message`.
#[derive(Debug, thiserror::Error)]
#[error("[{code}] {message}")]
struct Refused {
    code: String,
    message: String,
}

impl Server {
    async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
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
            .with_context(|| format!("cannot reach {}", self.base))?;
        Self::check(response).await
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        Self::check(response).await
    }

    async fn job(&self, id: i64) -> anyhow::Result<Value> {
        Ok(self.get(&format!("/v1/jobs/{id}")).await?.json().await?)
    }
}

#[async_trait::async_trait]
impl Upload for Server {
    async fn module(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        let row: Value = self.post("/v1/modules", bytes).await?.json().await?;
        row["hash"]
            .as_str()
            .map(str::to_owned)
            .context("the server sent no hash")
    }
    async fn input(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        let row: Value = self.post("/v1/inputs", bytes).await?.json().await?;
        let input = row["input"].as_str().context("the server sent no input")?;
        Ok(input.trim_start_matches("sha256:").to_owned())
    }
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

fn counts_line(job: &Value) -> String {
    job["counts"]
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn run(server: &str, command: ClientCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let server = Server {
        base: server.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    runtime.block_on(async move {
        match command {
            ClientCommand::Submit { job, input, wait } => {
                let resolved = resolve(&job, &input, &server).await?;
                let body = serde_json::to_vec(&resolved)?;
                let created: Value = server.post("/v1/jobs", body).await?.json().await?;
                let id = created["id"]
                    .as_i64()
                    .context("the server sent no job id")?;
                remember(id);
                println!("{id}");
                if wait {
                    return wait_for(&server, id).await;
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Status { job: None } => list(&server, None, 20).await,
            ClientCommand::Status { job: Some(job) } => {
                let job = server.job(job_id(&job)?).await?;
                println!(
                    "job {} `{}` {}: {} ({} ms)",
                    job["job"]["id"],
                    job["job"]["name"].as_str().unwrap_or_default(),
                    job["job"]["status"].as_str().unwrap_or_default(),
                    counts_line(&job),
                    job["elapsed_ms"]
                );
                if let Some(why) = job["job"]["waiting"].as_str() {
                    println!("waiting: {why}");
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Wait { job } => wait_for(&server, job_id(&job)?).await,
            ClientCommand::Logs { task } => {
                let text = server
                    .get(&format!("/v1/tasks/{task}/logs"))
                    .await?
                    .bytes()
                    .await?;
                use std::io::Write;
                std::io::stdout().write_all(&text)?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Fetch { job, output } => {
                let id = job_id(&job)?;
                std::fs::create_dir_all(&output)
                    .with_context(|| format!("cannot create {}", output.display()))?;
                let mut offset = 0;
                let mut written = 0;
                loop {
                    let tasks: Vec<Value> = server
                        .get(&format!("/v1/jobs/{id}/tasks?limit=1000&offset={offset}"))
                        .await?
                        .json()
                        .await?;
                    if tasks.is_empty() {
                        break;
                    }
                    offset += tasks.len();
                    for task in tasks.iter().filter(|t| t["state"] == "succeeded") {
                        let bytes = server
                            .get(&format!("/v1/tasks/{}/output", task["id"]))
                            .await?
                            .bytes()
                            .await?;
                        let seq = task["seq"].as_i64().unwrap_or_default();
                        std::fs::write(output.join(format!("part-{seq:05}")), &bytes)?;
                        written += 1;
                    }
                }
                eprintln!("wrote {written} output(s) to {}", output.display());
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Cancel { job } => {
                let id = job_id(&job)?;
                let job: Value = server
                    .post(&format!("/v1/jobs/{id}/cancel"), Vec::new())
                    .await?
                    .json()
                    .await?;
                println!(
                    "job {id} {}: {}",
                    job["job"]["status"].as_str().unwrap_or_default(),
                    counts_line(&job)
                );
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Jobs { status, limit } => list(&server, status, limit).await,
            ClientCommand::Workers => {
                let workers: Vec<Value> = server.get("/v1/workers").await?.json().await?;
                println!(
                    "{:<20}  {:<8}  {:>8}  {:>7}  {:>9}  labels",
                    "id", "status", "capacity", "running", "finished"
                );
                for w in &workers {
                    let labels = w["labels"]
                        .as_object()
                        .map(|l| {
                            l.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<20}  {:<8}  {:>8}  {:>7}  {:>9}  {labels}",
                        w["id"].as_str().unwrap_or_default(),
                        w["status"].as_str().unwrap_or_default(),
                        w["capacity"].as_u64().unwrap_or_default(),
                        w["running"].as_array().map_or(0, Vec::len),
                        w["finished"].as_u64().unwrap_or_default(),
                    );
                }
                if workers.is_empty() {
                    eprintln!("no workers have registered");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn list(server: &Server, status: Option<String>, limit: u32) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/jobs?limit={limit}");
    if let Some(status) = status {
        path.push_str(&format!("&status={status}"));
    }
    let jobs: Vec<Value> = server.get(&path).await?.json().await?;
    println!("{:>8}  {:<10}  {:>8}  name", "id", "status", "tasks");
    for job in jobs {
        println!(
            "{:>8}  {:<10}  {:>8}  {}",
            job["id"].as_i64().unwrap_or_default(),
            job["status"].as_str().unwrap_or_default(),
            job["total_tasks"].as_i64().unwrap_or_default(),
            job["name"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the job and shows a bar until it ends; exits 2 unless it succeeded.
async fn wait_for(server: &Server, id: i64) -> anyhow::Result<ExitCode> {
    let first = server.job(id).await?;
    let total = first["job"]["total_tasks"].as_u64().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut job = first;
    loop {
        let counts = &job["counts"];
        let done: u64 = ["succeeded", "failed", "cancelled"]
            .iter()
            .map(|s| counts[s].as_u64().unwrap_or(0))
            .sum();
        bar.set_position(done);
        match job["job"]["waiting"].as_str() {
            Some(why) => bar.set_message(format!("{} (waiting: {why})", counts_line(&job))),
            None => bar.set_message(counts_line(&job)),
        }
        let status = job["job"]["status"].as_str().unwrap_or_default().to_owned();
        if status != "running" {
            bar.finish();
            eprintln!("job {id} {status}: {}", counts_line(&job));
            return Ok(if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        job = server.job(id).await?;
    }
}
