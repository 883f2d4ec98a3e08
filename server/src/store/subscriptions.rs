//! Subscriptions: a function on a NATS subject, with the job its messages'
//! tasks belong to. Creating one (or a new version) and deleting one each
//! happen in one transaction with the jobs they start and end.

use sqlx::Row;

use super::dispatch::MessageTask;
use super::types::{JsonText, Text};
use super::{Item, NewJob, Store, StoreError, now_ms, on_pool};
use crate::model::TaskState;
use crate::subscription::SubscriptionFile;

const SUBSCRIPTION_COLUMNS: &str = "name, version, subject, queue, max_in_flight, keep_ms, \
     keep_count, definition, job_id, created_at, updated_at, tenant";

/// Finished tasks removed per statement by retention.
const PRUNE_CHUNK: i64 = 1_000;

/// A subscription as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Its name.
    pub name: String,
    /// 1, then one more each time it is replaced.
    pub version: i64,
    /// The subject it captures.
    pub subject: String,
    /// 1: durable (JetStream); 0: core NATS.
    pub queue: i64,
    /// Messages handled at once.
    pub max_in_flight: i64,
    /// Finished tasks are kept this long (ms), or
    pub keep_ms: Option<i64>,
    /// this many.
    pub keep_count: Option<i64>,
    /// The file it was created from (modules as `sha256:` hashes).
    pub definition: JsonText<SubscriptionFile>,
    /// The job its tasks belong to.
    pub job_id: i64,
    /// When version 1 was created.
    pub created_at: i64,
    /// When this version was.
    pub updated_at: i64,
    /// The tenant it belongs to (and its job).
    pub tenant: String,
}

/// A subscription to create or replace.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// The file (modules resolved).
    pub file: SubscriptionFile,
    /// Its settings, checked.
    pub checked: crate::subscription::Checked,
}

