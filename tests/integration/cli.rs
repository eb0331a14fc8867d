//! The `cli` worker's limits, against real `goworker`
//! processes over real HTTP, and in process where a custom worker is
//! needed: secrets never reach a child, a job's env and timeout stay within
//! what its pool allows, a panicking worker leaves no process behind.

use crate::util::{
    Goworker, PATIENCE, agent, free_port, goworker, is_gone, lines, temp_dir, wait_until,
};
use goworker::{
    Config, Job, JobContext, MemoryProvider, Outcome, PoolInfo, Registry, Service, Settled, Worker,
    WorkerType,
};
use serde_json::{Value, json};
use std::path::Path;

const TOKEN: &str = "tok-3f9a1c-never-print-me";

/// A goworker process whose `http` provider needs `TOKEN` (from
/// `GW_TEST_TOKEN`), with the given workers and failure handlers.
struct Api {
    g: Goworker,
    url: String,
    dir: tempfile::TempDir,
}

impl Api {
    /// `scripts`: (name, text) of executables to write first (the allow
    /// list is resolved at start).
    fn start(workers: &str, handlers: &str, scripts: &[(&str, &str)]) -> Api {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        for (name, text) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = free_port();
        let config = format!(
            "manager: {{ stats_listen: null, retry: {{ base: 10ms, max: 50ms }} }}\n\
             providers:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n    token_env: GW_TEST_TOKEN\n\
             workers:\n{workers}failure_handlers:\n{handlers}"
        );
        let g = Goworker::start_with_env(
            dir.path(),
            &config,
            &[("GW_TEST_TOKEN", TOKEN), ("GW_TEST_VISIBLE", "plain-value")],
        );
        Api {
            g,
            url: format!("http://127.0.0.1:{port}/job/add"),
            dir,
        }
    }

    /// Submits a job and waits for its report: (HTTP status, JSON body).
    fn run(&self, job: Value) -> (u16, Value) {
        let mut r = agent()
            .post(&self.url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .send(job.to_string())
            .expect("HTTP request");
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (r.status().as_u16(), body)
    }

    fn output(&self, kind: &str, command: &str) -> String {
        let (status, report) =
            self.run(json!({"type": kind, "params": {"command": command}, "capture_output": true}));
        assert_eq!(
            (status, &report["status"]),
            (200, &json!("succeeded")),
            "{report}"
        );
        report["output"].as_str().unwrap_or("").to_string()
    }
}

#[test]
fn secrets_never_reach_jobs_dead_letters_or_the_cli_failure_handler() {
    let api = Api::start(
        "  - type: cli\n    allow: [env, ./env-then-fail.sh, ./shebang.sh]\n\
         \x20 - type: cli\n    name: cli-all\n    inherit_env: all\n    allow: [env]\n\
         \x20 - type: cli\n    name: cli-none\n    inherit_env: none\n    allow: [env]\n",
        "  - type: file\n    path: ./failures.jsonl\n\
         \x20 - type: cli\n    command: sh\n    args: [-c, \"cat > handler-stdin.json; env > handler-env.txt\"]\n",
        &[
            ("env-then-fail.sh", "#!/bin/sh\nenv\nexit 3\n"),
            ("shebang.sh", "#!/usr/bin/env sh\necho via-env-shebang\n"),
        ],
    );
    let dir = api.dir.path();
    let path = std::env::var("PATH").unwrap();

    // The default (minimal) passes on the service's PATH, nothing else of it.
    let minimal = api.output("cli", "env");
    assert!(minimal.contains(&format!("PATH={path}\n")), "{minimal}");
    assert!(!minimal.contains("GW_TEST_VISIBLE"), "{minimal}");
    assert!(!minimal.contains("RUST_LOG"), "{minimal}");
    // So #!/usr/bin/env scripts keep working.
    assert_eq!(api.output("cli", "./shebang.sh"), "via-env-shebang\n");
    // all: everything but the secret.
    let all = api.output("cli-all", "env");
    assert!(all.contains("GW_TEST_VISIBLE=plain-value\n"), "{all}");
    assert!(all.contains("RUST_LOG="), "{all}");
    // none: nothing at all.
    assert_eq!(api.output("cli-none", "env"), "");
    for out in [&minimal, &all] {
        assert!(
            !out.contains(TOKEN) && !out.contains("GW_TEST_TOKEN"),
            "{out}"
        );
    }

    // A failing job's output goes to the dead letters and every handler.
    let (_, report) = api.run(json!({"type": "cli", "capture_output": true,
        "params": {"command": "./env-then-fail.sh"}}));
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["output"].as_str().unwrap().contains("PATH="),
        "{report}"
    );
    assert!(!report.to_string().contains(TOKEN), "{report}");
    let env_file = dir.join("handler-env.txt");
    assert!(wait_until(PATIENCE, || env_file.exists()
        && dir.join("failures.jsonl").exists()));
    assert!(wait_until(PATIENCE, || std::fs::read_to_string(&env_file)
        .is_ok_and(|t| t.contains("GW_TEST_VISIBLE"))));
    let failures = lines(&dir.join("failures.jsonl")).join("\n");
    assert!(failures.contains("env-then-fail.sh"), "{failures}");
    for (name, text) in [
        ("failure file", failures),
        (
            "handler stdin",
            std::fs::read_to_string(dir.join("handler-stdin.json")).unwrap(),
        ),
        ("handler env", std::fs::read_to_string(&env_file).unwrap()),
        ("log", api.g.log_text()),
    ] {
        assert!(
            !text.contains(TOKEN),
            "the token reached the {name}:\n{text}"
        );
    }
}

