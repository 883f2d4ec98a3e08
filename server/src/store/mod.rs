//! Storage: the source of truth for modules, specs, jobs, tasks and
//! attempts, in SQLite (the embedded default) or Postgres.
//!
//! One schema in two dialects (`migrations/sqlite`, `migrations/postgres`),
//! applied at start-up. The SQL here is written once in the subset both
//! dialects share (`$N` parameters, `ON CONFLICT`, `RETURNING`) and run on
//! whichever pool the store holds; the test suite runs once per backend.

mod rows;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{OutputRef, TaskEvent, TaskMessage, TaskResult, Verdict};
use sandmill_runtime::sandbox::CallKind;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

pub use rows::*;

/// Rows per multi-row INSERT: well under SQLite's 32,766 bound variables.
const INSERT_CHUNK: usize = 1_000;

/// Results per multi-row UPDATE or INSERT when recording (12 binds a row).
const RECORD_CHUNK: usize = 500;

fn verdict_state(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Succeeded => "succeeded",
        Verdict::Failed => "failed",
    }
}

/// Storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL is not one we know.
    #[error("unsupported database URL `{0}` (expected a SQLite path or sqlite:// or postgres://)")]
    BadUrl(String),
}

/// Task states that are not final.
const LIVE_STATES: &str = "('pending','queued','running')";

/// The database, SQLite or Postgres.
#[derive(Clone, Debug)]
pub enum Store {
    /// The embedded default: a file.
    Sqlite(SqlitePool),
    /// A cluster's database.
    Postgres(PgPool),
}

/// Runs the same code on either pool; the body is type-checked once per
/// backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// A new task of a job being created.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// JSON parameters.
    pub params: String,
    /// Input blob, if any.
    pub input_hash: Option<String>,
    /// Name the guest sees.
    pub input_name: String,
}

/// A job being created, with its tasks.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Display name.
    pub name: String,
    /// `task` or `sweep`.
    pub kind: String,
    /// What each task calls.
    pub task_kind: CallKind,
    /// Module blob.
    pub module_hash: String,
    /// Limits as JSON (runtime `Limits`).
    pub limits: String,
    /// Grants as JSON (runtime `Grants`).
    pub grants: String,
    /// The job file, as JSON.
    pub definition: String,
    /// Attempts per task before a retryable failure is final.
    pub max_attempts: i64,
    /// Labels a worker must offer to take its tasks.
    pub labels: Labels,
    /// How long its tasks may wait while no live worker can take them (ms).
    pub queue_timeout_ms: i64,
    /// The tasks.
    pub tasks: Vec<NewTask>,
}

/// What recording a batch of events changed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Results that counted (named the current attempt of a live task).
    pub accepted: usize,
    /// Results ignored as stale or duplicate.
    pub ignored: usize,
    /// Tasks queued again for another attempt.
    pub retried: Vec<i64>,
    /// Jobs that reached a final status.
    pub finished_jobs: Vec<i64>,
}

