//! Quotas of time: a tenant whose task attempts ran longer in the last 24
//! hours than its `cpu_seconds_per_day` starts nothing new. Its new jobs
//! are refused (429, in `charge_quota`) and its running jobs' backlogs
//! wait here, in the database, until the hours that spent it pass (or an
//! operator raises the quota); tasks already queued run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{Scheduler, SchedulerError};
use crate::store::{HOUR_MS, now_ms};

/// How often the tenants past their quota are read again, while any is
/// (or while work is dispatched).
const REFRESH: Duration = Duration::from_secs(2);

/// Tenants looked at, at most: past this many, the rest run on.
const MAX_HELD: i64 = 10_000;

/// The tenants held back, as last read.
#[derive(Default)]
pub(crate) struct Spent {
    tenants: HashSet<String>,
    read_at: Option<Instant>,
}

impl Scheduler {
    /// Reads again which tenants are past their quota of time, if the
    /// last read is stale. Returns how long until it should be read again
    /// (`None`: no tenant is held).
    pub(crate) async fn refresh_budgets(&self) -> Result<Option<Duration>, SchedulerError> {
        let stale = self
            .lock_spent()
            .read_at
            .is_none_or(|at| at.elapsed() >= REFRESH);
        if stale {
            let hour = now_ms() / HOUR_MS;
            let default = self.inner.config.quota.cpu_seconds_per_day;
            let over = self
                .inner
                .store
                .over_cpu(hour - 23, default, MAX_HELD)
                .await?;
            let mut spent = self.lock_spent();
            for (tenant, used) in &over {
                if !spent.tenants.contains(tenant) {
                    tracing::info!(%tenant, cpu_seconds = used, "tenant past its CPU quota: its backlog waits");
                }
            }
            spent.tenants = over.into_iter().map(|(tenant, _)| tenant).collect();
            spent.read_at = Some(Instant::now());
        }
        Ok((!self.lock_spent().tenants.is_empty()).then_some(REFRESH))
    }

    /// Whether `tenant` is past its quota of time (as last read).
    pub(crate) fn spent(&self, tenant: &str) -> bool {
        self.lock_spent().tenants.contains(tenant)
    }

    fn lock_spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.inner.spent.lock().unwrap_or_else(|e| e.into_inner())
    }
}
