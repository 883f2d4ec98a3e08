//! Utilization samples: written by the sampler
//! ([`run_utilization`](crate::scheduler::Scheduler::run_utilization)),
//! read back in buckets for `/v1/utilization`, deleted past retention.

use sqlx::{QueryBuilder, Row};

use super::{INSERT_CHUNK, Store, StoreError, on_pool};

/// The worker name of the fleet's totals (no worker id can be it).
pub const TOTAL: &str = "*";

/// One worker's state at a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The worker's id, or [`TOTAL`].
    pub worker: String,
    /// Its task slots.
    pub slots: i64,
    /// Slots running a task, on average since the worker's previous
    /// heartbeat.
    pub busy: f64,
    /// Tasks it began since its previous sample.
    pub started: i64,
    /// Tasks it ended since its previous sample.
    pub finished: i64,
}

/// One bucket of a series: averages of the samples in it, sums of the
/// counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The bucket's place: 0 for the one starting at `from`, 1 for the
    /// next, ...
    pub bucket: i64,
    /// Slots, on average over the bucket's samples.
    pub slots: f64,
    /// Busy slots, on average.
    pub busy: f64,
    /// Tasks begun in the bucket.
    pub started: i64,
    /// Tasks ended in the bucket.
    pub finished: i64,
}

impl Store {
    /// Records the samples taken at `at` (a sample already recorded for a
    /// worker at that time is kept).
    pub async fn record_utilization(&self, at: i64, samples: &[Sample]) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            for chunk in samples.chunks(INSERT_CHUNK / 6) {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO utilization (at, worker, slots, busy, started, finished) ",
                );
                insert.push_values(chunk, |mut row, s| {
                    row.push_bind(at)
                        .push_bind(s.worker.clone())
                        .push_bind(s.slots.max(0))
                        .push_bind(s.busy.clamp(0.0, s.slots.max(0) as f64))
                        .push_bind(s.started.max(0))
                        .push_bind(s.finished.max(0));
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert.build().execute(pool).await?;
            }
        });
        Ok(())
    }

    /// `worker`'s series (or the totals', [`TOTAL`]) from `from` until
    /// `to` (ms since the epoch), in buckets of `step` ms; buckets with
    /// no sample are left out.
    pub async fn utilization(
        &self,
        worker: &str,
        from: i64,
        to: i64,
        step: i64,
    ) -> Result<Vec<Point>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT (at - $2) / $4 AS bucket, \
                    CAST(AVG(slots) AS DOUBLE PRECISION), CAST(AVG(busy) AS DOUBLE PRECISION), \
                    CAST(SUM(started) AS BIGINT), CAST(SUM(finished) AS BIGINT) \
             FROM utilization WHERE worker = $1 AND at >= $2 AND at < $3 \
             GROUP BY (at - $2) / $4 ORDER BY bucket",
        )
        .bind(worker)
        .bind(from)
        .bind(to)
        .bind(step.max(1))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>(Point {
            bucket: r.try_get(0)?,
            slots: r.try_get(1)?,
            busy: r.try_get(2)?,
            started: r.try_get(3)?,
            finished: r.try_get(4)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Workers with samples from `from` until `to`, by id: the first
    /// `limit` after `after`.
    pub async fn utilization_workers(
        &self,
        from: i64,
        to: i64,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT DISTINCT worker FROM utilization \
             WHERE at >= $1 AND at < $2 AND worker <> $3 AND worker > $4 \
             ORDER BY worker LIMIT $5",
        )
        .bind(from)
        .bind(to)
        .bind(TOTAL)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Deletes samples taken before `before`; returns how many.
    pub async fn prune_utilization(&self, before: i64) -> Result<u64, StoreError> {
        let gone = on_pool!(self, pool => sqlx::query("DELETE FROM utilization WHERE at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(gone)
    }
}
