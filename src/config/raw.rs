//! The config as written: serde structs that mirror the YAML. Plugin
//! entries stay YAML maps here; each family's common keys live with the
//! family (`crate::plugin`), each type's options with the type.

use crate::backoff::{Backoff, RawRetry};
use crate::duration::DurationValue;
use serde::{Deserialize, Serialize};
use serde_yaml::Mapping;

/// The whole file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) manager: RawManager,
    #[serde(default)]
    pub(crate) providers: Vec<Mapping>,
    #[serde(default)]
    pub(crate) workers: Vec<Mapping>,
    #[serde(default)]
    pub(crate) failure_handlers: Vec<Mapping>,
}

/// The `manager:` section as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawManager {
    /// Address of the stats server (/stats, /metrics, /healthz); null turns it off.
    pub(crate) stats_listen: Option<String>,
    /// How long running jobs may finish after SIGTERM before they are killed and handed back.
    pub(crate) shutdown_timeout: DurationValue,
    /// Capacity of the delivery channel from the providers to the manager.
    pub(crate) channel_bound: usize,
    /// Retry back-off for every pool that does not set its own.
    pub(crate) retry: RawRetry,
    /// Bytes of output kept for jobs with capture_output.
    pub(crate) capture_limit: usize,
    /// Failure records queued for the failure handlers (1 to 1,000,000); when full, records skip the handlers (their dead letters are still stored) and are counted.
    pub(crate) failure_queue: usize,
}

impl Default for RawManager {
    fn default() -> RawManager {
        RawManager {
            stats_listen: Some("127.0.0.1:9090".into()),
            shutdown_timeout: "30s".into(),
            channel_bound: 1024,
            retry: RawRetry::from(Backoff::DEFAULT),
            capture_limit: 64 * 1024,
            failure_queue: super::DEFAULT_FAILURE_QUEUE,
        }
    }
}
