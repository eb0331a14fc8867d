//! Settling: a delivery comes in (rejected, deferred or dispatched to its
//! pool), an outcome comes back (decided by [`decide`], then acked,
//! deferred, dead-lettered or released). Every delivery is settled with
//! its provider exactly once.

use super::decide::{Decision, decide};
use super::timers::{Now, Waiting};
use super::{InFlight, Loop, State};
use crate::job::{FailureRecord, Job, JobStatus, Outcome, Report};
use crate::pool::{Done, Refused, Task};
use crate::provider::{Acker, Delivery};
use std::time::Duration;

/// `run_at` closer than this runs at once.
const RUN_AT_SLACK: Duration = Duration::from_millis(1);

impl Loop {
    pub(super) fn on_delivery(&mut self, d: Delivery, now: Now) {
        let provider = d.provider;
        if self.state != State::Running {
            self.stats.on_released(provider, None);
            self.report.released += 1;
            d.release();
            return;
        }
        let job = match d.payload {
            Ok(job) => job,
            Err(m) => {
                log::warn!(
                    "provider {}: malformed job dead-lettered: {}",
                    self.provider_name(provider),
                    m.reason
                );
                let record = FailureRecord::malformed(self.provider_name(provider), &m);
                return self.reject(provider, d.acker, record, None);
            }
        };
        let Some(pool) = self.route(&job.job_type) else {
            let error = format!("no worker pool for type {:?}", job.job_type);
            log::warn!(job_id = job.id.as_str(), job_type = job.job_type.as_str(); "job {}: {error}; dead-lettered", job.id);
            let record = FailureRecord::for_job(self.provider_name(provider), &job, &error, None);
            return self.reject(provider, d.acker, record, Some(&job));
        };
        self.stats
            .on_received(provider, Some(pool), job.attempts > 0);
        let run_at = job.run_at_time();
        if let Some(wait) = run_at.and_then(|at| at.duration_since(now.wall).ok()) {
            if wait > RUN_AT_SLACK {
                log::debug!(job_id = job.id.as_str(), job_type = job.job_type.as_str(); "job {}: waits {:?} for run_at", job.id, wait);
                let waiting = Waiting {
                    pool,
                    job,
                    acker: d.acker,
                    provider,
                };
                return self.defer(waiting, wait, now);
            }
        }
        self.dispatch(pool, job, d.acker, provider, now);
    }

    /// Dead-letters a delivery that cannot run: not a job, or no pool.
    fn reject(
        &mut self,
        provider: usize,
        acker: Box<dyn Acker>,
        record: FailureRecord,
        job: Option<&Job>,
    ) {
        self.stats.on_received(provider, None, false);
        let report = Report {
            id: job.map(|j| j.id.clone()).unwrap_or_default(),
            status: JobStatus::Failed,
            attempts: 0,
            duration_ms: 0,
            elapsed_ms: 0,
            output: None,
            error: Some(record.error.clone()),
        };
        acker.dead(&record, &report);
        self.send_to_failure_handlers(record);
    }

    /// Hands a dead-letter record to the failure handlers' thread.
    fn send_to_failure_handlers(&mut self, record: FailureRecord) {
        let _ = self.m.failures.send(record);
    }

    /// Starts an attempt: counts it and queues it for its pool.
    fn dispatch(
        &mut self,
        pool: usize,
        mut job: Job,
        acker: Box<dyn Acker>,
        provider: usize,
        now: Now,
    ) {
        job.attempts = job.attempts.saturating_add(1);
        if job.first_attempt_at.is_none() {
            job.first_attempt_at = Some(now.unix);
        }
        log::debug!(
            job_id = job.id.as_str(), job_type = job.job_type.as_str();
            "job {} ({}): attempt {} on pool {}",
            job.id,
            job.name(),
            job.attempts,
            self.m.pools[pool].config.name
        );
        let key = self.inflight.insert(InFlight { acker, provider });
        self.stats.on_started(pool, provider);
        let task = Task { key, job };
        if !self.backlog[pool].is_empty() {
            self.backlog[pool].push_back(task);
            return;
        }
        self.send_task(pool, task);
    }

    /// Hands a task to its pool, keeping it in the backlog when the pool's
    /// queue is full, releasing it when the pool is closed.
    fn send_task(&mut self, pool: usize, task: Task) -> bool {
        match self.m.pools[pool].send(task) {
            Ok(()) => true,
            Err(Refused::Full(task)) => {
                self.backlog[pool].push_front(task);
                false
            }
            Err(Refused::Closed(task)) => {
                self.release_unsent(pool, task);
                false
            }
        }
    }

    /// Sends what waits in a pool's backlog until its queue is full.
    pub(super) fn flush_backlog(&mut self, pool: usize) {
        while let Some(task) = self.backlog[pool].pop_front() {
            if !self.send_task(pool, task) {
                return;
            }
        }
    }

    /// Hands back a task that never reached a pool thread.
    pub(super) fn release_unsent(&mut self, pool: usize, task: Task) {
        if let Some(f) = self.inflight.try_remove(task.key) {
            self.stats.on_released(f.provider, Some(pool));
            self.hand_back(f.acker, Some(&task.job));
        }
    }