/// Why a cancel did nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelRefused {
    /// No such job.
    NotFound,
    /// The job already ended, with this status.
    Finished(String),
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies the
    /// schema. A plain path or `sqlite://` means SQLite, `postgres://`
    /// means Postgres.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await?;
            return Ok(Store::Postgres(pool));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.contains("://") {
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        // WAL with synchronous=NORMAL: a commit survives a crash of the
        // process (the "nothing accepted is lost" promise), at a fraction
        // of the cost of an fsync per commit.
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Which backend this is (`sqlite` or `postgres`).
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    /// Records a module; `false` if it was already known.
    pub async fn put_module(
        &self,
        hash: &str,
        size: i64,
        exports: &[&str],
    ) -> Result<bool, StoreError> {
        let exports = exports.join(",");
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO modules (hash, size, exports, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.to_owned())
        .bind(size)
        .bind(exports)
        .bind(now_ms())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// A module by hash.
    pub async fn module(&self, hash: &str) -> Result<Option<ModuleRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, ModuleRow>(
            "SELECT hash, size, exports, created_at FROM modules WHERE hash = $1",
        )
        .bind(hash.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Registers a spec version. `Ok(false)` when the same name and version
    /// exist with different content (versions are immutable).
    pub async fn put_spec(&self, spec: &SpecRow) -> Result<bool, StoreError> {
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO specs (name, version, module_hash, kind, limits, grants, labels, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(spec.name.clone())
        .bind(spec.version.clone())
        .bind(spec.module_hash.clone())
        .bind(spec.kind.clone())
        .bind(spec.limits.clone())
        .bind(spec.grants.clone())
        .bind(spec.labels.clone())
        .bind(spec.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok(true);
        }
        let existing = self.spec(&spec.name, Some(&spec.version)).await?;
        Ok(existing.is_some_and(|e| {
            (&e.module_hash, &e.kind, &e.limits, &e.grants, &e.labels)
                == (
                    &spec.module_hash,
                    &spec.kind,
                    &spec.limits,
                    &spec.grants,
                    &spec.labels,
                )
        }))
    }

    /// Every spec version, newest first within a name.
    pub async fn specs(&self) -> Result<Vec<SpecRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, SpecRow>(
            "SELECT name, version, module_hash, kind, limits, grants, labels, created_at FROM specs \
             ORDER BY name, created_at DESC, version DESC",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// A spec by name: the given version, or the newest.
    pub async fn spec(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SpecRow>, StoreError> {
        let row = on_pool!(self, pool => match version {
            Some(version) => sqlx::query_as::<_, SpecRow>(
                "SELECT name, version, module_hash, kind, limits, grants, labels, created_at FROM specs \
                 WHERE name = $1 AND version = $2",
            )
            .bind(name.to_owned())
            .bind(version.to_owned())
            .fetch_optional(pool)
            .await?,
            None => sqlx::query_as::<_, SpecRow>(
                "SELECT name, version, module_hash, kind, limits, grants, labels, created_at FROM specs \
                 WHERE name = $1 ORDER BY created_at DESC, version DESC LIMIT 1",
            )
            .bind(name.to_owned())
            .fetch_optional(pool)
            .await?,
        });
        Ok(row)
    }

    /// Creates a job and all its tasks (queued) in one transaction, with
    /// multi-row inserts; returns the job id and the messages to publish.
    pub async fn create_job(&self, job: &NewJob) -> Result<(i64, Vec<TaskMessage>), StoreError> {
        let now = now_ms();
        let task_kind = job.task_kind.name().to_owned();
        let (job_id, ids) = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let job_id: i64 = sqlx::query(
                "INSERT INTO jobs (name, kind, status, task_kind, module_hash, limits, grants, definition, \
                 total_tasks, max_attempts, created_at, updated_at, labels, queue_timeout_ms) \
                 VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12) RETURNING id",
            )
            .bind(job.name.clone())
            .bind(job.kind.clone())
            .bind(task_kind)
            .bind(job.module_hash.clone())
            .bind(job.limits.clone())
            .bind(job.grants.clone())
            .bind(job.definition.clone())
            .bind(job.tasks.len() as i64)
            .bind(job.max_attempts)
            .bind(now)
            .bind(serde_json::to_string(&job.labels).unwrap_or_default())
            .bind(job.queue_timeout_ms)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            for (chunk_index, chunk) in job.tasks.chunks(INSERT_CHUNK).enumerate() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, attempt, created_at) ",
                );
                insert.push_values(chunk.iter().enumerate(), |mut row, (i, task)| {
                    row.push_bind(job_id)
                        .push_bind((chunk_index * INSERT_CHUNK + i) as i64)
                        .push("'queued'")
                        .push_bind(task.params.clone())
                        .push_bind(task.input_hash.clone())
                        .push_bind(task.input_name.clone())
                        .push("0")
                        .push_bind(now);
                });
                insert.build().execute(&mut *tx).await?;
            }
            let ids: Vec<i64> = sqlx::query("SELECT id FROM tasks WHERE job_id = $1 ORDER BY seq")
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            (job_id, ids)
        });
        let limits = serde_json::from_str(&job.limits).unwrap_or_default();
        let grants = serde_json::from_str(&job.grants).unwrap_or_default();
        let messages = ids
            .into_iter()
            .zip(&job.tasks)
            .map(|(task_id, task)| TaskMessage {
                task_id,
                job_id,
                attempt: 0,
                kind: job.task_kind,
                module: job.module_hash.clone(),
                input: task.input_hash.clone(),
                input_name: task.input_name.clone(),
                params: task.params.clone(),
                limits: Clone::clone(&limits),
                grants: Clone::clone(&grants),
                labels: job.labels.clone(),
                delivered: 1,
            })
            .collect();
        Ok((job_id, messages))
    }

    /// Jobs, most recently updated first, optionally of one status.
    pub async fn jobs(
        &self,
        status: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs"));
            if let Some(status) = status {
                q.push(" WHERE status = ").push_bind(status.to_owned());
            }
            q.push(" ORDER BY updated_at DESC, id DESC LIMIT ")
                .push_bind(limit)
                .push(" OFFSET ")
                .push_bind(offset);
            q.build_query_as::<JobRow>().fetch_all(pool).await?
        });
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

    /// Task counts of a job, per state.
    pub async fn task_counts(&self, job_id: i64) -> Result<BTreeMap<String, i64>, StoreError> {
        let counts = on_pool!(self, pool => sqlx::query(
            "SELECT state, COUNT(*) FROM tasks WHERE job_id = $1 GROUP BY state",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect::<Result<BTreeMap<_, _>, sqlx::Error>>()?);
        Ok(counts)
    }

    /// Tasks of a job in order.
    pub async fn tasks(
        &self,
        job_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, TaskRow>(
            sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = $1 ORDER BY seq LIMIT $2 OFFSET $3"
            )),
        )
        .bind(job_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// A task by id.
    pub async fn task(&self, id: i64) -> Result<Option<TaskRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, TaskRow>(
            sqlx::AssertSqlSafe(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")),
        )
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// A task's inline output, or where it is.
    pub async fn task_output(
        &self,
        id: i64,
    ) -> Result<Option<(Option<Vec<u8>>, Option<String>)>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query(
            "SELECT output, output_hash FROM tasks WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()?);
        Ok(row)
    }

    /// A task's attempts, oldest first, with their logs.
    pub async fn attempts(&self, task_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, AttemptRow>(
            "SELECT task_id, attempt, state, reason, error, worker, elapsed_ms, fuel_used, log, \
             log_truncated, counters, finished_at FROM attempts WHERE task_id = $1 ORDER BY attempt",
        )
        .bind(task_id)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Cancels a running job and its live tasks.
    pub async fn cancel_job(&self, id: i64) -> Result<Result<(), CancelRefused>, StoreError> {
        let now = now_ms();
        let changed = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE jobs SET status = 'cancelled', updated_at = $1, finished_at = $1, waiting = NULL, waiting_since = NULL \
                 WHERE id = $2 AND status = 'running'",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET state = 'cancelled', finished_at = $1 WHERE job_id = $2 AND state IN {LIVE_STATES}"
            )))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            changed
        });
        if changed == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(match self.job(id).await? {
            None => CancelRefused::NotFound,
            Some(job) => CancelRefused::Finished(job.status),
        }))
    }

    /// Applies a batch of worker events in one transaction. A result counts
    /// only if it names the task's current attempt while the task is live:
    /// a duplicate or stale delivery changes nothing.
    pub async fn record(&self, events: &[TaskEvent]) -> Result<Recorded, StoreError> {
        let now = now_ms();
        let mut recorded = Recorded::default();
        let finished_jobs = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut jobs = BTreeSet::new();
            // A start whose end is in the same batch needs no write of its own.
            let ended: BTreeSet<(i64, i64)> = events
                .iter()
                .filter_map(|e| match e {
                    TaskEvent::Finished(r) => Some((r.task_id, r.attempt)),
                    TaskEvent::Started { .. } => None,
                })
                .collect();
            // Final results (success, or a failure not to retry) are applied
            // in a few multi-row statements; retries one by one (rare).
            let mut finals: Vec<&TaskResult> = Vec::new();
            let mut accepted: Vec<&TaskResult> = Vec::new();
            for event in events {
                match event {
                    TaskEvent::Started { task_id, attempt, .. } if ended.contains(&(*task_id, *attempt)) => {}
                    TaskEvent::Started { task_id, attempt, .. } => {
                        // Each delivery's start counts: several starts and
                        // no end mean workers died under this task.
                        sqlx::query(
                            "UPDATE tasks SET state = 'running', starts = starts + 1, \
                             started_at = COALESCE(started_at, $1) \
                             WHERE id = $2 AND attempt = $3 AND state IN ('queued', 'running')",
                        )
                        .bind(now)
                        .bind(*task_id)
                        .bind(*attempt)
                        .execute(&mut *tx)
                        .await?;
                    }
                    TaskEvent::Finished(result) if result.verdict == Verdict::Failed && result.retryable => {
                        // Back to the queue as the next attempt, if attempts are left.
                        let requeued: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE tasks SET state = 'queued', attempt = attempt + 1, started_at = NULL \
                             WHERE id = $1 AND attempt = $2 AND state IN {LIVE_STATES} \
                             AND attempt + 1 < (SELECT max_attempts FROM jobs WHERE jobs.id = tasks.job_id) \
                             RETURNING job_id"
                        )))
                        .bind(result.task_id)
                        .bind(result.attempt)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?;
                        match requeued {
                            Some(job_id) => {
                                recorded.retried.push(result.task_id);
                                jobs.insert(job_id);
                                accepted.push(result);
                            }
                            None => finals.push(result),
                        }
                    }
                    TaskEvent::Finished(result) => finals.push(result),
                }
            }
            let mut applied = BTreeSet::new();
            for chunk in finals.chunks(RECORD_CHUNK) {
                let mut update = QueryBuilder::new(
                    "UPDATE tasks SET state = v.column3, \
                     reason = CASE WHEN v.column4 = 'worker-lost' AND tasks.starts >= 2 THEN 'crash-loop' ELSE v.column4 END, \
                     error = v.column5, \
                     output = v.column6, output_hash = v.column7, output_size = v.column8, finished_at = ",
                );
                update.push_bind(now).push(" FROM (");
                update.push_values(chunk.iter(), |mut row, result| {
                    let (output, output_hash, output_size) = match &result.output {
                        Some(OutputRef::Inline(bytes)) => (Some(bytes.clone()), None, Some(bytes.len() as i64)),
                        Some(OutputRef::Blob { hash, size }) => (None, Some(hash.clone()), Some(*size as i64)),
                        None => (None, None, None),
                    };
                    row.push_bind(result.task_id)
                        .push_bind(result.attempt)
                        .push_bind(verdict_state(result.verdict))
                        .push_bind(result.reason.clone())
                        .push_bind(result.error.clone())
                        .push_bind(output)
                        .push_bind(output_hash)
                        .push_bind(output_size);
                });
                update.push(format!(
                    ") AS v WHERE tasks.id = v.column1 AND tasks.attempt = v.column2 \
                     AND tasks.state IN {LIVE_STATES} RETURNING tasks.id, tasks.job_id"
                ));
                for row in update.build().fetch_all(&mut *tx).await? {
                    applied.insert(row.try_get::<i64, _>(0)?);
                    jobs.insert(row.try_get::<i64, _>(1)?);
                }
            }
            for result in finals {
                // `remove`: a duplicate in the same batch is recorded once.
                if applied.remove(&result.task_id) {
                    accepted.push(result);
                } else {
                    recorded.ignored += 1;
                }
            }
            recorded.accepted = accepted.len();
            for chunk in accepted.chunks(RECORD_CHUNK) {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO attempts (task_id, attempt, state, reason, error, worker, elapsed_ms, \
                     fuel_used, log, log_truncated, counters, finished_at) ",
                );
                insert.push_values(chunk.iter(), |mut row, result| {
                    row.push_bind(result.task_id)
                        .push_bind(result.attempt)
                        .push_bind(verdict_state(result.verdict))
                        .push_bind(result.reason.clone())
                        .push_bind(result.error.clone())
                        .push_bind(result.worker.clone())
                        .push_bind(result.elapsed_ms)
                        .push_bind(result.fuel_used.map(|f| f as i64))
                        .push_bind(result.log.clone())
                        .push_bind(i64::from(result.log_truncated))
                        .push_bind(serde_json::to_string(&result.counters).unwrap_or_default())
                        .push_bind(now);
                });
                insert.push(" ON CONFLICT (task_id, attempt) DO NOTHING");
                insert.build().execute(&mut *tx).await?;
            }
            let mut finished = Vec::new();
            for job_id in jobs {
                // Stops at the first live task: O(1) per batch, not O(tasks).
                let live = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT 1 FROM tasks WHERE job_id = $1 AND state IN {LIVE_STATES} LIMIT 1"
                )))
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                if live {
                    sqlx::query("UPDATE jobs SET updated_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(job_id)
                        .execute(&mut *tx)
                        .await?;
                    continue;
                }
                let failed: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM tasks WHERE job_id = $1 AND state = 'failed'",
                )
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                let status = if failed > 0 { "failed" } else { "succeeded" };
                let done = sqlx::query(
                    "UPDATE jobs SET status = $1, updated_at = $2, finished_at = $2, waiting = NULL, waiting_since = NULL \
                     WHERE id = $3 AND status = 'running'",
                )
                .bind(status)
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1 {
                    finished.push(job_id);
                }
            }
            tx.commit().await?;
            finished
        });
        recorded.finished_jobs = finished_jobs;
        Ok(recorded)
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
                 WHERE t.job_id = $1 AND a.state = 'succeeded'",
            )
            .bind(job_id)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
            let duplicated: i64 = sqlx::query(
                "SELECT COUNT(*) FROM (SELECT a.task_id FROM attempts a JOIN tasks t ON t.id = a.task_id \
                 WHERE t.job_id = $1 AND a.state = 'succeeded' GROUP BY a.task_id HAVING COUNT(*) > 1) d",
            )
            .bind(job_id)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
            (tasks, successes, duplicated)
        });
        Ok(audit)
    }

    /// At start-up: every task that was queued or running when the last
    /// process stopped, as messages to publish again at their current
    /// attempt. A fleet's workers may still hold them: the broker drops a
    /// re-publish it still has, and should a task run twice, its first
    /// result counts and the second changes nothing.
    pub async fn recover(&self) -> Result<Vec<TaskMessage>, StoreError> {
        self.messages_where("t.state IN ('queued', 'running')", &[])
            .await
    }

    /// Ids of every queued or running task of a running job, oldest first.
    pub async fn live_tasks(&self) -> Result<Vec<i64>, StoreError> {
        let ids = on_pool!(self, pool => {
            sqlx::query("SELECT id FROM tasks WHERE state IN ('queued', 'running') ORDER BY id")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(ids)
    }

    /// Live tasks as messages to publish again (any attempt).
    pub async fn live_messages(&self, task_ids: &[i64]) -> Result<Vec<TaskMessage>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut messages = Vec::new();
        for chunk in task_ids.chunks(RECORD_CHUNK) {
            messages.extend(
                self.messages_where("t.state IN ('queued', 'running') AND t.id IN ", chunk)
                    .await?,
            );
        }
        Ok(messages)
    }

    /// Running jobs with tasks still queued: (id, labels JSON, queue
    /// timeout, waiting since).
    pub async fn jobs_with_queued_tasks(
        &self,
    ) -> Result<Vec<(i64, String, i64, Option<i64>)>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT j.id, j.labels, j.queue_timeout_ms, j.waiting_since FROM jobs j \
                 WHERE j.status = 'running' AND EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'queued')",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok::<_, sqlx::Error>((
                    r.try_get::<i64, _>(0)?,
                    r.try_get::<String, _>(1)?,
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
                 AND (status <> 'running' OR NOT EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'queued'))",
            )
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
                     WHERE id = $3 AND status = 'running'",
                )
                .bind(why.to_owned())
                .bind(now)
                .bind(job_id)
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

    /// Fails a job's queued tasks as `queue-timeout` and ends the job if
    /// nothing else is live. Returns whether the job ended.
    pub async fn expire_queued(&self, job_id: i64, error: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let ended = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE tasks SET state = 'failed', reason = 'queue-timeout', error = $1, finished_at = $2 \
                 WHERE job_id = $3 AND state = 'queued'",
            )
            .bind(error.to_owned())
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
            let live = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT 1 FROM tasks WHERE job_id = $1 AND state IN {LIVE_STATES} LIMIT 1"
            )))
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            let ended = if live {
                false
            } else {
                sqlx::query(
                    "UPDATE jobs SET status = 'failed', updated_at = $1, finished_at = $1, waiting = NULL, waiting_since = NULL \
                     WHERE id = $2 AND status = 'running'",
                )
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            };
            tx.commit().await?;
            ended
        });
        Ok(ended)
    }

    /// Messages for these (queued) tasks, to publish them again.
    pub async fn messages_for(&self, task_ids: &[i64]) -> Result<Vec<TaskMessage>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.messages_where("t.state = 'queued' AND t.id IN ", task_ids)
            .await
    }

    async fn messages_where(
        &self,
        condition: &str,
        ids: &[i64],
    ) -> Result<Vec<TaskMessage>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "SELECT t.id, t.job_id, t.attempt, j.task_kind, j.module_hash, t.input_hash, t.input_name, \
                 t.params, j.limits, j.grants, j.labels FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE ",
            );
            q.push(condition);
            if !ids.is_empty() {
                q.push("(");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                q.push(")");
            }
            q.push(" ORDER BY t.id");
            q.build().fetch_all(pool).await?
                .into_iter()
                .map(|r| {
                    Ok::<_, sqlx::Error>((
                        r.try_get::<i64, _>(0)?,
                        r.try_get::<i64, _>(1)?,
                        r.try_get::<i64, _>(2)?,
                        r.try_get::<String, _>(3)?,
                        r.try_get::<String, _>(4)?,
                        r.try_get::<Option<String>, _>(5)?,
                        r.try_get::<String, _>(6)?,
                        r.try_get::<String, _>(7)?,
                        r.try_get::<String, _>(8)?,
                        r.try_get::<String, _>(9)?,
                        r.try_get::<String, _>(10)?,
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    task_id,
                    job_id,
                    attempt,
                    kind,
                    module,
                    input,
                    input_name,
                    params,
                    limits,
                    grants,
                    labels,
                )| TaskMessage {
                    task_id,
                    job_id,
                    attempt,
                    kind: CallKind::parse(&kind).unwrap_or(CallKind::Task),
                    module,
                    input,
                    input_name,
                    params,
                    limits: serde_json::from_str(&limits).unwrap_or_default(),
                    grants: serde_json::from_str(&grants).unwrap_or_default(),
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    delivered: 1,
                },
            )
            .collect())
    }
}
