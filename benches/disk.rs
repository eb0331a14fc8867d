//! The `disk` provider end to end against raw redb, in the same run.
//!
//! - `disk provider`: 100,000 noop jobs put through the provider's
//!   `JobStore` in puts of `BATCH`, fetched in batches of `BATCH`, run by a
//!   noop pool and acknowledged in batched commits; timed from the first
//!   put until every acknowledgement is committed (service stopped).
//! - `raw redb`: the same 100,000 entries (same key shape, same bytes)
//!   inserted, then removed, in write transactions of `BATCH`.
//!
//! Both with redb's default durability (fsync on every commit). Each is run
//! `ROUNDS` times alternately; the median is reported.
//!
//! `cargo bench --bench disk` (env `DISK_BENCH_JOBS`, `DISK_BENCH_ROUNDS`).

use goworker::disk::{DiskOptions, DiskProvider};
use goworker::{Config, Job, JobContext, Outcome, PoolInfo, Provider, Service, Worker, WorkerType};
use redb::{Database, Durability, TableDefinition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BATCH: usize = 256;

/// Jobs run so far by the counting noop pool (the stats snapshot is up to
/// 500 ms old: too coarse a clock for this bench).
static RAN: AtomicUsize = AtomicUsize::new(0);

/// A noop worker that counts the jobs it ran.
#[derive(Debug)]
struct CountingNoop;

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
struct NoOptions {}

impl WorkerType for CountingNoop {
    type Options = NoOptions;
    const TYPE: &'static str = "noop";
    const DESCRIPTION: &'static str = "noop that counts";

    fn from_options(_: NoOptions, _: &PoolInfo) -> Result<CountingNoop, goworker::PluginError> {
        Ok(CountingNoop)
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(CountingNoop)
    }
}

impl Worker for CountingNoop {
    fn run(&mut self, _: &Job, _: &JobContext) -> Outcome {
        RAN.fetch_add(1, Ordering::Relaxed);
        Outcome::success()
    }
}
const TABLE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("pending");

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn jobs(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let mut j = Job::new("noop", serde_json::json!({ "n": i }));
            j.name = format!("bench-{i}");
            j
        })
        .collect()
}

fn provider_round(n: usize) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let provider = DiskProvider::new(
        "local",
        DiskOptions {
            path: Some(dir.path().join("queue.redb")),
            batch: BATCH,
            ..DiskOptions::default()
        },
    )
    .expect("options");
    let store = provider.store().expect("store");
    let service = Service::builder(Config::empty())
        .provider("local", provider)
        .pool::<CountingNoop>("noop", 2, NoOptions {})
        .expect("pool")
        .build()
        .expect("build")
        .start()
        .expect("start");
    let jobs = jobs(n);
    RAN.store(0, Ordering::SeqCst);
    let start = Instant::now();
    for chunk in jobs.chunks(BATCH) {
        store.put(chunk).expect("put");
    }
    while RAN.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Shutdown commits every outstanding acknowledgement before it returns.
    service.shutdown();
    service.wait();
    start.elapsed()
}

fn raw_round(n: usize) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::create(dir.path().join("raw.redb")).expect("create");
    let rows: Vec<((u64, u64), Vec<u8>)> = jobs(n)
        .iter()
        .enumerate()
        .map(|(i, j)| ((1_700_000_000_000_000, i as u64), j.to_json().into_bytes()))
        .collect();
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let mut tx = db.begin_write().expect("begin");
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for (k, v) in chunk {
                t.insert(*k, v.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    for chunk in rows.chunks(BATCH) {
        let mut tx = db.begin_write().expect("begin");
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for (k, _) in chunk {
                t.remove(*k).expect("remove");
            }
        }
        tx.commit().expect("commit");
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: run small then.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env("DISK_BENCH_JOBS", if full { 100_000 } else { 1_000 });
    let rounds = env("DISK_BENCH_ROUNDS", if full { 3 } else { 1 });
    let (mut disk, mut raw) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        raw.push(raw_round(n));
        disk.push(provider_round(n));
        eprintln!(
            "round {}: raw redb {:?}, disk provider {:?}",
            r + 1,
            raw[r],
            disk[r]
        );
    }
    let (d, b) = (median(disk), median(raw));
    let rate = |t: Duration| n as f64 / t.as_secs_f64();
    println!("jobs: {n}, batch: {BATCH}, rounds: {rounds} (medians)");
    println!("raw redb insert+remove: {:>8.0} entries/s ({b:?})", rate(b));
    println!("disk provider end to end: {:>8.0} jobs/s ({d:?})", rate(d));
    println!(
        "ratio: disk provider takes {:.2}x the raw redb time",
        d.as_secs_f64() / b.as_secs_f64()
    );
}
