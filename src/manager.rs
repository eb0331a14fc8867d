//! The manager thread: the only place that decides. It routes each job to
//! its pool, keeps stats and the retry timer heap, settles every delivery
//! with its provider exactly once, and runs shutdown. It `select!`s over
//! deliveries, outcomes, control messages and a tick, with the next timer
//! as the select's timeout, and needs no locks.

use crate::job::{FailureRecord, Job, JobStatus, Report, unix_now};
use crate::pool::{Done, Pool, Refused, Task};
use crate::provider::{Acker, Delivery, Health};
use crate::stats::{ChannelFill, Snapshot, SnapshotNames, Stats, StatsReader};
use crossbeam_channel::{Receiver, Sender, select};
use slab::Slab;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Stands in for a delay too long to add to a clock (a job's far-off
/// `run_at`, a huge configured back-off): a century.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Messages to the manager from outside its loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Begin a graceful shutdown (first SIGINT/SIGTERM).
    Shutdown,
    /// Kill running jobs now and hand them back (second signal, deadline).
    Abort,
    /// A provider's thread failed; shut down and exit non-zero.
    ProviderFailed(String),
    /// Change a pool's thread count while jobs run (SIGHUP reload): grow
    /// at once, or let surplus threads exit after their current job.
    Resize {
        /// The pool's name.
        pool: String,
        /// The new number of threads (at least 1).
        count: usize,
    },
}

/// Observation hooks called on the manager thread; keep them quick.
pub trait Hooks: Send {
    /// After each snapshot is published (every `tick`, 500 ms).
    fn on_tick(&mut self, snapshot: &Snapshot) {
        let _ = snapshot;
    }
    /// When shutdown begins.
    fn on_stopping(&mut self) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// How the manager's run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs handed back to their source un-finished.
    pub released: u64,
    /// Running jobs were killed at the deadline.
    pub aborted: bool,
    /// A provider failed and caused the shutdown.
    pub failed_provider: Option<String>,
}

struct InFlight {
    acker: Box<dyn Acker>,
    provider: usize,
}

struct Timer {
    due: Instant,
    seq: u64,
    pool: usize,
    job: Job,
    acker: Box<dyn Acker>,
    provider: usize,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Timer) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Timer) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    // Reversed: BinaryHeap is a max-heap and we want the earliest due first.
    fn cmp(&self, o: &Timer) -> CmpOrdering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining { deadline: Instant },
    Aborted { give_up: Instant },
}

pub(crate) struct Manager {
    pub(crate) deliveries: Receiver<Delivery>,
    pub(crate) done: Receiver<Done>,
    pub(crate) control: Receiver<Control>,
    pub(crate) pools: Vec<Pool>,
    pub(crate) providers: Vec<Arc<Health>>,
    pub(crate) failures: crate::failure::FailureQueue,
    pub(crate) reader: StatsReader,
    pub(crate) stopping: Arc<AtomicBool>,
    /// Dropped when shutdown begins: providers selecting on the other end
    /// wake at once.
    pub(crate) stop_signal: Option<Sender<()>>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) channel_bound: usize,
    pub(crate) hooks: Box<dyn Hooks>,
}

struct Loop {
    m: Manager,
    routes: HashMap<String, usize>,
    inflight: Slab<InFlight>,
    backlog: Vec<VecDeque<Task>>,
    timers: BinaryHeap<Timer>,
    seq: u64,
    stats: Stats,
    state: State,
    limit: usize,
    deliveries_open: bool,
    gave_up: bool,
    report: ShutdownReport,
    rng: rand::rngs::ThreadRng,
}

const BATCH: usize = 256;
const TICK: Duration = Duration::from_millis(500);

