//! The dispatcher: keeps the window full. It wakes when a job arrives or
//! results free room, takes tasks from the backlogs of running jobs
//! (equal shares between tenants; within one, highest priority first and
//! equal shares within a priority), creates them
//! as queued rows and publishes them. Nothing it holds grows with a job's
//! size: a backlog is a cursor in the database.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sandmill_runtime::blob::BlobError;
use sandmill_runtime::message::{BlobRef, INLINE_PARAMS_BYTES, TaskMessage};

use super::Scheduler;
use super::ahead::{self, Ahead};
use crate::store::dispatch::Backlog;

/// Jobs looked at per round.
const JOBS_PER_ROUND: i64 = 64;

/// Tasks created per transaction at most: on SQLite a transaction holds
/// the one write lock, and an interactive call's record waits for it.
const DISPATCH_CHUNK: i64 = 256;

/// How long the dispatcher waits before trying again after the database
/// failed.
const RETRY: Duration = Duration::from_secs(1);

/// The sooner of two optional waits.
fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `room` shared out in equal shares, again and again, among appetites
/// (in order: the remainder goes to the first), until the room or every
/// appetite runs out. What one cannot use goes to the others.
fn share(mut room: i64, appetites: &[i64]) -> Vec<i64> {
    let mut left = appetites.to_vec();
    let mut given = vec![0i64; left.len()];
    loop {
        let hungry: Vec<usize> = (0..left.len()).filter(|&i| left[i] > 0).collect();
        if hungry.is_empty() || room <= 0 {
            return given;
        }
        let each = (room / hungry.len() as i64).max(1);
        for i in hungry {
            let take = each.min(left[i]).min(room);
            left[i] -= take;
            given[i] += take;
            room -= take;
            if room == 0 {
                return given;
            }
        }
    }
}

/// How `room` task slots are shared among jobs with a backlog: in equal
/// shares between tenants (fair share: one tenant's many or big jobs do
/// not hold up another's), and within a tenant the highest priority
/// first, equal shares within a priority (the remainder to the oldest),
/// what a job cannot use to the next. `jobs` come as
/// [`Store::backlog`](crate::store::Store::backlog) orders them.
pub(crate) fn plan(room: i64, jobs: &[Backlog]) -> Vec<(i64, i64)> {
    let mut tenants: Vec<(&str, Vec<&Backlog>)> = Vec::new();
    for job in jobs {
        match tenants.iter_mut().find(|(t, _)| *t == job.tenant) {
            Some((_, theirs)) => theirs.push(job),
            None => tenants.push((&job.tenant, vec![job])),
        }
    }
    let appetites: Vec<i64> = tenants
        .iter()
        .map(|(_, theirs)| theirs.iter().map(|j| j.remaining).sum())
        .collect();
    let mut plan = Vec::new();
    for ((_, mut theirs), room) in tenants.into_iter().zip(share(room, &appetites)) {
        theirs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.job_id));
        plan_within(room, &theirs, &mut plan);
    }
    plan
}

/// One tenant's `room`, by priority, then in equal shares.
fn plan_within(mut room: i64, jobs: &[&Backlog], plan: &mut Vec<(i64, i64)>) {
    for group in jobs.chunk_by(|a, b| a.priority == b.priority) {
        if room <= 0 {
            return;
        }
        let appetites: Vec<i64> = group.iter().map(|j| j.remaining).collect();
        for (job, n) in group.iter().zip(share(room, &appetites)) {
            if n > 0 {
                plan.push((job.job_id, n));
                room -= n;
            }
        }
    }
}

