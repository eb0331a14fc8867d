//! Failure handlers: told about every job that failed for good, after its
//! dead-letter record is stored. They run on their own thread, so a slow
//! webhook never stalls the manager, and a failing handler is logged and
//! never costs the dead-letter record.
//!
//! - [`file`]: appends one JSON line per failed job, rotated at a size.
//! - [`http`]: POSTs the record as JSON to a webhook, with retries.
//! - [`cli`]: runs a command with the record as JSON on stdin.

pub(crate) mod cli;
pub(crate) mod file;
pub(crate) mod http;

use crate::error::PluginError;
use crate::job::FailureRecord;
use crate::worker::JobContext;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Receives the record of each job that failed for good.
pub trait FailureHandler: Send {
    /// Handles one record.
    ///
    /// # Errors
    /// A message; it is logged and the next handler still runs.
    fn handle(&mut self, record: &FailureRecord) -> Result<(), String>;

    /// Told once, after it is built from the config, which environment
    /// variables hold secrets (named by `*_env` options): a handler that
    /// starts processes keeps them out of their environment.
    fn hide_env(&mut self, _names: &crate::worker::SecretEnv) {}

    /// Handles one record on the service's handler thread, where `ctx`
    /// carries the shutdown deadline. The default calls [`Self::handle`];
    /// a handler that can block for long should heed `ctx`.
    ///
    /// # Errors
    /// As [`Self::handle`].
    fn handle_within(
        &mut self,
        record: &FailureRecord,
        ctx: &HandlerContext,
    ) -> Result<(), String> {
        let _ = ctx;
        self.handle(record)
    }
}

/// A failure handler type that can be named in `failure_handlers:`: its
/// options as written beside `type` and `name`, deserialized by serde.
pub trait FailureHandlerType: DeserializeOwned + schemars::JsonSchema + 'static {
    /// The `type:` name in the config.
    const TYPE: &'static str;
    /// One line for `goworker options`.
    const DESCRIPTION: &'static str;

    /// Validates the options and builds the handler; must not open files
    /// or connect (`goworker check` calls it).
    ///
    /// # Errors
    /// A [`PluginError`] naming the offending option.
    fn build(self, name: &str) -> Result<Box<dyn FailureHandler>, PluginError>;
}

/// What a handler learns while it handles one record: the shutdown
/// deadline once shutdown has begun, and a hook to register a child
/// process group so that the deadline can kill it.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    shared: Arc<Shared>,
}

impl Default for HandlerContext {
    /// A context that is never aborted (handlers used on their own).
    fn default() -> HandlerContext {
        HandlerContext {
            shared: Arc::new(Shared::new()),
        }
    }
}

impl HandlerContext {
    /// When the service's shutdown deadline falls, once shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.deadline.lock().ok().and_then(|d| *d)
    }

    /// Time left before the shutdown deadline: `None` while not shutting down.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the shutdown deadline has passed: give up as soon as you can.
    pub fn is_aborted(&self) -> bool {
        self.shared.abort.is_aborted() || self.remaining().is_some_and(|r| r.is_zero())
    }

    /// Sleeps for `d`, or less when the shutdown deadline passes first.
    pub fn sleep(&self, d: Duration) {
        let until = Instant::now().checked_add(d);
        loop {
            let now = Instant::now();
            let left = until.map_or(SLICE, |u| u.saturating_duration_since(now));
            if left.is_zero() || self.is_aborted() {
                return;
            }
            let mut step = left.min(SLICE);
            if let Some(r) = self.remaining() {
                step = step.min(r);
            }
            std::thread::sleep(step);
        }
    }

    /// Registers the process group a handler's child runs in (`None` when it
    /// has ended), so that the deadline kills it.
    pub fn set_process_group(&self, pgid: Option<i32>) {
        self.shared.abort.set_process_group(pgid);
    }
}

/// How often a sleeping handler looks at the shutdown clock.
const SLICE: Duration = Duration::from_millis(50);

