//! The `http` provider and the stats server, over real sockets with a real
//! HTTP client (ureq), against real `goworker` processes and, where that is
//! simpler, an in-process `Service`.

use crate::util::{Goworker, PATIENCE, agent, free_port, goworker, script, temp_dir, wait_until};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An HTTP answer: status, headers we look at, JSON body (or text).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

pub(crate) fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("HTTP request");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after");
    Answer {
        status: r.status().as_u16(),
        retry_after,
        text: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub(crate) fn post(agent: &ureq::Agent, url: &str, body: &str) -> Answer {
    answer(
        agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
    )
}

pub(crate) fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

/// A goworker process with an `http` provider `api` and a stats server.
pub(crate) struct Service {
    pub(crate) g: Goworker,
    pub(crate) api: String,
    pub(crate) stats: String,
    _dir: tempfile::TempDir,
}

/// Starts goworker with `provider_extra` lines added to the `api` provider
/// and `workers` as the workers section.
fn start(provider_extra: &str, manager_extra: &str, workers: &str) -> Service {
    start_env(provider_extra, manager_extra, workers, &[])
}

pub(crate) fn start_env(
    provider_extra: &str,
    manager_extra: &str,
    workers: &str,
    env: &[(&str, &str)],
) -> Service {
    let dir = temp_dir();
    script(dir.path(), "fail.sh", "echo 'no luck' >&2\nexit 1");
    let (port, stats_port) = (free_port(), free_port());
    let config = format!(
        "manager:\n  stats_listen: 127.0.0.1:{stats_port}\n  retry: {{ base: 10ms, max: 50ms }}\n{manager_extra}\
         providers:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n{provider_extra}\
         workers:\n{workers}"
    );
    let g = Goworker::start_with_env(dir.path(), &config, env);
    Service {
        g,
        api: format!("http://127.0.0.1:{port}"),
        stats: format!("http://127.0.0.1:{stats_port}"),
        _dir: dir,
    }
}

pub(crate) const CLI_AND_NOOP: &str = "  - type: cli\n    count: 2\n    allow: [echo, sleep, ./fail.sh]\n  - type: noop\n    count: 2\n";

impl Service {
    fn stats(&self) -> Value {
        get(&format!("{}/stats", self.stats)).json()
    }

    fn succeeded(&self, kind: &str) -> u64 {
        self.stats()["types"][kind]["succeeded"]
            .as_u64()
            .unwrap_or(0)
    }

    pub(crate) fn log(&self) -> String {
        self.g.log_text()
    }
}

#[test]
fn waiting_submit_returns_output_and_a_failure_after_all_attempts() {
    let s = start("", "", CLI_AND_NOOP);
    let a = post(
        &agent(),
        &format!("{}/job/add", s.api),
        r#"{"type":"cli","params":{"command":"echo","params":["hello","http"]},"capture_output":true}"#,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let body = a.json();
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["attempts"], 1);
    assert!(
        body["output"].as_str().unwrap().contains("hello http"),
        "{body}"
    );
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["duration_ms"].is_u64());

    let a = post(
        &agent(),
        &format!("{}/jobs", s.api),
        r#"{"id":"doomed","type":"cli","params":{"command":"./fail.sh"},"retries":2,"capture_output":true}"#,
    );
    assert_eq!(a.status, 500, "{a:?}");
    let body = a.json();
    assert_eq!(body["id"], "doomed");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["attempts"], 3, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(
        body["output"].as_str().unwrap().contains("no luck"),
        "{body}"
    );
}

#[test]
fn no_wait_answers_202_and_the_job_runs() {
    let s = start("", "", CLI_AND_NOOP);
    let a = post(
        &agent(),
        &format!("{}/job/add?wait=false", s.api),
        r#"{"type":"noop","name":"quick"}"#,
    );
    assert_eq!(a.status, 202, "{a:?}");
    let body = a.json();
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(PATIENCE, || s.succeeded("noop") == 1),
        "{}",
        s.log()
    );
    assert!(s.log().contains(&id));

    // Bulk submit without a store: every job runs.
    let a = post(
        &agent(),
        &format!("{}/jobs?wait=false", s.api),
        r#"[{"type":"noop"},{"type":"noop"},{"type":"noop"}]"#,
    );
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json()["ids"].as_array().unwrap().len(), 3);
    assert!(wait_until(PATIENCE, || s.succeeded("noop") == 4));

    // Bulk submit, waiting: one report per job.
    let a = post(
        &agent(),
        &format!("{}/jobs", s.api),
        r#"[{"type":"noop","id":"a"},{"type":"noop","id":"b"}]"#,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let ids: Vec<_> = a
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b")]);
}

