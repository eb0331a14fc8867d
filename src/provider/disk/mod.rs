//! The `disk` provider: a durable job queue embedded in one redb file, so
//! that the default configuration keeps jobs across crashes with no
//! external service (GoWorker kept them in a bolt database).
//!
//! - [`db`]: the tables — pending by (due time, sequence), so `run_at` and
//!   retry back-off are native; in-flight; dead letters — and their
//!   transactions.
//! - [`writer`]: the thread that commits submissions and settlements in
//!   batches, and the [`JobStore`] other providers put jobs through.
//! - [`admin`]: `goworker enqueue` / `goworker dead` on a stopped service.
//!
//! The fetch loop moves one batch of due jobs from pending to in-flight per
//! write transaction and sleeps until the next job is due or a new one
//! arrives. At open, in-flight jobs left by a crash go back to pending.

mod admin;
mod db;
mod writer;

use super::{
    Acker, DeadLetters, Delivery, Enqueue, JobStore, Provider, ProviderContext, ProviderType,
};
use crate::error::Error;
use crate::error::PluginError;
use crate::job::{FailureRecord, Job, Report};
use crossbeam_channel::Receiver;
use db::{Change, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use writer::{DiskStore, Op, Shared};

/// When commits reach the disk.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityLevel {
    /// fsync on every commit: a job acknowledged to its submitter survives
    /// a power loss.
    Immediate,
    /// Commits are written without fsync: they survive a crash of goworker
    /// (`kill -9`) but may be lost on a power loss or kernel crash.
    Eventual,
}

/// Options of the `disk` provider type.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DiskOptions {
    /// The queue's database file (required); its directory is created when missing.
    pub path: Option<PathBuf>,
    /// `immediate` (default: fsync on every commit) or `eventual` (no fsync; survives a crash of goworker, not a power loss).
    pub durability: DurabilityLevel,
    /// Jobs moved to in-flight per fetch transaction, and settlements committed per transaction. Default 256.
    pub batch: usize,
    /// Dead letters kept; the oldest are deleted beyond it. 0 = unlimited. Default 100000.
    pub dead_letter_max: u64,
}

impl Default for DiskOptions {
    fn default() -> DiskOptions {
        DiskOptions {
            path: None,
            durability: DurabilityLevel::Immediate,
            batch: 256,
            dead_letter_max: 100_000,
        }
    }
}

impl ProviderType for DiskOptions {
    const TYPE: &'static str = "disk";
    const DESCRIPTION: &'static str =
        "a durable job queue embedded in one redb file (run_at, durable retries, dead letters)";

    fn build(self, name: &str) -> Result<Box<dyn Provider>, PluginError> {
        Ok(Box::new(DiskProvider::new(name, self)?))
    }
}

/// A `disk` queue; give it to [`crate::ServiceBuilder::provider`], or let
/// the config build it.
pub struct DiskProvider {
    shared: Arc<Shared>,
    ops: Option<Receiver<Op>>,
    wake: Receiver<()>,
    writer: Option<JoinHandle<()>>,
    admin: admin::Admin,
}

impl std::fmt::Debug for DiskProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskProvider")
            .field("name", &self.shared.name)
            .field("path", &self.shared.store.path())
            .finish()
    }
}