    /// Gives a job back to its source un-finished. The caller counts it.
    pub(super) fn hand_back(&mut self, acker: Box<dyn Acker>, job: Option<&Job>) {
        if let Some(j) = job {
            log::info!(job_id = j.id.as_str(), job_type = j.job_type.as_str(); "job {}: handed back un-finished", j.id);
        }
        self.report.released += 1;
        acker.release(job);
    }

    /// Holds a job until `wait` has passed: stored by its provider when it
    /// can, else in the manager's timer heap.
    fn defer(&mut self, w: Waiting, wait: Duration, now: Now) {
        if w.acker.can_defer() {
            let at = now.wall.checked_add(wait).unwrap_or(now.wall);
            w.acker.defer(&w.job, at);
        } else {
            self.timers.push(now.after(wait), w);
        }
    }

    /// Dispatches the timers that are due (or hands them back once
    /// shutdown has begun).
    pub(super) fn fire_timers(&mut self, now: Now) {
        while let Some(t) = self.timers.pop_due(now.mono) {
            if self.state == State::Running {
                self.dispatch(t.pool, t.job, t.acker, t.provider, now);
            } else {
                self.stats.on_released(t.provider, None);
                self.hand_back(t.acker, Some(&t.job));
            }
        }
    }

    /// An attempt came back: decide, count, and settle.
    pub(super) fn on_done(&mut self, d: Done, now: Now) {
        let Some(f) = self.inflight.try_remove(d.key) else {
            return;
        };
        if !self.backlog[d.pool].is_empty() {
            self.flush_backlog(d.pool);
        }
        let decision = decide(
            &d.job,
            d.outcome.as_ref(),
            &self.m.pools[d.pool].config.retry,
            matches!(self.state, State::Aborted { .. }),
            now.wall,
            &mut self.rng,
        );
        let ran = d.outcome.is_some().then_some(d.duration);
        self.stats.on_settled(d.pool, f.provider, &decision, ran);
        let Done {
            pool,
            job,
            outcome,
            duration,
            ..
        } = d;
        match (decision, outcome) {
            (Decision::Succeeded, Some(o)) => {
                log::debug!(job_id = job.id.as_str(), job_type = job.job_type.as_str(); "job {} ({}): succeeded in {duration:?}", job.id, job.name());
                f.acker.ack(&report(
                    job,
                    JobStatus::Succeeded,
                    duration,
                    now,
                    o.output,
                    None,
                ));
            }
            (Decision::Retry { wait, .. }, Some(o)) => self.retry(pool, job, f, o, wait, now),
            (Decision::Dead, Some(o)) => self.dead(job, f, o, duration, now),
            // Release; the others always come with an outcome.
            _ => self.hand_back(f.acker, Some(&job)),
        }
    }

    /// Holds a failed job for its retry, or hands it back when the manager
    /// is stopping and cannot hold it.
    fn retry(
        &mut self,
        pool: usize,
        mut job: Job,
        f: InFlight,
        o: Outcome,
        wait: Duration,
        now: Now,
    ) {
        let message = o.result.err().map(|e| e.message).unwrap_or_default();
        log::info!(
            job_id = job.id.as_str(), job_type = job.job_type.as_str();
            "job {} ({}): attempt {} of {} failed: {}; retry in {:?}",
            job.id,
            job.name(),
            job.attempts,
            job.retries.saturating_add(1),
            message,
            wait
        );
        job.last_error = Some(message);
        if self.state != State::Running && !f.acker.can_defer() {
            self.stats.on_released(f.provider, None);
            return self.hand_back(f.acker, Some(&job));
        }
        let waiting = Waiting {
            pool,
            job,
            acker: f.acker,
            provider: f.provider,
        };
        self.defer(waiting, wait, now);
    }

    /// Dead-letters a job that failed for good.
    fn dead(&mut self, mut job: Job, f: InFlight, o: Outcome, duration: Duration, now: Now) {
        let message = o.result.err().map(|e| e.message).unwrap_or_default();
        log::warn!(
            job_id = job.id.as_str(), job_type = job.job_type.as_str();
            "job {} ({}): failed for good after {} attempt(s): {}",
            job.id,
            job.name(),
            job.attempts,
            message
        );
        job.last_error = Some(message.clone());
        let provider = self.provider_name(f.provider);
        let record = FailureRecord::for_job(provider, &job, &message, o.output.clone());
        let report = report(
            job,
            JobStatus::Failed,
            duration,
            now,
            o.output,
            Some(message),
        );
        f.acker.dead(&record, &report);
        self.send_to_failure_handlers(record);
    }
}

/// The report of a finished job.
/// The report of a finished job; `now` is the manager's clock reading for
/// this batch of work (no clock is read per job).
fn report(
    job: Job,
    status: JobStatus,
    d: Duration,
    now: Now,
    output: Option<String>,
    error: Option<String>,
) -> Report {
    let duration_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // One attempt: it is the whole of it.
    let since_first = match (job.attempts, job.first_attempt_at) {
        (2.., Some(t)) => Some((now.unix - t).max(0.0) * 1e3)
            .filter(|ms| ms.is_finite())
            .map_or(0, |ms| ms.min(u64::MAX as f64) as u64),
        _ => 0,
    };
    Report {
        id: job.id,
        status,
        attempts: job.attempts,
        duration_ms,
        // At least the last attempt, whatever the clocks said.
        elapsed_ms: since_first.max(duration_ms),
        output,
        error,
    }
}
