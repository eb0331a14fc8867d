//! The core engine (issue 2): retries, timeouts, final failures, panics,
//! shutdown under real signals, `goworker check`, the custom worker example.

use crate::util::*;
use goworker::{
    Config, FailureHandler, FailureRecord, Job, JobContext, MemoryHandle, MemoryProvider, Outcome,
    PoolInfo, Registry, RunningService, Service, Settled, Worker, WorkerType,
};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Collects every failure record it is given.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<FailureRecord>>>);

impl FailureHandler for Collect {
    fn handle(&mut self, r: &FailureRecord) -> Result<(), String> {
        self.0.lock().unwrap().push(r.clone());
        Ok(())
    }
}

/// Starts an in-process service from YAML plus a memory provider and a
/// collecting failure handler.
fn service(yaml: &str, registry: &Registry) -> (RunningService, MemoryHandle, Collect) {
    let config = Config::parse(yaml, registry).unwrap_or_else(|e| panic!("{e}"));
    let (provider, handle) = MemoryProvider::new();
    let collect = Collect::default();
    let running = Service::builder(config)
        .provider("mem", provider)
        .failure_handler("collect", collect.clone())
        .build()
        .unwrap()
        .start()
        .unwrap();
    (running, handle, collect)
}

fn settle(h: &MemoryHandle) -> Settled {
    h.settled()
        .recv_timeout(PATIENCE)
        .expect("a job settled within the deadline")
}

fn stop(s: RunningService) {
    s.shutdown();
    s.wait();
}

fn cli_job(command: &Path, params: &[&str], retries: u32) -> Job {
    let mut j = Job::new("cli", json!({"command": command, "params": params}));
    j.retries = retries;
    j
}

#[test]
fn failing_cli_job_runs_three_times_with_growing_backoff_then_dead_letters() {
    let dir = temp_dir();
    let log = dir.path().join("runs");
    let fail = script(
        dir.path(),
        "fail.sh",
        &format!(
            "date +%s.%N >> {}\necho 'disk on fire' >&2\nexit 1",
            log.display()
        ),
    );
    let failures = dir.path().join("failures.jsonl");
    let yaml = format!(
        "manager: {{ stats_listen: null, retry: {{ base: 300ms, max: 10s, jitter: none }} }}\n\
         workers:\n  - type: cli\n    allow: [{}]\n\
         failure_handlers:\n  - type: file\n    path: {}\n",
        fail.display(),
        failures.display()
    );
    let (svc, h, collect) = service(&yaml, &Registry::with_builtins());
    let job = cli_job(&fail, &[], 2);
    let id = h.submit(job).unwrap();
    let Settled::Failed(report, record) = settle(&h) else {
        panic!("expected a final failure")
    };
    assert_eq!(report.id, id);
    assert_eq!(report.attempts, 3);
    assert_eq!(record.attempts, 3);
    assert!(
        record.error.contains("exit status 1: disk on fire"),
        "{}",
        record.error
    );

    let runs: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 3, "exactly 3 attempts");
    let (gap1, gap2) = (runs[1] - runs[0], runs[2] - runs[1]);
    // Back-off without jitter is 300 ms then 600 ms; a retry never starts early.
    assert!(gap1 >= 0.3, "first back-off {gap1}");
    assert!(gap2 >= 0.6, "second back-off {gap2}");
    assert!(gap2 > gap1);

    // The dead-letter hook, then every failure handler, got the record.
    assert_eq!(h.dead_letters().len(), 1);
    assert_eq!(h.dead_letters()[0].id.as_deref(), Some(id.as_str()));
    assert!(wait_until(PATIENCE, || collect.0.lock().unwrap().len() == 1));
    let got = collect.0.lock().unwrap()[0].clone();
    assert_eq!((got.attempts, got.id.as_deref()), (3, Some(id.as_str())));
    assert!(wait_until(PATIENCE, || std::fs::read_to_string(&failures)
        .map(|t| t.lines().count() == 1)
        .unwrap_or(false)));
    let line: FailureRecord =
        serde_json::from_str(std::fs::read_to_string(&failures).unwrap().trim()).unwrap();
    assert_eq!(line.attempts, 3);
    assert!(line.error.contains("disk on fire"));
    assert_eq!(line.job.as_ref().unwrap()["retries"], 2);
    stop(svc);
}

