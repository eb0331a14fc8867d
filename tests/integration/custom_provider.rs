//! `examples/custom_provider.rs`: a provider plugin (a spool directory) in a
//! binary built on `goworker::app::main`, run as a real process, with the
//! stock CLI's `enqueue` and `dead` commands going through its capabilities.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn example() -> PathBuf {
    let exe = goworker_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join("custom_provider");
    assert!(
        exe.exists(),
        "cargo test builds examples: {}",
        exe.display()
    );
    exe
}

/// Runs the example's CLI to completion: (exit code, stdout, stderr).
fn cli(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(example())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const CONFIG: &str = "manager: { stats_listen: null, shutdown_timeout: 5s }
providers:
  - type: spool
    name: inbox
    path: ./spool
    poll_ms: 20
    max_file: 1000
workers:
  - type: noop
  - type: cli
    allow: [\"false\"]
";

#[test]
fn a_spool_directory_provider_runs_dropped_files_and_keeps_failures() {
    let dir = temp_dir();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("processing")).unwrap();
    // Left in processing/ by a process that died: it runs again.
    std::fs::write(
        spool.join("processing/0-crashed.json"),
        r#"{"type":"noop"}"#,
    )
    .unwrap();
    std::fs::write(spool.join("a.json"), r#"{"type":"noop","keep":1}"#).unwrap();
    std::fs::write(
        spool.join("b.json"),
        r#"{"id":"b-1","type":"cli","params":{"command":"false"}}"#,
    )
    .unwrap();
    std::fs::write(spool.join("c.json"), "not json").unwrap();
    std::fs::write(spool.join("d.json"), "x".repeat(5000)).unwrap();

    let mut g = Goworker::start_program(&example(), dir.path(), CONFIG, |_| Vec::new());
    let settled = |want_done: usize, want_failed: usize| {
        wait_until(PATIENCE, || {
            files(&spool.join("done")).len() == want_done
                && files(&spool.join("failed")).len() == want_failed
        })
    };
    assert!(
        settled(2, 3),
        "done {:?}, failed {:?}\n{}",
        files(&spool.join("done")),
        files(&spool.join("failed")),
        g.log_text()
    );
    assert_eq!(files(&spool.join("done")), ["0-crashed.json", "a.json"]);
    assert!(files(&spool).is_empty() && files(&spool.join("processing")).is_empty());

    // The stock `dead` command reads the provider's dead letters.
    let cfg = dir.path().join("config.yaml");
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = cli(&["dead", "-c", cfg, "list"], dir.path());
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{out}");
    let b = records
        .iter()
        .find(|r| r["id"] == "b-1")
        .expect("b's record");
    assert!(b["error"].as_str().unwrap().contains("exit"), "{b}");
    assert!(
        records
            .iter()
            .any(|r| r["error"].as_str().unwrap().contains("max_file"))
    );
    assert!(records.iter().any(|r| r["raw"] == "not json"));

    // The stock `enqueue` command writes through the provider's capability,
    // and the running service picks the file up.
    let job = dir.path().join("job.json");
    std::fs::write(&job, r#"{"id":"e-1","type":"noop"}"#).unwrap();
    let (code, out, err) = cli(&["enqueue", "-c", cfg, job.to_str().unwrap()], dir.path());
    assert_eq!((code, out.trim()), (0, "e-1"), "{err}");
    assert!(settled(3, 3), "{:?}", files(&spool.join("done")));

    // Re-queue the dead letters: only b is a job (the others would fail
    // again at once); it runs and fails again.
    let (code, out, err) = cli(&["dead", "-c", cfg, "retry", "--all"], dir.path());
    assert_eq!((code, out.trim()), (0, "re-queued 1 job(s)"), "{err}");
    // (`retry` moved b out of failed/ before it answered.)
    assert!(settled(3, 3));
    assert!(files(&spool).is_empty());
    let (code, out, err) = cli(&["dead", "-c", cfg, "retry", "nosuch"], dir.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("no dead letter with job id \"nosuch\""),
        "{err}"
    );
    let (code, out, _) = cli(&["dead", "-c", cfg, "purge"], dir.path());
    assert_eq!((code, out.trim()), (0, "purged 3 dead letter(s)"));

    g.sigterm();
    let status = g.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", g.log_text());
    // `goworker options` of the custom binary documents the plugin.
    let (_, out, _) = cli(&["options"], dir.path());
    assert!(
        out.contains("provider type: spool") && out.contains("max_file"),
        "{out}"
    );
}
