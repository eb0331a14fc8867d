//! Workers run jobs. Each pool thread owns one `Worker`, built from its
//! pool's validated `WorkerType`, so a worker may keep state between jobs
//! (a connection, a cache) as GoWorker's did.
//!
//! - [`cli`]: runs an allow-listed command, argv only, no shell.
//! - [`http`]: calls a URL on an allow-listed host.
//! - [`noop`]: succeeds at once (benchmarks, tests).

pub(crate) mod cli;
pub(crate) mod http;
pub(crate) mod noop;

use crate::error::PluginError;
use crate::job::{Job, Outcome};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Runs one job attempt at a time on its pool thread.
pub trait Worker: Send {
    /// Runs one attempt. A panic here is caught by the pool and counts as a
    /// failed attempt; the pool then builds a fresh worker for the thread.
    fn run(&mut self, job: &Job, ctx: &JobContext) -> Outcome;
}

/// A worker type that can be named in the config's `workers:` list.
///
/// `Self` is the validated, shared description of one pool; it builds one
/// [`Worker`] per pool thread.
pub trait WorkerType: Send + Sync + Sized + 'static {
    /// Options as written in YAML beside the common pool keys. Use
    /// `#[serde(deny_unknown_fields, default)]` and doc comments: `goworker
    /// options` prints them from the derived schema.
    type Options: DeserializeOwned + schemars::JsonSchema;
    /// The `type:` name in the config.
    const TYPE: &'static str;
    /// One line for `goworker options`.
    const DESCRIPTION: &'static str;

    /// Validates options; must not start anything.
    ///
    /// # Errors
    /// A message naming the offending option.
    fn from_options(options: Self::Options, pool: &PoolInfo) -> Result<Self, PluginError>;

    /// A worker for one pool thread (called again after a worker panics).
    fn new_worker(&self) -> Box<dyn Worker>;
}

/// A set of environment variable names kept from child processes: the
/// values of every `*_env` option in the config (tokens, passwords).
pub type SecretEnv = std::sync::Arc<std::collections::BTreeSet<String>>;

/// What a worker type learns about the pool it is built for.
#[derive(Debug, Clone)]
pub struct PoolInfo {
    /// The pool name (job `type` routed to it).
    pub name: String,
    /// Number of threads.
    pub count: usize,
    /// Default per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Environment variables that hold secrets (named by `*_env` options
    /// anywhere in the config): a worker that starts processes keeps them
    /// out of their environment.
    pub secret_env: SecretEnv,
}

/// Per-attempt facts and the shutdown hook handed to [`Worker::run`].
#[derive(Debug)]
pub struct JobContext {
    pub(crate) timeout: Option<Duration>,
    pub(crate) capture_limit: usize,
    pub(crate) attempt: u32,
    pub(crate) abort: Arc<AbortSlot>,
}

impl JobContext {
    /// A context for running a worker outside a pool (tests, embedding).
    pub fn new(timeout: Option<Duration>, capture_limit: usize) -> JobContext {
        JobContext {
            timeout,
            capture_limit,
            attempt: 1,
            abort: Arc::default(),
        }
    }

    /// The attempt's time limit: the job's `timeout`, else the pool's.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The most output bytes to keep when capturing.
    pub fn capture_limit(&self) -> usize {
        self.capture_limit
    }

    /// 1-based attempt number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// True once shutdown's deadline has passed: stop as soon as you can.
    pub fn is_aborted(&self) -> bool {
        self.abort.aborted.load(Ordering::Acquire)
    }

    /// Registers the process group the attempt runs in, so that shutdown
    /// can kill it; `None` when it has ended.
    pub fn set_process_group(&self, pgid: Option<i32>) {
        self.abort.pgid.store(pgid.unwrap_or(0), Ordering::Release);
        if pgid.is_some() && self.is_aborted() {
            self.abort.kill();
        }
    }
}

/// Shared between one pool thread and the pool: lets shutdown kill what the
/// thread is running.
#[derive(Debug, Default)]
pub(crate) struct AbortSlot {
    aborted: AtomicBool,
    pgid: AtomicI32,
}

impl AbortSlot {
    /// Marks the slot aborted and kills its registered process group.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.kill();
    }

    /// After a worker panicked: kills the process group it left
    /// registered, if any, and forgets the id so that nothing kills it
    /// again once the id may belong to someone else. (The `cli` worker
    /// kills, reaps and unregisters its own group as it unwinds; this
    /// covers other workers that register one.)
    pub(crate) fn clear_after_panic(&self) {
        let pgid = self.pgid.swap(0, Ordering::AcqRel);
        if pgid > 0 {
            kill_process_group(pgid);
        }
    }

    fn kill(&self) {
        let pgid = self.pgid.load(Ordering::Acquire);
        if pgid > 0 {
            kill_process_group(pgid);
        }
    }
}

/// Sends SIGKILL to a whole process group.
pub(crate) fn kill_process_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has
    // no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
