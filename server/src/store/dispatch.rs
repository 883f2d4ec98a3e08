//! Dispatch: a job's tasks become rows (`queued`) only when the scheduler
//! has room for them, a window at a time. A `count` sweep's backlog is a
//! number, so accepting it costs one row whatever the count; a sweep over
//! rows or inputs keeps each task's parameters in `job_items` until then
//! (and drops them once they are tasks).

use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{InputPart, Shuffle, TaskMessage};
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use sqlx::Row;

use super::types::{JsonText, Text};
use super::{LIVE_SQL, Store, StoreError, now_ms, on_pool, per_backend};
use crate::jobfile::ShuffleSettings;
use crate::model::{JobStatus, TaskState};

/// A running job with tasks still to dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// The job.
    pub job_id: i64,
    /// Its priority.
    pub priority: i64,
    /// Tasks not dispatched yet.
    pub remaining: i64,
}

/// What every task of a job shares, as its messages need it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Template {
    priority: i64,
    task_kind: Text<CallKind>,
    module_hash: String,
    limits: JsonText<Limits>,
    grants: JsonText<Grants>,
    labels: JsonText<Labels>,
    task_params: String,
    task_input_hash: Option<String>,
    task_input_name: String,
    has_items: i64,
    total_tasks: i64,
    dispatched: i64,
    maps: Option<i64>,
    reducers: i64,
    shuffle: Option<JsonText<ShuffleSettings>>,
    preprocess_hash: Option<String>,
}

/// One task row as it was created.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Created {
    id: i64,
    seq: i64,
    params: Option<String>,
    input_hash: Option<String>,
    input_name: Option<String>,
    inputs: Option<JsonText<Vec<InputPart>>>,
}

impl Template {
    /// The template of a job being created (nothing dispatched yet).
    pub(crate) fn of_new(job: &super::NewJob) -> Self {
        Template {
            priority: i64::from(job.priority),
            task_kind: Text(job.task_kind),
            module_hash: job.module_hash.clone(),
            limits: JsonText(job.limits.clone()),
            grants: JsonText(job.grants.clone()),
            labels: JsonText(job.labels.clone()),
            task_params: job.task_params.clone(),
            task_input_hash: job.task_input.clone(),
            task_input_name: job.task_input_name.clone(),
            has_items: i64::from(!job.items.is_empty()),
            total_tasks: job.total,
            dispatched: 0,
            maps: job.mapreduce.as_ref().map(|_| job.total),
            reducers: job.mapreduce.as_ref().map_or(0, |(r, _)| i64::from(*r)),
            shuffle: job.mapreduce.as_ref().map(|(_, s)| JsonText(s.clone())),
            preprocess_hash: None,
        }
    }

    fn message(&self, job_id: i64, task: Created) -> TaskMessage {
        let (input, input_name) = match task.input_name {
            Some(name) => (task.input_hash, name),
            None => (self.task_input_hash.clone(), self.task_input_name.clone()),
        };
        let (kind, shuffle) = shape(
            self.task_kind.0,
            task.seq,
            self.maps,
            self.reducers,
            self.shuffle.as_ref().map(|s| &s.0),
        );
        TaskMessage {
            task_id: task.id,
            job_id,
            attempt: 0,
            priority: u8::try_from(self.priority).unwrap_or(0),
            kind,
            module: self.module_hash.clone(),
            input,
            input_name,
            params: task.params.unwrap_or_else(|| self.task_params.clone()),
            params_blob: None,
            limits: self.limits.0.clone(),
            grants: self.grants.0.clone(),
            labels: self.labels.0.clone(),
            seed: None,
            shuffle,
            inputs: task.inputs.map(|i| i.0).unwrap_or_default(),
            preprocess: self.preprocess_hash.clone(),
            delivered: 1,
        }
    }
}

/// A task's kind and part in the shuffle, from its job's shape: in a
/// map-reduce job with reducers, the first `maps` tasks are its maps and
/// the rest its reduces.
pub(crate) fn shape(
    kind: CallKind,
    seq: i64,
    maps: Option<i64>,
    reducers: i64,
    settings: Option<&ShuffleSettings>,
) -> (CallKind, Option<Shuffle>) {
    match (maps, settings) {
        (Some(maps), Some(settings)) if reducers > 0 => {
            if seq < maps {
                let shuffle = Shuffle::Map {
                    partitions: u32::try_from(reducers).unwrap_or(u32::MAX),
                    buffer: settings.buffer,
                    combine: settings.combine,
                };
                (CallKind::Map, Some(shuffle))
            } else {
                (CallKind::Reduce, Some(Shuffle::Reduce))
            }
        }
        _ => (kind, None),
    }
}