impl DiskProvider {
    /// Validates the options; opens nothing yet.
    ///
    /// # Errors
    /// A message naming the offending option.
    pub fn new(name: &str, o: DiskOptions) -> Result<DiskProvider, String> {
        let path = o
            .path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or("path: required (the queue's database file)")?;
        if o.batch == 0 {
            return Err("batch: must be at least 1".into());
        }
        let durability = match o.durability {
            DurabilityLevel::Immediate => redb::Durability::Immediate,
            DurabilityLevel::Eventual => redb::Durability::Eventual,
        };
        let (ops_tx, ops_rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            store: Store::new(path, durability, o.dead_letter_max),
            ops: ops_tx,
            wake: wake_tx,
            batch: o.batch,
            open: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        Ok(DiskProvider {
            admin: admin::Admin::new(shared.clone()),
            shared,
            ops: Some(ops_rx),
            wake: wake_rx,
            writer: None,
        })
    }

    /// Commits what is queued, stops the writer thread and closes the file.
    fn stop_writer(&mut self) {
        if let Some(h) = self.writer.take() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if self.shared.ops.send(Op::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
            let _ = self.shared.ops.send(Op::Stop);
            let _ = h.join();
        }
        self.shared.store.close();
    }

    fn provider_error(&self, message: impl Into<String>) -> Error {
        Error::provider(&self.shared.name, message)
    }

    /// Sends one fetched batch; what cannot be sent (shutdown) is released.
    fn deliver(&self, ctx: &ProviderContext, jobs: Vec<(u64, Vec<u8>)>) {
        let mut jobs = jobs.into_iter();
        for (seq, raw) in jobs.by_ref() {
            let acker = Box::new(DiskAcker {
                seq,
                shared: self.shared.clone(),
            });
            if let Err(d) = ctx.send(Delivery::parse(&raw, acker)) {
                d.release();
                break;
            }
        }
        for (seq, _) in jobs {
            self.shared.settle(Change::Release(seq));
        }
    }

    /// Waits until `next_due`, a wake-up, or at most half a second (to
    /// notice shutdown).
    fn sleep(&self, ctx: &ProviderContext, next_due: Option<u64>) {
        let cap = Duration::from_millis(500);
        let wait = next_due.map_or(cap, |d| {
            Duration::from_micros(d.saturating_sub(db::now_micros())).min(cap)
        });
        if wait.is_zero() {
            return;
        }
        // A put, shutdown, or the next due time, whichever comes first.
        crossbeam_channel::select! {
            recv(self.wake) -> _ => {},
            recv(ctx.stop_signal()) -> _ => {},
            default(wait) => {},
        }
    }
}

impl Provider for DiskProvider {
    fn open(&mut self, _ctx: &ProviderContext) -> Result<(), Error> {
        let s = &self.shared;
        s.store.open().map_err(|e| self.provider_error(e))?;
        let recovered = s.store.recover().map_err(|e| self.provider_error(e))?;
        if recovered > 0 {
            log::warn!(
                "provider {}: {recovered} job(s) in flight at the last stop returned to pending",
                s.name
            );
        }
        let next_seq = s.store.next_seq().map_err(|e| self.provider_error(e))?;
        let Some(rx) = self.ops.take() else {
            return Err(self.provider_error("opened twice"));
        };
        let shared = s.clone();
        let handle = std::thread::Builder::new()
            .name(format!("goworker-disk-writer-{}", s.name))
            .spawn(move || writer::run(shared, rx, next_seq))
            .map_err(|e| Error::io("spawn disk writer", e))?;
        self.writer = Some(handle);
        s.open.store(true, Ordering::Release);
        if let Ok((p, _, d)) = s.store.counts() {
            log::info!(
                "provider {}: {}: {p} job(s) pending, {d} dead letter(s)",
                s.name,
                s.store.path().display()
            );
        }
        Ok(())
    }

    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        ctx.set_up();
        let mut next_depth = std::time::Instant::now();
        while !ctx.is_stopping() {
            if std::time::Instant::now() >= next_depth {
                // Queue depth for /stats, from one read transaction a second.
                if let Ok((pending, _, _)) = self.shared.store.counts() {
                    ctx.set_queue_depth(pending);
                }
                next_depth = std::time::Instant::now() + std::time::Duration::from_secs(1);
            }
            match self.shared.store.fetch(db::now_micros(), self.shared.batch) {
                Ok(f) => {
                    ctx.set_up();
                    if f.jobs.is_empty() {
                        self.sleep(ctx, f.next_due);
                    } else {
                        self.deliver(ctx, f.jobs);
                    }
                }
                Err(e) => {
                    if ctx.set_down(&e) {
                        log::error!("provider {}: fetch failed: {e}", self.shared.name);
                    }
                    self.sleep(ctx, None);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.stop_writer();
    }

    fn store(&self) -> Option<Arc<dyn JobStore>> {
        Some(Arc::new(DiskStore(self.shared.clone())))
    }

    fn enqueue(&mut self) -> Option<&mut dyn Enqueue> {
        Some(&mut self.admin)
    }

    fn dead_letters(&mut self) -> Option<&mut dyn DeadLetters> {
        Some(&mut self.admin)
    }
}

impl Drop for DiskProvider {
    /// A provider opened but never run (another provider failed to open)
    /// still stops its writer and closes the file.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// Settles one in-flight job through the writer thread; never blocks.
struct DiskAcker {
    seq: u64,
    shared: Arc<Shared>,
}

impl Acker for DiskAcker {
    fn ack(self: Box<Self>, _report: &Report) {
        self.shared.settle(Change::Ack(self.seq));
    }

    fn can_defer(&self) -> bool {
        true
    }

    fn defer(self: Box<Self>, job: &Job, due: SystemTime) {
        let due = db::micros(crate::job::time_to_unix(due));
        self.shared
            .settle(Change::Defer(self.seq, due, job.to_json().into_bytes()));
    }

    fn dead(self: Box<Self>, record: &FailureRecord, _report: &Report) {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        self.shared.settle(Change::Dead(self.seq, bytes));
    }

    fn release(self: Box<Self>, _job: Option<&Job>) {
        self.shared.settle(Change::Release(self.seq));
    }
}
