//! Dispatch: a job's tasks become rows (`queued`) only when the scheduler
//! has room for them, a window at a time. A `count` sweep's backlog is a
//! number, so accepting it costs one row whatever the count; a sweep over
//! rows or inputs keeps each task's parameters in `job_items` until then
//! (and drops them once they are tasks).

use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::{InputPart, Shuffle, TaskMessage};
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};
use std::collections::HashMap;

use sqlx::{QueryBuilder, Row};

use super::types::{JsonText, Text};
use super::{INSERT_CHUNK, LIVE_SQL, Store, StoreError, now_ms, on_pool, per_backend};
use crate::jobfile::ShuffleSettings;
use crate::model::{JobStatus, TaskState};

/// A running job with tasks still to dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// The job.
    pub job_id: i64,
    /// Its tenant.
    pub tenant: String,
    /// Its priority.
    pub priority: i64,
    /// Tasks it may dispatch now: those not dispatched yet, within its
    /// cap on tasks at once (`max_running`) less those queued or running.
    pub remaining: i64,
    /// The token of its label set (its tasks' queue, with the priority).
    pub queue: String,
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
    cache: i64,
    reruns: i64,
    /// Its tenant: outputs are cached per tenant.
    tenant: String,
    /// Whether its outputs go to the blob store whatever their size (a
    /// one-task step that others read: see [`TaskMessage::output_blob`]).
    #[sqlx(skip)]
    pub(crate) output_blob: bool,
}

/// A message's task (see `message_tasks`).
#[derive(Debug)]
pub struct MessageTask {
    /// The task.
    pub task_id: i64,
    /// Its state: `queued` when just created.
    pub state: TaskState,
    /// Its message to publish, when just created.
    pub message: Option<TaskMessage>,
}

/// A task run again, leaving `pending` for `queued`.
#[derive(Debug, sqlx::FromRow)]
struct Rerun {
    id: i64,
    #[sqlx(flatten)]
    task: Pending,
}

/// One task about to be created: its own parameters and input, if any.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Pending {
    seq: i64,
    params: Option<String>,
    input_hash: Option<String>,
    input_name: Option<String>,
    inputs: Option<JsonText<Vec<InputPart>>>,
    seed: Option<i64>,
}

impl Pending {
    /// A task with nothing of its own (a `count` sweep's).
    fn bare(seq: i64) -> Self {
        Pending {
            seq,
            params: None,
            input_hash: None,
            input_name: None,
            inputs: None,
            seed: None,
        }
    }

    /// The seed its guest sees: its own, else one drawn from its key.
    fn seed(&self, key: Option<&str>) -> Option<i64> {
        self.seed.or_else(|| key.map(|k| seed_of(k) as i64))
    }
}

/// A successful output a new task can take instead of running.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Hit {
    cache_key: String,
    output: Option<Vec<u8>>,
    output_hash: Option<String>,
    output_size: Option<i64>,
}

/// What dispatching did.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// Messages of the tasks created queued, to publish.
    pub messages: Vec<TaskMessage>,
    /// Tasks that took a cached output instead.
    pub cached: i64,
    /// Whether the job ended (every task it had left was cached).
    pub ended: bool,
}

/// Whether a call with these grants computes the same bytes every time
/// from the same module, inputs and params: no real clock, randomness,
/// network, environment or host directory.
pub fn deterministic(grants: &Grants) -> bool {
    !grants.clock
        && !grants.random
        && !grants.network
        && grants.env.is_empty()
        && grants.dirs.is_empty()
}

