//! Pipelines: a `pipeline` job, one `step` job per step, and in
//! `job_deps` the steps each step reads. A step is accepted unplanned;
//! [`Store::plan_step`] gives it its tasks once (guarded by `planned`),
//! [`Store::block_step`] ends it when a step it reads failed, and
//! [`Store::end_pipeline_if_done`] ends the pipeline when every step has.

use sandmill_runtime::message::{InputPart, TaskMessage};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row};

use super::types::{JsonText, Text, safe_text};
use super::{Item, JOB_COLUMNS, JobRow, NewJob, Store, StoreError, now_ms, on_pool, per_backend};
use crate::jobfile::ForEach;
use crate::model::{JobKind, JobStatus, TaskState};

/// A step of at most this many tasks that another step reads keeps its
/// outputs in the blob store whatever their size; a step that reads at
/// most this many outputs, all in the blob store, and does not fan out,
/// gets its task in the transaction that records the last of them (see
/// [`follow`](sqlite::follow)). Others are planned right after, by the
/// scheduler, which packs small outputs into blobs first.
pub const FOLLOW_OUTPUTS: i64 = 16;

/// Fault injection for crash tests: when this variable is set, the first
/// step to succeed is left unfollowed (its readers are planned neither in
/// the recording transaction nor after it) and a line saying so goes to
/// stderr, so that a test can kill the server in that very window.
pub const PAUSE_BEFORE_PLANNING: &str = "SANDMILL_FAULT_PAUSE_BEFORE_PLANNING";

/// What following the steps that ended did inside the transaction that
/// recorded their end.
#[derive(Debug, Default)]
pub struct Followed {
    /// Messages of the tasks created, to publish.
    pub messages: Vec<TaskMessage>,
    /// Steps that ended whose every ready reader was planned here:
    /// nothing is left to do after them.
    pub done: Vec<i64>,
    /// Steps planned here that ended at once (every task cached).
    pub ended: Vec<i64>,
}

