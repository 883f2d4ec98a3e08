//! One call recorded whole: the upload-and-run fast path of the embedded
//! mode runs a call first and then records its job, task and attempt in
//! one transaction, before it answers. Nothing is recorded for a call that
//! never ends (the caller got no answer: nothing was accepted).
//!
//! On SQLite the transaction runs on the caller's thread through its own
//! connection (rusqlite): sqlx's SQLite driver hands every statement to a
//! thread of its own, and on a small machine each such hop costs more than
//! the whole transaction (measured: about 40 µs for this transaction, 60 to
//! 250 µs per hop). The caller must be allowed to block (`block_in_place`).
//! On Postgres it is an ordinary transaction.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{TransactionBehavior, params};
use sandmill_runtime::Reason;
use sandmill_runtime::message::{MAX_ERROR_BYTES, OutputRef, TaskResult, Verdict};
use sqlx::Row;

use super::types::{JsonText, Named, Text, safe_text};
use super::{NewJob, Store, StoreError, StoreErrorKind, now_ms};
use crate::model::{JobStatus, TaskState};

/// A call that ran, to record.
pub struct RunRecord<'a> {
    /// Its job (one task).
    pub job: &'a NewJob,
    /// The seed its guest's randomness was drawn from.
    pub seed: u64,
    /// Its result-cache key, if its output may be reused.
    pub cache_key: Option<&'a str>,
    /// How it ended.
    pub result: &'a TaskResult,
    /// When it was accepted (ms).
    pub started_at: i64,
}

/// Every value the three rows need, computed once for either backend.
struct Values {
    job_status: JobStatus,
    task_state: TaskState,
    verdict: Verdict,
    succeeded: i64,
    failed: i64,
    reason: Option<Reason>,
    error: Option<String>,
    output: Option<Vec<u8>>,
    output_hash: Option<String>,
    output_size: Option<i64>,
    log: Vec<u8>,
    log_hash: Option<String>,
    log_size: i64,
    worker: String,
    counters: String,
    limits: String,
    grants: String,
    labels: String,
    name: String,
    input_name: String,
    now: i64,
}

impl Values {
    fn of(run: &RunRecord<'_>) -> Result<Values, StoreError> {
        let result = run.result;
        let (output, output_hash, output_size) = match &result.output {
            Some(OutputRef::Inline(bytes)) => (Some(bytes.clone()), None, Some(bytes.len() as i64)),
            Some(OutputRef::Blob { hash, size }) => (
                None,
                Some(hash.clone()),
                Some(i64::try_from(*size).unwrap_or(i64::MAX)),
            ),
            None => (None, None, None),
        };
        let (log_hash, log_size) = match &result.log_blob {
            Some(blob) => (
                Some(blob.hash.clone()),
                i64::try_from(blob.size).unwrap_or(i64::MAX),
            ),
            None => (None, result.log.len() as i64),
        };
        let ok = result.verdict == Verdict::Succeeded;
        Ok(Values {
            job_status: if ok {
                JobStatus::Succeeded
            } else {
                JobStatus::Failed
            },
            task_state: if ok {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            },
            verdict: result.verdict,
            succeeded: i64::from(ok),
            failed: i64::from(!ok),
            reason: result.reason,
            error: result
                .error
                .as_deref()
                .map(|e| safe_text(e, MAX_ERROR_BYTES)),
            output,
            output_hash,
            output_size,
            log: result.log.clone(),
            log_hash,
            log_size,
            worker: safe_text(&result.worker, 256),
            counters: json(&result.counters)?,
            limits: json(&run.job.limits)?,
            grants: json(&run.job.grants)?,
            labels: json(&run.job.labels)?,
            name: safe_text(&run.job.name, 1024),
            input_name: safe_text(&run.job.task_input_name, 1024),
            now: now_ms(),
        })
    }
}

/// Plain data as JSON for a TEXT column.
fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::new(StoreErrorKind::Rejected, e))
}

const INSERT_JOB: &str = "INSERT INTO jobs (name, kind, status, priority, task_kind, module_hash, limits, \
     grants, labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks, \
     dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, created_at, updated_at, \
     finished_at, tenant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, 1, 1, $14, $15, 0, \
     $16, $17, $18, $19, $19, $20) RETURNING id";

