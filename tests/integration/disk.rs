//! The `disk` provider: a durable queue in a redb file. Real goworker
//! processes killed with SIGKILL, a real database file, and the in-process
//! service with a counting worker for the 100,000-job drain.

use crate::util::*;
use goworker::disk::{DiskOptions, DiskProvider};
use goworker::{Config, Job, JobContext, Outcome, PoolInfo, Provider, Service, Worker, WorkerType};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

// ---- a counting worker for in-process tests ----

/// Runs per job number, and the unix time each run started.
#[derive(Default)]
struct Tally {
    runs: Mutex<HashMap<u64, Vec<f64>>>,
    total: AtomicUsize,
}

fn tallies() -> &'static Mutex<HashMap<String, Arc<Tally>>> {
    static T: OnceLock<Mutex<HashMap<String, Arc<Tally>>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

fn tally(key: &str) -> Arc<Tally> {
    tallies()
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .clone()
}

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct CountOptions {
    /// Which tally to count into.
    key: String,
}

#[derive(Debug)]
struct Count(String);

impl WorkerType for Count {
    type Options = CountOptions;
    const TYPE: &'static str = "count";
    const DESCRIPTION: &'static str = "counts runs per job number";

    fn from_options(o: CountOptions, _: &PoolInfo) -> Result<Count, goworker::PluginError> {
        Ok(Count(o.key))
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(CountWorker(tally(&self.0)))
    }
}

struct CountWorker(Arc<Tally>);

impl Worker for CountWorker {
    fn run(&mut self, job: &Job, _: &JobContext) -> Outcome {
        let n = job.params["n"].as_u64().unwrap_or(u64::MAX);
        let now = goworker::unix_now();
        self.0.runs.lock().unwrap().entry(n).or_default().push(now);
        self.0.total.fetch_add(1, Ordering::SeqCst);
        Outcome::success()
    }
}

fn disk(path: &Path) -> DiskProvider {
    DiskProvider::new(
        "local",
        DiskOptions {
            path: Some(path.to_path_buf()),
            ..DiskOptions::default()
        },
    )
    .unwrap()
}

fn count_job(n: u64) -> Job {
    Job::new("count", json!({ "n": n }))
}

/// An in-process service: the disk queue `local` in `dir` and a counting
/// pool of `threads` tallying under `key`; with the queue's `JobStore`.
fn counting_service(
    dir: &Path,
    key: &str,
    threads: usize,
) -> (goworker::RunningService, Arc<dyn goworker::JobStore>) {
    let provider = disk(&dir.join("queue.redb"));
    let store = provider.store().unwrap();
    let service = Service::builder(Config::empty())
        .provider("local", provider)
        .pool::<Count>("count", threads, CountOptions { key: key.into() })
        .unwrap()
        .build()
        .unwrap()
        .start()
        .unwrap();
    (service, store)
}

#[test]
fn a_hundred_thousand_stored_jobs_each_run_exactly_once() {
    const N: u64 = 100_000;
    let dir = temp_dir();
    let key = "hundred-thousand";
    let (service, store) = counting_service(dir.path(), key, 2);
    // Four submitters at once, 1,000 jobs a put: their commits are shared.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = store.clone();
            s.spawn(move || {
                let mut n = t * (N / 4);
                while n < (t + 1) * (N / 4) {
                    let jobs: Vec<Job> = (n..n + 1000).map(count_job).collect();
                    store.put(&jobs).unwrap();
                    n += 1000;
                }
            });
        }
    });
    let t = tally(key);
    assert!(
        wait_until(Duration::from_secs(600), || t.total.load(Ordering::SeqCst)
            >= N as usize),
        "only {} of {N} ran",
        t.total.load(Ordering::SeqCst)
    );
    service.shutdown();
    let report = service.wait();
    assert_eq!(report.released, 0);
    let runs = t.runs.lock().unwrap();
    assert_eq!(runs.len(), N as usize);
    let repeated: Vec<_> = runs.iter().filter(|(_, r)| r.len() != 1).collect();
    assert!(repeated.is_empty(), "ran more than once: {repeated:?}");
    assert_eq!(t.total.load(Ordering::SeqCst), N as usize);
}

