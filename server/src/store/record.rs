//! Recording what workers report: a batch of events in one transaction.
//!
//! A result counts only if it names the task's current attempt while the
//! task is live: a duplicate or stale delivery changes nothing, and of two
//! results for one attempt in one batch the first is recorded, in the
//! task row and the attempt row alike. Every guest-controlled text is made
//! safe for the database here, at the boundary.

use std::collections::{BTreeMap, BTreeSet};

use sandmill_runtime::Reason;
use sandmill_runtime::message::{
    MAX_ERROR_BYTES, OutputRef, TaskEvent, TaskMessage, TaskResult, Verdict,
};
use sqlx::{QueryBuilder, Row};

use super::types::{JsonText, Text, safe_text};
use super::{LIVE_SQL, RECORD_CHUNK, Store, StoreError, now_ms, on_pool, per_backend};
use crate::events::JobCounts;
use crate::model::{JobStatus, TaskState};

/// What recording a batch of events changed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Tasks whose final result was recorded (they left the window).
    pub finished_tasks: Vec<i64>,
    /// Results ignored as stale or duplicate.
    pub ignored: usize,
    /// Tasks queued again for another attempt.
    pub retried: Vec<i64>,
    /// Jobs that reached a final status.
    pub finished_jobs: Vec<i64>,
    /// Map-reduce jobs whose maps all succeeded: their reduces are to be
    /// planned.
    pub maps_done: Vec<i64>,
    /// Running map-reduce jobs with a task that failed for good: the job
    /// fails (what is left of it is cancelled).
    pub failing: Vec<i64>,
    /// Results the database refused, recorded instead as their tasks'
    /// failures (filled in by the scheduler's recorder).
    pub set_aside: Vec<TaskResult>,
    /// Tasks of pipeline steps planned in the same transaction (their
    /// inputs' last success is in this batch), to publish.
    pub planned: Vec<TaskMessage>,
    /// Steps in `finished_jobs` whose every ready reader was planned in
    /// the transaction: the scheduler has nothing to do after them.
    pub followed: Vec<i64>,
    /// The status and counts of every job the batch changed, after it.
    pub counts: Vec<(i64, JobCounts)>,
}

/// What updating the jobs of a batch found.
pub(crate) struct JobsUpdated {
    /// Jobs that ended.
    pub ended: Vec<i64>,
    /// Map-reduce jobs whose maps all succeeded.
    pub maps_done: Vec<i64>,
    /// Running map-reduce jobs with a new failure.
    pub failing: Vec<i64>,
    /// Every job's status and counts after the batch.
    pub counts: Vec<(i64, JobCounts)>,
}

/// A batch sorted into what each part of the transaction does.
struct Sorted<'a> {
    /// Starts whose end is not in the batch.
    starts: Vec<(i64, i64)>,
    /// Retryable failures (requeued if attempts are left).
    retries: Vec<&'a TaskResult>,
    /// Everything else that ended, one per task.
    finals: Vec<&'a TaskResult>,
    /// Results dropped as duplicates within the batch.
    duplicates: usize,
}

/// What a job's attempts used, as a batch records them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Used {
    /// Wall time, in ms.
    busy_ms: i64,
    /// Bytes of outputs and logs kept.
    bytes: i64,
}

impl Used {
    fn add(&mut self, result: &TaskResult) {
        let output = match &result.output {
            Some(OutputRef::Inline(bytes)) => bytes.len() as i64,
            Some(OutputRef::Blob { size, .. }) => i64::try_from(*size).unwrap_or(i64::MAX),
            None => 0,
        };
        let log = match &result.log_blob {
            Some(blob) => i64::try_from(blob.size).unwrap_or(i64::MAX),
            None => result.log.len() as i64,
        };
        self.busy_ms = self.busy_ms.saturating_add(result.elapsed_ms.max(0));
        self.bytes = self.bytes.saturating_add(output).saturating_add(log);
    }
}

