//! What the systemd integration costs: the sd_notify hooks on the manager
//! thread (per tick, and on a whole pipeline run against the same pipeline
//! without hooks), and the retirement check pool threads make per job
//! (a pipeline run on a pool that was resized up and down first).
//!
//! `cargo bench --bench systemd`; N = 20 000 noop jobs, T = 2 pool threads.
//! The pipeline variants run interleaved (medians printed first); the
//! per-tick cost is a criterion benchmark.

use criterion::{Criterion, criterion_group};
use goworker::{
    Config, Hooks, Job, MemoryProvider, NoHooks, Notify, Service, Snapshot, noop::Noop,
};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const N: usize = 20_000;

/// A bound notify socket drained on a thread, so sends never hit a full queue.
fn socket() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while rx.recv(&mut buf).is_ok() {}
    });
    (dir, path)
}

/// Runs N noop jobs through a memory provider; returns the elapsed time
/// from the first submission to the last settlement.
fn pipeline(hooks: impl Hooks + 'static, resize: bool) -> Duration {
    let (provider, handle) = MemoryProvider::new();
    let service = Service::builder(Config::empty())
        .provider("memory", provider)
        .pool::<Noop>("noop", 2, Default::default())
        .expect("pool")
        .hooks(hooks)
        .build()
        .expect("build")
        .start()
        .expect("start");
    if resize {
        // Leaves the pool at 2 threads, with the retirement path exercised.
        let control = service.shutdown_handle();
        control.resize("noop", 6);
        control.resize("noop", 2);
    }
    let jobs: Vec<Job> = (0..N)
        .map(|_| Job::new("noop", serde_json::json!({})))
        .collect();
    let start = Instant::now();
    for j in jobs {
        handle.submit(j).expect("submit");
    }
    for _ in 0..N {
        handle
            .settled()
            .recv_timeout(Duration::from_secs(60))
            .expect("settled");
    }
    let elapsed = start.elapsed();
    service.shutdown();
    service.wait();
    elapsed
}

/// The three pipeline variants run in rotation, so load from other work
/// on the machine hits them alike; prints each one's median.
fn interleaved() {
    const ROUNDS: usize = 21;
    let (_dir, path) = socket();
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..ROUNDS {
        times[0].push(pipeline(NoHooks, false));
        let n = Notify::new(path.as_os_str(), Some(Duration::ZERO)).expect("notify");
        times[1].push(pipeline(n, false));
        times[2].push(pipeline(NoHooks, true));
    }
    let base = median(&mut times[0]);
    for (name, t) in ["no_hooks", "notify", "resized_pool"]
        .iter()
        .zip(times.iter_mut())
    {
        let m = median(t);
        println!(
            "pipeline_{N}_noop/{name:<13} median {:>8.2} ms  ratio to no_hooks {:.2}  ({ROUNDS} rounds, interleaved)",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
}

fn median(t: &mut [Duration]) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn on_tick(c: &mut Criterion) {
    let (_dir, path) = socket();
    let mut n = Notify::new(path.as_os_str(), Some(Duration::ZERO)).expect("notify");
    let snap = Snapshot::default();
    // A STATUS= line every 2 s and a WATCHDOG=1 on every call.
    c.bench_function("notify_on_tick_watchdog", |b| b.iter(|| n.on_tick(&snap)));
    let mut off = Notify::disabled();
    c.bench_function("notify_on_tick_disabled", |b| b.iter(|| off.on_tick(&snap)));
}

criterion_group!(benches, on_tick);

fn main() {
    interleaved();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
