//! Reservations: a tenant's booking of worker slots for a time window.
//! Booking checks the peak of what is reserved in the window against the
//! server's capacity, in the transaction that inserts (Postgres takes a
//! table lock for it; SQLite's write lock serializes it anyway).

use super::{LIVE_SQL, Store, StoreError, now_ms, on_pool};

/// A reservation as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ReservationRow {
    /// Its id.
    pub id: i64,
    /// The tenant whose tasks go first.
    pub tenant: String,
    /// Worker slots reserved.
    pub slots: i64,
    /// From (ms since the epoch, inclusive).
    pub starts_at: i64,
    /// Until (ms since the epoch, exclusive).
    pub ends_at: i64,
    /// When it was made.
    pub created_at: i64,
}

const COLUMNS: &str = "id, tenant, slots, starts_at, ends_at, created_at";

/// A reservation to make, and the limits it must keep.
#[derive(Clone, Debug)]
pub struct NewReservation {
    /// The tenant.
    pub tenant: String,
    /// Slots.
    pub slots: i64,
    /// From (ms).
    pub starts_at: i64,
    /// Until (ms).
    pub ends_at: i64,
    /// Slots all tenants' reservations may hold at any one time.
    pub capacity: i64,
    /// Reservations not ended one tenant may hold.
    pub per_tenant: i64,
}

/// Why a reservation was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveRefused {
    /// At `at` (ms), `reserved` slots are reserved already: with these the
    /// capacity would be passed.
    Overbooked {
        /// When the peak is.
        at: i64,
        /// What is reserved then.
        reserved: i64,
    },
    /// The tenant holds this many reservations not ended, its limit.
    TooMany(i64),
}

/// Reservations holding now, and when that next changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    /// Slots reserved now, by tenant.
    pub slots: Vec<(String, i64)>,
    /// When a reservation next starts or ends (ms), if one will.
    pub next_change: Option<i64>,
}

/// Tenants with reservations holding at once that are looked at, at most.
const HOLDING_TENANTS: i64 = 1_000;

/// Overlapping reservations read to find a window's peak, at most (each
/// holds a slot, so more than the capacity of them cannot all overlap one
/// instant; this bounds the read whatever is stored).
const PEAK_ROWS: i64 = 100_000;

/// The most slots reserved at any instant of `[from, until)`, and that
/// instant, given the reservations `(starts_at, ends_at, slots)`.
fn peak(from: i64, until: i64, rows: &[(i64, i64, i64)]) -> (i64, i64) {
    let mut changes: Vec<(i64, i64)> = Vec::with_capacity(rows.len() * 2);
    for &(starts, ends, slots) in rows {
        changes.push((starts.max(from), slots));
        changes.push((ends.min(until), -slots));
    }
    // Ends before starts at one instant: back to back is no overlap.
    changes.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut best) = (0, (0, from));
    for (at, delta) in changes {
        now += delta;
        if now > best.0 {
            best = (now, at);
        }
    }
    best
}

impl Store {
    /// Makes a reservation, or says why not.
    pub async fn reserve(
        &self,
        new: &NewReservation,
    ) -> Result<Result<ReservationRow, ReserveRefused>, StoreError> {
        let now = now_ms();
        let postgres = matches!(self, Store::Postgres(_));
        let made = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            if postgres {
                sqlx::query("LOCK TABLE reservations IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM reservations WHERE tenant = $1 AND ends_at > $2",
            )
            .bind(new.tenant.clone())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
                "SELECT starts_at, ends_at, slots FROM reservations \
                 WHERE starts_at < $1 AND ends_at > $2 LIMIT $3",
            )
            .bind(new.ends_at)
            .bind(new.starts_at)
            .bind(PEAK_ROWS)
            .fetch_all(&mut *tx)
            .await?;
            let (reserved, at) = peak(new.starts_at, new.ends_at, &rows);
            if held >= new.per_tenant {
                Err(ReserveRefused::TooMany(held))
            } else if reserved + new.slots > new.capacity {
                Err(ReserveRefused::Overbooked { at, reserved })
            } else {
                let row = sqlx::query_as::<_, ReservationRow>(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO reservations (tenant, slots, starts_at, ends_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
                )))
                .bind(new.tenant.clone())
                .bind(new.slots)
                .bind(new.starts_at)
                .bind(new.ends_at)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(row)
            }
        });
        Ok(made)
    }

    /// Reservations of `tenant` (every tenant's with `None`), by id, a
    /// page after `after`.
    pub async fn reservations(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ReservationRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, ReservationRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM reservations WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        )))
        .bind(tenant.map(str::to_owned))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// One reservation.
    pub async fn reservation(&self, id: i64) -> Result<Option<ReservationRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, ReservationRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM reservations WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Removes a reservation; whether it was there.
    pub async fn delete_reservation(&self, id: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query("DELETE FROM reservations WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    /// What is reserved at `at` (ms), by tenant, and when that changes.
    pub async fn holding(&self, at: i64) -> Result<Holding, StoreError> {
        let (slots, next_change) = on_pool!(self, pool => {
            let slots: Vec<(String, i64)> = sqlx::query_as(
                "SELECT tenant, CAST(SUM(slots) AS BIGINT) FROM reservations \
                 WHERE starts_at <= $1 AND ends_at > $1 GROUP BY tenant ORDER BY tenant LIMIT $2",
            )
            .bind(at)
            .bind(HOLDING_TENANTS)
            .fetch_all(pool)
            .await?;
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(CASE WHEN starts_at > $1 THEN starts_at ELSE ends_at END) \
                 FROM reservations WHERE ends_at > $1",
            )
            .bind(at)
            .fetch_one(pool)
            .await?;
            (slots, next)
        });
        Ok(Holding { slots, next_change })
    }

    /// Removes reservations that ended before `before` (ms); how many.
    pub async fn prune_reservations(&self, before: i64) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => sqlx::query("DELETE FROM reservations WHERE ends_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done)
    }

    /// Which of the tasks `ids` are still queued or running.
    pub async fn still_live(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let live = on_pool!(self, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM tasks WHERE id IN ({list}) AND {LIVE_SQL}"
        )))
        .fetch_all(pool)
        .await?);
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::peak;

    #[test]
    fn the_peak_counts_overlaps_not_neighbours() {
        // 4 from 10 to 11 and 4 from 11 to 12: never more than 4 at once.
        assert_eq!(peak(10, 12, &[(10, 11, 4), (11, 12, 4)]).0, 4);
        // One spanning both: 4 + 3 from 10, the peak at the first instant.
        assert_eq!(
            peak(10, 12, &[(10, 11, 4), (11, 12, 4), (5, 20, 3)]),
            (7, 10)
        );
        // Outside the window counts nothing.
        assert_eq!(peak(10, 12, &[]), (0, 10));
        assert_eq!(peak(10, 12, &[(0, 15, 2), (11, 30, 5)]), (7, 11));
    }
}
