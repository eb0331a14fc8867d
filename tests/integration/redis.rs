//! The redis provider against real redis-server processes and real
//! goworker processes (issue 3, "Must show").

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// A script that appends "ID UNIXTIME" to the file OUT: `record.sh ID OUT`.
fn record_script(dir: &Path) -> PathBuf {
    script(dir, "record.sh", r#"echo "$1 $(date +%s.%N)" >> "$2""#)
}

fn config(redis: &Redis, extra: &str, allow: &[&Path], workers: usize) -> String {
    let allow: Vec<String> = allow.iter().map(|p| format!("{:?}", p)).collect();
    format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 2s\n  retry: {{ base: 300ms, max: 5s, jitter: none }}\n\
         providers:\n  - type: redis\n    name: main\n    url: {}\n    heartbeat: 200ms\n    orphan_after: 1s\n{extra}\
         workers:\n  - type: cli\n    count: {workers}\n    allow: [{}]\n  - type: noop\n",
        redis.url(),
        allow.join(", ")
    )
}

fn record_job(script: &Path, id: &str, out: &Path) -> String {
    serde_json::json!({
        "id": id, "type": "cli",
        "params": {"command": script, "params": [id, out]}
    })
    .to_string()
}

/// The ids recorded in `out`, in order, with the time each ran.
fn recorded(out: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            Some((id.to_string(), t.parse().ok()?))
        })
        .collect()
}

fn ids(out: &Path) -> Vec<String> {
    recorded(out).into_iter().map(|(id, _)| id).collect()
}

/// Non-empty processing lists of `queue`.
fn processing(redis: &Redis, queue: &str) -> Vec<String> {
    redis
        .keys(&format!("{queue}:processing:*"))
        .into_iter()
        .filter(|k| redis.llen(k) > 0)
        .collect()
}

/// The producer's payload inside a stamped delivery (`RS id RS entry`)
/// or a carried queue entry (`US id US n RS payload`).
fn payload(item: &str) -> &str {
    let entry = match item.strip_prefix('\x1e') {
        Some(rest) => rest.split_once('\x1e').map_or(rest, |(_, e)| e),
        None => item,
    };
    match entry.strip_prefix('\x1f') {
        Some(rest) => rest.split_once('\x1e').map_or(rest, |(_, p)| p),
        None => entry,
    }
}

/// The delivery number in a stamped delivery.
fn delivery_id(item: &str) -> &str {
    item.strip_prefix('\x1e')
        .and_then(|rest| rest.split_once('\x1e'))
        .map_or("", |(id, _)| id)
}

fn dead_records(redis: &Redis, queue: &str) -> Vec<serde_json::Value> {
    redis
        .lrange(&format!("{queue}:dead"))
        .iter()
        .map(|r| serde_json::from_str(r).expect("dead record is JSON"))
        .collect()
}

#[test]
fn lpush_producers_get_fifo_order_and_queues_are_served_by_priority() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let mut expected = Vec::new();
    for i in 0..5 {
        let id = format!("high-{i}");
        redis.q(&["LPUSH", "high", &record_job(&rec, &id, &out)]);
        expected.push(id);
    }
    for i in 0..20 {
        let id = format!("low-{i}");
        redis.q(&["LPUSH", "job_list", &record_job(&rec, &id, &out)]);
        expected.push(id);
    }
    // Evicted keys are lost jobs: goworker warns about such a server.
    redis.q(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let cfg = config(&redis, "    queues: [high, job_list]\n", &[&rec], 1);
    let g = Goworker::start(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || ids(&out).len() >= 25),
        "{:?}",
        ids(&out)
    );
    assert_eq!(ids(&out), expected);
    // Later pushes, found while idle on either queue, keep their order too.
    for i in 0..3 {
        let id = format!("later-{i}");
        redis.q(&["LPUSH", "job_list", &record_job(&rec, &id, &out)]);
        expected.push(id);
    }
    assert!(wait_until(LONG, || ids(&out).len() >= 28));
    assert_eq!(ids(&out), expected);
    assert!(
        g.log_text()
            .contains("maxmemory-policy is allkeys-lru, not noeviction")
    );
    // Nor does the test server keep anything on disk: that is warned about too.
    assert!(
        g.log_text()
            .contains("redis has neither AOF (appendonly no) nor RDB snapshots"),
        "{}",
        g.log_text()
    );
}

