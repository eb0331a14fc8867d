//! The manager driven step by step: deliveries and control messages are
//! handed to its handlers directly, outcomes come from a real pool thread
//! over the real channel, and time is a fake clock passed in, so retries
//! and `run_at` are checked without waiting for them.

use super::timers::Now;
use super::{Control, Loop, Manager, NoHooks, State};
use crate::backoff::{Backoff, Jitter};
use crate::config::PoolConfig;
use crate::job::{FailureRecord, Job, JobStatus, Malformed, Outcome, Report, time_to_unix};
use crate::pool::Pool;
use crate::provider::{Acker, Delivery, Health};
use crate::stats::{Counters, StatsReader};
use crate::worker::{JobContext, PoolInfo, Worker, WorkerType};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(10);

/// What an acker was told.
#[derive(Debug)]
enum Told {
    Ack(Report),
    Defer(Job, SystemTime),
    Dead(Box<FailureRecord>, Report),
    Release(Option<Job>),
}

struct TestAcker {
    told: Sender<Told>,
    can_defer: bool,
}

impl Acker for TestAcker {
    fn ack(self: Box<Self>, report: &Report) {
        let _ = self.told.send(Told::Ack(report.clone()));
    }
    fn can_defer(&self) -> bool {
        self.can_defer
    }
    fn defer(self: Box<Self>, job: &Job, due: SystemTime) {
        let _ = self.told.send(Told::Defer(job.clone(), due));
    }
    fn dead(self: Box<Self>, record: &FailureRecord, report: &Report) {
        let _ = self
            .told
            .send(Told::Dead(Box::new(record.clone()), report.clone()));
    }
    fn release(self: Box<Self>, job: Option<&Job>) {
        let _ = self.told.send(Told::Release(job.cloned()));
    }
}

/// A worker type whose jobs say how they end: `params.result` is `ok`,
/// `fail` (retryable) or `fatal`.
struct Scripted;

impl WorkerType for Scripted {
    type Options = crate::noop::NoopOptions;
    const TYPE: &'static str = "scripted";
    const DESCRIPTION: &'static str = "test";
    fn from_options(_: Self::Options, _: &PoolInfo) -> Result<Scripted, crate::PluginError> {
        Ok(Scripted)
    }
    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(Scripted)
    }
}

impl Worker for Scripted {
    fn run(&mut self, job: &Job, _: &JobContext) -> Outcome {
        match job.params["result"].as_str() {
            Some("ok") => Outcome::success().with_output(Some("done".into())),
            Some("fatal") => Outcome::fatal("cannot work"),
            _ => Outcome::failed("try again"),
        }
    }
}

/// A manager with one pool `t` of one scripted thread and one provider
/// `p`, a fake clock starting at `t0`, and the other ends of its channels.
struct Rig {
    l: Loop,
    t0: Now,
    told: Sender<Told>,
    heard: Receiver<Told>,
    failures: crate::failure::HandlerThread,
    reader: StatsReader,
    _deliveries: Sender<Delivery>,
    _control: Sender<Control>,
}

fn rig(retry: Backoff) -> Rig {
    rig_with(retry, Duration::from_secs(30))
}

