//! Schedules: job files that become a new job each time they fire, on a
//! cron expression or at an interval.
//!
//! One loop sleeps until the earliest firing (or until a schedule changes,
//! or a job ends while a firing waits for it). A due firing is taken by
//! moving its `next_at` to the first time after now, in one
//! compare-and-set, before its job is submitted: a server that was down
//! fires once on start (catch-up), never a burst, and a crash between
//! the two loses that firing rather than doubling it.

use std::time::Duration;

use super::{Owner, Scheduler, SchedulerError, SubmitOptions};
use sandmill_runtime::message::{OutputRef, Verdict};

use crate::jobfile::{Firing, Invalid, JobFile, Overlap, TaskSection};
use crate::model::JobStatus;
use crate::store::{Fired, NewSchedule, ScheduleRow, now_ms};

/// Due schedules handled per round.
const DUE_BATCH: i64 = 256;

/// A controller's state shows this many of the schedule's newest jobs.
pub const CONTROLLER_JOBS: i64 = 50;

/// Job files one controller call may return at most; more is an error
/// (nothing of that call is submitted).
pub const MAX_CONTROLLER_JOBS: usize = 100;

/// How long a controller call may wait for a worker past its timeout.
const CONTROLLER_SLACK: Duration = Duration::from_secs(30);

/// Longest sleep of the loop: a firing whose wake-up was lost waits no
/// longer than this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// When a stored schedule fires.
pub fn firing_of(row: &ScheduleRow) -> Option<Firing> {
    match (&row.cron, row.every_ms) {
        (Some(cron), _) => Some(Firing::Cron(cron.clone())),
        (None, Some(ms)) => Some(Firing::Every(Duration::from_millis(
            u64::try_from(ms).unwrap_or(1),
        ))),
        (None, None) => None,
    }
}

impl Scheduler {
    /// Creates a schedule from a job file with `schedule` or `every`: its
    /// job is checked as a submission would be; the first firing is the
    /// next one after now.
    pub async fn create_schedule(
        &self,
        owner: &Owner,
        file: &JobFile,
    ) -> Result<ScheduleRow, SchedulerError> {
        let firing = file.firing()?;
        let job = file.without_schedule();
        if job.graph(self.inner.config.max_tasks_per_job)?.is_none() {
            self.prepare(owner, &job, SubmitOptions::default()).await?;
        }
        let now = now_ms();
        let next_at = firing
            .next_after(now, now)
            .ok_or_else(|| Invalid::field("schedule", "it never fires"))?;
        let (cron, every_ms) = match &firing {
            Firing::Cron(expression) => (Some(expression.clone()), None),
            Firing::Every(every) => (
                None,
                Some(i64::try_from(every.as_millis()).unwrap_or(i64::MAX)),
            ),
        };
        let new = NewSchedule {
            tenant: owner.tenant.clone(),
            name: file.name.clone(),
            job,
            cron,
            every_ms,
            overlap: file.overlap.unwrap_or_default().as_str(),
            next_at,
        };
        if !self.inner.store.put_schedule(&new).await? {
            return Err(SchedulerError::Conflict(format!(
                "a schedule named `{}` exists; delete it first",
                file.name
            )));
        }
        self.inner.schedules.notify_one();
        self.inner
            .store
            .schedule(&file.name)
            .await?
            .ok_or_else(|| SchedulerError::Internal("a schedule vanished as it was created".into()))
    }

    /// A schedule `owner` may see.
    pub async fn schedule(&self, owner: &Owner, name: &str) -> Result<ScheduleRow, SchedulerError> {
        self.inner
            .store
            .schedule(name)
            .await?
            .filter(|row| owner.sees(&row.tenant))
            .ok_or_else(|| SchedulerError::NotFound(format!("schedule `{name}`")))
    }

