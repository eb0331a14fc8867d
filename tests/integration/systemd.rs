//! goworker as a systemd service: sd_notify over a real unix datagram
//! socket, the unit file through `systemd-analyze verify`, SIGHUP reloads
//! of worker counts, the journal log format and `make install`.

use crate::util::*;
use crossbeam_channel::Receiver;
use goworker::{Config, Job, MemoryProvider, Notify, Service, Settled, cli::Cli, cli::CliOptions};
use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bound notify socket in `dir` and the datagrams it receives, read on
/// a thread so the sender never finds the queue full.
fn notify_socket(dir: &Path) -> (PathBuf, Receiver<String>) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    (path, rx)
}

/// Receives datagrams until one satisfies `want`; returns everything
/// received up to and including it. Panics after PATIENCE.
fn recv_until(rx: &Receiver<String>, mut want: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) => {
                let done = want(&m);
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(_) => panic!("no matching notification; got {got:#?}"),
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

const NOOP_CONFIG: &str = "\
manager:
  stats_listen: null
  shutdown_timeout: 10s
providers:
  - type: memory
workers:
  - type: noop
    count: 2
";

#[test]
fn notify_sends_ready_watchdog_status_and_stopping() {
    let dir = temp_dir();
    let (socket, rx) = notify_socket(dir.path());
    let socket = socket.to_string_lossy().into_owned();
    let mut g = Goworker::start_with_env(
        dir.path(),
        NOOP_CONFIG,
        &[
            ("NOTIFY_SOCKET", socket.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let before = recv_until(&rx, |m| has_line(m, "READY=1"));
    assert!(
        before.iter().all(|m| !has_line(m, "STOPPING=1")),
        "{before:#?}"
    );
    let ready = before.last().expect("ready message");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("jobs/s")),
        "READY=1 comes with a status: {ready:?}"
    );
    // Periodic pings and status lines follow (WATCHDOG_USEC/2 = 500 ms, a
    // status every 2 s).
    let mut pings = 0;
    let mut statuses = 0;
    recv_until(&rx, |m| {
        pings += usize::from(has_line(m, "WATCHDOG=1"));
        statuses += usize::from(m.lines().any(|l| l.starts_with("STATUS=")));
        pings >= 3 && statuses >= 2
    });
    g.sigterm();
    let stopping = recv_until(&rx, |m| has_line(m, "STOPPING=1"));
    assert!(
        stopping.iter().all(|m| !has_line(m, "READY=1")),
        "READY=1 once only: {stopping:#?}"
    );
    let status = g.wait_exit(PATIENCE).expect("goworker exits");
    assert_eq!(status.code(), Some(0), "{}", g.log_text());
}

#[test]
fn notify_is_silent_without_notify_socket() {
    // A disabled notifier is what the binary builds without NOTIFY_SOCKET;
    // the socket here exists but is never named, so nothing may reach it.
    let dir = temp_dir();
    let (_socket, rx) = notify_socket(dir.path());
    let mut g = Goworker::start(dir.path(), NOOP_CONFIG);
    assert!(
        wait_until(PATIENCE, || g.log_text().contains("goworker started")),
        "{}",
        g.log_text()
    );
    assert!(
        !g.log_text().contains("notifying systemd"),
        "{}",
        g.log_text()
    );
    g.sigterm();
    assert_eq!(g.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    assert!(rx.try_recv().is_err());
}

#[test]
fn ready_waits_until_every_provider_is_up() {
    let dir = temp_dir();
    let (socket, rx) = notify_socket(dir.path());
    let (provider, handle) = MemoryProvider::new();
    handle.set_down(Some("connecting to the queue"));
    let notify = Notify::new(socket.as_os_str(), None).expect("notify");
    let service = Service::builder(Config::empty())
        .provider("queue", provider)
        .pool::<goworker::noop::Noop>("noop", 1, Default::default())
        .expect("pool")
        .hooks(notify)
        .build()
        .expect("build")
        .start()
        .expect("start");
    // While the provider is down the manager says why and is not ready;
    // datagrams arrive in order, so READY=1 cannot have come before this.
    let waiting = recv_until(&rx, |m| {
        m.contains("STATUS=starting: waiting for provider(s) queue (connecting to the queue)")
    });
    assert!(
        waiting.iter().all(|m| !has_line(m, "READY=1")),
        "{waiting:#?}"
    );
    handle.set_down(None);
    recv_until(&rx, |m| has_line(m, "READY=1"));
    service.shutdown();
    recv_until(&rx, |m| has_line(m, "STOPPING=1"));
    service.wait();
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    // ExecStart must name an existing executable for verify: a temp copy
    // of the unit points it at the binary under test.
    let dir = temp_dir();
    let unit = std::fs::read_to_string(repo().join("packaging/goworker.service")).expect("unit");
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/goworker run -c /etc/goworker/config.yaml\n")
    );
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "KillMode=mixed",
        "StateDirectory=goworker",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "missing {key}");
    }
    let copy = dir.path().join("goworker.service");
    let bin = goworker_bin();
    let unit = unit.replace("/usr/local/bin/goworker", &bin.to_string_lossy());
    std::fs::write(&copy, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze not found: run `make test`, which installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    // Unknown keys and bad values are warnings with exit code 0.
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");
}

#[test]
fn unit_stop_timeout_exceeds_shutdown_timeout() {
    let unit = std::fs::read_to_string(repo().join("packaging/goworker.service")).expect("unit");
    let secs = |key: &str| -> u64 {
        let v = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        humantime_secs(v)
    };
    let example = std::fs::read_to_string(repo().join("config.example.yaml")).expect("example");
    let shutdown = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_timeout:"))
        .map(|v| humantime_secs(v.trim()))
        .unwrap_or(30);
    // goworker waits shutdown_timeout, then 5 s for killed jobs to stop.
    assert!(secs("TimeoutStopSec=") > shutdown + 5);
}

fn humantime_secs(v: &str) -> u64 {
    let v = v.trim();
    v.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .or_else(|| {
            v.strip_suffix("min")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|m| m * 60)
        })
        .unwrap_or_else(|| panic!("unexpected duration {v:?}"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pools_config(cli: usize) -> String {
    format!(
        "\
manager:
  stats_listen: null
  shutdown_timeout: 10s
providers: []
workers:
  - type: cli
    count: {cli}
    allow: [sleep]
  - type: noop
    count: 1
"
    )
}

/// A config whose memory provider runs `jobs` gated cli jobs: `job.sh N`
/// notes N in `started`, waits for the file `gate`, then notes N in `done`.
fn gated_config(dir: &Path, cli: usize, jobs: usize) -> String {
    let job = dir.join("job.sh");
    let jobs: Vec<_> = (1..=jobs)
        .map(|n| serde_json::json!({"type": "cli", "params": {"command": job, "params": [n.to_string()]}}))
        .collect();
    format!(
        "\
manager:
  stats_listen: null
  shutdown_timeout: 10s
providers:
  - type: memory
    jobs: {}
workers:
  - type: cli
    count: {cli}
    allow: [{}]
",
        serde_json::to_string(&jobs).expect("json"),
        job.display()
    )
}

#[test]
fn sighup_changes_worker_counts_while_jobs_run_and_loses_none() {
    const JOBS: usize = 12;
    let dir = temp_dir();
    let d = dir.path();
    let (started, gate, done) = (d.join("started"), d.join("gate"), d.join("done"));
    script(
        d,
        "job.sh",
        &format!(
            "echo $1 >> {}\nwhile [ ! -e {} ]; do sleep 0.05; done\necho $1 >> {}",
            started.display(),
            gate.display(),
            done.display()
        ),
    );
    let cfg = d.join("config.yaml");
    let mut g = Goworker::start(d, &gated_config(d, 2, JOBS));
    // Two threads, each held by a running job.
    assert!(wait_until(PATIENCE, || lines(&started).len() == 2));
    assert_eq!(g.threads_named("goworker-cli-"), 2);

    // Grow while they run: the new threads take queued jobs at once.
    std::fs::write(&cfg, gated_config(d, 4, JOBS)).expect("write config");
    g.signal(libc::SIGHUP);
    assert!(
        wait_until(PATIENCE, || lines(&started).len() == 4),
        "{}",
        g.log_text()
    );
    assert_eq!(g.threads_named("goworker-cli-"), 4);
    assert!(
        g.log_text()
            .contains("pool cli: resized from 2 to 4 thread(s)")
    );

    // A config that does not validate: refused, with the file, the key
    // and the reason; the pool keeps its size.
    std::fs::write(
        &cfg,
        gated_config(d, 4, JOBS).replace("count: 4", "count: many"),
    )
    .expect("write config");
    g.signal(libc::SIGHUP);
    assert!(
        wait_until(PATIENCE, || g.log_text().contains("reload refused")),
        "{}",
        g.log_text()
    );
    let log = g.log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .expect("refusal line");
    assert!(refused.contains("the running config stays"), "{refused}");
    assert!(refused.contains("config.yaml"), "{refused}");
    assert!(refused.contains("workers[0].count"), "{refused}");
    assert_eq!(g.threads_named("goworker-cli-"), 4);

    // Shrink while all four are busy: three are due to leave after their
    // job. Then grow to 2 before any job ends: one of them stays instead
    // of a new thread starting.
    std::fs::write(&cfg, gated_config(d, 1, JOBS)).expect("write config");
    g.signal(libc::SIGHUP);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("pool cli: resized from 4 to 1 thread(s)")));
    std::fs::write(&cfg, gated_config(d, 2, JOBS)).expect("write config");
    g.signal(libc::SIGHUP);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("pool cli: resized from 1 to 2 thread(s)")));
    assert_eq!(lines(&done).len(), 0, "the gate is still closed");
    std::fs::write(&gate, "").expect("open the gate");
    assert!(wait_until(PATIENCE, || g.threads_named("goworker-cli-") == 2));
    assert!(
        wait_until(PATIENCE, || lines(&done).len() == JOBS),
        "{}",
        g.log_text()
    );
    let log = g.log_text();
    assert_eq!(log.matches(" retired").count(), 2, "{log}");
    assert!(
        !log.contains("goworker-cli-4"),
        "no thread was started: {log}"
    );
    // Every job ran to the end exactly once.
    let mut ran = lines(&done);
    ran.sort_by_key(|n| n.parse::<usize>().unwrap_or(0));
    let want: Vec<String> = (1..=JOBS).map(|n| n.to_string()).collect();
    assert_eq!(ran, want);
    assert_eq!(lines(&started).len(), JOBS);

    // Still serving reloads.
    std::fs::write(&cfg, gated_config(d, 3, JOBS)).expect("write config");
    g.signal(libc::SIGHUP);
    assert!(wait_until(PATIENCE, || g.threads_named("goworker-cli-") == 3));
    g.sigterm();
    assert_eq!(g.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = g.log_text();
    assert!(log.contains("stopped: 0 job(s) handed back"), "{log}");
    assert!(!log.contains("un-finished"), "{log}");
    assert!(!log.contains("failed"), "{log}");
}

