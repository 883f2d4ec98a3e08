//! Submitting a job: resolve what it names, check it, store it with its
//! backlog in one transaction, publish what is dispatched at once.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use sandmill_runtime::labels::Labels;
use sandmill_runtime::message::MAX_PRIORITY;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};

use super::{Owner, SMALL_JOB, Scheduler, SchedulerError, Waiter};

use crate::jobfile::{Backlog, DEFAULT_MAX_ATTEMPTS, Invalid, JobFile, check_params_size};
use crate::model::JobKind;
use crate::store::{Item, NewJob};

/// How a submission is handled.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubmitOptions {
    /// Register a waiter for the job's only task (`/v1/run`).
    pub wait_for_task: bool,
    /// The priority when the job file names none (default 0).
    pub default_priority: u8,
}

/// An accepted job.
pub struct Submitted {
    /// Its id.
    pub job_id: i64,
    /// A waiter for its only task, if asked for.
    pub waiter: Option<Waiter>,
}

/// Where a job's module, kind and defaults come from.
pub(super) struct Resolved {
    pub(super) module_hash: String,
    pub(super) kind: CallKind,
    pub(super) limits: Limits,
    pub(super) grants: Grants,
    pub(super) labels: Labels,
}

impl Scheduler {
    /// Accepts a job file (modules by hash or spec, never by path): checks
    /// it, stores the job and its backlog, dispatches a small job at once.
    /// Returns the job id once it is durable. The job is `owner`'s.
    pub async fn submit(&self, owner: &Owner, job: &JobFile) -> Result<i64, SchedulerError> {
        Ok(self
            .submit_with(owner, job, SubmitOptions::default())
            .await?
            .job_id)
    }

    /// [`submit`](Self::submit), with options.
    #[tracing::instrument(skip_all, fields(job = %job.name))]
    pub async fn submit_with(
        &self,
        owner: &Owner,
        job: &JobFile,
        options: SubmitOptions,
    ) -> Result<Submitted, SchedulerError> {
        if job.is_schedule() || job.overlap.is_some() {
            let field = if job.every.is_some() {
                "every"
            } else if job.overlap.is_some() && !job.is_schedule() {
                "overlap"
            } else {
                "schedule"
            };
            return Err(Invalid::field(
                field,
                "a schedule is created with POST /v1/schedules (`sandmill submit` does it), not submitted as a job",
            )
            .into());
        }
        if let Some(graph) = job.graph(self.inner.config.max_tasks_per_job)? {
            return self.submit_pipeline(owner, job, graph, options).await;
        }
        let new = self.prepare(owner, job, options).await?;
        self.charge_quota(&owner.tenant, new.total).await?;
        // A tenant in its reserved slots has its tasks dispatched into
        // them, by the dispatcher (a call someone waits for goes now).
        // A small job goes out now, within its own cap on tasks at once.
        let dispatch_now = if new.total <= SMALL_JOB
            && (options.wait_for_task || !self.holds_reservation(&owner.tenant))
        {
            new.max_running.map_or(new.total, |cap| new.total.min(cap))
        } else {
            0
        };
        let (job_id, dispatched) = self
            .naming_blobs(|| new.blobs(), async {
                Ok(self.inner.store.create_job(&new, dispatch_now).await?)
            })
            .await?;
        let messages = dispatched.messages;
        self.inner
            .live
            .fetch_add(messages.len() as i64, Ordering::Relaxed);
        let waiter = match (options.wait_for_task, messages.first()) {
            (true, Some(task)) => Some(self.add_waiter(task.task_id)),
            _ => None,
        };
        if waiter.is_some() {
            // Someone waits on it: publish now, not behind the answer.
            self.publish(messages).await;
        } else if !messages.is_empty() {
            // Committed first (the outbox): the job is accepted now, and
            // its tasks go out behind the answer. A lost publish is
            // covered by the reconciler (or recovery, after a crash).
            let scheduler = self.clone();
            tokio::spawn(async move { scheduler.publish(messages).await });
        }
        if new.total > dispatch_now {
            self.inner.dispatch.notify_one();
        }
        if dispatched.ended {
            self.job_finished(job_id);
        }
        Ok(Submitted { job_id, waiter })
    }