#[test]
fn requests_over_the_pools_limits_are_final_and_run_nothing() {
    let api = Api::start(
        "  - type: cli\n    allow: [./mark.sh]\n    allow_env: [OMP_THREADS]\n    timeout: 1m\n",
        "  - type: file\n    path: ./failures.jsonl\n",
        &[("mark.sh", "#!/bin/sh\necho \"$OMP_THREADS\" >> ran\n")],
    );
    let dir = api.dir.path();
    let marker = dir.join("ran");
    let job = |extra: Value| {
        let mut j = json!({"type": "cli", "retries": 3, "params": {"command": "./mark.sh"}});
        for (k, v) in extra.as_object().unwrap() {
            if k == "env" || k == "cwd" {
                j["params"][k] = v.clone();
            } else {
                j[k] = v.clone();
            }
        }
        j
    };
    for (extra, want) in [
        (
            json!({"env": {"LD_PRELOAD": "/tmp/evil.so"}}),
            "\"LD_PRELOAD\"",
        ),
        (
            json!({"env": {"OMP_THREADS": "2", "PATH": "/tmp/evil"}}),
            "\"PATH\"",
        ),
        (
            json!({"env": {"LD_LIBRARY_PATH": "/tmp"}}),
            "\"LD_LIBRARY_PATH\"",
        ),
        (
            json!({"env": {"SOMETHING_ELSE": "x"}}),
            "\"SOMETHING_ELSE\"",
        ),
        (
            json!({"timeout": "2h"}),
            "timeout 2h is over the pool's max_timeout of 1m",
        ),
        (
            json!({"cwd": "./no-such-dir"}),
            "cwd ./no-such-dir: no such directory",
        ),
    ] {
        let (_, report) = api.run(job(extra.clone()));
        assert_eq!(report["status"], "failed", "{extra}: {report}");
        assert_eq!(report["attempts"], 1, "final, never retried: {report}");
        let error = report["error"].as_str().unwrap_or("");
        assert!(error.contains(want), "{extra}: {error}");
    }
    // Once panicked on Instant overflow and left the command running.
    for timeout in [json!(9.3e18), json!(1e300), json!("400days")] {
        let (status, report) = api.run(job(json!({"timeout": timeout})));
        assert_eq!(status, 400, "{timeout}: {report}");
        assert!(report.to_string().contains("timeout"), "{report}");
    }
    assert!(!marker.exists(), "a refused job ran");
    // What the pool allows runs.
    let (_, report) = api.run(job(json!({"env": {"OMP_THREADS": "4"}, "timeout": 30})));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "4\n");
    assert!(
        !api.g.log_text().contains("panicked"),
        "{}",
        api.g.log_text()
    );
}

