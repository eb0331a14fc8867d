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
//! binary; see `examples/custom_worker.rs`.
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod backoff;
mod config;
mod error;
mod failure;
mod httpd;
mod job;
mod manager;
mod notify;
mod pool;
mod provider;
mod registry;
mod service;
mod stats;
mod stats_server;
mod worker;

pub use backoff::{Backoff, Jitter};
pub use config::{
    Config, EXAMPLE_CONFIG, HandlerConfig, ManagerConfig, PoolConfig, ProviderConfig,
};
pub use error::{ConfigError, Error};
pub use failure::{FailureHandler, FailureHandlerType};
pub use job::{
    Failure, FailureRecord, Job, JobStatus, Malformed, Outcome, Report, new_id, time_to_unix,
    unix_now, unix_to_time,
};
pub use manager::{Control, Hooks, NoHooks, ShutdownReport};
pub use notify::Notify;
pub use provider::memory::{MemoryHandle, MemoryProvider, Settled};
pub use provider::{
    Acker, Delivery, Health, JobStore, Provider, ProviderAdmin, ProviderContext, ProviderType,
};
pub use registry::{OptionDoc, Registry, TypeDoc};
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
    pub use crate::worker::cli::{Cli, CliOptions};
}

/// The built-in `disk` provider type: a durable queue in a redb file.
pub mod disk {
    pub use crate::provider::disk::{Disk, DiskOptions, DiskProvider, DurabilityLevel};
}
