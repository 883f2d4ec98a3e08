//! Live tasks as messages to publish again: after a restart (every queued
//! or running task, at its current attempt), for the reconciler (tasks the
//! broker lost) and for retries. A page at a time, by task id.

use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{InputPart, TaskMessage};
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use sqlx::{QueryBuilder, Row};

use super::types::{JsonText, Text};
use super::{LIVE_SQL, RECORD_CHUNK, Store, StoreError, on_pool};
use crate::model::TaskState;

/// A live task with what its message needs.
#[derive(sqlx::FromRow)]
struct LiveRow {
    id: i64,
    job_id: i64,
    attempt: i64,
    priority: i64,
    task_kind: Text<CallKind>,
    module_hash: String,
    input_hash: Option<String>,
    input_name: String,
    params: String,
    limits: JsonText<Limits>,
    grants: JsonText<Grants>,
    labels: JsonText<Labels>,
    seed: Option<i64>,
    seq: i64,
    maps: Option<i64>,
    reducers: i64,
    shuffle: Option<JsonText<crate::jobfile::ShuffleSettings>>,
    inputs: Option<JsonText<Vec<InputPart>>>,
    preprocess_hash: Option<String>,
    tenant: String,
}

const LIVE_COLUMNS: &str = "t.id, t.job_id, t.attempt, j.priority, j.task_kind, j.module_hash, \
     CASE WHEN t.input_name IS NULL THEN j.task_input_hash ELSE t.input_hash END AS input_hash, \
     COALESCE(t.input_name, j.task_input_name) AS input_name, \
     COALESCE(t.params, j.task_params) AS params, j.limits, j.grants, j.labels, t.seed, \
     t.seq, j.maps, j.reducers, j.shuffle, t.inputs, j.preprocess_hash, j.tenant";

impl LiveRow {
    fn message(self) -> TaskMessage {
        let (kind, shuffle) = super::dispatch::shape(
            self.task_kind.0,
            self.seq,
            self.maps,
            self.reducers,
            self.shuffle.as_ref().map(|s| &s.0),
        );
        TaskMessage {
            task_id: self.id,
            job_id: self.job_id,
            attempt: self.attempt,
            priority: u8::try_from(self.priority).unwrap_or(0),
            tenant: self.tenant,
            kind,
            module: self.module_hash,
            input: self.input_hash,
            input_name: self.input_name,
            params: self.params,
            params_blob: None,
            limits: self.limits.0,
            grants: self.grants.0,
            labels: self.labels.0,
            // Stored as its bits in a signed column.
            seed: self.seed.map(|s| s as u64),
            shuffle,
            inputs: self.inputs.map(|i| i.0).unwrap_or_default(),
            preprocess: self.preprocess_hash,
            output_blob: false,
            delivered: 1,
            ticket: String::new(),
            published_ms: None,
            traceparent: None,
        }
    }
}

impl Store {
    /// A page of every queued or running task, as messages at their
    /// current attempt: the first `limit` with an id above `after`. A
    /// fleet's workers may still hold them: the broker drops a re-publish
    /// it still has, and should a task run twice, its first result counts.
    pub async fn live_messages_page(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<TaskMessage>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, LiveRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {LIVE_COLUMNS} FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.{LIVE_SQL} AND t.id > $1 ORDER BY t.id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(LiveRow::message).collect())
    }

    /// A page of the ids of every queued or running task (for the
    /// reconciler): the first `limit` above `after`.
    pub async fn live_tasks_page(&self, after: i64, limit: i64) -> Result<Vec<i64>, StoreError> {
        let ids = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM tasks WHERE {LIVE_SQL} AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(ids)
    }

    /// Messages for those of these tasks that are still live (any attempt).
    pub async fn live_messages(&self, task_ids: &[i64]) -> Result<Vec<TaskMessage>, StoreError> {
        self.messages_where(None, task_ids).await
    }

    /// Messages for those of these tasks that are queued (retries).
    pub async fn queued_messages(&self, task_ids: &[i64]) -> Result<Vec<TaskMessage>, StoreError> {
        self.messages_where(Some(TaskState::Queued), task_ids).await
    }

    async fn messages_where(
        &self,
        state: Option<TaskState>,
        ids: &[i64],
    ) -> Result<Vec<TaskMessage>, StoreError> {
        let mut messages = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(RECORD_CHUNK) {
            let rows = on_pool!(self, pool => {
                let mut q = QueryBuilder::new(format!(
                    "SELECT {LIVE_COLUMNS} FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.{LIVE_SQL}"
                ));
                if let Some(state) = state {
                    q.push(" AND t.state = ").push_bind(Text(state));
                }
                q.push(" AND t.id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(") ORDER BY t.id");
                q.build_query_as::<LiveRow>().fetch_all(pool).await?
            });
            messages.extend(rows.into_iter().map(LiveRow::message));
        }
        Ok(messages)
    }
}