per_backend! {
    /// Creates up to `max` of the job's next tasks as queued rows (moving
    /// their items out of `job_items`) and returns their messages; none if
    /// the job is not running or has nothing left.
    pub(crate) async fn materialize(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        max: i64,
        now: i64,
    ) -> Result<Vec<TaskMessage>, sqlx::Error> {
        let template: Option<Template> = sqlx::query_as(
            "SELECT priority, task_kind, module_hash, limits, grants, labels, task_params, \
             task_input_hash, task_input_name, has_items, total_tasks, dispatched, maps, reducers, shuffle, \
             preprocess_hash FROM jobs WHERE id = $1 AND status = $2",
        )
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(template) = template else {
            return Ok(Vec::new());
        };
        materialize_from(tx, job_id, &template, max, now).await
    }

    /// [`materialize`] with the job's template at hand (a job created in
    /// this transaction: no need to read it back).
    pub(crate) async fn materialize_from(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        template: &Template,
        max: i64,
        now: i64,
    ) -> Result<Vec<TaskMessage>, sqlx::Error> {
        let from = template.dispatched;
        let to = from + max.min(template.total_tasks - from);
        if to <= from {
            return Ok(Vec::new());
        }
        let created: Vec<Created> = if template.has_items == 1 {
            let created = sqlx::query_as(
                "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, inputs, attempt, starts, created_at) \
                 SELECT job_id, seq, $2, params, input_hash, input_name, inputs, 0, 0, $3 FROM job_items \
                 WHERE job_id = $1 AND seq >= $4 AND seq < $5 \
                 RETURNING id, seq, params, input_hash, input_name, inputs",
            )
            .bind(job_id)
            .bind(Text(TaskState::Queued))
            .bind(now)
            .bind(from)
            .bind(to)
            .fetch_all(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM job_items WHERE job_id = $1 AND seq < $2")
                .bind(job_id)
                .bind(to)
                .execute(&mut **tx)
                .await?;
            created
        } else {
            sqlx::query_as(
                "WITH RECURSIVE s(n) AS (SELECT CAST($4 AS BIGINT) UNION ALL SELECT n + 1 FROM s WHERE n + 1 < $5) \
                 INSERT INTO tasks (job_id, seq, state, attempt, starts, created_at) \
                 SELECT $1, n, $2, 0, 0, $3 FROM s \
                 RETURNING id, seq, params, input_hash, input_name, inputs",
            )
            .bind(job_id)
            .bind(Text(TaskState::Queued))
            .bind(now)
            .bind(from)
            .bind(to)
            .fetch_all(&mut **tx)
            .await?
        };
        let moved = sqlx::query(
            "UPDATE jobs SET dispatched = $1, updated_at = $2 WHERE id = $3 AND dispatched = $4",
        )
        .bind(to)
        .bind(now)
        .bind(job_id)
        .bind(from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if moved != 1 || created.len() as i64 != to - from {
            // Someone else moved the cursor: this transaction must not
            // commit (the caller rolls back on error).
            return Err(sqlx::Error::Protocol(format!(
                "job {job_id}: dispatch raced (cursor moved or items missing)"
            )));
        }
        Ok(created.into_iter().map(|task| template.message(job_id, task)).collect())
    }
}

impl Store {
    /// Running jobs with tasks still to dispatch, highest priority first,
    /// oldest first within a priority; at most `limit`.
    pub async fn backlog(&self, limit: i64) -> Result<Vec<Backlog>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT id, priority, total_tasks - dispatched FROM jobs \
             WHERE status = 'running' AND dispatched < total_tasks \
             ORDER BY priority DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>(Backlog {
            job_id: r.try_get(0)?,
            priority: r.try_get(1)?,
            remaining: r.try_get(2)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Dispatches up to `max` of a job's next tasks: creates them queued,
    /// in one transaction, and returns their messages to publish.
    pub async fn dispatch(&self, job_id: i64, max: i64) -> Result<Vec<TaskMessage>, StoreError> {
        let now = now_ms();
        let messages = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let messages = db::dispatch::materialize(&mut tx, job_id, max, now).await?;
            tx.commit().await?;
            messages
        });
        Ok(messages)
    }

    /// Tasks queued or running, in every job (at most a dispatch window of
    /// them, plus small jobs; counted on the partial index).
    pub async fn live_count(&self) -> Result<i64, StoreError> {
        let n = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM tasks WHERE {LIVE_SQL}"
        )))
        .fetch_one(pool)
        .await?
        .try_get::<i64, _>(0)?);
        Ok(n)
    }
}