const INSERT_TASK: &str = "INSERT INTO tasks (job_id, seq, state, attempt, reason, error, output, \
     output_hash, output_size, starts, seed, created_at, started_at, finished_at, cache_key) \
     VALUES ($1, 0, $2, 0, $3, $4, $5, $6, $7, 1, $8, $9, $9, $10, $11) RETURNING id";

const INSERT_ATTEMPT: &str = "INSERT INTO attempts (task_id, attempt, state, reason, error, worker, \
     elapsed_ms, fuel_used, log, log_hash, log_size, log_truncated, counters, finished_at, memory_peak) \
     VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// Writes whole calls (see the module docs). Cheap to share.
pub struct RunWriter {
    /// SQLite: a connection of its own, on the caller's thread.
    sqlite: Option<Mutex<SqliteWriter>>,
}

/// The SQLite side of a [`RunWriter`]. Its connection never checkpoints
/// the write-ahead log itself (a checkpoint syncs the disk: milliseconds
/// that the call being answered would wait); every [`CHECKPOINT_EVERY`]
/// commits it asks a thread of its own to, without waiting.
struct SqliteWriter {
    conn: rusqlite::Connection,
    commits: u32,
    checkpoint: std::sync::mpsc::SyncSender<()>,
}

/// Commits between checkpoints asked for by the call writer (a call
/// writes a few pages; SQLite's own default is every 1000 pages).
const CHECKPOINT_EVERY: u32 = 200;

/// Checkpoints the log of the database at `path` each time it is asked,
/// until the asker is gone. PASSIVE: it never blocks a writer.
fn checkpointer(path: &std::path::Path) -> Result<std::sync::mpsc::SyncSender<()>, StoreError> {
    let conn = rusqlite::Connection::open(path).map_err(sqlite_error)?;
    conn.busy_handler(Some(wait_briefly))
        .map_err(sqlite_error)?;
    let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("sandmill-checkpoint".into())
        .spawn(move || {
            while asked.recv().is_ok() {
                if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::warn!(%error, "checkpoint of the call writer's log failed");
                }
            }
        })
        .map_err(|e| StoreError::new(StoreErrorKind::Unavailable, e))?;
    Ok(ask)
}

fn sqlite_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let kind = match error.sqlite_error_code() {
        Some(C::ConstraintViolation | C::TooBig | C::TypeMismatch) => StoreErrorKind::Rejected,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, error)
}

/// How long a call's record waits for another writer at most.
const BUSY_FOR: Duration = Duration::from_secs(30);

/// How long it sleeps between tries.
const BUSY_NAP: Duration = Duration::from_micros(200);

/// SQLite's busy handler for the call writer: try again after a short nap
/// until [`BUSY_FOR`] has passed. SQLite's own timeout naps up to 100 ms
/// at a time, which a call waiting out a recorder's batch feels whole.
fn wait_briefly(tries: i32) -> bool {
    let tries = u32::try_from(tries).unwrap_or(0);
    if BUSY_NAP * tries >= BUSY_FOR {
        return false;
    }
    std::thread::sleep(BUSY_NAP);
    true
}

impl Store {
    /// A writer of whole calls for this database.
    pub fn run_writer(&self) -> Result<RunWriter, StoreError> {
        let Store::Sqlite(pool) = self else {
            return Ok(RunWriter { sqlite: None });
        };
        let path = pool.connect_options().get_filename().to_owned();
        let conn = rusqlite::Connection::open(&path).map_err(sqlite_error)?;
        conn.busy_handler(Some(wait_briefly))
            .map_err(sqlite_error)?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(sqlite_error)?;
        let checkpoint = checkpointer(&path)?;
        Ok(RunWriter {
            sqlite: Some(Mutex::new(SqliteWriter {
                conn,
                commits: 0,
                checkpoint,
            })),
        })
    }