#[test]
fn job_over_its_timeout_is_killed_with_its_children() {
    let dir = temp_dir();
    let pids = dir.path().join("pids");
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!(
            "sleep 60 &\necho $! >> {p}\necho $$ >> {p}\nwait",
            p = pids.display()
        ),
    );
    let yaml = format!(
        "manager: {{ stats_listen: null }}\nworkers:\n  - type: cli\n    allow: [{}]\n",
        slow.display()
    );
    let (svc, h, _) = service(&yaml, &Registry::with_builtins());
    let mut job = cli_job(&slow, &[], 0);
    job.timeout = Some(Duration::from_millis(500));
    h.submit(job).unwrap();
    let Settled::Failed(report, _) = settle(&h) else {
        panic!("expected a failure")
    };
    assert_eq!(report.attempts, 1);
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("timed out"),
        "{report:?}"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            wait_until(PATIENCE, || is_gone(pid)),
            "process {pid} of the timed-out job survived"
        );
    }
    stop(svc);
}

#[test]
fn final_failures_are_not_retried_and_the_service_keeps_running() {
    let dir = temp_dir();
    let marker = dir.path().join("ran");
    let touch = script(
        dir.path(),
        "touch.sh",
        &format!("echo ok >> {}", marker.display()),
    );
    let yaml = format!(
        "manager: {{ stats_listen: null, retry: {{ base: 10ms }} }}\nworkers:\n  - type: cli\n    allow: [{}]\n",
        touch.display()
    );
    let (svc, h, collect) = service(&yaml, &Registry::with_builtins());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (json!({"type": "cli", "retries": 3, "params": {"command": "/bin/sh", "params": ["-c", "true"]}}).to_string().into_bytes(), "command not allowed"),
        (json!({"type": "cli", "retries": 3, "params": {"command": "/no/such/tool"}}).to_string().into_bytes(), "command not found"),
        (json!({"type": "teleport", "retries": 3, "params": {}}).to_string().into_bytes(), "no worker pool for type \"teleport\""),
        (b"{\"type\": \"cli\", oops".to_vec(), "invalid JSON"),
        (json!({"retries": 3, "params": {"command": "echo"}}).to_string().into_bytes(), "missing field `type`"),
    ];
    for (payload, reason) in &cases {
        h.submit_raw(payload.clone()).unwrap();
        let record = match settle(&h) {
            Settled::Failed(report, record) => {
                assert!(report.attempts <= 1, "{reason}: retried ({report:?})");
                record
            }
            Settled::Malformed(record) => {
                assert_eq!(
                    record.raw.as_deref().map(str::as_bytes),
                    Some(&payload[..]),
                    "raw payload kept"
                );
                record
            }
            other => panic!("{reason}: {other:?}"),
        };
        assert!(
            record.error.contains(reason),
            "want {reason:?}, got {:?}",
            record.error
        );
    }
    assert!(!marker.exists(), "nothing ran");
    // Still serving.
    h.submit(cli_job(&touch, &[], 0)).unwrap();
    assert!(matches!(settle(&h), Settled::Succeeded(_)));
    assert!(marker.exists());
    assert_eq!(h.dead_letters().len(), cases.len());
    assert!(wait_until(PATIENCE, || collect.0.lock().unwrap().len() == cases.len()));
    stop(svc);
}

/// A worker that panics when asked to, and records its thread otherwise.
#[derive(Debug)]
struct Flaky {
    seen: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
struct FlakyOptions {}

static SEEN: Mutex<Option<Arc<Mutex<Vec<String>>>>> = Mutex::new(None);

impl WorkerType for Flaky {
    type Options = FlakyOptions;
    const TYPE: &'static str = "flaky";
    const DESCRIPTION: &'static str = "panics on demand";