fn rig_with(retry: Backoff, shutdown_timeout: Duration) -> Rig {
    let (del_tx, del_rx) = crossbeam_channel::bounded(16);
    let (done_tx, done_rx) = crossbeam_channel::bounded(64);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (fail_tx, fail_rx) = crate::failure::queue(64, Default::default());
    let (told, heard) = crossbeam_channel::unbounded();
    let draining = Arc::new(AtomicBool::new(false));
    let config = PoolConfig {
        name: "t".into(),
        plugin_type: "scripted".into(),
        count: 1,
        timeout: None,
        retry,
        spec: Arc::new(Scripted),
    };
    let pool = match Pool::start(0, config, 64, 1024, done_tx, draining.clone()) {
        Ok(p) => p,
        Err(e) => panic!("pool: {e}"),
    };
    let reader = StatsReader::default();
    let m = Manager {
        deliveries: del_rx,
        done: done_rx,
        control: ctl_rx,
        pools: vec![pool],
        providers: vec![Arc::new(Health::new("p"))],
        failures: fail_tx,
        reader: reader.clone(),
        stopping: Arc::new(AtomicBool::new(false)),
        stop_signal: None,
        draining,
        shutdown_timeout,
        channel_bound: 16,
        hooks: Box::new(NoHooks),
    };
    // Far from the real wall clock: nothing may read the real one.
    let t0 = Now::new(
        std::time::Instant::now(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
    );
    Rig {
        l: Loop::new(m),
        t0,
        told,
        heard,
        failures: fail_rx,
        reader,
        _deliveries: del_tx,
        _control: ctl_tx,
    }
}

fn exact(base_secs: u64) -> Backoff {
    Backoff {
        base: Duration::from_secs(base_secs),
        max: Duration::from_secs(3600),
        jitter: Jitter::None,
    }
}

fn job(result: &str, retries: u32) -> Job {
    let mut j = Job::new("t", serde_json::json!({ "result": result }));
    j.retries = retries;
    j
}

impl Rig {
    /// The fake clock `secs` after the start.
    fn at(&self, secs: u64) -> Now {
        let d = Duration::from_secs(secs);
        Now::new(self.t0.mono + d, self.t0.wall + d)
    }

    fn deliver(&mut self, payload: Result<Job, Malformed>, can_defer: bool, now: Now) {
        let acker = TestAcker {
            told: self.told.clone(),
            can_defer,
        };
        self.l
            .on_delivery(Delivery::new(payload, Box::new(acker)), now);
    }

    /// Waits for the pool's next outcome and settles it at `now`.
    fn settle_next(&mut self, now: Now) {
        match self.l.m.done.recv_timeout(WAIT) {
            Ok(d) => self.l.on_done(d, now),
            Err(e) => panic!("no outcome: {e}"),
        }
    }

    fn told(&self) -> Told {
        match self.heard.recv_timeout(WAIT) {
            Ok(t) => t,
            Err(e) => panic!("the acker was told nothing: {e}"),
        }
    }

    fn nothing_told(&self) {
        if let Ok(t) = self.heard.try_recv() {
            panic!("unexpected {t:?}");
        }
    }

    /// The counters of pool `t` and provider `p` in a fresh snapshot.
    fn counters(&mut self) -> (Counters, Counters, u64, usize) {
        self.l.publish();
        let s = self.reader.snapshot();
        let p = &s.providers["p"];
        (s.pools["t"].counters, p.counters, p.rejected, s.in_flight)
    }

    fn finish(self) -> super::ShutdownReport {
        let mut l = self.l;
        l.begin_shutdown();
        l.finish()
    }
}

#[test]
fn a_success_is_acked_with_its_report_and_counted_once() {
    let mut r = rig(exact(1));
    let j = job("ok", 0);
    let id = j.id.clone();
    r.deliver(Ok(j), false, r.t0);
    r.settle_next(r.t0);
    let Told::Ack(report) = r.told() else {
        panic!("not acked")
    };
    assert_eq!(report.id, id);
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.output.as_deref(), Some("done"));
    let (t, p, rejected, in_flight) = r.counters();
    let expect = Counters {
        received: 1,
        attempts: 1,
        succeeded: 1,
        ..Counters::default()
    };
    assert_eq!((t, p, rejected, in_flight), (expect, expect, 0, 0));
    assert_eq!(r.finish().released, 0);
}

