//! The core pipeline: memory provider → manager → pool → outcome, against
//! plain crossbeam fan-outs doing the same work with no manager.
//!
//! Groups (N jobs per iteration, T = 2 worker threads):
//! - `noop`: N = 100,000 noop jobs; baseline: sender → 2 threads → result
//!   channel.
//! - `cli`: N = 200 `/bin/true` jobs through a `cli` pool; baseline: the same
//!   number of `std::process::Command` spawn-and-wait calls on 2 threads.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender};
use goworker::{
    Config, Job, JobContext, MemoryHandle, MemoryProvider, Outcome, RunningService, Service,
    Settled, Worker, WorkerType, cli::Cli, noop::Noop,
};
use std::time::{Duration, Instant};

const THREADS: usize = 2;

fn service<T: WorkerType>(kind: &str, options: T::Options) -> (RunningService, MemoryHandle) {
    let (provider, handle) = MemoryProvider::new();
    let svc = Service::builder(Config::empty())
        .manager(|m| m.channel_bound = 4096)
        .provider("bench", provider)
        .pool::<T>(kind, THREADS, options)
        .expect("pool")
        .build()
        .expect("build")
        .start()
        .expect("start");
    (svc, handle)
}

/// Submits every job and waits until each has settled.
fn run_through(handle: &MemoryHandle, jobs: Vec<Job>) -> Duration {
    let n = jobs.len();
    let start = Instant::now();
    for j in jobs {
        handle.submit(j).expect("submit");
    }
    for _ in 0..n {
        match handle.settled().recv() {
            Ok(Settled::Succeeded(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    start.elapsed()
}

/// Plain fan-out: jobs to T threads running a worker, results back.
struct FanOut {
    jobs: Sender<Job>,
    results: Receiver<(Job, Outcome)>,
}

impl FanOut {
    fn new(make: impl Fn() -> Box<dyn Worker>) -> FanOut {
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(4096);
        let (res_tx, results) = crossbeam_channel::unbounded();
        for _ in 0..THREADS {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            let mut w = make();
            std::thread::spawn(move || {
                let ctx = JobContext::new(None, 64 * 1024);
                for job in rx {
                    let out = w.run(&job, &ctx);
                    if tx.send((job, out)).is_err() {
                        return;
                    }
                }
            });
        }
        FanOut { jobs, results }
    }

    fn run_through(&self, jobs: Vec<Job>) -> Duration {
        let n = jobs.len();
        let start = Instant::now();
        let sender = self.jobs.clone();
        let feeder = std::thread::spawn(move || {
            for j in jobs {
                sender.send(j).expect("send");
            }
        });
        for _ in 0..n {
            let (_, out) = self.results.recv().expect("result");
            assert!(out.is_success());
        }
        let _ = feeder.join();
        start.elapsed()
    }
}

fn noop_jobs(n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| Job::new("noop", serde_json::json!({})))
        .collect()
}

fn noop(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut g = c.benchmark_group("noop");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let (svc, handle) = service::<Noop>("noop", Default::default());
    g.bench_function("goworker", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_through(&handle, noop_jobs(N))).sum())
    });
    svc.shutdown();
    svc.wait();
    let fan = FanOut::new(|| Box::new(NoopWorker));
    g.bench_function("baseline_fanout", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fan.run_through(noop_jobs(N))).sum())
    });
    g.finish();
}

struct NoopWorker;

impl Worker for NoopWorker {
    fn run(&mut self, _: &Job, _: &JobContext) -> Outcome {
        Outcome::success()
    }
}

fn cli(c: &mut Criterion) {
    const N: usize = 200;
    let mut g = c.benchmark_group("cli");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let jobs = || -> Vec<Job> {
        (0..N)
            .map(|_| Job::new("cli", serde_json::json!({"command": "/bin/true"})))
            .collect()
    };
    let options = goworker::cli::CliOptions {
        allow: vec!["/bin/true".into()],
        inherit_env: goworker::cli::InheritEnv::All,
        ..Default::default()
    };
    let (svc, handle) = service::<Cli>("cli", options);
    g.bench_function("goworker", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_through(&handle, jobs())).sum())
    });
    svc.shutdown();
    svc.wait();
    let fan = FanOut::new(|| Box::new(SpawnWorker));
    g.bench_function("baseline_spawn_wait", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fan.run_through(jobs())).sum())
    });
    g.finish();
}

/// Plain `Command::new("/bin/true").status()`.
struct SpawnWorker;

impl Worker for SpawnWorker {
    fn run(&mut self, _: &Job, _: &JobContext) -> Outcome {
        match std::process::Command::new("/bin/true").status() {
            Ok(s) if s.success() => Outcome::success(),
            other => Outcome::failed(format!("{other:?}")),
        }
    }
}

criterion_group!(benches, noop, cli);
criterion_main!(benches);
