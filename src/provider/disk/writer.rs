//! The writer thread: every change to the queue except fetching goes
//! through it, so that acknowledgements from the manager (which must not
//! block) and concurrent submissions share one transaction, and one fsync,
//! per batch (group commit).

use super::db::{Change, Store};
use crate::error::Error;
use crate::job::Job;
use crate::provider::JobStore;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the writer is asked to do.
pub(super) enum Op {
    /// Commit this change; new jobs carry a reply for their submitter.
    Change(Change, Option<Reply>),
    /// Reply once everything sent before is committed (or given up).
    Flush(Sender<()>),
    /// Commit what is queued, then exit.
    Stop,
}

/// State shared by the provider, its ackers, its job store and the writer.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) store: Store,
    pub(super) ops: Sender<Op>,
    /// Wakes the fetch loop when jobs were added to pending.
    pub(super) wake: Sender<()>,
    pub(super) batch: usize,
    /// The writer thread runs (set at open).
    pub(super) open: AtomicBool,
    /// The writer thread exited: nothing sent is committed any more.
    pub(super) gone: AtomicBool,
}

impl Shared {
    pub(super) fn wake(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// Sends a settlement to the writer; never blocks.
    pub(super) fn settle(&self, change: Change) {
        if self.ops.send(Op::Change(change, None)).is_err() {
            log::error!(
                "provider {}: writer gone; a settlement was not stored (the job runs again after restart)",
                self.name
            );
        }
    }
}

/// The writer loop; returns after [`Op::Stop`].
pub(super) fn run(shared: Arc<Shared>, rx: Receiver<Op>, next_seq: u64) {
    let mut w = Writer {
        shared,
        next_seq,
        carry: Vec::new(),
        failing: false,
    };
    let mut stop = false;
    while !stop {
        let first = if w.carry.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            }
        } else {
            // Settlements failed to commit: try again soon.
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        let mut batch = Batch::default();
        let mut units = 0;
        let mut next = first;
        while let Some(op) = next {
            match op {
                Op::Change(c, reply) => {
                    units += match &c {
                        Change::Put(jobs) => jobs.len(),
                        _ => 1,
                    };
                    batch.changes.push((c, reply));
                }
                Op::Flush(r) => batch.flushes.push(r),
                Op::Stop => stop = true,
            }
            if units >= w.shared.batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        if stop {
            // Take everything still queued into the last commits.
            while let Ok(op) = rx.try_recv() {
                match op {
                    Op::Change(c, reply) => batch.changes.push((c, reply)),
                    Op::Flush(r) => batch.flushes.push(r),
                    Op::Stop => {}
                }
            }
        }
        w.commit(batch, stop);
    }
    w.shared.gone.store(true, Ordering::Release);
    drop(rx);
    if !w.carry.is_empty() {
        log::error!(
            "provider {}: {} settlement(s) could not be stored; those jobs run again after restart",
            w.shared.name,
            w.carry.len()
        );
    }
}

/// Where a submitter waits for its commit.
type Reply = Sender<Result<(), String>>;

#[derive(Default)]
struct Batch {
    changes: Vec<(Change, Option<Reply>)>,
    flushes: Vec<Sender<()>>,
}

struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    /// Settlements whose commit failed, retried with the next batch.
    carry: Vec<Change>,
    failing: bool,
}

impl Writer {
    fn commit(&mut self, batch: Batch, last: bool) {
        let mut changes: Vec<Change> = std::mem::take(&mut self.carry);
        let mut replies = Vec::new();
        let mut wake = false;
        for (c, reply) in batch.changes {
            wake |= matches!(c, Change::Put(_) | Change::Defer(..) | Change::Release(_));
            changes.push(c);
            if let Some(r) = reply {
                replies.push(r);
            }
        }
        if changes.is_empty() {
            return reply_all(&batch.flushes);
        }
        let attempts = if last { 3 } else { 1 };
        let mut result = self.try_commit(&changes);
        for _ in 1..attempts {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            result = self.try_commit(&changes);
        }
        match result {
            Ok(()) => {
                log::debug!(
                    "provider {}: committed {} change(s)",
                    self.shared.name,
                    changes.len()
                );
                for r in replies {
                    let _ = r.send(Ok(()));
                }
                if wake {
                    self.shared.wake();
                }
            }
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
                // New jobs were refused (their submitters were told);
                // settlements stay queued and are tried again.
                changes.retain(|c| !matches!(c, Change::Put(_)));
                self.carry = changes;
                if wake {
                    self.shared.wake();
                }
            }
        }
        reply_all(&batch.flushes);
    }

    fn try_commit(&mut self, changes: &[Change]) -> Result<(), String> {
        let r = self.shared.store.commit(changes, &mut self.next_seq);
        match &r {
            Ok(()) if self.failing => {
                self.failing = false;
                log::info!(
                    "provider {}: {}: writes succeed again",
                    self.shared.name,
                    self.shared.store.path().display()
                );
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::error!(
                    "provider {}: {}: commit failed: {e}",
                    self.shared.name,
                    self.shared.store.path().display()
                );
            }
            _ => {}
        }
        r
    }
}

fn reply_all(flushes: &[Sender<()>]) {
    for f in flushes {
        let _ = f.send(());
    }
}

/// The queue's [`JobStore`]: the HTTP provider puts jobs through it.
pub(super) struct DiskStore(pub(super) Arc<Shared>);

impl JobStore for DiskStore {
    fn put(&self, jobs: &[Job]) -> Result<(), Error> {
        let s = &self.0;
        if jobs.is_empty() {
            return Ok(());
        }
        if !s.open.load(Ordering::Acquire) || s.gone.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let now = super::db::now_micros();
        let rows: Vec<(u64, Vec<u8>)> = jobs
            .iter()
            .map(|j| {
                let due = j.run_at.map_or(now, super::db::micros);
                (due, j.to_json().into_bytes())
            })
            .collect();
        let bytes = rows
            .iter()
            .map(|(_, j): &(u64, Vec<u8>)| j.len() as u64)
            .sum();
        s.store
            .check_room(bytes)
            .map_err(|e| Error::provider(&s.name, e))?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        if s.ops.send(Op::Change(Change::Put(rows), Some(tx))).is_err() {
            return Err(Error::ShuttingDown);
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(Error::provider(&s.name, e)),
                Err(RecvTimeoutError::Disconnected) => return Err(Error::ShuttingDown),
                Err(RecvTimeoutError::Timeout) if s.gone.load(Ordering::Acquire) => {
                    // The writer exited; it replied to all it took.
                    return match rx.try_recv() {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Error::provider(&s.name, e)),
                        Err(_) => Err(Error::ShuttingDown),
                    };
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
