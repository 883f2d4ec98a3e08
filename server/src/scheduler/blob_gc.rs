//! Collecting blobs no row names. Blobs are content-addressed and shared,
//! so deleting a job leaves them; a collection deletes the stored blobs
//! that nothing names and that were last stored longer ago than the grace
//! period (`--blob-grace`): a mark of every name the database holds
//! (kept in the database, so the server holds a page at a time), then a
//! sweep through the store's listing.
//!
//! What is marked: modules (so specs and uploads), jobs' modules, inputs,
//! preprocessors and job files, items' and tasks' inputs and input slices,
//! tasks' outputs and long parameters (they travel as a blob of
//! themselves), attempts' logs, schedules' and subscriptions' files, and
//! the run lists map-reduce jobs keep inside their map outputs and reduce
//! inputs.
//!
//! What keeps a blob on its way to the row that will name it:
//! - a job created during a collection marks what it names (creations
//!   hold [`Inner::marking`](super::Inner) shared, so none straddles the
//!   start of a mark);
//! - everything else is stored just before it is named (an upload, a
//!   worker's output or log, a pipeline's buffer, a reduce's run list),
//!   and a put of stored bytes renews them, so the grace covers it.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use sandmill_runtime::blob::hash;
use sandmill_runtime::message::INLINE_PARAMS_BYTES;

use super::{Scheduler, SchedulerError};
use crate::store::{BlobText, TextCursor, blob_names};

/// How long an unnamed blob is kept by default.
pub const DEFAULT_BLOB_GRACE: Duration = Duration::from_secs(6 * 3600);

/// Rows read per page while marking.
const MARK_PAGE: i64 = 500;