impl Scheduler {
    /// Runs the dispatcher until the server stops.
    pub async fn dispatch(self) {
        let mut stopping = self.inner.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                return;
            }
            let woken = self.inner.dispatch.notified();
            // While a reservation holds (or until the next starts), look
            // again on time even if nothing wakes the dispatcher.
            let again = match self.refresh_holds().await {
                Ok(again) => again,
                // The database closes as the server stops: not news.
                Err(_) if *stopping.borrow() => return,
                Err(error) => {
                    tracing::warn!(%error, "reading reservations and quotas failed");
                    Some(RETRY)
                }
            };
            match self.dispatch_round().await {
                // More room and more work: go again at once.
                Ok(true) => continue,
                Ok(false) => {
                    // Work held back from a full queue: look again once
                    // workers may have taken some.
                    let held = self.lock_ahead().held;
                    let again = min_some(again, held.then_some(ahead::HELD_RECHECK));
                    let timer = async {
                        match again {
                            Some(after) => tokio::time::sleep(after).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = woken => {}
                        () = timer => {}
                        _ = stopping.changed() => {}
                    }
                }
                Err(_) if *stopping.borrow() => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?RETRY, "dispatching failed");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        _ = stopping.changed() => {}
                    }
                }
            }
        }
    }

    /// Reads again what holds tasks back or puts them first: tenants'
    /// reservations and their quotas of time. Returns how long until they
    /// should be read again (`None`: only when something changes).
    async fn refresh_holds(&self) -> Result<Option<Duration>, super::SchedulerError> {
        let reservations = self.refresh_reservations().await?;
        let budgets = self.refresh_budgets().await?;
        Ok(min_some(reservations, budgets))
    }

    /// One round: tenants' reserved lanes first, whatever the window's
    /// fill, then the window from the backlogs. Returns whether another
    /// round could dispatch more now.
    pub async fn dispatch_round(&self) -> Result<bool, super::SchedulerError> {
        let window = self.inner.config.window as i64;
        let room = window - self.inner.live.load(Ordering::Relaxed);
        // Refill in chunks of an eighth of the window, not a task at a
        // time.
        let fill = room > 0 && room >= window / 8;
        let reserved = self.reserved_room();
        if !fill && reserved.is_empty() {
            return Ok(false);
        }
        let mut jobs = self.inner.store.backlog(JOBS_PER_ROUND).await?;
        let more_jobs = jobs.len() as i64 == JOBS_PER_ROUND;
        // Tenants past their quota of time start nothing.
        jobs.retain(|j| !self.spent(&j.tenant));
        let mut dispatched = 0;
        // Tasks that ended as they were dispatched (cache hits) took no
        // room: nothing will wake the dispatcher for the room they left,
        // so it goes again at once.
        let mut ended_unrun = 0;
        for (tenant, room) in reserved {
            let mut theirs: Vec<&Backlog> = jobs.iter().filter(|j| j.tenant == tenant).collect();
            theirs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.job_id));
            let mut planned = Vec::new();
            plan_within(room, &theirs, &mut planned);
            for (job_id, n) in planned {
                let (created, queued) = self.dispatch_job(job_id, n).await?;
                dispatched += created;
                ended_unrun += created - queued;
                if let Some(job) = jobs.iter_mut().find(|j| j.job_id == job_id) {
                    job.remaining -= created;
                }
            }
        }
        if !fill {
            return Ok(false);
        }
        jobs.retain(|j| j.remaining > 0);
        // A tenant in its reserved slots waits for them, not in the queue
        // behind everyone's; unless no one else has work.
        let live = self.inner.live.load(Ordering::Relaxed);
        let others_idle = live <= self.in_reserved_lane()
            && jobs.iter().all(|j| self.holds_reservation(&j.tenant));
        if !others_idle {
            jobs.retain(|j| !self.holds_reservation(&j.tenant));
        }
        let room = window - live;
        for (job_id, n, queue) in self.plan_ahead(room, &jobs).await {
            let (created, queued) = self.dispatch_job(job_id, n).await?;
            dispatched += created;
            ended_unrun += created - queued;
            if let Some((token, priority)) = queue {
                self.lock_ahead().published(&token, priority, queued);
            }
        }
        Ok(dispatched > 0 && (more_jobs || ended_unrun > 0))
    }

    fn lock_ahead(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.inner.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`plan`] of `room`, queue by queue where the broker's queues are
    /// first in, first out: each queue's jobs share what room it has
    /// ahead (see [`ahead`](super::ahead)), each job tagged with its
    /// queue. Notes whether work was held back, for the dispatcher to
    /// look again soon.
    async fn plan_ahead(
        &self,
        room: i64,
        jobs: &[Backlog],
    ) -> Vec<(i64, i64, Option<(String, u8)>)> {
        let now = std::time::Instant::now();
        let read = {
            let ahead = self.lock_ahead();
            !ahead.off && ahead.stale(now)
        };
        if read {
            match self.inner.broker.queue_depths().await {
                Ok(Some(depths)) => self.lock_ahead().update(depths, now),
                Ok(None) => self.lock_ahead().off = true,
                // Read again next round; meanwhile the last reading (and
                // what was published since) holds.
                Err(error) => tracing::debug!(%error, "reading the task queues' depths failed"),
            }
        }
        let mut ahead = self.lock_ahead();
        if ahead.off {
            return plan(room, jobs)
                .into_iter()
                .map(|(j, n)| (j, n, None))
                .collect();
        }
        let mut queues: Vec<((&str, u8), Vec<Backlog>)> = Vec::new();
        for job in jobs {
            let key = (
                job.queue.as_str(),
                u8::try_from(job.priority.clamp(0, 9)).unwrap_or(0),
            );
            match queues.iter_mut().find(|(k, _)| *k == key) {
                Some((_, theirs)) => theirs.push(job.clone()),
                None => queues.push((key, vec![job.clone()])),
            }
        }
        let mut left = room;
        let mut planned = Vec::new();
        ahead.held = false;
        for ((token, priority), theirs) in queues {
            let fits = ahead.room(token, priority).min(left);
            if fits < theirs.iter().map(|j| j.remaining).sum::<i64>() {
                ahead.held = true;
            }
            for (job_id, n) in plan(fits, &theirs) {
                left -= n;
                planned.push((job_id, n, Some((token.to_owned(), priority))));
            }
        }
        planned
    }

    /// Creates and publishes up to `n` of a job's next tasks; how many it
    /// created, and how many of those it queued (the rest were cached).
    async fn dispatch_job(&self, job_id: i64, n: i64) -> Result<(i64, i64), super::SchedulerError> {
        let mut left = n;
        let mut queued_all = 0;
        while left > 0 {
            let round = self
                .inner
                .store
                .dispatch(job_id, left.min(DISPATCH_CHUNK))
                .await?;
            let queued = round.messages.len() as i64;
            // Cached tasks take no room, but count toward the round.
            let created = queued + round.cached;
            left -= created;
            queued_all += queued;
            self.inner.live.fetch_add(queued, Ordering::Relaxed);
            self.publish(round.messages).await;
            if round.ended {
                self.job_finished(job_id);
            }
            if created == 0 {
                break;
            }
        }
        Ok((n - left.max(0), queued_all))
    }

    /// Publishes task messages, parameters too large to travel inline
    /// going through the blob store. A failure is logged: the tasks are
    /// queued in the database, and the reconciler (or recovery) publishes
    /// them again.
    pub(crate) async fn publish(&self, mut messages: Vec<TaskMessage>) {
        if messages.is_empty() {
            return;
        }
        if let Err(error) = self.externalize(&mut messages).await {
            tracing::warn!(%error, "storing parameters failed; the tasks stay queued for the reconciler");
            return;
        }
        self.mark_reserved(&mut messages);
        self.stamp(&mut messages);
        if tracing::enabled!(tracing::Level::DEBUG) {
            for m in &messages {
                let trace = m.trace();
                tracing::debug!(job_id = m.job_id, task_id = m.task_id, attempt = m.attempt,
                    trace_id = %trace.trace_id, span_id = %trace.span_id, "attempt queued");
            }
        }
        let n = messages.len();
        if let Err(error) = self.inner.broker.publish(messages).await {
            tracing::warn!(tasks = n, %error, "publishing failed; the tasks stay queued for the reconciler");
        }
    }
}

