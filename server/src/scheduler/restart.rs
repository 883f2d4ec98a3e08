//! Running finished tasks again by hand: `restart` one task (and with
//! `downstream`, the steps after it), `retry` a job's failed tasks and
//! blocked steps. The store makes the new runs `pending`; the dispatcher
//! publishes them as it has room, and the steps planned again wait for
//! their inputs as any step does.

use std::sync::atomic::Ordering;

use super::{SMALL_JOB, Scheduler, SchedulerError};
use crate::jobfile::LimitsSection;
use crate::model::{JobKind, JobStatus, TaskState};
use crate::store::{Item, NewJob, RestartRefused, Restarted, Retried};

/// Tasks read per page when resubmitting.
const PAGE: i64 = 1_000;

impl Scheduler {
    /// Restarts a task that ended (see [`crate::store::Store::restart_task`]).
    pub async fn restart_task(
        &self,
        task_id: i64,
        downstream: bool,
    ) -> Result<Restarted, SchedulerError> {
        let restarted = self
            .inner
            .store
            .restart_task(task_id, downstream)
            .await?
            .map_err(|refused| refusal(&format!("task {task_id}"), refused))?;
        if restarted.created {
            tracing::info!(
                task_id,
                run = restarted.task_id,
                downstream,
                "task restarted"
            );
            self.inner
                .live
                .fetch_sub(restarted.cancelled_live, Ordering::Relaxed);
            self.inner.dispatch.notify_one();
            for step in &restarted.steps {
                self.step_ready(*step).await;
            }
        }
        Ok(restarted)
    }

    /// Runs a job's failed tasks again, and plans its blocked steps again.
    pub async fn retry_job(&self, job_id: i64) -> Result<Retried, SchedulerError> {
        let retried = self
            .inner
            .store
            .retry_job(job_id)
            .await?
            .map_err(|refused| refusal(&format!("job {job_id}"), refused))?;
        tracing::info!(
            job_id,
            tasks = retried.tasks,
            steps = retried.steps.len(),
            "job retried"
        );
        self.inner.dispatch.notify_one();
        for step in &retried.steps {
            self.step_ready(*step).await;
        }
        Ok(retried)
    }
}

impl Scheduler {
    /// A new job of an ended job's tasks (with `failed`, those that did
    /// not succeed), with `limits` over its own, linked to it. Each task
    /// keeps its parameters, inputs and seed, so it computes what it did.
    pub async fn resubmit(
        &self,
        job_id: i64,
        failed: bool,
        limits: &LimitsSection,
    ) -> Result<i64, SchedulerError> {
        let store = &self.inner.store;
        let job = store
            .job(job_id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("job {job_id}")))?;
        if job.status() == JobStatus::Running {
            return Err(SchedulerError::Conflict(format!(
                "job {job_id} is running: resubmit it once it ends (or cancel it)"
            )));
        }
        if !matches!(job.kind.0, JobKind::Task | JobKind::Sweep) {
            return Err(SchedulerError::Conflict(format!(
                "job {job_id} is a {}: only tasks and sweeps are resubmitted (retry a pipeline)",
                job.kind.0
            )));
        }
        let mut new_limits = job.limits.0.clone();
        limits.apply_to(&mut new_limits)?;
        self.inner.config.ceilings.hold(&mut new_limits)?;
        let mut items = Vec::new();
        let mut after = None;
        loop {
            let page = store.tasks(job_id, None, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            for task in page {
                if failed && matches!(task.state(), TaskState::Succeeded | TaskState::Cached) {
                    continue;
                }
                items.push(Item {
                    params: task.params,
                    input_hash: task.input_hash,
                    input_name: task.input_name,
                    inputs: task.inputs.map(|i| i.0).unwrap_or_default(),
                    seed: Some(task.seed.unwrap_or(task.id)),
                });
            }
        }
        if items.is_empty() {
            return Err(SchedulerError::Conflict(format!(
                "job {job_id} has no task to resubmit{}",
                if failed {
                    " (every task succeeded)"
                } else {
                    ""
                }
            )));
        }
        let new = NewJob {
            tenant: job.tenant.clone(),
            name: job.name.clone(),
            kind: JobKind::Sweep,
            priority: u8::try_from(job.priority).unwrap_or(0),
            task_kind: job.task_kind.0,
            module_hash: job.module_hash.clone(),
            limits: new_limits,
            grants: job.grants.0.clone(),
            labels: job.labels.0.clone(),
            definition: store.job_definition(job_id).await?.unwrap_or_default(),
            task_params: job.task_params.clone(),
            task_input: None,
            task_input_name: job.task_input_name.clone(),
            total: items.len() as i64,
            items,
            max_attempts: job.max_attempts,
            queue_timeout_ms: job.queue_timeout_ms,
            mapreduce: None,
            cache: job.cache == 1,
            resubmit_of: Some(job_id),
            max_running: job.max_running,
        };
        self.charge_quota(&new.tenant, new.total).await?;
        let dispatch_now = if new.total <= SMALL_JOB {
            new.max_running.map_or(new.total, |cap| new.total.min(cap))
        } else {
            0
        };
        let (id, dispatched) = self
            .naming_blobs(|| new.blobs(), async {
                Ok(store.create_job(&new, dispatch_now).await?)
            })
            .await?;
        tracing::info!(
            job_id = id,
            of = job_id,
            tasks = new.total,
            "job resubmitted"
        );
        self.inner
            .live
            .fetch_add(dispatched.messages.len() as i64, Ordering::Relaxed);
        self.publish(dispatched.messages).await;
        if dispatched.ended {
            self.job_finished(id);
        }
        if new.total > dispatch_now {
            self.inner.dispatch.notify_one();
        }
        Ok(id)
    }
}

fn refusal(what: &str, refused: RestartRefused) -> SchedulerError {
    match refused {
        RestartRefused::NotFound => SchedulerError::NotFound(what.to_owned()),
        RestartRefused::Live(state) => SchedulerError::Conflict(format!(
            "{what} is {state}: it can be run again once it ends"
        )),
        RestartRefused::MapReduce => SchedulerError::Conflict(format!(
            "{what} belongs to a map-reduce job, whose phases are read whole: submit the job again"
        )),
        RestartRefused::Replaced(by) => SchedulerError::Conflict(format!(
            "{what} was replaced when its step was planned again after task {by} was restarted; \
             restart the current run instead"
        )),
    }
}
