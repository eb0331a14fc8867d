//! Worker pools: a fixed number of named OS threads, each owning its own
//! worker. A panic is caught and reported as a failed attempt; the thread
//! builds a fresh worker and carries on, so the pool keeps its size.
//! Threads check the draining flag before starting queued work, so at
//! shutdown queued tasks go back un-run.
//!
//! A pool can be resized while it runs (SIGHUP): growing spawns threads;
//! shrinking adds retirement tokens that threads claim before taking work,
//! so surplus threads exit after their current job and nothing queued is
//! lost. A `Retire` message per token wakes threads that wait idle.

use crate::config::PoolConfig;
use crate::job::{Job, Outcome};
use crate::worker::{AbortSlot, JobContext};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// What a pool thread takes from its queue.
// Boxing the task would cost an allocation per job; `Retire` is rare.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Run(Task),
    /// Wakes an idle thread to claim a retirement token, if one is left.
    Retire,
}

/// The abort slots of the pool's live threads, shared with [`Aborter`]s so
/// threads added by a resize can be killed too.
type Slots = Arc<Mutex<Vec<Arc<AbortSlot>>>>;

pub(crate) struct Pool {
    pub(crate) config: PoolConfig,
    tx: Option<Sender<Msg>>,
    slots: Slots,
    threads: Vec<JoinHandle<()>>,
    seed: Seed,
    spawned: usize,
    /// Threads asked to exit that have not yet done so.
    retiring: Arc<AtomicUsize>,
}

/// What a new pool thread is built from.
struct Seed {
    pool: usize,
    capture_limit: usize,
    rx: Receiver<Msg>,
    done: Sender<Done>,
    draining: Arc<AtomicBool>,
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
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(queue);
        let count = config.count;
        let mut pool = Pool {
            config,
            tx: Some(tx),
            slots: Slots::default(),
            threads: Vec::new(),
            seed: Seed {
                pool: index,
                capture_limit,
                rx,
                done,
                draining,
            },
            spawned: 0,
            retiring: Arc::default(),
        };
        for _ in 0..count {
            pool.spawn_thread()?;
        }
        Ok(pool)
    }

    fn spawn_thread(&mut self) -> std::io::Result<()> {
        let slot = Arc::new(AbortSlot::default());
        let t = Thread {
            pool: self.seed.pool,
            spec: self.config.clone(),
            capture_limit: self.seed.capture_limit,
            rx: self.seed.rx.clone(),
            done: self.seed.done.clone(),
            draining: self.seed.draining.clone(),
            slot: slot.clone(),
            slots: self.slots.clone(),
            retiring: self.retiring.clone(),
        };
        let name = format!("goworker-{}-{}", self.config.name, self.spawned);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || t.run())?;
        self.spawned += 1;
        if let Ok(mut s) = self.slots.lock() {
            s.push(slot);
        }
        self.threads.push(handle);
        Ok(())
    }

    /// Changes the number of threads to `count` (at least 1). Growing
    /// spawns threads now; shrinking asks surplus threads to exit once
    /// they finish their current job, so no queued task is lost.
    ///
    /// # Errors
    /// A thread that cannot be spawned; the pool keeps the threads it has.
    pub(crate) fn resize(&mut self, count: usize) -> std::io::Result<()> {
        let count = count.max(1);
        let current = self.config.count;
        self.threads.retain(|t| !t.is_finished());
        if count > current {
            // Threads still due to retire stay instead of new ones.
            let kept = claim_up_to(&self.retiring, count - current);
            self.config.count += kept;
            for _ in self.config.count..count {
                self.spawn_thread()?;
                self.config.count += 1;
            }
        } else if count < current {
            self.retiring.fetch_add(current - count, Ordering::AcqRel);
            self.config.count = count;
            if let Some(tx) = &self.tx {
                // Wakes idle threads. A full queue means every thread is
                // busy and claims its token before taking more work.
                for _ in count..current {
                    let _ = tx.try_send(Msg::Retire);
                }
            }
        }
        Ok(())
    }

    /// Queues a task without blocking.
    #[allow(clippy::result_large_err)] // the task comes back to be kept or released
    pub(crate) fn send(&self, task: Task) -> Result<(), Refused> {
        let Some(tx) = &self.tx else {
            return Err(Refused::Closed(task));
        };
        match tx.try_send(Msg::Run(task)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Run(t))) => Err(Refused::Full(t)),
            Err(TrySendError::Disconnected(Msg::Run(t))) => Err(Refused::Closed(t)),
            // Only tasks are sent here.
            Err(_) => Ok(()),
        }
    }

    /// Kills what every thread is running (shutdown deadline, second signal).
    pub(crate) fn abort(&self) {
        self.aborter().abort();
    }

    /// A handle that kills what the pool runs, usable from any thread.
    pub(crate) fn aborter(&self) -> Aborter {
        Aborter(self.slots.clone())
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
pub(crate) struct Aborter(Slots);

impl Aborter {
    pub(crate) fn abort(&self) {
        if let Ok(slots) = self.0.lock() {
            for s in slots.iter() {
                s.abort();
            }
        }
    }
}

struct Thread {
    pool: usize,
    spec: PoolConfig,
    capture_limit: usize,
    rx: Receiver<Msg>,
    done: Sender<Done>,
    draining: Arc<AtomicBool>,
    slot: Arc<AbortSlot>,
    slots: Slots,
    retiring: Arc<AtomicUsize>,
}

impl Thread {
    fn run(self) {
        let mut worker = self.spec.spec.new_worker();
        loop {
            // Checked before taking work, so a busy thread asked to retire
            // leaves after its current job and never strands a task.
            if claim_up_to(&self.retiring, 1) == 1 {
                return self.retire();
            }
            let task = match self.rx.recv() {
                Ok(Msg::Run(task)) => task,
                // Claimed above on the next turn, unless another thread was
                // quicker.
                Ok(Msg::Retire) => continue,
                Err(_) => return,
            };
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
                    // Nothing the attempt started may run on unwatched.
                    self.slot.clear_after_panic();
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

impl Thread {
    /// Leaves the pool: its slot no longer needs killing.
    fn retire(self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
        }
        log::debug!(
            "pool {}: thread {} retired",
            self.spec.name,
            std::thread::current().name().unwrap_or("?")
        );
    }
}

/// Takes up to `n` from `counter` atomically; returns how many it took.
fn claim_up_to(counter: &AtomicUsize, n: usize) -> usize {
    let mut taken = 0;
    // Returning None when there is nothing to take skips the write, so the
    // per-job check is a plain load.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        taken = c.min(n);
        (taken > 0).then(|| c - taken)
    });
    taken
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retirement_tokens_are_claimed_at_most_once() {
        let tokens = AtomicUsize::new(3);
        assert_eq!(claim_up_to(&tokens, 2), 2);
        assert_eq!(claim_up_to(&tokens, 2), 1);
        assert_eq!(claim_up_to(&tokens, 1), 0);
        assert_eq!(tokens.load(Ordering::Acquire), 0);
    }

    #[test]
    fn concurrent_claims_never_exceed_the_tokens() {
        let tokens = Arc::new(AtomicUsize::new(100));
        let claimed: usize = (0..4)
            .map(|_| {
                let t = tokens.clone();
                std::thread::spawn(move || (0..100).map(|_| claim_up_to(&t, 1)).sum::<usize>())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(claimed, 100);
    }
}
