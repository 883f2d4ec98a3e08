//! Pipelines between their steps. A step is accepted with no tasks; when
//! a step ends (its last result recorded), the steps that read it are
//! looked at at once: one whose inputs all succeeded gets its tasks (its
//! inputs gathered from the outputs before it, cut into lines when it fans
//! out), one with an input that failed or was blocked ends `blocked`, and
//! the pipeline ends when every step has. Event-driven: the recorder
//! starts this for each job that ended; the watcher only picks up what a
//! crash or a failed planning left behind.

use std::sync::atomic::Ordering;

use sandmill_runtime::message::{INLINE_OUTPUT_BYTES, InputPart};

use super::submit::SubmitOptions;
use super::{Owner, SMALL_JOB, Scheduler, SchedulerError, Submitted};
use crate::jobfile::{
    DEFAULT_MAX_ATTEMPTS, ForEach, Graph, Invalid, JobFile, StepInput, parse_duration,
};
use crate::model::{JobKind, JobStatus};
use crate::store::{
    DraftInput, FOLLOW_OUTPUTS, Item, NewJob, NewStep, PAUSE_BEFORE_PLANNING, SpecInput, StepRow,
};

/// Outputs read per page while gathering a step's inputs.
const OUTPUT_PAGE: i64 = 512;

/// A step's small outputs are packed into blobs of up to this many bytes
/// (a task reading them reads each once).
const PACK_BYTES: usize = 8 << 20;

/// A fan-out's lines are packed into blobs of about this size: each task
/// reads one such blob (or one longer line).
const LINE_PACK_BYTES: usize = INLINE_OUTPUT_BYTES;

/// Steps or pipelines looked at per round of the watcher's scan.
const SCAN_PAGE: i64 = 100;

