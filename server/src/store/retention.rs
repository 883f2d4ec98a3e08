//! Removing jobs: `DELETE /v1/jobs/{id}` and `--retain`. A job goes with
//! its pipeline's steps, their tasks, attempts (and so the outputs and
//! logs stored in rows), items and dependencies; other jobs that point to
//! it (resubmitted from it, tasks restarted from its tasks) forget it.
//! Tasks go a chunk per transaction, so a job of a million tasks never
//! holds one long transaction; a stop half-way leaves the job with fewer
//! tasks, and the next deletion finishes it (the tenant's stored bytes
//! count the job until its row goes). Blobs stay (they are
//! content-addressed and may be shared).

use super::{Store, StoreError, on_pool};
use crate::model::JobStatus;

/// Tasks removed per transaction.
const DELETE_CHUNK: i64 = 2_000;

/// Holds an ended job's row for the transaction (a retry reopening it
/// waits), and touches nothing when it runs again: no task of a running
/// job is deleted.
const STILL_ENDED: &str =
    "UPDATE jobs SET updated_at = updated_at WHERE id = $1 AND status <> 'running'";

/// Why a job cannot be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteRefused {
    /// No such job.
    NotFound,
    /// It is still running (cancel it first).
    Live,
    /// It is a step of this pipeline (delete the pipeline).
    Step(i64),
}

impl Store {
    /// Deletes an ended top-level job and everything of it; returns how
    /// many tasks went.
    pub async fn delete_job(&self, id: i64) -> Result<Result<u64, DeleteRefused>, StoreError> {
        let Some(job) = self.job(id).await? else {
            return Ok(Err(DeleteRefused::NotFound));
        };
        if let Some(parent) = job.parent_id {
            return Ok(Err(DeleteRefused::Step(parent)));
        }
        if job.status.0 == JobStatus::Running {
            return Ok(Err(DeleteRefused::Live));
        }
        let mut jobs: Vec<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT id FROM jobs WHERE parent_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?);
        jobs.push(id);
        let mut removed = 0;
        for &job_id in &jobs {
            loop {
                match self.delete_task_chunk(id, job_id).await? {
                    None => return Ok(Err(DeleteRefused::Live)),
                    Some(0) => break,
                    Some(n) => removed += n,
                }
            }
        }
        let list = jobs
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            if sqlx::query(STILL_ENDED).bind(id).execute(&mut *tx).await?.rows_affected() == 0 {
                return Ok(Err(DeleteRefused::Live));
            }
            for statement in [
                // The tenant's stored bytes, less this job's.
                format!(
                    "UPDATE tenant_storage SET bytes = bytes - \
                     (SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE id IN ({list})) \
                     WHERE tenant = (SELECT tenant FROM jobs WHERE id = {id})"
                ),
                format!("DELETE FROM job_items WHERE job_id IN ({list})"),
                format!("DELETE FROM job_deps WHERE job_id IN ({list}) OR needs_id IN ({list})"),
                format!("UPDATE jobs SET resubmit_of = NULL WHERE resubmit_of IN ({list})"),
                format!("DELETE FROM jobs WHERE parent_id = {id}"),
                format!("DELETE FROM jobs WHERE id = {id}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(Ok(removed))
    }

    /// Deletes up to [`DELETE_CHUNK`] tasks of a job (`top` or one of its
    /// steps) and their attempts; returns how many went, or `None` when
    /// `top` runs again (a retry reopened it meanwhile).
    async fn delete_task_chunk(&self, top: i64, job_id: i64) -> Result<Option<u64>, StoreError> {
        let removed = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            if sqlx::query(STILL_ENDED).bind(top).execute(&mut *tx).await?.rows_affected() == 0 {
                return Ok(None);
            }
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM tasks WHERE job_id = $1 LIMIT $2")
                .bind(job_id)
                .bind(DELETE_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
            let mut removed = 0;
            if !ids.is_empty() {
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
                for statement in [
                    format!("UPDATE tasks SET restart_of = NULL WHERE restart_of IN ({list})"),
                    format!("DELETE FROM attempts WHERE task_id IN ({list})"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
                }
                removed = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM tasks WHERE id IN ({list})")))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            removed
        });
        Ok(Some(removed))
    }

    /// Up to `limit` ended top-level jobs that ended before `before` (ms),
    /// oldest first.
    pub async fn ended_before(&self, before: i64, limit: i64) -> Result<Vec<i64>, StoreError> {
        let ids = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT id FROM jobs WHERE parent_id IS NULL AND status <> 'running' \
             AND finished_at < $1 ORDER BY finished_at, id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(ids)
    }
}
