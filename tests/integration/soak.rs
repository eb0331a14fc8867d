//! Soak tests: real goworker processes killed with SIGKILL every few
//! seconds while a producer keeps submitting uniquely identified jobs;
//! then every job's runs are counted.
//!
//! Each job runs `record.sh ID RUNS`, which appends `ID LAUNCH` to RUNS
//! with one `>>` write (atomic for a short line), so every run is on disk
//! with the goworker process that ran it: `LAUNCH` numbers each start of a
//! goworker process and reaches the job through the environment (the
//! parent pid would not do: a job started just before its goworker was
//! killed sees init as its parent). A job is *acknowledged* when its
//! source said it has it: `LPUSH` answered with the list length (Redis),
//! `202` (HTTP with `store: local`). At the end the queue is drained and:
//!
//! - **lost** = acknowledged, never run and not a dead letter: must be none;
//! - **duplicated** = run more than once: allowed only for a job that was
//!   held by a process killed with SIGKILL (its first run was in that
//!   process, and for Redis it was in that process's processing list at the
//!   kill); anything else is reported as unexplained and fails the test.
//!
//! `SOAK_SECS` sets the load phase (default 20 s under `cargo test`; `make
//! soak` runs 120), `SOAK_RATE` the jobs per second (default 100).
//! A failing run keeps its directory (logs, runs file, Redis AOF) and
//! prints its path.

use crate::util::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time between two SIGKILLs of a goworker process.
const KILL_EVERY: Duration = Duration::from_secs(3);
/// How long the end may wait for the queue to drain.
const DRAIN: Duration = Duration::from_secs(120);
/// Threads of the `cli` pool in every goworker process.
const CLI_THREADS: usize = 2;
/// The disk provider's default `batch`: settlements committed per
/// transaction, so at most this many finished jobs await their commit.
const DISK_BATCH: usize = 256;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn soak_secs() -> Duration {
    Duration::from_secs(env_u64("SOAK_SECS", 20))
}

fn soak_rate() -> u64 {
    env_u64("SOAK_RATE", 100)
}

/// `record.sh ID RUNS`: appends "ID SOAK_LAUNCH" (the number of the
/// goworker start that ran it) to RUNS. Shell built-ins only, one write.
fn record_script(dir: &Path) -> PathBuf {
    script(dir, "record.sh", r#"echo "$1 $SOAK_LAUNCH" >> "$2""#)
}

/// Starts goworker launch number `n` (without waiting: its source may be
/// down), with `SOAK_LAUNCH=n` for its jobs.
fn launch(dir: &Path, config: &str, n: u32) -> Goworker {
    let n = n.to_string();
    Goworker::launch(
        dir,
        config,
        &[("RUST_LOG", "info,goworker=debug"), ("SOAK_LAUNCH", &n)],
    )
}

fn job(script: &Path, id: &str, runs: &Path) -> String {
    serde_json::json!({
        "id": id, "type": "cli",
        "params": {"command": script, "params": [id, runs]}
    })
    .to_string()
}

/// What the producer did, shared with the test thread.
#[derive(Default)]
struct Ledger {
    produced: usize,
    /// Acknowledged ids with the time of their acknowledgement.
    acked: Vec<(String, Duration)>,
}

/// A producer thread: submits jobs `{prefix}0000001`, `{prefix}0000002`, … at `rate` per
/// second with `submit` (true = acknowledged) until `stop`.
fn producer(
    prefix: &'static str,
    rate: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    mut submit: impl FnMut(&str) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let gap = Duration::from_secs(1) / u32::try_from(rate).unwrap_or(u32::MAX);
        let mut seq = 0u64;
        let mut next = Instant::now();
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let id = format!("{prefix}{seq:07}");
            let ok = submit(&id);
            {
                let mut l = ledger.lock().unwrap();
                l.produced += 1;
                if ok {
                    l.acked.push((id, start.elapsed()));
                }
            }
            if !ok {
                // The source is down: do not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
            next += gap;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    })
}

/// One SIGKILL of a goworker process.
struct Kill {
    at: Duration,
    /// Its launch number.
    launch: u32,
    pid: u32,
    /// The ids in its processing list right after the kill (Redis), or
    /// `None` where that cannot be read from outside (disk).
    held: Option<HashSet<String>>,
}

