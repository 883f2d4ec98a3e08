//! `sandmill quota set|list|remove`: tenants' quotas, written straight to
//! the database (an operator's command, like `sandmill token`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use sandmill_server::fleet::connect_store;
use sandmill_server::store::Quota;

use super::out::{say, tell};
use super::token::{DatabaseArg, check_tenant};

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[command(flatten)]
    database: DatabaseArg,
    #[command(subcommand)]
    action: QuotaAction,
}

#[derive(Subcommand, Debug)]
enum QuotaAction {
    /// Set a tenant's quotas (what is not given is the server's default,
    /// `--quota-open-tasks`, `--quota-tasks-per-day`,
    /// `--quota-cpu-seconds-per-day` and `--quota-storage` of
    /// `serve`/`dev`).
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Tasks not ended, of its running jobs, at once.
        #[arg(long)]
        open_tasks: Option<u64>,
        /// Tasks of the jobs it submits in any 24 hours.
        #[arg(long)]
        tasks_per_day: Option<u64>,
        /// Seconds its task attempts may run in any 24 hours (wall time
        /// in a worker slot).
        #[arg(long)]
        cpu_seconds_per_day: Option<u64>,
        /// Bytes of outputs and logs its kept jobs may hold (`10GiB`).
        #[arg(long)]
        storage: Option<bytesize::ByteSize>,
    },
    /// List the tenants with quotas of their own.
    List,
    /// Remove a tenant's quotas: the server's defaults hold again.
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// A count as stored.
fn count(value: Option<u64>, flag: &str) -> anyhow::Result<Option<i64>> {
    value
        .map(|n| i64::try_from(n).with_context(|| format!("{flag} {n}: too large")))
        .transpose()
}

pub fn run(args: QuotaArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = connect_store(args.database.url()?).await?;
        let shown = |n: Option<i64>| n.map_or_else(|| "default".to_owned(), |n| n.to_string());
        let bytes = |n: Option<i64>| {
            n.map_or_else(
                || "default".to_owned(),
                |n| bytesize::ByteSize(u64::try_from(n).unwrap_or(0)).to_string(),
            )
        };
        match args.action {
            QuotaAction::Set {
                tenant,
                open_tasks,
                tasks_per_day,
                cpu_seconds_per_day,
                storage,
            } => {
                check_tenant(&tenant)?;
                let quota = Quota {
                    open_tasks: count(open_tasks, "--open-tasks")?,
                    tasks_per_day: count(tasks_per_day, "--tasks-per-day")?,
                    cpu_seconds_per_day: count(cpu_seconds_per_day, "--cpu-seconds-per-day")?,
                    storage_bytes: count(storage.map(|s| s.0), "--storage")?,
                };
                store.put_quota(&tenant, quota).await?;
                tell!(
                    "tenant `{tenant}`: open tasks {}, tasks per day {}, CPU seconds per day {}, storage {}",
                    shown(quota.open_tasks),
                    shown(quota.tasks_per_day),
                    shown(quota.cpu_seconds_per_day),
                    bytes(quota.storage_bytes)
                );
            }
            QuotaAction::List => {
                say!(
                    "{:<24}  {:>14}  {:>14}  {:>14}  {:>12}",
                    "tenant",
                    "open tasks",
                    "tasks per day",
                    "CPU s per day",
                    "storage"
                );
                let mut after = String::new();
                loop {
                    let page = store.quotas(&after, 500).await?;
                    let Some(last) = page.last() else { break };
                    after = last.tenant.clone();
                    for row in page {
                        say!(
                            "{:<24}  {:>14}  {:>14}  {:>14}  {:>12}",
                            row.tenant,
                            shown(row.quota.open_tasks),
                            shown(row.quota.tasks_per_day),
                            shown(row.quota.cpu_seconds_per_day),
                            bytes(row.quota.storage_bytes)
                        );
                    }
                }
            }
            QuotaAction::Remove { tenant } => {
                anyhow::ensure!(
                    store.delete_quota(&tenant).await?,
                    "tenant `{tenant}` has no quotas of its own"
                );
                tell!("tenant `{tenant}`: the server's default quotas hold");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
