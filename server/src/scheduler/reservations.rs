//! Reservations: a tenant books N worker slots for a time window. While
//! it holds, up to N of the tenant's open tasks travel in the broker's
//! reserved lane ([`RESERVED_LANE`], above every priority), so each slot
//! that frees goes to them first; the dispatcher fills that lane from the
//! tenant's backlog even when the window is full, and again as each of
//! them ends. The tenant's other tasks wait in its backlog for the lane,
//! not in the queue behind everyone's, unless no one else has work
//! (then they go out as the window allows). Slots the tenant leaves idle
//! run everyone else's tasks: nothing is held back or stopped for it (a
//! slot busy with another's task is the tenant's when that task ends).
//!
//! What is in the lane is kept in memory (task ids, at most the slots
//! reserved); it is checked against the database whenever the holdings
//! are read again, so a task that ended by any path leaves it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandmill_runtime::message::{RESERVED_LANE, TaskMessage};

use super::{Owner, Scheduler, SchedulerError};
use crate::jobfile::Invalid;
use crate::store::{Holding, NewReservation, ReservationRow, ReserveRefused, now_ms};

/// Slots all reservations may hold at one time, by default.
pub const DEFAULT_RESERVABLE_SLOTS: i64 = 64;

/// How far ahead a reservation may end, by default.
pub const DEFAULT_RESERVATION_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Reservations not ended one tenant may hold, by default.
pub const DEFAULT_MAX_RESERVATIONS: i64 = 100;

/// How often the holdings are read again while one holds (or will).
const REFRESH: Duration = Duration::from_secs(1);

/// What reservations may ask for.
#[derive(Clone, Debug)]
pub struct ReservationLimits {
    /// Slots all tenants' reservations may hold at any one time
    /// (`--reservable-slots`).
    pub slots: i64,
    /// How far ahead of now a reservation may end
    /// (`--max-reservation-ahead`).
    pub ahead: Duration,
    /// Reservations not ended one tenant may hold (`--max-reservations`).
    pub per_tenant: i64,
}

impl Default for ReservationLimits {
    fn default() -> Self {
        ReservationLimits {
            slots: DEFAULT_RESERVABLE_SLOTS,
            ahead: DEFAULT_RESERVATION_AHEAD,
            per_tenant: DEFAULT_MAX_RESERVATIONS,
        }
    }
}

/// The reserved lane's state.
#[derive(Default)]
pub(crate) struct Reserved {
    /// What holds now.
    holding: Holding,
    /// When `holding` was read.
    read_at: Option<Instant>,
    /// Tasks in the lane: task id → (tenant, job id).
    lane: HashMap<i64, (String, i64)>,
}

impl Reserved {
    /// Slots `tenant` holds now.
    fn slots(&self, tenant: &str) -> i64 {
        self.holding
            .slots
            .iter()
            .find(|(t, _)| t == tenant)
            .map_or(0, |(_, n)| *n)
    }

    /// Tasks of `tenant` in the lane.
    fn used(&self, tenant: &str) -> i64 {
        self.lane.values().filter(|(t, _)| t == tenant).count() as i64
    }
}