/// Sends a request by hand; returns the whole answer text (up to EOF or
/// the read timeout).
pub(crate) fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request).unwrap();
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn every_error_status_has_a_json_body_and_the_service_keeps_serving() {
    let s = start_env(
        "    token_env: API_TOKEN\n    max_body: 4096\n",
        "",
        CLI_AND_NOOP,
        &[("API_TOKEN", "s3cret-token")],
    );
    let url = format!("{}/job/add", s.api);
    let authed = |body: &str| {
        answer(
            agent()
                .post(&url)
                .header("Authorization", "Bearer s3cret-token")
                .send(body),
        )
    };
    let ok = || {
        let a = authed(r#"{"type":"noop"}"#);
        assert_eq!(a.status, 200, "service stopped serving: {a:?}");
    };
    ok();

    let cases: Vec<(u16, Answer)> = vec![
        (401, post(&agent(), &url, r#"{"type":"noop"}"#)),
        (
            401,
            answer(
                agent()
                    .post(&url)
                    .header("Authorization", "Bearer wrong")
                    .send(r#"{"type":"noop"}"#),
            ),
        ),
        (404, post(&agent(), &format!("{}/nowhere", s.api), "{}")),
        (405, answer(agent().get(&url).call())),
        (400, authed("{not json")),
        (400, authed(r#"{"params":{}}"#)),
        (422, authed(r#"{"type":"nosuchpool"}"#)),
        (
            413,
            authed(&format!(
                r#"{{"type":"noop","pad":"{}"}}"#,
                "x".repeat(8000)
            )),
        ),
    ];
    for (want, a) in cases {
        assert_eq!(a.status, want, "{a:?}");
        assert!(
            a.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{a:?}"
        );
        ok();
    }

    // An oversize body is answered before it is sent, and the connection
    // ends once the client stops: nothing hangs.
    let addr = s.api.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(
        b"POST /job/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n\
          Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"type\":",
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the server closes the connection");
    assert!(String::from_utf8_lossy(&rest).contains("over the limit"));
    ok();

    // A body declared absurdly large (more than the machine's memory) is
    // refused too, and the service lives on.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(
        b"POST /job/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n\
          Content-Length: 99999999999999\r\n\r\n{",
    )
    .unwrap();
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    drop(c);
    ok();

    // Requests that are not HTTP are refused with 400.
    assert!(raw(&addr, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400"));
    ok();
    // The token never reaches the log.
    assert!(!s.log().contains("s3cret-token"));
}

#[test]
fn full_pipeline_and_shutdown_answer_503_with_retry_after() {
    let s = start(
        "",
        "  channel_bound: 1\n  shutdown_timeout: 1s\n",
        "  - type: cli\n    count: 1\n    allow: [sleep]\n",
    );
    let sleep = r#"{"type":"cli","params":{"command":"sleep","params":["30"]}}"#;
    let url = format!("{}/job/add?wait=false", s.api);
    // One runs, one waits for the pool thread, one waits in the channel;
    // then the pipeline is full.
    let mut full = None;
    for _ in 0..10 {
        let a = post(&agent(), &url, sleep);
        if a.status == 503 {
            full = Some(a);
            break;
        }
        assert_eq!(a.status, 202, "{a:?}");
    }
    let full = full.expect("the pipeline never filled");
    // Still serving while full: the stats answer, and so does a bad request.
    assert_eq!(get(&format!("{}/healthz", s.stats)).status, 200);
    assert_eq!(post(&agent(), &url, "{").status, 400);
    assert_eq!(full.retry_after.as_deref(), Some("1"), "{full:?}");
    assert!(full.json()["error"].as_str().unwrap().contains("full"));

    // A caller waiting on a job that is killed at shutdown gets 503.
    let waiter = {
        let url = format!("{}/job/add", s.api);
        std::thread::spawn(move || post(&agent(), &url, sleep))
    };
    assert!(wait_until(PATIENCE, || s.stats()["channel"]["len"] == 1
        && s.stats()["in_flight"] == 2));
    s.g.sigterm();
    let mut during = None;
    wait_until(PATIENCE, || {
        let a = post(&agent(), &url, sleep);
        let stop = a.status == 503 && a.json()["error"] == "shutting down";
        during = Some(a);
        stop
    });
    let during = during.unwrap();
    assert_eq!(during.status, 503, "{during:?}");
    assert_eq!(during.retry_after.as_deref(), Some("5"));
    let w = waiter.join().unwrap();
    assert_eq!(w.status, 503, "{w:?}");
    assert!(w.retry_after.is_some());
}

/// Threads of process `pid`, from /proc.
fn threads(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_disconnects_while_waiting_leaks_no_thread() {
    let s = start(
        "    threads: 1\n",
        "",
        "  - type: cli\n    count: 1\n    allow: [sleep, echo]\n",
    );
    let addr = s.api.trim_start_matches("http://").to_string();
    let body = r#"{"type":"cli","params":{"command":"sleep","params":["1"]}}"#;
    // One round: a waiting client goes away while its job runs; the job
    // still finishes and is counted, and the one handler thread and the
    // worker are free again for the next waiting submit.
    let round = |n: u64| {
        {
            let mut c = TcpStream::connect(&addr).unwrap();
            write!(
                c,
                "POST /job/add HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            assert!(wait_until(PATIENCE, || s.stats()["in_flight"] == 1));
        }
        assert!(
            wait_until(PATIENCE, || s.succeeded("cli") == 2 * n - 1),
            "{}",
            s.log()
        );
        let a = post(
            &agent(),
            &format!("{}/job/add", s.api),
            r#"{"type":"cli","params":{"command":"echo"}}"#,
        );
        assert_eq!(a.status, 200, "{a:?}");
        assert!(wait_until(PATIENCE, || s.succeeded("cli") == 2 * n));
    };
    // The first round lets the service's threads reach their
    // steady number; later rounds must not add to it.
    round(1);
    let before = threads(s.g.pid());
    for n in 2..=4 {
        round(n);
    }
    assert!(
        wait_until(PATIENCE, || threads(s.g.pid()) <= before),
        "threads: {} > {before}",
        threads(s.g.pid())
    );
}

/// Samples of one metric family: labels → value.
fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(-1.0),
                prometheus_parse::Value::Summary(_) => -1.0,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (labels, v)
        })
        .collect()
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
}

#[test]
fn metrics_parse_and_count_the_jobs_run_and_stats_agree() {
    let s = start("", "", CLI_AND_NOOP);
    let agent = agent();
    for _ in 0..6 {
        assert_eq!(
            post(&agent, &format!("{}/job/add", s.api), r#"{"type":"noop"}"#).status,
            200
        );
    }
    for _ in 0..2 {
        let a = post(
            &agent,
            &format!("{}/job/add", s.api),
            r#"{"type":"cli","params":{"command":"./fail.sh"},"retries":1}"#,
        );
        assert_eq!(a.status, 500);
    }
    let metrics = || get(&format!("{}/metrics", s.stats)).text;
    let jobs = |t: &str, kind: &str, outcome: &str| {
        sample(
            t,
            "goworker_jobs_total",
            &[("type", kind), ("provider", "api"), ("outcome", outcome)],
        )
    };
    assert!(
        wait_until(PATIENCE, || {
            let t = metrics();
            jobs(&t, "noop", "succeeded") == Some(6.0) && jobs(&t, "cli", "failed") == Some(2.0)
        }),
        "{}",
        metrics()
    );
    let t = metrics();
    assert_eq!(jobs(&t, "cli", "retried"), Some(2.0));
    assert_eq!(jobs(&t, "noop", "failed"), Some(0.0));
    assert_eq!(jobs(&t, "cli", "succeeded"), Some(0.0));
    // Histogram: every attempt measured (6 noop, 2 × 2 cli).
    assert_eq!(
        sample(
            &t,
            "goworker_job_duration_seconds_count",
            &[("type", "noop")]
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &t,
            "goworker_job_duration_seconds_count",
            &[("type", "cli")]
        ),
        Some(4.0)
    );
    // The +Inf bucket of the histogram.
    assert_eq!(
        sample(&t, "goworker_job_duration_seconds", &[("type", "cli")]),
        Some(4.0),
        "{t}"
    );
    assert_eq!(
        sample(&t, "goworker_provider_up", &[("provider", "api")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&t, "goworker_in_flight", &[("type", "cli")]),
        Some(0.0)
    );
    assert!(sample(&t, "goworker_channel_depth", &[]).is_some(), "{t}");
    // Final outcomes, retries and attempts are series of their own, so the
    // outcomes add up to jobs (the old goworker_jobs_total stays as an
    // alias for one release).
    let pair = |name: &str, kind: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("type", kind), ("provider", "api")];
        labels.extend_from_slice(extra);
        sample(&t, name, &labels)
    };
    let finished = "goworker_jobs_finished_total";
    assert_eq!(
        pair(finished, "noop", &[("outcome", "succeeded")]),
        Some(6.0)
    );
    assert_eq!(pair(finished, "cli", &[("outcome", "failed")]), Some(2.0));
    assert_eq!(pair(finished, "cli", &[("outcome", "retried")]), None);
    assert_eq!(pair("goworker_job_retries_total", "cli", &[]), Some(2.0));
    assert_eq!(pair("goworker_job_attempts_total", "cli", &[]), Some(4.0));
    assert_eq!(pair("goworker_jobs_received_total", "cli", &[]), Some(2.0));
    assert_eq!(pair("goworker_jobs_received_total", "noop", &[]), Some(6.0));
    // Build and process figures.
    let build = samples(&t, "goworker_build_info");
    assert_eq!(build.len(), 1, "{t}");
    assert_eq!(
        build[0].0.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    for name in [
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            sample(&t, name, &[]).is_some_and(|v| v >= 0.0),
            "{name}:\n{t}"
        );
    }

    let st = s.stats();
    assert_eq!(st["types"]["noop"]["succeeded"], 6);
    assert_eq!(st["types"]["cli"]["failed"], 2);
    assert_eq!(st["types"]["cli"]["retried"], 2);
    assert_eq!(st["providers"]["api"]["succeeded"], 6);
    assert_eq!(st["providers"]["api"]["failed"], 2);
    assert_eq!(st["totals"]["succeeded"], 6);
    assert_eq!(st["providers"]["api"]["up"], true);
    assert!(st["uptime_secs"].as_f64().unwrap() > 0.0);
    assert!(st["types"]["noop"]["duration"]["p99_ms"].is_number());
    assert_eq!(st["channel"]["capacity"], 1024);
    let pairs = st["by_type_and_provider"].as_array().unwrap();
    assert!(
        pairs
            .iter()
            .any(|p| p["type"] == "noop" && p["provider"] == "api" && p["succeeded"] == 6)
    );
    // Every counter is kept per pair too.
    let cli = pairs
        .iter()
        .find(|p| p["type"] == "cli" && p["provider"] == "api")
        .unwrap();
    assert_eq!((&cli["received"], &cli["attempts"]), (&json!(2), &json!(4)));

    assert_eq!(get(&format!("{}/healthz", s.stats)).status, 200);
    assert_eq!(get(&format!("{}/nothing", s.stats)).status, 404);
}

#[test]
fn two_hundred_clients_submitting_ten_thousand_jobs_all_get_answers() {
    let s = start("    threads: 32\n", "", "  - type: noop\n    count: 4\n");
    let url = format!("{}/job/add", s.api);
    let clients: Vec<_> = (0..200)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let mut answered = 0;
                for i in 0..50 {
                    let id = format!("c{c}-{i}");
                    let wait = if i % 2 == 0 { "" } else { "?wait=false" };
                    let a = post(
                        &agent,
                        &format!("{url}{wait}"),
                        &json!({"type": "noop", "id": id}).to_string(),
                    );
                    let want = if wait.is_empty() { 200 } else { 202 };
                    assert_eq!(a.status, want, "{a:?}");
                    assert_eq!(a.json()["id"], id.as_str());
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 10_000);
    assert!(
        wait_until(PATIENCE, || s.succeeded("noop") == 10_000),
        "{}",
        s.stats()
    );
    let st = s.stats();
    assert_eq!(st["providers"]["api"]["received"], 10_000);
    assert_eq!(st["totals"]["failed"], 0);
}

#[test]
fn healthz_turns_503_while_a_provider_is_down() {
    use goworker::{Config, MemoryProvider, Service, noop::Noop};
    let port = free_port();
    let (provider, handle) = MemoryProvider::new();
    let service = Service::builder(Config::empty())
        .manager(|m| m.stats_listen = Some(format!("127.0.0.1:{port}").parse().unwrap()))
        .provider("queue", provider)
        .pool::<Noop>("noop", 1, Default::default())
        .unwrap()
        .build()
        .unwrap()
        .start()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert!(wait_until(PATIENCE, || get(&url).status == 200));
    handle.set_down(Some("lost the connection to the moon"));
    assert!(wait_until(PATIENCE, || get(&url).status == 503));
    let body = get(&url).json();
    assert_eq!(
        body["providers_down"]["queue"],
        "lost the connection to the moon"
    );
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics")).text;
    assert!(
        wait_until(PATIENCE, || sample(
            &get(&format!("http://127.0.0.1:{port}/metrics")).text,
            "goworker_provider_up",
            &[("provider", "queue")]
        ) == Some(0.0)),
        "{metrics}"
    );
    handle.set_down(None);
    assert!(wait_until(PATIENCE, || get(&url).status == 200));
    service.shutdown();
    service.wait();
    // The listener closes once the service has stopped.
    assert!(wait_until(PATIENCE, || TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_err()));
}

/// A durable store for the `store` option: remembers every `put` call.
#[derive(Default)]
struct TestStore {
    puts: Mutex<Vec<Vec<goworker::Job>>>,
    broken: std::sync::atomic::AtomicBool,
}

impl goworker::JobStore for TestStore {
    fn put(&self, jobs: &[goworker::Job]) -> Result<(), goworker::Error> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(goworker::Error::Other("disk full".into()));
        }
        self.puts.lock().unwrap().push(jobs.to_vec());
        Ok(())
    }
}

struct StoreProvider(Arc<TestStore>);

impl goworker::Provider for StoreProvider {
    fn run(&mut self, ctx: &goworker::ProviderContext) -> Result<(), goworker::Error> {
        ctx.set_up();
        while !ctx.is_stopping() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn store(&self) -> Option<Arc<dyn goworker::JobStore>> {
        Some(self.0.clone())
    }
}

fn service_with_store(
    store_name: &str,
    port: u16,
) -> Result<goworker::RunningService, goworker::Error> {
    let yaml = format!(
        "manager:\n  stats_listen: \"\"\nproviders:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n    store: {store_name}\nworkers:\n  - type: noop\n"
    );
    let config = goworker::Config::parse(&yaml, &goworker::Registry::with_builtins())?;
    goworker::Service::builder(config)
        .provider("local", StoreProvider(Arc::new(TestStore::default())))
        .build()?
        .start()
}

#[test]
fn no_wait_with_a_store_answers_202_only_once_stored() {
    let port = free_port();
    let yaml = format!(
        "manager:\n  stats_listen: \"\"\nproviders:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n    store: local\nworkers:\n  - type: noop\n"
    );
    let config = goworker::Config::parse(&yaml, &goworker::Registry::with_builtins()).unwrap();
    let store = Arc::new(TestStore::default());
    let service = goworker::Service::builder(config)
        .provider("local", StoreProvider(store.clone()))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let a = post(
        &agent(),
        &format!("{api}/job/add?wait=false"),
        r#"{"type":"noop","keep":"me"}"#,
    );
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    {
        let puts = store.puts.lock().unwrap();
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0][0].id, id);
        assert_eq!(puts[0][0].extra["keep"], "me");
    }
    // Bulk: one `put` (one transaction) with every job.
    let a = post(
        &agent(),
        &format!("{api}/jobs?wait=false"),
        r#"[{"type":"noop"},{"type":"noop"},{"type":"noop"}]"#,
    );
    assert_eq!(a.status, 202, "{a:?}");
    let ids: Vec<String> = a.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    {
        let puts = store.puts.lock().unwrap();
        assert_eq!(puts.len(), 2);
        let stored: Vec<String> = puts[1].iter().map(|j| j.id.clone()).collect();
        assert_eq!(stored, ids);
    }
    // A store that fails: 503, nothing claimed.
    store
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = post(
        &agent(),
        &format!("{api}/job/add?wait=false"),
        r#"{"type":"noop"}"#,
    );
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.retry_after.is_some());
    assert!(a.json()["error"].as_str().unwrap().contains("disk full"));
    // Waiting submits still go through the pipeline.
    let a = post(&agent(), &format!("{api}/job/add"), r#"{"type":"noop"}"#);
    assert_eq!(a.status, 200, "{a:?}");
    service.shutdown();
    service.wait();
}

#[test]
fn check_refuses_a_store_that_names_no_provider_offering_one() {
    let dir = temp_dir();
    for (store, extra) in [
        ("nosuch", ""),
        (
            "other",
            "  - type: http\n    name: other\n    listen: 127.0.0.1:1\n",
        ),
    ] {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "manager:\n  stats_listen: null\nproviders:\n  - type: http\n    store: {store}\n{extra}workers:\n  - type: noop\n"
            ),
        )
        .unwrap();
        let (code, out, err) = goworker(&["check", "-c", cfg.to_str().unwrap()], dir.path());
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains(&format!(
                "providers[0].store: \"{store}\": no provider of that name offers a store"
            )),
            "{err}"
        );
    }
}

#[test]
fn start_up_fails_on_a_port_in_use_or_an_unknown_store() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = service_with_store("local", port).unwrap_err().to_string();
    assert!(err.contains(&format!("listen 127.0.0.1:{port}")), "{err}");
    let err = service_with_store("nosuch", free_port())
        .unwrap_err()
        .to_string();
    assert!(err.contains("store \"nosuch\""), "{err}");

    // The binary: exit code 2 and one line naming the address.
    let dir = temp_dir();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "manager:\n  stats_listen: \"\"\nproviders:\n  - type: http\n    listen: 127.0.0.1:{port}\nworkers:\n  - type: noop\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = goworker(&["run", "-c", cfg.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn enqueue_command_submits_to_the_running_service_with_the_token() {
    let dir = temp_dir();
    std::fs::write(dir.path().join("token"), "file-token\n").unwrap();
    let s = start(
        &format!("    token_file: {}\n", dir.path().join("token").display()),
        "",
        CLI_AND_NOOP,
    );
    let cfg = s.g.dir.join("config.yaml");
    let job = dir.path().join("job.json");
    std::fs::write(&job, r#"{"type":"noop","name":"from-cli"}"#).unwrap();
    let enqueue = || {
        goworker(
            &[
                "enqueue",
                "-c",
                cfg.to_str().unwrap(),
                "--provider",
                "api",
                job.to_str().unwrap(),
            ],
            dir.path(),
        )
    };
    let (code, stdout, stderr) = enqueue();
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim();
    assert_eq!(id.len(), 26, "{stdout}");
    assert!(wait_until(PATIENCE, || s.succeeded("noop") == 1));
    assert!(s.log().contains(id));
    assert!(!s.log().contains("file-token"));

    // A job the service would refuse (422): the command says why, before
    // sending it.
    std::fs::write(&job, r#"{"type":"nosuchpool"}"#).unwrap();
    let (code, _, stderr) = enqueue();
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no worker pool runs jobs of type \"nosuchpool\""),
        "{stderr}"
    );
}

#[test]
fn a_report_covers_every_attempt_and_a_job_cut_by_shutdown_has_one_report() {
    // Retries 300 ms apart, exactly: elapsed_ms covers both attempts and
    // the wait between them; duration_ms is the last attempt alone.
    let s = start(
        "",
        "  shutdown_timeout: 1s\n",
        "  - type: cli\n    count: 1\n    allow: [./fail.sh, sleep]\n    retry: { base: 300ms, max: 1s, jitter: none }\n",
    );
    let a = post(
        &agent(),
        &format!("{}/job/add", s.api),
        r#"{"type":"cli","params":{"command":"./fail.sh"},"retries":1}"#,
    );
    assert_eq!(a.status, 500, "{a:?}");
    let r = a.json();
    assert_eq!(r["attempts"], 2);
    let (elapsed, last) = (
        r["elapsed_ms"].as_u64().unwrap(),
        r["duration_ms"].as_u64().unwrap(),
    );
    assert!(elapsed >= 300 && elapsed >= last, "{r}");

    // A waiting caller whose job is cut by shutdown gets its one report.
    let api = s.api.clone();
    let waiter = std::thread::spawn(move || {
        post(
            &agent(),
            &format!("{api}/job/add"),
            r#"{"type":"cli","params":{"command":"sleep","params":["300"]}}"#,
        )
    });
    assert!(wait_until(PATIENCE, || s
        .g
        .log_text()
        .contains("attempt 1 on pool cli")
        && s.g.log_text().matches("attempt 1 on pool cli").count() >= 2));
    s.g.sigterm();
    let a = waiter.join().unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    let body = a.json();
    assert!(body.get("reports").is_none(), "{body}");
    assert_eq!(body["report"]["status"], "released", "{body}");
}
