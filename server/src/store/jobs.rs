//! Jobs: created with their backlog (a count, or one item per task),
//! read with their counts, listed a page at a time, cancelled, expired.

use sandmill_runtime::Reason;
use sandmill_runtime::labels::Labels;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use sqlx::{QueryBuilder, Row};

use super::types::{JsonText, Text, safe_text};
use super::{
    Counts, INSERT_CHUNK, JOB_COLUMNS, JobRow, LIVE_SQL, Store, StoreError, now_ms, on_pool,
    per_backend,
};
use crate::jobfile::ShuffleSettings;
use crate::model::{JobKind, JobStatus, TaskState};

/// Longest waiting reason or expiry message kept.
const MAX_NOTE_BYTES: usize = 1024;

/// One task's own parameters and input, for sweeps over rows or inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// JSON parameters.
    pub params: String,
    /// Input blob, if any.
    pub input_hash: Option<String>,
    /// Name the guest sees.
    pub input_name: String,
    /// Slices of blobs read one after the other (a pipeline step's
    /// inputs); empty: `input_hash`.
    pub inputs: Vec<sandmill_runtime::message::InputPart>,
    /// The seed its guest sees, when it must be this one (a task
    /// resubmitted); `None`: drawn from its cache key.
    pub seed: Option<i64>,
}

/// A job being created.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Display name.
    pub name: String,
    /// What its file described.
    pub kind: JobKind,
    /// 0 to 9; higher runs first.
    pub priority: u8,
    /// What each task calls.
    pub task_kind: CallKind,
    /// Module blob.
    pub module_hash: String,
    /// Limits of every task.
    pub limits: Limits,
    /// Grants of every task.
    pub grants: Grants,
    /// Labels a worker must offer to take its tasks.
    pub labels: Labels,
    /// The job file, as JSON (without its rows or inputs).
    pub definition: String,
    /// Parameters of every task without items (JSON).
    pub task_params: String,
    /// Input of every task without items.
    pub task_input: Option<String>,
    /// Its name.
    pub task_input_name: String,
    /// Number of tasks.
    pub total: i64,
    /// One per task, or none (every task is the same).
    pub items: Vec<Item>,
    /// Attempts per task before a retryable failure is final.
    pub max_attempts: i64,
    /// How long its tasks may wait while no live worker can take them (ms).
    pub queue_timeout_ms: i64,
    /// A map-reduce job's reducers and shuffle (its maps are its items).
    pub mapreduce: Option<(u32, ShuffleSettings)>,
    /// Whether its tasks may take cached outputs.
    pub cache: bool,
    /// The job whose tasks it runs again (`sandmill resubmit`).
    pub resubmit_of: Option<i64>,
    /// Tasks queued or running at once, at most (`None`: no cap).
    pub max_running: Option<i64>,
}

/// Why a cancel did nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelRefused {
    /// No such job.
    NotFound,
    /// The job already ended, with this status.
    Finished(JobStatus),
}

/// What expiring a job's queued tasks did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Queued tasks failed.
    pub tasks: i64,
    /// Whether the job ended.
    pub ended: bool,
}

