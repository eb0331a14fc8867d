//! # goworker
//!
//! A plugin-based work manager on plain OS threads: **providers** bring jobs
//! in (a redis list, an HTTP listener, an embedded queue), one **manager**
//! thread routes each job to a fixed **pool** of worker threads, and every
//! outcome comes back to the manager, which alone decides on retries and
//! failures and tells the provider how the job ended.
//!
//! It blocks on purpose: no async runtime, for hosts that want plain
//! threads and a process systemd can supervise.
//!
//! ## Running jobs from code
//!
//! ```
//! use goworker::{Config, Job, MemoryProvider, Service, Settled, noop::Noop};
//!
//! let (provider, handle) = MemoryProvider::new();
//! let service = Service::builder(Config::empty())
//!     .provider("memory", provider)
//!     .pool::<Noop>("noop", 2, Default::default())?
//!     .build()?
//!     .start()?;
//! let id = handle.submit(Job::new("noop", serde_json::json!({})))?;
//! match handle.settled().recv_timeout(std::time::Duration::from_secs(10)) {
//!     Ok(Settled::Succeeded(report)) => assert_eq!(report.id, id),
//!     other => panic!("{other:?}"),
//! }
//! service.shutdown();
//! service.wait();
//! # Ok::<(), goworker::Error>(())
//! ```
//!
//! ## Writing a worker plugin
//!
//! Implement [`WorkerType`] (validated options, shared by a pool) and
//! [`Worker`] (one per thread), register the type, and build your own
//! binary that hands the registry to [`app::main`], so it behaves exactly
//! like the stock `goworker` program; see `examples/custom_worker.rs`.
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod app;
mod backoff;
mod config;
mod duration;
mod error;
mod failure;
mod httpd;
mod job;
mod manager;
mod notify;
mod plain;
mod plugin;
mod pool;
mod process;
mod provider;
mod service;
mod stats;
mod stats_server;
mod worker;

pub use backoff::{Backoff, Jitter};
pub use config::{
    Config, EXAMPLE_CONFIG, HandlerConfig, ManagerConfig, Override, PoolConfig, ProviderConfig,
    SecretEnv,
};
pub use duration::DurationValue;
pub use error::{ConfigError, Error, PluginError};
pub use failure::{FailureHandler, FailureHandlerType, HandlerContext};
pub use job::{
    Failure, FailureRecord, Job, JobStatus, MAX_JOB_TIMEOUT, Malformed, Outcome, Report, new_id,
    time_to_unix, unix_now, unix_to_time,
};
pub use manager::{Control, Hooks, NoHooks, ShutdownReport};
pub use notify::Notify;
pub use plugin::{OptionDoc, Registry, TypeDoc};
pub use provider::memory::{MemoryHandle, MemoryProvider, Settled};
pub use provider::{
    Acker, DeadLetters, Delivery, Enqueue, Health, JobStore, Provider, ProviderContext,
    ProviderType,
};
pub use service::{RunningService, Service, ServiceBuilder, ShutdownHandle};
pub use stats::{
    ChannelFill, Counters, DURATION_BUCKETS, DurationStats, PairStats, ProviderStats, Snapshot,
    StatsReader, TypeStats,
};
pub use worker::{JobContext, PoolInfo, Worker, WorkerType};

/// The built-in `noop` worker type.
pub mod noop {
    pub use crate::worker::noop::{Noop, NoopOptions};
}

/// The built-in `cli` worker type.
pub mod cli {
    pub use crate::worker::cli::{Cli, CliOptions, InheritEnv};
}

/// The built-in `disk` provider type: a durable queue in a redb file.
pub mod disk {
    pub use crate::provider::disk::{DiskOptions, DiskProvider, DurabilityLevel};
}