/// The event of a goworker process that exited on its own (it is started
/// again): its status and the last line of its log.
fn exited(launch: u32, status: std::process::ExitStatus, proc: &Goworker) -> String {
    let log = proc.log_text();
    let last = log.lines().last().unwrap_or("").to_string();
    format!(
        "launch {launch} (pid {}) exited on its own, {status}: {last}",
        proc.pid()
    )
}

/// Runs in the runs file: (id, launch number of the goworker that ran
/// it), in order.
fn runs(path: &Path) -> Vec<(String, u32)> {
    lines(path)
        .iter()
        .filter_map(|l| {
            let (id, launch) = l.split_once(' ')?;
            Some((id.to_string(), launch.trim().parse().ok()?))
        })
        .collect()
}

/// The counts of one soak, and what was wrong with it.
struct Tally {
    lost: Vec<String>,
    unexplained: Vec<String>,
    extra_runs: usize,
    bound: usize,
}

impl Tally {
    fn ok(&self) -> bool {
        self.lost.is_empty() && self.unexplained.is_empty() && self.extra_runs <= self.bound
    }
}

/// Counts, prints the report and returns the tally. `held_bound` is the
/// most jobs one killed process may have run without their acknowledgement
/// reaching the source, when `Kill::held` is unknown.
#[allow(clippy::too_many_arguments)]
fn tally(
    name: &str,
    secs: Duration,
    ledger: &Ledger,
    runs: &[(String, u32)],
    dead: &[(String, String)],
    kills: &[Kill],
    events: &[(Duration, String)],
    held_bound: usize,
) -> Tally {
    let acked: HashMap<&str, Duration> = ledger
        .acked
        .iter()
        .map(|(id, at)| (id.as_str(), *at))
        .collect();
    let mut by_id: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, pid) in runs {
        by_id.entry(id.as_str()).or_default().push(*pid);
    }
    let dead_ids: HashSet<&str> = dead.iter().map(|(id, _)| id.as_str()).collect();
    let mut lost: Vec<String> = ledger
        .acked
        .iter()
        .filter(|(id, _)| !by_id.contains_key(id.as_str()) && !dead_ids.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    lost.sort();
    let not_acked_run = by_id.keys().filter(|id| !acked.contains_key(*id)).count();
    let killed: HashMap<u32, &Kill> = kills.iter().map(|k| (k.launch, k)).collect();
    let mut dups = Vec::new();
    let mut unexplained = Vec::new();
    let mut extra_runs = 0;
    for (id, launches) in &by_id {
        if launches.len() < 2 {
            continue;
        }
        extra_runs += launches.len() - 1;
        // Every run but the last must have been in a process that was
        // killed while holding the job; the last one is the real one.
        let mut explained = true;
        let notes: Vec<String> = launches[..launches.len() - 1]
            .iter()
            .map(|n| match killed.get(n) {
                None => {
                    explained = false;
                    format!("launch {n} was not killed")
                }
                Some(k) => {
                    let holding = match &k.held {
                        Some(held) if !held.contains(*id) => {
                            explained = false;
                            ", but was not holding it"
                        }
                        Some(_) => " holding it",
                        None => "",
                    };
                    format!(
                        "launch {n} (pid {}) killed at {:.1}s{holding}",
                        k.pid,
                        k.at.as_secs_f64()
                    )
                }
            })
            .collect();
        let line = format!("{id} ran in launches {launches:?}: {}", notes.join("; "));
        if explained {
            dups.push(line);
        } else {
            unexplained.push(line);
        }
    }
    let bound: usize = kills
        .iter()
        .map(|k| k.held.as_ref().map_or(held_bound, HashSet::len))
        .sum();
    println!(
        "soak {name}: {:.0} s of load, {} kill -9, {} other event(s)",
        secs.as_secs_f64(),
        kills.len(),
        events.len()
    );
    println!(
        "  produced {}, acknowledged {}, distinct jobs run {} ({} of them not acknowledged), \
         lost {}, duplicated {} (extra runs {}, bound {}), unexplained duplicates {}, dead letters {}",
        ledger.produced,
        ledger.acked.len(),
        by_id.len(),
        not_acked_run,
        lost.len(),
        dups.len() + unexplained.len(),
        extra_runs,
        bound,
        unexplained.len(),
        dead.len()
    );
    for (at, what) in events {
        println!("  event {:7.1}s {what}", at.as_secs_f64());
    }
    for k in kills {
        let held = k
            .held
            .as_ref()
            .map_or("unknown".to_string(), |h| h.len().to_string());
        println!(
            "  kill  {:7.1}s launch {} (pid {}) holding {held}",
            k.at.as_secs_f64(),
            k.launch,
            k.pid
        );
    }
    for id in lost.iter().take(100) {
        println!(
            "  LOST {id} (acknowledged at {:.2}s)",
            acked.get(id.as_str()).map_or(0.0, Duration::as_secs_f64)
        );
    }
    for line in unexplained.iter().take(100) {
        println!("  UNEXPLAINED DUPLICATE {line}");
    }
    for line in dups.iter().take(100) {
        println!("  duplicate {line}");
    }
    for (id, why) in dead.iter().take(20) {
        println!("  dead {id}: {why}");
    }
    Tally {
        lost,
        unexplained,
        extra_runs,
        bound,
    }
}