#[test]
fn run_at_is_honoured_in_process() {
    let dir = temp_dir();
    let key = "run-at";
    let (service, store) = counting_service(dir.path(), key, 1);
    let run_at = goworker::unix_now() + 1.5;
    let mut later = count_job(1);
    later.run_at = Some(run_at);
    store.put(&[later, count_job(2)]).unwrap();
    let t = tally(key);
    assert!(wait_until(PATIENCE, || t.total.load(Ordering::SeqCst) >= 2));
    let runs = t.runs.lock().unwrap();
    assert!(runs[&1][0] >= run_at, "started before run_at");
    assert!(runs[&2][0] < runs[&1][0], "the job without run_at waited");
    drop(runs);
    service.shutdown();
    service.wait();
}

#[test]
fn stats_report_the_queue_depth() {
    let dir = temp_dir();
    let (service, store) = counting_service(dir.path(), "depth", 1);
    let jobs: Vec<Job> = (0..7)
        .map(|n| {
            let mut j = count_job(n);
            j.run_at = Some(goworker::unix_now() + 3600.0);
            j
        })
        .collect();
    store.put(&jobs).unwrap();
    let depth = || {
        service
            .snapshot()
            .providers
            .get("local")
            .and_then(|p| p.queue_depth)
    };
    assert!(wait_until(PATIENCE, || depth() == Some(7)), "{:?}", depth());
    service.shutdown();
    service.wait();
}

#[test]
fn a_store_refuses_jobs_once_the_service_stopped() {
    let dir = temp_dir();
    let (service, store) = counting_service(dir.path(), "stopped", 1);
    service.shutdown();
    service.wait();
    assert!(store.put(&[count_job(1)]).is_err());
}

// ---- real goworker processes ----

/// A config with the disk queue `local` under ./data and one `cli` pool
/// allowed to run `allow`.
fn config(allow: &[&Path], extra_manager: &str) -> String {
    let allow: Vec<String> = allow
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 2s\n{extra_manager}\
         providers:\n  - type: disk\n    name: local\n    path: ./data/queue.redb\n\
         workers:\n  - type: cli\n    count: 2\n    allow: [{}]\n",
        allow.join(", ")
    )
}

/// `goworker enqueue` on the stopped service (straight into the file).
fn enqueue(dir: &Path, job: serde_json::Value) -> String {
    let file = dir.join(format!("job-{}.json", goworker::new_id()));
    std::fs::write(&file, job.to_string()).unwrap();
    let (code, out, err) = goworker(
        &[
            "enqueue",
            "-c",
            "config.yaml",
            "--provider",
            "local",
            file.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(code, 0, "enqueue failed: {err}");
    out.trim().to_string()
}

fn write_config(dir: &Path, yaml: &str) {
    std::fs::write(dir.join("config.yaml"), yaml).unwrap();
}

/// A script that appends "<its first argument> <unix time>" to `runs.log`,
/// then sleeps for its second argument (seconds; default 0).
fn recorder(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("runs.log");
    script(
        dir,
        "record.sh",
        &format!(
            "echo \"$1 $(date +%s.%N)\" >> {log:?}\nsleep \"${{2:-0}}\"",
            log = log.display().to_string()
        ),
    )
}

fn runs_of(dir: &Path, name: &str) -> Vec<f64> {
    lines(&dir.join("runs.log"))
        .iter()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, t)| t.parse().ok())
        .collect()
}

fn record_job(script: &Path, name: &str, sleep: u32) -> serde_json::Value {
    json!({"type": "cli", "name": name,
           "params": {"command": script, "params": [name, sleep.to_string()]}})
}