#[test]
fn resize_while_jobs_run_loses_none() {
    // In process (the binary has no job source on its own): a memory
    // provider feeds sleeping cli jobs while the pool grows and shrinks.
    const JOBS: usize = 120;
    let (provider, handle) = MemoryProvider::new();
    let options = CliOptions {
        allow: vec!["sleep".into()],
        ..CliOptions::default()
    };
    let service = Service::builder(Config::empty())
        .provider("memory", provider)
        .pool::<Cli>("rz", 2, options)
        .expect("pool")
        .build()
        .expect("build")
        .start()
        .expect("start");
    let pid = std::process::id();
    let mut ids = HashSet::new();
    for _ in 0..JOBS {
        let job = Job::new(
            "rz",
            serde_json::json!({"command": "sleep", "params": ["0.02"]}),
        );
        ids.insert(handle.submit(job).expect("submit"));
    }
    let mut settled = Vec::new();
    let take = |n: usize, settled: &mut Vec<Settled>| {
        while settled.len() < n {
            match handle.settled().recv_timeout(PATIENCE) {
                Ok(s) => settled.push(s),
                Err(_) => panic!("only {} of {JOBS} jobs settled", settled.len()),
            }
        }
    };
    take(10, &mut settled);
    let control = service.shutdown_handle();
    control.resize("rz", 6);
    assert!(wait_until(PATIENCE, || threads_named(pid, "goworker-rz-") == 6));
    take(50, &mut settled);
    control.resize("rz", 1);
    assert!(wait_until(PATIENCE, || threads_named(pid, "goworker-rz-") == 1));
    take(JOBS, &mut settled);
    let mut seen = HashSet::new();
    for s in &settled {
        match s {
            Settled::Succeeded(r) => assert!(seen.insert(r.id.clone()), "settled twice: {}", r.id),
            other => panic!("not a success: {other:?}"),
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(service.snapshot().pools["rz"].threads, 1);
    service.shutdown();
    let report = service.wait();
    assert_eq!(report.released, 0);
}

#[test]
fn journal_stream_logs_have_levels_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir();
    let mut g = Goworker::start_with_log_env(dir.path(), &pools_config(2), |log| {
        let m = log.metadata().expect("stat log");
        vec![("JOURNAL_STREAM".into(), format!("{}:{}", m.dev(), m.ino()))]
    });
    // An error (<3>) and a warning (<4>): a broken reload, then a new pool
    // and a smaller one (a thread retires: <7>).
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "workers: [{type: nope}]\n").expect("write config");
    g.signal(libc::SIGHUP);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("reload refused")));
    std::fs::write(&cfg, pools_config(1) + "  - type: noop\n    name: extra\n").expect("write");
    g.signal(libc::SIGHUP);
    assert!(wait_until(PATIENCE, || g
        .log_text()
        .contains("pool extra is new")));
    assert!(wait_until(PATIENCE, || g.log_text().contains("retired")));
    g.sigterm();
    assert_eq!(g.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = g.log_text();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let rest = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .unwrap_or_else(|| panic!("no level prefix: {line:?}"));
        // The module path follows at once: no timestamp, no level word.
        assert!(rest.starts_with("goworker"), "not bare: {line:?}");
    }
    for (prefix, text) in [
        ("<3>", "reload refused"),
        ("<4>", "pool extra is new"),
        ("<6>", "goworker started"),
        ("<7>", "retired"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(prefix) && l.contains(text)),
            "no {prefix} line with {text:?}:\n{log}"
        );
    }
}

