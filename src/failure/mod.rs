//! Failure handlers: told about every job that failed for good, after its
//! dead-letter record is stored. They run on their own thread, so a slow
//! webhook never stalls the manager, and a failing handler is logged and
//! never costs the dead-letter record.
//!
//! - [`file`]: appends one JSON line per failed job, rotated at a size.
//! - [`http`]: POSTs the record as JSON to a webhook, with retries.
//! - [`cli`]: runs a command with the record as JSON on stdin.

pub(crate) mod cli;
pub(crate) mod file;
pub(crate) mod http;

use crate::error::PluginError;
use crate::job::FailureRecord;
use serde::de::DeserializeOwned;

/// Receives the record of each job that failed for good.
pub trait FailureHandler: Send {
    /// Handles one record.
    ///
    /// # Errors
    /// A message; it is logged and the next handler still runs.
    fn handle(&mut self, record: &FailureRecord) -> Result<(), String>;

    /// Told once, after it is built from the config, which environment
    /// variables hold secrets (named by `*_env` options): a handler that
    /// starts processes keeps them out of their environment.
    fn hide_env(&mut self, _names: &crate::worker::SecretEnv) {}
}

/// A failure handler type that can be named in `failure_handlers:`.
pub trait FailureHandlerType: 'static {
    /// Options beside `type` and `name`.
    type Options: DeserializeOwned + schemars::JsonSchema;
    /// The `type:` name in the config.
    const TYPE: &'static str;
    /// One line for `goworker options`.
    const DESCRIPTION: &'static str;

    /// Validates options and builds the handler; must not open files or
    /// connect (`goworker check` calls it).
    ///
    /// # Errors
    /// A message naming the offending option.
    fn build(name: &str, options: Self::Options) -> Result<Box<dyn FailureHandler>, PluginError>;
}
