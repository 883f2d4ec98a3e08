//! Storage: the source of truth for modules, specs, jobs, tasks and
//! attempts, in SQLite (the embedded default) or Postgres.
//!
//! One schema in two dialects (`migrations/sqlite`, `migrations/postgres`),
//! applied at start-up. The SQL is written once in the subset both dialects
//! share (`$N` parameters, `ON CONFLICT`, `RETURNING`, `WITH RECURSIVE`) and
//! run on whichever pool the store holds; the test suite runs once per
//! backend. One file per subject:
//!
//! - [`blobs`](self::blobs): which blobs rows name (collecting the rest).
//! - [`catalog`](self::catalog): modules and specs.
//! - [`jobs`](self::jobs): creating, reading, listing, cancelling and
//!   expiring jobs.
//! - [`tasks`](self::tasks): tasks, attempts, outputs and logs as read back.
//! - [`dispatch`](self::dispatch): turning a job's backlog into queued
//!   tasks, a window at a time.
//! - [`mapreduce`](self::mapreduce): map-reduce jobs' maps, reduces and
//!   phases.
//! - [`record`](self::record): applying what workers report.
//! - [`recovery`](self::recovery): live tasks after a restart and for the
//!   reconciler, a page at a time.
//! - [`run`](self::run): one call recorded whole (the upload-and-run fast
//!   path).
//! - [`schedules`](self::schedules): job files that fire on a clock.
//! - [`types`](self::types): enums and JSON in TEXT columns, safe text.
//!
//! Memory never grows with the number of rows: every read that can be long
//! takes a page (a cursor and a limit).

mod blobs;
mod catalog;
pub mod dispatch;
mod jobs;
mod mapreduce;
mod pipeline;
mod quotas;
mod record;
mod recovery;
mod reservations;
mod restart;
mod retention;
mod rows;
mod run;
mod schedules;
mod settings;
mod subscriptions;
mod tasks;
mod tokens;
pub mod types;
mod utilization;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use blobs::{BlobText, TextCursor, TextRow, blob_names};
pub use catalog::NewSpec;
pub use jobs::{CancelRefused, Expired, Item, JobFilter, JobSort, NewJob, SortValue};
pub use mapreduce::{MapResult, PhaseCounts, RunningTask};
pub use pipeline::{
    DraftInput, FOLLOW_OUTPUTS, NewStep, PAUSE_BEFORE_PLANNING, SpecInput, StepOutput, StepRow,
    StepSpec,
};
pub use quotas::{HOUR_MS, Quota, QuotaRow, Usage};
pub use record::Recorded;
pub use reservations::{Holding, NewReservation, ReservationRow, ReserveRefused};
pub use restart::{RestartRefused, Restarted, Retried};
pub use retention::DeleteRefused;
pub use rows::*;
pub use run::{RunRecord, RunWriter};
pub use schedules::{Fired, NewSchedule, ScheduleRow, ScheduleTotals};
pub use subscriptions::{NewSubscription, SubscriptionRow};
pub use tasks::Stored;
pub use tokens::TokenRow;
pub use utilization::{Point, Sample, TOTAL};

/// Rows per multi-row INSERT: well under SQLite's 32,766 bound variables.
const INSERT_CHUNK: usize = 1_000;

/// Results per multi-row UPDATE or INSERT when recording (14 binds a row).
const RECORD_CHUNK: usize = 500;

/// What kind of failure the store had: what the caller decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreErrorKind {
    /// The database could not be reached or did not answer in time: try
    /// again later.
    #[error("database unavailable")]
    Unavailable,
    /// The database refused what was written (a constraint, a value it
    /// cannot store): writing the same again fails the same way.
    #[error("the database refused the data")]
    Rejected,
    /// A stored value cannot be read back as what it should be.
    #[error("a stored value is damaged")]
    Corrupt,
    /// The schema could not be applied.
    #[error("the database schema could not be applied")]
    Schema,
    /// The database URL is not one we know.
    #[error("unsupported database URL (expected a SQLite path or sqlite:// or postgres://)")]
    BadUrl,
}