per_backend! {
    /// Plans, in the recording transaction, the steps that read the jobs
    /// that just `ended` and can start now: every step they read
    /// succeeded, they do not fan out, and what they read is at most
    /// [`FOLLOW_OUTPUTS`] outputs already in the blob store (one task,
    /// reading them whole, in task order, exactly as the scheduler's
    /// planner would).
    pub(crate) async fn follow(
        tx: &mut sqlx::Transaction<'static, Db>,
        ended: &[i64],
        now: i64,
    ) -> Result<Followed, sqlx::Error> {
        let mut followed = Followed::default();
        if ended.is_empty() || std::env::var_os(PAUSE_BEFORE_PLANNING).is_some() {
            return Ok(followed);
        }
        let mut q = QueryBuilder::new(
            "SELECT d.needs_id, j.id, j.step_spec, j.task_params, \
             (SELECT COUNT(*) FROM job_deps r WHERE r.needs_id = j.id), j.shuffle IS NOT NULL \
             FROM job_deps d JOIN jobs j ON j.id = d.job_id WHERE j.status = ",
        );
        q.push_bind(Text(JobStatus::Running))
            .push(" AND j.planned = 0 AND j.maps IS NULL AND NOT EXISTS (SELECT 1 FROM job_deps n JOIN jobs s \
                   ON s.id = n.needs_id WHERE n.job_id = j.id AND s.status <> ")
            .push_bind(Text(JobStatus::Succeeded))
            .push(") AND d.needs_id IN (");
        let mut list = q.separated(", ");
        for id in ended {
            list.push_bind(*id);
        }
        q.push(") ORDER BY j.id");
        let rows = q.build().fetch_all(&mut **tx).await?;
        // Per step that ended: whether each of its ready readers was planned.
        let mut done: std::collections::BTreeMap<i64, bool> = std::collections::BTreeMap::new();
        let mut planned: std::collections::BTreeMap<i64, bool> = std::collections::BTreeMap::new();
        for row in rows {
            let needs_id: i64 = row.try_get(0)?;
            let id: i64 = row.try_get(1)?;
            let ok = match planned.get(&id) {
                Some(ok) => *ok,
                None => {
                    let spec = row
                        .try_get::<Option<JsonText<StepSpec>>, _>(2)?
                        .map(|s| s.0)
                        .unwrap_or_default();
                    let readers: i64 = row.try_get(4)?;
                    // A map-reduce step's splits are planned by the scheduler.
                    if row.try_get::<bool, _>(5)? {
                        planned.insert(id, false);
                        *done.entry(needs_id).or_insert(true) = false;
                        continue;
                    }
                    let ok = follow_one(tx, id, &spec, row.try_get(3)?, readers > 0, now, &mut followed)
                        .await?;
                    planned.insert(id, ok);
                    ok
                }
            };
            *done.entry(needs_id).or_insert(true) &= ok;
        }
        followed.done = done.into_iter().filter(|(_, ok)| *ok).map(|(id, _)| id).collect();
        Ok(followed)
    }

    /// Plans one ready step here if it can be (see [`follow`]); returns
    /// whether it is planned now (by this or by an earlier planning).
    async fn follow_one(
        tx: &mut sqlx::Transaction<'static, Db>,
        id: i64,
        spec: &StepSpec,
        params: String,
        read: bool,
        now: i64,
        followed: &mut Followed,
    ) -> Result<bool, sqlx::Error> {
        if spec.for_each.is_some() {
            return Ok(false);
        }
        let mut parts = Vec::new();
        let mut names = Vec::new();
        for input in &spec.inputs {
            match input {
                SpecInput::Blob { hash, name } => {
                    names.push(name.clone());
                    parts.push(InputPart { hash: hash.clone(), offset: 0, len: None });
                }
                SpecInput::Step { job, name } => {
                    names.push(format!("step:{name}"));
                    let outputs = sqlx::query(
                        "SELECT output, output_hash FROM tasks WHERE job_id = $1 AND state IN ($2, $3) \
                         AND replaced_by IS NULL AND seq >= (SELECT CASE WHEN reducers > 0 \
                         THEN COALESCE(maps, 0) ELSE 0 END FROM jobs WHERE id = $1) ORDER BY seq LIMIT $4",
                    )
                    .bind(*job)
                    .bind(Text(TaskState::Succeeded))
                    .bind(Text(TaskState::Cached))
                    .bind(FOLLOW_OUTPUTS + 1)
                    .fetch_all(&mut **tx)
                    .await?;
                    if outputs.len() as i64 > FOLLOW_OUTPUTS {
                        return Ok(false);
                    }
                    for output in outputs {
                        let inline: Option<Vec<u8>> = output.try_get(0)?;
                        match (inline, output.try_get::<Option<String>, _>(1)?) {
                            // Small outputs are packed into a blob first:
                            // the scheduler's planner does that.
                            (Some(bytes), _) if !bytes.is_empty() => return Ok(false),
                            (_, Some(hash)) => parts.push(InputPart { hash, offset: 0, len: None }),
                            _ => {}
                        }
                    }
                }
            }
        }
        let input_name = if names.is_empty() { "-".to_owned() } else { names.join(",") };
        let Some(mut template) = db::dispatch::plan(tx, id, 1, now).await? else {
            return Ok(true);
        };
        template.output_blob = read;
        let item = Item { params, input_hash: None, input_name, inputs: parts, seed: None };
        let dispatched =
            db::dispatch::materialize_from(tx, id, &template, 1, now, Some(std::slice::from_ref(&item)))
                .await?;
        followed.messages.extend(dispatched.messages);
        if dispatched.ended {
            followed.ended.push(id);
        }
        Ok(true)
    }
}

/// Where a step's input comes from, as stored with the step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecInput {
    /// Every output of a step (its job), in task order.
    Step {
        /// The step's job.
        job: i64,
        /// Its name.
        name: String,
    },
    /// An uploaded input.
    Blob {
        /// Its sha256.
        hash: String,
        /// The name the guest sees.
        name: String,
    },
}

/// What a step reads and how it fans out (stored as JSON with the step).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Its inputs, read one after the other.
    pub inputs: Vec<SpecInput>,
    /// Its fan-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
}

/// A step's input before the steps have ids.
#[derive(Clone, Debug)]
pub enum DraftInput {
    /// Another step, by its index in the file.
    Step(usize),
    /// An uploaded input.
    Blob {
        /// Its sha256.
        hash: String,
        /// The name the guest sees.
        name: String,
    },
}

/// A step being created.
#[derive(Clone, Debug)]
pub struct NewStep {
    /// The step's job (no tasks yet).
    pub job: NewJob,
    /// Its name.
    pub name: String,
    /// What it reads.
    pub inputs: Vec<DraftInput>,
    /// Its fan-out.
    pub for_each: Option<ForEach>,
    /// Its preprocessor's module hash.
    pub preprocess: Option<String>,
    /// How long its retries wait (ms).
    pub retry_backoff_ms: i64,
}