#[test]
fn a_job_running_at_kill_9_runs_again_after_restart_and_nothing_else_repeats() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    write_config(d, &config(&[&rec], ""));
    enqueue(d, record_job(&rec, "quick-1", 0));
    enqueue(d, record_job(&rec, "quick-2", 0));
    // Fetched together at +3s: quick-3's acknowledgement also makes the
    // fetch of "slow" durable, so the crash leaves "slow" in flight.
    let at = goworker::unix_now() + 3.0;
    let mut slow = record_job(&rec, "slow", 60);
    slow["run_at"] = json!(at);
    enqueue(d, slow);
    let mut quick = record_job(&rec, "quick-3", 0);
    quick["run_at"] = json!(at);
    enqueue(d, quick);

    let mut g = Goworker::start(d, &config(&[&rec], ""));
    assert!(
        wait_until(PATIENCE, || {
            let log = g.log_text();
            runs_of(d, "slow").len() == 1
                && log
                    .find("(quick-3): succeeded")
                    .is_some_and(|at| log[at..].contains("committed"))
        }),
        "{}",
        g.log_text()
    );
    assert_eq!(runs_of(d, "quick-1").len(), 1);
    assert_eq!(runs_of(d, "quick-2").len(), 1);
    g.sigkill();

    let g = Goworker::start(d, &config(&[&rec], ""));
    assert!(
        wait_until(PATIENCE, || runs_of(d, "slow").len() == 2),
        "the interrupted job did not run again:\n{}",
        g.log_text()
    );
    assert!(
        g.log_text()
            .contains("1 job(s) in flight at the last stop returned to pending"),
        "{}",
        g.log_text()
    );
    assert_eq!(runs_of(d, "quick-1").len(), 1, "a finished job ran again");
    assert_eq!(runs_of(d, "quick-2").len(), 1, "a finished job ran again");
    assert_eq!(runs_of(d, "quick-3").len(), 1, "a finished job ran again");
}

#[test]
fn run_at_is_honoured_across_a_restart() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    write_config(d, &config(&[&rec], ""));
    let run_at = goworker::unix_now() + 4.0;
    let mut job = record_job(&rec, "later", 0);
    job["run_at"] = json!(run_at);
    enqueue(d, job);

    let mut g = Goworker::start(d, &config(&[&rec], ""));
    g.sigkill();
    assert!(runs_of(d, "later").is_empty() || runs_of(d, "later")[0] >= run_at);
    let g = Goworker::start(d, &config(&[&rec], ""));
    assert!(
        wait_until(PATIENCE, || runs_of(d, "later").len() == 1),
        "{}",
        g.log_text()
    );
    assert!(runs_of(d, "later")[0] >= run_at, "started before run_at");
}

#[test]
fn a_retry_waits_out_its_back_off_across_a_restart() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    // Fails on the first attempt, succeeds on the second.
    let flaky = script(
        d,
        "flaky.sh",
        &format!(
            "{rec:?} flaky\nif [ ! -e {m:?} ]; then touch {m:?}; exit 1; fi",
            rec = rec.display().to_string(),
            m = d.join("failed-once").display().to_string()
        ),
    );
    let retry = "  retry: { base: 5s, max: 5s, jitter: none }\n";
    let cfg = config(&[&flaky, &rec], retry);
    write_config(d, &cfg);
    enqueue(
        d,
        json!({"type": "cli", "name": "flaky", "retries": 1,
               "params": {"command": flaky, "params": []}}),
    );
    let mut g = Goworker::start(d, &cfg);
    // The first attempt failed and its deferral was committed.
    assert!(
        wait_until(PATIENCE, || {
            let log = g.log_text();
            log.find("retry in")
                .is_some_and(|at| log[at..].contains("committed"))
        }),
        "{}",
        g.log_text()
    );
    g.sigkill();
    let g = Goworker::start(d, &cfg);
    assert!(
        wait_until(PATIENCE, || runs_of(d, "flaky").len() == 2),
        "{}",
        g.log_text()
    );
    let runs = runs_of(d, "flaky");
    assert!(
        runs[1] - runs[0] >= 5.0,
        "the retry ran {}s after the first attempt, before its 5s back-off",
        runs[1] - runs[0]
    );
    assert!(wait_until(PATIENCE, || g.log_text().contains("committed")));
}