#[test]
fn journal_format_only_when_stderr_is_the_journal_stream() {
    // JOURNAL_STREAM inherited from a parent whose stream is not our
    // stderr: ordinary lines with timestamps.
    let dir = temp_dir();
    let mut g = Goworker::start_with_env(dir.path(), NOOP_CONFIG, &[("JOURNAL_STREAM", "1:1")]);
    g.sigterm();
    assert_eq!(g.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = g.log_text();
    let started = log
        .lines()
        .find(|l| l.contains("goworker started"))
        .expect("started line");
    assert!(started.starts_with('['), "{started}");
    assert!(started.contains(" INFO "), "{started}");
}

#[test]
fn make_install_lays_out_the_files() {
    let dest = temp_dir();
    let install = |prefix: &str| {
        let out = Command::new("make")
            .arg("-s")
            .arg("install")
            .arg(format!("DESTDIR={}", dest.path().display()))
            .arg(format!("BIN={}", goworker_bin().display()))
            .arg(format!("PREFIX={prefix}"))
            .current_dir(repo())
            .output()
            .expect("make");
        assert!(
            out.status.success(),
            "make install failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install("/usr/local");
    let root = dest.path();
    let bin = root.join("usr/local/bin/goworker");
    let unit = root.join("etc/systemd/system/goworker.service");
    let config = root.join("etc/goworker/config.yaml");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .expect("installed")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read(&unit).expect("unit"),
        std::fs::read(repo().join("packaging/goworker.service")).expect("source unit")
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        goworker::EXAMPLE_CONFIG
    );
    // An existing config is kept; PREFIX moves the binary and ExecStart.
    std::fs::write(&config, "# mine\n").expect("edit config");
    install("/opt/gw");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "# mine\n"
    );
    assert!(root.join("opt/gw/bin/goworker").exists());
    let unit = std::fs::read_to_string(&unit).expect("unit");
    assert!(unit.contains("\nExecStart=/opt/gw/bin/goworker run -c /etc/goworker/config.yaml\n"));
    // The installed binary runs and names its build: version, commit, date.
    let out = Command::new(root.join("opt/gw/bin/goworker"))
        .arg("--version")
        .output()
        .expect("run installed binary");
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git");
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    assert!(
        version.starts_with(&format!("goworker {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    if !commit.is_empty() {
        assert!(version.contains(&commit), "{version} lacks {commit}");
    }
    // The man page and completions generated from the CLI definition.
    let man = root.join("opt/gw/share/man/man1/goworker.1.gz");
    let roff = Command::new("gzip")
        .arg("-dc")
        .arg(&man)
        .output()
        .expect("gzip");
    let roff = String::from_utf8_lossy(&roff.stdout);
    assert!(
        roff.contains(".TH goworker 1") && roff.contains("enqueue"),
        "{roff}"
    );
    for (file, want) in [
        ("bash-completion/completions/goworker", "_goworker()"),
        ("zsh/vendor-completions/_goworker", "#compdef goworker"),
        (
            "fish/vendor_completions.d/goworker.fish",
            "complete -c goworker",
        ),
    ] {
        let text = std::fs::read_to_string(root.join("opt/gw/share").join(file)).expect(file);
        assert!(text.contains(want) && text.contains("dead"), "{file}");
        assert_eq!(mode(&root.join("opt/gw/share").join(file)), 0o644);
    }
}

#[test]
fn make_deb_packages_the_binary_unit_conffile_man_page_and_completions() {
    let scratch = temp_dir();
    let deb = scratch.path().join("goworker.deb");
    let out = Command::new("make")
        .args(["-s", "deb", "DEB_FLAGS=--fast"])
        .arg(format!("BIN={}", goworker_bin().display()))
        .arg(format!("DEB_OUT={}", deb.display()))
        .current_dir(repo())
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make deb failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unpacked into a scratch root: nothing on the host is touched.
    let root = scratch.path().join("root");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/goworker/config.yaml");
    let control = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(control.contains("Package: goworker"), "{control}");
    for file in [
        "usr/bin/goworker",
        "lib/systemd/system/goworker.service",
        "etc/goworker/config.yaml",
        "usr/share/man/man1/goworker.1.gz",
        "usr/share/bash-completion/completions/goworker",
        "usr/share/zsh/vendor-completions/_goworker",
        "usr/share/fish/vendor_completions.d/goworker.fish",
    ] {
        assert!(root.join(file).exists(), "the package lacks {file}");
    }
    // The unit runs the packaged binary, as a transient user: the package
    // creates no user of its own (no maintainer scripts at all).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/goworker.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/goworker run -c /etc/goworker/config.yaml\n"));
    assert!(unit.contains("\nDynamicUser=yes\n"));
    let scripts = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(
        !scripts.contains("postinst") && !scripts.contains("preinst"),
        "{scripts}"
    );
    // Verified as it would run: the binary it names is the unpacked one
    // (the host has no /usr/bin/goworker).
    let unit_copy = scratch.path().join("goworker.service");
    let unpacked_bin = root.join("usr/bin/goworker");
    std::fs::write(
        &unit_copy,
        unit.replace("/usr/bin/goworker", &unpacked_bin.to_string_lossy()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_copy)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "verify:\n{stderr}"
    );
    // The packaged binary accepts the packaged config.
    let check = run(Command::new(root.join("usr/bin/goworker"))
        .args(["check", "-c"])
        .arg(root.join("etc/goworker/config.yaml")));
    assert!(check.contains(": OK ("), "{check}");
}