/// A time as ms since the epoch, from RFC 3339 (or `now`).
pub(crate) fn instant(field: &str, text: &str) -> Result<i64, Invalid> {
    if text.trim() == "now" {
        return Ok(now_ms());
    }
    let at = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        Invalid::field(
            field,
            format!("`{text}` is not an RFC 3339 time like 2026-12-05T10:00:00Z ({e})"),
        )
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Invalid::field(field, "is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| Invalid::field(field, "is too far ahead"))
}

impl Scheduler {
    /// Books `slots` worker slots for `owner`'s tenant (or, for an admin,
    /// `tenant`) from `from` (RFC 3339, or `now`) until `until`.
    pub async fn reserve(
        &self,
        owner: &Owner,
        tenant: Option<&str>,
        slots: i64,
        from: &str,
        until: &str,
    ) -> Result<ReservationRow, SchedulerError> {
        let limits = &self.inner.config.reservations;
        let tenant = match tenant {
            Some(other) if other != owner.tenant && !owner.admin => {
                return Err(SchedulerError::Forbidden(format!(
                    "only an admin may reserve for another tenant (`{other}`)"
                )));
            }
            Some(tenant) => {
                let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                if tenant.is_empty() || tenant.len() > 64 || !tenant.chars().all(valid) {
                    return Err(Invalid::field(
                        "tenant",
                        "use 1 to 64 letters, digits, `-`, `_` and `.`",
                    )
                    .into());
                }
                tenant.to_owned()
            }
            None => owner.tenant.clone(),
        };
        if slots < 1 {
            return Err(Invalid::field("slots", "must be at least 1").into());
        }
        if slots > limits.slots {
            return Err(Invalid::field(
                "slots",
                format!(
                    "{slots} is over the {} slots this server lets be reserved (--reservable-slots)",
                    limits.slots
                ),
            )
            .into());
        }
        let now = now_ms();
        let starts_at = instant("from", from)?.max(now);
        let ends_at = instant("until", until)?;
        if ends_at <= starts_at {
            return Err(Invalid::field("until", "must be after `from` and after now").into());
        }
        let ahead = i64::try_from(limits.ahead.as_millis()).unwrap_or(i64::MAX);
        if ends_at - now > ahead {
            return Err(Invalid::field(
                "until",
                format!(
                    "is more than {} ahead, the most this server books (--max-reservation-ahead)",
                    humantime::format_duration(limits.ahead)
                ),
            )
            .into());
        }
        let made = self
            .inner
            .store
            .reserve(&NewReservation {
                tenant: tenant.clone(),
                slots,
                starts_at,
                ends_at,
                capacity: limits.slots,
                per_tenant: limits.per_tenant,
            })
            .await?;
        match made {
            Ok(row) => {
                self.reservations_changed();
                Ok(row)
            }
            Err(ReserveRefused::TooMany(held)) => Err(SchedulerError::OverQuota(format!(
                "tenant `{tenant}` holds {held} reservations not ended, the most it may (--max-reservations)"
            ))),
            Err(ReserveRefused::Overbooked { at, reserved }) => {
                Err(SchedulerError::Conflict(format!(
                    "{reserved} slots are reserved at {}: {slots} more would pass the {} this server lets be reserved at once (--reservable-slots)",
                    crate::api::views::time(at),
                    limits.slots
                )))
            }
        }
    }

    /// A reservation `owner` may see.
    pub async fn reservation(
        &self,
        owner: &Owner,
        id: i64,
    ) -> Result<ReservationRow, SchedulerError> {
        match self.inner.store.reservation(id).await? {
            Some(row) if owner.sees(&row.tenant) => Ok(row),
            _ => Err(SchedulerError::NotFound(format!("reservation {id}"))),
        }
    }

    /// Cancels a reservation: its tenant's tasks go in turn again.
    pub async fn cancel_reservation(&self, owner: &Owner, id: i64) -> Result<(), SchedulerError> {
        self.reservation(owner, id).await?;
        if !self.inner.store.delete_reservation(id).await? {
            return Err(SchedulerError::NotFound(format!("reservation {id}")));
        }
        self.reservations_changed();
        Ok(())
    }

    /// The holdings are read again at the next dispatcher round, which
    /// starts now.
    fn reservations_changed(&self) {
        self.lock_reserved().read_at = None;
        self.inner.dispatch.notify_one();
    }

    pub(crate) fn lock_reserved(&self) -> std::sync::MutexGuard<'_, Reserved> {
        self.inner
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what holds again when it may have changed, and drops from
    /// the lane the tasks that ended. Returns how long until it should be
    /// read again (`None`: nothing holds or is booked).
    pub(crate) async fn refresh_reservations(&self) -> Result<Option<Duration>, SchedulerError> {
        let now = now_ms();
        let (stale, lane) = {
            let reserved = self.lock_reserved();
            let stale = reserved.read_at.is_none_or(|at| at.elapsed() >= REFRESH)
                || reserved.holding.next_change.is_some_and(|at| at <= now);
            (stale, reserved.lane.keys().copied().collect::<Vec<_>>())
        };
        if stale {
            let holding = self.inner.store.holding(now).await?;
            let live = self.inner.store.still_live(&lane).await?;
            let mut reserved = self.lock_reserved();
            reserved.lane.retain(|id, _| live.contains(id));
            let Reserved {
                holding: held,
                lane,
                ..
            } = &mut *reserved;
            *held = holding;
            lane.retain(|_, (tenant, _)| held.slots.iter().any(|(t, _)| t == tenant));
            reserved.read_at = Some(Instant::now());
        }
        let reserved = self.lock_reserved();
        let next = reserved
            .holding
            .next_change
            .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)));
        Ok(if reserved.holding.slots.is_empty() {
            next
        } else {
            Some(next.map_or(REFRESH, |n| n.min(REFRESH)))
        })
    }

    /// Whether a reservation of `tenant` holds now.
    pub(crate) fn holds_reservation(&self, tenant: &str) -> bool {
        self.lock_reserved().slots(tenant) > 0
    }

    /// Tasks in the reserved lane, of every tenant.
    pub(crate) fn in_reserved_lane(&self) -> i64 {
        self.lock_reserved().lane.len() as i64
    }

    /// Room in the reserved lane now, by tenant (those with some).
    pub(crate) fn reserved_room(&self) -> Vec<(String, i64)> {
        let reserved = self.lock_reserved();
        reserved
            .holding
            .slots
            .iter()
            .map(|(tenant, slots)| (tenant.clone(), slots - reserved.used(tenant)))
            .filter(|(_, room)| *room > 0)
            .collect()
    }

    /// Puts into the reserved lane the messages of tenants with room in
    /// it (a task already there stays there).
    pub(crate) fn mark_reserved(&self, messages: &mut [TaskMessage]) {
        let mut reserved = self.lock_reserved();
        if reserved.holding.slots.is_empty() {
            return;
        }
        for message in messages {
            let there = reserved.lane.contains_key(&message.task_id);
            if there || reserved.used(&message.tenant) < reserved.slots(&message.tenant) {
                message.priority = RESERVED_LANE;
                reserved
                    .lane
                    .insert(message.task_id, (message.tenant.clone(), message.job_id));
            }
        }
    }

    /// Tasks that ended leave the reserved lane.
    pub(crate) fn unreserve_tasks(&self, ended: &[i64]) {
        let mut reserved = self.lock_reserved();
        if reserved.lane.is_empty() {
            return;
        }
        for id in ended {
            reserved.lane.remove(id);
        }
    }

    /// A job's tasks leave the reserved lane (it was cancelled).
    pub(crate) fn unreserve_job(&self, job_id: i64) {
        self.lock_reserved()
            .lane
            .retain(|_, (_, job)| *job != job_id);
    }
}