#[test]
fn kill_9_of_one_process_loses_no_job_and_duplicates_only_what_it_held() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let all: Vec<String> = (0..1000).map(|i| format!("job-{i}")).collect();
    for id in &all {
        redis.q(&["LPUSH", "job_list", &record_job(&rec, id, &out)]);
    }
    let extra = "    fetch_batch: 10\n";
    let cfg = config(&redis, extra, &[&rec], 4).replace(
        "  shutdown_timeout: 2s\n",
        "  shutdown_timeout: 2s\n  channel_bound: 8\n",
    );
    let dir_a = temp_dir();
    let dir_b = temp_dir();
    let mut a = Goworker::start(dir_a.path(), &cfg);
    let _b = Goworker::start(dir_b.path(), &cfg);
    assert!(wait_until(LONG, || ids(&out).len() >= 200));
    let a_key = redis
        .keys("job_list:processing:*")
        .into_iter()
        .find(|k| k.split(':').nth(3) == Some(&a.pid().to_string()))
        .expect("process A has a processing list");
    a.sigkill();
    // A is dead: its processing list is frozen until B recovers it.
    let held: HashSet<String> = redis
        .lrange(&a_key)
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(payload(p)).expect("job JSON");
            v["id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(!held.is_empty(), "A held no jobs at the kill");
    assert!(
        wait_until(LONG, || {
            let seen: HashSet<String> = ids(&out).into_iter().collect();
            all.iter().all(|id| seen.contains(id))
        }),
        "missing ids after the crash: {} of 1000 seen",
        ids(&out).iter().collect::<HashSet<_>>().len()
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in ids(&out) {
        *counts.entry(id).or_default() += 1;
    }
    for (id, n) in &counts {
        if *n > 1 {
            assert!(
                held.contains(id),
                "{id} ran {n} times but A did not hold it"
            );
        }
    }
    assert!(wait_until(LONG, || redis.llen(&a_key) == 0));
}

#[test]
fn redis_restart_on_the_same_port_reconnects_and_every_job_completes() {
    let port = free_port();
    let redis = Redis::start_persistent_on(port, temp_dir());
    let dir = temp_dir();
    let slow = script(
        dir.path(),
        "slow.sh",
        r#"sleep 0.1; echo "$1 $(date +%s.%N)" >> "$2""#,
    );
    let out = dir.path().join("out.txt");
    let all: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    for id in &all {
        redis.q(&["LPUSH", "job_list", &record_job(&slow, id, &out)]);
    }
    let stats = free_port();
    let cfg = config(&redis, "", &[&slow], 2).replace(
        "stats_listen: null",
        &format!("stats_listen: 127.0.0.1:{stats}"),
    );
    let g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || ids(&out).len() >= 4));
    assert!(wait_until(LONG, || healthz(stats).0 == 200));
    let data = redis.stop();
    assert!(
        wait_until(LONG, || g.log_text().contains("redis unreachable")),
        "{}",
        g.log_text()
    );
    // The lost connection shows in /healthz with its reason.
    assert!(wait_until(LONG, || {
        let (code, body) = healthz(stats);
        code == 503 && body.contains("redis")
    }));
    let redis = Redis::start_persistent_on(port, data);
    assert!(
        wait_until(LONG, || {
            let seen: HashSet<String> = ids(&out).into_iter().collect();
            all.iter().all(|id| seen.contains(id))
        }),
        "not every job ran: {:?}",
        ids(&out)
    );
    // Acks of jobs that finished while redis was down were delivered.
    assert!(
        wait_until(LONG, || redis.llen("job_list") == 0
            && processing(&redis, "job_list").is_empty()),
        "queue {} / processing {:?}",
        redis.llen("job_list"),
        processing(&redis, "job_list")
    );
    assert!(g.log_text().matches("connected to redis").count() >= 2);
    assert!(wait_until(LONG, || healthz(stats).0 == 200));
    // Only one process, and it never lost track of a job: nothing ran twice.
    let ran = ids(&out);
    let unique: HashSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "{ran:?}");
    // Logged once per change of state, not once per failed attempt.
    assert_eq!(g.log_text().matches("redis unreachable").count(), 1);
}

/// `GET /healthz` on the stats server: (status, body); (0, "") when it
/// cannot be reached.
fn healthz(port: u16) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

#[test]
fn a_failing_job_backs_off_through_the_delayed_set_then_dead_letters_and_run_at_waits() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let fail = script(dir.path(), "fail.sh", "echo broken; exit 1");
    let out = dir.path().join("out.txt");
    let cfg = config(&redis, "", &[&rec, &fail], 2);
    let _g = Goworker::start(dir.path(), &cfg);

    let run_at = goworker_now() + 2.0;
    let later = serde_json::json!({
        "id": "later", "type": "cli", "run_at": run_at,
        "params": {"command": rec, "params": ["later", out]}
    });
    redis.q(&["LPUSH", "job_list", &later.to_string()]);
    let failing = serde_json::json!({
        "id": "failing", "type": "cli", "retries": 3, "capture_output": true,
        "params": {"command": fail}
    });
    redis.q(&["LPUSH", "job_list", &failing.to_string()]);

    // Watch the delayed set: each retry waits there, due later each time.
    let mut due: HashMap<u64, f64> = HashMap::new();
    let mut later_waited = false;
    let finished = wait_until(LONG, || {
        let entries = redis.q(&["ZRANGE", "job_list:delayed", "0", "-1", "WITHSCORES"]);
        for pair in entries.strings().chunks(2) {
            let job: serde_json::Value = serde_json::from_str(&pair[0]).expect("job JSON");
            let score: f64 = pair[1].parse().expect("score");
            match job["id"].as_str() {
                Some("failing") => {
                    due.insert(job["attempts"].as_u64().unwrap_or(0), score);
                }
                Some("later") => later_waited = true,
                _ => {}
            }
        }
        !dead_records(&redis, "job_list").is_empty() && !ids(&out).is_empty()
    });
    assert!(finished, "due times seen: {due:?}");
    let dead = dead_records(&redis, "job_list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "failing");
    assert_eq!(dead[0]["attempts"], 4);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("exit status 1"),
        "{}",
        dead[0]
    );
    assert!(dead[0]["output"].as_str().unwrap_or("").contains("broken"));
    assert!(dead[0]["first_attempt_at"].as_f64().is_some());
    assert!(dead[0]["last_attempt_at"].as_f64().is_some());
    assert_eq!(dead[0]["job"]["retries"], 3);
    let (d1, d2, d3) = (due[&1], due[&2], due[&3]);
    assert!(d1 < d2 && d2 < d3, "{due:?}");
    assert!(d3 - d2 > d2 - d1, "back-off does not grow: {due:?}");

    assert!(
        later_waited,
        "the run_at job never waited in the delayed set"
    );
    let ran = recorded(&out);
    assert_eq!(ran.len(), 1);
    assert!(
        ran[0].1 >= run_at,
        "started at {} before run_at {run_at}",
        ran[0].1
    );
    assert_eq!(redis.llen("job_list"), 0);
    assert!(processing(&redis, "job_list").is_empty());
}