/// The seed of the randomness a task with this cache key sees.
pub fn seed_of(key: &str) -> u64 {
    key.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
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
            cache: i64::from(job.cache),
            reruns: 0,
            tenant: job.tenant.clone(),
            output_blob: false,
        }
    }

    /// The task's kind and part in the shuffle.
    fn shape_of(&self, seq: i64) -> (CallKind, Option<Shuffle>) {
        shape(
            self.task_kind.0,
            seq,
            self.maps,
            self.reducers,
            self.shuffle.as_ref().map(|s| &s.0),
        )
    }

    /// The cache key of a job's first task, when it has nothing of its
    /// own (a one-task job).
    pub(crate) fn first_cache_key(&self) -> Option<String> {
        self.cache_key(&Pending::bare(0))
    }

    /// The task's result-cache key: the hash of its tenant and everything
    /// its output depends on (module, preprocessor, kind, inputs and their names,
    /// params, limits, grants, the runtime, and its index in a job whose
    /// tasks have nothing of their own); `None` when its output may vary
    /// (it is granted a real clock, randomness, network, environment or
    /// directories) or is a map-reduce partition.
    pub(crate) fn cache_key(&self, task: &Pending) -> Option<String> {
        let (kind, shuffle) = self.shape_of(task.seq);
        if shuffle.is_some() || !deterministic(&self.grants.0) {
            return None;
        }
        let (input, input_name) = match &task.input_name {
            Some(name) => (task.input_hash.as_deref(), name.as_str()),
            None => (
                self.task_input_hash.as_deref(),
                self.task_input_name.as_str(),
            ),
        };
        let key = serde_json::json!({
            // One tenant never takes another's output.
            "tenant": self.tenant,
            "runtime": sandmill_runtime::RUNTIME_SCOPE,
            "module": self.module_hash,
            "preprocess": self.preprocess_hash,
            "kind": kind.name(),
            "input": input,
            "inputs": task.inputs.as_ref().map(|i| &i.0),
            "input_name": input_name,
            "params": task.params.as_deref().unwrap_or(&self.task_params),
            "limits": self.limits.0,
            "grants": self.grants.0,
            // Tasks of a `count` sweep differ only by their seed.
            "index": (self.has_items == 0).then_some(task.seq),
            "seed": task.seed,
        });
        Some(sandmill_runtime::blob::hash(key.to_string().as_bytes()))
    }

    fn message(&self, job_id: i64, task_id: i64, task: Pending, seed: Option<u64>) -> TaskMessage {
        let (input, input_name) = match task.input_name {
            Some(name) => (task.input_hash, name),
            None => (self.task_input_hash.clone(), self.task_input_name.clone()),
        };
        let (kind, shuffle) = self.shape_of(task.seq);
        TaskMessage {
            task_id,
            job_id,
            attempt: 0,
            priority: u8::try_from(self.priority).unwrap_or(0),
            tenant: self.tenant.clone(),
            kind,
            module: self.module_hash.clone(),
            input,
            input_name,
            params: task.params.unwrap_or_else(|| self.task_params.clone()),
            params_blob: None,
            limits: self.limits.0.clone(),
            grants: self.grants.0.clone(),
            labels: self.labels.0.clone(),
            seed,
            shuffle,
            inputs: task.inputs.map(|i| i.0).unwrap_or_default(),
            preprocess: self.preprocess_hash.clone(),
            output_blob: self.output_blob,
            delivered: 1,
            ticket: String::new(),
            published_ms: None,
            traceparent: None,
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
    /// Creates up to `max` of the job's next tasks (moving their items out
    /// of `job_items`): queued, or `cached` when a task with the same
    /// cache key has succeeded and the job allows it. Returns the queued
    /// tasks' messages; none if the job is not running or has nothing left.
    pub(crate) async fn materialize(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        max: i64,
        now: i64,
    ) -> Result<Dispatched, sqlx::Error> {
        let template: Option<Template> = sqlx::query_as(
            "SELECT priority, task_kind, module_hash, limits, grants, labels, task_params, \
             task_input_hash, task_input_name, has_items, total_tasks, dispatched, maps, reducers, shuffle, \
             preprocess_hash, cache, reruns, tenant FROM jobs WHERE id = $1 AND status = $2",
        )
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(template) = template else {
            return Ok(Dispatched::default());
        };
        materialize_from(tx, job_id, &template, max, now, None).await
    }

    /// Marks an unplanned step planned with `total` tasks, returning its
    /// template; `None` if it was planned (or ended) already.
    pub(crate) async fn plan(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        total: i64,
        now: i64,
    ) -> Result<Option<Template>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE jobs SET planned = CASE WHEN shuffle IS NOT NULL AND reducers > 0 THEN 0 ELSE 1 END, \
             maps = CASE WHEN shuffle IS NOT NULL THEN $1 ELSE maps END, \
             total_tasks = $1, has_items = 1, updated_at = $2 \
             WHERE id = $3 AND status = $4 AND planned = 0 AND maps IS NULL \
             RETURNING priority, task_kind, module_hash, limits, grants, labels, task_params, \
             task_input_hash, task_input_name, has_items, total_tasks, dispatched, maps, reducers, shuffle, \
             preprocess_hash, cache, reruns, tenant",
        )
        .bind(total)
        .bind(now)
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .fetch_optional(&mut **tx)
        .await
    }

    /// [`materialize`] with the job's template at hand (a job created or
    /// planned in this transaction: no need to read it back), and, when
    /// `given`, its items too (by seq: those dispatched now need not be
    /// stored in `job_items` first).
    pub(crate) async fn materialize_from(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        template: &Template,
        max: i64,
        now: i64,
        given: Option<&[crate::store::Item]>,
    ) -> Result<Dispatched, sqlx::Error> {
        // Tasks run again go first: they wait as `pending`, in order.
        let mut reruns = Vec::new();
        if template.reruns > 0 && max > 0 {
            reruns = sqlx::query_as::<_, Rerun>(
                "UPDATE tasks SET state = $1 WHERE id IN (SELECT id FROM tasks WHERE job_id = $2 \
                 AND state = $3 ORDER BY seq LIMIT $4) \
                 RETURNING id, seq, params, input_hash, input_name, inputs, seed",
            )
            .bind(Text(TaskState::Queued))
            .bind(job_id)
            .bind(Text(TaskState::Pending))
            .bind(max)
            .fetch_all(&mut **tx)
            .await?;
            sqlx::query("UPDATE jobs SET reruns = reruns - $1, updated_at = $2 WHERE id = $3")
                .bind(reruns.len() as i64)
                .bind(now)
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
        }
        let mut rerun_messages: Vec<TaskMessage> = reruns
            .into_iter()
            .map(|r| {
                let seed = r.task.seed.map(|s| s as u64);
                template.message(job_id, r.id, r.task, seed)
            })
            .collect();
        let max = max - rerun_messages.len() as i64;
        let from = template.dispatched;
        let to = from + max.min(template.total_tasks - from);
        if to <= from {
            return Ok(Dispatched {
                messages: rerun_messages,
                ..Dispatched::default()
            });
        }
        let pending: Vec<Pending> = if let Some(items) = given
            && template.has_items == 1
        {
            let (first, last) = (usize::try_from(from).unwrap_or(0), usize::try_from(to).unwrap_or(0));
            items
                .get(first..last)
                .unwrap_or_default()
                .iter()
                .zip(from..)
                .map(|(item, seq)| Pending {
                    seq,
                    params: Some(item.params.clone()),
                    input_hash: item.input_hash.clone(),
                    input_name: Some(item.input_name.clone()),
                    inputs: (!item.inputs.is_empty()).then(|| JsonText(item.inputs.clone())),
                    seed: item.seed,
                })
                .collect()
        } else if template.has_items == 1 {
            let pending = sqlx::query_as(
                "SELECT seq, params, input_hash, input_name, inputs, seed FROM job_items \
                 WHERE job_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
            )
            .bind(job_id)
            .bind(from)
            .bind(to)
            .fetch_all(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM job_items WHERE job_id = $1 AND seq < $2")
                .bind(job_id)
                .bind(to)
                .execute(&mut **tx)
                .await?;
            pending
        } else {
            (from..to).map(Pending::bare).collect()
        };
        if pending.len() as i64 != to - from {
            return Err(sqlx::Error::Protocol(format!(
                "job {job_id}: dispatch raced (items missing)"
            )));
        }
        let keys: Vec<Option<String>> = pending.iter().map(|t| template.cache_key(t)).collect();
        let hits = if template.cache == 1 {
            cache_hits(tx, &keys).await?
        } else {
            HashMap::new()
        };
        let mut ids = HashMap::with_capacity(pending.len());
        for (chunk, chunk_keys) in pending.chunks(INSERT_CHUNK).zip(keys.chunks(INSERT_CHUNK)) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, inputs, attempt, starts, \
                 created_at, cache_key, seed, output, output_hash, output_size, started_at, finished_at) ",
            );
            insert.push_values(chunk.iter().zip(chunk_keys), |mut row, (task, key)| {
                let hit = key.as_ref().and_then(|k| hits.get(k));
                row.push_bind(job_id)
                    .push_bind(task.seq)
                    .push_bind(Text(if hit.is_some() { TaskState::Cached } else { TaskState::Queued }))
                    .push_bind(task.params.clone())
                    .push_bind(task.input_hash.clone())
                    .push_bind(task.input_name.clone())
                    .push_bind(task.inputs.as_ref().map(|i| JsonText(i.0.clone())))
                    .push_bind(0_i64)
                    .push_bind(0_i64)
                    .push_bind(now)
                    .push_bind(key.clone())
                    .push_bind(task.seed(key.as_deref()))
                    .push_bind(hit.and_then(|h| h.output.clone()))
                    .push_bind(hit.and_then(|h| h.output_hash.clone()))
                    .push_bind(hit.and_then(|h| h.output_size))
                    .push_bind(hit.map(|_| now))
                    .push_bind(hit.map(|_| now));
            });
            insert.push(" RETURNING id, seq");
            for row in insert.build().fetch_all(&mut **tx).await? {
                ids.insert(row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(0)?);
            }
        }
        let cached = keys
            .iter()
            .filter(|k| k.as_ref().is_some_and(|k| hits.contains_key(k)))
            .count() as i64;
        let moved = sqlx::query(
            "UPDATE jobs SET dispatched = $1, succeeded = succeeded + $2, cached = cached + $2, \
             updated_at = $3 WHERE id = $4 AND dispatched = $5",
        )
        .bind(to)
        .bind(cached)
        .bind(now)
        .bind(job_id)
        .bind(from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if moved != 1 || ids.len() as i64 != to - from {
            // Someone else moved the cursor: this transaction must not
            // commit (the caller rolls back on error).
            return Err(sqlx::Error::Protocol(format!(
                "job {job_id}: dispatch raced (cursor moved)"
            )));
        }
        let mut messages = std::mem::take(&mut rerun_messages);
        messages.reserve(pending.len() - cached as usize);
        for (task, key) in pending.into_iter().zip(keys) {
            if key.as_ref().is_some_and(|k| hits.contains_key(k)) {
                continue;
            }
            let id = ids[&task.seq];
            let seed = task.seed(key.as_deref()).map(|s| s as u64);
            messages.push(template.message(job_id, id, task, seed));
        }
        let ended = cached > 0 && db::jobs::finish_if_done(tx, job_id, now).await?;
        Ok(Dispatched { messages, cached, ended })
    }

    /// The tasks of a batch of messages to a subscription's job, in
    /// order: each at its place (`seq`: the message's stream sequence, or
    /// `None` for the job's next place), created queued with its message
    /// to publish, or, when the place has a task already (a message
    /// delivered again), that task. `None` if the job has ended (its
    /// subscription was deleted or replaced). One statement per step
    /// whatever the batch's size, and one update of the job's row.
    pub(crate) async fn message_tasks(
        tx: &mut sqlx::Transaction<'static, Db>,
        job_id: i64,
        batch: &[(Option<i64>, crate::store::Item)],
        now: i64,
    ) -> Result<Option<Vec<MessageTask>>, sqlx::Error> {
        let template: Option<Template> = sqlx::query_as(
            "SELECT priority, task_kind, module_hash, limits, grants, labels, task_params, \
             task_input_hash, task_input_name, has_items, total_tasks, dispatched, maps, reducers, shuffle, \
             preprocess_hash, cache, reruns, tenant FROM jobs WHERE id = $1 AND status = $2",
        )
        .bind(job_id)
        .bind(Text(JobStatus::Running))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(template) = template else {
            return Ok(None);
        };
        if batch.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // Messages without a place take the next ones, claimed first (the
        // row lock orders concurrent claims).
        let unplaced = batch.iter().filter(|(seq, _)| seq.is_none()).count() as i64;
        let mut next = if unplaced > 0 {
            let first: i64 = sqlx::query_scalar(
                "UPDATE jobs SET total_tasks = total_tasks + $1, dispatched = dispatched + $1, \
                 updated_at = $2 WHERE id = $3 RETURNING total_tasks - $1",
            )
            .bind(unplaced)
            .bind(now)
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
            first
        } else {
            template.total_tasks
        };
        let seqs: Vec<i64> = batch
            .iter()
            .map(|(seq, _)| {
                seq.unwrap_or_else(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let mut ids: HashMap<i64, (i64, TaskState, bool)> = HashMap::with_capacity(batch.len());
        for (chunk, chunk_seqs) in batch.chunks(INSERT_CHUNK).zip(seqs.chunks(INSERT_CHUNK)) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO tasks (job_id, seq, state, params, input_hash, input_name, attempt, starts, created_at) ",
            );
            insert.push_values(chunk.iter().zip(chunk_seqs), |mut row, ((_, item), seq)| {
                row.push_bind(job_id)
                    .push_bind(*seq)
                    .push_bind(Text(TaskState::Queued))
                    .push_bind(item.params.clone())
                    .push_bind(item.input_hash.clone())
                    .push_bind(item.input_name.clone())
                    .push_bind(0_i64)
                    .push_bind(0_i64)
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (job_id, seq) WHERE replaced_by IS NULL DO NOTHING RETURNING id, seq");
            for row in insert.build().fetch_all(&mut **tx).await? {
                ids.insert(row.try_get(1)?, (row.try_get(0)?, TaskState::Queued, true));
            }
        }
        let fresh = ids.len() as i64;
        let known: Vec<i64> = seqs.iter().copied().filter(|s| !ids.contains_key(s)).collect();
        for chunk in known.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::new("SELECT id, seq, state FROM tasks WHERE job_id = ");
            q.push_bind(job_id).push(" AND replaced_by IS NULL AND seq IN (");
            let mut list = q.separated(", ");
            for seq in chunk {
                list.push_bind(*seq);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut **tx).await? {
                let state: Text<TaskState> = row.try_get(2)?;
                ids.insert(row.try_get(1)?, (row.try_get(0)?, state.0, false));
            }
        }
        // Places of delivered-again messages were counted when first made.
        let placed_fresh = fresh - unplaced;
        if placed_fresh > 0 {
            sqlx::query(
                "UPDATE jobs SET total_tasks = total_tasks + $1, dispatched = dispatched + $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(placed_fresh)
            .bind(now)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        }
        let mut made = std::collections::HashSet::new();
        let mut tasks = Vec::with_capacity(batch.len());
        for ((_, item), seq) in batch.iter().zip(seqs) {
            let Some(&(task_id, state, created)) = ids.get(&seq) else {
                return Err(sqlx::Error::Protocol(format!(
                    "job {job_id}: the task at place {seq} is missing"
                )));
            };
            // A place twice in one batch is one task, published once.
            let message = (created && made.insert(seq)).then(|| {
                let pending = Pending {
                    seq,
                    params: Some(item.params.clone()),
                    input_hash: item.input_hash.clone(),
                    input_name: Some(item.input_name.clone()),
                    inputs: None,
                    seed: None,
                };
                template.message(job_id, task_id, pending, None)
            });
            tasks.push(MessageTask {
                task_id,
                state,
                message,
            });
        }
        Ok(Some(tasks))
    }

    /// The first successful output of each of these keys that has one.
    async fn cache_hits(
        tx: &mut sqlx::Transaction<'static, Db>,
        keys: &[Option<String>],
    ) -> Result<HashMap<String, Hit>, sqlx::Error> {
        let mut wanted: Vec<&String> = keys.iter().flatten().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut hits = HashMap::new();
        for chunk in wanted.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::new(
                "SELECT cache_key, output, output_hash, output_size FROM tasks WHERE id IN \
                 (SELECT MIN(id) FROM tasks WHERE state IN ('succeeded', 'cached') AND cache_key IN (",
            );
            let mut list = q.separated(", ");
            for key in chunk {
                list.push_bind((*key).clone());
            }
            q.push(") GROUP BY cache_key)");
            for hit in q.build_query_as::<Hit>().fetch_all(&mut **tx).await? {
                hits.insert(hit.cache_key.clone(), hit);
            }
        }
        Ok(hits)
    }
}

impl Store {
    /// Running jobs with tasks still to dispatch, at most `limit`: each
    /// tenant's highest priority first, oldest first within a priority,
    /// the tenants taking turns (each one's first, then each one's
    /// second, ...).
    pub async fn backlog(&self, limit: i64) -> Result<Vec<Backlog>, StoreError> {
        // Every tenant's first job, then every tenant's second, ...: a
        // tenant's many jobs do not keep another's out of the round.
        // A capped job's live tasks are counted on the partial index of
        // live tasks (at most its cap of them); a job at its cap waits
        // for an end, which wakes the dispatcher.
        let rows = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, priority, remaining, tenant, labels, max_running, live FROM ( \
                 SELECT id, priority, total_tasks - dispatched + reruns AS remaining, tenant, labels, max_running, \
                        CASE WHEN max_running IS NULL THEN 0 ELSE \
                            (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.{LIVE_SQL}) END AS live, \
                        ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY priority DESC, id) AS place \
                 FROM jobs WHERE status = 'running' AND (dispatched < total_tasks OR reruns > 0) \
             ) AS backlog WHERE max_running IS NULL OR live < max_running \
             ORDER BY place, priority DESC, id LIMIT $1",
        )))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            let remaining: i64 = r.try_get(2)?;
            let cap: Option<i64> = r.try_get(5)?;
            let live: i64 = r.try_get(6)?;
            Ok::<_, sqlx::Error>(Backlog {
                job_id: r.try_get(0)?,
                priority: r.try_get(1)?,
                remaining: cap.map_or(remaining, |cap| remaining.min(cap - live)),
                tenant: r.try_get(3)?,
                queue: r.try_get::<JsonText<Labels>, _>(4)?.0.token(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Tasks waiting to start, per label set of the running jobs: those
    /// not dispatched yet, those to run again and those queued. At most
    /// `limit` label sets, the most waiting first.
    pub async fn queued_by_labels(&self, limit: i64) -> Result<Vec<(Labels, i64)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT labels, CAST(SUM(n) AS BIGINT) AS waiting FROM ( \
                 SELECT labels, total_tasks - dispatched + reruns AS n FROM jobs WHERE status = 'running' \
                 UNION ALL \
                 SELECT j.labels, 1 AS n FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state = $1 \
             ) AS waiting GROUP BY labels ORDER BY waiting DESC LIMIT $2",
        )
        .bind(Text(TaskState::Queued))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<JsonText<Labels>, _>(0)?.0, r.try_get(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Dispatches up to `max` of a job's next tasks: creates them queued
    /// (or cached), in one transaction, and returns their messages to
    /// publish.
    pub async fn dispatch(&self, job_id: i64, max: i64) -> Result<Dispatched, StoreError> {
        let now = now_ms();
        let messages = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let dispatched = db::dispatch::materialize(&mut tx, job_id, max, now).await?;
            tx.commit().await?;
            dispatched
        });
        Ok(messages)
    }

    /// Whether a task with this cache key has a successful output.
    pub async fn has_cached(&self, key: &str) -> Result<bool, StoreError> {
        let found = on_pool!(self, pool => sqlx::query(
            "SELECT 1 FROM tasks WHERE cache_key = $1 AND state IN ('succeeded', 'cached') LIMIT 1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?
        .is_some());
        Ok(found)
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
