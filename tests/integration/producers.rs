//! docs/producers.md: every snippet whose interpreter (and, for Redis, its
//! client library) is installed runs against a real goworker and a real
//! redis-server, and the job it submits runs. Python with its Redis client
//! is installed by `make deps`; Node.js and Go run where they are present.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (section, language, code) of every fenced snippet on the page.
fn snippets() -> Vec<(String, String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/producers.md");
    let text = std::fs::read_to_string(&path).expect("docs/producers.md");
    let mut out = Vec::new();
    let (mut section, mut lang, mut code) = (String::new(), None::<String>, String::new());
    for line in text.lines() {
        match (&lang, line.strip_prefix("```")) {
            (None, Some(l)) => lang = Some(l.trim().to_string()),
            (Some(l), Some(_)) => {
                out.push((section.clone(), l.clone(), std::mem::take(&mut code)));
                lang = None;
            }
            (Some(_), None) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {
                if let Some(h) = line.strip_prefix("## ") {
                    section = h.to_string();
                }
            }
        }
    }
    out
}

/// The command that runs `code` in `lang`, when that language (and what
/// the snippet imports) is installed here.
fn runner(lang: &str, code: &str, dir: &Path) -> Option<Command> {
    let works = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    match lang {
        "python" => {
            // Debian's Python, where `make deps` installs python3-redis.
            let py = ["/usr/bin/python3", "python3"]
                .into_iter()
                .find(|p| works(Command::new(p).args(["-c", "import json"])))?;
            if code.contains("import json, os, uuid, redis")
                && !works(Command::new(py).args(["-c", "import redis"]))
            {
                panic!("{py} lacks the redis module: run `make deps`");
            }
            let mut c = Command::new(py);
            c.args(["-c", code]);
            Some(c)
        }
        "js" => {
            let needs_redis = code.contains("require(\"redis\")");
            if !works(Command::new("node").arg("--version"))
                || (needs_redis && !works(Command::new("node").args(["-e", "require('redis')"])))
            {
                return None;
            }
            let mut c = Command::new("node");
            c.args(["-e", code]);
            Some(c)
        }
        "go" => {
            if !works(Command::new("go").arg("version")) || code.contains("go-redis") {
                // go-redis would have to be downloaded: not here.
                return None;
            }
            let file = dir.join("main.go");
            std::fs::write(&file, code).ok()?;
            let mut c = Command::new("go");
            c.arg("run").arg(file);
            Some(c)
        }
        _ => None,
    }
}

#[test]
fn every_producer_snippet_that_can_run_here_submits_a_job_that_runs() {
    let redis = Redis::start();
    let dir = temp_dir();
    let (api, stats) = (free_port(), free_port());
    let config = format!(
        "manager: {{ stats_listen: 127.0.0.1:{stats} }}\n\
         providers:\n  - type: http\n    listen: 127.0.0.1:{api}\n\
         \x20 - type: redis\n    url: {}\n\
         workers:\n  - type: noop\n",
        redis.url()
    );
    let g = Goworker::start(dir.path(), &config);
    let succeeded = || -> u64 {
        agent()
            .get(&format!("http://127.0.0.1:{stats}/stats"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["totals"]["succeeded"].as_u64())
            .unwrap_or(0)
    };
    let mut ran = Vec::new();
    for (section, lang, code) in snippets() {
        let Some(mut cmd) = runner(&lang, &code, dir.path()) else {
            eprintln!("not run here ({lang} or its client library is not installed): {section}");
            continue;
        };
        let before = succeeded();
        let out = cmd
            .env("GOWORKER_URL", format!("http://127.0.0.1:{api}"))
            .env("REDIS_URL", redis.url())
            .current_dir(dir.path())
            .output()
            .expect("run the snippet");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !id.is_empty(),
            "{lang} snippet of \"{section}\" failed: {}{}",
            id,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wait_until(PATIENCE, || succeeded() > before),
            "the job {id} from the {lang} snippet of \"{section}\" did not run:\n{}",
            g.log_text()
        );
        ran.push(format!("{lang}: {section}"));
    }
    // Python is always here (with `make deps`): both of its snippets ran.
    assert!(
        ran.iter().filter(|r| r.starts_with("python")).count() == 2,
        "{ran:?}"
    );
}