/// Fails the test with the tally, keeping `dir` for a post-mortem.
fn finish(name: &str, t: &Tally, dir: tempfile::TempDir) {
    if t.ok() {
        return;
    }
    let kept = dir.keep();
    panic!(
        "soak {name}: {} lost, {} unexplained duplicate(s), {} extra run(s) (bound {}); \
         logs and runs kept in {}",
        t.lost.len(),
        t.unexplained.len(),
        t.extra_runs,
        t.bound,
        kept.display()
    );
}

/// Waits (at most `DRAIN`) until every acknowledged job ran or is dead and
/// `drained()` says the source is empty.
fn drain(ledger: &Ledger, runs_file: &Path, mut drained: impl FnMut() -> bool) -> bool {
    let acked: Vec<&str> = ledger.acked.iter().map(|(id, _)| id.as_str()).collect();
    // Recount only when the runs file grew (it can be long).
    let mut counted_len = None;
    let mut all_ran = false;
    wait_until(DRAIN, || {
        let len = std::fs::metadata(runs_file).map(|m| m.len()).ok();
        if len != counted_len {
            counted_len = len;
            let ran: HashSet<String> = runs(runs_file).into_iter().map(|(id, _)| id).collect();
            all_ran = acked.iter().all(|id| ran.contains(*id));
        }
        all_ran && drained()
    })
}

// ---- three goworker processes on one Redis ----

const QUEUE: &str = "job_list";
/// The goworker processes' `orphan_after` (heartbeat: 500ms).
const ORPHAN_AFTER: Duration = Duration::from_secs(5);

fn redis_config(port: u16, script: &Path) -> String {
    format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 5s\n\
         providers:\n  - type: redis\n    name: main\n    url: redis://127.0.0.1:{port}/0\n    \
         queues: [{QUEUE}]\n    heartbeat: 500ms\n    orphan_after: {}ms\n\
         workers:\n  - type: cli\n    count: {CLI_THREADS}\n    allow: [{script:?}]\n    inherit_env: all\n",
        ORPHAN_AFTER.as_millis()
    )
}

/// The ids of the job payloads in `pid`'s processing lists.
fn held_by(port: u16, pid: u32) -> HashSet<String> {
    let pattern = format!("{QUEUE}:processing:*:{pid}:*");
    let keys = resp_query(port, &["KEYS", &pattern])
        .map(|r| r.strings())
        .unwrap_or_default();
    keys.iter()
        .flat_map(|k| {
            resp_query(port, &["LRANGE", k, "0", "-1"])
                .map(|r| r.strings())
                .unwrap_or_default()
        })
        .filter_map(|p| held_id(&p))
        .collect()
}

/// The job id of one processing-list entry: a delivery stamp
/// (`RS n RS entry`) in front of either the producer's payload or a
/// carried entry (`US id US recoveries RS payload`), as docs/redis.md says.
fn held_id(entry: &str) -> Option<String> {
    const RS: char = '\u{1e}';
    const US: char = '\u{1f}';
    let entry = match entry.strip_prefix(RS) {
        Some(stamped) => stamped.split_once(RS)?.1,
        None => entry,
    };
    if let Some(carried) = entry.strip_prefix(US) {
        return Some(carried.split_once(US)?.0.to_string());
    }
    let v: serde_json::Value = serde_json::from_str(entry).ok()?;
    Some(v.get("id")?.as_str()?.to_string())
}