#[test]
fn a_corrupt_database_file_stops_start_up_with_exit_2() {
    let dir = temp_dir();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.join("data/queue.redb"), &garbage).unwrap();
    write_config(d, &config(&[], ""));
    let (code, _, err) = goworker(&["run", "-c", "config.yaml"], d);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.redb"), "{err}");
    assert!(err.contains("cannot open the queue database"), "{err}");
    // Never a silent fresh start: the file is as it was.
    assert_eq!(std::fs::read(d.join("data/queue.redb")).unwrap(), garbage);
}

#[test]
fn an_unreadable_database_path_stops_start_up_with_exit_2() {
    let dir = temp_dir();
    let d = dir.path();
    // A directory where the file should be: unreadable as a database.
    std::fs::create_dir_all(d.join("data/queue.redb")).unwrap();
    write_config(d, &config(&[], ""));
    let (code, _, err) = goworker(&["run", "-c", "config.yaml"], d);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.redb"), "{err}");
}

#[test]
fn dead_letters_are_listed_retried_and_purged_and_the_running_service_is_named() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    let cfg = config(&[&rec], "");
    write_config(d, &cfg);
    // `false` is not on the allow list: fails for good at once.
    let id = enqueue(d, json!({"type": "cli", "params": {"command": "false"}}));
    let mut g = Goworker::start(d, &cfg);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("failed for good")));
    let (code, _, err) = goworker(&["dead", "-c", "config.yaml", "list"], d);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(wait_until(PATIENCE, || g.log_text().contains("committed")));
    g.sigterm();
    assert_eq!(g.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));

    let (code, out, err) = goworker(&["dead", "-c", "config.yaml", "list"], d);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{out}");
    assert_eq!(records[0]["id"], json!(id));
    assert_eq!(records[0]["job"]["params"]["command"], json!("false"));

    let (code, out, _) = goworker(&["dead", "-c", "config.yaml", "retry", &id], d);
    assert_eq!(code, 0);
    assert!(out.contains("re-queued 1"), "{out}");
    let (_, out, _) = goworker(&["dead", "-c", "config.yaml", "list"], d);
    assert!(out.trim().is_empty(), "{out}");
    let (code, _, err) = goworker(&["dead", "-c", "config.yaml", "retry", "no-such-id"], d);
    assert_ne!(code, 0);
    assert!(err.contains("no dead letter"), "{err}");

    // The re-queued job fails again and comes back; purge deletes it.
    let mut g = Goworker::start(d, &cfg);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("failed for good")));
    assert!(wait_until(PATIENCE, || g.log_text().contains("committed")));
    g.sigterm();
    g.wait_exit(PATIENCE);
    let (code, out, _) = goworker(&["dead", "-c", "config.yaml", "purge"], d);
    assert_eq!(code, 0);
    assert!(out.contains("purged 1"), "{out}");
    let (_, out, _) = goworker(&["dead", "-c", "config.yaml", "list"], d);
    assert!(out.trim().is_empty(), "{out}");
}

// ---- through the http provider (`store: local`) ----

/// POSTs `body` to `url`: (status, JSON body or Null).
fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    match agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
    {
        Ok(mut r) => {
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (
                r.status().as_u16(),
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            )
        }
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// An `http` provider `api` on a free port storing into the disk queue
/// `local`, one `cli` thread allowed to run `allow`. Returns (config, url
/// of `/jobs?wait=false`).
fn http_config(allow: &[&Path]) -> (String, String) {
    let port = free_port();
    let allow: Vec<String> = allow
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let cfg = format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 2s\n\
         providers:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n    store: local\n\
         \x20 - type: disk\n    name: local\n    path: ./data/queue.redb\n\
         workers:\n  - type: cli\n    count: 1\n    allow: [{}]\n",
        allow.join(", ")
    );
    (cfg, format!("http://127.0.0.1:{port}/jobs?wait=false"))
}

