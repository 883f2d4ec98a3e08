//! `sandmill run JOB.toml`: one job to completion in a throw-away embedded
//! instance; outputs go to `--output DIR` or to stdout, a page of tasks at
//! a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sandmill_runtime::labels::Labels;
use sandmill_server::embedded::{self, DEFAULT_STOP_WITHIN, EmbeddedConfig};
use sandmill_server::model::{JobKind, JobStatus, TaskState};
use sandmill_server::scheduler::{DEFAULT_TENANT, Owner, Scheduler};
use sandmill_server::store::Stored;

use super::out::tell;
use super::resolve::{Upload, resolve};
use super::settings::SchedulerArgs;

/// Exit code of a job that ran and failed.
const EXIT_JOB_FAILED: u8 = 2;

/// Tasks read back per page.
const PAGE: i64 = 1_000;

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
    /// Labels its workers offer, k=v,...: as on a fleet, a job needing
    /// labels they lack waits (its status says why) until its queue
    /// timeout.
    #[arg(long, env = "SANDMILL_LABELS", default_value = "")]
    labels: String,
    /// Keep the instance's data here instead of a temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run every task, even those whose output is cached (with `--data`,
    /// from an earlier run).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

struct Local<'a>(&'a Scheduler);

#[async_trait::async_trait]
impl Upload for Local<'_> {
    async fn module(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        Ok(self
            .0
            .upload_module(DEFAULT_TENANT, bytes.into())
            .await?
            .hash)
    }
    async fn input(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        Ok(self.0.upload_input_owned(DEFAULT_TENANT, bytes).await?)
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
    config.scheduler = args.scheduler.config(None);
    // One person's own file on their own machine: the job's grants stand.
    config.scheduler.network = vec![sandmill_runtime::sandbox::net::NetRule::Any];
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    config.labels = Labels::parse(&args.labels).context("--labels")?;
    let instance = embedded::start(config).await?;
    let scheduler = instance.scheduler.clone();
    // Whatever happens, the instance stops before its folder goes.
    let ran = run_job(&scheduler, &args).await;
    instance.shutdown(DEFAULT_STOP_WITHIN).await;
    drop(temp);
    ran
}

async fn run_job(scheduler: &Scheduler, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut job = resolve(&args.job, &args.input, &Local(scheduler)).await?;
    if args.no_cache {
        job.cache = Some(false);
    }
    // A job this machine's workers cannot take would wait out its queue
    // timeout: said at once instead.
    let offers = Labels::parse(&args.labels).context("--labels")?;
    let needs = std::iter::once(&job.labels)
        .chain(job.steps.iter().filter_map(|step| step.labels.as_ref()));
    for needs in needs {
        let needs = Labels(needs.clone());
        anyhow::ensure!(
            needs.satisfied_by(&offers),
            "this job needs workers offering labels {needs}; `sandmill run` offers [{offers}]: \
             run it with --labels {needs}, or submit it to a fleet whose workers offer them"
        );
    }
    // The job's own time: accepted (its modules and inputs are in) to ended.
    let started = Instant::now();
    let job_id = scheduler.submit(&Owner::local(), &job).await?;
    let job = scheduler
        .wait(job_id, Duration::from_secs(u64::MAX / 4))
        .await?;
    let elapsed = started.elapsed();
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let store = scheduler.store();
    let (counts, cached) = if job.kind.0 == JobKind::Pipeline {
        write_pipeline(scheduler, &job, args.output.as_ref()).await?
    } else {
        write_outputs(scheduler, &job, args.output.as_ref(), true).await?;
        (store.counts(&job).await?, job.cached)
    };
    if !job.counters.0.is_empty() {
        let counters: Vec<String> = job
            .counters
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        tell!("counters: {}", counters.join(" "));
    }
    tell!(
        "job {} `{}` {}: {} task(s) ({} succeeded, {} cached, {} failed, {} cancelled) in {:.2?}",
        job.id,
        job.name,
        job.status(),
        if job.kind.0 == JobKind::Pipeline {
            counts.finished() + counts.pending + counts.queued + counts.running
        } else {
            job.total_tasks + if job.planned == 0 { job.reducers } else { 0 }
        },
        counts.succeeded,
        cached,
        counts.failed,
        counts.cancelled,
        elapsed
    );
    Ok(if job.status() == JobStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_JOB_FAILED)
    })
}

