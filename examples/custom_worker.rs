//! A user's own worker type, compiled into their own binary — the way
//! GoWorker plugins work.
//!
//! `shout` upper-cases `params.text` and adds the pool's `suffix`. Register
//! it next to the built-ins, name it in the YAML config, and submit jobs.
//!
//! Run: `cargo run --example custom_worker`

use goworker::{
    Config, Job, JobContext, MemoryProvider, Outcome, PoolInfo, Registry, Service, Settled, Worker,
    WorkerType,
};
use std::time::Duration;

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

    fn from_options(o: ShoutOptions, _pool: &PoolInfo) -> Result<Shout, String> {
        if o.suffix.len() > 16 {
            return Err("suffix: at most 16 characters".into());
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = Registry::with_builtins();
    registry.register_worker::<Shout>();

    let yaml = "manager: { stats_listen: null }\nworkers:\n  - type: shout\n    count: 2\n    suffix: \"!\"\n";
    let config = Config::parse(yaml, &registry)?;

    let (provider, jobs) = MemoryProvider::new();
    let service = Service::builder(config)
        .provider("example", provider)
        .build()?
        .start()?;

    let mut job = Job::new("shout", serde_json::json!({"text": "hello, goworker"}));
    job.capture_output = true;
    jobs.submit(job)?;
    match jobs.settled().recv_timeout(Duration::from_secs(30))? {
        Settled::Succeeded(report) => println!("succeeded: {}", report.output.unwrap_or_default()),
        other => println!("did not succeed: {other:?}"),
    }
    service.shutdown();
    service.wait();
    Ok(())
}