per_backend! {
    /// Inserts the job row; returns its id.
    pub(crate) async fn insert_job(
        tx: &mut sqlx::Transaction<'static, Db>,
        job: &NewJob,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "INSERT INTO jobs (name, kind, status, priority, task_kind, module_hash, limits, grants, labels, \
             definition, task_params, task_input_hash, task_input_name, has_items, total_tasks, dispatched, \
             succeeded, failed, cancelled, max_attempts, queue_timeout_ms, created_at, updated_at, \
             maps, reducers, shuffle, planned, cache, resubmit_of, tenant, max_running) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, 0, 0, 0, $16, $17, $18, $18, \
             $19, $20, $21, $22, $23, $24, $25, $26) \
             RETURNING id",
        )
        .bind(safe_text(&job.name, 1024))
        .bind(Text(job.kind))
        .bind(Text(JobStatus::Running))
        .bind(i64::from(job.priority))
        .bind(Text(job.task_kind))
        .bind(job.module_hash.clone())
        .bind(JsonText(job.limits.clone()))
        .bind(JsonText(job.grants.clone()))
        .bind(JsonText(job.labels.clone()))
        .bind(job.definition.clone())
        .bind(job.task_params.clone())
        .bind(job.task_input.clone())
        .bind(safe_text(&job.task_input_name, 1024))
        .bind(i64::from(!job.items.is_empty()))
        .bind(job.total)
        .bind(job.max_attempts)
        .bind(job.queue_timeout_ms)
        .bind(now)
        .bind(job.mapreduce.as_ref().map(|_| job.total))
        .bind(job.mapreduce.as_ref().map_or(0, |(r, _)| i64::from(*r)))
        .bind(job.mapreduce.as_ref().map(|(_, s)| JsonText(s.clone())))
        // A map-reduce job with reducers is planned whole once its maps
        // are done; every other job is planned whole now.
        .bind(i64::from(job.mapreduce.as_ref().is_none_or(|(r, _)| *r == 0)))
        .bind(i64::from(job.cache))
        .bind(job.resubmit_of)
        .bind(job.tenant.clone())
        .bind(job.max_running)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)
    }

    /// Stores each task's own parameters and input until its turn; the
    /// first of `items` is task `first_seq`.
    pub(crate) async fn insert_items(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        items: &[Item],
        first_seq: i64,
    ) -> Result<(), sqlx::Error> {
        for (chunk_index, chunk) in items.chunks(INSERT_CHUNK).enumerate() {
            let mut insert = QueryBuilder::new(
                "INSERT INTO job_items (job_id, seq, params, input_hash, input_name, inputs, seed) ",
            );
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, item)| {
                row.push_bind(job_id)
                    .push_bind(first_seq + (chunk_index * INSERT_CHUNK + i) as i64)
                    .push_bind(item.params.clone())
                    .push_bind(item.input_hash.clone())
                    .push_bind(safe_text(&item.input_name, 1024))
                    .push_bind((!item.inputs.is_empty()).then(|| JsonText(item.inputs.clone())))
                    .push_bind(item.seed);
            });
            insert.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Ends a job now, whatever it has left: its tasks still running are
    /// recorded as they finish; nothing new is dispatched (a deleted or
    /// replaced subscription's job).
    pub(crate) async fn end_job(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE jobs SET status = CASE WHEN failed > 0 THEN $1 ELSE $2 END, updated_at = $3, \
             finished_at = $3, waiting = NULL, waiting_since = NULL WHERE id = $4 AND status = $5",
        )
        .bind(Text(JobStatus::Failed))
        .bind(Text(JobStatus::Succeeded))
        .bind(now)
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Ends the job if nothing of it is left to run: every task dispatched
    /// and none live (a subscription's job never ends this way: more
    /// messages come). Returns whether it ended now.
    pub(crate) async fn finish_if_done(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        // Stops at the first live task: O(1), on the partial index.
        let live = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM tasks WHERE job_id = $1 AND {LIVE_SQL} LIMIT 1"
        )))
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        if live {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE jobs SET status = CASE WHEN failed > 0 THEN $1 ELSE $2 END, \
             updated_at = $3, finished_at = $3, waiting = NULL, waiting_since = NULL \
             WHERE id = $4 AND status = $5 AND dispatched = total_tasks AND reruns = 0 \
             AND kind <> 'subscription'",
        )
        .bind(Text(JobStatus::Failed))
        .bind(Text(JobStatus::Succeeded))
        .bind(now)
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(done == 1)
    }
}