fn goworker_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn malformed_json_and_unknown_types_are_dead_lettered_raw_without_retry() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let cfg = config(&redis, "", &[&rec], 1);
    let g = Goworker::start(dir.path(), &cfg);
    let bad_json = "{\"type\": \"cli\", oops";
    let unknown = r#"{"type":"teleport","retries":5,"colour":"blue"}"#;
    redis.q(&["LPUSH", "job_list", bad_json]);
    redis.q(&["LPUSH", "job_list", unknown]);
    redis.q(&["LPUSH", "job_list", &record_job(&rec, "good", &out)]);
    assert!(wait_until(LONG, || ids(&out) == ["good"]));
    assert!(wait_until(LONG, || dead_records(&redis, "job_list").len() == 2));
    let dead = dead_records(&redis, "job_list");
    let by_raw: HashMap<&str, &serde_json::Value> = dead
        .iter()
        .map(|r| (r["raw"].as_str().expect("raw kept"), r))
        .collect();
    assert!(
        by_raw[bad_json]["error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid JSON")
    );
    assert_eq!(by_raw[bad_json]["attempts"], 0);
    assert!(
        by_raw[unknown]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no worker pool for type \"teleport\"")
    );
    assert_eq!(by_raw[unknown]["attempts"], 0);
    // Nothing retried, nothing left behind, and the service runs on.
    redis.q(&["LPUSH", "job_list", &record_job(&rec, "after", &out)]);
    assert!(wait_until(LONG, || ids(&out) == ["good", "after"]));
    assert_eq!(dead_records(&redis, "job_list").len(), 2);
    assert_eq!(redis.q(&["ZCARD", "job_list:delayed"]).int(), 0);
    assert!(processing(&redis, "job_list").is_empty());
    assert!(g.log_text().contains("malformed job dead-lettered"));
}

#[test]
fn a_job_that_kills_its_process_is_dead_lettered_after_max_recoveries() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let killer = script(dir.path(), "killer.sh", "kill -9 $PPID; sleep 5");
    let cfg = config(&redis, "    max_recoveries: 2\n", &[&rec, &killer], 2);
    let pill =
        serde_json::json!({"id": "pill", "type": "cli", "params": {"command": killer}}).to_string();
    redis.q(&["LPUSH", "job_list", &pill]);
    let mut g = Goworker::start(dir.path(), &cfg);
    let mut starts = 1;
    // A supervisor, as systemd would be: restart the process whenever it dies.
    let dead_lettered = wait_until(LONG, || {
        if g.child.try_wait().ok().flatten().is_some() {
            g = Goworker::start(dir.path(), &cfg);
            starts += 1;
        }
        !dead_records(&redis, "job_list").is_empty()
    });
    assert!(dead_lettered, "started {starts} times");
    assert!(
        starts >= 3,
        "the pill killed only {} process(es)",
        starts - 1
    );
    let dead = dead_records(&redis, "job_list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "pill");
    assert_eq!(dead[0]["raw"], pill);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("poison pill"),
        "{}",
        dead[0]
    );
    // Other jobs keep flowing.
    let all: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for id in &all {
        redis.q(&["LPUSH", "job_list", &record_job(&rec, id, &out)]);
    }
    assert!(wait_until(LONG, || {
        if g.child.try_wait().ok().flatten().is_some() {
            g = Goworker::start(dir.path(), &cfg);
        }
        ids(&out).len() >= all.len()
    }));
    let mut seen = ids(&out);
    seen.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn sigterm_leaves_the_processing_list_empty_and_the_jobs_back_in_the_queue() {
    let redis = Redis::start();
    let dir = temp_dir();
    let sleeper = script(dir.path(), "sleeper.sh", "sleep 30");
    let cfg = config(&redis, "", &[&sleeper], 2);
    let jobs: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"id": format!("s{i}"), "type": "cli", "params": {"command": sleeper}})
                .to_string()
        })
        .collect();
    for j in &jobs {
        redis.q(&["LPUSH", "job_list", j]);
    }
    let mut g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || g
        .log_text()
        .matches("attempt 1 on pool cli")
        .count()
        >= 2));
    let held = processing(&redis, "job_list");
    assert_eq!(held.len(), 1, "{held:?}");
    let consumer = held[0]
        .trim_start_matches("job_list:processing:")
        .to_string();
    g.sigterm();
    let status = g.wait_exit(LONG).expect("goworker exited");
    assert!(status.success(), "{status:?}\n{}", g.log_text());
    assert_eq!(redis.llen(&held[0]), 0);
    assert!(processing(&redis, "job_list").is_empty());
    assert_eq!(redis.llen("job_list"), 6);
    // Back in their order: the oldest is taken first again.
    let mut queue = redis.lrange("job_list");
    queue.reverse();
    assert_eq!(queue, jobs);
    assert!(
        !redis
            .q(&["ZRANGE", "job_list:consumers", "0", "-1"])
            .strings()
            .contains(&consumer)
    );
}

