//! Providers bring jobs in. Each runs on its own thread, blocks on its
//! source, and sends [`Delivery`]s into the one bounded channel the manager
//! reads; a full channel blocks it, which is the back-pressure.
//!
//! Acknowledgement belongs to the provider: every delivery carries an
//! [`Acker`], and the manager tells it exactly once how the job ended.
//!
//! - [`memory`]: an in-process channel, for tests and library users.
//! - [`http`]: jobs submitted over HTTP (`POST /job/add`, `/jobs`).
//! - [`disk`]: a durable queue embedded in a redb file.
//! - [`redis`]: reliable fetch from redis lists, shared by many processes.

pub(crate) mod disk;
pub(crate) mod http;
pub(crate) mod memory;
pub(crate) mod redis;

use crate::error::Error;
use crate::error::PluginError;
use crate::job::{FailureRecord, Job, Malformed, Report};
use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A job source, run on its own thread by the service.
pub trait Provider: Send + 'static {
    /// Called on the starting thread before any provider runs: open files,
    /// bind sockets. A failure stops start-up (exit code 2 from the binary),
    /// so check here what must never be silently replaced (a corrupt
    /// database). Sources that may come and go (redis) connect in `run`.
    ///
    /// # Errors
    /// When the provider cannot work at all.
    fn open(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }

    /// The fetch loop. Send deliveries with [`ProviderContext::send`] and
    /// return once [`ProviderContext::is_stopping`] is true (check at least
    /// every second). Report the source's state with `set_up`/`set_down`.
    ///
    /// # Errors
    /// A failure that makes the provider unusable; it is logged, the
    /// provider is marked down, and the service shuts down.
    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error>;

    /// Called on the provider's thread after the manager has settled every
    /// delivery (acked, deferred, dead-lettered or released): flush pending
    /// acknowledgements and close connections here.
    fn finish(&mut self) {}

    /// Capability *store jobs*: a durable store other providers may put
    /// jobs into (`store:` of the HTTP provider). Called once, before `run`.
    fn store(&self) -> Option<Arc<dyn JobStore>> {
        None
    }

    /// The provider whose [`Provider::store`] this one puts the jobs it
    /// takes into (the HTTP provider's `store:`). The config checks that it
    /// names a provider offering a store, and `goworker enqueue` aimed at
    /// that provider goes through this one while the service runs.
    fn stores_into(&self) -> Option<&str> {
        None
    }

    /// The configured rate limit in jobs per second (0 = unlimited), for
    /// providers that have one. On SIGHUP the binary reads it from the
    /// re-read config and hands a changed value to the running provider
    /// through [`ProviderContext::rate_limit`].
    fn rate_limit(&self) -> Option<f64> {
        None
    }

    /// Capability *take submissions*: `goworker enqueue` through this
    /// provider, from another process than the service.
    fn enqueue(&mut self) -> Option<&mut dyn Enqueue> {
        None
    }

    /// Capability *keep dead letters*: the `goworker dead` commands.
    fn dead_letters(&mut self) -> Option<&mut dyn DeadLetters> {
        None
    }
}

/// A provider type that can be named in the config's `providers:` list:
/// its options as written beside `type` and `name`, deserialized by serde
/// (use `#[serde(deny_unknown_fields)]` and doc comments: `goworker
/// options` prints the schema).
pub trait ProviderType: DeserializeOwned + schemars::JsonSchema + 'static {
    /// The `type:` name in the config.
    const TYPE: &'static str;
    /// One line for `goworker options`.
    const DESCRIPTION: &'static str;

    /// Validates the options and builds the provider. Must not connect,
    /// open files or bind sockets: `goworker check` calls it too.
    ///
    /// # Errors
    /// A [`PluginError`] naming the offending option.
    fn build(self, name: &str) -> Result<Box<dyn Provider>, PluginError>;
}

/// Stores jobs durably on behalf of another provider.
pub trait JobStore: Send + Sync {
    /// Stores the jobs, all or none; returns once they are durable.
    ///
    /// # Errors
    /// When the jobs could not be stored (disk full, I/O error); then none
    /// of them was stored.
    fn put(&self, jobs: &[Job]) -> Result<(), Error>;
}

/// Takes jobs submitted from outside the service (`goworker enqueue`).
pub trait Enqueue {
    /// Submits one raw job payload; returns the job id.
    ///
    /// # Errors
    /// When the payload is not a job or the source cannot be reached.
    fn enqueue(&mut self, payload: &[u8]) -> Result<String, Error>;
}

/// Keeps the records of jobs that failed for good (`goworker dead`).
pub trait DeadLetters {
    /// Dead-letter records, newest first.
    ///
    /// # Errors
    /// When the source cannot be read.
    fn list(&mut self) -> Result<Vec<FailureRecord>, Error>;
    /// Re-queues the dead letter with this job id, or all of them; returns
    /// how many were re-queued.
    ///
    /// # Errors
    /// When the source cannot be written, or no record has that id.
    fn retry(&mut self, id: Option<&str>) -> Result<usize, Error>;
    /// Deletes every dead letter; returns how many.
    ///
    /// # Errors
    /// When the source cannot be written.
    fn purge(&mut self) -> Result<usize, Error>;
}

