//! Deleting jobs: by request (`DELETE /v1/jobs/{id}`) and by age
//! (`--retain`): ended top-level jobs whose end is older than the
//! retention period go, oldest first, a few at a time; so do reservations
//! that ended as long ago.

use std::time::Duration;

use super::{Scheduler, SchedulerError};
use crate::store::{DeleteRefused, now_ms};

/// Retention by default: ended jobs are kept 30 days.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Jobs looked at per sweep.
const SWEEP_JOBS: i64 = 100;

impl Scheduler {
    /// Deletes an ended job (with its steps, tasks, attempts, outputs and
    /// logs kept in the database).
    pub async fn delete_job(&self, id: i64) -> Result<u64, SchedulerError> {
        match self.inner.store.delete_job(id).await? {
            Ok(tasks) => {
                tracing::info!(job_id = id, tasks, "job deleted");
                Ok(tasks)
            }
            Err(DeleteRefused::NotFound) => Err(SchedulerError::NotFound(format!("job {id}"))),
            Err(DeleteRefused::Live) => Err(SchedulerError::Conflict(format!(
                "job {id} is running; cancel it first"
            ))),
            Err(DeleteRefused::Step(parent)) => Err(SchedulerError::Conflict(format!(
                "job {id} is a step of pipeline {parent}; delete the pipeline"
            ))),
        }
    }

    /// Deletes ended jobs older than the retention period, until stopped
    /// (a sweep every tenth of the period, between 100 ms and a minute).
    pub async fn run_retention(self) {
        let Some(retain) = self.inner.config.retain else {
            return;
        };
        let every = (retain / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            if let Err(error) = self.sweep(retain, &stopping).await {
                if *stopping.borrow() {
                    return;
                }
                tracing::warn!(%error, "retention failed; trying again later");
            }
        }
    }

    async fn sweep(
        &self,
        retain: Duration,
        stopping: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), SchedulerError> {
        let before = now_ms() - i64::try_from(retain.as_millis()).unwrap_or(i64::MAX);
        let gone = self.inner.store.prune_reservations(before).await?;
        if gone > 0 {
            tracing::info!(reservations = gone, "reservations past retention deleted");
        }
        loop {
            let ids = self.inner.store.ended_before(before, SWEEP_JOBS).await?;
            for &id in &ids {
                if *stopping.borrow() {
                    return Ok(());
                }
                // Refused: deleted meanwhile, or reopened by a retry.
                if let Ok(tasks) = self.inner.store.delete_job(id).await? {
                    tracing::info!(job_id = id, tasks, "job past retention deleted");
                }
            }
            if (ids.len() as i64) < SWEEP_JOBS {
                return Ok(());
            }
        }
    }
}
