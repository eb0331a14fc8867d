//! A user's own worker type, compiled into their own binary — the way
//! GoWorker plugins work.
//!
//! `shout` upper-cases `params.text` and adds the pool's `suffix`. Register
//! it next to the built-ins and hand the registry to `goworker::app::main`:
//! the binary is the whole `goworker` program, with `shout` in
//! `goworker options` and usable in any config.
//!
//! Run: `cargo run --example custom_worker -- run -c examples/shout.yaml`,
//! then in another shell:
//!
//! ```sh
//! curl -s -d '{"type":"shout","params":{"text":"hello"},"capture_output":true}' \
//!      http://127.0.0.1:8081/job/add
//! ```

use goworker::{Job, JobContext, Outcome, PluginError, PoolInfo, Registry, Worker, WorkerType};
use std::process::ExitCode;

/// Options of the `shout` worker, as written in YAML beside `type` and `count`.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct ShoutOptions {
    /// Appended to every result. Default: "".
    suffix: String,
}

/// The validated pool description; builds one worker per thread.
#[derive(Debug)]
struct Shout {
    suffix: String,
}

impl WorkerType for Shout {
    type Options = ShoutOptions;
    const TYPE: &'static str = "shout";
    const DESCRIPTION: &'static str = "upper-cases params.text";

    fn from_options(o: ShoutOptions, _pool: &PoolInfo) -> Result<Shout, PluginError> {
        if o.suffix.len() > 16 {
            return Err(PluginError::at("suffix", "at most 16 characters"));
        }
        Ok(Shout { suffix: o.suffix })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(ShoutWorker {
            suffix: self.suffix.clone(),
        })
    }
}

struct ShoutWorker {
    suffix: String,
}

impl Worker for ShoutWorker {
    fn run(&mut self, job: &Job, _ctx: &JobContext) -> Outcome {
        match job.params.get("text").and_then(|t| t.as_str()) {
            Some(text) => Outcome::success().with_output(Some(format!(
                "{}{}",
                text.to_uppercase(),
                self.suffix
            ))),
            // Retrying cannot fix bad params: fail for good.
            None => Outcome::fatal("params.text: required string"),
        }
    }
}

/// The whole program: the built-in types, `shout`, and the stock CLI
/// (`run`, `check`, `options`, `enqueue`, `dead`, signals, sd_notify, exit
/// codes) from `goworker::app::main`.
fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register_worker::<Shout>();
    goworker::app::main(registry)
}