/// Set once the fault above has been hit: nothing is planned any more.
static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether planning stops here (see
/// [`PAUSE_BEFORE_PLANNING`](crate::store::PAUSE_BEFORE_PLANNING)).
fn pause_before_planning(step: &StepRow) -> bool {
    if PAUSED.load(Ordering::Relaxed) {
        return true;
    }
    if step.status == JobStatus::Succeeded && std::env::var_os(PAUSE_BEFORE_PLANNING).is_some() {
        PAUSED.store(true, Ordering::Relaxed);
        eprintln!(
            "sandmill: fault injected: step {} (job {}) succeeded; what reads it is not planned",
            step.name, step.id
        );
        return true;
    }
    false
}

impl Scheduler {
    /// Accepts a `[[step]]` job: checks every step as a job of its own,
    /// stores the pipeline and its steps unplanned in one transaction,
    /// then plans the steps that read no other step.
    pub(super) async fn submit_pipeline(
        &self,
        owner: &Owner,
        job: &JobFile,
        graph: Graph,
        options: SubmitOptions,
    ) -> Result<Submitted, SchedulerError> {
        job.check()?;
        // Its steps' tasks are planned later; a tenant at its quota
        // starts none.
        self.charge_quota(&owner.tenant, 0).await?;
        let max_params = self.inner.config.max_params_bytes;
        let mut steps = Vec::with_capacity(job.steps.len());
        let within = |name: &str, error: SchedulerError| match error {
            SchedulerError::BadRequest(invalid) => {
                SchedulerError::BadRequest(invalid.within_step(name))
            }
            SchedulerError::NotFound(what) => {
                SchedulerError::NotFound(format!("step {name}: {what}"))
            }
            other => other,
        };
        for (i, step) in job.steps.iter().enumerate() {
            let own = job.step_job(i);
            let resolved = self
                .resolve(owner, &own)
                .await
                .map_err(|e| within(&step.name, e))?;
            let task_params = own
                .task_params(max_params)
                .map_err(|e| e.within_step(&step.name))?;
            self.inner
                .config
                .ceilings
                .check_attempts(own.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS))
                .map_err(|e| e.within_step(&step.name))?;
            let mapreduce = self
                .shuffle(&own, &resolved.module_hash)
                .await
                .map_err(|e| within(&step.name, e))?;
            let preprocess = match &step.preprocess {
                None => None,
                Some(module) => {
                    let mut pre = own.clone();
                    if let Some(task) = &mut pre.task {
                        task.module = module.clone();
                        task.kind = Some("preprocess".to_owned());
                    }
                    let resolved = self.resolve(owner, &pre).await.map_err(|e| match e {
                        SchedulerError::BadRequest(invalid) => {
                            SchedulerError::BadRequest(Invalid::field(
                                format!("step.{}.preprocess", step.name),
                                invalid.problem().to_owned(),
                            ))
                        }
                        other => within(&step.name, other),
                    })?;
                    Some(resolved.module_hash)
                }
            };
            let mut inputs = Vec::new();
            for input in &graph.inputs[i] {
                inputs.push(match input {
                    StepInput::Step(j) => DraftInput::Step(*j),
                    StepInput::File(text) => {
                        if text.contains('/') || text.ends_with(".wasm") || text.len() != 64 {
                            return Err(Invalid::field(
                                format!("step.{}.inputs", step.name),
                                format!("`{text}` is a path; upload it first (the CLI does) and name it sha256:<hash>"),
                            )
                            .into());
                        }
                        DraftInput::Blob {
                            hash: text.clone(),
                            name: text.clone(),
                        }
                    }
                });
            }
            let files: Vec<String> = inputs
                .iter()
                .filter_map(|i| match i {
                    DraftInput::Blob { hash, .. } => Some(hash.clone()),
                    DraftInput::Step(_) => None,
                })
                .collect();
            self.check_inputs(owner, files.iter())
                .await
                .map_err(|e| within(&step.name, e))?;
            let retry_backoff_ms = match step.retries.as_ref().and_then(|r| r.backoff.as_ref()) {
                Some(text) => {
                    let wait =
                        parse_duration(&format!("step.{}.retries.backoff", step.name), text)?;
                    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
                }
                None => 0,
            };
            steps.push(NewStep {
                job: NewJob {
                    tenant: owner.tenant.clone(),
                    name: step.name.clone(),
                    kind: JobKind::Step,
                    priority: job.priority.unwrap_or(options.default_priority),
                    task_kind: resolved.kind,
                    module_hash: resolved.module_hash,
                    limits: resolved.limits,
                    grants: resolved.grants,
                    labels: resolved.labels,
                    definition: {
                        let mut shown = step.clone();
                        if let Some(grants) = &mut shown.grants {
                            grants.hide_secrets();
                        }
                        serde_json::to_string(&shown).unwrap_or_default()
                    },
                    task_params,
                    task_input: None,
                    task_input_name: "-".to_owned(),
                    total: 0,
                    items: Vec::new(),
                    max_attempts: i64::from(own.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)),
                    queue_timeout_ms: i64::try_from(own.queue_timeout()?.as_millis())
                        .unwrap_or(i64::MAX),
                    mapreduce,
                    cache: job.cache.unwrap_or(true),
                    resubmit_of: None,
                    max_running: own.max_running.map(i64::from),
                },
                name: step.name.clone(),
                inputs,
                for_each: graph.for_each[i],
                preprocess,
                retry_backoff_ms,
            });
        }
        let first = &steps[graph.order[0]].job;
        let parent = NewJob {
            tenant: owner.tenant.clone(),
            name: job.name.clone(),
            kind: JobKind::Pipeline,
            priority: first.priority,
            task_kind: first.task_kind,
            module_hash: first.module_hash.clone(),
            limits: first.limits.clone(),
            grants: first.grants.clone(),
            labels: first.labels.clone(),
            definition: job.definition(),
            task_params: "{}".to_owned(),
            task_input: None,
            task_input_name: "-".to_owned(),
            total: 0,
            items: Vec::new(),
            max_attempts: 1,
            queue_timeout_ms: first.queue_timeout_ms,
            mapreduce: None,
            cache: job.cache.unwrap_or(true),
            resubmit_of: None,
            max_running: job.max_running.map(i64::from),
        };
        let names = || {
            let mut names = parent.blobs();
            names.extend(steps.iter().flat_map(|step| step.blobs()));
            names
        };
        let (job_id, ids) = self
            .naming_blobs(names, async {
                Ok(self
                    .inner
                    .store
                    .create_pipeline(&parent, &steps, &graph.order)
                    .await?)
            })
            .await?;
        for (i, id) in ids.iter().enumerate() {
            if graph.needs(i).is_empty() {
                self.step_ready(*id).await;
            }
        }
        Ok(Submitted {
            job_id,
            waiter: None,
        })
    }

    /// A job ended outside the recorder (every task it had left was
    /// cached): waiters are told, and what follows it is planned.
    pub(super) fn job_finished(&self, job_id: i64) {
        self.job_changed(job_id);
        let scheduler = self.clone();
        tokio::spawn(async move { scheduler.job_ended(job_id).await });
    }

    /// A job ended: if it is a pipeline's step, the steps that read it
    /// are planned or blocked, and the pipeline ends once every step has.
    pub(super) async fn job_ended(&self, job_id: i64) {
        let mut ended = vec![job_id];
        while let Some(id) = ended.pop() {
            let step = match self.inner.store.step(id).await {
                Ok(Some(step)) => step,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(job_id = id, %error, "reading a step failed; the watcher plans what follows it");
                    continue;
                }
            };
            if pause_before_planning(&step) {
                return;
            }
            // The pipeline cannot end while a step reading this one runs.
            let mut running = false;
            match self.inner.store.readers(id).await {
                Ok(readers) => {
                    for reader in readers {
                        match self.try_plan(reader).await {
                            Planned::Ended => ended.push(reader),
                            Planned::Running => running = true,
                            Planned::Nothing => {}
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(job_id = id, %error, "reading a step's readers failed; the watcher plans them")
                }
            }
            if !running {
                self.end_pipeline(step.parent_id).await;
            }
        }
    }

    /// Plans a step whose inputs may be ready, and carries on after it if
    /// it ended at once (blocked, or nothing to do).
    pub(super) async fn step_ready(&self, step_id: i64) {
        if self.try_plan(step_id).await == Planned::Ended {
            Box::pin(self.job_ended(step_id)).await;
        }
    }

    /// Ends a pipeline all of whose steps ended.
    async fn end_pipeline(&self, parent_id: i64) {
        match self.inner.store.end_pipeline_if_done(parent_id).await {
            Ok(true) => {
                tracing::info!(job_id = parent_id, "pipeline ended");
                self.job_changed(parent_id);
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(job_id = parent_id, %error, "ending a pipeline failed; the watcher ends it")
            }
        }
    }

    /// Plans or blocks a step if its inputs have all ended; returns
    /// whether the step ended now (blocked, or planned with no task).
    async fn try_plan(&self, step_id: i64) -> Planned {
        match self.plan_step(step_id).await {
            Ok(planned) => planned,
            Err(error) => {
                tracing::warn!(job_id = step_id, %error, "planning a step failed; the watcher tries again");
                Planned::Running
            }
        }
    }

    async fn plan_step(&self, step_id: i64) -> Result<Planned, SchedulerError> {
        let Some(step) = self.inner.store.step(step_id).await? else {
            return Ok(Planned::Nothing);
        };
        if step.status != JobStatus::Running {
            return Ok(Planned::Nothing);
        }
        if step.planned == 1 {
            return Ok(Planned::Running);
        }
        if step.needs_running > 0 {
            return Ok(Planned::Running);
        }
        if step.needs_failed > 0 {
            let blocked = self.inner.store.block_step(step_id).await?;
            if blocked {
                tracing::info!(job_id = step_id, step = %step.name, "a step it reads failed: blocked");
                self.job_changed(step_id);
            }
            return Ok(if blocked {
                Planned::Ended
            } else {
                Planned::Nothing
            });
        }
        let items = match self.gather(&step).await? {
            Ok(items) => items,
            Err(problem) => {
                tracing::warn!(job_id = step_id, step = %step.name, %problem, "the step cannot be planned: it fails");
                return match self.inner.store.fail_job(step_id).await? {
                    Ok(_) => {
                        self.job_changed(step_id);
                        Ok(Planned::Ended)
                    }
                    Err(_) => Ok(Planned::Nothing),
                };
            }
        };
        let total = items.len() as i64;
        // Within the pipeline's cap on tasks at once, if it has one.
        let cap = self
            .inner
            .store
            .job(step_id)
            .await?
            .and_then(|job| job.max_running);
        let Some((messages, ended)) = self
            .inner
            .store
            .plan_step(
                step_id,
                &items,
                cap.map_or(SMALL_JOB, |cap| SMALL_JOB.min(cap)),
                total <= FOLLOW_OUTPUTS && step.readers > 0 && !step.mapreduce,
            )
            .await?
        else {
            return Ok(Planned::Nothing);
        };
        tracing::debug!(job_id = step_id, step = %step.name, tasks = total, "step planned");
        self.inner
            .live
            .fetch_add(messages.len() as i64, Ordering::Relaxed);
        let sent = messages.len() as i64;
        self.publish(messages).await;
        if total > sent {
            self.inner.dispatch.notify_one();
        }
        if ended {
            self.job_changed(step_id);
            return Ok(Planned::Ended);
        }
        Ok(Planned::Running)
    }

    /// A step's tasks: one reading all its inputs, or with `for_each`,
    /// one per line of them. `Err` says why it cannot have them (too
    /// many).
    async fn gather(&self, step: &StepRow) -> Result<Result<Vec<Item>, String>, SchedulerError> {
        let mut sink = match step.spec.for_each {
            None if step.mapreduce => Sink::Splits {
                packer: Packer::new(PACK_BYTES),
                names: Vec::new(),
                items: Vec::new(),
            },
            None => Sink::Whole(Packer::new(PACK_BYTES)),
            Some(ForEach::Line) => Sink::Lines {
                packer: Packer::new(LINE_PACK_BYTES),
                lines: Vec::new(),
                items: Vec::new(),
            },
        };
        let max_tasks = self.inner.config.max_tasks_per_job;
        let names: Vec<String> = step
            .spec
            .inputs
            .iter()
            .map(|i| match i {
                SpecInput::Step { name, .. } => format!("step:{name}"),
                SpecInput::Blob { name, .. } => name.clone(),
            })
            .collect();
        for (input, name) in step.spec.inputs.iter().zip(&names) {
            match input {
                SpecInput::Blob { hash, .. } => {
                    sink.blob(self, hash, name, step, max_tasks).await?;
                }
                SpecInput::Step { job, .. } => {
                    let mut after = -1;
                    loop {
                        let page = self
                            .inner
                            .store
                            .step_outputs(*job, after, OUTPUT_PAGE)
                            .await?;
                        let Some(last) = page.last() else { break };
                        after = last.seq;
                        let full = page.len() as i64 == OUTPUT_PAGE;
                        for output in page {
                            match (output.inline, output.hash) {
                                (Some(bytes), _) => {
                                    sink.bytes(self, bytes, name, step, max_tasks).await?;
                                }
                                (None, Some(hash)) => {
                                    sink.blob(self, &hash, name, step, max_tasks).await?;
                                }
                                (None, None) => {}
                            }
                        }
                        if !full {
                            break;
                        }
                    }
                }
            }
            if let Sink::Lines { items, .. } | Sink::Splits { items, .. } = &sink
                && items.len() as u64 > max_tasks
            {
                return Ok(Err(format!(
                    "its fan-out has more than {max_tasks} lines, the limit of tasks per job"
                )));
            }
        }
        let input_name = names.join(",");
        let items = match sink {
            Sink::Whole(mut packer) => {
                packer.flush(self).await?;
                vec![Item {
                    params: step.task_params.clone(),
                    input_hash: None,
                    input_name: if input_name.is_empty() {
                        "-".to_owned()
                    } else {
                        input_name
                    },
                    inputs: packer.parts,
                    seed: None,
                }]
            }
            Sink::Lines {
                mut packer,
                lines: mut names,
                mut items,
            }
            | Sink::Splits {
                mut packer,
                mut names,
                mut items,
            } => {
                flush_lines(self, &mut packer, &mut names, &mut items, step).await?;
                items
            }
        };
        if items.len() as u64 > max_tasks {
            return Ok(Err(format!(
                "its fan-out has {} lines, more than {max_tasks}, the limit of tasks per job",
                items.len()
            )));
        }
        Ok(Ok(items))
    }

    /// Plans every step left ready and ends every pipeline left done (by a
    /// crash, or a planning that failed).
    pub(super) async fn plan_pipelines(&self) -> Result<(), SchedulerError> {
        if PAUSED.load(Ordering::Relaxed) {
            return Ok(());
        }
        for step_id in self.inner.store.ready_steps(SCAN_PAGE).await? {
            self.step_ready(step_id).await;
        }
        for parent_id in self.inner.store.done_pipelines(SCAN_PAGE).await? {
            self.end_pipeline(parent_id).await;
        }
        Ok(())
    }
}

