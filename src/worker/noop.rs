//! The `noop` worker: succeeds at once. For benchmarks and tests.

use super::{JobContext, PoolInfo, Worker, WorkerType};
use crate::error::PluginError;
use crate::job::{Job, Outcome};

/// `noop` takes no options.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopOptions {}

/// The `noop` worker type.
#[derive(Debug)]
pub struct Noop;

impl WorkerType for Noop {
    type Options = NoopOptions;
    const TYPE: &'static str = "noop";
    const DESCRIPTION: &'static str = "succeeds at once; for benchmarks and tests";

    fn from_options(_: NoopOptions, _: &PoolInfo) -> Result<Noop, PluginError> {
        Ok(Noop)
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(NoopWorker)
    }
}

struct NoopWorker;

impl Worker for NoopWorker {
    fn run(&mut self, _job: &Job, _ctx: &JobContext) -> Outcome {
        Outcome::success()
    }
}