#[test]
fn dead_commands_pick_the_disk_queue_beside_an_http_provider() {
    let dir = temp_dir();
    let (cfg, _) = http_config(&[]);
    write_config(dir.path(), &cfg);
    // The http provider offers `enqueue` but keeps no dead letters: without
    // --provider the dead commands go to the disk queue.
    let (code, out, err) = goworker(&["dead", "-c", "config.yaml", "list"], dir.path());
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = goworker(&["dead", "-c", "config.yaml", "purge"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 0 dead letter(s)"), "{out}");
}

/// A script that records its run like `recorder`, then waits until the
/// file `go` exists.
fn blocker(dir: &Path) -> std::path::PathBuf {
    let rec = recorder(dir);
    script(
        dir,
        "block.sh",
        &format!(
            "{rec:?} \"$1\"\nwhile [ ! -e {go:?} ]; do sleep 0.05; done",
            rec = rec.display().to_string(),
            go = dir.join("go").display().to_string()
        ),
    )
}

#[test]
fn jobs_answered_202_run_after_kill_9_even_if_they_had_not_run() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    let block = blocker(d);
    let (cfg, url) = http_config(&[&rec, &block]);
    let mut g = Goworker::start(d, &cfg);
    // The one worker thread is busy with "block" ...
    let (status, _) = post(
        &url,
        &json!({"type": "cli", "name": "block",
                "params": {"command": block, "params": ["block"]}})
        .to_string(),
    );
    assert_eq!(status, 202);
    assert!(wait_until(PATIENCE, || runs_of(d, "block").len() == 1));
    // ... so these are stored, answered 202, and have not run at the kill.
    let bulk = json!([
        record_job(&rec, "accepted-1", 0),
        record_job(&rec, "accepted-2", 0)
    ]);
    let (status, body) = post(&url, &bulk.to_string());
    assert_eq!(status, 202, "{body}");
    // `goworker enqueue` reaches the running service through its http provider.
    let job = d.join("job.json");
    std::fs::write(&job, record_job(&rec, "enqueued", 0).to_string()).unwrap();
    let (code, out, err) = goworker(&["enqueue", "-c", "config.yaml", job.to_str().unwrap()], d);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    // Naming the disk queue goes through the same http provider.
    std::fs::write(&job, record_job(&rec, "enqueued-local", 0).to_string()).unwrap();
    let (code, _, err) = goworker(
        &[
            "enqueue",
            "-c",
            "config.yaml",
            "--provider",
            "local",
            job.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0, "{err}");
    g.sigkill();
    for name in ["accepted-1", "accepted-2", "enqueued", "enqueued-local"] {
        assert!(runs_of(d, name).is_empty(), "{name} ran before the kill");
    }
    // With the service stopped, enqueue writes straight into the file.
    std::fs::write(&job, record_job(&rec, "enqueued-offline", 0).to_string()).unwrap();
    let (code, _, err) = goworker(&["enqueue", "-c", "config.yaml", job.to_str().unwrap()], d);
    assert_eq!(code, 0, "{err}");

    std::fs::write(d.join("go"), "").unwrap();
    let g = Goworker::start(d, &cfg);
    assert!(
        wait_until(PATIENCE, || [
            "accepted-1",
            "accepted-2",
            "enqueued",
            "enqueued-local",
            "enqueued-offline"
        ]
        .iter()
        .all(|n| runs_of(d, n).len() == 1)),
        "accepted jobs lost:\n{}",
        g.log_text()
    );
    assert!(wait_until(PATIENCE, || runs_of(d, "block").len() == 2));
}

/// A small tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_answers_503_acknowledges_only_what_was_stored_and_keeps_running() {
    let dir = temp_dir();
    let d = dir.path();
    let rec = recorder(d);
    let block = blocker(d);
    let _fs = Tmpfs::mount(&d.join("data"), "4m");
    let (cfg, url) = http_config(&[&rec, &block]);
    let g = Goworker::start(d, &cfg);
    let (status, _) = post(
        &url,
        &json!({"type": "cli", "name": "block",
                "params": {"command": block, "params": ["block"]}})
        .to_string(),
    );
    assert_eq!(status, 202);
    assert!(wait_until(PATIENCE, || runs_of(d, "block").len() == 1));

    // 64 KiB jobs until the 4 MiB file system is full.
    let blob = "x".repeat(64 * 1024);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let mut job = record_job(&rec, &format!("big-{i}"), 0);
        job["blob"] = json!(blob);
        let (status, body) = post(&url, &job.to_string());
        match status {
            202 => accepted.push(format!("big-{i}")),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("the file system never filled up");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(!accepted.is_empty());

    // Every job answered 202 was stored: each runs exactly once.
    std::fs::write(d.join("go"), "").unwrap();
    assert!(
        wait_until(PATIENCE * 2, || accepted
            .iter()
            .all(|n| runs_of(d, n).len() == 1)),
        "stored jobs did not all run:\n{}",
        g.log_text()
    );
    // The service still runs and takes jobs again once there is room.
    assert!(
        wait_until(PATIENCE, || post(
            &url,
            &record_job(&rec, "after", 0).to_string()
        )
        .0 == 202),
        "{}",
        g.log_text()
    );
    assert!(
        wait_until(PATIENCE, || runs_of(d, "after").len() == 1),
        "{}",
        g.log_text()
    );
    for n in &accepted {
        assert_eq!(runs_of(d, n).len(), 1, "{n} ran again");
    }
    // The refused job was never acknowledged; a failed commit may still
    // have reached the file, so it runs at most once.
    assert!(runs_of(d, &format!("big-{}", accepted.len())).len() <= 1);
}

#[test]
fn bad_disk_options_stop_check_with_exit_2() {
    let dir = temp_dir();
    let d = dir.path();
    for (options, expect) in [
        ("", "path"),
        (
            "    path: ./q.redb\n    durability: sometimes\n",
            "durability",
        ),
        ("    path: ./q.redb\n    batch: 0\n", "batch"),
        ("    path: ./q.redb\n    colour: blue\n", "colour"),
    ] {
        let cfg = format!(
            "providers:\n  - type: disk\n    name: local\n{options}workers:\n  - type: noop\n"
        );
        write_config(d, &cfg);
        let (code, _, err) = goworker(&["check", "-c", "config.yaml"], d);
        assert_eq!(code, 2, "{options}: {err}");
        assert!(err.contains(expect), "{options}: {err}");
    }
    write_config(
        d,
        "providers:\n  - type: disk\n    path: ./q.redb\n    durability: eventual\nworkers:\n  - type: noop\n",
    );
    let (code, _, err) = goworker(&["check", "-c", "config.yaml"], d);
    assert_eq!(code, 0, "{err}");
    assert!(
        !d.join("q.redb").exists(),
        "check must not create the queue"
    );
}

#[test]
fn enqueue_checks_every_job_first_and_a_refusal_is_one_clear_error() {
    let dir = temp_dir();
    let d = dir.path();
    let (cfg, _) = http_config(&[]);
    // The service runs with a token; the command is given another one.
    let cfg = cfg.replace(
        "store: local\n",
        "store: local\n    token_env: GW_TEST_TOKEN\n",
    );
    let g = Goworker::start_with_env(d, &cfg, &[("GW_TEST_TOKEN", "right")]);
    let run = |args: &[&str], stdin: &str, token: &str| {
        let mut child = std::process::Command::new(goworker_bin())
            .args(args)
            .current_dir(d)
            .env("GW_TEST_TOKEN", token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = ["enqueue", "-c", "config.yaml", "-"];
    // A type no pool runs, on line 3: nothing is sent, and the line is named.
    let jobs = "{\"type\":\"cli\"}\n\n{\"type\":\"nosuch\"}\n";
    let (code, out, err) = run(&args, jobs, "right");
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert!(
        err.contains("stdin line 3: no worker pool runs jobs of type \"nosuch\"")
            && err.contains("nothing was submitted"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // The running service refuses (wrong token): that answer alone, no
    // second attempt behind its back at the file it holds.
    let (code, out, err) = run(&args, "{\"type\":\"cli\"}\n", "wrong");
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(err.contains("401") && !err.contains("directly"), "{err}");
    assert!(err.contains("nothing was submitted"), "{err}");
    drop(g);
}