impl Store {
    /// Creates a job with its backlog and dispatches its first
    /// `dispatch_now` tasks, in one transaction: once this returns, the
    /// job is accepted. Returns its id and what was dispatched.
    pub async fn create_job(
        &self,
        job: &NewJob,
        dispatch_now: i64,
    ) -> Result<(i64, super::dispatch::Dispatched), StoreError> {
        let now = now_ms();
        let created = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let job_id = db::jobs::insert_job(&mut tx, job, now).await?;
            // Items dispatched now go straight to tasks; the rest wait.
            let now_items = usize::try_from(dispatch_now).unwrap_or(0).min(job.items.len());
            db::jobs::insert_items(&mut tx, job_id, &job.items[now_items..], now_items as i64).await?;
            let mut dispatched = if dispatch_now > 0 {
                let template = super::dispatch::Template::of_new(job);
                db::dispatch::materialize_from(&mut tx, job_id, &template, dispatch_now, now, Some(&job.items)).await?
            } else {
                super::dispatch::Dispatched::default()
            };
            if job.total == 0 {
                dispatched.ended = db::jobs::finish_if_done(&mut tx, job_id, now).await?;
            }
            tx.commit().await?;
            (job_id, dispatched)
        });
        Ok(created)
    }

    /// Top-level jobs (a pipeline's steps are shown with it) matching
    /// `filter`, sorted by `filter.sort` then id, the first `limit` after
    /// `after` (the sort value and id of the previous page's last).
    pub async fn jobs(
        &self,
        tenant: Option<&str>,
        filter: &JobFilter,
        after: Option<(SortValue, i64)>,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        let column = filter.sort.column();
        let (cmp, dir) = if filter.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let rows = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id IS NULL"));
            if let Some(tenant) = tenant {
                q.push(" AND tenant = ").push_bind(tenant.to_owned());
            }
            if let Some(status) = filter.status {
                q.push(" AND status = ").push_bind(Text(status));
            }
            if let Some(name) = &filter.name {
                q.push(" AND LOWER(name) LIKE ")
                    .push_bind(format!("%{}%", like_escaped(&name.to_lowercase())))
                    .push(" ESCAPE '\\'");
            }
            for (key, value) in &filter.labels {
                // Labels are stored as compact JSON: `"k":"v"` is the pair.
                let pair = serde_json::to_string(&serde_json::json!({ key: value }))
                    .unwrap_or_default();
                let pair = pair.trim_start_matches('{').trim_end_matches('}');
                q.push(" AND labels LIKE ")
                    .push_bind(format!("%{}%", like_escaped(pair)))
                    .push(" ESCAPE '\\'");
            }
            if let Some(from) = filter.created_from {
                q.push(" AND created_at >= ").push_bind(from);
            }
            if let Some(to) = filter.created_to {
                q.push(" AND created_at < ").push_bind(to);
            }
            if let Some(schedule) = &filter.schedule {
                q.push(" AND schedule = ").push_bind(schedule.clone());
            }
            match filter.scheduled {
                Some(true) => q.push(" AND schedule IS NOT NULL"),
                Some(false) => q.push(" AND schedule IS NULL"),
                None => &mut q,
            };
            if let Some((value, id)) = &after {
                for (i, op) in [cmp, "="].into_iter().enumerate() {
                    q.push(if i == 0 { " AND (" } else { " OR (" });
                    q.push(format!("{column} {op} "));
                    match value {
                        SortValue::Number(n) => q.push_bind(*n),
                        SortValue::Text(t) => q.push_bind(t.clone()),
                    };
                }
                q.push(format!(" AND id {cmp} ")).push_bind(*id).push("))");
            }
            q.push(format!(" ORDER BY {column} {dir}, id {dir} LIMIT ")).push_bind(limit);
            q.build_query_as::<JobRow>().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// A job's failed tasks (a pipeline's: its steps'), grouped by
    /// reason, the largest group first: (reason, count, the lowest task
    /// id of the group, that task's error). At most 100 groups.
    pub async fn failures_by_reason(
        &self,
        job_id: i64,
    ) -> Result<Vec<(Option<String>, i64, i64, Option<String>)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT f.reason, f.n, f.sample, t.error FROM ( \
                 SELECT reason, COUNT(*) AS n, MIN(id) AS sample FROM tasks \
                 WHERE job_id IN (SELECT id FROM jobs WHERE id = $1 OR parent_id = $1) \
                   AND state = $2 AND replaced_by IS NULL \
                 GROUP BY reason \
             ) AS f JOIN tasks t ON t.id = f.sample ORDER BY f.n DESC, f.sample LIMIT 100",
        )
        .bind(job_id)
        .bind(Text(TaskState::Failed))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// A job by id.
    pub async fn job(&self, id: i64) -> Result<Option<JobRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, JobRow>(
            sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")),
        )
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// The job file a job was created from, as JSON (without its rows or
    /// inputs).
    pub async fn job_definition(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query("SELECT definition FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?);
        Ok(row)
    }

    /// A job's tasks per state: one row read and a count of its live
    /// tasks (at most a dispatch window), however large the job.
    pub async fn counts(&self, job: &JobRow) -> Result<Counts, StoreError> {
        let live = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT state, COUNT(*) FROM tasks WHERE job_id = $1 AND {LIVE_SQL} GROUP BY state"
        )))
        .bind(job.id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<Text<TaskState>, _>(0)?.0, r.try_get::<i64, _>(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
        let mut counts = Counts {
            // A map-reduce job's reduces are pending until its maps are
            // done (and cancelled, if it ended first).
            pending: job.total_tasks - job.dispatched
                + job.reruns
                + if job.planned != 1 && job.maps.is_some() && !job.status().is_final() {
                    job.reducers
                } else {
                    0
                },
            succeeded: job.succeeded,
            failed: job.failed,
            cancelled: job.cancelled
                + if job.planned != 1 && job.maps.is_some() && job.status().is_final() {
                    job.reducers
                } else {
                    0
                },
            ..Counts::default()
        };
        for (state, n) in live {
            match state {
                TaskState::Queued => counts.queued = n,
                TaskState::Running => counts.running = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Cancels a running job: its live tasks and its backlog. Returns how
    /// many live tasks it cancelled.
    pub async fn cancel_job(&self, id: i64) -> Result<Result<i64, CancelRefused>, StoreError> {
        self.end_job(id, JobStatus::Cancelled).await
    }

    /// Ends a running job as failed before its end (a map-reduce job with
    /// a task that failed for good): what is left of it is cancelled.
    pub async fn fail_job(&self, id: i64) -> Result<Result<i64, CancelRefused>, StoreError> {
        self.end_job(id, JobStatus::Failed).await
    }

    async fn end_job(
        &self,
        id: i64,
        status: JobStatus,
    ) -> Result<Result<i64, CancelRefused>, StoreError> {
        let now = now_ms();
        let cancel_live = format!(
            "UPDATE tasks SET state = $1, finished_at = $2 WHERE job_id = $3 AND {LIVE_SQL}"
        );
        let cancelled = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let live = sqlx::query(sqlx::AssertSqlSafe(cancel_live.clone()))
            .bind(Text(TaskState::Cancelled))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            let reruns = sqlx::query(
                "UPDATE tasks SET state = $1, finished_at = $2 WHERE job_id = $3 AND state = $4",
            )
            .bind(Text(TaskState::Cancelled))
            .bind(now)
            .bind(id)
            .bind(Text(TaskState::Pending))
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            let changed = sqlx::query(
                "UPDATE jobs SET status = $1, cancelled = cancelled + $2 + total_tasks - dispatched, \
                 dispatched = total_tasks, reruns = 0, updated_at = $3, finished_at = $3, waiting = NULL, \
                 waiting_since = NULL WHERE id = $4 AND status = $5",
            )
            .bind(Text(status))
            .bind(live + reruns)
            .bind(now)
            .bind(id)
            .bind(Text(JobStatus::Running))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Tasks a dispatcher created and committed between the first
            // statement and the job's row lock (Postgres reads each
            // statement afresh): cancelled and counted too. With the row
            // locked, no dispatcher can add more (it moves the cursor on
            // this row, and finds it at the end).
            let late = if changed == 1 {
                let late = sqlx::query(sqlx::AssertSqlSafe(cancel_live.clone()))
                .bind(Text(TaskState::Cancelled))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
                if late > 0 {
                    sqlx::query("UPDATE jobs SET cancelled = cancelled + $1 WHERE id = $2")
                        .bind(late)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                late
            } else {
                0
            };
            sqlx::query("DELETE FROM job_items WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if changed == 1 {
                tx.commit().await?;
                Some(live + late)
            } else {
                tx.rollback().await?;
                None
            }
        });
        if let Some(live) = cancelled {
            return Ok(Ok(live));
        }
        Ok(Err(match self.job(id).await? {
            None => CancelRefused::NotFound,
            Some(job) => CancelRefused::Finished(job.status()),
        }))
    }

    /// Running jobs with queued tasks: (id, labels, queue timeout, waiting
    /// since), at most `limit` after job `after`.
    pub async fn jobs_with_queued_tasks(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Labels, i64, Option<i64>)>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT j.id, j.labels, j.queue_timeout_ms, j.waiting_since FROM jobs j \
                 WHERE j.status = $1 AND j.id > $2 AND EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = $3) \
                 ORDER BY j.id LIMIT $4",
            )
            .bind(Text(JobStatus::Running))
            .bind(after)
            .bind(Text(TaskState::Queued))
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok::<_, sqlx::Error>((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<JsonText<Labels>, _>(1)?.0,
                    r.try_get::<i64, _>(2)?,
                    r.try_get::<Option<i64>, _>(3)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Clears the waiting reason of jobs that ended or have nothing queued.
    pub async fn clear_stale_waiting(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE jobs SET waiting = NULL, waiting_since = NULL WHERE waiting_since IS NOT NULL \
                 AND (status <> $1 OR NOT EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.job_id = jobs.id AND t.state = $2))",
            )
            .bind(Text(JobStatus::Running))
            .bind(Text(TaskState::Queued))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Says why a job's queued tasks wait (`None`: they do not), keeping the
    /// time the wait began.
    pub async fn set_waiting(&self, job_id: i64, why: Option<&str>) -> Result<(), StoreError> {
        let now = now_ms();
        on_pool!(self, pool => {
            match why {
                Some(why) => sqlx::query(
                    "UPDATE jobs SET waiting = $1, waiting_since = COALESCE(waiting_since, $2) \
                     WHERE id = $3 AND status = $4",
                )
                .bind(safe_text(why, MAX_NOTE_BYTES))
                .bind(now)
                .bind(job_id)
                .bind(Text(JobStatus::Running))
                .execute(pool)
                .await?,
                None => sqlx::query(
                    "UPDATE jobs SET waiting = NULL, waiting_since = NULL \
                     WHERE id = $1 AND waiting_since IS NOT NULL",
                )
                .bind(job_id)
                .execute(pool)
                .await?,
            };
        });
        Ok(())
    }

    /// Fails a job's queued tasks and its backlog as `queue-timeout`, and
    /// ends the job if nothing else is live.
    pub async fn expire_queued(&self, job_id: i64, error: &str) -> Result<Expired, StoreError> {
        let now = now_ms();
        let expired = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            // Queued tasks, and runs again still pending, fail alike.
            let mut failed = [0_i64; 2];
            for (n, state) in failed.iter_mut().zip([TaskState::Queued, TaskState::Pending]) {
                *n = sqlx::query(
                    "UPDATE tasks SET state = $1, reason = $2, error = $3, finished_at = $4 \
                     WHERE job_id = $5 AND state = $6",
                )
                .bind(Text(TaskState::Failed))
                .bind(Text(Reason::QueueTimeout))
                .bind(safe_text(error, MAX_NOTE_BYTES))
                .bind(now)
                .bind(job_id)
                .bind(Text(state))
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
            }
            let [tasks, reruns] = failed;
            sqlx::query(
                "UPDATE jobs SET failed = failed + $1 + total_tasks - dispatched, dispatched = total_tasks, \
                 reruns = 0, updated_at = $2 WHERE id = $3 AND status = $4",
            )
            .bind(tasks + reruns)
            .bind(now)
            .bind(job_id)
            .bind(Text(JobStatus::Running))
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM job_items WHERE job_id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            let ended = db::jobs::finish_if_done(&mut tx, job_id, now).await?;
            tx.commit().await?;
            Expired { tasks, ended }
        });
        Ok(expired)
    }

    /// For crash tests and audits: tasks of a job, succeeded attempts, and
    /// tasks with more than one succeeded attempt (which must never happen).
    pub async fn success_audit(&self, job_id: i64) -> Result<(i64, i64, i64), StoreError> {
        let audit = on_pool!(self, pool => {
            let tasks: i64 = sqlx::query("SELECT COUNT(*) FROM tasks WHERE job_id = $1")
                .bind(job_id)
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            let successes: i64 = sqlx::query(
                "SELECT COUNT(*) FROM attempts a JOIN tasks t ON t.id = a.task_id \
                 WHERE t.job_id = $1 AND a.state = $2",
            )
            .bind(job_id)
            .bind(Text(sandmill_runtime::message::Verdict::Succeeded))
            .fetch_one(pool)
            .await?
            .try_get(0)?;
            let duplicated: i64 = sqlx::query(
                "SELECT COUNT(*) FROM (SELECT a.task_id FROM attempts a JOIN tasks t ON t.id = a.task_id \
                 WHERE t.job_id = $1 AND a.state = $2 GROUP BY a.task_id HAVING COUNT(*) > 1) d",
            )
            .bind(job_id)
            .bind(Text(sandmill_runtime::message::Verdict::Succeeded))
            .fetch_one(pool)
            .await?
            .try_get(0)?;
            (tasks, successes, duplicated)
        });
        Ok(audit)
    }
}