fn redis_drained(port: u16) -> bool {
    let int = |args: &[&str]| match resp_query(port, args) {
        Ok(Resp::Int(n)) => Some(n),
        _ => None,
    };
    let pattern = format!("{QUEUE}:processing:*");
    let processing = resp_query(port, &["KEYS", &pattern])
        .map(|r| r.strings())
        .unwrap_or_default();
    int(&["LLEN", QUEUE]) == Some(0)
        && int(&["ZCARD", &format!("{QUEUE}:delayed")]) == Some(0)
        && processing
            .iter()
            .all(|k| int(&["LLEN", k.as_str()]) == Some(0))
}

/// Dead letters of the queue: (job id, error).
fn redis_dead(port: u16) -> Vec<(String, String)> {
    let key = format!("{QUEUE}:dead");
    resp_query(port, &["LRANGE", &key, "0", "-1"])
        .map(|r| r.strings())
        .unwrap_or_default()
        .iter()
        .map(|rec| dead_entry(rec))
        .collect()
}

/// (job id, error) of one dead-letter record; the id is looked for in the
/// job and then in its raw payload.
fn dead_entry(rec: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(rec).unwrap_or_default();
    let raw: serde_json::Value = v["raw"]
        .as_str()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let id = v["job"]["id"]
        .as_str()
        .or(raw["id"].as_str())
        .or(v["id"].as_str())
        .unwrap_or("?")
        .to_string();
    (id, v["error"].as_str().unwrap_or("").to_string())
}