/// Storage failed.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error of `kind` caused by `source`.
    pub fn new(
        kind: StoreErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StoreError {
            kind,
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::new(classify(&error), error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::new(StoreErrorKind::Schema, error)
    }
}

/// Which errors mean "this data will never be stored" and which "try
/// again": the recorder sets aside the first kind, waits out the second.
fn classify(error: &sqlx::Error) -> StoreErrorKind {
    match error {
        sqlx::Error::Database(db) => {
            if db.kind() != sqlx::error::ErrorKind::Other {
                return StoreErrorKind::Rejected;
            }
            let code = db.code().unwrap_or_default();
            // Postgres: data exceptions (22), program limits (54), raised
            // by a trigger (P0). SQLite: too big (18), constraint (19, and
            // its extended codes), type mismatch (20), range (25).
            let rejected = code.starts_with("22")
                || code.starts_with("54")
                || code.starts_with("P0")
                || matches!(code.as_ref(), "18" | "19" | "20" | "25")
                || (code.len() > 2 && code.parse::<u32>().is_ok_and(|c| c & 0xff == 19));
            if rejected {
                StoreErrorKind::Rejected
            } else {
                StoreErrorKind::Unavailable
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreErrorKind::Corrupt,
        sqlx::Error::Encode(_) => StoreErrorKind::Rejected,
        _ => StoreErrorKind::Unavailable,
    }
}

/// The database, SQLite or Postgres.
#[derive(Clone, Debug)]
pub enum Store {
    /// The embedded default: a file.
    Sqlite(SqlitePool),
    /// A cluster's database.
    Postgres(PgPool),
}

/// Runs the same code on either pool; the body is type-checked once per
/// backend. With `, db =>`, `db` names the backend's steps (the
/// functions [`per_backend!`] made of each subject's SQL): `db::begin`,
/// `db::record::apply_finals`, ...
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
    ($store:expr, $pool:ident, $db:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => {
                use $crate::store::backend::sqlite as $db;
                $body
            }
            $crate::store::Store::Postgres($pool) => {
                use $crate::store::backend::postgres as $db;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Writes the enclosed functions once and compiles them once per backend,
/// as `sqlite::f` and `postgres::f`, each with `Db` the backend's
/// database type: the named steps of multi-statement transactions.
macro_rules! per_backend {
    ($($item:item)*) => {
        pub(crate) mod sqlite {
            #![allow(unused_imports)]
            use super::*;
            use $crate::store::backend::sqlite as db;
            pub(crate) type Db = sqlx::Sqlite;
            $($item)*
        }
        pub(crate) mod postgres {
            #![allow(unused_imports)]
            use super::*;
            use $crate::store::backend::postgres as db;
            pub(crate) type Db = sqlx::Postgres;
            $($item)*
        }
    };
}
pub(crate) use per_backend;

/// The steps of every subject, per backend (see [`on_pool!`]).
pub(crate) mod backend {
    /// SQLite's steps.
    pub(crate) mod sqlite {
        pub(crate) use crate::store::dispatch::sqlite as dispatch;
        pub(crate) use crate::store::jobs::sqlite as jobs;
        pub(crate) use crate::store::pipeline::sqlite as pipeline;
        pub(crate) use crate::store::record::sqlite as record;
        pub(crate) use crate::store::restart::sqlite as restart;

        /// A write transaction. `BEGIN IMMEDIATE` takes the write lock at
        /// once: a deferred transaction that read first could not write
        /// after another writer committed (SQLITE_BUSY, not waited out).
        pub(crate) async fn begin(
            pool: &sqlx::SqlitePool,
        ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
            pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    /// Postgres's steps.
    pub(crate) mod postgres {
        pub(crate) use crate::store::dispatch::postgres as dispatch;
        pub(crate) use crate::store::jobs::postgres as jobs;
        pub(crate) use crate::store::pipeline::postgres as pipeline;
        pub(crate) use crate::store::record::postgres as record;
        pub(crate) use crate::store::restart::postgres as restart;

        /// A write transaction.
        pub(crate) async fn begin(
            pool: &sqlx::PgPool,
        ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
            pool.begin().await
        }
    }
}

/// Task states that hold a worker slot or wait for one, as SQL. Written
/// out (not bound) so the planner can use the partial index `tasks_live`,
/// whose predicate is this very text.
pub(crate) const LIVE_SQL: &str = "state IN ('queued', 'running')";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    sandmill_runtime::message::now_ms()
}

/// How long a query may wait for a connection before the store says it is
/// unavailable (rather than hanging a request or a shutdown).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Opens (creating if needed) the database at `url` and applies the
    /// schema. A plain path or `sqlite://` means SQLite, `postgres://`
    /// means Postgres.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await?;
            return Ok(Store::Postgres(pool));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.contains("://") {
            return Err(StoreError::new(StoreErrorKind::BadUrl, url.to_owned()));
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
            .acquire_timeout(ACQUIRE_TIMEOUT)
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

    /// Closes every connection (waiting for queries in progress).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_live_states_are_the_partial_index_s() {
        use crate::model::TaskState;
        assert_eq!(
            LIVE_SQL,
            format!(
                "state IN ('{}', '{}')",
                TaskState::Queued,
                TaskState::Running
            )
        );
        for dialect in ["sqlite", "postgres"] {
            let schema = std::fs::read_to_string(format!(
                "{}/../migrations/{dialect}/0003_windows.sql",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            assert!(schema.contains(&format!("WHERE {LIVE_SQL};")), "{dialect}");
        }
    }

    #[test]
    fn errors_are_classified_by_what_to_do() {
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            classify(&sqlx::Error::ColumnNotFound("x".into())),
            StoreErrorKind::Corrupt
        );
    }
}