/// Told how a delivered job ended: exactly one method is called, once.
///
/// Methods run on the manager thread: they must not block (hand the work to
/// the provider's own thread, e.g. through a channel).
pub trait Acker: Send + 'static {
    /// The job succeeded: remove it from the source.
    fn ack(self: Box<Self>, report: &Report);

    /// Whether [`Acker::defer`] stores jobs durably. When false the manager
    /// keeps deferred jobs in its own timer heap.
    fn can_defer(&self) -> bool {
        false
    }

    /// Store `job` (with its updated attempt count) to run again at `due`,
    /// atomically with removing the delivered copy. Only called when
    /// `can_defer` is true.
    fn defer(self: Box<Self>, job: &Job, due: SystemTime) {
        let _ = (job, due);
    }

    /// The job failed for good: store the dead-letter record.
    fn dead(self: Box<Self>, record: &FailureRecord, report: &Report);

    /// The job did not finish (shutdown): hand it back to the source
    /// un-acked so it runs again. `job` is `None` for a payload that was
    /// never parsed.
    fn release(self: Box<Self>, job: Option<&Job>);
}

/// One job on its way from a provider to the manager.
pub struct Delivery {
    pub(crate) payload: Result<Job, Malformed>,
    pub(crate) acker: Box<dyn Acker>,
    pub(crate) provider: usize,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("payload", &self.payload)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Delivery {
    /// A delivery of a parsed job or a malformed payload.
    pub fn new(payload: Result<Job, Malformed>, acker: Box<dyn Acker>) -> Delivery {
        Delivery {
            payload,
            acker,
            provider: 0,
        }
    }

    /// Parses `raw` and wraps it.
    pub fn parse(raw: &[u8], acker: Box<dyn Acker>) -> Delivery {
        Delivery::new(Job::parse(raw), acker)
    }

    /// Takes the parts back, e.g. to release a delivery that could not be sent.
    pub fn into_parts(self) -> (Result<Job, Malformed>, Box<dyn Acker>) {
        (self.payload, self.acker)
    }

    /// Hands the delivery back to its source un-acked.
    pub fn release(self) {
        let job = self.payload.as_ref().ok();
        self.acker.release(job);
    }
}

/// A provider's connection state, shown by `/healthz` and `/stats`.
#[derive(Debug)]
pub struct Health {
    name: String,
    up: AtomicBool,
    reason: Mutex<String>,
    /// Jobs waiting at the source; -1 while unknown.
    depth: AtomicI64,
    /// Jobs waiting by queue, for providers with several.
    depths: Mutex<Vec<(String, u64)>>,
    /// A rate limit set on reload (f64 bits); `NO_RATE` while none.
    rate: AtomicU64,
    /// Dead letters the provider's store dropped, oldest first, to stay
    /// within its bound.
    dead_trimmed: AtomicU64,
}

/// `Health::rate` while no rate limit was set on reload.
const NO_RATE: u64 = u64::MAX;

impl Health {
    pub(crate) fn new(name: &str) -> Health {
        Health {
            name: name.to_string(),
            up: AtomicBool::new(false),
            reason: Mutex::new("starting".into()),
            depth: AtomicI64::new(-1),
            depths: Mutex::new(Vec::new()),
            rate: AtomicU64::new(NO_RATE),
            dead_trimmed: AtomicU64::new(0),
        }
    }

    /// Dead letters dropped (oldest first) to keep the provider's
    /// dead-letter store within its bound, since start.
    pub fn dead_letters_trimmed(&self) -> u64 {
        self.dead_trimmed.load(Ordering::Relaxed)
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the provider's source is reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Jobs waiting at the source (pending and delayed), when the
    /// provider reports it.
    pub fn queue_depth(&self) -> Option<u64> {
        u64::try_from(self.depth.load(Ordering::Relaxed)).ok()
    }

    /// Jobs waiting by queue (pending and delayed), when the provider
    /// reports them queue by queue.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        self.depths.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Sets a new rate limit (jobs per second, 0 = unlimited) for a
    /// running provider that has one (SIGHUP).
    pub fn set_rate_limit(&self, jobs_per_sec: f64) {
        self.rate.store(jobs_per_sec.to_bits(), Ordering::Release);
    }

    /// The rate limit set by [`Health::set_rate_limit`], if any.
    pub fn rate_limit(&self) -> Option<f64> {
        match self.rate.load(Ordering::Acquire) {
            NO_RATE => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Why it is down ("" when up).
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn set(&self, up: bool, reason: &str) -> bool {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.to_string();
        }
        self.up.swap(up, Ordering::AcqRel) != up
    }
}

/// What a provider's thread is given: the way into the manager, the stop
/// flag, its health and what it may need to validate jobs.
#[derive(Clone)]
pub struct ProviderContext {
    pub(crate) index: usize,
    pub(crate) sink: Sender<Delivery>,
    pub(crate) stopping: Arc<AtomicBool>,
    pub(crate) stop_signal: crossbeam_channel::Receiver<()>,
    pub(crate) health: Arc<Health>,
    pub(crate) types: Arc<HashSet<String>>,
    pub(crate) stores: Arc<HashMap<String, Arc<dyn JobStore>>>,
    /// The failure handlers' queue, for dead letters a provider makes
    /// itself (e.g. poison pills found while recovering a dead process).
    pub(crate) failures: Arc<Mutex<Option<crate::failure::FailureQueue>>>,
}

impl std::fmt::Debug for ProviderContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderContext")
            .field("name", &self.health.name)
            .finish()
    }
}

impl ProviderContext {
    /// The provider's configured name.
    pub fn name(&self) -> &str {
        &self.health.name
    }