#[test]
fn enqueue_and_dead_retry_all_put_jobs_back_and_they_run() {
    let redis = Redis::start();
    let dir = temp_dir();
    let flag = dir.path().join("ready");
    let out = dir.path().join("out.txt");
    let gate = script(
        dir.path(),
        "gate.sh",
        r#"[ -f "$1" ] || exit 1; echo "$3 ok" >> "$2""#,
    );
    let cfg = config(&redis, "", &[&gate], 1);
    let g = Goworker::start(dir.path(), &cfg);
    let cfg_path = dir.path().join("config.yaml");
    let cfg_arg = cfg_path.to_str().expect("utf-8 path");
    for id in ["g1", "g2"] {
        let job = serde_json::json!({
            "id": id, "type": "cli",
            "params": {"command": gate, "params": [flag, out, id]}
        });
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, job.to_string()).expect("write job");
        let (code, stdout, stderr) = goworker(
            &["enqueue", "-c", cfg_arg, file.to_str().expect("path")],
            dir.path(),
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout.trim(), id);
    }
    assert!(wait_until(LONG, || dead_records(&redis, "job_list").len() == 2));
    let (code, stdout, _) = goworker(&["dead", "-c", cfg_arg, "list"], dir.path());
    assert_eq!(code, 0);
    assert!(
        stdout.contains("\"g1\"") && stdout.contains("\"g2\""),
        "{stdout}"
    );

    std::fs::write(&flag, "").expect("flag");
    let (code, stdout, stderr) = goworker(&["dead", "-c", cfg_arg, "retry", "g1"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("re-queued 1 job(s)"), "{stdout}");
    assert!(wait_until(LONG, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("g1 ok")
    }));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(!text.contains("g2 ok"), "only g1 was re-queued: {text}");
    assert_eq!(dead_records(&redis, "job_list").len(), 1);
    let args = [
        "dead",
        "-c",
        cfg_arg,
        "--provider",
        "main",
        "retry",
        "--all",
    ];
    let (code, stdout, stderr) = goworker(&args, dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("re-queued 1 job(s)"), "{stdout}");
    assert!(
        wait_until(LONG, || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            text.contains("g1 ok") && text.contains("g2 ok")
        }),
        "{}",
        g.log_text()
    );
    assert!(dead_records(&redis, "job_list").is_empty());

    // A bad payload is refused before it is stored; purge empties the dead letters.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{nope").expect("write");
    let (code, _, stderr) = goworker(
        &["enqueue", "-c", cfg_arg, bad.to_str().expect("path")],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("bad.json"), "{stderr}");
    redis.q(&[
        "LPUSH",
        "job_list:dead",
        r#"{"raw":"x","error":"e","attempts":0,"failed_at":1}"#,
    ]);
    let (code, stdout, _) = goworker(&["dead", "-c", cfg_arg, "purge"], dir.path());
    assert_eq!(code, 0);
    assert!(stdout.contains("purged 1"), "{stdout}");
    assert_eq!(redis.llen("job_list:dead"), 0);
}

#[test]
fn rate_limit_paces_the_jobs_taken() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    for i in 0..12 {
        redis.q(&[
            "LPUSH",
            "job_list",
            &record_job(&rec, &format!("r{i}"), &out),
        ]);
    }
    let cfg = config(&redis, "    rate_limit: 10\n", &[&rec], 4);
    let _g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || ids(&out).len() >= 12));
    let times: Vec<f64> = recorded(&out).into_iter().map(|(_, t)| t).collect();
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    let last = times.iter().cloned().fold(f64::MIN, f64::max);
    // 10 jobs/s with bursts of one: 12 jobs cannot start within 1 s.
    assert!(
        last - first >= 1.0,
        "12 jobs ran within {:.3} s",
        last - first
    );
}

#[test]
fn password_from_the_environment_is_used_and_never_logged() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    redis.q(&["LPUSH", "job_list", &record_job(&rec, "authed", &out)]);
    // From here on the server wants the password (our helper can no longer talk to it).
    redis.q(&["CONFIG", "SET", "requirepass", "s3cret-pw"]);
    let cfg = config(&redis, "    password_env: GW_TEST_REDIS_PW\n", &[&rec], 1);
    let g = Goworker::start_with_env(dir.path(), &cfg, &[("GW_TEST_REDIS_PW", "s3cret-pw")]);
    assert!(
        wait_until(LONG, || ids(&out) == ["authed"]),
        "{}",
        g.log_text()
    );
    assert!(!g.log_text().contains("s3cret-pw"));

    // A variable that is not set stops start-up with a clear error.
    let dir2 = temp_dir();
    let cfg2 = config(
        &redis,
        "    password_env: GW_TEST_UNSET_VARIABLE\n",
        &[&rec],
        1,
    );
    std::fs::write(dir2.path().join("config.yaml"), cfg2).expect("write config");
    let (code, _, stderr) = goworker(&["run", "-c", "config.yaml"], dir2.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("GW_TEST_UNSET_VARIABLE"), "{stderr}");
}

#[test]
fn bad_redis_options_fail_the_check_with_the_key_named() {
    let dir = temp_dir();
    for (option, key) in [
        ("pool_size: 1", "pool_size"),
        ("url: http://localhost", "url"),
        ("queues: []", "queues"),
        ("orphan_after: 1s\n    heartbeat: 1s", "orphan_after"),
        ("colour: blue", "colour"),
    ] {
        let cfg = format!(
            "manager: {{ stats_listen: null }}\nproviders:\n  - type: redis\n    {option}\nworkers:\n  - type: noop\n"
        );
        std::fs::write(dir.path().join("config.yaml"), cfg).expect("write config");
        let (code, _, stderr) = goworker(&["check", "-c", "config.yaml"], dir.path());
        assert_eq!(code, 2, "{option}: {stderr}");
        assert!(
            stderr.contains("providers[0]") && stderr.contains(key),
            "{option}: {stderr}"
        );
    }
}

#[test]
fn enqueue_reads_one_job_per_line_from_stdin() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let cfg = config(&redis, "", &[&rec], 1);
    std::fs::write(dir.path().join("config.yaml"), &cfg).expect("write config");
    let lines = format!(
        "{}\n\n{}\n",
        record_job(&rec, "in-1", &out),
        record_job(&rec, "in-2", &out)
    );
    let mut child = std::process::Command::new(goworker_bin())
        .args(["enqueue", "-c", "config.yaml", "-"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn enqueue");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), lines.as_bytes())
        .expect("write stdin");
    let result = child.wait_with_output().expect("enqueue ran");
    assert!(result.status.success());
    assert_eq!(String::from_utf8_lossy(&result.stdout), "in-1\nin-2\n");
    assert_eq!(redis.llen("job_list"), 2);
    let _g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || ids(&out) == ["in-1", "in-2"]));
}