impl Scheduler {
    /// Moves parameters too large to travel inline into the blob store.
    pub(crate) async fn externalize(&self, messages: &mut [TaskMessage]) -> Result<(), BlobError> {
        for message in messages {
            if message.params.len() > INLINE_PARAMS_BYTES {
                let hash = self.inner.blobs.put(message.params.as_bytes()).await?;
                message.params_blob = Some(BlobRef {
                    hash,
                    size: message.params.len() as u64,
                });
                message.params.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(job_id: i64, priority: i64, remaining: i64) -> Backlog {
        of("a", job_id, priority, remaining)
    }

    fn of(tenant: &str, job_id: i64, priority: i64, remaining: i64) -> Backlog {
        Backlog {
            job_id,
            tenant: tenant.to_owned(),
            priority,
            remaining,
            queue: "any".to_owned(),
        }
    }

    #[test]
    fn room_goes_to_the_highest_priority_then_in_equal_shares() {
        // Priority 5 takes what it can; the rest is shared by priority 0.
        let jobs = [job(3, 5, 10), job(1, 0, 1_000), job(2, 0, 1_000)];
        assert_eq!(plan(100, &jobs), vec![(3, 10), (1, 45), (2, 45)]);
        // A job that needs less than its share leaves the rest to others.
        let jobs = [job(1, 0, 5), job(2, 0, 1_000)];
        assert_eq!(plan(100, &jobs), vec![(1, 5), (2, 95)]);
        // Odd room: everything is handed out.
        let jobs = [job(1, 0, 1_000), job(2, 0, 1_000), job(4, 0, 1_000)];
        let planned = plan(10, &jobs);
        assert_eq!(planned.iter().map(|(_, n)| n).sum::<i64>(), 10);
        assert!(plan(0, &jobs).is_empty());
    }

    #[test]
    fn tenants_share_the_room_equally_whatever_their_jobs() {
        // Alpha's three big jobs (one of high priority) and beta's one:
        // half each; alpha's half goes by its own priorities.
        let jobs = [
            of("alpha", 1, 9, 1_000),
            of("beta", 4, 0, 1_000),
            of("alpha", 2, 0, 1_000),
            of("alpha", 3, 0, 1_000),
        ];
        assert_eq!(plan(100, &jobs), vec![(1, 50), (4, 50)]);
        // What beta cannot use goes to alpha.
        let jobs = [
            of("alpha", 1, 0, 1_000),
            of("alpha", 2, 0, 1_000),
            of("beta", 4, 0, 10),
        ];
        assert_eq!(plan(100, &jobs), vec![(1, 45), (2, 45), (4, 10)]);
    }
}