    fn from_options(_: FlakyOptions, _: &PoolInfo) -> Result<Flaky, goworker::PluginError> {
        let seen = SEEN.lock().unwrap().clone().ok_or("no recorder")?;
        Ok(Flaky { seen })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(FlakyWorker {
            seen: self.seen.clone(),
        })
    }
}

struct FlakyWorker {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Worker for FlakyWorker {
    fn run(&mut self, job: &Job, _ctx: &JobContext) -> Outcome {
        if job.params["panic"] == true {
            panic!("flaky worker asked to panic");
        }
        std::thread::sleep(Duration::from_millis(30));
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.seen.lock().unwrap().push(name);
        Outcome::success()
    }
}

#[test]
fn a_panicking_worker_fails_the_attempt_and_the_pool_keeps_its_size() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    *SEEN.lock().unwrap() = Some(seen.clone());
    let mut registry = Registry::with_builtins();
    registry.register_worker::<Flaky>();
    let (svc, h, _) = service(
        "manager: { stats_listen: null }\nworkers:\n  - type: flaky\n    count: 2\n",
        &registry,
    );
    for _ in 0..4 {
        h.submit(Job::new("flaky", json!({"panic": true}))).unwrap();
    }
    for _ in 0..4 {
        let Settled::Failed(report, _) = settle(&h) else {
            panic!("panic must fail the attempt")
        };
        assert!(
            report
                .error
                .as_deref()
                .unwrap_or("")
                .contains("worker panicked: flaky worker asked to panic")
        );
    }
    for _ in 0..20 {
        h.submit(Job::new("flaky", json!({}))).unwrap();
    }
    for _ in 0..20 {
        assert!(matches!(settle(&h), Settled::Succeeded(_)));
    }
    let threads: std::collections::HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        threads.len(),
        2,
        "both pool threads still run jobs: {threads:?}"
    );
    stop(svc);
}

/// A config running `jobs` (memory provider) on a cli pool allowing `allow`.
fn binary_config(shutdown_timeout: &str, allow: &Path, jobs: &[serde_json::Value]) -> String {
    let jobs = serde_json::to_string(jobs).unwrap();
    format!(
        "manager: {{ stats_listen: null, shutdown_timeout: {shutdown_timeout} }}\n\
         providers:\n  - type: memory\n    jobs: {jobs}\n\
         workers:\n  - type: cli\n    count: 2\n    allow: [{}]\n",
        allow.display()
    )
}

/// Waits until `path` has `n` lines.
fn lines_in(path: &Path, n: usize) -> bool {
    wait_until(PATIENCE, || {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count() >= n)
            .unwrap_or(false)
    })
}

#[test]
fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let dir = temp_dir();
    let started = dir.path().join("started");
    let done = dir.path().join("done");
    let job = script(
        dir.path(),
        "job.sh",
        &format!(
            "echo $1 >> {}\nsleep 1\necho $1 >> {}",
            started.display(),
            done.display()
        ),
    );
    let jobs: Vec<_> = (0..2)
        .map(|i| json!({"type": "cli", "params": {"command": job, "params": [i.to_string()]}}))
        .collect();
    let mut g = Goworker::start(dir.path(), &binary_config("30s", &job, &jobs));
    assert!(lines_in(&started, 2), "jobs started");
    g.sigterm();
    let status = g.wait_exit(PATIENCE).expect("goworker exited");
    assert_eq!(status.code(), Some(0), "{}", g.log_text());
    assert_eq!(
        std::fs::read_to_string(&done).unwrap().lines().count(),
        2,
        "both running jobs finished"
    );
    assert!(!g.log_text().contains("handed back un-finished"));
}