/// A step as the planner reads it.
#[derive(Clone, Debug)]
pub struct StepRow {
    /// The step's job.
    pub id: i64,
    /// Its pipeline.
    pub parent_id: i64,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: JobStatus,
    /// 1 once it has its tasks (a map-reduce step: once it has its maps).
    pub planned: i64,
    /// What it reads.
    pub spec: StepSpec,
    /// Its tasks' parameters.
    pub task_params: String,
    /// Of the steps it reads: how many still run, and how many ended
    /// other than succeeded.
    pub needs_running: i64,
    /// See `needs_running`.
    pub needs_failed: i64,
    /// How many steps read it.
    pub readers: i64,
    /// Whether it is a map-reduce.
    pub mapreduce: bool,
}

/// One successful task's output, where it is.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The task's place in its step.
    pub seq: i64,
    /// The bytes, when kept in the database.
    pub inline: Option<Vec<u8>>,
    /// The blob, when not.
    pub hash: Option<String>,
}

impl Store {
    /// Creates a pipeline and its steps (in `order`: every step after
    /// those it reads), none planned yet, in one transaction. Returns the
    /// pipeline's id and each step's (in file order).
    pub async fn create_pipeline(
        &self,
        parent: &NewJob,
        steps: &[NewStep],
        order: &[usize],
    ) -> Result<(i64, Vec<i64>), StoreError> {
        let now = now_ms();
        let created = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let parent_id = db::jobs::insert_job(&mut tx, parent, now).await?;
            sqlx::query("UPDATE jobs SET planned = 0 WHERE id = $1")
                .bind(parent_id)
                .execute(&mut *tx)
                .await?;
            let mut ids = vec![0_i64; steps.len()];
            for &i in order {
                let step = &steps[i];
                let id = db::jobs::insert_job(&mut tx, &step.job, now).await?;
                ids[i] = id;
                let spec = StepSpec {
                    inputs: step
                        .inputs
                        .iter()
                        .map(|input| match input {
                            DraftInput::Step(j) => SpecInput::Step {
                                job: ids[*j],
                                name: steps[*j].name.clone(),
                            },
                            DraftInput::Blob { hash, name } => SpecInput::Blob {
                                hash: hash.clone(),
                                name: name.clone(),
                            },
                        })
                        .collect(),
                    for_each: step.for_each,
                };
                sqlx::query(
                    "UPDATE jobs SET parent_id = $1, step = $2, step_spec = $3, preprocess_hash = $4, \
                     planned = 0, maps = NULL, retry_backoff_ms = $5 WHERE id = $6",
                )
                .bind(parent_id)
                .bind(safe_text(&step.name, 256))
                .bind(JsonText(spec.clone()))
                .bind(step.preprocess.clone())
                .bind(step.retry_backoff_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let mut needs: Vec<i64> = spec
                    .inputs
                    .iter()
                    .filter_map(|input| match input {
                        SpecInput::Step { job, .. } => Some(*job),
                        SpecInput::Blob { .. } => None,
                    })
                    .collect();
                needs.sort_unstable();
                needs.dedup();
                for needs_id in needs {
                    sqlx::query("INSERT INTO job_deps (job_id, needs_id) VALUES ($1, $2)")
                        .bind(id)
                        .bind(needs_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            (parent_id, ids)
        });
        Ok(created)
    }

    /// A step, as the planner reads it; `None` if the job is no step.
    pub async fn step(&self, id: i64) -> Result<Option<StepRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query(
            "SELECT j.id, j.parent_id, j.step, j.status, CASE WHEN j.maps IS NULL THEN j.planned ELSE 1 END, j.step_spec, j.task_params, \
             (SELECT COUNT(*) FROM job_deps d JOIN jobs n ON n.id = d.needs_id \
              WHERE d.job_id = j.id AND n.status = $3), \
             (SELECT COUNT(*) FROM job_deps d JOIN jobs n ON n.id = d.needs_id \
              WHERE d.job_id = j.id AND n.status NOT IN ($3, $4)), \
             (SELECT COUNT(*) FROM job_deps r WHERE r.needs_id = j.id), j.shuffle IS NOT NULL \
             FROM jobs j WHERE j.id = $1 AND j.kind = $2",
        )
        .bind(id)
        .bind(Text(JobKind::Step))
        .bind(Text(JobStatus::Running))
        .bind(Text(JobStatus::Succeeded))
        .fetch_optional(pool)
        .await?
        .map(|r| Ok::<_, sqlx::Error>(StepRow {
            id: r.try_get(0)?,
            parent_id: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
            name: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            status: r.try_get::<Text<JobStatus>, _>(3)?.0,
            planned: r.try_get(4)?,
            spec: r.try_get::<Option<JsonText<StepSpec>>, _>(5)?.map(|s| s.0).unwrap_or_default(),
            task_params: r.try_get(6)?,
            needs_running: r.try_get(7)?,
            needs_failed: r.try_get(8)?,
            readers: r.try_get(9)?,
            mapreduce: r.try_get(10)?,
        }))
        .transpose()?);
        Ok(row)
    }