    /// Records a call that ran: its job (ended), its task and its attempt,
    /// in one transaction. Returns (job id, task id). On SQLite this blocks
    /// the calling thread for the transaction.
    pub async fn record_run(
        &self,
        writer: &RunWriter,
        run: &RunRecord<'_>,
    ) -> Result<(i64, i64), StoreError> {
        let v = Values::of(run)?;
        if let Some(conn) = &writer.sqlite {
            // A connection holds no invariant a panic could break mid-use.
            let mut writer = conn.lock().unwrap_or_else(|e| e.into_inner());
            let written = write_sqlite(&mut writer.conn, run, &v).map_err(sqlite_error)?;
            writer.commits += 1;
            if writer.commits >= CHECKPOINT_EVERY {
                writer.commits = 0;
                // Full: one is asked for already.
                let _ = writer.checkpoint.try_send(());
            }
            return Ok(written);
        }
        let Store::Postgres(pool) = self else {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "no SQLite connection for whole calls",
            ));
        };
        let mut tx = pool.begin().await?;
        let job_id: i64 = sqlx::query(INSERT_JOB)
            .bind(v.name.clone())
            .bind(Text(run.job.kind))
            .bind(Text(v.job_status))
            .bind(i64::from(run.job.priority))
            .bind(Text(run.job.task_kind))
            .bind(run.job.module_hash.clone())
            .bind(v.limits.clone())
            .bind(v.grants.clone())
            .bind(v.labels.clone())
            .bind(run.job.definition.clone())
            .bind(run.job.task_params.clone())
            .bind(run.job.task_input.clone())
            .bind(v.input_name.clone())
            .bind(v.succeeded)
            .bind(v.failed)
            .bind(run.job.max_attempts)
            .bind(run.job.queue_timeout_ms)
            .bind(run.started_at)
            .bind(v.now)
            .bind(run.job.tenant.clone())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let task_id: i64 = sqlx::query(INSERT_TASK)
            .bind(job_id)
            .bind(Text(v.task_state))
            .bind(v.reason.map(Text))
            .bind(v.error.clone())
            .bind(v.output.clone())
            .bind(v.output_hash.clone())
            .bind(v.output_size)
            .bind(run.seed as i64)
            .bind(run.started_at)
            .bind(v.now)
            .bind(run.cache_key)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        sqlx::query(INSERT_ATTEMPT)
            .bind(task_id)
            .bind(Text(v.verdict))
            .bind(v.reason.map(Text))
            .bind(v.error.clone())
            .bind(v.worker.clone())
            .bind(run.result.elapsed_ms)
            .bind(
                run.result
                    .fuel_used
                    .map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            )
            .bind(v.log.clone())
            .bind(v.log_hash.clone())
            .bind(v.log_size)
            .bind(i64::from(run.result.log_truncated))
            .bind(JsonText(run.result.counters.clone()))
            .bind(v.now)
            .bind(
                run.result
                    .memory_peak
                    .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            )
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((job_id, task_id))
    }
}

fn write_sqlite(
    conn: &mut rusqlite::Connection,
    run: &RunRecord<'_>,
    v: &Values,
) -> Result<(i64, i64), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let job_id: i64 = tx
        .prepare_cached(&INSERT_JOB.replace('$', "?"))?
        .query_row(
            params![
                v.name,
                run.job.kind.name(),
                v.job_status.name(),
                i64::from(run.job.priority),
                run.job.task_kind.name(),
                run.job.module_hash,
                v.limits,
                v.grants,
                v.labels,
                run.job.definition,
                run.job.task_params,
                run.job.task_input,
                v.input_name,
                v.succeeded,
                v.failed,
                run.job.max_attempts,
                run.job.queue_timeout_ms,
                run.started_at,
                v.now,
                run.job.tenant,
            ],
            |row| row.get(0),
        )?;
    let task_id: i64 = tx
        .prepare_cached(&INSERT_TASK.replace('$', "?"))?
        .query_row(
            params![
                job_id,
                v.task_state.name(),
                v.reason.map(|r| r.as_str()),
                v.error,
                v.output,
                v.output_hash,
                v.output_size,
                run.seed as i64,
                run.started_at,
                v.now,
                run.cache_key,
            ],
            |row| row.get(0),
        )?;
    tx.prepare_cached(&INSERT_ATTEMPT.replace('$', "?"))?
        .execute(params![
            task_id,
            v.verdict.name(),
            v.reason.map(|r| r.as_str()),
            v.error,
            v.worker,
            run.result.elapsed_ms,
            run.result
                .fuel_used
                .map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            v.log,
            v.log_hash,
            v.log_size,
            i64::from(run.result.log_truncated),
            v.counters,
            v.now,
            run.result
                .memory_peak
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        ])?;
    tx.commit()?;
    Ok((job_id, task_id))
}