#[test]
fn check_refuses_loader_variables_in_allow_env_and_a_short_max_timeout() {
    let dir = temp_dir();
    for (yaml, want) in [
        (
            "allow_env: [OMP_THREADS, LD_PRELOAD]",
            "allow_env[1]: LD_PRELOAD can never be set",
        ),
        ("allow_env: [PATH]", "allow_env[0]: PATH can never be set"),
        (
            "timeout: 1m\n    max_timeout: 30s",
            "max_timeout (30s) is shorter",
        ),
        ("inherit_env: sometimes", "unknown variant `sometimes`"),
    ] {
        let cfg = dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            format!("workers:\n  - type: cli\n    allow: [echo]\n    {yaml}\n"),
        )
        .unwrap();
        let (code, _, err) = goworker(&["check", "-c", "c.yaml"], dir.path());
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(
            err.contains("workers[0]") && err.contains(want),
            "{yaml}: {err}"
        );
    }
}

#[test]
fn options_shows_the_cli_limits() {
    let (code, out, _) = goworker(&["options"], Path::new("."));
    assert_eq!(code, 0);
    let cli = out
        .split("worker type: cli")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .unwrap_or("");
    // Columns are padded to the longest key: compare words.
    let cli = cli.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "allow_env",
        "max_timeout",
        "inherit_env one of minimal|all|none default: minimal",
    ] {
        assert!(cli.contains(want), "missing {want:?}:\n{cli}");
    }
}

/// A worker that starts `sleep` in its own process group, registers it,
/// records its pid, and panics.
#[derive(Debug)]
struct Leaky;

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
struct LeakyOptions {}

impl WorkerType for Leaky {
    type Options = LeakyOptions;
    const TYPE: &'static str = "leaky";
    const DESCRIPTION: &'static str = "panics with a process group registered";

    fn from_options(_: LeakyOptions, _: &PoolInfo) -> Result<Leaky, goworker::PluginError> {
        Ok(Leaky)
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(Leaky)
    }
}

impl Worker for Leaky {
    // The point: a worker that panics without waiting for its child.
    #[allow(clippy::zombie_processes)]
    fn run(&mut self, job: &Job, ctx: &JobContext) -> Outcome {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        std::fs::write(job.params["pid_file"].as_str().unwrap(), pid.to_string()).unwrap();
        ctx.set_process_group(Some(pid as i32));
        panic!("leaky worker panics with sleep {pid} running");
    }
}

#[test]
fn a_worker_panic_kills_the_process_group_it_registered() {
    let dir = temp_dir();
    let pid_file = dir.path().join("pid");
    let mut registry = Registry::with_builtins();
    registry.register_worker::<Leaky>();
    let config = Config::parse(
        "manager: { stats_listen: null }\nworkers:\n  - type: leaky\n",
        &registry,
    )
    .unwrap();
    let (provider, handle) = MemoryProvider::new();
    let svc = Service::builder(config)
        .provider("mem", provider)
        .build()
        .unwrap()
        .start()
        .unwrap();
    handle
        .submit(Job::new("leaky", json!({"pid_file": pid_file})))
        .unwrap();
    let settled = handle.settled().recv_timeout(PATIENCE).expect("settled");
    let Settled::Failed(report, _) = settled else {
        panic!("a panic fails the attempt")
    };
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .contains("worker panicked"),
        "{report:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let gone = wait_until(PATIENCE, || is_gone(pid));
    // SAFETY: clean up after a failing run; kill has no memory effects.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    assert!(gone, "the panicking worker's process {pid} survived");
    svc.shutdown();
    svc.wait();
}

#[test]
fn check_warns_about_an_allow_entry_that_names_no_executable() {
    let dir = temp_dir();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "manager: { stats_listen: null }\nworkers:\n  - type: cli\n    allow: [echo, /opt/nowhere/resize.sh]\n",
    )
    .unwrap();
    let (code, out, err) = goworker(&["check", "-c", cfg.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK ("), "{out}");
    assert!(
        err.contains("allow[1]: \"/opt/nowhere/resize.sh\" names no executable"),
        "{err}"
    );
    assert!(!err.contains("allow[0]"), "{err}");
}
