//! Running finished tasks again: `restart` (one task, and with
//! `downstream` the steps after it) and `retry` (a job's failed tasks and
//! blocked steps). A task run again gets a new row at its place (`seq`),
//! linked by `restart_of` to the one it replaces, which stays readable
//! with `replaced_by` set. The new run waits as `pending` until the
//! dispatcher has room (`jobs.reruns`); its job, and its pipeline, reopen.

use sqlx::Row;

use super::types::Text;
use super::{LIVE_SQL, Store, StoreError, now_ms, on_pool, per_backend};
use crate::model::{JobKind, JobStatus, TaskState};

/// Why a task cannot be restarted.
#[derive(Debug, PartialEq, Eq)]
pub enum RestartRefused {
    /// No such task.
    NotFound,
    /// It has not ended.
    Live(TaskState),
    /// It is a map-reduce job's: its partitions are read whole.
    MapReduce,
    /// It was replaced when its step was planned again after a restart
    /// upstream (by that run).
    Replaced(i64),
}

/// What a restart did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restarted {
    /// The new run (or the one an earlier restart of the same task made).
    pub task_id: i64,
    /// Whether this call made it.
    pub created: bool,
    /// Its job.
    pub job_id: i64,
    /// Steps after it to plan again (reset, or no longer blocked).
    pub steps: Vec<i64>,
    /// Queued or running tasks of those steps that were cancelled.
    pub cancelled_live: i64,
}

/// What a retry did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Failed tasks run again.
    pub tasks: i64,
    /// Blocked or unplanned steps that will be planned again.
    pub steps: Vec<i64>,
}