/// State shared by the manager (which sends records and starts the
/// shutdown clock), the handler thread and the waiter that enforces the
/// deadline.
#[derive(Debug)]
struct Shared {
    deadline: Mutex<Option<Instant>>,
    abort: JobContext,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            deadline: Mutex::new(None),
            abort: JobContext::new(None, 0),
        }
    }
}

/// The sending end of the bounded queue in front of the handler thread.
///
/// The dead-letter record is stored before a record is queued, so a full
/// queue costs only the handlers' notice: the record is counted in
/// `skipped` (`failure_handlers_skipped` in /stats,
/// `goworker_failure_handler_skipped_total` in /metrics) and the manager
/// never waits.
#[derive(Debug, Clone)]
pub(crate) struct FailureQueue {
    tx: Sender<FailureRecord>,
    shared: Arc<Shared>,
    skipped: Arc<AtomicU64>,
}

/// The handler thread's end of the queue.
pub(crate) struct HandlerThread {
    rx: Receiver<FailureRecord>,
    ctx: HandlerContext,
    skipped: Arc<AtomicU64>,
}

#[cfg(test)]
impl HandlerThread {
    /// A queued record, for tests that read the queue themselves.
    pub(crate) fn try_recv(&self) -> Option<FailureRecord> {
        self.rx.try_recv().ok()
    }

    /// Records queued.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }
}

/// Creates the queue; `skipped` is the counter the stats report.
pub(crate) fn queue(capacity: usize, skipped: Arc<AtomicU64>) -> (FailureQueue, HandlerThread) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let shared = Arc::new(Shared::new());
    (
        FailureQueue {
            tx,
            shared: shared.clone(),
            skipped: skipped.clone(),
        },
        HandlerThread {
            rx,
            ctx: HandlerContext { shared },
            skipped,
        },
    )
}

impl FailureQueue {
    /// Queues a record for the handlers without waiting; returns false when
    /// the queue was full (the record is counted as skipped) or closed.
    pub(crate) fn send(&self, record: FailureRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(r)) => {
                let n = self
                    .skipped
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                // The first, then one line per thousand: a flood of failures
                // must not become a flood of log lines.
                if n == 1 || n.is_multiple_of(1000) {
                    log::warn!(
                        "failure handler queue full ({} records): job {} skipped the handlers ({n} so far); its dead-letter record is stored",
                        self.tx.capacity().unwrap_or(0),
                        r.id.as_deref().unwrap_or("-"),
                    );
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Starts the handlers' share of the shutdown clock: they get what is
    /// left of the running jobs' deadline, never one of their own.
    pub(crate) fn begin_shutdown(&self, deadline: Instant) {
        if let Ok(mut d) = self.shared.deadline.lock() {
            d.get_or_insert(deadline);
        }
    }
}

impl HandlerThread {
    /// Runs every record through every handler until the queue closes. Once
    /// the shutdown deadline has passed, the records still queued are
    /// counted as skipped instead (they are in the dead-letter store).
    pub(crate) fn run(self, mut handlers: Vec<crate::config::HandlerConfig>) {
        let mut late = 0u64;
        for record in &self.rx {
            if self.ctx.is_aborted() {
                late = late.saturating_add(1);
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            for h in &mut handlers {
                if self.ctx.is_aborted() {
                    break;
                }
                if let Err(e) = h.handler.handle_within(&record, &self.ctx) {
                    log::error!(
                        "failure handler {}: job {}: {e}",
                        h.name,
                        record.id.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        if late > 0 {
            log::warn!(
                "shutdown deadline passed: {late} failure record(s) skipped the handlers; their dead-letter records are stored"
            );
        }
    }

    /// The waiter's handle on the deadline, kept apart from the thread.
    pub(crate) fn waiter(&self) -> HandlerContext {
        self.ctx.clone()
    }
}

impl HandlerContext {
    /// Kills the registered child and makes the handlers give up.
    pub(crate) fn abort(&self) {
        self.shared.abort.abort.abort();
    }
}
