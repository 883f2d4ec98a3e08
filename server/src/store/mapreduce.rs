//! Map-reduce jobs: reading the maps' outputs, planning the reduces once
//! every map succeeded, and the job's phases.

use sqlx::{QueryBuilder, Row};

use super::types::{Text, safe_text};
use super::{INSERT_CHUNK, Item, Store, StoreError, now_ms, on_pool};
use crate::model::{JobKind, JobStatus, TaskState};

/// One map's output as stored: inline bytes or a blob.
#[derive(Clone, Debug)]
pub struct MapResult {
    /// The map's index (its task's seq).
    pub seq: i64,
    /// The output, when kept inline.
    pub output: Option<Vec<u8>>,
    /// The output's blob, when not.
    pub output_hash: Option<String>,
}

/// Tasks of one phase of a map-reduce job per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// Not created yet (maps waiting for room, reduces for the maps).
    pub pending: i64,
    /// Waiting for a worker.
    pub queued: i64,
    /// On a worker.
    pub running: i64,
    /// Done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// A running task of a map-reduce job, as speculation sees it.
#[derive(Clone, Copy, Debug)]
pub struct RunningTask {
    /// The task.
    pub id: i64,
    /// Its index in the job (maps first).
    pub seq: i64,
    /// When its current attempt started (ms, the server's clock).
    pub started_at: i64,
    /// Whether it already has a backup attempt.
    pub backed_up: bool,
}

