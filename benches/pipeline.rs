//! The core pipeline: memory provider → manager → pool → outcome, against
//! plain crossbeam fan-outs doing the same work with no manager.
//!
//! Groups (N jobs per iteration, T = 2 worker threads):
//! - `noop`: N = 100,000 noop jobs; baseline: sender → 2 threads → result
//!   channel.
//! - `cli`: N = 200 `/bin/true` jobs through a `cli` pool; baseline: the same
//!   number of `std::process::Command` spawn-and-wait calls on 2 threads.
//!
//! After the `noop` group, the CPU time each side spends per job is printed
//! by thread (from `/proc/self/task/*/schedstat`): unlike wall time, it
//! hardly depends on what else the machine runs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender};
use goworker::{
    Config, Job, JobContext, MemoryHandle, MemoryProvider, Outcome, RunningService, Service,
    Settled, Worker, WorkerType, cli::Cli, noop::Noop,
};
use std::collections::BTreeMap;
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
            let spawned = std::thread::Builder::new().name("fanout-worker".into());
            let _ = spawned.spawn(move || {
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
        self.run_through_cpu(jobs).0
    }

    /// The run's wall time and the feeder thread's CPU time (ns), read
    /// before it exits.
    fn run_through_cpu(&self, jobs: Vec<Job>) -> (Duration, u64) {
        let n = jobs.len();
        let start = Instant::now();
        let sender = self.jobs.clone();
        let feeder = std::thread::spawn(move || {
            for j in jobs {
                sender.send(j).expect("send");
            }
            thread_cpu("/proc/thread-self/schedstat")
        });
        for _ in 0..n {
            let (_, out) = self.results.recv().expect("result");
            assert!(out.is_success());
        }
        let feeder_cpu = feeder.join().unwrap_or(0);
        (start.elapsed(), feeder_cpu)
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
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a.starts_with("cli")) {
        cpu_per_job(N, &fan);
    }
}

/// CPU time (ns) per thread name, over this process's live threads.
fn cpu_by_thread() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ns = thread_cpu(&t.path().join("schedstat").to_string_lossy());
        *out.entry(comm.trim().to_string()).or_default() += ns;
    }
    out
}

/// The first field of a schedstat file: time spent on a CPU, in ns.
fn thread_cpu(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU ns per job by thread group, from before/after readings.
fn per_job(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    jobs: u64,
) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for (name, ns) in after {
        let spent = ns.saturating_sub(before.get(name).copied().unwrap_or(0));
        let group = if name.starts_with("goworker-manage") {
            "manager"
        } else if name.starts_with("goworker-noop") || name.starts_with("fanout-worker") {
            "workers"
        } else if name.starts_with("goworker-") {
            "other goworker threads"
        } else {
            "submitter/receiver"
        };
        *out.entry(group).or_default() += spent / jobs;
    }
    out
}

/// Prints the CPU time per job of the goworker pipeline and the fan-out,
/// by thread, over a few rounds of `n` jobs. Building the jobs (on the
/// submitting thread, for both) is not counted.
fn cpu_per_job(n: usize, fan: &FanOut) {
    const ROUNDS: u64 = 10;
    let jobs = n as u64 * ROUNDS;
    let me = "/proc/thread-self/schedstat";
    let built = |spent: &mut u64| {
        let t = thread_cpu(me);
        let batch = noop_jobs(n);
        *spent += thread_cpu(me).saturating_sub(t);
        batch
    };
    let (svc, handle) = service::<Noop>("noop", Default::default());
    let _ = run_through(&handle, noop_jobs(n)); // warm up
    let (before, mut building) = (cpu_by_thread(), 0);
    for _ in 0..ROUNDS {
        let _ = run_through(&handle, built(&mut building));
    }
    let mut goworker = per_job(&before, &cpu_by_thread(), jobs);
    svc.shutdown();
    svc.wait();
    let (before, mut building_fan, mut feeder) = (cpu_by_thread(), 0, 0);
    for _ in 0..ROUNDS {
        feeder += fan.run_through_cpu(built(&mut building_fan)).1;
    }
    let mut baseline = per_job(&before, &cpu_by_thread(), jobs);
    *baseline.entry("feeder").or_default() += feeder / jobs;
    for (groups, spent) in [(&mut goworker, building), (&mut baseline, building_fan)] {
        if let Some(ns) = groups.get_mut("submitter/receiver") {
            *ns = ns.saturating_sub(spent / jobs);
        }
    }
    for (side, groups) in [("goworker", goworker), ("baseline_fanout", baseline)] {
        let total: u64 = groups.values().sum();
        let parts: Vec<String> = groups.iter().map(|(g, ns)| format!("{g} {ns}")).collect();
        println!(
            "noop/{side} cpu ns per job: total {total} ({})",
            parts.join(", ")
        );
    }
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