#[test]
fn retries_wait_in_the_timer_heap_on_the_fake_clock_then_dead_letter() {
    let mut r = rig(exact(10));
    r.deliver(Ok(job("fail", 2)), false, r.t0);
    // Attempt 1 fails at t0: the retry is due at +10 s.
    r.settle_next(r.t0);
    r.nothing_told();
    assert_eq!(r.l.timers.len(), 1);
    r.l.fire_timers(r.at(9));
    assert_eq!(r.l.timers.len(), 1, "ran before its back-off");
    r.l.fire_timers(r.at(10));
    assert_eq!(r.l.timers.len(), 0);
    // Attempt 2 fails at +10 s: due at +30 s (20 s back-off).
    r.settle_next(r.at(10));
    r.l.fire_timers(r.at(29));
    assert_eq!(r.l.timers.len(), 1, "ran before its back-off");
    r.l.fire_timers(r.at(30));
    // Attempt 3 was the last: dead.
    r.settle_next(r.at(30));
    let Told::Dead(record, report) = r.told() else {
        panic!("not dead-lettered")
    };
    assert_eq!(report.attempts, 3);
    assert_eq!(report.error.as_deref(), Some("try again"));
    assert_eq!(record.attempts, 3);
    assert_eq!(record.provider, "p");
    assert_eq!(record.first_attempt_at, Some(time_to_unix(r.t0.wall)));
    let stored = record.job.as_ref().map(|j| j["last_error"].clone());
    assert_eq!(stored, Some(serde_json::json!("try again")));
    // The same record goes to the failure handlers.
    assert_eq!(r.failures.try_recv().map(|f| f.attempts), Some(3));
    let (t, p, _, in_flight) = r.counters();
    let expect = Counters {
        received: 1,
        attempts: 3,
        retried: 2,
        failed: 1,
        ..Counters::default()
    };
    assert_eq!((t, p, in_flight), (expect, expect, 0));
}

#[test]
fn a_provider_that_stores_retries_is_told_the_due_time() {
    let mut r = rig(exact(7));
    r.deliver(Ok(job("fail", 1)), true, r.t0);
    r.settle_next(r.at(3));
    let Told::Defer(j, due) = r.told() else {
        panic!("not deferred")
    };
    assert_eq!(due, r.at(10).wall);
    assert_eq!(j.attempts, 1);
    assert_eq!(j.last_error.as_deref(), Some("try again"));
    assert!(r.l.timers.is_empty());
}

#[test]
fn retries_zero_and_final_failures_are_dead_after_one_attempt() {
    let mut r = rig(exact(1));
    r.deliver(Ok(job("fail", 0)), false, r.t0);
    r.settle_next(r.t0);
    assert!(matches!(r.told(), Told::Dead(..)));
    r.deliver(Ok(job("fatal", 5)), false, r.t0);
    r.settle_next(r.t0);
    let Told::Dead(record, _) = r.told() else {
        panic!("not dead-lettered")
    };
    assert_eq!((record.attempts, record.error.as_str()), (1, "cannot work"));
    assert!(r.l.timers.is_empty());
}

#[test]
fn run_at_waits_on_the_fake_wall_clock() {
    let mut r = rig(exact(1));
    let mut j = job("ok", 0);
    j.run_at = Some(time_to_unix(r.at(60).wall));
    r.deliver(Ok(j), false, r.t0);
    assert_eq!(r.l.timers.len(), 1);
    r.l.fire_timers(r.at(59));
    assert_eq!(r.l.timers.len(), 1, "ran before run_at");
    r.l.fire_timers(r.at(60));
    r.settle_next(r.at(60));
    assert!(matches!(r.told(), Told::Ack(_)));
    // A run_at in the past runs at once.
    let mut j = job("ok", 0);
    j.run_at = Some(time_to_unix(r.t0.wall) - 5.0);
    r.deliver(Ok(j), false, r.at(60));
    assert!(r.l.timers.is_empty());
    r.settle_next(r.at(60));
    assert!(matches!(r.told(), Told::Ack(_)));
}

#[test]
fn a_run_at_centuries_away_waits_without_overflowing_the_clock() {
    let mut r = rig(exact(1));
    let mut j = job("ok", 0);
    j.run_at = Some(9.0e18);
    r.deliver(Ok(j), false, r.t0);
    assert_eq!(r.l.timers.next_due(), Some(r.t0.after(Backoff::LONGEST)));
    assert_eq!(r.finish().released, 1);
}

#[test]
fn attempt_counts_from_outside_saturate() {
    let mut r = rig(exact(1));
    let mut j = job("fail", u32::MAX);
    j.attempts = u32::MAX;
    r.deliver(Ok(j), true, r.t0);
    r.settle_next(r.t0);
    let Told::Defer(j, _) = r.told() else {
        panic!("not deferred")
    };
    assert_eq!(j.attempts, u32::MAX);
}