impl Store {
    /// Running map-reduce jobs that allow backup attempts: (id, maps), at
    /// most `limit`.
    pub async fn speculating_jobs(&self, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT id, maps, shuffle FROM jobs WHERE status = $1 AND kind = $2 ORDER BY id LIMIT $3",
        )
        .bind(Text(JobStatus::Running))
        .bind(Text(JobKind::MapReduce))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((
            r.try_get::<i64, _>(0)?,
            r.try_get::<Option<i64>, _>(1)?,
            r.try_get::<Option<super::types::JsonText<crate::jobfile::ShuffleSettings>>, _>(2)?,
        )))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows
            .into_iter()
            .filter_map(|(id, maps, shuffle)| match (maps, shuffle) {
                (Some(maps), Some(s)) if s.0.speculation => Some((id, maps)),
                _ => None,
            })
            .collect())
    }

    /// A job's running tasks whose start was recorded (at most a dispatch
    /// window of them).
    pub async fn running_tasks(&self, job_id: i64) -> Result<Vec<RunningTask>, StoreError> {
        let running = on_pool!(self, pool => sqlx::query(
            "SELECT id, seq, started_at, prior FROM tasks WHERE job_id = $1 AND state = $2 \
             AND started_at IS NOT NULL",
        )
        .bind(job_id)
        .bind(Text(TaskState::Running))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>(RunningTask {
            id: r.try_get(0)?,
            seq: r.try_get(1)?,
            started_at: r.try_get(2)?,
            backed_up: r.try_get::<Option<i64>, _>(3)?.is_some(),
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(running)
    }

    /// The wall times of a job's succeeded attempts per phase (maps,
    /// reduces).
    pub async fn phase_durations(
        &self,
        job_id: i64,
        maps: i64,
    ) -> Result<[Vec<i64>; 2], StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "SELECT t.seq, a.elapsed_ms FROM attempts a JOIN tasks t ON t.id = a.task_id \
             WHERE t.job_id = $1 AND a.state = $2",
        )
        .bind(job_id)
        .bind(Text(sandmill_runtime::message::Verdict::Succeeded))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
        let mut phases = [Vec::new(), Vec::new()];
        for (seq, elapsed) in done {
            phases[usize::from(seq >= maps)].push(elapsed);
        }
        Ok(phases)
    }

    /// Starts a backup attempt of a running task (if it has none and an
    /// attempt is left): its message, to publish. The attempt it backs up
    /// may still report; the first result of the two counts.
    pub async fn back_up(
        &self,
        task_id: i64,
    ) -> Result<Option<sandmill_runtime::message::TaskMessage>, StoreError> {
        let changed = on_pool!(self, pool => sqlx::query(
            "UPDATE tasks SET prior = attempt, attempt = attempt + 1 \
             WHERE id = $1 AND state = $2 AND prior IS NULL \
             AND attempt + 1 < (SELECT max_attempts FROM jobs WHERE jobs.id = tasks.job_id)",
        )
        .bind(task_id)
        .bind(Text(TaskState::Running))
        .execute(pool)
        .await?
        .rows_affected());
        if changed == 0 {
            return Ok(None);
        }
        Ok(self.live_messages(&[task_id]).await?.into_iter().next())
    }

    /// The outputs of a map-reduce job's succeeded maps, by map index.
    pub async fn map_results(&self, job_id: i64, maps: i64) -> Result<Vec<MapResult>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT seq, output, output_hash FROM tasks WHERE job_id = $1 AND seq < $2 AND state = $3 ORDER BY seq",
        )
        .bind(job_id)
        .bind(maps)
        .bind(Text(TaskState::Succeeded))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>(MapResult {
            seq: r.try_get(0)?,
            output: r.try_get(1)?,
            output_hash: r.try_get(2)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Appends a map-reduce job's reduces to its backlog (one item each:
    /// its run list and name), if its maps all succeeded and nobody did it
    /// first. Returns whether this call planned them.
    pub async fn plan_reduces(&self, job_id: i64, reduces: &[Item]) -> Result<bool, StoreError> {
        let now = now_ms();
        let planned = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let row = sqlx::query(
                "UPDATE jobs SET total_tasks = total_tasks + $1, planned = 1, has_items = 1, updated_at = $2 \
                 WHERE id = $3 AND status = $4 AND kind IN ($5, $6) AND planned = 0 AND succeeded = maps \
                 RETURNING maps",
            )
            .bind(reduces.len() as i64)
            .bind(now)
            .bind(job_id)
            .bind(Text(JobStatus::Running))
            .bind(Text(JobKind::MapReduce))
            .bind(Text(JobKind::Step))
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => {
                    let maps: i64 = row.try_get(0)?;
                    for (chunk_index, chunk) in reduces.chunks(INSERT_CHUNK).enumerate() {
                        let mut insert = QueryBuilder::new(
                            "INSERT INTO job_items (job_id, seq, params, input_hash, input_name) ",
                        );
                        insert.push_values(chunk.iter().enumerate(), |mut row, (i, item)| {
                            row.push_bind(job_id)
                                .push_bind(maps + (chunk_index * INSERT_CHUNK + i) as i64)
                                .push_bind(item.params.clone())
                                .push_bind(item.input_hash.clone())
                                .push_bind(safe_text(&item.input_name, 1024));
                        });
                        insert.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    true
                }
                None => {
                    tx.rollback().await?;
                    false
                }
            }
        });
        Ok(planned)
    }

    /// Running map-reduce jobs whose maps all succeeded and whose reduces
    /// are not planned (after a restart, or a planning that failed).
    pub async fn unplanned_jobs(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let ids = on_pool!(self, pool => sqlx::query(
            "SELECT id FROM jobs WHERE status = $1 AND kind IN ($2, $4) AND planned = 0 AND succeeded = maps \
             ORDER BY id LIMIT $3",
        )
        .bind(Text(JobStatus::Running))
        .bind(Text(JobKind::MapReduce))
        .bind(limit)
        .bind(Text(JobKind::Step))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(ids)
    }

    /// A map-reduce job's tasks per phase (maps, reduces) and state;
    /// `None` for other jobs.
    pub async fn phases(
        &self,
        job: &super::JobRow,
    ) -> Result<Option<[PhaseCounts; 2]>, StoreError> {
        if job.maps.is_none() {
            return Ok(None);
        }
        Ok(Some(self.phase_counts(job).await?))
    }

    /// A map-reduce job's tasks per phase (maps, reduces) and state.
    pub async fn phase_counts(&self, job: &super::JobRow) -> Result<[PhaseCounts; 2], StoreError> {
        let maps = job.maps.unwrap_or(job.total_tasks);
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT CASE WHEN seq < $2 THEN 0 ELSE 1 END AS phase, state, COUNT(*) FROM tasks \
             WHERE job_id = $1 GROUP BY CASE WHEN seq < $2 THEN 0 ELSE 1 END, state",
        )
        .bind(job.id)
        .bind(maps)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i32, _>(0)?, r.try_get::<Text<TaskState>, _>(1)?.0, r.try_get::<i64, _>(2)?)))
        .collect::<Result<Vec<_>, _>>()?);
        let mut phases = [PhaseCounts::default(); 2];
        for (phase, state, n) in rows {
            let counts = &mut phases[usize::from(phase != 0)];
            match state {
                TaskState::Pending => counts.pending += n,
                TaskState::Queued => counts.queued += n,
                TaskState::Running => counts.running += n,
                TaskState::Succeeded | TaskState::Cached => counts.succeeded += n,
                TaskState::Failed => counts.failed += n,
                TaskState::Cancelled => counts.cancelled += n,
            }
        }
        let created = |p: &PhaseCounts| {
            p.queued + p.running + p.succeeded + p.failed + p.cancelled + p.pending
        };
        let total = [maps, job.reducers];
        for (phase, total) in phases.iter_mut().zip(total) {
            let left = (total - created(phase)).max(0);
            if job.status().is_final() {
                phase.cancelled += left;
            } else {
                phase.pending += left;
            }
        }
        Ok(phases)
    }
}
