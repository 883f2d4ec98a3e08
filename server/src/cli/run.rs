//! `sandmill run JOB.toml`: one job to completion in a throw-away embedded
//! instance; outputs go to `--output DIR` or to stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sandmill_server::embedded::{self, EmbeddedConfig};
use sandmill_server::engine::Engine;

use super::resolve::{Upload, resolve};

/// Exit code of a job that ran and failed.
const EXIT_JOB_FAILED: u8 = 2;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job file (TOML, or JSON with a .json extension).
    job: PathBuf,
    /// Inputs (files or folders): one task per file.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Write each task's output to DIR/part-NNNNN instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Worker loops (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Keep the instance's data here instead of a temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
}

struct Local<'a>(&'a Engine);

#[async_trait::async_trait]
impl Upload for Local<'_> {
    async fn module(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        Ok(self.0.upload_module(&bytes).await?.hash)
    }
    async fn input(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        Ok(self.0.upload_input(&bytes).await?)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let temp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let data = args.data.clone().unwrap_or_else(|| temp.path().to_owned());
    let mut config = EmbeddedConfig::new(data);
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    let instance = embedded::start(config).await?;
    let engine = instance.engine.clone();
    let started = Instant::now();
    let job = resolve(&args.job, &args.input, &Local(&engine)).await?;
    let job_id = engine.submit(&job).await?;
    let job = engine
        .wait(job_id, Duration::from_secs(u64::MAX / 4))
        .await?;
    let elapsed = started.elapsed();

    let store = engine.store();
    let counts = store.task_counts(job_id).await?;
    let tasks = store.tasks(job_id, i64::MAX, 0).await?;
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut stdout = Vec::new();
    for task in &tasks {
        if task.state != "succeeded" {
            eprintln!(
                "task {} ({}) {}[{}]: {}",
                task.seq,
                task.input_name,
                task.state,
                task.reason.as_deref().unwrap_or("-"),
                task.error.as_deref().unwrap_or("")
            );
            continue;
        }
        let output = match store.task_output(task.id).await? {
            Some((Some(bytes), _)) => bytes,
            Some((None, Some(hash))) => engine
                .blobs()
                .get(&hash)
                .await?
                .with_context(|| format!("output {hash} of task {} is missing", task.id))?,
            _ => Vec::new(),
        };
        match &args.output {
            Some(dir) => {
                let path = dir.join(format!("part-{:05}", task.seq));
                std::fs::write(&path, &output)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            None => stdout.extend_from_slice(&output),
        }
    }
    use std::io::Write;
    std::io::stdout()
        .write_all(&stdout)
        .context("cannot write the output")?;
    let summary: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    eprintln!(
        "job {} `{}` {}: {} task(s) ({}) in {:.2?}",
        job.id,
        job.name,
        job.status,
        job.total_tasks,
        summary.join(", "),
        elapsed
    );
    instance.shutdown().await;
    Ok(if job.status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_JOB_FAILED)
    })
}