    /// Pauses or resumes a schedule; a resumed one fires next at its next
    /// time after now (what it missed while paused is not made up).
    pub async fn pause_schedule(
        &self,
        owner: &Owner,
        name: &str,
        paused: bool,
    ) -> Result<ScheduleRow, SchedulerError> {
        let row = self.schedule(owner, name).await?;
        let next_at = if paused {
            None
        } else {
            let now = now_ms();
            firing_of(&row).and_then(|f| f.next_after(row.next_at.min(now), now))
        };
        let row = self
            .inner
            .store
            .pause_schedule(name, paused, next_at)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("schedule `{name}`")))?;
        self.inner.schedules.notify_one();
        Ok(row)
    }

    /// Deletes a schedule; the jobs it submitted stay.
    pub async fn delete_schedule(&self, owner: &Owner, name: &str) -> Result<(), SchedulerError> {
        self.schedule(owner, name).await?;
        if self.inner.store.delete_schedule(name).await? {
            self.inner.schedules.notify_one();
            Ok(())
        } else {
            Err(SchedulerError::NotFound(format!("schedule `{name}`")))
        }
    }

    /// Fires schedules as they fall due, until the server stops.
    pub async fn run_schedules(self) {
        let mut finished = self.inner.finished.subscribe();
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            let (wait, queued) = match self.fire_due().await {
                Ok((next, queued)) => (
                    next.map_or(MAX_SLEEP, |next| {
                        Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0))
                            .min(MAX_SLEEP)
                    }),
                    queued,
                ),
                // A failure while the server stops is the closed database.
                Err(_) if *stopping.borrow() => return,
                Err(error) => {
                    tracing::warn!(%error, "firing schedules failed; trying again in 1 s");
                    (Duration::from_secs(1), false)
                }
            };
            finished.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.schedules.notified() => {}
                // A job ended while a firing waits for one: it may go now.
                _ = finished.changed(), if queued => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    /// Fires every due schedule; returns the next firing time, and
    /// whether a firing waits for a job to end.
    async fn fire_due(&self) -> Result<(Option<i64>, bool), SchedulerError> {
        let now = now_ms();
        let mut queued = false;
        for row in self.inner.store.due_schedules(now, DUE_BATCH).await? {
            queued |= row.queued == 1;
            if let Err(error) = self.fire(&row, now).await {
                tracing::warn!(schedule = %row.name, %error, "a schedule's firing failed");
            }
        }
        Ok((self.inner.store.next_firing().await?, queued))
    }

    /// One due schedule: submits its job, or skips or queues the firing
    /// while its previous job runs.
    async fn fire(&self, row: &ScheduleRow, now: i64) -> Result<(), SchedulerError> {
        let Some(firing) = firing_of(row) else {
            return Ok(());
        };
        if row.job.0.controller.is_some() {
            return self.fire_controller(row, &firing, now).await;
        }
        let due = row.next_at <= now;
        // A queued firing keeps its place; a due one moves to the first
        // time after now (one catch-up, however many were missed).
        let next = if due {
            firing.next_after(row.next_at, now).unwrap_or(i64::MAX)
        } else {
            row.next_at
        };
        let previous_runs = match row.last_job_id {
            Some(id) => self
                .inner
                .store
                .job(id)
                .await?
                .is_some_and(|job| job.status() == JobStatus::Running),
            None => false,
        };
        let overlap = Overlap::parse(&row.overlap).unwrap_or_default();
        let how = match (previous_runs, overlap) {
            (false, _) | (true, Overlap::Allow) => Fired::Submits,
            // Still waiting for the previous job; a due firing meanwhile
            // is folded into the one that waits.
            (true, Overlap::Queue) if row.queued == 1 && !due => return Ok(()),
            (true, Overlap::Queue) => Fired::Queued,
            (true, Overlap::Skip) => Fired::Skipped,
        };
        let seen = (row.next_at, row.queued);
        if !self
            .inner
            .store
            .take_firing(&row.name, seen, next, how)
            .await?
        {
            return Ok(());
        }
        if how != Fired::Submits {
            tracing::debug!(schedule = %row.name, ?how, "the previous job still runs");
            return Ok(());
        }
        // The file was checked as its tenant's when the schedule was made.
        let job_id = self
            .submit(&Owner::checked(&row.tenant), &row.job.0)
            .await?;
        self.inner.store.schedule_fired(&row.name, job_id).await?;
        tracing::info!(schedule = %row.name, job_id, "schedule fired");
        Ok(())
    }

    /// A control loop's firing: its controller runs (one call at a time
    /// per schedule: a firing while one runs is skipped), behind the loop.
    async fn fire_controller(
        &self,
        row: &ScheduleRow,
        firing: &Firing,
        now: i64,
    ) -> Result<(), SchedulerError> {
        if row.next_at > now {
            return Ok(());
        }
        let next = firing.next_after(row.next_at, now).unwrap_or(i64::MAX);
        let running = !self.lock_controllers().insert(row.name.clone());
        let how = if running {
            Fired::Skipped
        } else {
            Fired::Submits
        };
        let taken = self
            .inner
            .store
            .take_firing(&row.name, (row.next_at, row.queued), next, how)
            .await;
        if running {
            return Ok(taken.map(|_| ())?);
        }
        if !matches!(taken, Ok(true)) {
            self.lock_controllers().remove(&row.name);
            return Ok(taken.map(|_| ())?);
        }
        let scheduler = self.clone();
        let row = row.clone();
        tokio::spawn(async move {
            if let Err(error) = scheduler.run_controller(&row).await {
                tracing::warn!(schedule = %row.name, %error, "the controller's call failed");
            }
            scheduler.lock_controllers().remove(&row.name);
        });
        Ok(())
    }

    fn lock_controllers(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Calls a schedule's controller with the schedule's state and
    /// submits the job files it returns (a JSON array; empty: nothing).
    async fn run_controller(&self, row: &ScheduleRow) -> Result<(), SchedulerError> {
        let Some(controller) = row.job.0.controller.clone() else {
            return Ok(());
        };
        // Its secrets stay out of a blob the API can show.
        let template = JobFile {
            controller: None,
            ..row.job.0.without_secrets()
        };
        let store = &self.inner.store;
        let jobs = store.schedule_jobs(&row.name, CONTROLLER_JOBS).await?;
        let totals = store.schedule_totals(&row.name).await?;
        let now = now_ms();
        let workers = self
            .workers(None, 1000)
            .await
            .map_or(0, |w| w.iter().filter(|w| !w.is_lost(now)).count());
        let state = serde_json::json!({
            "schedule": row.name,
            "at": crate::api::views::time(now),
            "template": template,
            "totals": totals,
            "jobs": jobs.iter().map(|job| serde_json::json!({
                "id": job.id,
                "name": job.name,
                "status": job.status(),
                "tasks": {
                    "total": job.total_tasks,
                    "succeeded": job.succeeded,
                    "failed": job.failed,
                    "cancelled": job.cancelled,
                },
            })).collect::<Vec<_>>(),
            "in_flight": self.in_flight(),
            "workers": workers,
        });
        let state = serde_json::to_vec(&state)
            .map_err(|e| SchedulerError::Internal(format!("the controller's state: {e}")))?;
        let input = self.upload_input(&row.tenant, &state).await?;
        let owner = Owner::tenant(row.tenant.clone());
        let limits = controller.limits.clone().unwrap_or_default();
        let call = JobFile {
            name: format!("{}.controller", row.name),
            priority: Some(5),
            task: Some(TaskSection {
                module: controller.module.clone(),
                kind: Some("task".to_owned()),
                input: Some(format!("sha256:{input}")),
                input_name: Some("state.json".to_owned()),
                params: controller.params.clone(),
            }),
            limits,
            cache: Some(false),
            ..JobFile::default()
        };
        let timeout = call
            .limits
            .timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(sandmill_runtime::sandbox::DEFAULT_TIMEOUT)
            + CONTROLLER_SLACK;
        let submitted = self
            .submit_with(
                &owner,
                &call,
                SubmitOptions {
                    wait_for_task: true,
                    default_priority: 5,
                },
            )
            .await?;
        let result = match submitted.waiter {
            Some(waiter) => waiter.result(timeout).await,
            None => None,
        }
        .ok_or_else(|| SchedulerError::Internal("the controller did not answer in time".into()))?;
        if result.verdict != Verdict::Succeeded {
            return Err(SchedulerError::Internal(format!(
                "the controller failed ({}): {}",
                result
                    .reason
                    .map_or("unknown".to_owned(), |r| r.to_string()),
                result.error.unwrap_or_default()
            )));
        }
        let output = match result.output {
            Some(OutputRef::Inline(bytes)) => bytes,
            Some(OutputRef::Blob { hash, .. }) => {
                self.inner.blobs.get(&hash).await?.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let files: Vec<JobFile> = if output.iter().all(u8::is_ascii_whitespace) {
            Vec::new()
        } else {
            serde_json::from_slice(&output).map_err(|e| {
                SchedulerError::Internal(format!(
                    "the controller's output is not a JSON array of job files: {e}"
                ))
            })?
        };
        if files.len() > MAX_CONTROLLER_JOBS {
            return Err(SchedulerError::Internal(format!(
                "the controller returned {} job files; at most {MAX_CONTROLLER_JOBS} are taken",
                files.len()
            )));
        }
        for file in &files {
            match self.submit(&owner, file).await {
                Ok(job_id) => {
                    self.inner.store.schedule_fired(&row.name, job_id).await?;
                    tracing::info!(schedule = %row.name, job_id, "the controller submitted a job");
                }
                Err(error) => {
                    tracing::warn!(schedule = %row.name, %error, "a job file the controller returned was refused")
                }
            }
        }
        Ok(())
    }
}