#[test]
fn jobs_moved_by_a_fetch_whose_reply_was_lost_run_once_each() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    // An odd fetch_max_bytes marks the fetch requests.
    let cfg = config(&redis, "    fetch_max_bytes: 7654321\n", &[&rec], 2)
        .replace(&redis.url(), &proxy.url());
    let g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || redis
        .q(&["ZCARD", "job_list:consumers"])
        .int()
        == 1));
    // The next fetch request reaches Redis, which runs it; its reply is
    // lost with the connection. Should the cut catch an idle fetch that
    // found nothing (pushing is not atomic with arming), go again.
    let mut all: Vec<String> = Vec::new();
    for round in 0..5 {
        proxy.cut_on(b"7654321");
        for i in 0..20 {
            let id = format!("lost-{round}-{i}");
            redis.q(&["LPUSH", "job_list", &record_job(&rec, &id, &out)]);
            all.push(id);
        }
        assert!(
            wait_until(LONG, || proxy.cuts() == round + 1),
            "{}",
            g.log_text()
        );
        assert!(
            wait_until(LONG, || ids(&out).len() >= all.len()),
            "{:?}\n{}",
            ids(&out),
            g.log_text()
        );
        if g.log_text()
            .contains("before the connection broke are delivered now")
        {
            break;
        }
    }
    assert!(wait_until(LONG, || processing(&redis, "job_list").is_empty()));
    let mut ran = ids(&out);
    ran.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(ran, want, "each exactly once");
    assert!(
        g.log_text()
            .contains("before the connection broke are delivered now"),
        "{}",
        g.log_text()
    );
}

#[test]
fn a_resent_ack_removes_only_its_own_delivery_of_an_identical_payload() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let dir = temp_dir();
    // Two deliveries of the same bytes: the first to start succeeds at
    // once; the other waits for the file `go`, then fails (and has one retry).
    let twin = script(
        dir.path(),
        "twin.sh",
        r#"echo run >> "$1/runs"; mkdir "$1/lock" 2>/dev/null && exit 0
while [ ! -f "$1/go" ]; do sleep 0.05; done; exit 1"#,
    );
    let cfg = config(&redis, "", &[&twin], 2).replace(&redis.url(), &proxy.url());
    let g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || g
        .log_text()
        .contains("connected to redis")));
    // The first ack's pipeline reaches Redis, its reply is lost, and the
    // ack thread sends it again.
    proxy.cut_on(b"LREM");
    let job = serde_json::json!({
        "id": "twin", "type": "cli", "retries": 1,
        "params": {"command": twin, "params": [dir.path()]}
    })
    .to_string();
    redis.q(&["LPUSH", "job_list", &job]);
    redis.q(&["LPUSH", "job_list", &job]);
    assert!(wait_until(LONG, || proxy.cuts() == 1), "{}", g.log_text());
    let runs = || lines(&dir.path().join("runs")).len();
    assert!(wait_until(LONG, || runs() == 2));
    std::fs::write(dir.path().join("go"), "").expect("flag");
    // The waiting twin fails, is still held, and so gets its retry and then
    // its dead letter.
    assert!(
        wait_until(LONG, || dead_records(&redis, "job_list").len() == 1),
        "{}",
        g.log_text()
    );
    assert_eq!(runs(), 3);
    assert_eq!(dead_records(&redis, "job_list")[0]["attempts"], 2);
    assert!(wait_until(LONG, || processing(&redis, "job_list").is_empty()));
}

/// `wait.sh FLAG ID OUT`: waits for the file FLAG, then records ID.
fn gate_script(dir: &Path) -> PathBuf {
    script(
        dir,
        "wait.sh",
        // Gives up when goworker is gone (kill -9 leaves its jobs running).
        r#"while [ ! -f "$1" ]; do sleep 0.05; kill -0 $PPID 2>/dev/null || exit 1; done; echo "$2 $(date +%s.%N)" >> "$3""#,
    )
}

fn gate_job(gate: &Path, flag: &Path, id: &str, out: &Path) -> serde_json::Value {
    serde_json::json!({
        "id": id, "type": "cli",
        "params": {"command": gate, "params": [flag, id, out]}
    })
}

#[test]
fn a_settled_job_that_redis_brings_back_after_a_restart_does_not_run_again() {
    // Redis restarts from an older snapshot: the processing list holds a
    // job again that this process already ran and acked.
    let port = free_port();
    let redis = Redis::start_on(port, temp_dir());
    let dir = temp_dir();
    let gate = gate_script(dir.path());
    let flag = dir.path().join("go");
    let out = dir.path().join("out.txt");
    let g = Goworker::start(dir.path(), &config(&redis, "", &[&gate], 1));
    let j1 = gate_job(&gate, &flag, "j1", &out).to_string();
    redis.q(&["LPUSH", "job_list", &j1]);
    assert!(wait_until(LONG, || processing(&redis, "job_list").len() == 1));
    redis.q(&["SAVE"]);
    std::fs::write(&flag, "").expect("flag");
    assert!(wait_until(LONG, || ids(&out) == ["j1"]));
    assert!(wait_until(LONG, || processing(&redis, "job_list").is_empty()));
    let data = redis.stop();
    let redis = Redis::start_on(port, data);
    // The snapshot holds j1 in the processing list again.
    assert_eq!(processing(&redis, "job_list").len(), 1);
    let j2 = gate_job(&gate, &flag, "j2", &out).to_string();
    redis.q(&["LPUSH", "job_list", &j2]);
    assert!(
        wait_until(LONG, || ids(&out).len() >= 2),
        "{}",
        g.log_text()
    );
    // Its ack is stored again; it does not run again.
    assert!(
        wait_until(LONG, || processing(&redis, "job_list").is_empty()),
        "{}",
        g.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&out), ["j1", "j2"], "{}", g.log_text());
    assert!(g.log_text().contains("settled job(s) again"));
}