impl Manager {
    /// Runs the loop until shutdown completes; returns the pools (closed
    /// and joined unless threads were stuck) and the report.
    pub(crate) fn run(self) -> ShutdownReport {
        let routes = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.config.name.clone(), i))
            .collect();
        let threads: usize = self.pools.iter().map(|p| p.config.count).sum();
        let stats = Stats::new(self.pools.len(), self.providers.len());
        let limit = threads + self.channel_bound;
        let pools = self.pools.len();
        let mut l = Loop {
            m: self,
            routes,
            inflight: Slab::with_capacity(limit),
            backlog: (0..pools).map(|_| VecDeque::new()).collect(),
            timers: BinaryHeap::new(),
            seq: 0,
            stats,
            state: State::Running,
            limit,
            deliveries_open: true,
            gave_up: false,
            report: ShutdownReport::default(),
            rng: rand::rng(),
        };
        l.run();
        l.finish()
    }
}

impl Loop {
    fn run(&mut self) {
        let tick = crossbeam_channel::tick(TICK);
        let never = crossbeam_channel::never();
        self.publish();
        let mut busy = false;
        loop {
            if self.state != State::Running && self.inflight.is_empty() {
                return;
            }
            // While work is ready, take it without the cost of a select.
            if self.drain() {
                if tick.try_recv().is_ok() {
                    self.publish();
                }
                if let Ok(c) = self.m.control.try_recv() {
                    self.on_control(c);
                }
                self.after_wake();
                busy = true;
                continue;
            }
            // Just out of work: let the workers run once before parking, so
            // the next outcomes arrive as a batch instead of one wake-up each.
            if std::mem::take(&mut busy) {
                std::thread::yield_now();
                continue;
            }
            let now = Instant::now();
            let wait = self.next_wakeup(now).saturating_duration_since(now);
            let deliveries = if self.taking() {
                &self.m.deliveries
            } else {
                &never
            };
            select! {
                recv(self.m.done) -> d => if let Ok(d) = d { self.on_done(d) },
                recv(deliveries) -> d => match d {
                    Ok(d) => self.on_delivery(d),
                    Err(_) => self.deliveries_open = false,
                },
                recv(self.m.control) -> c => if let Ok(c) = c { self.on_control(c) },
                recv(tick) -> _ => self.publish(),
                default(wait) => {},
            }
            self.after_wake();
        }
    }

    /// Whether the manager takes deliveries now: always while stopping (to
    /// hand them back), else while in-flight work is under the limit.
    fn taking(&self) -> bool {
        self.deliveries_open && (self.state != State::Running || self.inflight.len() < self.limit)
    }

    /// Handles up to a batch of ready outcomes and deliveries; returns
    /// whether there was any.
    fn drain(&mut self) -> bool {
        let mut any = false;
        for _ in 0..BATCH {
            match self.m.done.try_recv() {
                Ok(d) => self.on_done(d),
                Err(_) => break,
            }
            any = true;
        }
        for _ in 0..BATCH {
            if !self.taking() {
                break;
            }
            match self.m.deliveries.try_recv() {
                Ok(d) => self.on_delivery(d),
                Err(_) => break,
            }
            any = true;
        }
        any
    }

    fn after_wake(&mut self) {
        if self.timers.is_empty() && self.state == State::Running {
            return;
        }
        let now = Instant::now();
        self.fire_timers(now);
        self.check_deadline(now);
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = now + Duration::from_secs(3600);
        if let Some(t) = self.timers.peek() {
            at = at.min(t.due);
        }
        match self.state {
            State::Draining { deadline } => at.min(deadline),
            State::Aborted { give_up } => at.min(give_up),
            State::Running => at,
        }
    }

    fn publish(&mut self) {
        let names = SnapshotNames {
            pools: self
                .m
                .pools
                .iter()
                .map(|p| (p.config.name.as_str(), p.config.count))
                .collect(),
            providers: &self.m.providers,
        };
        let channel = ChannelFill {
            len: self.m.deliveries.len(),
            capacity: self.m.deliveries.capacity().unwrap_or(0),
        };
        let snap = self.stats.snapshot(
            &names,
            self.timers.len(),
            self.state != State::Running,
            channel,
        );
        self.m.hooks.on_tick(&snap);
        self.m.reader.publish(snap);
    }