/// What looking at a step's inputs did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planned {
    /// It ended now (blocked, failed, or nothing to run).
    Ended,
    /// It runs (planned, or waiting for inputs that run).
    Running,
    /// Nothing: it had ended already.
    Nothing,
}

/// Small pieces of input packed into blobs: what goes in is
/// remembered as a slice of the blob it lands in.
struct Packer {
    limit: usize,
    buffer: Vec<u8>,
    /// Parts of the buffer not stored yet (offset, length).
    waiting: Vec<(u64, u64)>,
    /// Parts stored.
    parts: Vec<InputPart>,
}

impl Packer {
    fn new(limit: usize) -> Self {
        Packer {
            limit,
            buffer: Vec::new(),
            waiting: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Adds bytes; stores the buffer first if they would overflow it.
    async fn add(&mut self, scheduler: &Scheduler, bytes: &[u8]) -> Result<(), SchedulerError> {
        if !self.buffer.is_empty() && self.buffer.len() + bytes.len() > self.limit {
            self.flush(scheduler).await?;
        }
        self.waiting
            .push((self.buffer.len() as u64, bytes.len() as u64));
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// A whole blob, after what is buffered.
    async fn blob(&mut self, scheduler: &Scheduler, hash: &str) -> Result<(), SchedulerError> {
        self.flush(scheduler).await?;
        self.parts.push(InputPart {
            hash: hash.to_owned(),
            offset: 0,
            len: None,
        });
        Ok(())
    }

    /// Stores the buffer; its waiting parts become slices of it (one
    /// slice when they are all of it).
    async fn flush(&mut self, scheduler: &Scheduler) -> Result<(), SchedulerError> {
        if self.buffer.is_empty() {
            self.waiting.clear();
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buffer);
        let hash = scheduler.inner.blobs.put_owned(bytes).await?;
        for (offset, len) in self.waiting.drain(..) {
            self.parts.push(InputPart {
                hash: hash.clone(),
                offset,
                len: Some(len),
            });
        }
        Ok(())
    }
}

/// Where gathered inputs go.
enum Sink {
    /// One task reads them all: small ones packed, blobs as they are.
    Whole(Packer),
    /// One task per line: lines packed, each task a slice.
    Lines {
        packer: Packer,
        /// Names of the lines in the packer not stored yet.
        lines: Vec<String>,
        items: Vec<Item>,
    },
    /// A map-reduce's maps, one per output or input read: small outputs
    /// packed, each map a slice; blobs as they are.
    Splits {
        packer: Packer,
        /// Names of the outputs in the packer not stored yet.
        names: Vec<String>,
        items: Vec<Item>,
    },
}

impl Sink {
    async fn bytes(
        &mut self,
        scheduler: &Scheduler,
        bytes: Vec<u8>,
        name: &str,
        step: &StepRow,
        max_tasks: u64,
    ) -> Result<(), SchedulerError> {
        match self {
            Sink::Whole(packer) => {
                if !bytes.is_empty() {
                    packer.add(scheduler, &bytes).await?;
                }
            }
            Sink::Lines {
                packer,
                lines,
                items,
            } => {
                for line in bytes.split(|b| *b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    if items.len() as u64 + lines.len() as u64 > max_tasks {
                        return Ok(());
                    }
                    if !packer.buffer.is_empty() && packer.buffer.len() + line.len() > packer.limit
                    {
                        flush_lines(scheduler, packer, lines, items, step).await?;
                    }
                    packer.add(scheduler, line).await?;
                    lines.push(name.to_owned());
                }
            }
            Sink::Splits {
                packer,
                names,
                items,
            } => {
                if bytes.is_empty() || items.len() as u64 + names.len() as u64 > max_tasks {
                    return Ok(());
                }
                if !packer.buffer.is_empty() && packer.buffer.len() + bytes.len() > packer.limit {
                    flush_lines(scheduler, packer, names, items, step).await?;
                }
                packer.add(scheduler, &bytes).await?;
                names.push(name.to_owned());
            }
        }
        Ok(())
    }

    async fn blob(
        &mut self,
        scheduler: &Scheduler,
        hash: &str,
        name: &str,
        step: &StepRow,
        max_tasks: u64,
    ) -> Result<(), SchedulerError> {
        match self {
            Sink::Whole(packer) => packer.blob(scheduler, hash).await,
            Sink::Splits {
                packer,
                names,
                items,
            } => {
                // In order: what is packed before it comes first.
                flush_lines(scheduler, packer, names, items, step).await?;
                if items.len() as u64 <= max_tasks {
                    items.push(Item {
                        params: step.task_params.clone(),
                        input_hash: None,
                        input_name: name.to_owned(),
                        inputs: vec![InputPart {
                            hash: hash.to_owned(),
                            offset: 0,
                            len: None,
                        }],
                        seed: None,
                    });
                }
                Ok(())
            }
            Sink::Lines { .. } => {
                let bytes = scheduler.inner.blobs.get(hash).await?.ok_or_else(|| {
                    SchedulerError::Internal(format!(
                        "step {}: its input blob {hash} is gone",
                        step.name
                    ))
                })?;
                self.bytes(scheduler, bytes, name, step, max_tasks).await
            }
        }
    }
}

/// Stores the packed lines; each becomes a task.
async fn flush_lines(
    scheduler: &Scheduler,
    packer: &mut Packer,
    lines: &mut Vec<String>,
    items: &mut Vec<Item>,
    step: &StepRow,
) -> Result<(), SchedulerError> {
    packer.flush(scheduler).await?;
    for (part, name) in packer.parts.drain(..).zip(lines.drain(..)) {
        items.push(Item {
            params: step.task_params.clone(),
            input_hash: None,
            input_name: name,
            inputs: vec![part],
            seed: None,
        });
    }
    Ok(())
}
