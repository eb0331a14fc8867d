//! Worker pools: a fixed number of named OS threads, each owning its own
//! worker. A panic is caught and reported as a failed attempt; the thread
//! builds a fresh worker and carries on, so the pool keeps its size.
//! Threads check the draining flag before starting queued work, so at
//! shutdown queued tasks go back un-run.

use crate::config::PoolConfig;
use crate::job::{Job, Outcome};
use crate::worker::{AbortSlot, JobContext};
use crossbeam_channel::{Receiver, Sender};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job on its way to a pool thread.
pub(crate) struct Task {
    pub(crate) key: usize,
    pub(crate) job: Job,
}

/// An attempt's result on its way back to the manager.
pub(crate) struct Done {
    pub(crate) pool: usize,
    pub(crate) key: usize,
    pub(crate) job: Job,
    /// `None` when the task was handed back un-run (draining).
    pub(crate) outcome: Option<Outcome>,
    pub(crate) duration: Duration,
}

/// Why a pool did not take a task.
pub(crate) enum Refused {
    /// Its queue is full: keep the task and try again after an outcome.
    Full(Task),
    /// It is closed (shutdown): release the task.
    Closed(Task),
}

pub(crate) struct Pool {
    pub(crate) config: PoolConfig,
    tx: Option<Sender<Task>>,
    slots: Vec<Arc<AbortSlot>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(crate) fn start(
        index: usize,
        config: PoolConfig,
        queue: usize,
        capture_limit: usize,
        done: Sender<Done>,
        draining: Arc<AtomicBool>,
    ) -> std::io::Result<Pool> {
        // Bounded, so tasks live in preallocated slots; the manager keeps
        // what does not fit in its own backlog and never blocks here.
        let (tx, rx) = crossbeam_channel::bounded::<Task>(queue);
        let mut pool = Pool {
            config,
            tx: Some(tx),
            slots: Vec::new(),
            threads: Vec::new(),
        };
        for n in 0..pool.config.count {
            let slot = Arc::new(AbortSlot::default());
            let t = Thread {
                pool: index,
                spec: pool.config.clone(),
                capture_limit,
                rx: rx.clone(),
                done: done.clone(),
                draining: draining.clone(),
                slot: slot.clone(),
            };
            let name = format!("goworker-{}-{n}", pool.config.name);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || t.run())?;
            pool.slots.push(slot);
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues a task without blocking.
    #[allow(clippy::result_large_err)] // the task comes back to be kept or released
    pub(crate) fn send(&self, task: Task) -> Result<(), Refused> {
        match &self.tx {
            Some(tx) => tx.try_send(task).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(t) => Refused::Full(t),
                crossbeam_channel::TrySendError::Disconnected(t) => Refused::Closed(t),
            }),
            None => Err(Refused::Closed(task)),
        }
    }

    /// Kills what every thread is running (shutdown deadline, second signal).
    pub(crate) fn abort(&self) {
        self.aborter().abort();
    }

    /// A handle that kills what the pool runs, usable from any thread.
    pub(crate) fn aborter(&self) -> Aborter {
        Aborter(Arc::new(self.slots.clone()))
    }

    /// Closes the queue: threads finish what they hold, then exit.
    pub(crate) fn close(&mut self) {
        self.tx = None;
    }

    /// Joins the threads (after `close`).
    pub(crate) fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Kills what one pool's threads are running.
#[derive(Debug, Clone)]
pub(crate) struct Aborter(Arc<Vec<Arc<AbortSlot>>>);

impl Aborter {
    pub(crate) fn abort(&self) {
        for s in self.0.iter() {
            s.abort();
        }
    }
}

struct Thread {
    pool: usize,
    spec: PoolConfig,
    capture_limit: usize,
    rx: Receiver<Task>,
    done: Sender<Done>,
    draining: Arc<AtomicBool>,
    slot: Arc<AbortSlot>,
}

impl Thread {
    fn run(self) {
        let mut worker = self.spec.spec.new_worker();
        while let Ok(task) = self.rx.recv() {
            if self.draining.load(Ordering::Acquire) {
                let d = Done {
                    pool: self.pool,
                    key: task.key,
                    job: task.job,
                    outcome: None,
                    duration: Duration::ZERO,
                };
                if self.done.send(d).is_err() {
                    return;
                }
                continue;
            }
            let ctx = JobContext {
                timeout: task.job.timeout.or(self.spec.timeout),
                capture_limit: self.capture_limit,
                attempt: task.job.attempts,
                abort: self.slot.clone(),
            };
            let started = Instant::now();
            let outcome = match catch_unwind(AssertUnwindSafe(|| worker.run(&task.job, &ctx))) {
                Ok(o) => o,
                Err(panic) => {
                    // The worker's state may be broken: start afresh.
                    worker = self.spec.spec.new_worker();
                    Outcome::failed(format!("worker panicked: {}", panic_message(&panic)))
                }
            };
            let d = Done {
                pool: self.pool,
                key: task.key,
                job: task.job,
                outcome: Some(outcome),
                duration: started.elapsed(),
            };
            if self.done.send(d).is_err() {
                return;
            }
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