    fn provider_name(&self, i: usize) -> &str {
        self.m.providers.get(i).map(|h| h.name()).unwrap_or("")
    }

    fn on_delivery(&mut self, d: Delivery) {
        let provider = d.provider;
        if self.state != State::Running {
            self.stats.providers[provider].released += 1;
            self.report.released += 1;
            d.release();
            return;
        }
        self.stats.providers[provider].received += 1;
        let job = match d.payload {
            Ok(job) => job,
            Err(m) => {
                log::warn!(
                    "provider {}: malformed job dead-lettered: {}",
                    self.provider_name(provider),
                    m.reason
                );
                let record = FailureRecord::malformed(self.provider_name(provider), &m);
                self.reject(provider, d.acker, record, None);
                return;
            }
        };
        let Some(&pool) = self.routes.get(&job.kind) else {
            let error = format!("no worker pool for type {:?}", job.kind);
            log::warn!("job {}: {error}; dead-lettered", job.id);
            let record = FailureRecord::for_job(self.provider_name(provider), &job, &error, None);
            self.reject(provider, d.acker, record, Some(&job));
            return;
        };
        self.stats.types[pool].received += 1;
        if let Some(at) = job.run_at_time() {
            if let Ok(wait) = at.duration_since(SystemTime::now()) {
                if wait > Duration::from_millis(1) {
                    log::debug!("job {}: waits {:?} for run_at", job.id, wait);
                    self.defer(pool, job, d.acker, provider, at, wait);
                    return;
                }
            }
        }
        self.dispatch(pool, job, d.acker, provider);
    }

    fn reject(
        &mut self,
        provider: usize,
        acker: Box<dyn Acker>,
        record: FailureRecord,
        job: Option<&Job>,
    ) {
        self.stats.rejected[provider] += 1;
        self.stats.providers[provider].failed += 1;
        let report = Report {
            id: job.map(|j| j.id.clone()).unwrap_or_default(),
            status: JobStatus::Failed,
            attempts: 0,
            duration_ms: 0,
            output: None,
            error: Some(record.error.clone()),
        };
        acker.dead(&record, &report);
        let _ = self.m.failures.send(record);
    }