    /// Charges `tasks` more to `tenant`, or refuses them (429) when they
    /// would take it past a quota (its own, or the server's default). At
    /// least one task is counted against the quotas: a tenant at its
    /// quota starts nothing, not even a pipeline whose steps are planned
    /// later (and not charged). Checked when a job is accepted, not in its
    /// transaction: two jobs accepted at once may both pass, and a job
    /// refused after this is still charged.
    pub(super) async fn charge_quota(
        &self,
        tenant: &str,
        tasks: i64,
    ) -> Result<(), SchedulerError> {
        let store = &self.inner.store;
        let quota = store.quota(tenant).await?.or(self.inner.config.quota);
        let hour = crate::store::now_ms() / crate::store::HOUR_MS;
        let usage = store.usage(tenant, hour - 23).await?;
        let counted = tasks.max(1);
        let checks = [
            (
                quota.open_tasks,
                usage.open_tasks,
                "open tasks",
                "open_tasks",
            ),
            (
                quota.tasks_per_day,
                usage.tasks_since,
                "tasks submitted in the last 24 hours",
                "tasks_per_day",
            ),
        ];
        for (quota, used, what, name) in checks {
            if let Some(max) = quota
                && used + counted > max
            {
                return Err(SchedulerError::OverQuota(format!(
                    "tenant {tenant} has {used} {what}; {counted} more would pass its quota of {max} ({name})"
                )));
            }
        }
        // Time is charged as attempts end: a tenant past its quota starts
        // nothing new (and its running jobs' backlogs wait, see
        // `refresh_budgets`).
        if let Some(max) = quota.cpu_seconds_per_day {
            let used = usage.busy_ms_since / 1000;
            if used >= max {
                return Err(SchedulerError::OverQuota(format!(
                    "tenant {tenant} has used {used} CPU seconds in the last 24 hours, its quota is {max} (cpu_seconds_per_day)"
                )));
            }
        }
        // Outputs, logs and uploaded inputs too are counted once kept:
        // past the quota, the tenant deletes jobs (or waits for retention)
        // to start more.
        if let Some(max) = quota.storage_bytes
            && usage.stored_bytes >= max
        {
            return Err(SchedulerError::OverQuota(format!(
                "tenant {tenant} keeps {} of outputs, logs and inputs, its quota is {} (storage); delete jobs to make room",
                bytesize::ByteSize(u64::try_from(usage.stored_bytes).unwrap_or(0)),
                bytesize::ByteSize(u64::try_from(max).unwrap_or(0)),
            )));
        }
        if tasks > 0 {
            store.charge(tenant, hour, tasks).await?;
        }
        // Once an hour, counts older than a day go.
        if self.inner.pruned_hour.swap(hour, Ordering::Relaxed) != hour {
            store.prune_hours(hour - 24).await?;
        }
        Ok(())
    }

