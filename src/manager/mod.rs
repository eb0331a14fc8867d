//! The manager thread: the only place that decides. It routes each job to
//! its pool, keeps stats and the retry timer heap, settles every delivery
//! with its provider exactly once, and runs shutdown. It needs no locks.
//!
//! - [`receive`](self::receive): the loop — drains ready outcomes and
//!   deliveries, `select!`s when there are none, publishes stats, takes
//!   control messages.
//! - [`settle`](self::settle): a delivery in (route, reject, defer,
//!   dispatch), an outcome back (decide, then ack, defer, dead-letter or
//!   release).
//! - [`decide`](self::decide): the pure decision for an outcome.
//! - [`timers`](self::timers): the timer heap and the clock readings.
//! - [`shutdown`](self::shutdown): drain, abort, give up, join the pools.

mod decide;
mod receive;
mod settle;
mod shutdown;
#[cfg(test)]
mod tests;
mod timers;

pub(crate) use decide::Decision;

use crate::pool::{Done, Pool, Task};
use crate::provider::{Acker, Delivery, Health};
use crate::stats::{Stats, StatsReader};
use crossbeam_channel::{Receiver, Sender};
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use timers::Timers;

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
    fn on_tick(&mut self, snapshot: &crate::stats::Snapshot) {
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

/// A job handed to a pool, until its outcome comes back.
struct InFlight {
    acker: Box<dyn Acker>,
    provider: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining { deadline: Instant },
    Aborted { give_up: Instant },
}

/// The manager's state while it runs.
struct Loop {
    m: Manager,
    inflight: Slab<InFlight>,
    /// Tasks a pool's full queue did not take yet, per pool.
    backlog: Vec<VecDeque<Task>>,
    timers: Timers,
    stats: Stats,
    state: State,
    /// In-flight jobs the manager holds at most: pool threads + channel bound.
    limit: usize,
    deliveries_open: bool,
    gave_up: bool,
    report: ShutdownReport,
    rng: rand::rngs::ThreadRng,
}

impl Manager {
    /// Runs the loop until shutdown completes; returns the pools (closed
    /// and joined unless threads were stuck) and the report.
    pub(crate) fn run(self) -> ShutdownReport {
        let mut l = Loop::new(self);
        l.run();
        l.finish()
    }
}

impl Loop {
    fn new(m: Manager) -> Loop {
        let threads: usize = m.pools.iter().map(|p| p.config.count).sum();
        let limit = threads + m.channel_bound;
        Loop {
            stats: Stats::new(m.pools.len(), m.providers.len()),
            inflight: Slab::with_capacity(limit),
            backlog: (0..m.pools.len()).map(|_| VecDeque::new()).collect(),
            timers: Timers::default(),
            state: State::Running,
            limit,
            deliveries_open: true,
            gave_up: false,
            report: ShutdownReport::default(),
            rng: rand::rng(),
            m,
        }
    }

    /// The pool that runs jobs of type `kind`. Pools are few: comparing
    /// their names is cheaper than hashing the type of every job.
    fn route(&self, kind: &str) -> Option<usize> {
        let kind = kind.as_bytes();
        self.m.pools.iter().position(|p| {
            let name = p.config.name.as_bytes();
            // Inlined: type names are short, a call to memcmp costs more.
            name.len() == kind.len() && name.iter().zip(kind).all(|(a, b)| a == b)
        })
    }

    fn provider_name(&self, i: usize) -> &str {
        self.m.providers.get(i).map(|h| h.name()).unwrap_or("")
    }
}