/// A pipeline's outcome: a line per step, the failures of every step,
/// and the outputs of the steps no step reads (to `dir/part-NNNNN`, or
/// `dir/<step>/part-NNNNN` when there are several). Returns its tasks'
/// counts over every step, and how many were cached.
async fn write_pipeline(
    scheduler: &Scheduler,
    job: &sandmill_server::store::JobRow,
    dir: Option<&PathBuf>,
) -> anyhow::Result<(sandmill_server::store::Counts, i64)> {
    let store = scheduler.store();
    let steps = store.steps_of(job.id, i64::MAX).await?;
    let read: std::collections::BTreeSet<i64> = store
        .edges_of(job.id)
        .await?
        .into_iter()
        .map(|(_, read)| read)
        .collect();
    let sinks: Vec<_> = steps.iter().filter(|s| !read.contains(&s.id)).collect();
    let mut sum = sandmill_server::store::Counts::default();
    let mut cached = 0;
    for step in &steps {
        let counts = store.counts(step).await?;
        sum.succeeded += counts.succeeded;
        sum.failed += counts.failed;
        sum.cancelled += counts.cancelled;
        cached += step.cached;
        tell!(
            "step {} {}: {} task(s) ({} succeeded, {} cached, {} failed)",
            step.step.as_deref().unwrap_or(&step.name),
            step.status(),
            step.total_tasks,
            counts.succeeded,
            step.cached,
            counts.failed
        );
        let sink = !read.contains(&step.id);
        let own_dir = match dir {
            Some(dir) if sink && sinks.len() > 1 => {
                let path = dir.join(step.step.as_deref().unwrap_or(&step.name));
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                Some(path)
            }
            Some(dir) => Some(dir.clone()),
            None => None,
        };
        write_outputs(scheduler, step, own_dir.as_ref(), sink).await?;
    }
    Ok((sum, cached))
}

/// Writes every succeeded task's output (to `dir/part-NNNNN`, or stdout in
/// task order) and says which tasks failed, a page at a time. Of a
/// map-reduce job, only the last phase's outputs are written, numbered by
/// partition (by split, for a map-only job).
async fn write_outputs(
    scheduler: &Scheduler,
    job: &sandmill_server::store::JobRow,
    dir: Option<&PathBuf>,
    write: bool,
) -> anyhow::Result<()> {
    let job_id = job.id;
    let first_output = match job.maps {
        Some(maps) if job.reducers > 0 => maps,
        _ => 0,
    };
    let store = scheduler.store();
    let mut after = None;
    loop {
        let tasks = store.tasks(job_id, None, after, PAGE).await?;
        let Some(last) = tasks.last() else { break };
        after = Some(last.seq);
        for task in &tasks {
            if !matches!(task.state(), TaskState::Succeeded | TaskState::Cached) {
                tell!(
                    "task {} ({}) {}[{}]: {}",
                    task.seq,
                    task.input_name,
                    task.state(),
                    task.reason.map_or("-", |r| r.0.as_str()),
                    task.error.as_deref().unwrap_or("")
                );
                continue;
            }
            if task.seq < first_output || !write {
                continue;
            }
            let output = match store.task_output(task.id).await? {
                Some(Stored::Inline(bytes)) => bytes,
                Some(Stored::Blob(hash)) => scheduler
                    .blobs()
                    .get(&hash)
                    .await?
                    .with_context(|| format!("output {hash} of task {} is missing", task.id))?,
                _ => Vec::new(),
            };
            match dir {
                Some(dir) => {
                    let path = dir.join(format!("part-{:05}", task.seq - first_output));
                    std::fs::write(&path, &output)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                None => super::out::stdout(&output).context("cannot write the output")?,
            }
        }
    }
    Ok(())
}