#[test]
fn redis_three_processes_kill_9_and_two_redis_restarts_lose_nothing() {
    let secs = soak_secs();
    let port = free_port();
    let mut redis = Some(Redis::start_persistent_on(port, temp_dir()));
    let dir = temp_dir();
    let script = record_script(dir.path());
    let runs_file = dir.path().join("runs.txt");
    let config = redis_config(port, &script);
    // (launch number, process)
    let mut procs: Vec<(u32, Goworker)> = (1..=3)
        .map(|n| (n, launch(dir.path(), &config, n)))
        .collect();
    let mut launches = 3;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (s, r) = (script.clone(), runs_file.clone());
    let prod = producer(
        "r",
        soak_rate(),
        start,
        stop.clone(),
        ledger.clone(),
        move |id| {
            // Acknowledged = LPUSH answered with the new length.
            matches!(
                resp_query(port, &["LPUSH", QUEUE, &job(&s, id, &r)]),
                Ok(Resp::Int(_))
            )
        },
    );

    let mut kills = Vec::new();
    let mut events = Vec::new();
    // Two Redis restarts: a clean SIGTERM (AOF flushed) at 1/3, down for
    // 1 s; a SIGKILL at 2/3, down for longer than orphan_after, so that
    // every heartbeat is stale when it is back (a sweep then must not take
    // the jobs of live processes); appendfsync always: every acknowledged
    // write is on disk at the SIGKILL.
    // (appendfsync always: every acknowledged write is already on disk)
    // at 2/3.
    let mut restarts = vec![(secs * 2 / 3, true), (secs / 3, false)];
    let mut next_kill = start + KILL_EVERY;
    while start.elapsed() < secs {
        if restarts
            .last()
            .is_some_and(|(at, _)| start.elapsed() >= *at)
        {
            let (_, hard) = restarts.pop().unwrap_or_default();
            let down = if hard {
                ORPHAN_AFTER + Duration::from_secs(2)
            } else {
                Duration::from_secs(1)
            };
            let server = redis.take().expect("redis running");
            let pid = server.pid();
            let data = if hard {
                server.stop()
            } else {
                server.terminate()
            };
            let how = if hard { "SIGKILL" } else { "SIGTERM" };
            events.push((
                start.elapsed(),
                format!("redis (pid {pid}) stopped with {how}"),
            ));
            std::thread::sleep(down);
            redis = Some(Redis::start_persistent_on(port, data));
            events.push((start.elapsed(), "redis restarted".to_string()));
        }
        for (n, proc) in &mut procs {
            if let Ok(Some(status)) = proc.child.try_wait() {
                events.push((start.elapsed(), exited(*n, status, proc)));
                launches += 1;
                *n = launches;
                *proc = launch(dir.path(), &config, launches);
            }
        }
        if Instant::now() >= next_kill {
            let i = rand::random_range(0..procs.len());
            let (n, proc) = &mut procs[i];
            let pid = proc.pid() as u32;
            proc.sigkill();
            let at = start.elapsed();
            kills.push(Kill {
                at,
                launch: *n,
                pid,
                held: Some(held_by(port, pid)),
            });
            launches += 1;
            procs[i] = (launches, launch(dir.path(), &config, launches));
            next_kill = Instant::now() + KILL_EVERY;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    prod.join().expect("producer");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let drained = drain(&ledger, &runs_file, || redis_drained(port));
    events.push((start.elapsed(), format!("load stopped; drained: {drained}")));
    for (_, p) in &procs {
        p.sigterm();
    }
    for (_, p) in &mut procs {
        p.wait_exit(PATIENCE);
    }
    let t = tally(
        "redis",
        secs,
        &ledger,
        &runs(&runs_file),
        &redis_dead(port),
        &kills,
        &events,
        0,
    );
    drop(redis);
    finish("redis", &t, dir);
}

// ---- the default config: http → disk ----

/// config.example.yaml with free ports and the record script allowed;
/// everything else (the `store: local` disk queue under ./data/, fsync on
/// every commit, the file failure handler) as shipped.
fn disk_config(http_port: u16, stats_port: u16, script: &Path) -> String {
    use serde_yaml::Value;
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml"))
            .expect("config.example.yaml");
    let mut c: Value = serde_yaml::from_str(&text).expect("example config is YAML");
    c["manager"]["stats_listen"] = Value::from(format!("127.0.0.1:{stats_port}"));
    let providers = c["providers"].as_sequence_mut().expect("providers");
    let http = providers
        .iter_mut()
        .find(|p| p["type"] == "http")
        .expect("the example has an http provider");
    assert_eq!(
        http["store"], "local",
        "the example stores http jobs on disk"
    );
    http["listen"] = Value::from(format!("127.0.0.1:{http_port}"));
    let workers = c["workers"].as_sequence_mut().expect("workers");
    let cli = workers
        .iter_mut()
        .find(|w| w["type"] == "cli")
        .expect("the example has a cli pool");
    cli["allow"]
        .as_sequence_mut()
        .expect("allow list")
        .push(Value::from(script.to_string_lossy().into_owned()));
    cli["count"] = Value::from(CLI_THREADS as u64);
    // The record script reads SOAK_LAUNCH from the service's environment,
    // which the default (minimal) inherited environment leaves out.
    cli["inherit_env"] = Value::from("all");
    serde_yaml::to_string(&c).expect("config to YAML")
}

/// Jobs waiting in the disk queue, from /stats (`None` while unreachable).
fn disk_depth(stats_port: u16) -> Option<u64> {
    let url = format!("http://127.0.0.1:{stats_port}/stats");
    let mut resp = agent().get(&url).call().ok()?;
    let text = resp.body_mut().read_to_string().ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["providers"]["local"]["queue_depth"].as_u64()
}

#[test]
fn default_http_to_disk_config_under_kill_9_loses_nothing() {
    let secs = soak_secs();
    let (http_port, stats_port) = (free_port(), free_port());
    let dir = temp_dir();
    let script = record_script(dir.path());
    let runs_file = dir.path().join("runs.txt");
    let config = disk_config(http_port, stats_port, &script);
    let mut launches = 1;
    let mut proc = launch(dir.path(), &config, launches);

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let url = format!("http://127.0.0.1:{http_port}/jobs?wait=false");
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|prefix| {
            let (s, r, url) = (script.clone(), runs_file.clone(), url.clone());
            let http = agent();
            producer(
                prefix,
                soak_rate().div_ceil(2),
                start,
                stop.clone(),
                ledger.clone(),
                move |id| {
                    // Acknowledged = 202, i.e. committed to the disk queue.
                    http.post(&url)
                        .send(job(&s, id, &r).as_str())
                        .is_ok_and(|resp| resp.status() == 202)
                },
            )
        })
        .collect();

    let mut kills = Vec::new();
    let mut events = Vec::new();
    let mut next_kill = start + KILL_EVERY;
    while start.elapsed() < secs {
        if let Ok(Some(status)) = proc.child.try_wait() {
            events.push((start.elapsed(), exited(launches, status, &proc)));
            launches += 1;
            proc = launch(dir.path(), &config, launches);
        }
        if Instant::now() >= next_kill {
            let pid = proc.pid() as u32;
            proc.sigkill();
            kills.push(Kill {
                at: start.elapsed(),
                launch: launches,
                pid,
                held: None,
            });
            launches += 1;
            proc = launch(dir.path(), &config, launches);
            next_kill = Instant::now() + KILL_EVERY;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    for p in producers {
        p.join().expect("producer");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let drained = drain(&ledger, &runs_file, || disk_depth(stats_port) == Some(0));
    events.push((start.elapsed(), format!("load stopped; drained: {drained}")));
    proc.sigterm();
    proc.wait_exit(PATIENCE);
    // Dead letters stay in the queue file; the service is stopped now.
    let (code, out, err) = goworker(&["dead", "-c", "config.yaml", "list"], dir.path());
    assert_eq!(code, 0, "goworker dead list: {err}");
    let dead: Vec<(String, String)> = out.lines().map(dead_entry).collect();
    let t = tally(
        "disk",
        secs,
        &ledger,
        &runs(&runs_file),
        &dead,
        &kills,
        &events,
        CLI_THREADS + DISK_BATCH,
    );
    finish("disk", &t, dir);
}

/// The counting itself: a lost job, a duplicate explained by a kill and
/// unexplained ones are each told apart.
#[test]
fn tally_tells_lost_explained_and_unexplained_duplicates_apart() {
    let at = Duration::from_secs(1);
    let ledger = Ledger {
        produced: 6,
        acked: ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| (id.to_string(), at))
            .collect(),
    };
    let runs: Vec<(String, u32)> = [
        ("a", 10), // once
        ("b", 10), // launch 10 was killed holding b: explained
        ("b", 11),
        ("c", 11), // launch 11 was never killed: unexplained
        ("c", 12),
        ("d", 10), // launch 10 was killed, but did not hold d: unexplained
        ("d", 12),
        ("f", 12), // never acknowledged: not lost, not counted against
    ]
    .iter()
    .map(|(id, pid)| (id.to_string(), *pid))
    .collect();
    let dead = vec![("e".to_string(), "poison pill".to_string())];
    let kills = vec![Kill {
        at,
        launch: 10,
        pid: 1010,
        held: Some(HashSet::from(["b".to_string()])),
    }];
    let t = tally("self-test", at, &ledger, &runs, &dead, &kills, &[], 0);
    assert!(t.lost.is_empty(), "e is dead, not lost: {:?}", t.lost);
    assert_eq!(t.extra_runs, 3);
    assert_eq!(t.bound, 1);
    assert_eq!(t.unexplained.len(), 2, "{:?}", t.unexplained);
    assert!(t.unexplained[0].starts_with("c "), "{:?}", t.unexplained);
    assert!(t.unexplained[1].starts_with("d "), "{:?}", t.unexplained);
    assert!(!t.ok());

    let runs_without_a: Vec<(String, u32)> = runs.into_iter().filter(|(id, _)| id != "a").collect();
    let t = tally(
        "self-test",
        at,
        &ledger,
        &runs_without_a,
        &dead,
        &kills,
        &[],
        0,
    );
    assert_eq!(t.lost, vec!["a".to_string()]);
}

#[test]
fn held_ids_are_read_through_stamps_and_carried_entries() {
    assert_eq!(
        held_id("\u{1e}7\u{1e}{\"id\":\"a\",\"type\":\"cli\"}").as_deref(),
        Some("a")
    );
    assert_eq!(
        held_id("\u{1e}8\u{1e}\u{1f}b\u{1f}1\u{1e}{\"type\":\"cli\"}").as_deref(),
        Some("b")
    );
    assert_eq!(held_id("{\"id\":\"c\"}").as_deref(), Some("c"));
    assert_eq!(held_id("\u{1e}junk"), None);
}