per_backend! {
    /// Reopens a job that ended (and its pipeline).
    pub(crate) async fn reopen(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let parent: Option<i64> = sqlx::query(
            "UPDATE jobs SET status = $1, finished_at = NULL, updated_at = $2 WHERE id = $3 \
             RETURNING parent_id",
        )
        .bind(Text(JobStatus::Running))
        .bind(now)
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .flatten();
        if let Some(parent) = parent {
            sqlx::query(
                "UPDATE jobs SET status = $1, finished_at = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(Text(JobStatus::Running))
            .bind(now)
            .bind(parent)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// The steps that read this one, directly or not, nearest first.
    pub(crate) async fn downstream(
        tx: &mut sqlx::Transaction<'static, Db>,
        step_id: i64,
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut found = Vec::new();
        let mut next = vec![step_id];
        while let Some(id) = next.pop() {
            let readers = sqlx::query("SELECT job_id FROM job_deps WHERE needs_id = $1 ORDER BY job_id")
                .bind(id)
                .fetch_all(&mut **tx)
                .await?;
            for reader in readers {
                let reader: i64 = reader.try_get(0)?;
                if !found.contains(&reader) {
                    found.push(reader);
                    next.push(reader);
                }
            }
        }
        Ok(found)
    }

    /// Puts a step back to before it was planned: its tasks replaced (by
    /// `cause`), the live ones cancelled, its counts zero. Returns how
    /// many queued or running tasks it cancelled.
    pub(crate) async fn replan(
        tx: &mut sqlx::Transaction<'static, Db>,
        step_id: i64,
        cause: i64,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let live = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tasks SET state = $1, finished_at = $2 WHERE job_id = $3 AND {LIVE_SQL}"
        )))
        .bind(Text(TaskState::Cancelled))
        .bind(now)
        .bind(step_id)
        .execute(&mut **tx)
        .await?
        .rows_affected() as i64;
        sqlx::query("UPDATE tasks SET state = $1, finished_at = $2 WHERE job_id = $3 AND state = $4")
            .bind(Text(TaskState::Cancelled))
            .bind(now)
            .bind(step_id)
            .bind(Text(TaskState::Pending))
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE tasks SET replaced_by = $1 WHERE job_id = $2 AND replaced_by IS NULL")
            .bind(cause)
            .bind(step_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM job_items WHERE job_id = $1")
            .bind(step_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE jobs SET status = $1, planned = 0, maps = NULL, total_tasks = 0, dispatched = 0, succeeded = 0, \
             failed = 0, cancelled = 0, cached = 0, reruns = 0, has_items = 0, counters = '{}', \
             waiting = NULL, waiting_since = NULL, finished_at = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(Text(JobStatus::Running))
        .bind(now)
        .bind(step_id)
        .execute(&mut **tx)
        .await?;
        Ok(live)
    }

    /// A blocked or unplanned step that ended back to waiting for its
    /// inputs. Returns whether it changed.
    pub(crate) async fn unblock(
        tx: &mut sqlx::Transaction<'static, Db>,
        step_id: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query(
            "UPDATE jobs SET status = $1, cancelled = 0, finished_at = NULL, updated_at = $2 \
             WHERE id = $3 AND planned = 0 AND maps IS NULL AND status <> $1",
        )
        .bind(Text(JobStatus::Running))
        .bind(now)
        .bind(step_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Runs a job's failed tasks again. Returns how many.
    pub(crate) async fn rerun_failed(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        // Marked first (0: being replaced), so that the new runs can take
        // their places; then linked both ways.
        let n = sqlx::query(
            "UPDATE tasks SET replaced_by = 0 WHERE job_id = $1 AND state = $2 AND replaced_by IS NULL",
        )
        .bind(job_id)
        .bind(Text(TaskState::Failed))
        .execute(&mut **tx)
        .await?
        .rows_affected() as i64;
        if n == 0 {
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, inputs, attempt, starts, \
             created_at, cache_key, seed, restart_of) \
             SELECT job_id, seq, $1, params, input_hash, input_name, inputs, 0, 0, $2, cache_key, \
             COALESCE(seed, id), id FROM tasks WHERE job_id = $3 AND replaced_by = 0",
        )
        .bind(Text(TaskState::Pending))
        .bind(now)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE tasks SET replaced_by = (SELECT n.id FROM tasks n WHERE n.restart_of = tasks.id) \
             WHERE job_id = $1 AND replaced_by = 0",
        )
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET failed = failed - $1, reruns = reruns + $1, updated_at = $2 WHERE id = $3",
        )
        .bind(n)
        .bind(now)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        reopen(tx, job_id, now).await?;
        Ok(n)
    }
}

impl Store {
    /// Runs a task that ended again: a new run at its place, pending,
    /// its job reopened; the steps after it blocked by it unblocked, and
    /// with `downstream`, every step after it planned again once it ends.
    /// Two restarts of one task make one run: the second gets the first's.
    pub async fn restart_task(
        &self,
        task_id: i64,
        downstream: bool,
    ) -> Result<Result<Restarted, RestartRefused>, StoreError> {
        let now = now_ms();
        let restarted = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let row = sqlx::query(
                "SELECT t.state, t.replaced_by, t.job_id, j.kind, j.maps FROM tasks t \
                 JOIN jobs j ON j.id = t.job_id WHERE t.id = $1",
            )
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Err(RestartRefused::NotFound));
            };
            let state = row.try_get::<Text<TaskState>, _>(0)?.0;
            let replaced_by: Option<i64> = row.try_get(1)?;
            let job_id: i64 = row.try_get(2)?;
            let kind = row.try_get::<Text<JobKind>, _>(3)?.0;
            let maps: Option<i64> = row.try_get(4)?;
            if let Some(by) = replaced_by {
                let rerun: Option<i64> = sqlx::query("SELECT id FROM tasks WHERE restart_of = $1")
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                return Ok(match rerun {
                    Some(id) => Ok(Restarted { task_id: id, job_id, ..Restarted::default() }),
                    None => Err(RestartRefused::Replaced(by)),
                });
            }
            if state.is_live() {
                return Ok(Err(RestartRefused::Live(state)));
            }
            if maps.is_some() {
                return Ok(Err(RestartRefused::MapReduce));
            }
            sqlx::query("UPDATE tasks SET replaced_by = 0 WHERE id = $1")
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            let new_id: i64 = sqlx::query(
                "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, inputs, attempt, \
                 starts, created_at, cache_key, seed, restart_of) \
                 SELECT job_id, seq, $1, params, input_hash, input_name, inputs, 0, 0, $2, cache_key, \
                 COALESCE(seed, id), id FROM tasks WHERE id = $3 RETURNING id",
            )
            .bind(Text(TaskState::Pending))
            .bind(now)
            .bind(task_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            sqlx::query("UPDATE tasks SET replaced_by = $1 WHERE id = $2")
                .bind(new_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            let count = |s: TaskState| i64::from(state == s);
            sqlx::query(
                "UPDATE jobs SET succeeded = succeeded - $1, cached = cached - $2, failed = failed - $3, \
                 cancelled = cancelled - $4, reruns = reruns + 1, updated_at = $5 WHERE id = $6",
            )
            .bind(count(TaskState::Succeeded) + count(TaskState::Cached))
            .bind(count(TaskState::Cached))
            .bind(count(TaskState::Failed))
            .bind(count(TaskState::Cancelled))
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            db::restart::reopen(&mut tx, job_id, now).await?;
            let mut steps = Vec::new();
            let mut cancelled_live = 0;
            if kind == JobKind::Step {
                for reader in db::restart::downstream(&mut tx, job_id).await? {
                    if downstream {
                        cancelled_live += db::restart::replan(&mut tx, reader, new_id, now).await?;
                        steps.push(reader);
                    } else if db::restart::unblock(&mut tx, reader, now).await? {
                        steps.push(reader);
                    }
                }
            }
            tx.commit().await?;
            Ok(Restarted { task_id: new_id, created: true, job_id, steps, cancelled_live })
        });
        Ok(restarted)
    }

    /// Runs a job's failed tasks again and, in a pipeline, plans its
    /// blocked steps again (and those that failed before they had tasks).
    pub async fn retry_job(
        &self,
        job_id: i64,
    ) -> Result<Result<Retried, RestartRefused>, StoreError> {
        let now = now_ms();
        let retried = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let kind = sqlx::query("SELECT kind FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<Text<JobKind>, _>(0).map(|k| k.0))
                .transpose()?;
            match kind {
                None => return Ok(Err(RestartRefused::NotFound)),
                Some(JobKind::MapReduce) => return Ok(Err(RestartRefused::MapReduce)),
                Some(_) => {}
            }
            let kind = kind.unwrap_or(JobKind::Task);
            let mut retried = Retried::default();
            if kind == JobKind::Pipeline {
                let steps = sqlx::query("SELECT id, status, planned, maps FROM jobs WHERE parent_id = $1 ORDER BY id")
                    .bind(job_id)
                    .fetch_all(&mut *tx)
                    .await?;
                for step in steps {
                    let id: i64 = step.try_get(0)?;
                    let status = step.try_get::<Text<JobStatus>, _>(1)?.0;
                    let planned: i64 = step.try_get(2)?;
                    if status == JobStatus::Failed && step.try_get::<Option<i64>, _>(3)?.is_some() {
                        return Ok(Err(RestartRefused::MapReduce));
                    }
                    if planned == 0 {
                        if matches!(status, JobStatus::Blocked | JobStatus::Failed)
                            && db::restart::unblock(&mut tx, id, now).await?
                        {
                            retried.steps.push(id);
                        }
                    } else {
                        retried.tasks += db::restart::rerun_failed(&mut tx, id, now).await?;
                    }
                }
                if !retried.steps.is_empty() {
                    db::restart::reopen(&mut tx, job_id, now).await?;
                }
            } else {
                retried.tasks = db::restart::rerun_failed(&mut tx, job_id, now).await?;
            }
            tx.commit().await?;
            Ok(retried)
        });
        Ok(retried)
    }
}
