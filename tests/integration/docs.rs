//! The documents under docs/ are the contract, so they are tested like code:
//!
//! - `docs/job.schema.json` accepts every JSON job example in README.md and
//!   docs/*.md (and the job inside each dead-letter example), rejects what
//!   the job parser rejects, and accepts the jobs goworker really stores
//!   again (a deferred retry, a dead letter's job) in the `disk` queue and
//!   in Redis, written by the real binary.
//! - Every option `goworker options` prints has a row in
//!   docs/configuration.md with the same default.
//! - Links between the documents resolve, the README links every document
//!   and stays a short front door, and nothing refers outside the
//!   repository.

use crate::util::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema() -> Value {
    serde_json::from_str(&read(&repo().join("docs/job.schema.json")))
        .expect("docs/job.schema.json is JSON")
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).expect("a valid JSON Schema (draft 2020-12)")
}

/// The job schema's definition `name` (e.g. `cliParams`) as a schema of its own.
fn definition(name: &str) -> jsonschema::Validator {
    let mut def = schema()["$defs"][name].clone();
    assert!(def.is_object(), "docs/job.schema.json has no $defs/{name}");
    def["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    validator(&def)
}

/// Panics with every validation error of `instance`, naming `what`.
fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate against docs/job.schema.json:\n  {}\n{instance:#}",
        errors.join("\n  ")
    );
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Every fenced block of `lang` in `text`: (line of its opening fence, body).
fn fenced(text: &str, lang: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) if info.trim() == lang => open = Some((i + 1, String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The JSON values of a ```json block: the whole block, or (JSON Lines)
/// one value per line.
fn json_values(body: &str, at: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str(body) {
        return vec![v];
    }
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{at}: a ```json block that is not JSON: {e}\n{l}"))
        })
        .collect()
}

#[test]
fn every_json_job_example_in_the_readme_and_docs_validates() {
    let jobs = validator(&schema());
    let cli = definition("cliParams");
    let http = definition("httpParams");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in documents() {
        let name = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, body) in fenced(&read(&file), "json") {
            let at = format!("{name}:{line}");
            let values = json_values(&body, &at);
            // Jobs, and the jobs inside dead-letter records.
            let nested = values
                .iter()
                .filter_map(|v| v.get("job"))
                .filter(|j| j.is_object());
            let candidates: Vec<Value> = values.iter().chain(nested).cloned().collect();
            for value in candidates {
                let Some(kind) = value.get("type").and_then(Value::as_str) else {
                    continue;
                };
                assert_valid(&jobs, &value, &at);
                let parsed = goworker::Job::parse(value.to_string().as_bytes());
                assert!(parsed.is_ok(), "{at}: goworker refuses it: {parsed:?}");
                match kind {
                    "cli" => assert_valid(&cli, &value["params"], &format!("{at} (params)")),
                    "http" => assert_valid(&http, &value["params"], &format!("{at} (params)")),
                    _ => {}
                }
                *seen.entry(kind.to_string()).or_default() += 1;
            }
        }
    }
    // Not vacuous: the docs show jobs of each built-in worker type.
    for kind in ["cli", "http", "noop"] {
        assert!(
            seen.contains_key(kind),
            "no ```json job of type {kind}: {seen:?}"
        );
    }
    assert!(seen.values().sum::<usize>() >= 6, "{seen:?}");
}

