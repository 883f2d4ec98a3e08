//! Tasks, their attempts, outputs and logs, as read back (a page at a
//! time where a list can be long).

use sqlx::{QueryBuilder, Row};

use super::types::Text;
use super::{ATTEMPT_COLUMNS, AttemptRow, Store, StoreError, TASK_COLUMNS, TaskRow, on_pool};
use crate::model::TaskState;

/// Where a task's output or an attempt's log is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// None (the task has not succeeded).
    Nothing,
    /// In the database.
    Inline(Vec<u8>),
    /// In the blob store.
    Blob(String),
}

impl Store {
    /// A page of a job's tasks in order, optionally in one state: the first
    /// `limit` whose seq is after `after`. Runs replaced by a restart are
    /// not listed (each is linked from the run that replaced it).
    pub async fn tasks(
        &self,
        job_id: i64,
        state: Option<TaskState>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(format!(
                "SELECT {TASK_COLUMNS} FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.job_id = "
            ));
            q.push_bind(job_id).push(" AND t.replaced_by IS NULL");
            if let Some(state) = state {
                q.push(" AND t.state = ").push_bind(Text(state));
            }
            if let Some(after) = after {
                q.push(" AND t.seq > ").push_bind(after);
            }
            q.push(" ORDER BY t.seq LIMIT ").push_bind(limit);
            q.build_query_as::<TaskRow>().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// A task by id.
    pub async fn task(&self, id: i64) -> Result<Option<TaskRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, TaskRow>(
            sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = $1"
            )),
        )
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Where a task's output is; `None` when there is no such task.
    pub async fn task_output(&self, id: i64) -> Result<Option<Stored>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query(
            "SELECT output, output_hash FROM tasks WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<Option<Vec<u8>>, _>(0)?, r.try_get::<Option<String>, _>(1)?)))
        .transpose()?);
        Ok(row.map(|(inline, hash)| match (inline, hash) {
            (Some(bytes), _) => Stored::Inline(bytes),
            (None, Some(hash)) => Stored::Blob(hash),
            (None, None) => Stored::Nothing,
        }))
    }

    /// A task's attempts, oldest first (at most its job's `max_attempts`).
    pub async fn attempts(&self, task_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = $1 ORDER BY attempt"
        )))
        .bind(task_id)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Where one attempt's log is.
    pub async fn attempt_log(&self, task_id: i64, attempt: i64) -> Result<Stored, StoreError> {
        let row = on_pool!(self, pool => sqlx::query(
            "SELECT log, log_hash FROM attempts WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task_id)
        .bind(attempt)
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<Vec<u8>, _>(0)?, r.try_get::<Option<String>, _>(1)?)))
        .transpose()?);
        Ok(match row {
            Some((_, Some(hash))) => Stored::Blob(hash),
            Some((bytes, None)) => Stored::Inline(bytes),
            None => Stored::Nothing,
        })
    }
}