#[test]
fn sigterm_with_a_short_shutdown_timeout_kills_the_job_and_hands_it_back() {
    let dir = temp_dir();
    let pids = dir.path().join("pids");
    let job = script(
        dir.path(),
        "job.sh",
        &format!("echo $$ >> {}\nsleep 60", pids.display()),
    );
    let jobs = vec![json!({"type": "cli", "id": "slow-1", "params": {"command": job}})];
    let mut g = Goworker::start(dir.path(), &binary_config("500ms", &job, &jobs));
    assert!(lines_in(&pids, 1));
    let pid: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    g.sigterm();
    let status = g
        .wait_exit(PATIENCE)
        .expect("goworker exited after the shutdown timeout");
    assert_eq!(status.code(), Some(0), "{}", g.log_text());
    assert!(
        wait_until(PATIENCE, || is_gone(pid)),
        "the job's process was killed"
    );
    let log = g.log_text();
    assert!(log.contains("job slow-1: handed back un-finished"), "{log}");
    assert!(!log.contains("failed for good"), "{log}");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let dir = temp_dir();
    let pids = dir.path().join("pids");
    let job = script(
        dir.path(),
        "job.sh",
        &format!("echo $$ >> {}\nsleep 60", pids.display()),
    );
    let jobs = vec![json!({"type": "cli", "params": {"command": job}})];
    let mut g = Goworker::start(dir.path(), &binary_config("5m", &job, &jobs));
    assert!(lines_in(&pids, 1));
    let pid: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    g.sigterm();
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("shutting down")));
    let asked = Instant::now();
    g.sigterm();
    let status = g
        .wait_exit(PATIENCE)
        .expect("goworker exited on the second signal");
    // The 5 min grace period was not waited out.
    assert!(asked.elapsed() < Duration::from_secs(60));
    assert_ne!(status.code(), Some(0));
    assert!(
        wait_until(PATIENCE, || is_gone(pid)),
        "the running job was killed"
    );
}