#[test]
fn malformed_payloads_and_unknown_types_are_rejected_unrun() {
    let mut r = rig(exact(1));
    let bad = Malformed {
        raw: "{nope".into(),
        reason: "not JSON".into(),
    };
    r.deliver(Err(bad), false, r.t0);
    let Told::Dead(record, report) = r.told() else {
        panic!("not dead-lettered")
    };
    assert_eq!(record.raw.as_deref(), Some("{nope"));
    assert_eq!(
        (report.attempts, report.error.as_deref()),
        (0, Some("not JSON"))
    );
    let mut j = job("ok", 3);
    j.job_type = "teleport".into();
    r.deliver(Ok(j), false, r.t0);
    let Told::Dead(record, _) = r.told() else {
        panic!("not dead-lettered")
    };
    assert_eq!(record.error, "no worker pool for type \"teleport\"");
    assert_eq!(r.failures.len(), 2);
    let (t, p, rejected, _) = r.counters();
    assert_eq!(t, Counters::default());
    assert_eq!((p.received, p.failed, p.attempts, rejected), (2, 2, 0, 2));
}

#[test]
fn shutdown_hands_back_timers_and_new_deliveries() {
    let mut r = rig(exact(10));
    r.deliver(Ok(job("fail", 3)), false, r.t0);
    r.settle_next(r.t0);
    assert_eq!(r.l.timers.len(), 1);
    r.l.on_control(Control::Shutdown);
    assert!(matches!(r.l.state, State::Draining { .. }));
    let Told::Release(Some(j)) = r.told() else {
        panic!("not released")
    };
    assert_eq!(j.last_error.as_deref(), Some("try again"));
    assert!(r.l.timers.is_empty());
    // A delivery after the stop is handed back unrun.
    r.deliver(Ok(job("ok", 0)), false, r.at(1));
    assert!(matches!(r.told(), Told::Release(Some(_))));
    let (_, p, _, _) = r.counters();
    assert_eq!((p.released, p.received), (2, 1));
    let l = r.l;
    assert_eq!(l.report.released, 2);
    assert_eq!(l.finish().released, 2);
}

#[test]
fn a_retry_due_while_stopping_is_handed_back_unless_the_provider_stores_it() {
    let mut r = rig(exact(10));
    r.deliver(Ok(job("fail", 3)), false, r.t0);
    r.deliver(Ok(job("fail", 3)), true, r.t0);
    // Both attempts fail before the stop; their outcomes are settled after.
    let done: Vec<_> = (0..2)
        .filter_map(|_| r.l.m.done.recv_timeout(WAIT).ok())
        .collect();
    assert_eq!(done.len(), 2);
    r.l.begin_shutdown();
    for d in done {
        r.l.on_done(d, r.at(1));
    }
    let mut told = vec![r.told(), r.told()];
    told.sort_by_key(|t| matches!(t, Told::Defer(..)));
    assert!(matches!(told[0], Told::Release(Some(_))), "{told:?}");
    assert!(matches!(told[1], Told::Defer(..)), "{told:?}");
    let (t, _, _, _) = r.counters();
    assert_eq!((t.retried, t.released), (2, 0));
}

#[test]
fn a_huge_shutdown_timeout_does_not_overflow_the_deadline() {
    let mut r = rig_with(exact(1), Duration::MAX);
    r.l.on_control(Control::Shutdown);
    let State::Draining { deadline } = r.l.state else {
        panic!("not draining")
    };
    assert!(deadline > r.t0.mono);
    r.l.finish();
}

#[test]
fn abort_and_provider_failure_are_reported() {
    let mut r = rig(exact(1));
    r.l.on_control(Control::ProviderFailed("p".into()));
    r.l.on_control(Control::Abort);
    assert!(matches!(r.l.state, State::Aborted { .. }));
    let report = r.l.finish();
    assert!(report.aborted);
    assert_eq!(report.failed_provider.as_deref(), Some("p"));
}