#[test]
fn the_schema_rejects_what_the_job_parser_rejects() {
    let jobs = validator(&schema());
    // (payload, whether it is a job)
    let cases = [
        (json!({"type": "noop"}), true),
        (
            json!({"type": "cli", "id": "a", "name": "n", "params": {"command": "echo"},
                "retries": 4_294_967_295u64, "capture_output": true, "timeout": "1m 30s",
                "run_at": 1.7e9, "attempts": 2, "first_attempt_at": 1.7e9,
                "last_error": "exit status 1", "anything": {"else": [1, 2]}}),
            true,
        ),
        (json!({"type": "noop", "timeout": 2.5}), true),
        (json!({"type": "noop", "timeout": "250ms"}), true),
        (
            json!({"type": "noop", "timeout": null, "run_at": null, "params": null}),
            true,
        ),
        (json!({"type": "noop", "params": 5}), true),
        (json!({"params": {}}), false),
        (json!({"type": ""}), false),
        (json!({"type": 7}), false),
        (json!({"type": "noop", "retries": -1}), false),
        (json!({"type": "noop", "retries": 1.5}), false),
        (json!({"type": "noop", "retries": 4_294_967_296u64}), false),
        (json!({"type": "noop", "capture_output": "yes"}), false),
        (json!({"type": "noop", "timeout": "soon"}), false),
        (json!({"type": "noop", "timeout": -1}), false),
        (json!({"type": "noop", "timeout": [30]}), false),
        (json!({"type": "noop", "run_at": "tomorrow"}), false),
        (json!({"type": "noop", "id": null}), false),
        (json!({"type": "noop", "name": 5}), false),
        (json!({"type": "noop", "attempts": -1}), false),
        (json!({"type": "noop", "last_error": 3}), false),
        (json!([{"type": "noop"}]), false),
        (json!("noop"), false),
    ];
    for (payload, is_job) in cases {
        let parsed = goworker::Job::parse(payload.to_string().as_bytes());
        assert_eq!(parsed.is_ok(), is_job, "parser on {payload}: {parsed:?}");
        assert_eq!(jobs.is_valid(&payload), is_job, "schema on {payload}");
    }
    // A job as goworker writes it back, every field set.
    let mut job = goworker::Job::new("cli", json!({"command": "echo", "params": ["hi"]}));
    job.name = "greeting".into();
    job.retries = 2;
    job.capture_output = true;
    job.timeout = Some(std::time::Duration::from_millis(1500));
    job.run_at = Some(goworker::unix_now());
    job.attempts = 1;
    job.first_attempt_at = Some(goworker::unix_now());
    job.last_error = Some("exit status 1".into());
    job.extra.insert("trace".into(), json!({"parent": "x"}));
    let written: Value = serde_json::from_str(&job.to_json()).unwrap();
    assert_valid(&jobs, &written, "Job::to_json");
}

/// Two `cli` pools running `false`: `quick` retries after 10 ms (its jobs
/// end as dead letters), `slow` after an hour (its jobs wait, stored).
const POOLS: &str = r#"workers:
  - type: cli
    name: quick
    allow: ["false"]
    retry: { base: 10ms, max: 10ms, jitter: none }
  - type: cli
    name: slow
    allow: ["false"]
    retry: { base: 1h, max: 1h, jitter: none }
"#;

/// A job of `quick` that fails twice and is dead-lettered, and one of
/// `slow` that fails once and waits an hour for its retry.
fn failing_jobs() -> [Value; 2] {
    [
        json!({"type": "quick", "name": "dies", "retries": 1, "capture_output": true,
               "timeout": "5s", "params": {"command": "false"},
               "trace": {"origin": "docs test"}}),
        json!({"type": "slow", "name": "waits", "retries": 3,
               "params": {"command": "false"}, "trace": {"origin": "docs test"}}),
    ]
}

/// Checks a stored dead letter and a stored retry against the schema and
/// the bookkeeping docs/jobs.md describes.
fn check_stored(dead: &Value, waiting: &Value) {
    let jobs = validator(&schema());
    let job = &dead["job"];
    assert_valid(&jobs, job, "a dead letter's job");
    assert_eq!(job["name"], "dies", "{dead}");
    assert_eq!(job["attempts"], 2, "{dead}");
    assert_eq!(job["last_error"], "exit status 1", "{dead}");
    assert_eq!(
        job["trace"]["origin"], "docs test",
        "unknown fields are kept: {dead}"
    );
    assert_eq!(dead["id"], job["id"], "{dead}");
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert!(dead["failed_at"].is_number(), "{dead}");

    assert_valid(&jobs, waiting, "a job stored for its retry");
    assert_eq!(waiting["name"], "waits", "{waiting}");
    assert_eq!(waiting["attempts"], 1, "{waiting}");
    assert!(waiting["first_attempt_at"].is_number(), "{waiting}");
    assert_eq!(waiting["last_error"], "exit status 1", "{waiting}");
    assert_eq!(waiting["trace"]["origin"], "docs test", "{waiting}");
}

