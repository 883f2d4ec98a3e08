//! Where features meet, through `sandmill dev` on SQLite and on a real
//! Postgres: a cached sweep larger than the dispatch window ends; a cancel
//! interrupts running guests and frees their slots. The same scenarios run
//! on the fleet in `tests/fleet.rs`.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::seams;

/// A small window, so three windows of tasks stay quick.
const WINDOW: u64 = 64;

/// `sandmill dev` with two workers, a window of [`WINDOW`], on `database`
/// (its own SQLite file when `None`), ready.
async fn dev(database: Option<&str>) -> support::Dev {
    let window = WINDOW.to_string();
    let mut args = vec!["--window", &window];
    if let Some(database) = database {
        args.extend(["--database", database]);
    }
    let dev = support::dev(&args);
    support::wait_ready(&sandmill_server::tls::default_client(), &dev.base).await;
    dev
}

#[test]
fn a_cached_sweep_past_the_window_ends_on_sqlite() {
    support::run_test(Duration::from_secs(300), async {
        let dev = dev(None).await;
        seams::cached_sweep_past_the_window(&dev.base, WINDOW, "dev, SQLite").await;
    });
}

#[test]
fn a_cached_sweep_past_the_window_ends_on_postgres() {
    support::run_test(Duration::from_secs(300), async {
        let pg = support::Postgres::start();
        let dev = dev(Some(&pg.database())).await;
        seams::cached_sweep_past_the_window(&dev.base, WINDOW, "dev, Postgres").await;
    });
}

#[test]
fn cancel_interrupts_running_guests_on_sqlite() {
    support::run_test(Duration::from_secs(300), async {
        let dev = dev(None).await;
        let metrics = format!("{}/metrics", dev.base);
        seams::cancel_frees_the_slots(&dev.base, 2, Some(&metrics), "dev, SQLite").await;
    });
}

#[test]
fn cancel_interrupts_running_guests_on_postgres() {
    support::run_test(Duration::from_secs(300), async {
        let pg = support::Postgres::start();
        let dev = dev(Some(&pg.database())).await;
        let metrics = format!("{}/metrics", dev.base);
        seams::cancel_frees_the_slots(&dev.base, 2, Some(&metrics), "dev, Postgres").await;
    });
}

/// `sandmill dev` keeps the fleet's rule: unlabelled workers do not take
/// a job needing `gpu=a100` (it waits, says why, and times out);
/// `dev --labels gpu=a100` runs it.
#[test]
fn labelled_jobs_wait_for_dev_workers_offering_their_labels() {
    support::run_test(Duration::from_secs(300), async {
        let plain = dev(None).await;
        seams::labels_decide_where_tasks_run(&plain.base, false, "dev").await;
        let gpu = support::dev(&["--labels", "gpu=a100"]);
        support::wait_ready(&sandmill_server::tls::default_client(), &gpu.base).await;
        seams::labels_decide_where_tasks_run(&gpu.base, true, "dev --labels gpu=a100").await;
    });
}

/// `max_running = 1` on dev's two slots: one task at a time.
#[test]
fn max_running_caps_a_job_on_dev() {
    support::run_test(Duration::from_secs(300), async {
        let dev = dev(None).await;
        seams::max_running_caps_a_job(&dev.base, 1, "dev, 2 slots").await;
    });
}