#[test]
fn check_reports_broken_configs_with_file_path_and_position() {
    let dir = temp_dir();
    let cases = [
        (
            "invalid-yaml.yaml",
            "workers:\n  - type: noop\n   count: 2\n",
            // The mis-indented line itself, not its block's start.
            vec!["invalid-yaml.yaml:3:4: workers", "did not find expected"],
        ),
        (
            "unknown-key.yaml",
            "manager:\n  stats_listen: null\n  colour: blue\n",
            vec![
                "unknown-key.yaml:3:11: manager",
                "unknown key `colour`; valid keys:",
            ],
        ),
        (
            "wrong-type.yaml",
            "workers:\n  - type: noop\n    count: many\n",
            vec![
                "wrong-type.yaml:3:12: workers[0].count",
                "\"many\": expected a whole number ≥ 1",
            ],
        ),
        (
            "misspelt-key.yaml",
            "workers:\n  - type: cli\n    cout: 4\n",
            vec![
                "misspelt-key.yaml:3:11: workers[0]",
                "unknown key `cout`; did you mean `count`?",
            ],
        ),
        (
            "quoted-seconds.yaml",
            "manager:\n  shutdown_timeout: \"30\"\n",
            vec![
                "quoted-seconds.yaml:2:21: manager.shutdown_timeout",
                "needs a unit, such as \"30s\"",
            ],
        ),
        (
            "unknown-worker.yaml",
            "workers:\n  - type: teleport\n",
            vec![
                "unknown-worker.yaml:2:11: workers[0].type",
                "unknown worker type \"teleport\"",
            ],
        ),
        (
            "zero-workers.yaml",
            "workers:\n  - type: noop\n    count: 0\n",
            vec!["zero-workers.yaml:3:12: workers[0].count", "at least 1"],
        ),
        (
            "bad-option.yaml",
            "workers:\n  - type: cli\n    allow: echo\n",
            vec![
                "bad-option.yaml:3:12: workers[0].allow",
                "\"echo\": expected a list",
            ],
        ),
    ];
    for (file, text, wants) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let (code, out, err) = goworker(&["check", "-c", file], dir.path());
        assert_eq!(code, 2, "{file}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        for want in wants {
            assert!(err.contains(want), "{file}: want {want:?} in {err:?}");
        }
    }
    std::fs::write(dir.path().join("good.yaml"), "workers:\n  - type: noop\n").unwrap();
    let (code, out, _) = goworker(&["check", "-c", "good.yaml"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("good.yaml: OK"), "{out}");
    let (code, _, err) = goworker(&["check", "-c", "missing.yaml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("missing.yaml: cannot read"), "{err}");
}

#[test]
fn options_lists_every_registered_type_from_the_registry() {
    let (code, out, _) = goworker(&["options"], Path::new("."));
    assert_eq!(code, 0);
    for want in [
        "worker type: cli",
        "worker type: noop",
        "provider type: memory",
        "failure_handler type: file",
        "allow",
        "shutdown_timeout",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    for t in Registry::with_builtins()
        .describe()
        .into_iter()
        .filter(|t| t.section != "manager")
    {
        assert!(out.contains(&format!("{} type: {}", t.section, t.name)));
    }
}

#[test]
fn the_custom_worker_example_runs_a_job_through_a_user_registered_worker() {
    // The example is a whole goworker program built with `app::main` and
    // one registered type: it serves a config that uses that type.
    let exe = goworker_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join("custom_worker");
    assert!(
        exe.exists(),
        "cargo test builds examples: {}",
        exe.display()
    );
    let dir = temp_dir();
    let port = free_port();
    let config = format!(
        "manager: {{ stats_listen: null }}\nproviders:\n  - type: http\n    listen: 127.0.0.1:{port}\nworkers:\n  - type: shout\n    count: 2\n    suffix: \"!\"\n"
    );
    let mut g = Goworker::start_program(&exe, dir.path(), &config, |_| Vec::new());
    let text = agent()
        .post(&format!("http://127.0.0.1:{port}/job/add"))
        .send(r#"{"type":"shout","params":{"text":"hello, goworker"},"capture_output":true}"#)
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "succeeded", "{body}\n{}", g.log_text());
    assert_eq!(body["output"], "HELLO, GOWORKER!", "{body}");
    // The rest of the program is the stock one: its options list the
    // plugin, and SIGTERM is a clean shutdown.
    let out = std::process::Command::new(&exe)
        .arg("options")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker type: shout"));
    g.sigterm();
    let status = g.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", g.log_text());
}

#[test]
fn run_at_is_honoured_and_a_burst_of_due_jobs_all_run() {
    // channel_bound 1 and one thread: 50 jobs due at once overflow the
    // pool's queue, and the manager's backlog must hold them.
    let (svc, h, _) = service(
        "manager: { stats_listen: null, channel_bound: 1 }\nworkers:\n  - type: noop\n",
        &Registry::with_builtins(),
    );
    let due = goworker::unix_now() + 0.5;
    for _ in 0..50 {
        let mut j = Job::new("noop", json!({}));
        j.run_at = Some(due);
        h.submit(j).unwrap();
    }
    for _ in 0..50 {
        assert!(matches!(settle(&h), Settled::Succeeded(_)));
        assert!(goworker::unix_now() >= due, "a job ran before its run_at");
    }
    stop(svc);
}

/// A provider that blocks on nothing but the stop signal.
struct WaitsForStop;

impl goworker::Provider for WaitsForStop {
    fn run(&mut self, ctx: &goworker::ProviderContext) -> Result<(), goworker::Error> {
        ctx.set_up();
        // No timeout and no flag polling: only the disconnect can end this.
        let _ = ctx.stop_signal().recv();
        Ok(())
    }
}

#[test]
fn the_stop_signal_wakes_a_provider_blocked_on_it() {
    let svc = Service::builder(
        Config::parse(
            "manager: { stats_listen: null }\nworkers:\n  - type: noop\n",
            &Registry::with_builtins(),
        )
        .unwrap(),
    )
    .provider("waits", WaitsForStop)
    .build()
    .unwrap()
    .start()
    .unwrap();
    assert!(wait_until(PATIENCE, || svc.health()[0].is_up()));
    svc.shutdown();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        svc.wait();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(PATIENCE).is_ok(),
        "the provider never saw the stop signal"
    );
}

#[test]
fn set_changes_any_option_by_its_key_path_for_check_and_run() {
    let dir = temp_dir();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "manager:\n  stats_listen: 127.0.0.1:9090\nworkers:\n  - type: noop\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = goworker(
        &[
            "check",
            "-c",
            cfg,
            "--set",
            "manager.stats_listen=null",
            "--set",
            "workers[0].count=4",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    // A bad value names the override, not a line of the file.
    let (code, _, err) = goworker(
        &["check", "-c", cfg, "--set", "workers[0].count=0"],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("workers[0].count: must be at least 1")
            && err.contains("(set with --set workers[0].count)"),
        "{err}"
    );
    let (code, _, err) = goworker(
        &["check", "-c", cfg, "--set", "workers[2].count=1"],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("workers has 1 entry"), "{err}");
    let (code, _, err) = goworker(&["check", "-c", cfg, "--set", "nonsense"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("KEY=VALUE"), "{err}");

    // `run` on the embedded default config, both listeners moved.
    let (stats, api) = (free_port(), free_port());
    let mut child = std::process::Command::new(goworker_bin())
        .args([
            "run",
            "--set",
            &format!("manager.stats_listen=127.0.0.1:{stats}"),
            "--set",
            &format!("providers[0].listen=127.0.0.1:{api}"),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = agent();
    let up = wait_until(PATIENCE, || {
        agent
            .get(&format!("http://127.0.0.1:{stats}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    let posted = agent
        .post(&format!("http://127.0.0.1:{api}/jobs?wait=false"))
        .send(r#"{"type":"noop"}"#)
        .map(|r| r.status().as_u16());
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(up, "the stats server did not answer on the --set port");
    assert_eq!(posted.ok(), Some(202));
    assert!(status.success(), "{status:?}");
}

#[test]
fn options_names_types_and_nested_keys_and_states_each_default_once() {
    let dir = temp_dir();
    let (code, out, err) = goworker(&["options"], dir.path());
    assert_eq!(code, 0, "{err}");
    let line = |key: &str, section: &str| -> String {
        let start = out.find(section).unwrap_or_else(|| panic!("no {section}"));
        out[start..]
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} under {section}"))
            .to_string()
    };
    let shutdown = line("shutdown_timeout", "manager:");
    assert!(
        shutdown.contains(" duration ") && shutdown.contains("default: 30s"),
        "{shutdown}"
    );
    // A map's keys are listed under it, with their defaults.
    assert!(line("retry.base", "manager:").contains("default: 1s"));
    assert!(line("retry.jitter", "worker type: cli").contains("default: manager.retry.jitter"));
    let durability = line("durability", "provider type: disk");
    assert!(
        durability.contains("one of immediate|eventual"),
        "{durability}"
    );
    // The default is in its column, not repeated in the description.
    let batch = line("batch", "provider type: disk");
    assert!(!batch.contains("Default"), "{batch}");
    assert!(line("name", "provider type: disk").contains("default: the type"));
    assert!(line("type", "provider type: disk").contains("default: required"));

    let (code, out, err) = goworker(&["options", "--json"], dir.path());
    assert_eq!(code, 0, "{err}");
    let docs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cli = docs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["section"] == "worker" && d["name"] == "cli")
        .unwrap();
    let allow_env = cli["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "allow_env")
        .unwrap();
    assert_eq!(allow_env["type"], "list of string");
    assert_eq!(allow_env["default"], "[]");
}

#[test]
fn logs_are_json_lines_with_job_fields_or_text_with_millisecond_times() {
    let dir = temp_dir();
    let config = "manager: { stats_listen: null }\nproviders:\n  - type: memory\n    jobs: [{\"id\": \"log-1\", \"type\": \"noop\"}]\nworkers:\n  - type: noop\n";
    let mut g = Goworker::start_with_env(dir.path(), config, &[("GOWORKER_LOG_FORMAT", "json")]);
    assert!(wait_until(PATIENCE, || g.log_text().contains("succeeded")));
    g.sigterm();
    assert!(g.wait_exit(PATIENCE).is_some_and(|s| s.success()));
    let lines: Vec<serde_json::Value> = g
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["msg"].as_str().is_some_and(|m| m.contains("succeeded")))
        .expect("a succeeded line");
    assert_eq!(done["job_id"], "log-1");
    assert_eq!(done["job_type"], "noop");
    assert_eq!(done["level"], "DEBUG");
    assert_eq!(done["target"], "goworker::manager::settle");
    // RFC 3339 in UTC with milliseconds: 2026-12-02T10:31:12.123Z
    let ts = done["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[19..20] == ".",
        "{ts}"
    );

    let mut g = Goworker::start(dir.path(), config);
    g.sigterm();
    assert!(g.wait_exit(PATIENCE).is_some());
    let first = g.log_text().lines().next().unwrap_or_default().to_string();
    // [2026-12-02T10:31:12.123Z INFO  goworker::…] …
    assert!(
        first.starts_with('[') && &first[20..21] == "." && &first[24..25] == "Z",
        "{first}"
    );
}