/// What a job list shows, and in what order.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs whose name holds this (any case).
    pub name: Option<String>,
    /// Only jobs with all these labels.
    pub labels: Vec<(String, String)>,
    /// Only jobs created at or after this (ms since the epoch).
    pub created_from: Option<i64>,
    /// Only jobs created before this.
    pub created_to: Option<i64>,
    /// Only the jobs this schedule submitted.
    pub schedule: Option<String>,
    /// Only jobs a schedule submitted (`true`), or none of them (`false`).
    pub scheduled: Option<bool>,
    /// The order.
    pub sort: JobSort,
    /// Largest first.
    pub descending: bool,
}

/// A column a job list is sorted by (then by id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSort {
    /// When it last changed (the default).
    #[default]
    Updated,
    /// When it was created.
    Created,
    /// Its id.
    Id,
    /// Its name.
    Name,
    /// Its status.
    Status,
    /// Its number of tasks.
    Tasks,
    /// Its priority.
    Priority,
}

impl JobSort {
    fn column(self) -> &'static str {
        match self {
            JobSort::Updated => "updated_at",
            JobSort::Created => "created_at",
            JobSort::Id => "id",
            JobSort::Name => "name",
            JobSort::Status => "status",
            JobSort::Tasks => "total_tasks",
            JobSort::Priority => "priority",
        }
    }

    /// `job`'s value in this column.
    pub fn value_of(self, job: &JobRow) -> SortValue {
        match self {
            JobSort::Updated => SortValue::Number(job.updated_at),
            JobSort::Created => SortValue::Number(job.created_at),
            JobSort::Id => SortValue::Number(job.id),
            JobSort::Name => SortValue::Text(job.name.clone()),
            JobSort::Status => SortValue::Text(job.status.0.to_string()),
            JobSort::Tasks => SortValue::Number(job.total_tasks),
            JobSort::Priority => SortValue::Number(job.priority),
        }
    }
}

/// A value of a sort column, as a cursor keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum SortValue {
    /// A whole number.
    Number(i64),
    /// Text.
    Text(String),
}

/// `text` with LIKE's wildcards and the escape character escaped (by `\`).
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