impl Store {
    /// Creates a subscription with a new job for its tasks, or replaces
    /// one of the job's tenant (its version goes up; its old job ends);
    /// returns it and the job it replaced, or `None` when the name is
    /// another tenant's (nothing changes).
    pub async fn put_subscription(
        &self,
        new: &NewSubscription,
        job: &NewJob,
    ) -> Result<Option<(SubscriptionRow, Option<i64>)>, StoreError> {
        let now = now_ms();
        let c = &new.checked;
        let put = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let job_id = db::jobs::insert_job(&mut tx, job, now).await?;
            let old: Option<i64> = sqlx::query_scalar("SELECT job_id FROM subscriptions WHERE name = $1")
                .bind(new.file.name.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(old) = old {
                db::jobs::end_job(&mut tx, old, now).await?;
            }
            let row = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) \
                 VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
                 ON CONFLICT (name) DO UPDATE SET version = subscriptions.version + 1, \
                 subject = EXCLUDED.subject, queue = EXCLUDED.queue, max_in_flight = EXCLUDED.max_in_flight, \
                 keep_ms = EXCLUDED.keep_ms, keep_count = EXCLUDED.keep_count, \
                 definition = EXCLUDED.definition, job_id = EXCLUDED.job_id, updated_at = EXCLUDED.updated_at \
                 WHERE subscriptions.tenant = EXCLUDED.tenant \
                 RETURNING {SUBSCRIPTION_COLUMNS}"
            )))
            .bind(new.file.name.clone())
            .bind(new.file.subject.clone())
            .bind(i64::from(c.queue))
            .bind(i64::from(c.max_in_flight))
            .bind(c.keep_ms)
            .bind(c.keep_count)
            .bind(JsonText(new.file.clone()))
            .bind(job_id)
            .bind(now)
            .bind(job.tenant.clone())
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                // Another tenant's name: the transaction is rolled back.
                None => None,
                Some(row) => {
                    tx.commit().await?;
                    Some((row, old))
                }
            }
        });
        Ok(put)
    }

    /// A subscription by name.
    pub async fn subscription(&self, name: &str) -> Result<Option<SubscriptionRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1"
        )))
        .bind(name.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Subscriptions of a tenant (of every tenant: `None`) by name: the
    /// first `limit` after `after`.
    pub async fn subscriptions(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name > $1 AND (CAST($3 AS TEXT) IS NULL OR tenant = $3) \
             ORDER BY name LIMIT $2"
        )))
        .bind(after.unwrap_or_default().to_owned())
        .bind(limit)
        .bind(tenant.map(str::to_owned))
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Deletes a subscription and ends its job (its tasks stay readable);
    /// returns what it was.
    pub async fn delete_subscription(
        &self,
        name: &str,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let now = now_ms();
        let row = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let row = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
                "DELETE FROM subscriptions WHERE name = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
            )))
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = &row {
                db::jobs::end_job(&mut tx, row.job_id, now).await?;
            }
            tx.commit().await?;
            row
        });
        Ok(row)
    }

    /// The tasks of a batch of messages (see [`MessageTask`]), in order:
    /// created queued, or the ones their places already have; `None` once
    /// the job has ended. One transaction.
    pub async fn message_tasks(
        &self,
        job_id: i64,
        batch: &[(Option<i64>, Item)],
    ) -> Result<Option<Vec<MessageTask>>, StoreError> {
        let now = now_ms();
        let tasks = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let tasks = db::dispatch::message_tasks(&mut tx, job_id, batch, now).await?;
            tx.commit().await?;
            tasks
        });
        Ok(tasks)
    }

    /// Removes finished tasks of a job (and their attempts) that finished
    /// before `before` or are older than its newest `keep` finished ones,
    /// at most [`PRUNE_CHUNK`] per call; tasks a restart points to stay.
    /// Returns how many went.
    pub async fn prune_tasks(
        &self,
        job_id: i64,
        before: Option<i64>,
        keep: Option<i64>,
    ) -> Result<u64, StoreError> {
        let cutoff = match (before, keep) {
            (Some(before), _) => Some(before),
            (None, Some(keep)) => {
                let nth: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
                    "SELECT finished_at FROM tasks WHERE job_id = $1 AND finished_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT 1 OFFSET $2",
                )
                .bind(job_id)
                .bind(keep)
                .fetch_optional(pool)
                .await?);
                // Those finished at the same ms as the one after the
                // newest `keep` go too (ties are rare and harmless).
                nth.map(|n| n + 1)
            }
            (None, None) => None,
        };
        let Some(cutoff) = cutoff else {
            return Ok(0);
        };
        let chosen = "SELECT id FROM tasks t WHERE t.job_id = $1 AND t.finished_at IS NOT NULL \
             AND t.finished_at < $2 AND t.state IN ('succeeded', 'failed', 'cancelled', 'cached') \
             AND NOT EXISTS (SELECT 1 FROM tasks r WHERE r.restart_of = t.id) \
             ORDER BY t.finished_at LIMIT $3";
        let removed = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let ids: Vec<i64> = sqlx::query_scalar(chosen)
                .bind(job_id)
                .bind(cutoff)
                .bind(PRUNE_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
            let mut removed = 0;
            if !ids.is_empty() {
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM attempts WHERE task_id IN ({list})")))
                    .execute(&mut *tx)
                    .await?;
                removed = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM tasks WHERE id IN ({list})")))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            removed
        });
        Ok(removed)
    }

    /// How many of a job's current tasks are in `state`.
    pub async fn count_in_state(&self, job_id: i64, state: TaskState) -> Result<i64, StoreError> {
        let n = on_pool!(self, pool => sqlx::query(
            "SELECT COUNT(*) FROM tasks WHERE job_id = $1 AND state = $2 AND replaced_by IS NULL",
        )
        .bind(job_id)
        .bind(Text(state))
        .fetch_one(pool)
        .await?
        .try_get::<i64, _>(0)?);
        Ok(n)
    }
}