/// Blobs looked up (and deleted) per batch while sweeping.
const SWEEP_BATCH: usize = 500;

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs listed.
    pub listed: u64,
    /// Blobs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Scheduler {
    /// Runs `create` (which makes rows naming `names`) so that a blob
    /// collection in progress counts them.
    pub(crate) async fn naming_blobs<T>(
        &self,
        names: impl FnOnce() -> Vec<String>,
        create: impl Future<Output = Result<T, SchedulerError>>,
    ) -> Result<T, SchedulerError> {
        let marking = self.inner.marking.read().await;
        if *marking {
            self.inner.store.mark_blobs(&names()).await?;
        }
        let created = create.await;
        drop(marking);
        created
    }

    /// Collects blobs every half grace period (between 1 s and an hour),
    /// until stopped.
    pub async fn run_blob_collection(self) {
        let Some(grace) = self.inner.config.blob_grace else {
            return;
        };
        let every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            match self.collect_blobs(grace).await {
                Ok(done) if done.deleted > 0 => tracing::info!(
                    listed = done.listed,
                    deleted = done.deleted,
                    bytes = done.bytes,
                    "unnamed blobs deleted"
                ),
                Ok(_) => {}
                Err(error) if *stopping.borrow() => {
                    tracing::debug!(%error, "blob collection stopped");
                    return;
                }
                Err(error) => tracing::warn!(%error, "blob collection failed; trying again later"),
            }
        }
    }

    /// One collection: deletes the blobs no row names that were last
    /// stored more than `grace` ago.
    pub async fn collect_blobs(&self, grace: Duration) -> Result<Collected, SchedulerError> {
        let began = SystemTime::now();
        {
            let mut marking = self.inner.marking.write().await;
            self.inner.store.clear_blob_marks().await?;
            *marking = true;
        }
        let marked = self.mark_blobs().await;
        let swept = match marked {
            Ok(()) => self.sweep_blobs(began - grace).await,
            Err(error) => Err(error),
        };
        *self.inner.marking.write().await = false;
        swept
    }

    /// Marks every blob a row names.
    async fn mark_blobs(&self) -> Result<(), SchedulerError> {
        let store = &self.inner.store;
        store.mark_blob_columns().await?;
        for source in BlobText::ALL {
            let mut cursor = TextCursor::default();
            loop {
                let rows = store
                    .blob_texts(source, &cursor, INLINE_PARAMS_BYTES, MARK_PAGE)
                    .await?;
                let mut names = Vec::new();
                for row in &rows {
                    for text in &row.texts {
                        names.extend(blob_names(text.as_bytes()));
                    }
                    if let Some(params) = row
                        .params
                        .as_ref()
                        .filter(|p| p.len() > INLINE_PARAMS_BYTES)
                    {
                        names.push(hash(params.as_bytes()));
                    }
                }
                store.mark_blobs(&names).await?;
                match rows.last() {
                    Some(last) if rows.len() as i64 == MARK_PAGE => cursor = last.cursor.clone(),
                    _ => break,
                }
            }
        }
        self.mark_run_lists().await
    }

    /// Marks the runs map-reduce jobs name inside their maps' outputs and
    /// their reduces' inputs.
    async fn mark_run_lists(&self) -> Result<(), SchedulerError> {
        let store = &self.inner.store;
        let mut after = 0;
        loop {
            let jobs = store.mapreduce_jobs(after, MARK_PAGE).await?;
            for &(job_id, maps) in &jobs {
                let mut seq = -1;
                loop {
                    let outputs = store.map_outputs(job_id, maps, seq, MARK_PAGE).await?;
                    let mut names = Vec::new();
                    for (_, inline, blob) in &outputs {
                        match (inline, blob) {
                            (Some(bytes), _) => names.extend(blob_names(bytes)),
                            (None, Some(blob)) => names.extend(self.names_in(blob).await?),
                            (None, None) => {}
                        }
                    }
                    store.mark_blobs(&names).await?;
                    match outputs.last() {
                        Some(last) if outputs.len() as i64 == MARK_PAGE => seq = last.0,
                        _ => break,
                    }
                }
                for input in store.reduce_inputs(job_id, maps).await? {
                    let names = self.names_in(&input).await?;
                    store.mark_blobs(&names).await?;
                }
            }
            match jobs.last() {
                Some(last) if jobs.len() as i64 == MARK_PAGE => after = last.0,
                _ => return Ok(()),
            }
        }
    }

    /// The blobs a stored blob names (none if it is gone).
    async fn names_in(&self, blob: &str) -> Result<Vec<String>, SchedulerError> {
        Ok(match self.inner.blobs.get(blob).await? {
            Some(bytes) => blob_names(&bytes).collect(),
            None => Vec::new(),
        })
    }

    /// Deletes the listed blobs stored before `cutoff` and not marked.
    async fn sweep_blobs(&self, cutoff: SystemTime) -> Result<Collected, SchedulerError> {
        let mut done = Collected::default();
        let mut listing = self.inner.blobs.list().await?;
        let mut batch = Vec::with_capacity(SWEEP_BATCH);
        let stopping = self.inner.stopping.subscribe();
        let mut ended = false;
        while !ended {
            match listing.next().await.transpose()? {
                Some(entry) => {
                    done.listed += 1;
                    if entry.stored_at < cutoff {
                        batch.push(entry);
                    }
                    if batch.len() < SWEEP_BATCH {
                        continue;
                    }
                }
                None => ended = true,
            }
            if *stopping.borrow() {
                break;
            }
            let hashes: Vec<String> = batch.iter().map(|e| e.hash.clone()).collect();
            let marked = self.inner.store.marked_blobs(&hashes).await?;
            let mut deleted = Vec::new();
            for entry in batch.drain(..) {
                if !marked.contains(&entry.hash)
                    && self.inner.blobs.delete(&entry.hash, cutoff).await?
                {
                    tracing::debug!(blob = %entry.hash, size = entry.size, "unnamed blob deleted");
                    done.deleted += 1;
                    done.bytes += entry.size;
                    deleted.push(entry.hash);
                }
            }
            self.inner.store.forget_uploads(&deleted).await?;
        }
        Ok(done)
    }
}