    /// True once shutdown began: stop fetching and return from `run`.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A channel that disconnects when shutdown begins: `select!` on it
    /// beside your own channels to notice the stop at once instead of at
    /// the next timeout. It never carries a message.
    pub fn stop_signal(&self) -> &crossbeam_channel::Receiver<()> {
        &self.stop_signal
    }

    /// Sends a delivery, blocking while the pipeline is full.
    ///
    /// # Errors
    /// Gives the delivery back when shutdown began before it could be
    /// sent; release it with [`Delivery::release`].
    // Giving the delivery back is the point (like crossbeam's SendError).
    #[allow(clippy::result_large_err)]
    pub fn send(&self, mut delivery: Delivery) -> Result<(), Delivery> {
        delivery.provider = self.index;
        if self.is_stopping() {
            return Err(delivery);
        }
        delivery = match self.sink.try_send(delivery) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(d)) => d,
            Err(TrySendError::Disconnected(d)) => return Err(d),
        };
        loop {
            if self.is_stopping() {
                return Err(delivery);
            }
            match self.sink.send_timeout(delivery, Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(d)) => delivery = d,
                Err(SendTimeoutError::Disconnected(d)) => return Err(d),
            }
        }
    }

    /// Sends without blocking.
    ///
    /// # Errors
    /// Gives the delivery back when the pipeline is full or shutting down.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, mut delivery: Delivery) -> Result<(), Delivery> {
        delivery.provider = self.index;
        if self.is_stopping() {
            return Err(delivery);
        }
        self.sink.try_send(delivery).map_err(|e| match e {
            TrySendError::Full(d) | TrySendError::Disconnected(d) => d,
        })
    }

    /// Marks the source reachable. Returns true when that is a change.
    pub fn set_up(&self) -> bool {
        self.health.set(true, "")
    }

    /// Marks the source unreachable, with why. Returns true when that is a
    /// change (log only then).
    pub fn set_down(&self, reason: &str) -> bool {
        self.health.set(false, reason)
    }

    /// Reports how many jobs wait at the source (pending and delayed), for
    /// `/stats` and `/metrics`; call it every few seconds at most.
    pub fn set_queue_depth(&self, jobs: u64) {
        let jobs = i64::try_from(jobs).unwrap_or(i64::MAX);
        self.health.depth.store(jobs, Ordering::Relaxed);
    }

    /// Like [`ProviderContext::set_queue_depth`], queue by queue (name,
    /// jobs waiting) for a provider with several; the total is their sum.
    pub fn set_queue_depths(&self, queues: &[(String, u64)]) {
        self.set_queue_depth(queues.iter().fold(0, |a, (_, n)| a.saturating_add(*n)));
        if let Ok(mut d) = self.health.depths.lock() {
            d.clear();
            d.extend(queues.iter().cloned());
        }
    }

    /// A rate limit (jobs per second, 0 = unlimited) set since start by a
    /// reload; a provider with a rate limit applies it when it changes.
    pub fn rate_limit(&self) -> Option<f64> {
        self.health.rate_limit()
    }

    /// Counts dead letters dropped (oldest first) to keep the provider's
    /// dead-letter store within its bound; shown in `/stats`.
    pub fn add_dead_letters_trimmed(&self, n: u64) {
        self.health.dead_trimmed.fetch_add(n, Ordering::Relaxed);
    }

    /// Dead letters trimmed so far.
    pub fn dead_letters_trimmed(&self) -> u64 {
        self.health.dead_letters_trimmed()
    }

    /// Hands a dead-letter record the provider made itself (not through
    /// an [`Acker`]) to the failure handlers, like the manager does for
    /// every other dead letter.
    pub fn report_failure(&self, record: FailureRecord) {
        if let Ok(f) = self.failures.lock() {
            if let Some(f) = f.as_ref() {
                let _ = f.send(record);
            }
        }
    }

    /// Whether a job `type` has a worker pool.
    pub fn knows_type(&self, kind: &str) -> bool {
        self.types.contains(kind)
    }

    /// The durable store offered by the provider named `name`.
    pub fn store(&self, name: &str) -> Option<Arc<dyn JobStore>> {
        self.stores.get(name).cloned()
    }

    /// The delivery channel's fill: (queued, capacity).
    pub fn fill(&self) -> (usize, usize) {
        (self.sink.len(), self.sink.capacity().unwrap_or(0))
    }
}
