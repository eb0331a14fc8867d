//! The `memory` provider: an in-process channel. Tests and library users
//! submit jobs through a [`MemoryHandle`] and read every settlement back.
//! It cannot store retries, so the manager's timer heap holds them; dead
//! letters are kept in memory.

use super::{Acker, Delivery, Provider, ProviderContext, ProviderType};
use crate::error::Error;
use crate::error::PluginError;
use crate::job::{FailureRecord, Job, Malformed, Report};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How a job submitted to a memory provider ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Succeeded.
    Succeeded(Report),
    /// Failed for good; the record went to the dead letters.
    Failed(Report, Box<FailureRecord>),
    /// A payload that was not a job, dead-lettered without running.
    Malformed(Box<FailureRecord>),
    /// Handed back un-finished at shutdown (`None`: never parsed).
    Released(Option<Box<Job>>),
}

enum Submission {
    Job(Box<Job>),
    Raw(Vec<u8>),
}

struct Shared {
    dead: Mutex<Vec<FailureRecord>>,
    down: Mutex<Option<String>>,
    settled: Sender<Settled>,
    /// Set once the provider runs: submissions then go straight into the
    /// manager's channel from the submitting thread, with no extra hop.
    ctx: OnceLock<ProviderContext>,
}

/// Options of the `memory` provider type.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MemoryOptions {
    /// Jobs submitted when the service starts (for tests and demos: nothing is durable).
    pub(crate) jobs: Vec<serde_json::Value>,
}

impl ProviderType for MemoryOptions {
    const TYPE: &'static str = "memory";
    const DESCRIPTION: &'static str =
        "in-process queue; runs the jobs listed in its config once (tests, demos; not durable)";

    fn build(self, _name: &str) -> Result<Box<dyn Provider>, PluginError> {
        let (provider, handle) = MemoryProvider::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let raw = serde_json::to_vec(job).map_err(|e| format!("jobs[{i}]: {e}"))?;
            handle
                .submit_raw(raw)
                .map_err(|e| format!("jobs[{i}]: {e}"))?;
        }
        Ok(Box::new(provider))
    }
}

/// The provider half; give it to [`crate::ServiceBuilder::provider`].
pub struct MemoryProvider {
    inbox: Receiver<Submission>,
    shared: Arc<Shared>,
}

/// The caller's half: submit jobs, read how they ended.
#[derive(Clone)]
pub struct MemoryHandle {
    inbox: Sender<Submission>,
    settled: Receiver<Settled>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryProvider")
    }
}

impl std::fmt::Debug for MemoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryHandle")
    }
}

impl MemoryProvider {
    /// A provider and its handle. Submissions queue without bound until the
    /// service starts.
    pub fn new() -> (MemoryProvider, MemoryHandle) {
        let (in_tx, in_rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            dead: Mutex::default(),
            down: Mutex::default(),
            settled: out_tx,
            ctx: OnceLock::new(),
        });
        (
            MemoryProvider {
                inbox: in_rx,
                shared: shared.clone(),
            },
            MemoryHandle {
                inbox: in_tx,
                settled: out_rx,
                shared,
            },
        )
    }

    fn deliver(&self, ctx: &ProviderContext, s: Submission) -> Result<(), ()> {
        deliver(&self.shared, ctx, s)
    }

    fn apply_health(&self, ctx: &ProviderContext) {
        let down = self.shared.down.lock().ok().and_then(|d| d.clone());
        match down {
            Some(reason) => ctx.set_down(&reason),
            None => ctx.set_up(),
        };
    }
}

fn deliver(shared: &Arc<Shared>, ctx: &ProviderContext, s: Submission) -> Result<(), ()> {
    let payload = match s {
        Submission::Job(job) => Ok(*job),
        Submission::Raw(raw) => Job::parse(&raw),
    };
    deliver_payload(shared, ctx, payload)
}

fn deliver_payload(
    shared: &Arc<Shared>,
    ctx: &ProviderContext,
    payload: Result<Job, Malformed>,
) -> Result<(), ()> {
    let acker = Box::new(MemoryAcker {
        shared: shared.clone(),
    });
    ctx.send(Delivery::new(payload, acker))
        .map_err(Delivery::release)
}

impl Provider for MemoryProvider {
    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        self.apply_health(ctx);
        let _ = self.shared.ctx.set(ctx.clone());
        while !ctx.is_stopping() {
            match self.inbox.recv_timeout(Duration::from_millis(100)) {
                Ok(s) => {
                    if self.deliver(ctx, s).is_err() {
                        break;
                    }
                    while let Ok(s) = self.inbox.try_recv() {
                        if self.deliver(ctx, s).is_err() {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.apply_health(ctx),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }
}

impl MemoryHandle {
    /// Submits a job; returns its id.
    ///
    /// # Errors
    /// When the provider is gone.
    pub fn submit(&self, job: Job) -> Result<String, Error> {
        let id = job.id.clone();
        match self.shared.ctx.get() {
            // Running: straight into the manager's channel, without boxing
            // the job for the inbox.
            Some(ctx) => {
                deliver_payload(&self.shared, ctx, Ok(job)).map_err(|()| Error::ShuttingDown)?
            }
            None => self.send(Submission::Job(Box::new(job)))?,
        }
        Ok(id)
    }

    fn send(&self, s: Submission) -> Result<(), Error> {
        match self.shared.ctx.get() {
            Some(ctx) => deliver(&self.shared, ctx, s).map_err(|()| Error::ShuttingDown),
            None => self.inbox.send(s).map_err(|_| Error::ShuttingDown),
        }
    }

    /// Submits a raw payload, parsed as a producer's JSON would be.
    ///
    /// # Errors
    /// When the provider is gone.
    pub fn submit_raw(&self, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.send(Submission::Raw(payload.into()))
    }

    /// Every settlement, in the order the manager made them.
    pub fn settled(&self) -> &Receiver<Settled> {
        &self.settled
    }

    /// The dead-letter records so far.
    pub fn dead_letters(&self) -> Vec<FailureRecord> {
        self.shared
            .dead
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Marks the provider down (`Some(reason)`) or up (`None`), as a lost
    /// connection would; it shows in `/healthz` within 100 ms.
    pub fn set_down(&self, reason: Option<&str>) {
        if let Ok(mut d) = self.shared.down.lock() {
            *d = reason.map(str::to_string);
        }
    }
}

struct MemoryAcker {
    shared: Arc<Shared>,
}

impl Acker for MemoryAcker {
    fn ack(self: Box<Self>, report: &Report) {
        let _ = self.shared.settled.send(Settled::Succeeded(report.clone()));
    }

    fn dead(self: Box<Self>, record: &FailureRecord, report: &Report) {
        if let Ok(mut d) = self.shared.dead.lock() {
            d.push(record.clone());
        }
        let settled = if record.raw.is_some() {
            Settled::Malformed(Box::new(record.clone()))
        } else {
            Settled::Failed(report.clone(), Box::new(record.clone()))
        };
        let _ = self.shared.settled.send(settled);
    }

    fn release(self: Box<Self>, job: Option<&Job>) {
        let _ = self
            .shared
            .settled
            .send(Settled::Released(job.map(|j| Box::new(j.clone()))));
    }
}