    fn dispatch(&mut self, pool: usize, mut job: Job, acker: Box<dyn Acker>, provider: usize) {
        job.attempts += 1;
        if job.first_attempt_at.is_none() {
            job.first_attempt_at = Some(unix_now());
        }
        log::debug!(
            "job {} ({}): attempt {} on pool {}",
            job.id,
            job.name(),
            job.attempts,
            self.m.pools[pool].config.name
        );
        let key = self.inflight.insert(InFlight { acker, provider });
        self.stats.in_flight[pool] += 1;
        self.stats.types[pool].attempts += 1;
        self.stats.providers[provider].attempts += 1;
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
                self.stats.in_flight[pool] -= 1;
                let f = self.inflight.remove(task.key);
                self.release(f.acker, f.provider, Some(&task.job));
                false
            }
        }
    }

    fn flush_backlog(&mut self, pool: usize) {
        while let Some(task) = self.backlog[pool].pop_front() {
            if !self.send_task(pool, task) {
                return;
            }
        }
    }

    fn release(&mut self, acker: Box<dyn Acker>, provider: usize, job: Option<&Job>) {
        if let Some(j) = job {
            log::info!("job {}: handed back un-finished", j.id);
        }
        self.stats.providers[provider].released += 1;
        self.report.released += 1;
        acker.release(job);
    }

    fn defer(
        &mut self,
        pool: usize,
        job: Job,
        acker: Box<dyn Acker>,
        provider: usize,
        at: SystemTime,
        wait: Duration,
    ) {
        if acker.can_defer() {
            acker.defer(&job, at);
        } else {
            self.seq += 1;
            self.timers.push(Timer {
                // `wait` comes from a job's run_at: never overflow on it.
                due: Instant::now()
                    .checked_add(wait)
                    .unwrap_or_else(|| Instant::now() + FAR_FUTURE),
                seq: self.seq,
                pool,
                job,
                acker,
                provider,
            });
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|t| t.due <= now) {
            let Some(t) = self.timers.pop() else { break };
            if self.state == State::Running {
                self.dispatch(t.pool, t.job, t.acker, t.provider);
            } else {
                self.release(t.acker, t.provider, Some(&t.job));
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        let Some(f) = self.inflight.try_remove(d.key) else {
            return;
        };
        self.stats.in_flight[d.pool] -= 1;
        if !self.backlog[d.pool].is_empty() {
            self.flush_backlog(d.pool);
        }
        let mut job = d.job;
        let Some(outcome) = d.outcome else {
            return self.release(f.acker, f.provider, Some(&job));
        };
        self.stats.durations[d.pool].record(d.duration);
        let aborted = matches!(self.state, State::Aborted { .. });
        let failure = match outcome.result {
            Ok(()) => {
                log::debug!(
                    "job {} ({}): succeeded in {:?}",
                    job.id,
                    job.name(),
                    d.duration
                );
                self.stats.types[d.pool].succeeded += 1;
                self.stats.providers[f.provider].succeeded += 1;
                self.stats.pair(d.pool, f.provider).succeeded += 1;
                let report = Report {
                    id: job.id,
                    status: JobStatus::Succeeded,
                    attempts: job.attempts,
                    duration_ms: d.duration.as_millis() as u64,
                    output: outcome.output,
                    error: None,
                };
                f.acker.ack(&report);
                return;
            }
            Err(_) if aborted => return self.release(f.acker, f.provider, Some(&job)),
            Err(failure) => failure,
        };
        job.last_error = Some(failure.message.clone());
        let pool = &self.m.pools[d.pool].config;
        if failure.retryable && job.attempts <= job.retries {
            let wait = pool.retry.delay(job.attempts, &mut self.rng);
            log::info!(
                "job {} ({}): attempt {} of {} failed: {}; retry in {:?}",
                job.id,
                job.name(),
                job.attempts,
                job.retries + 1,
                failure.message,
                wait
            );
            self.stats.types[d.pool].retried += 1;
            self.stats.providers[f.provider].retried += 1;
            self.stats.pair(d.pool, f.provider).retried += 1;
            if self.state != State::Running && !f.acker.can_defer() {
                return self.release(f.acker, f.provider, Some(&job));
            }
            return self.defer(
                d.pool,
                job,
                f.acker,
                f.provider,
                SystemTime::now()
                    .checked_add(wait)
                    .unwrap_or_else(|| SystemTime::now() + FAR_FUTURE),
                wait,
            );
        }
        log::warn!(
            "job {} ({}): failed for good after {} attempt(s): {}",
            job.id,
            job.name(),
            job.attempts,
            failure.message
        );
        self.stats.types[d.pool].failed += 1;
        self.stats.providers[f.provider].failed += 1;
        self.stats.pair(d.pool, f.provider).failed += 1;
        let record = FailureRecord::for_job(
            self.provider_name(f.provider),
            &job,
            &failure.message,
            outcome.output.clone(),
        );
        let report = report(
            &job,
            JobStatus::Failed,
            d.duration,
            outcome.output,
            Some(failure.message),
        );
        f.acker.dead(&record, &report);
        let _ = self.m.failures.send(record);
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Shutdown => self.begin_shutdown(),
            Control::Abort => self.abort(),
            Control::ProviderFailed(name) => {
                self.report.failed_provider = Some(name);
                self.begin_shutdown();
            }
            Control::Resize { pool, count } => self.resize(&pool, count),
        }
    }

    /// Resizes a pool; refused while shutting down or for an unknown pool.
    fn resize(&mut self, name: &str, count: usize) {
        let Some(&i) = self.routes.get(name) else {
            log::warn!("resize refused: no pool named {name:?}");
            return;
        };
        let old = self.m.pools[i].config.count;
        if count == old {
            return;
        }
        if count == 0 {
            log::warn!("resize of pool {name} refused: a pool needs at least 1 thread");
            return;
        }
        if self.state != State::Running {
            log::warn!("resize of pool {name} refused: shutting down");
            return;
        }
        let pool = &mut self.m.pools[i];
        let result = pool.resize(count);
        let new = pool.config.count;
        // The manager holds at most threads + channel bound jobs.
        self.limit = self.limit + new - old;
        if !self.backlog[i].is_empty() {
            self.flush_backlog(i);
        }
        match result {
            Ok(()) => log::info!("pool {name}: resized from {old} to {new} thread(s)"),
            Err(e) => {
                log::error!("pool {name}: resized from {old} to {new} thread(s), not {count}: {e}")
            }
        }
        self.publish();
    }

    fn begin_shutdown(&mut self) {
        if self.state != State::Running {
            return;
        }
        log::info!(
            "shutting down: {} job(s) running, waiting up to {:?}",
            self.inflight.len(),
            self.m.shutdown_timeout
        );
        let deadline = Instant::now()
            .checked_add(self.m.shutdown_timeout)
            .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
        self.state = State::Draining { deadline };
        // Failure handlers share this deadline; they get no second one.
        self.m.failures.begin_shutdown(deadline);
        self.m.stopping.store(true, Ordering::Release);
        self.m.stop_signal = None;
        self.m.draining.store(true, Ordering::Release);
        self.m.hooks.on_stopping();
        while let Some(t) = self.timers.pop() {
            self.release(t.acker, t.provider, Some(&t.job));
        }
        for pool in 0..self.backlog.len() {
            while let Some(task) = self.backlog[pool].pop_front() {
                self.stats.in_flight[pool] -= 1;
                let f = self.inflight.remove(task.key);
                self.release(f.acker, f.provider, Some(&task.job));
            }
        }
        while let Ok(d) = self.m.deliveries.try_recv() {
            self.on_delivery(d);
        }
        self.publish();
    }

    fn abort(&mut self) {
        self.begin_shutdown();
        if matches!(self.state, State::Aborted { .. }) {
            return;
        }
        log::warn!(
            "killing {} running job(s); they are handed back",
            self.inflight.len()
        );
        self.report.aborted = true;
        // Workers that do not heed the abort get a little longer, then
        // their jobs are handed back without them.
        self.state = State::Aborted {
            give_up: Instant::now() + Duration::from_secs(5),
        };
        for p in &self.m.pools {
            p.abort();
        }
    }

    fn check_deadline(&mut self, now: Instant) {
        match self.state {
            State::Draining { deadline } if now >= deadline => self.abort(),
            State::Aborted { give_up } if now >= give_up => {
                log::error!(
                    "{} job(s) did not stop; handing them back without waiting",
                    self.inflight.len()
                );
                self.gave_up = true;
                for (_, f) in std::mem::take(&mut self.inflight) {
                    self.release(f.acker, f.provider, None);
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> ShutdownReport {
        // Deliveries that raced the stop flag are handed back too.
        while let Ok(d) = self.m.deliveries.try_recv() {
            self.on_delivery(d);
        }
        self.publish();
        let stuck = self.gave_up;
        for p in &mut self.m.pools {
            p.close();
        }
        if !stuck {
            for p in &mut self.m.pools {
                p.join();
            }
        }
        self.report
    }
}

fn report(
    job: &Job,
    status: JobStatus,
    d: Duration,
    output: Option<String>,
    error: Option<String>,
) -> Report {
    Report {
        id: job.id.clone(),
        status,
        attempts: job.attempts,
        duration_ms: d.as_millis() as u64,
        output,
        error,
    }
}