fn sort(events: &[TaskEvent]) -> Sorted<'_> {
    // A start whose end is in the same batch needs no write of its own.
    let ended: BTreeSet<(i64, i64)> = events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Finished(r) => Some((r.task_id, r.attempt)),
            TaskEvent::Started { .. } | TaskEvent::Progress { .. } => None,
        })
        .collect();
    let mut sorted = Sorted {
        starts: Vec::new(),
        retries: Vec::new(),
        finals: Vec::new(),
        duplicates: 0,
    };
    let mut seen = BTreeSet::new();
    for event in events {
        match event {
            TaskEvent::Started {
                task_id, attempt, ..
            } => {
                if !ended.contains(&(*task_id, *attempt)) {
                    sorted.starts.push((*task_id, *attempt));
                }
            }
            TaskEvent::Finished(result) => {
                if !seen.insert(result.task_id) {
                    sorted.duplicates += 1;
                } else if result.verdict == Verdict::Failed && result.retryable {
                    sorted.retries.push(result);
                } else {
                    sorted.finals.push(result);
                }
            }
            // Shown live, never stored.
            TaskEvent::Progress { .. } => {}
        }
    }
    sorted
}

/// A worker-lost task whose workers died while running it twice or more
/// is a crash loop (the guest likely takes its worker down).
fn lost_reason(starts: i64) -> Reason {
    if starts >= 2 {
        Reason::CrashLoop
    } else {
        Reason::WorkerLost
    }
}

/// What a final result writes into its task row.
pub(crate) struct Final<'a> {
    result: &'a TaskResult,
    reason: Option<Reason>,
}