/// Waits until the log says the dead letter and the retry happened.
fn wait_for_failures(g: &Goworker) {
    assert!(
        wait_until(PATIENCE, || {
            let log = g.log_text();
            log.contains("(dies): failed for good") && log.contains("(waits): attempt 1 of 4")
        }),
        "{}",
        g.log_text()
    );
}

#[test]
fn jobs_the_disk_queue_stores_validate() {
    let dir = temp_dir();
    let d = dir.path();
    let cfg = format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 5s\n\
         providers:\n  - type: disk\n    name: local\n    path: ./data/queue.redb\n{POOLS}"
    );
    std::fs::write(d.join("config.yaml"), &cfg).unwrap();
    for (i, job) in failing_jobs().iter().enumerate() {
        let file = d.join(format!("job{i}.json"));
        std::fs::write(&file, job.to_string()).unwrap();
        let (code, _, err) = goworker(&["enqueue", "-c", "config.yaml", file.to_str().unwrap()], d);
        assert_eq!(code, 0, "{err}");
    }
    let mut g = Goworker::start(d, &cfg);
    wait_for_failures(&g);
    g.sigterm();
    assert_eq!(
        g.wait_exit(PATIENCE).and_then(|s| s.code()),
        Some(0),
        "{}",
        g.log_text()
    );

    let (code, out, err) = goworker(&["dead", "-c", "config.yaml", "list"], d);
    assert_eq!(code, 0, "{err}");
    let dead: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{out}");

    // The `pending` table, as docs/disk.md lays it out: the retry waits
    // there with its bookkeeping.
    let db = redb::Database::open(d.join("data/queue.redb")).expect("open the queue file");
    let tx = db.begin_read().unwrap();
    let pending = tx
        .open_table(redb::TableDefinition::<(u64, u64), &[u8]>::new("pending"))
        .unwrap();
    let stored: Vec<Value> = redb::ReadableTable::iter(&pending)
        .unwrap()
        .map(|row| serde_json::from_slice(row.unwrap().1.value()).unwrap())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    check_stored(&dead[0], &stored[0]);
}

#[test]
fn jobs_the_redis_provider_stores_validate() {
    let redis = Redis::start();
    let dir = temp_dir();
    let d = dir.path();
    let cfg = format!(
        "manager:\n  stats_listen: null\n  shutdown_timeout: 5s\n\
         providers:\n  - type: redis\n    name: main\n    url: {}\n    queues: [docs]\n{POOLS}",
        redis.url()
    );
    for job in failing_jobs() {
        redis.q(&["LPUSH", "docs", &job.to_string()]);
    }
    let g = Goworker::start(d, &cfg);
    wait_for_failures(&g);
    // The ack thread stores both settlements shortly after the log lines.
    assert!(wait_until(PATIENCE, || redis.llen("docs:dead") == 1
        && redis.q(&["ZCARD", "docs:delayed"]).int() == 1));
    let dead: Value = serde_json::from_str(&redis.lrange("docs:dead")[0]).unwrap();
    let delayed = redis.q(&["ZRANGE", "docs:delayed", "0", "-1"]).strings();
    let waiting: Value = serde_json::from_str(&delayed[0]).unwrap();
    check_stored(&dead, &waiting);
    assert_eq!(dead["provider"], "main", "{dead}");
}

/// `goworker options`, parsed: (section kind, type) → option → default.
/// The manager is ("manager", "manager").
fn printed_options() -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let (code, out, err) = goworker(&["options"], &repo());
    assert_eq!(code, 0, "{err}");
    let mut all: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut described = false;
    for line in out.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            current = Some(match line.split_once(" type: ") {
                Some((kind, name)) => (kind.to_string(), name.trim().to_string()),
                None => ("manager".into(), "manager".into()),
            });
            described = false;
            continue;
        }
        if !described {
            described = true; // the type's one-line description
            continue;
        }
        let key = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let default = line
            .split_once("  default: ")
            .and_then(|(_, rest)| rest.split("  ").next())
            .unwrap_or_else(|| panic!("no default in {line:?}"))
            .to_string();
        let section = current.clone().expect("an option before any type");
        all.entry(section).or_default().insert(key, default);
    }
    all
}