#[test]
fn identical_payloads_without_an_id_are_recovered_each_on_its_own_count_and_keep_their_ids() {
    let redis = Redis::start();
    let dir = temp_dir();
    let gate = gate_script(dir.path());
    let flag = dir.path().join("go");
    let out = dir.path().join("out.txt");
    // Ten copies of one payload, no id.
    let same = serde_json::json!({
        "type": "cli", "params": {"command": gate, "params": [flag, "same", out]}
    })
    .to_string();
    for _ in 0..10 {
        redis.q(&["LPUSH", "job_list", &same]);
    }
    let cfg = config(&redis, "    max_recoveries: 1\n", &[&gate], 10);
    let dir_a = temp_dir();
    let mut a = Goworker::start(dir_a.path(), &cfg);
    assert!(wait_until(LONG, || a
        .log_text()
        .matches("attempt 1 on pool cli")
        .count()
        == 10));
    let held = processing(&redis, "job_list");
    assert_eq!(held.len(), 1);
    // Each delivery is told apart by its stamp; the ids A gave them.
    let stamped = redis.lrange(&held[0]);
    // A's consumer id ends with its tag; a delivery id is `<tag>.<n>`.
    let tag = held[0].rsplit(':').next().unwrap_or_default();
    let dids: HashSet<String> = stamped
        .iter()
        .map(|s| format!("{tag}.{}", delivery_id(s)))
        .collect();
    assert_eq!(dids.len(), 10, "{stamped:?}");
    a.sigkill();
    std::fs::write(&flag, "").expect("flag");
    let dir_b = temp_dir();
    let b = Goworker::start(dir_b.path(), &cfg);
    assert!(
        wait_until(LONG, || ids(&out).len() >= 10),
        "{}",
        b.log_text()
    );
    assert!(wait_until(LONG, || processing(&redis, "job_list").is_empty()));
    // One crash each: none of them is a poison pill.
    assert!(dead_records(&redis, "job_list").is_empty());
    assert_eq!(ids(&out).len(), 10);
    // B ran each under the id A gave it at its first fetch.
    let log = b.log_text();
    for did in &dids {
        assert!(log.contains(&format!("job {did} (")), "{did}\n{log}");
    }
}

#[test]
fn poison_pills_reach_the_failure_handlers_and_trimmed_dead_letters_are_counted() {
    let redis = Redis::start();
    let dir = temp_dir();
    let failures = dir.path().join("failures.jsonl");
    let killer = script(dir.path(), "killer.sh", "kill -9 $PPID; sleep 5");
    let stats = free_port();
    let cfg = config(
        &redis,
        "    max_recoveries: 0\n    dead_letter_max: 2\n",
        &[&killer],
        1,
    )
    .replace(
        "stats_listen: null",
        &format!("stats_listen: 127.0.0.1:{stats}"),
    ) + &format!("failure_handlers:\n  - type: file\n    path: {failures:?}\n");
    // Two old records fill the dead letters up to dead_letter_max.
    for n in 0..2 {
        let old = format!(r#"{{"id":"old-{n}","error":"e","attempts":0,"failed_at":1}}"#);
        redis.q(&["LPUSH", "job_list:dead", &old]);
    }
    let pill = serde_json::json!({"type": "cli", "params": {"command": killer}}).to_string();
    redis.q(&["LPUSH", "job_list", &pill]);
    let mut g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || g
        .child
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    let g2 = Goworker::start(dir.path(), &cfg);
    // The next process recovers it as a poison pill: into the dead letters
    // (the oldest trimmed) and to the failure handler.
    assert!(
        wait_until(LONG, || lines(&failures).len() == 1),
        "{}",
        g2.log_text()
    );
    let rec: serde_json::Value = serde_json::from_str(&lines(&failures)[0]).expect("record");
    assert!(rec["error"].as_str().unwrap_or("").contains("poison pill"));
    assert_eq!(rec["raw"], pill);
    let dead = dead_records(&redis, "job_list");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["id"], rec["id"]);
    assert_eq!(dead[1]["id"], "old-1");
    assert!(g2.log_text().contains("old dead letter(s) trimmed"));
    // A dead letter through the ack path trims one more, counted in /stats.
    redis.q(&["LPUSH", "job_list", "{not json"]);
    assert!(
        wait_until(LONG, || {
            let body = stats_json(stats);
            body["providers"]["main"]["dead_letters_trimmed"] == 2
        }),
        "{}",
        stats_json(stats)
    );
    assert_eq!(dead_records(&redis, "job_list").len(), 2);
}