per_backend! {
    /// Marks started tasks running and counts each delivery's start.
    pub(crate) async fn apply_starts(
        tx: &mut sqlx::Transaction<'static, Db>,
        starts: &[(i64, i64)],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for (task_id, attempt) in starts {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET state = $1, starts = starts + 1, \
                 started_at = COALESCE(started_at, $2) \
                 WHERE id = $3 AND attempt = $4 AND {LIVE_SQL}"
            )))
            .bind(Text(TaskState::Running))
            .bind(now)
            .bind(*task_id)
            .bind(*attempt)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Queues retryable failures again as their next attempt, if attempts
    /// are left; returns the tasks requeued, with their jobs. The failure
    /// of an attempt superseded by a backup only ends it (the backup goes
    /// on): such tasks are returned too, with no new attempt to publish.
    pub(crate) async fn requeue(
        tx: &mut sqlx::Transaction<'static, Db>,
        retries: &[&TaskResult],
    ) -> Result<Vec<(i64, i64, bool)>, sqlx::Error> {
        let mut requeued = Vec::new();
        for result in retries {
            let superseded: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET prior = NULL WHERE id = $1 AND prior = $2 AND {LIVE_SQL} RETURNING job_id"
            )))
            .bind(result.task_id)
            .bind(result.attempt)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if let Some(job) = superseded {
                requeued.push((result.task_id, job, false));
                continue;
            }
            let job: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET state = $1, attempt = attempt + 1, started_at = NULL \
                 WHERE id = $2 AND attempt = $3 AND {LIVE_SQL} \
                 AND attempt + 1 < (SELECT max_attempts FROM jobs WHERE jobs.id = tasks.job_id) \
                 RETURNING job_id"
            )))
            .bind(Text(TaskState::Queued))
            .bind(result.task_id)
            .bind(result.attempt)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if let Some(job) = job {
                requeued.push((result.task_id, job, true));
            }
        }
        Ok(requeued)
    }

    /// How many times each of these tasks was started (for worker-lost
    /// results: a crash loop or not).
    pub(crate) async fn starts_of(
        tx: &mut sqlx::Transaction<'static, Db>,
        tasks: &[i64],
    ) -> Result<BTreeMap<i64, i64>, sqlx::Error> {
        let mut starts = BTreeMap::new();
        for chunk in tasks.chunks(RECORD_CHUNK) {
            let mut q = QueryBuilder::new("SELECT id, starts FROM tasks WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                starts.insert(row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
        Ok(starts)
    }

    /// Writes final results into their task rows (a few multi-row
    /// statements); returns (task, job, verdict) of those that counted.
    pub(crate) async fn apply_finals(
        tx: &mut sqlx::Transaction<'static, Db>,
        finals: &[Final<'_>],
        now: i64,
    ) -> Result<Vec<(i64, i64, Verdict)>, sqlx::Error> {
        let mut applied = Vec::new();
        for chunk in finals.chunks(RECORD_CHUNK) {
            let mut update = QueryBuilder::new(
                "UPDATE tasks SET state = v.column3, reason = v.column4, error = v.column5, \
                 output = v.column6, output_hash = v.column7, output_size = v.column8, prior = NULL, \
                 started_at = COALESCE(tasks.started_at, v.column9), finished_at = ",
            );
            update.push_bind(now).push(" FROM (");
            update.push_values(chunk.iter(), |mut row, f| {
                let result = f.result;
                let (output, output_hash, output_size) = match &result.output {
                    Some(OutputRef::Inline(bytes)) => (Some(bytes.clone()), None, Some(bytes.len() as i64)),
                    Some(OutputRef::Blob { hash, size }) => {
                        (None, Some(hash.clone()), Some(i64::try_from(*size).unwrap_or(i64::MAX)))
                    }
                    None => (None, None, None),
                };
                let state = match result.verdict {
                    Verdict::Succeeded => TaskState::Succeeded,
                    Verdict::Failed => TaskState::Failed,
                };
                row.push_bind(result.task_id)
                    .push_bind(result.attempt)
                    .push_bind(Text(state))
                    .push_bind(f.reason.map(Text))
                    .push_bind(result.error.as_deref().map(|e| safe_text(e, MAX_ERROR_BYTES)))
                    .push_bind(output)
                    .push_bind(output_hash)
                    .push_bind(output_size)
                    // A quick task's start is told only by its end.
                    .push_bind(result.started_ms);
            });
            // A backup's result counts, and so does the attempt it backs
            // up (`prior`): the first of the two to finish.
            update.push(format!(
                ") AS v WHERE tasks.id = v.column1 AND (tasks.attempt = v.column2 OR tasks.prior = v.column2) \
                 AND tasks.{LIVE_SQL} RETURNING tasks.id, tasks.job_id, tasks.state"
            ));
            for row in update.build().fetch_all(&mut **tx).await? {
                let verdict = match row.try_get::<Text<TaskState>, _>(2)?.0 {
                    TaskState::Succeeded => Verdict::Succeeded,
                    _ => Verdict::Failed,
                };
                applied.push((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?, verdict));
            }
        }
        Ok(applied)
    }

    /// One attempt row per result that counted.
    pub(crate) async fn insert_attempts(
        tx: &mut sqlx::Transaction<'static, Db>,
        attempts: &[(&TaskResult, Option<Reason>)],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for chunk in attempts.chunks(RECORD_CHUNK) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO attempts (task_id, attempt, state, reason, error, worker, elapsed_ms, \
                 fuel_used, log, log_hash, log_size, log_truncated, counters, finished_at, started_at, \
                 memory_peak) ",
            );
            insert.push_values(chunk.iter(), |mut row, (result, reason)| {
                let (log_hash, log_size) = match &result.log_blob {
                    Some(blob) => (Some(blob.hash.clone()), i64::try_from(blob.size).unwrap_or(i64::MAX)),
                    None => (None, result.log.len() as i64),
                };
                row.push_bind(result.task_id)
                    .push_bind(result.attempt)
                    .push_bind(Text(result.verdict))
                    .push_bind(reason.map(Text))
                    .push_bind(result.error.as_deref().map(|e| safe_text(e, MAX_ERROR_BYTES)))
                    .push_bind(safe_text(&result.worker, 256))
                    .push_bind(result.elapsed_ms)
                    .push_bind(result.fuel_used.map(|f| i64::try_from(f).unwrap_or(i64::MAX)))
                    .push_bind(result.log.clone())
                    .push_bind(log_hash)
                    .push_bind(log_size)
                    .push_bind(i64::from(result.log_truncated))
                    .push_bind(JsonText(result.counters.clone()))
                    .push_bind(now)
                    .push_bind(result.started_ms)
                    .push_bind(result.memory_peak.map(|m| i64::try_from(m).unwrap_or(i64::MAX)));
            });
            insert.push(" ON CONFLICT (task_id, attempt) DO NOTHING");
            insert.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Charges what attempts that ended used to their jobs and tenants:
    /// wall time in `hour` (held against CPU quotas), and the bytes of
    /// outputs and logs they left (held against storage quotas).
    pub(crate) async fn charge_use(
        tx: &mut sqlx::Transaction<'static, Db>,
        used: &BTreeMap<i64, Used>,
        hour: i64,
    ) -> Result<(), sqlx::Error> {
        for (job_id, used) in used {
            if used.busy_ms > 0 {
                sqlx::query(
                    "INSERT INTO tenant_hours (tenant, hour, tasks, busy_ms) \
                     SELECT tenant, $1, 0, $2 FROM jobs WHERE id = $3 \
                     ON CONFLICT (tenant, hour) DO UPDATE SET busy_ms = tenant_hours.busy_ms + EXCLUDED.busy_ms",
                )
                .bind(hour)
                .bind(used.busy_ms)
                .bind(*job_id)
                .execute(&mut **tx)
                .await?;
            }
            if used.bytes > 0 {
                sqlx::query("UPDATE jobs SET stored_bytes = stored_bytes + $1 WHERE id = $2")
                    .bind(used.bytes)
                    .bind(*job_id)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO tenant_storage (tenant, bytes) SELECT tenant, $1 FROM jobs WHERE id = $2 \
                     ON CONFLICT (tenant) DO UPDATE SET bytes = tenant_storage.bytes + EXCLUDED.bytes",
                )
                .bind(used.bytes)
                .bind(*job_id)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Adds guests' counters to their jobs' sums (at most
    /// [`MAX_COUNTERS`](sandmill_runtime::message::MAX_COUNTERS) names).
    pub(crate) async fn add_counters(
        tx: &mut sqlx::Transaction<'static, Db>,
        sums: &BTreeMap<i64, BTreeMap<String, i64>>,
    ) -> Result<(), sqlx::Error> {
        for (job_id, sum) in sums {
            let Some(row) = sqlx::query("SELECT counters FROM jobs WHERE id = $1")
                .bind(*job_id)
                .fetch_optional(&mut **tx)
                .await?
            else {
                continue;
            };
            let mut counters: BTreeMap<String, i64> =
                row.try_get::<JsonText<BTreeMap<String, i64>>, _>(0).map(|c| c.0).unwrap_or_default();
            for (name, delta) in sum {
                let slot = counters.entry(name.clone()).or_default();
                *slot = slot.saturating_add(*delta);
            }
            let counters = sandmill_runtime::message::bound_counters(counters);
            sqlx::query("UPDATE jobs SET counters = $1 WHERE id = $2")
                .bind(JsonText(counters))
                .bind(*job_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Adds finished tasks to their jobs' counters, notes the change, and
    /// ends the jobs with nothing left to run; returns those ended, the
    /// map-reduce jobs whose maps are all done, and the running map-reduce
    /// jobs with a new failure.
    pub(crate) async fn update_jobs(
        tx: &mut sqlx::Transaction<'static, Db>,
        changes: &BTreeMap<i64, (i64, i64)>,
        now: i64,
    ) -> Result<JobsUpdated, sqlx::Error> {
        // One statement per job: the counters, and the end when nothing of
        // it is left to run (every task dispatched, none live). SET
        // expressions see the row as it was, so `failed + $2` is the new
        // count; a job that ends here returns finished_at = now.
        // A map-reduce job whose reduces are not planned yet is not done,
        // unless it failed; nor is one with runs again still pending (the
        // dispatcher sends them as it has room).
        let ended_sql = format!(
            "status = $5 AND kind <> 'subscription' AND dispatched = total_tasks AND reruns = 0 \
             AND (planned = 1 OR failed + $2 > 0) AND NOT EXISTS \
             (SELECT 1 FROM tasks WHERE tasks.job_id = jobs.id AND tasks.{LIVE_SQL})"
        );
        let sql = format!(
            "UPDATE jobs SET succeeded = succeeded + $1, failed = failed + $2, updated_at = $3, \
             status = CASE WHEN {ended_sql} THEN (CASE WHEN failed + $2 > 0 THEN $6 ELSE $7 END) ELSE status END, \
             finished_at = CASE WHEN {ended_sql} THEN $3 ELSE finished_at END, \
             waiting = CASE WHEN {ended_sql} THEN NULL ELSE waiting END, \
             waiting_since = CASE WHEN {ended_sql} THEN NULL ELSE waiting_since END \
             WHERE id = $4 RETURNING status, finished_at, kind, planned, succeeded, maps, \
             failed, cancelled, total_tasks, parent_id"
        );
        let mut ended = Vec::new();
        let mut maps_done = Vec::new();
        let mut failing = Vec::new();
        let mut counts = Vec::with_capacity(changes.len());
        for (job_id, (succeeded, failed)) in changes {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(*succeeded)
                .bind(*failed)
                .bind(now)
                .bind(*job_id)
                .bind(Text(JobStatus::Running))
                .bind(Text(JobStatus::Failed))
                .bind(Text(JobStatus::Succeeded))
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else { continue };
            let status = row.try_get::<Text<JobStatus>, _>(0)?.0;
            counts.push((
                *job_id,
                JobCounts {
                    parent_id: row.try_get(9)?,
                    status,
                    total: row.try_get(8)?,
                    succeeded: row.try_get(4)?,
                    failed: row.try_get(6)?,
                    cancelled: row.try_get(7)?,
                },
            ));
            if status != JobStatus::Running
                && row.try_get::<Option<i64>, _>(1)? == Some(now)
                && (*succeeded > 0 || *failed > 0)
            {
                ended.push(*job_id);
            }
            // A map-reduce job, or step (planned 0 while its reduces wait).
            if status == JobStatus::Running && row.try_get::<Option<i64>, _>(5)?.is_some() {
                if *failed > 0 {
                    failing.push(*job_id);
                } else if row.try_get::<i64, _>(3)? == 0
                    && Some(row.try_get::<i64, _>(4)?) == row.try_get::<Option<i64>, _>(5)?
                {
                    maps_done.push(*job_id);
                }
            }
        }
        Ok(JobsUpdated {
            ended,
            maps_done,
            failing,
            counts,
        })
    }
}

impl Store {
    /// Applies a batch of worker events in one transaction (see the module
    /// docs for what counts).
    pub async fn record(&self, events: &[TaskEvent]) -> Result<Recorded, StoreError> {
        let now = now_ms();
        let sorted = sort(events);
        let mut recorded = Recorded {
            ignored: sorted.duplicates,
            ..Recorded::default()
        };
        let (finished_tasks, retried, jobs, followed) = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            db::record::apply_starts(&mut tx, &sorted.starts, now).await?;
            let requeued = db::record::requeue(&mut tx, &sorted.retries).await?;
            let requeued_ids: BTreeSet<i64> = requeued.iter().map(|(t, _, _)| *t).collect();
            // Retryable failures with no attempt left are final.
            let finals: Vec<&TaskResult> = sorted
                .finals
                .iter()
                .copied()
                .chain(sorted.retries.iter().copied().filter(|r| !requeued_ids.contains(&r.task_id)))
                .collect();
            let lost: Vec<i64> = finals
                .iter()
                .filter(|r| r.reason == Some(Reason::WorkerLost))
                .map(|r| r.task_id)
                .collect();
            let starts = if lost.is_empty() {
                BTreeMap::new()
            } else {
                db::record::starts_of(&mut tx, &lost).await?
            };
            let finals: Vec<Final<'_>> = finals
                .into_iter()
                .map(|result| Final {
                    result,
                    reason: match result.reason {
                        Some(Reason::WorkerLost) => {
                            Some(lost_reason(starts.get(&result.task_id).copied().unwrap_or(0)))
                        }
                        other => other,
                    },
                })
                .collect();
            let applied = db::record::apply_finals(&mut tx, &finals, now).await?;
            let applied_ids: BTreeSet<i64> = applied.iter().map(|(t, _, _)| *t).collect();
            let attempts: Vec<(&TaskResult, Option<Reason>)> = finals
                .iter()
                .filter(|f| applied_ids.contains(&f.result.task_id))
                .map(|f| (f.result, f.reason))
                .chain(
                    sorted
                        .retries
                        .iter()
                        .filter(|r| requeued_ids.contains(&r.task_id))
                        .map(|r| (*r, r.reason)),
                )
                .collect();
            db::record::insert_attempts(&mut tx, &attempts, now).await?;
            let mut used: BTreeMap<i64, Used> = BTreeMap::new();
            for (result, _) in &attempts {
                used.entry(result.job_id).or_default().add(result);
            }
            db::record::charge_use(&mut tx, &used, now / super::HOUR_MS).await?;
            let mut changes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            for (_, job, verdict) in &applied {
                let entry = changes.entry(*job).or_default();
                match verdict {
                    Verdict::Succeeded => entry.0 += 1,
                    Verdict::Failed => entry.1 += 1,
                }
            }
            for (_, job, _) in &requeued {
                changes.entry(*job).or_default();
            }
            // The guests' counters of the successes that counted, per job.
            let job_of: BTreeMap<i64, i64> = applied.iter().map(|(t, j, _)| (*t, *j)).collect();
            let mut sums: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
            for f in &finals {
                if f.result.verdict == Verdict::Succeeded
                    && !f.result.counters.is_empty()
                    && let Some(job) = job_of.get(&f.result.task_id)
                {
                    let sum = sums.entry(*job).or_default();
                    for (name, delta) in &f.result.counters {
                        let slot = sum.entry(name.clone()).or_default();
                        *slot = slot.saturating_add(*delta);
                    }
                }
            }
            db::record::add_counters(&mut tx, &sums).await?;
            let mut jobs = db::record::update_jobs(&mut tx, &changes, now).await?;
            let followed = db::pipeline::follow(&mut tx, &jobs.ended, now).await?;
            jobs.ended.extend(followed.ended.iter().copied());
            tx.commit().await?;
            let finished: Vec<i64> = applied.iter().map(|(t, _, _)| *t).collect();
            let retried: Vec<i64> = requeued.iter().filter(|(_, _, again)| *again).map(|(t, _, _)| *t).collect();
            (finished, retried, jobs, followed)
        });
        let counted = finished_tasks.len() + retried.len();
        let results = events
            .iter()
            .filter(|e| matches!(e, TaskEvent::Finished(_)))
            .count();
        recorded.ignored = results.saturating_sub(counted);
        recorded.finished_tasks = finished_tasks;
        recorded.retried = retried;
        recorded.finished_jobs = jobs.ended;
        recorded.maps_done = jobs.maps_done;
        recorded.failing = jobs.failing;
        recorded.counts = jobs.counts;
        recorded.planned = followed.messages;
        recorded.followed = followed.done;
        Ok(recorded)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn finished(task_id: i64, verdict: Verdict, retryable: bool) -> TaskEvent {
        TaskEvent::Finished(TaskResult {
            job_id: 1,
            task_id,
            attempt: 0,
            worker: "w".into(),
            verdict,
            reason: None,
            error: None,
            retryable,
            output: None,
            log: Vec::new(),
            log_blob: None,
            log_truncated: false,
            counters: Default::default(),
            started_ms: None,
            elapsed_ms: 0,
            fuel_used: None,
            ticket: String::new(),
            kind: None,
            waited_ms: None,
            memory_peak: None,
        })
    }

    #[test]
    fn a_batch_keeps_one_result_per_task_and_drops_starts_that_ended() {
        let events = vec![
            TaskEvent::Started {
                job_id: 1,
                task_id: 1,
                attempt: 0,
                worker: "w".into(),
                delivery: 1,
                ticket: String::new(),
            },
            TaskEvent::Started {
                job_id: 1,
                task_id: 2,
                attempt: 0,
                worker: "w".into(),
                delivery: 1,
                ticket: String::new(),
            },
            finished(1, Verdict::Succeeded, false),
            finished(1, Verdict::Failed, false),
            finished(3, Verdict::Failed, true),
        ];
        let sorted = sort(&events);
        assert_eq!(sorted.starts, vec![(2, 0)]);
        assert_eq!(sorted.finals.len(), 1);
        assert_eq!(sorted.finals[0].verdict, Verdict::Succeeded);
        assert_eq!(sorted.retries.len(), 1);
        assert_eq!(sorted.duplicates, 1);
    }

    #[test]
    fn workers_dying_twice_under_a_task_is_a_crash_loop() {
        assert_eq!(lost_reason(0), Reason::WorkerLost);
        assert_eq!(lost_reason(1), Reason::WorkerLost);
        assert_eq!(lost_reason(2), Reason::CrashLoop);
    }
}