/// The lines under each heading of a Markdown text, by heading text.
fn sections(text: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        match line.strip_prefix('#') {
            Some(h) if !in_code => out.push((h.trim_start_matches('#').trim().to_string(), vec![])),
            _ => {
                if let Some((_, lines)) = out.last_mut() {
                    lines.push(line);
                }
            }
        }
    }
    out
}

/// Keys every entry of a section kind has; documented once, in the
/// section "Keys of every <kind>".
fn common_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "worker" => &["type", "name", "count", "timeout", "retry"],
        "provider" | "failure_handler" => &["type", "name"],
        _ => &[],
    }
}

#[test]
fn every_option_goworker_options_prints_is_documented_with_its_default() {
    let text = read(&repo().join("docs/configuration.md"));
    let sections = sections(&text);
    let find = |heading: &str| -> &[&str] {
        sections
            .iter()
            .find(|(h, _)| h == heading)
            .map(|(_, lines)| lines.as_slice())
            .unwrap_or_else(|| panic!("docs/configuration.md has no section \"{heading}\""))
    };
    let mut checked = 0;
    for ((kind, name), options) in printed_options() {
        let label = kind.replace('_', " ");
        for (key, default) in options {
            // A nested key (`retry.base`) lives where its parent does.
            let top = key.split('.').next().unwrap_or_default();
            let common = common_keys(&kind).contains(&top);
            let heading = match (kind.as_str(), common) {
                ("manager", _) => "`manager`".to_string(),
                (_, true) => format!("Keys of every {label}"),
                (_, false) => format!("`{name}` {label}"),
            };
            let row_start = format!("| `{key}` |");
            let row = find(&heading)
                .iter()
                .find(|l| l.starts_with(&row_start))
                .unwrap_or_else(|| {
                    panic!("docs/configuration.md, section \"{heading}\": no row for `{key}`")
                });
            let cell = row.split('|').nth(2).unwrap_or_default().trim();
            assert_eq!(
                cell,
                format!("`{default}`"),
                "docs/configuration.md, section \"{heading}\", `{key}`: \
                 `goworker options` prints the default {default}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} options checked");
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Inline Markdown links `[text](target)` outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let outside_spans: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = outside_spans.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn links_between_the_documents_resolve() {
    let mut checked = 0;
    for file in documents() {
        let text = read(&file);
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            assert!(dest.exists(), "{}: broken link {target}", file.display());
            if !anchor.is_empty() {
                let headings: Vec<String> = sections(&read(&dest))
                    .into_iter()
                    .map(|(h, _)| slug(&h))
                    .collect();
                assert!(
                    headings.iter().any(|h| h == anchor),
                    "{}: link {target}: no such heading in {}",
                    file.display(),
                    dest.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links");
}

#[test]
fn the_readme_is_a_short_front_door_to_every_document() {
    let readme = read(&repo().join("README.md"));
    assert!(readme.len() < 15_000, "README.md is {} bytes", readme.len());
    let first = &fenced(&readme, "sh")[0].1;
    assert!(first.contains("make run    # the service on the embedded default config"));
    assert!(first.contains("make test   # installs what the tests need"));
    for doc in documents().iter().skip(1) {
        let name = doc.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("(docs/{name}")),
            "README.md does not link docs/{name}"
        );
    }
    assert!(readme.contains("(docs/job.schema.json)"));
}

#[test]
fn nothing_in_the_repository_refers_outside_it() {
    // Spelled in pieces so that this file does not name them itself.
    let outside = [
        ["DESIGN", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["../", "shared"].concat(),
    ];
    let mut stack = vec![repo()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".ci" || name == "target" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue; // not text
            };
            files += 1;
            for needle in &outside {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} mentions {needle}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 50, "only {files} files read");
}