/// `GET /stats` on the stats server, as JSON (null when unreachable).
fn stats_json(port: u16) -> serde_json::Value {
    agent()
        .get(&format!("http://127.0.0.1:{port}/stats"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn signals_do_not_break_the_connection() {
    // SIGHUPs (reloads) while jobs run, to the process and to each of the
    // provider's threads in turn: the kernel may run a process signal's
    // handler on any thread that does not block it, and a socket read with
    // a timeout fails with EINTR when that happens, SA_RESTART or not.
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let cfg = config(&redis, "", &[&rec], 4);
    let g = Goworker::start(dir.path(), &cfg);
    assert!(wait_until(LONG, || g
        .log_text()
        .contains("connected to redis")));
    let pid = g.pid() as u32;
    // goworker-provider-main (fetch), goworker-redis-acks/upkeep-main.
    let mut threads = thread_ids(pid, "goworker-provid");
    threads.extend(thread_ids(pid, "goworker-redis-"));
    assert_eq!(threads.len(), 3);
    let all: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    for id in &all {
        redis.q(&["LPUSH", "job_list", &record_job(&rec, id, &out)]);
    }
    for i in 0..600 {
        g.signal(libc::SIGHUP);
        signal_thread(pid, threads[i % threads.len()], libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        wait_until(LONG, || ids(&out).len() >= all.len()),
        "{}",
        g.log_text()
    );
    let log = g.log_text();
    assert!(!log.contains("Interrupted system call"), "{log}");
    assert!(!log.contains("redis unreachable"), "{log}");
    let ran: HashSet<String> = ids(&out).into_iter().collect();
    assert_eq!(ran.len(), all.len());
    assert_eq!(ids(&out).len(), all.len(), "no job ran twice");
}

#[test]
fn after_an_outage_longer_than_orphan_after_no_healthy_peer_is_swept() {
    let port = free_port();
    let redis = Redis::start_persistent_on(port, temp_dir());
    let proxy = Proxy::start(port);
    let dir = temp_dir();
    let gate = gate_script(dir.path());
    let flag = dir.path().join("go");
    let out = dir.path().join("out.txt");
    let cfg = |url: &str| {
        config(&redis, "", &[&gate], 1)
            .replace("orphan_after: 1s", "orphan_after: 5s")
            .replace(&redis.url(), url)
    };
    // A reaches redis through the proxy; B directly.
    let dir_a = temp_dir();
    let a = Goworker::start(dir_a.path(), &cfg(&proxy.url()));
    redis.q(&[
        "LPUSH",
        "job_list",
        &gate_job(&gate, &flag, "held-by-a", &out).to_string(),
    ]);
    assert!(wait_until(LONG, || a
        .log_text()
        .contains("attempt 1 on pool cli")));
    let dir_b = temp_dir();
    let b = Goworker::start(dir_b.path(), &cfg(&redis.url()));
    assert!(wait_until(LONG, || redis
        .q(&["ZCARD", "job_list:consumers"])
        .int()
        == 2));
    // Redis is down for longer than orphan_after; when it is back, A gets
    // through a moment after B (still well within orphan_after).
    proxy.block();
    let data = redis.stop();
    std::thread::sleep(Duration::from_secs(6));
    let redis = Redis::start_persistent_on(port, data);
    std::thread::sleep(Duration::from_secs(1));
    proxy.unblock();
    assert!(wait_until(LONG, || a
        .log_text()
        .matches("connected to redis")
        .count()
        >= 2));
    // B, up since the restart, did not take A's job: A still holds it.
    std::thread::sleep(Duration::from_secs(6));
    assert!(!b.log_text().contains("is silent"), "{}", b.log_text());
    assert_eq!(processing(&redis, "job_list").len(), 1);
    std::fs::write(&flag, "").expect("flag");
    assert!(wait_until(LONG, || ids(&out) == ["held-by-a"]));
    assert!(wait_until(LONG, || processing(&redis, "job_list").is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&out), ["held-by-a"]);
}

#[test]
fn a_batch_stays_within_fetch_max_bytes_and_keeps_the_order() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    let all: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    for id in &all {
        redis.q(&["LPUSH", "job_list", &record_job(&rec, id, &out)]);
    }
    let size = record_job(&rec, "b00", &out).len();
    // Room for two payloads per round trip.
    let extra = format!("    fetch_max_bytes: {}\n", size * 2 + size / 2);
    let g = Goworker::start(dir.path(), &config(&redis, &extra, &[&rec], 1));
    assert!(
        wait_until(LONG, || ids(&out).len() >= all.len()),
        "{}",
        g.log_text()
    );
    assert_eq!(ids(&out), all);
    // At least ten fetches for twenty jobs (RPOP is what the script runs).
    let stats = redis.q(&["INFO", "commandstats"]).strings().join("");
    let rpops: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_rpop:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rpops >= 10, "{stats}");
}

#[test]
fn credentials_in_the_url_are_never_printed() {
    let redis = Redis::start();
    let dir = temp_dir();
    let stats = free_port();
    for secret in ["s3cr/et#x", "p@ss/w:rd", "%2Fhidden?"] {
        let url = format!("redis://user:{secret}@127.0.0.1:{}/0", redis.port);
        let cfg = config(&redis, "", &[], 1)
            .replace(&redis.url(), &url)
            .replace(
                "stats_listen: null",
                &format!("stats_listen: 127.0.0.1:{stats}"),
            );
        std::fs::write(dir.path().join("config.yaml"), &cfg).expect("write config");
        let (_, stdout, stderr) = goworker(&["check", "-c", "config.yaml"], dir.path());
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
        let mut g = Goworker::start(dir.path(), &cfg);
        // Whether it connects or not, the URL shows up in the log.
        assert!(wait_until(LONG, || g.log_text().contains("as consumer")
            || g.child.try_wait().ok().flatten().is_some()));
        let _ = wait_until(Duration::from_secs(2), || healthz(stats).0 != 0);
        let (_, body) = healthz(stats);
        let log = g.log_text();
        assert!(log.contains("user:***@127.0.0.1"), "{log}");
        for part in [secret, "s3cr", "hidden", "w:rd"] {
            assert!(
                !log.contains(part) && !body.contains(part),
                "{part}: {log}\n{body}"
            );
        }
        g.sigterm();
        let _ = g.wait_exit(LONG);
    }
}

#[test]
fn stats_report_the_queue_depth_pending_and_delayed() {
    let redis = Redis::start();
    let yaml = config(&redis, "", &[], 1);
    let config = goworker::Config::parse(&yaml, &goworker::Registry::with_builtins()).unwrap();
    let service = goworker::Service::builder(config)
        .build()
        .unwrap()
        .start()
        .unwrap();
    // Four jobs due in an hour wait in the delayed set: they count.
    for n in 0..4 {
        let job = serde_json::json!({"id": format!("later-{n}"), "type": "noop", "run_at": goworker_now() + 3600.0});
        redis.q(&["LPUSH", "job_list", &job.to_string()]);
    }
    let depth = || {
        service
            .snapshot()
            .providers
            .get("main")
            .and_then(|p| p.queue_depth)
    };
    assert!(wait_until(PATIENCE, || depth() == Some(4)), "{:?}", depth());
    service.shutdown();
    service.wait();
}

#[test]
fn sighup_applies_a_changed_rate_limit() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    for i in 0..60 {
        redis.q(&[
            "LPUSH",
            "job_list",
            &record_job(&rec, &format!("r{i}"), &out),
        ]);
    }
    // At half a job per second the 60 jobs would need two minutes.
    let g = Goworker::start(
        dir.path(),
        &config(&redis, "    rate_limit: 0.5\n", &[&rec], 4),
    );
    assert!(wait_until(PATIENCE, || !ids(&out).is_empty()));
    std::fs::write(
        dir.path().join("config.yaml"),
        config(&redis, "    rate_limit: 0\n", &[&rec], 4),
    )
    .unwrap();
    g.signal(libc::SIGHUP);
    // Well before two minutes: the new, unlimited rate applies.
    assert!(
        wait_until(PATIENCE, || ids(&out).len() >= 60),
        "{}",
        g.log_text()
    );
    let log = g.log_text();
    assert!(
        log.contains("reload: provider main: rate_limit 0 job(s)/s"),
        "{log}"
    );
    assert!(
        log.contains("provider main: rate_limit now 0 job(s)/s"),
        "{log}"
    );
}

#[test]
fn healthz_names_why_redis_cannot_be_reached() {
    let dir = temp_dir();
    let (nothing, stats) = (free_port(), free_port());
    let config = format!(
        "manager: {{ stats_listen: 127.0.0.1:{stats} }}\nproviders:\n  - type: redis\n    url: redis://127.0.0.1:{nothing}/0\nworkers:\n  - type: noop\n"
    );
    let _g = Goworker::start(dir.path(), &config);
    let reason = || {
        agent()
            .get(&format!("http://127.0.0.1:{stats}/healthz"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    };
    // Every thread's view, not only the first to see the error, says why.
    let mut last = String::new();
    let said = wait_until(PATIENCE, || {
        last = reason();
        last.contains("Connection refused")
    });
    assert!(said, "{last}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = reason();
    assert!(later.contains("Connection refused"), "{later}");
}

#[test]
fn a_prefix_keeps_every_key_of_one_application_apart() {
    let redis = Redis::start();
    let dir = temp_dir();
    let rec = record_script(dir.path());
    let out = dir.path().join("out.txt");
    // Another application's job on the unprefixed name is left alone.
    redis.q(&["LPUSH", "job_list", &record_job(&rec, "theirs", &out)]);
    redis.q(&["LPUSH", "app1:job_list", &record_job(&rec, "ours", &out)]);
    let cfg = config(&redis, "    prefix: \"app1:\"\n", &[&rec], 1);
    let g = Goworker::start(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || ids(&out) == ["ours"]),
        "{:?}",
        ids(&out)
    );
    // Its bookkeeping lives under the prefix too.
    assert!(wait_until(LONG, || !redis
        .keys("app1:job_list:consumers")
        .is_empty()));
    let ours: Vec<String> = redis
        .keys("*")
        .into_iter()
        .filter(|k| k != "job_list")
        .collect();
    assert!(ours.iter().all(|k| k.starts_with("app1:")), "{ours:?}");
    assert_eq!(redis.llen("job_list"), 1);
    drop(g);
}

#[test]
fn queue_depths_are_reported_queue_by_queue() {
    let redis = Redis::start();
    let dir = temp_dir();
    let stats = free_port();
    // A rate limit of (almost) nothing keeps the jobs waiting to be seen.
    for i in 0..3 {
        redis.q(&[
            "LPUSH",
            "high",
            &format!("{{\"type\":\"noop\",\"id\":\"h{i}\"}}"),
        ]);
    }
    for i in 0..5 {
        redis.q(&[
            "LPUSH",
            "low",
            &format!("{{\"type\":\"noop\",\"id\":\"l{i}\"}}"),
        ]);
    }
    let cfg = config(
        &redis,
        "    queues: [high, low]\n    rate_limit: 0.001\n",
        &[],
        1,
    )
    .replace(
        "stats_listen: null",
        &format!("stats_listen: 127.0.0.1:{stats}"),
    );
    let _g = Goworker::start(dir.path(), &cfg);
    let get = |path: &str| {
        agent()
            .get(&format!("http://127.0.0.1:{stats}{path}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    };
    let mut last = serde_json::Value::Null;
    let seen = wait_until(PATIENCE, || {
        last = serde_json::from_str(&get("/stats")).unwrap_or_default();
        let q = &last["providers"]["main"]["queues"];
        q["low"] == 5 && q["high"].as_u64().is_some_and(|n| n >= 2)
    });
    assert!(seen, "{last}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("goworker_queue_depth_by_queue{provider=\"main\",queue=\"low\"} 5"),
        "{metrics}"
    );
}