    /// Checks a job file and turns it into a job to store.
    pub(super) async fn prepare(
        &self,
        owner: &Owner,
        job: &JobFile,
        options: SubmitOptions,
    ) -> Result<NewJob, SchedulerError> {
        let job = &job.with_uploaded_splits();
        job.check()?;
        let template = job.template()?;
        let resolved = self.resolve(owner, job).await?;
        let max_params = self.inner.config.max_params_bytes;
        let backlog = job.backlog(self.inner.config.max_tasks_per_job)?;
        let input_ref = |field: &str, input: &str| -> Result<String, Invalid> {
            input.strip_prefix("sha256:").map(str::to_owned).ok_or_else(|| {
                Invalid::field(
                    field,
                    format!("`{input}` is a path; upload it first (the CLI does) and name it sha256:<hash>"),
                )
            })
        };
        let task_input = template
            .input
            .map(|i| input_ref(template.section_field("input").as_str(), i))
            .transpose()?;
        let task_params = job.task_params(max_params)?;
        let (total, items) = match backlog {
            Backlog::Count(n) => (n, Vec::new()),
            Backlog::Rows(rows) => {
                let items = rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let params = serde_json::to_string(row).map_err(|e| {
                            Invalid::field(format!("sweep.rows[{i}]"), e.to_string())
                        })?;
                        check_params_size(&format!("sweep.rows[{i}]"), &params, max_params)?;
                        Ok(Item {
                            params,
                            input_hash: task_input.clone(),
                            input_name: "-".to_owned(),
                            inputs: Vec::new(),
                            seed: None,
                        })
                    })
                    .collect::<Result<Vec<_>, Invalid>>()?;
                (items.len() as u64, items)
            }
            Backlog::Inputs(inputs) => {
                let items = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, named)| {
                        Ok(Item {
                            params: task_params.clone(),
                            input_hash: Some(input_ref(
                                &format!(
                                    "{}[{i}].input",
                                    if job.mapreduce.is_some() {
                                        "mapreduce.splits"
                                    } else {
                                        "sweep.inputs"
                                    }
                                ),
                                &named.input,
                            )?),
                            input_name: named.name.clone(),
                            inputs: Vec::new(),
                            seed: None,
                        })
                    })
                    .collect::<Result<Vec<_>, Invalid>>()?;
                (items.len() as u64, items)
            }
        };
        self.check_inputs(
            owner,
            task_input
                .iter()
                .chain(items.iter().filter_map(|i| i.input_hash.as_ref())),
        )
        .await?;
        let priority = match job.priority {
            Some(p) if p > MAX_PRIORITY => {
                return Err(Invalid::field(
                    "priority",
                    format!("{p} is not between 0 and {MAX_PRIORITY}"),
                )
                .into());
            }
            Some(p) => p,
            None => options.default_priority,
        };
        let max_attempts = job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        self.inner.config.ceilings.check_attempts(max_attempts)?;
        let mapreduce = self.shuffle(job, &resolved.module_hash).await?;
        Ok(NewJob {
            tenant: owner.tenant.clone(),
            name: job.name.clone(),
            kind: if job.mapreduce.is_some() {
                JobKind::MapReduce
            } else if job.sweep.is_some() {
                JobKind::Sweep
            } else {
                JobKind::Task
            },
            priority,
            task_kind: resolved.kind,
            module_hash: resolved.module_hash,
            limits: resolved.limits,
            grants: resolved.grants,
            labels: resolved.labels,
            definition: job.definition(),
            task_params,
            task_input: if items.is_empty() { task_input } else { None },
            task_input_name: job.task_input_name(),
            total: i64::try_from(total).unwrap_or(i64::MAX),
            items,
            max_attempts: i64::from(max_attempts),
            queue_timeout_ms: i64::try_from(job.queue_timeout()?.as_millis()).unwrap_or(i64::MAX),
            mapreduce,
            cache: job.cache.unwrap_or(true),
            resubmit_of: None,
            max_running: job.max_running.map(i64::from),
        })
    }

    /// A map-reduce job's shape, its module checked to export reduce when
    /// it has reducers; `None` for other jobs.
    pub(super) async fn shuffle(
        &self,
        job: &JobFile,
        module_hash: &str,
    ) -> Result<Option<(u32, crate::jobfile::ShuffleSettings)>, SchedulerError> {
        let mapreduce = job.shuffle()?;
        if let Some((reducers, _)) = &mapreduce
            && *reducers > 0
            && !self
                .module(module_hash)
                .await?
                .is_some_and(|m| m.exports.has(CallKind::Reduce))
        {
            return Err(Invalid::field(
                "mapreduce.module",
                format!(
                    "module sha256:{module_hash} exports no reduce function; say reducers = 0 for a map-only job"
                ),
            )
            .into());
        }
        Ok(mapreduce)
    }

    /// The module a job names (`sha256:` or a spec), its kind, and the
    /// limits, grants and labels in force (the job's own over the spec's).
    pub(super) async fn resolve(
        &self,
        owner: &Owner,
        job: &JobFile,
    ) -> Result<Resolved, SchedulerError> {
        let template = job.template()?;
        let module_field = template.section_field("module");
        let mut kind = template
            .kind
            .map(|k| crate::jobfile::parse_kind(&template.section_field("kind"), k))
            .transpose()?;
        let mut limits = job.limits()?;
        let mut grants = job.grants()?;
        let mut labels = job.labels()?;
        let module_hash = if let Some(hash) = template.module.strip_prefix("sha256:") {
            if !self.may_name(owner, hash).await? {
                return Err(SchedulerError::NotFound(format!("module sha256:{hash}")));
            }
            hash.to_owned()
        } else if template.module.ends_with(".wasm") || template.module.contains('/') {
            return Err(Invalid::field(
                &module_field,
                format!(
                    "`{}` is a path; upload it first (the CLI does) and name it sha256:<hash>",
                    template.module
                ),
            )
            .into());
        } else {
            let (name, version) = match template.module.split_once('@') {
                Some((name, version)) => (name, Some(version)),
                None => (template.module, None),
            };
            let spec = self
                .inner
                .store
                .spec(&owner.tenant, name, version)
                .await?
                .ok_or_else(|| SchedulerError::NotFound(format!("spec {}", template.module)))?;
            kind = kind.or(Some(spec.kind.0));
            // The job's own sections override the spec's defaults.
            if job.limits == Default::default() {
                limits = spec.limits.0;
            }
            if job.grants == Default::default() {
                grants = spec.grants.0;
            }
            if job.labels.is_empty() {
                labels = spec.labels.0;
            }
            spec.module_hash
        };
        let module = self
            .module(&module_hash)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("module sha256:{module_hash}")))?;
        self.police(&mut grants)?;
        self.inner.config.ceilings.hold(&mut limits)?;
        let kind = kind.unwrap_or(CallKind::Task);
        if !module.exports.has(kind) {
            return Err(Invalid::field(
                template.section_field("kind"),
                format!(
                    "module sha256:{module_hash} exports no {} function (it has: {})",
                    kind.name(),
                    module.exports.list()
                ),
            )
            .into());
        }
        Ok(Resolved {
            module_hash,
            kind,
            limits,
            grants,
            labels,
        })
    }

    /// Holds grants to the server's policy: `network` only when the
    /// policy lists where to, and then to those places alone.
    pub fn police(&self, grants: &mut Grants) -> Result<(), SchedulerError> {
        if grants.network {
            let allowed = &self.inner.config.network;
            if allowed.is_empty() {
                return Err(SchedulerError::Forbidden(
                    "grant `network` is not allowed: this server's policy lists no hosts (serve --allow-network)".to_owned(),
                ));
            }
            grants.hosts = allowed.clone();
        } else {
            grants.hosts.clear();
        }
        Ok(())
    }

    /// Every input named must be in the blob store and one `owner` may
    /// name (each checked once).
    pub(super) async fn check_inputs<'a>(
        &self,
        owner: &Owner,
        hashes: impl Iterator<Item = &'a String>,
    ) -> Result<(), SchedulerError> {
        let mut checked = BTreeSet::new();
        for hash in hashes {
            if checked.insert(hash.as_str())
                && !(self.may_name(owner, hash).await? && self.inner.blobs.contains(hash).await?)
            {
                return Err(SchedulerError::NotFound(format!("input sha256:{hash}")));
            }
        }
        Ok(())
    }
}
