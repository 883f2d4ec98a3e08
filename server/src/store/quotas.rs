//! Quotas per tenant, and what a tenant uses of them.

use super::{Store, StoreError, now_ms, on_pool};

/// An hour in milliseconds: quota counts are kept by hour since the epoch.
pub const HOUR_MS: i64 = 3_600_000;

/// A tenant's quotas as an operator set them (`None`: the server's
/// default for that one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Quota {
    /// Tasks not ended, of its running jobs, at once.
    pub open_tasks: Option<i64>,
    /// Tasks of the jobs it submitted in the last 24 hours.
    pub tasks_per_day: Option<i64>,
    /// Seconds its task attempts ran in the last 24 hours (wall time in
    /// a worker slot, one guest thread each).
    pub cpu_seconds_per_day: Option<i64>,
    /// Bytes of outputs and logs its kept jobs hold.
    pub storage_bytes: Option<i64>,
}

impl Quota {
    /// `self`, its unset quotas taken from `defaults`.
    pub fn or(self, defaults: Quota) -> Quota {
        Quota {
            open_tasks: self.open_tasks.or(defaults.open_tasks),
            tasks_per_day: self.tasks_per_day.or(defaults.tasks_per_day),
            cpu_seconds_per_day: self.cpu_seconds_per_day.or(defaults.cpu_seconds_per_day),
            storage_bytes: self.storage_bytes.or(defaults.storage_bytes),
        }
    }
}

/// A tenant's row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QuotaRow {
    /// The tenant.
    pub tenant: String,
    /// Its quotas.
    #[sqlx(flatten)]
    pub quota: Quota,
    /// When they were last set.
    pub updated_at: i64,
}

/// What a tenant uses of its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tasks not ended, of its running jobs.
    pub open_tasks: i64,
    /// Tasks of the jobs it submitted since the time asked about.
    pub tasks_since: i64,
    /// Milliseconds its task attempts ran, of those that ended since the
    /// time asked about.
    pub busy_ms_since: i64,
    /// Bytes of outputs and logs its kept jobs hold.
    pub stored_bytes: i64,
}

impl Store {
    /// Sets a tenant's quotas (replacing what was set).
    pub async fn put_quota(&self, tenant: &str, quota: Quota) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO quotas (tenant, open_tasks, tasks_per_day, cpu_seconds_per_day, storage_bytes, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant) DO UPDATE SET open_tasks = EXCLUDED.open_tasks, \
             tasks_per_day = EXCLUDED.tasks_per_day, cpu_seconds_per_day = EXCLUDED.cpu_seconds_per_day, \
             storage_bytes = EXCLUDED.storage_bytes, updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant.to_owned())
        .bind(quota.open_tasks)
        .bind(quota.tasks_per_day)
        .bind(quota.cpu_seconds_per_day)
        .bind(quota.storage_bytes)
        .bind(now_ms())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Removes a tenant's quotas (the defaults hold again); whether it
    /// had any.
    pub async fn delete_quota(&self, tenant: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query("DELETE FROM quotas WHERE tenant = $1")
            .bind(tenant.to_owned())
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// A tenant's quotas as set (`Quota::default()` if none are).
    pub async fn quota(&self, tenant: &str) -> Result<Quota, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, Quota>(
            "SELECT open_tasks, tasks_per_day, cpu_seconds_per_day, storage_bytes FROM quotas WHERE tenant = $1",
        )
        .bind(tenant.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row.unwrap_or_default())
    }

    /// The quotas set, by tenant, a page after `after`.
    pub async fn quotas(&self, after: &str, limit: i64) -> Result<Vec<QuotaRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, QuotaRow>(
            "SELECT tenant, open_tasks, tasks_per_day, cpu_seconds_per_day, storage_bytes, updated_at FROM quotas \
             WHERE tenant > $1 ORDER BY tenant LIMIT $2",
        )
        .bind(after.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// What `tenant` uses: its open tasks, and the tasks it submitted in
    /// the hours from `since_hour` on.
    pub async fn usage(&self, tenant: &str, since_hour: i64) -> Result<Usage, StoreError> {
        let (open_tasks, (tasks_since, busy_ms_since), stored_bytes) = on_pool!(self, pool => {
            let open: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(total_tasks - succeeded - failed - cancelled), 0) AS BIGINT) \
                 FROM jobs WHERE tenant = $1 AND status = 'running'",
            )
            .bind(tenant.to_owned())
            .fetch_one(pool)
            .await?;
            let recent: (i64, i64) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(tasks), 0) AS BIGINT), CAST(COALESCE(SUM(busy_ms), 0) AS BIGINT) \
                 FROM tenant_hours WHERE tenant = $1 AND hour >= $2",
            )
            .bind(tenant.to_owned())
            .bind(since_hour)
            .fetch_one(pool)
            .await?;
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT bytes FROM tenant_storage WHERE tenant = $1",
            )
            .bind(tenant.to_owned())
            .fetch_optional(pool)
            .await?;
            (open, recent, stored.unwrap_or(0))
        });
        Ok(Usage {
            open_tasks,
            tasks_since,
            busy_ms_since,
            stored_bytes,
        })
    }

    /// Counts `tasks` submitted by `tenant` in `hour`.
    pub async fn charge(&self, tenant: &str, hour: i64, tasks: i64) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO tenant_hours (tenant, hour, tasks) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, hour) DO UPDATE SET tasks = tenant_hours.tasks + EXCLUDED.tasks",
        )
        .bind(tenant.to_owned())
        .bind(hour)
        .bind(tasks)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The tenants whose task attempts ran longer, in the hours from
    /// `since_hour` on, than their quota of CPU seconds per day (their own,
    /// or `default` for those without), with the seconds they ran; at
    /// most `limit`.
    pub async fn over_cpu(
        &self,
        since_hour: i64,
        default: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, (String, i64)>(
            "SELECT h.tenant, CAST(SUM(h.busy_ms) / 1000 AS BIGINT) FROM tenant_hours h \
             LEFT JOIN quotas q ON q.tenant = h.tenant \
             WHERE h.hour >= $1 GROUP BY h.tenant, q.cpu_seconds_per_day \
             HAVING COALESCE(q.cpu_seconds_per_day, $2) IS NOT NULL \
             AND SUM(h.busy_ms) >= COALESCE(q.cpu_seconds_per_day, $2) * 1000 \
             ORDER BY h.tenant LIMIT $3",
        )
        .bind(since_hour)
        .bind(default)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Forgets the counts of hours before `hour`.
    pub async fn prune_hours(&self, hour: i64) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => sqlx::query("DELETE FROM tenant_hours WHERE hour < $1")
            .bind(hour)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done)
    }
}
