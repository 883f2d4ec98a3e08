//! Schedules: job files that become a new job each time they fire. Firing
//! moves `next_at` with a compare-and-set on its old value, so a firing
//! is taken once even if two loops saw it due.

use super::types::{JsonText, Text};
use super::{JOB_COLUMNS, JobRow, Store, StoreError, now_ms, on_pool};
use crate::jobfile::JobFile;
use crate::model::JobStatus;

const SCHEDULE_COLUMNS: &str = "name, job, cron, every_ms, overlap, paused, next_at, queued, fired, \
     skipped, last_fired_at, last_job_id, created_at, updated_at, tenant";

/// A schedule as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScheduleRow {
    /// Its name (the job file's).
    pub name: String,
    /// The job each firing submits (modules as `sha256:` hashes).
    pub job: JsonText<JobFile>,
    /// A cron expression with seconds, or NULL.
    pub cron: Option<String>,
    /// An interval in ms, or NULL.
    pub every_ms: Option<i64>,
    /// `skip`, `queue` or `allow`.
    pub overlap: String,
    /// 1 while paused.
    pub paused: i64,
    /// The next firing (ms since the epoch).
    pub next_at: i64,
    /// 1 while a firing waits for the previous job to end.
    pub queued: i64,
    /// Jobs submitted.
    pub fired: i64,
    /// Firings skipped because the previous job still ran.
    pub skipped: i64,
    /// The last firing.
    pub last_fired_at: Option<i64>,
    /// The last job submitted.
    pub last_job_id: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The tenant it belongs to (and its jobs).
    pub tenant: String,
}

/// A schedule to create.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The job each firing submits.
    pub job: JobFile,
    /// A cron expression, or
    pub cron: Option<String>,
    /// an interval in ms.
    pub every_ms: Option<i64>,
    /// `skip`, `queue` or `allow`.
    pub overlap: &'static str,
    /// The first firing.
    pub next_at: i64,
}

/// What the jobs of a schedule add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleTotals {
    /// Jobs submitted.
    pub jobs: i64,
    /// Of them, still running.
    pub running: i64,
    /// Their tasks.
    pub tasks: i64,
    /// Tasks that succeeded.
    pub succeeded: i64,
    /// Tasks that failed for good.
    pub failed: i64,
    /// Tasks cancelled.
    pub cancelled: i64,
}

/// What a due firing does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// Submits a job (then [`Store::schedule_fired`] records it).
    Submits,
    /// Skipped: the previous job still runs.
    Skipped,
    /// Waits for the previous job to end.
    Queued,
}

impl Store {
    /// Creates a schedule; `false` if one of that name exists.
    pub async fn put_schedule(&self, new: &NewSchedule) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO schedules (name, job, cron, every_ms, overlap, next_at, created_at, updated_at, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT (name) DO NOTHING",
        )
        .bind(new.name.clone())
        .bind(JsonText(new.job.clone()))
        .bind(new.cron.clone())
        .bind(new.every_ms)
        .bind(new.overlap)
        .bind(new.next_at)
        .bind(now)
        .bind(new.tenant.clone())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// A schedule by name.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, ScheduleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1"
        )))
        .bind(name.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Schedules of a tenant (of every tenant: `None`) by name: the first
    /// `limit` after `after`.
    pub async fn schedules(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ScheduleRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, ScheduleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name > $1 AND (CAST($3 AS TEXT) IS NULL OR tenant = $3) \
             ORDER BY name LIMIT $2"
        )))
        .bind(after.unwrap_or_default().to_owned())
        .bind(limit)
        .bind(tenant.map(str::to_owned))
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Deletes a schedule (the jobs it submitted stay); `false` if there
    /// was none.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name.to_owned())
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// Pauses a schedule, or resumes it with its next firing at `next_at`
    /// (firings missed while paused are not made up).
    pub async fn pause_schedule(
        &self,
        name: &str,
        paused: bool,
        next_at: Option<i64>,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, ScheduleRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE schedules SET paused = $2, next_at = COALESCE($3, next_at), queued = 0, updated_at = $4 \
             WHERE name = $1 RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(name.to_owned())
        .bind(i64::from(paused))
        .bind(next_at)
        .bind(now_ms())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Schedules due at `now` (or waiting to fire after their previous
    /// job), at most `limit`.
    pub async fn due_schedules(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<ScheduleRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, ScheduleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND (next_at <= $1 OR queued = 1) \
             ORDER BY next_at LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// The earliest next firing of any schedule not paused.
    pub async fn next_firing(&self) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT MIN(next_at) FROM schedules WHERE paused = 0"
        )
        .fetch_one(pool)
        .await?);
        Ok(next)
    }

    /// Takes a firing: moves `next_at` from `seen` to `next` and counts
    /// how it went; `false` if another took it first (or it was paused,
    /// deleted or replaced meanwhile).
    pub async fn take_firing(
        &self,
        name: &str,
        seen: (i64, i64),
        next: i64,
        how: Fired,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let (skipped, queued) = match how {
            Fired::Submits => (0, 0),
            Fired::Skipped => (1, 0),
            Fired::Queued => (0, 1),
        };
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE schedules SET next_at = $4, skipped = skipped + $5, queued = $6, updated_at = $7 \
             WHERE name = $1 AND next_at = $2 AND queued = $3 AND paused = 0",
        )
        .bind(name.to_owned())
        .bind(seen.0)
        .bind(seen.1)
        .bind(next)
        .bind(skipped)
        .bind(queued)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Records the job a firing submitted, and marks it as the schedule's.
    pub async fn schedule_fired(&self, name: &str, job_id: i64) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE schedules SET fired = fired + 1, last_job_id = $2, last_fired_at = $3, updated_at = $3 \
                 WHERE name = $1",
            )
            .bind(name.to_owned())
            .bind(job_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE jobs SET schedule = $1 WHERE id = $2")
                .bind(name.to_owned())
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The newest `limit` jobs a schedule submitted.
    pub async fn schedule_jobs(&self, name: &str, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE schedule = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(name.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// What every job a schedule submitted adds up to.
    pub async fn schedule_totals(&self, name: &str) -> Result<ScheduleTotals, StoreError> {
        let row: (i64, i64, i64, i64, i64, i64) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN status = $2 THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(total_tasks), 0) AS BIGINT), CAST(COALESCE(SUM(succeeded), 0) AS BIGINT), \
             CAST(COALESCE(SUM(failed), 0) AS BIGINT), CAST(COALESCE(SUM(cancelled), 0) AS BIGINT) \
             FROM jobs WHERE schedule = $1",
        )
        .bind(name.to_owned())
        .bind(Text(JobStatus::Running))
        .fetch_one(pool)
        .await?);
        Ok(ScheduleTotals {
            jobs: row.0,
            running: row.1,
            tasks: row.2,
            succeeded: row.3,
            failed: row.4,
            cancelled: row.5,
        })
    }
}