    /// The steps that read this one.
    pub async fn readers(&self, id: i64) -> Result<Vec<i64>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT job_id FROM job_deps WHERE needs_id = $1 ORDER BY job_id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// A page of a step's successful outputs in task order: the first
    /// `limit` after `after_seq`.
    pub async fn step_outputs(
        &self,
        job_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StepOutput>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT seq, output, output_hash FROM tasks WHERE job_id = $1 AND seq > $2 \
             AND state IN ($3, $4) AND replaced_by IS NULL AND seq >= (SELECT CASE WHEN reducers > 0 \
             THEN COALESCE(maps, 0) ELSE 0 END FROM jobs WHERE id = $1) ORDER BY seq LIMIT $5",
        )
        .bind(job_id)
        .bind(after_seq)
        .bind(Text(TaskState::Succeeded))
        .bind(Text(TaskState::Cached))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>(StepOutput {
            seq: r.try_get(0)?,
            inline: r.try_get(1)?,
            hash: r.try_get(2)?,
        }))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Ends an unplanned step as blocked (a step it reads failed); its
    /// tasks-to-be count as cancelled. Returns whether it ended now.
    pub async fn block_step(&self, id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let changed = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET status = $1, updated_at = $2, finished_at = $2 \
             WHERE id = $3 AND status = $4 AND planned = 0 AND maps IS NULL",
        )
        .bind(Text(JobStatus::Blocked))
        .bind(now)
        .bind(id)
        .bind(Text(JobStatus::Running))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(changed == 1)
    }

    /// Gives an unplanned step its tasks and dispatches the first
    /// `dispatch_now`, in one transaction; `None` if it was planned (or
    /// ended) already. Returns the messages to publish and whether the
    /// step ended (it has no task, or every task was cached). With
    /// `output_blob`, its tasks keep their outputs in the blob store.
    pub async fn plan_step(
        &self,
        id: i64,
        items: &[Item],
        dispatch_now: i64,
        output_blob: bool,
    ) -> Result<Option<(Vec<TaskMessage>, bool)>, StoreError> {
        let now = now_ms();
        let planned = on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            match db::dispatch::plan(&mut tx, id, items.len() as i64, now).await? {
                None => {
                    tx.rollback().await?;
                    None
                }
                Some(mut template) => {
                    template.output_blob = output_blob;
                    // Tasks dispatched now are made from `items` at once.
                    let now_items = usize::try_from(dispatch_now).unwrap_or(0).min(items.len());
                    db::jobs::insert_items(&mut tx, id, &items[now_items..], now_items as i64).await?;
                    let dispatched = db::dispatch::materialize_from(
                        &mut tx, id, &template, dispatch_now, now, Some(items),
                    )
                    .await?;
                    let ended = dispatched.ended || (items.is_empty()
                        && db::jobs::finish_if_done(&mut tx, id, now).await?);
                    tx.commit().await?;
                    Some((dispatched.messages, ended))
                }
            }
        });
        Ok(planned)
    }

    /// Ends a running pipeline whose steps have all ended: succeeded if
    /// they all did, else failed. Returns whether it ended now.
    pub async fn end_pipeline_if_done(&self, id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let changed = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET status = CASE WHEN EXISTS (SELECT 1 FROM jobs s WHERE s.parent_id = $1 \
             AND s.status <> $2) THEN $3 ELSE $2 END, updated_at = $4, finished_at = $4 \
             WHERE id = $1 AND status = $5 AND kind = $6 \
             AND NOT EXISTS (SELECT 1 FROM jobs s WHERE s.parent_id = $1 AND s.status = $5)",
        )
        .bind(id)
        .bind(Text(JobStatus::Succeeded))
        .bind(Text(JobStatus::Failed))
        .bind(now)
        .bind(Text(JobStatus::Running))
        .bind(Text(JobKind::Pipeline))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(changed == 1)
    }

    /// Unplanned steps of running pipelines none of whose inputs still
    /// runs (after a restart, or a planning that failed): at most `limit`.
    pub async fn ready_steps(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT j.id FROM jobs j WHERE j.kind = $1 AND j.status = $2 AND j.planned = 0 AND j.maps IS NULL \
             AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs n ON n.id = d.needs_id \
             WHERE d.job_id = j.id AND n.status = $2) ORDER BY j.id LIMIT $3",
        )
        .bind(Text(JobKind::Step))
        .bind(Text(JobStatus::Running))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// Running pipelines none of whose steps still runs: at most `limit`.
    pub async fn done_pipelines(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT j.id FROM jobs j WHERE j.kind = $1 AND j.status = $2 \
             AND NOT EXISTS (SELECT 1 FROM jobs s WHERE s.parent_id = j.id AND s.status = $2) \
             ORDER BY j.id LIMIT $3",
        )
        .bind(Text(JobKind::Pipeline))
        .bind(Text(JobStatus::Running))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// A pipeline's steps, by id (the graph's nodes): at most `limit`.
    pub async fn steps_of(&self, parent_id: i64, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id = $1 ORDER BY id LIMIT $2"
        )))
        .bind(parent_id)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// A pipeline's tasks per state, over its steps.
    pub async fn pipeline_counts(
        &self,
        parent_id: i64,
    ) -> Result<(super::Counts, i64, i64), StoreError> {
        let (sums, live) = on_pool!(self, pool => {
            let sums = sqlx::query(
                "SELECT CAST(COALESCE(SUM(total_tasks - dispatched), 0) AS BIGINT), CAST(COALESCE(SUM(succeeded), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(failed), 0) AS BIGINT), CAST(COALESCE(SUM(cancelled), 0) AS BIGINT), CAST(COALESCE(SUM(cached), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(total_tasks), 0) AS BIGINT) FROM jobs WHERE parent_id = $1",
            )
            .bind(parent_id)
            .fetch_one(pool)
            .await?;
            let sums: [i64; 6] = [
                sums.try_get(0)?, sums.try_get(1)?, sums.try_get(2)?,
                sums.try_get(3)?, sums.try_get(4)?, sums.try_get(5)?,
            ];
            let live = sqlx::query(
                "SELECT t.state, COUNT(*) FROM tasks t JOIN jobs j ON j.id = t.job_id \
                 WHERE j.parent_id = $1 AND t.state IN ('queued', 'running') GROUP BY t.state",
            )
            .bind(parent_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<Text<TaskState>, _>(0)?.0, r.try_get::<i64, _>(1)?)))
            .collect::<Result<Vec<_>, _>>()?;
            (sums, live)
        });
        let mut counts = super::Counts {
            pending: sums[0],
            succeeded: sums[1],
            failed: sums[2],
            cancelled: sums[3],
            ..super::Counts::default()
        };
        for (state, n) in live {
            match state {
                TaskState::Queued => counts.queued = n,
                TaskState::Running => counts.running = n,
                _ => {}
            }
        }
        Ok((counts, sums[4], sums[5]))
    }

    /// The retry backoff (ms) of those of these jobs that have one.
    pub async fn retry_backoffs(
        &self,
        jobs: &[i64],
    ) -> Result<std::collections::BTreeMap<i64, i64>, StoreError> {
        let mut backoffs = std::collections::BTreeMap::new();
        for chunk in jobs.chunks(super::RECORD_CHUNK) {
            let rows = on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, retry_backoff_ms FROM jobs WHERE retry_backoff_ms > 0 AND id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build()
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
                    .collect::<Result<Vec<_>, _>>()?
            });
            backoffs.extend(rows);
        }
        Ok(backoffs)
    }

    /// A pipeline's edges (reader, read), by reader.
    pub async fn edges_of(&self, parent_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT d.job_id, d.needs_id FROM job_deps d JOIN jobs j ON j.id = d.job_id \
             WHERE j.parent_id = $1 ORDER BY d.job_id, d.needs_id",
        )
        .bind(parent_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }
}
