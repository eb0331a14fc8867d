//! The `http` worker and the failure handlers, end to end: jobs go through
//! an in-process `Service` (memory provider, pools and handlers built from
//! YAML by the real registry) against real tiny_http servers on loopback.

use crate::util::*;
use goworker::{
    Config, FailureRecord, Job, MemoryHandle, MemoryProvider, Registry, Report, RunningService,
    Service, Settled,
};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

/// Manager settings for tests: no stats server, quick deterministic retries.
const MANAGER: &str = "manager:
  stats_listen: null
  shutdown_timeout: 5s
  retry: { base: 10ms, max: 50ms, jitter: none }
";

struct Running {
    service: Option<RunningService>,
    handle: MemoryHandle,
}

impl Running {
    fn start(rest: &str) -> Running {
        let yaml = format!("{MANAGER}{rest}");
        let config = Config::parse(&yaml, &Registry::with_builtins())
            .unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
        let (provider, handle) = MemoryProvider::new();
        let service = Service::builder(config)
            .provider("memory", provider)
            .build()
            .expect("build")
            .start()
            .expect("start");
        Running {
            service: Some(service),
            handle,
        }
    }

    fn submit(&self, params: serde_json::Value, retries: u32) -> String {
        let mut job = Job::new("http", params);
        job.retries = retries;
        job.capture_output = true;
        self.handle.submit(job).expect("submit")
    }

    fn settle(&self) -> Settled {
        self.handle
            .settled()
            .recv_timeout(PATIENCE)
            .expect("a job settled in time")
    }

    fn succeeded(&self) -> Report {
        match self.settle() {
            Settled::Succeeded(r) => r,
            other => panic!("expected success, got {other:?}"),
        }
    }

    fn failed(&self) -> (Report, FailureRecord) {
        match self.settle() {
            Settled::Failed(r, rec) => (r, *rec),
            other => panic!("expected failure, got {other:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown();
            s.wait();
        }
    }
}

fn pool(allow: &str) -> String {
    format!(
        "workers:
  - type: http
    count: 2
    allow_hosts: [{allow}]
    max_redirects: 3
"
    )
}

/// A port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    free_port()
}

#[test]
fn sends_method_headers_json_body_and_url_params_exactly() {
    let server = HttpServer::start(|_, _| Reply::status(200).body("accepted ✓"));
    let run = Running::start(&pool("127.0.0.1"));
    let body =
        json!({"name": "zoë", "list": [1, 2.5, "three"], "nested": {"ok": true}, "none": null});
    let params = BTreeMap::from([
        ("q".to_string(), "hello world".to_string()),
        ("u".to_string(), "naïve ☃ 日本".to_string()),
        ("amp".to_string(), "a&b=c?d#e".to_string()),
        ("plus".to_string(), "1+1 = 2%".to_string()),
    ]);
    let id = run.submit(
        json!({"method": "PUT", "url": server.url("/hook/path"),
               "headers": {"X-Trace": "abc 123", "Authorization": "Bearer t0k"},
               "body": body, "url_params": params}),
        0,
    );
    let report = run.succeeded();
    assert_eq!(report.id, id);
    assert_eq!(report.output.as_deref(), Some("accepted ✓"));

    // A string body goes as is, with the job's own content type.
    run.submit(
        json!({"method": "post", "url": server.url("/raw?keep=1"),
               "headers": {"Content-Type": "text/plain; charset=utf-8"},
               "body": "line one\n{not json}", "url_params": {"n": 7, "flag": true}}),
        0,
    );
    run.succeeded();

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let put = &seen[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path(), "/hook/path");
    let got: BTreeMap<String, String> = put.query().into_iter().collect();
    assert_eq!(got, params);
    assert_eq!(put.header("x-trace"), Some("abc 123"));
    assert_eq!(put.header("authorization"), Some("Bearer t0k"));
    assert_eq!(put.header("content-type"), Some("application/json"));
    let sent: serde_json::Value = serde_json::from_slice(&put.body).expect("JSON body");
    assert_eq!(sent, body);

    let post = &seen[1];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path(), "/raw");
    assert_eq!(
        post.query(),
        vec![
            ("keep".to_string(), "1".to_string()),
            ("flag".to_string(), "true".to_string()),
            ("n".to_string(), "7".to_string()),
        ]
    );
    assert_eq!(
        post.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(post.body, b"line one\n{not json}");
}

#[test]
fn a_worker_thread_reuses_its_connection() {
    let server = HttpServer::start(|_, _| Reply::status(200).body("ok"));
    let run = Running::start(
        "workers:\n  - type: http\n    count: 1\n    allow_hosts: [\"127.0.0.1\"]\n",
    );
    for _ in 0..3 {
        run.submit(json!({"url": server.url("/again")}), 0);
        run.succeeded();
    }
    let peers: HashSet<_> = server.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "one connection for 3 jobs: {peers:?}");
}

#[test]
fn a_500_is_retried_once_then_succeeds() {
    let server = HttpServer::start(|_, n| {
        if n == 0 {
            Reply::status(500).body("database busy")
        } else {
            Reply::status(200).body("done")
        }
    });
    let run = Running::start(&pool("127.0.0.1"));
    run.submit(json!({"url": server.url("/flaky")}), 3);
    let report = run.succeeded();
    assert_eq!(report.attempts, 2);
    assert_eq!(report.output.as_deref(), Some("done"));
    assert_eq!(server.count(), 2);
    assert!(run.handle.dead_letters().is_empty());
}

#[test]
fn a_404_is_final_without_retry() {
    let server = HttpServer::start(|_, _| Reply::status(404).body("no such thing"));
    let run = Running::start(&pool("127.0.0.1"));
    run.submit(json!({"url": server.url("/missing")}), 3);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1);
    assert_eq!(
        record.error, "HTTP 404 Not Found: no such thing",
        "{record:?}"
    );
    assert_eq!(record.output.as_deref(), Some("no such thing"));
    assert_eq!(server.count(), 1);
    assert_eq!(run.handle.dead_letters(), vec![record]);
}

#[test]
fn a_timeout_and_a_refused_connection_are_retried() {
    let server = HttpServer::start(|_, _| Reply::status(200).delay(Duration::from_secs(5)));
    let run = Running::start(&pool("127.0.0.1"));
    let mut job = Job::new("http", json!({"url": server.url("/slow")}));
    job.retries = 1;
    job.timeout = Some(Duration::from_millis(300));
    run.handle.submit(job).unwrap();
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 2, "{record:?}");
    assert_eq!(record.error, "timed out after 300ms");
    assert_eq!(server.count(), 2);

    let port = closed_port();
    run.submit(json!({"url": format!("http://127.0.0.1:{port}/")}), 2);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 3, "{record:?}");
    assert!(
        record.error.starts_with(&format!("127.0.0.1:{port}: ")),
        "{}",
        record.error
    );
}

#[test]
fn a_redirect_loop_stops_at_max_redirects() {
    let server = HttpServer::start(|_, _| Reply::status(302).header("Location", "/loop"));
    let run = Running::start(&pool("127.0.0.1"));
    run.submit(
        json!({"method": "POST", "url": server.url("/start"), "body": {"a": 1}}),
        2,
    );
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1, "final at once: {record:?}");
    assert!(
        record
            .error
            .starts_with("too many redirects: stopped after 3 (max_redirects 3)"),
        "{}",
        record.error
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "the first request and 3 redirects");
    assert_eq!(seen[0].path(), "/start");
    // 302 after a POST continues as a bodyless GET.
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.path() == "/loop" && s.method == "GET")
    );

    // A redirect that stays allowed is followed to its end.
    let target = HttpServer::start(|_, _| Reply::status(200).body("landed"));
    let to = target.url("/end");
    let hop = HttpServer::start(move |_, _| Reply::status(307).header("Location", &to));
    run.submit(json!({"url": hop.url("/go")}), 0);
    assert_eq!(run.succeeded().output.as_deref(), Some("landed"));
}

/// A listener that reports whether anyone connected to it.
struct Watched(TcpListener);

impl Watched {
    fn bind() -> Watched {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Watched(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn connected(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn a_host_not_on_allow_hosts_is_refused_without_connecting() {
    let watched = Watched::bind();
    let port = watched.port();
    let url = format!("http://127.0.0.1:{port}/secret");
    // Allowed: another port of the same host, and a host by name.
    let run = Running::start(
        "workers:
  - type: http
    allow_hosts: [\"127.0.0.1:1\", localhost]
  - type: http
    name: http-default
",
    );
    run.submit(json!({"url": url}), 3);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1);
    assert_eq!(
        record.error,
        format!("host not allowed: 127.0.0.1:{port} is not in allow_hosts")
    );

    // The default (empty) allow list calls nothing at all.
    let mut job = Job::new("http-default", json!({"url": url}));
    job.retries = 3;
    run.handle.submit(job).unwrap();
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1);
    assert!(
        record.error.starts_with("host not allowed"),
        "{}",
        record.error
    );

    // A redirect to a host that is not allowed is refused before connecting.
    let to = url.clone();
    let hop = HttpServer::start(move |_, _| Reply::status(302).header("Location", &to));
    let run2 = Running::start(&format!(
        "workers:\n  - type: http\n    allow_hosts: [\"127.0.0.1:{}\"]\n",
        hop.port
    ));
    run2.submit(json!({"url": hop.url("/bounce")}), 3);
    let (report, record) = run2.failed();
    assert_eq!(report.attempts, 1);
    assert!(
        record.error.starts_with("host not allowed"),
        "{}",
        record.error
    );
    assert_eq!(hop.count(), 1);

    assert!(!watched.connected(), "a refused host saw a connection");
}

#[test]
fn a_name_that_resolves_to_an_internal_address_is_refused() {
    let watched = Watched::bind();
    let port = watched.port();
    let run = Running::start(
        "workers:
  - type: http
    allow_hosts: [localhost]
  - type: http
    name: http-any
    allow_hosts: [\"*\"]
",
    );
    // `localhost` is on the list, but a name is not an address.
    run.submit(json!({"url": format!("http://localhost:{port}/")}), 3);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1, "final: {record:?}");
    assert!(
        record.error.starts_with(&format!(
            "address not allowed: localhost:{port} resolves to "
        )) && record.error.contains("(loopback)"),
        "{}",
        record.error
    );
    // `*` allows every host, and no internal address.
    for (url, why) in [
        (format!("http://localhost:{port}/"), "(loopback)"),
        (format!("http://127.0.0.1:{port}/"), "(loopback)"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "(loopback)"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "169.254.169.254:80 (link-local)",
        ),
    ] {
        let mut job = Job::new("http-any", json!({"url": url}));
        job.retries = 3;
        run.handle.submit(job).unwrap();
        let (report, record) = run.failed();
        assert_eq!(report.attempts, 1, "{url}: {record:?}");
        assert!(
            record.error.starts_with("address not allowed: ") && record.error.contains(why),
            "{url}: {}",
            record.error
        );
    }
    assert!(!watched.connected(), "a refused address saw a connection");
}

#[test]
fn an_ip_or_a_cidr_in_allow_hosts_names_a_local_address() {
    let server = HttpServer::start(|_, _| Reply::status(200).body("local"));
    let run = Running::start(&format!(
        "workers:
  - type: http
    allow_hosts: [\"127.0.0.0/8\"]
  - type: http
    name: http-named
    allow_hosts: [localhost, \"127.0.0.1:{}\"]
",
        server.port
    ));
    run.submit(json!({"url": server.url("/cidr")}), 0);
    assert_eq!(run.succeeded().output.as_deref(), Some("local"));
    // A name reaches an internal address once that address is named too.
    run.handle
        .submit(Job::new(
            "http-named",
            json!({"url": format!("http://localhost:{}/named", server.port)}),
        ))
        .unwrap();
    assert!(matches!(run.settle(), Settled::Succeeded(_)));
    let paths: Vec<_> = server.seen().iter().map(|s| s.path().to_string()).collect();
    assert_eq!(paths, ["/cidr", "/named"]);
}

#[test]
fn a_redirect_to_an_internal_address_is_refused() {
    let watched = Watched::bind();
    let to = format!("http://localhost:{}/admin", watched.port());
    let hop = HttpServer::start(move |_, _| Reply::status(302).header("Location", &to));
    let run = Running::start(&format!(
        "workers:\n  - type: http\n    allow_hosts: [\"*\", \"127.0.0.1:{}\"]\n",
        hop.port
    ));
    run.submit(json!({"url": hop.url("/go")}), 3);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1, "final: {record:?}");
    assert!(
        record.error.starts_with(&format!(
            "address not allowed: localhost:{} resolves to ",
            watched.port()
        )),
        "{}",
        record.error
    );
    assert_eq!(hop.count(), 1);
    assert!(!watched.connected(), "the redirect target saw a connection");
}

#[test]
fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let second = HttpServer::start(|_, _| Reply::status(200).body("second"));
    let to = second.url("/landing");
    // The first hop stays on the origin, the second leaves it (another port).
    let first = HttpServer::start(move |_, n| {
        if n == 0 {
            Reply::status(307).header("Location", "/again")
        } else {
            Reply::status(307).header("Location", &to)
        }
    });
    let run = Running::start(
        "workers:
  - type: http
    allow_hosts: [\"127.0.0.1\"]
    sensitive_headers: [X-Api-Key]
",
    );
    let secret = [
        "Authorization",
        "Cookie",
        "Proxy-Authorization",
        "X-Api-Key",
    ];
    let mut headers: BTreeMap<&str, &str> = secret.iter().map(|h| (*h, "s3cret")).collect();
    headers.insert("X-Trace", "t-1");
    run.submit(json!({"url": first.url("/start"), "headers": headers}), 0);
    assert_eq!(run.succeeded().output.as_deref(), Some("second"));
    let seen = first.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        for h in secret {
            assert_eq!(s.header(h), Some("s3cret"), "{} {h}", s.path());
        }
    }
    let landed = second.seen();
    assert_eq!(landed.len(), 1);
    assert_eq!(landed[0].header("x-trace"), Some("t-1"));
    for h in secret {
        assert_eq!(landed[0].header(h), None, "{h} crossed origins");
    }
}

/// The complete lines of a JSON-lines file (one being written may end in
/// a partial line, which is not counted yet).
fn raw_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(str::to_string)
        .collect()
}

fn read_lines(path: &Path) -> Vec<FailureRecord> {
    raw_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The record as handlers must write it, byte for byte (comparing text
/// avoids serde_json's last-digit float parsing differences).
fn text(record: &FailureRecord) -> String {
    serde_json::to_string(record).unwrap()
}

#[test]
fn each_failure_handler_receives_the_record() {
    let dir = temp_dir();
    let file = dir.path().join("failures/records.jsonl");
    let cli_out = dir.path().join("cli.json");
    let app = HttpServer::start(|_, _| Reply::status(404).body("gone"));
    // The webhook fails once: the handler's own retry delivers the record.
    let hook = HttpServer::start(|_, n| Reply::status(if n == 0 { 503 } else { 204 }));
    let run = Running::start(&format!(
        "{}failure_handlers:
  - type: file
    path: {file}
  - type: http
    url: {hook_url}
    headers: {{ Authorization: Bearer hook-secret }}
    retry_delay: 10ms
  - type: cli
    command: sh
    args: [-c, 'cat > \"$OUT\"']
    env: {{ OUT: {cli_out} }}
",
        pool("127.0.0.1"),
        file = file.display(),
        hook_url = hook.url("/hook"),
        cli_out = cli_out.display(),
    ));
    let id = run.submit(json!({"url": app.url("/x"), "headers": {"X-A": "1"}}), 0);
    let (_, record) = run.failed();
    assert_eq!(record.id.as_deref(), Some(id.as_str()));
    assert_eq!(record.error, "HTTP 404 Not Found: gone");
    assert_eq!(record.attempts, 1);
    assert_eq!(record.provider, "memory");
    assert_eq!(
        record.job.as_ref().unwrap()["params"]["headers"]["X-A"],
        "1"
    );

    assert!(wait_until(PATIENCE, || cli_out.exists()
        && read_lines(&file).len() == 1
        && hook.count() == 2));
    assert_eq!(raw_lines(&file), vec![text(&record)]);
    let posts = hook.seen();
    assert!(
        posts
            .iter()
            .all(|p| p.method == "POST" && p.path() == "/hook")
    );
    assert_eq!(posts[1].header("content-type"), Some("application/json"));
    assert_eq!(posts[1].header("authorization"), Some("Bearer hook-secret"));
    assert_eq!(String::from_utf8_lossy(&posts[1].body), text(&record));
    assert!(wait_until(PATIENCE, || {
        std::fs::read_to_string(&cli_out).is_ok_and(|t| t == text(&record))
    }));
}

#[test]
fn the_file_handler_keeps_one_line_per_failure_from_4_threads() {
    let dir = temp_dir();
    let file = dir.path().join("failures.jsonl");
    let watched = Watched::bind();
    let run = Running::start(&format!(
        "workers:
  - type: http
    count: 4
    allow_hosts: [\"127.0.0.1:1\"]
failure_handlers:
  - type: file
    path: {}
",
        file.display()
    ));
    let url = format!("http://127.0.0.1:{}/", watched.port());
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let handle = run.handle.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| {
                        handle
                            .submit(Job::new("http", json!({"url": url})))
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: HashSet<String> = submitters
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000);
    for _ in 0..1000 {
        assert!(matches!(run.settle(), Settled::Failed(..)));
    }
    assert!(
        wait_until(Duration::from_secs(120), || read_lines(&file).len() >= 1000),
        "{} lines",
        read_lines(&file).len()
    );
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 1000);
    let written: HashSet<String> = lines.into_iter().filter_map(|r| r.id).collect();
    assert_eq!(written, ids);
    assert!(!watched.connected());
}

#[test]
fn a_failing_handler_does_not_lose_the_dead_letter() {
    let dir = temp_dir();
    let good = dir.path().join("good.jsonl");
    let app = HttpServer::start(|_, _| Reply::status(400).body("bad request"));
    let run = Running::start(&format!(
        "{}failure_handlers:
  - type: file
    path: {dir}
  - type: http
    url: http://127.0.0.1:{port}/hook
    retries: 1
    retry_delay: 10ms
  - type: cli
    command: sh
    args: [-c, 'exit 3']
  - type: file
    name: good
    path: {good}
",
        pool("127.0.0.1"),
        dir = dir.path().display(),
        port = closed_port(),
        good = good.display(),
    ));
    let id = run.submit(json!({"url": app.url("/")}), 2);
    let (report, record) = run.failed();
    assert_eq!(report.attempts, 1);
    assert_eq!(record.id.as_deref(), Some(id.as_str()));
    assert_eq!(run.handle.dead_letters(), vec![record.clone()]);
    // Every handler ran: the last one still got the record.
    assert!(wait_until(PATIENCE, || read_lines(&good).len() == 1));
    assert_eq!(raw_lines(&good), vec![text(&record)]);
    // And the service carries on.
    let ok = HttpServer::start(|_, _| Reply::status(200));
    run.submit(json!({"url": ok.url("/")}), 0);
    run.succeeded();
}

#[test]
fn the_binary_knows_the_http_worker_and_handlers_and_checks_their_options() {
    let dir = temp_dir();
    let (code, out, err) = goworker(&["options"], dir.path());
    assert_eq!(code, 0, "{err}");
    for word in [
        "allow_hosts",
        "retry_on",
        "max_redirects",
        "connect_timeout",
        "sensitive_headers",
        "failure_queue",
        "max_size",
        "retry_delay",
    ] {
        assert!(
            out.contains(word),
            "`goworker options` lacks {word}:\n{out}"
        );
    }
    for (yaml, want) in [
        (
            "workers:\n  - type: http\n    allow_hosts: [\"host:port\"]\n",
            "allow_hosts[0]",
        ),
        (
            "workers:\n  - type: http\n    retry_on: [\"6xx\"]\n",
            "retry_on[0]",
        ),
        (
            "workers:\n  - type: http\n    connect_timeout: soon\n",
            "connect_timeout",
        ),
        (
            "workers:\n  - type: http\n    sensitive_headers: [\"bad name\"]\n",
            "sensitive_headers[0]",
        ),
        (
            "workers:\n  - type: http\n    allow_hosts: [\"10.0.0.0/40\"]\n",
            "allow_hosts[0]",
        ),
        ("manager:\n  failure_queue: 0\n", "failure_queue"),
        ("failure_handlers:\n  - type: http\n", "url: required"),
        ("failure_handlers:\n  - type: cli\n", "command: required"),
    ] {
        std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
        let (code, _, err) = goworker(&["check", "-c", "bad.yaml"], dir.path());
        assert_eq!(code, 2, "{yaml}");
        assert!(err.contains(want), "{yaml}: {err}");
    }
    // A good config starts the real binary.
    let mut g = Goworker::start(
        dir.path(),
        &format!(
            "{MANAGER}workers:\n  - type: http\n    allow_hosts: [\"127.0.0.1\"]\nfailure_handlers:\n  - type: http\n    url: http://127.0.0.1:{}/\n",
            closed_port()
        ),
    );
    g.sigterm();
    assert_eq!(
        g.wait_exit(PATIENCE).and_then(|s| s.code()),
        Some(0),
        "{}",
        g.log_text()
    );
}

/// A goworker process taking jobs over its `http` provider, with an `http`
/// pool that calls nothing (every job fails at once, for good) and the
/// given failure handlers.
struct Proc {
    g: Goworker,
    api: String,
}

impl Proc {
    fn start(dir: &Path, manager: &str, handlers: &str, env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let provider_extra = if env.iter().any(|(k, _)| *k == "GW_TEST_TOKEN") {
            "    token_env: GW_TEST_TOKEN\n"
        } else {
            ""
        };
        let config = format!(
            "manager:\n  stats_listen: \"\"\n{manager}\
             providers:\n  - type: http\n    listen: 127.0.0.1:{port}\n{provider_extra}\
             workers:\n  - type: http\n    allow_hosts: []\n\
             failure_handlers:\n{handlers}"
        );
        let g = Goworker::start_with_env(dir, &config, env);
        let api = format!("http://127.0.0.1:{port}");
        assert!(
            wait_until(PATIENCE, || std::net::TcpStream::connect(
                api.trim_start_matches("http://")
            )
            .is_ok()),
            "{}",
            g.log_text()
        );
        Proc { g, api }
    }

    fn submit(&self, ids: &[String], token: Option<&str>) {
        submit_doomed(&self.api, ids, token);
    }
}

/// Submits doomed jobs with these ids to a [`Proc`], without waiting.
fn submit_doomed(api: &str, ids: &[String], token: Option<&str>) {
    let jobs: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "type": "http", "params": {"url": "http://127.0.0.1:1/"}}))
        .collect();
    let mut req = agent().post(format!("{api}/jobs?wait=false"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req
        .send(serde_json::to_vec(&jobs).unwrap().as_slice())
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 202);
}

#[test]
fn a_full_failure_queue_skips_the_handlers_keeps_the_dead_letters_and_counts() {
    use goworker::FailureHandler;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    /// Blocks in every record until released.
    struct Gate {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
        handled: Arc<Mutex<Vec<String>>>,
    }
    impl FailureHandler for Gate {
        fn handle(&mut self, record: &FailureRecord) -> Result<(), String> {
            let _ = self.entered.send(());
            let _ = self.release.lock().unwrap().recv();
            self.handled
                .lock()
                .unwrap()
                .push(record.id.clone().unwrap_or_default());
            Ok(())
        }
    }

    let stats_port = free_port();
    let yaml = format!(
        "manager:\n  stats_listen: 127.0.0.1:{stats_port}\n  failure_queue: 2\n\
         workers:\n  - type: http\n    allow_hosts: []\n"
    );
    let config = Config::parse(&yaml, &Registry::with_builtins()).unwrap();
    let (provider, handle) = MemoryProvider::new();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let service = Service::builder(config)
        .provider("memory", provider)
        .failure_handler(
            "gate",
            Gate {
                entered: entered_tx,
                release: Arc::new(Mutex::new(release_rx)),
                handled: handled.clone(),
            },
        )
        .build()
        .unwrap()
        .start()
        .unwrap();
    let submit = || {
        handle
            .submit(Job::new("http", json!({"url": "http://127.0.0.1:1/"})))
            .unwrap()
    };
    let settle = || match handle.settled().recv_timeout(PATIENCE) {
        Ok(Settled::Failed(..)) => {}
        other => panic!("expected a failure, got {other:?}"),
    };
    submit();
    settle();
    entered
        .recv_timeout(PATIENCE)
        .expect("the handler has the first record");
    // The handler holds one record, the queue takes two: 7 of 9 skip it.
    let ids: Vec<String> = (0..9).map(|_| submit()).collect();
    for _ in &ids {
        settle();
    }
    assert_eq!(handle.dead_letters().len(), 10, "every dead letter is kept");

    let stats = format!("http://127.0.0.1:{stats_port}");
    let skipped = || {
        agent()
            .get(format!("{stats}/stats"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["failure_handlers_skipped"].as_u64())
    };
    assert!(
        wait_until(PATIENCE, || skipped() == Some(7)),
        "{:?}",
        skipped()
    );
    let metrics = agent()
        .get(format!("{stats}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "goworker_failure_handler_skipped_total 7"),
        "{metrics}"
    );

    drop(release);
    assert!(wait_until(PATIENCE, || handled.lock().unwrap().len() == 3));
    service.shutdown();
    service.wait();
    assert_eq!(handled.lock().unwrap().len(), 3);
}

#[test]
fn a_slow_handler_gets_only_what_is_left_of_the_shutdown_deadline() {
    let dir = temp_dir();
    let pid_file = dir.path().join("handler.pid");
    script(
        dir.path(),
        "slow-handler.sh",
        &format!("echo $$ > '{}'\nexec sleep 300", pid_file.display()),
    );
    let p = Proc::start(
        dir.path(),
        "  shutdown_timeout: 2s\n",
        "  - type: cli\n    command: ./slow-handler.sh\n    timeout: 10m\n",
        &[],
    );
    p.submit(&["first".into(), "second".into()], None);
    assert!(
        wait_until(PATIENCE, || std::fs::read_to_string(&pid_file)
            .is_ok_and(|t| t.ends_with('\n'))),
        "{}",
        p.g.log_text()
    );
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut g = p.g;
    g.sigterm();
    // Before: the handler's own 10 minutes, then the queued record's.
    let status = g.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", g.log_text());
    let log = g.log_text();
    assert!(log.contains("stopped at the shutdown deadline"), "{log}");
    assert!(
        log.contains("1 failure record(s) skipped the handlers"),
        "{log}"
    );
    // The handler's command went with it.
    // SAFETY: signal 0 only checks whether the process exists.
    assert!(wait_until(PATIENCE, || unsafe { libc::kill(child, 0) } != 0));
}

#[test]
fn two_processes_sharing_a_failure_file_lose_no_record_at_rotation() {
    let dir = temp_dir();
    let file = dir.path().join("shared/failures.jsonl");
    let handler = format!(
        "  - type: file\n    path: {}\n    max_size: 3000\n    keep: 1000\n",
        file.display()
    );
    let a = Proc::start(dir.path(), "", &handler, &[]);
    let b = Proc::start(dir.path(), "", &handler, &[]);
    let mut want = HashSet::new();
    let submitters: Vec<_> = [("a", &a), ("b", &b)]
        .into_iter()
        .map(|(name, p)| {
            let ids: Vec<String> = (0..300).map(|i| format!("{name}-{i}")).collect();
            want.extend(ids.iter().cloned());
            let api = p.api.clone();
            std::thread::spawn(move || {
                for chunk in ids.chunks(30) {
                    submit_doomed(&api, chunk, None);
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    let all = || {
        let mut files = vec![file.clone()];
        files.extend((1..=1000).map(|n| dir.path().join(format!("shared/failures.jsonl.{n}"))));
        files
            .iter()
            .filter(|p| p.exists())
            .flat_map(|p| read_lines(p))
            .filter_map(|r| r.id)
            .collect::<Vec<_>>()
    };
    let done = wait_until(Duration::from_secs(120), || all().len() >= 600);
    let got = all();
    assert!(done, "{} of 600 records written", got.len());
    assert_eq!(got.len(), 600);
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
    assert!(file.with_extension("jsonl.2").exists(), "it rotated");
}

#[test]
fn the_cli_handler_does_not_pass_on_secret_env() {
    let dir = temp_dir();
    let out = dir.path().join("env.txt");
    let p = Proc::start(
        dir.path(),
        "",
        &format!(
            "  - type: cli\n    command: sh\n    args: [-c, 'env > \"$OUT\"']\n    env: {{ OUT: {} }}\n",
            out.display()
        ),
        &[("GW_TEST_TOKEN", "hunter2-secret"), ("GW_VISIBLE", "shown")],
    );
    p.submit(&["one".into()], Some("hunter2-secret"));
    assert!(
        wait_until(PATIENCE, || std::fs::read_to_string(&out)
            .is_ok_and(|t| t.contains("GW_VISIBLE"))),
        "{}",
        p.g.log_text()
    );
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(env.contains("GW_VISIBLE=shown"), "{env}");
    assert!(!env.contains("hunter2"), "{env}");
    assert!(!env.contains("GW_TEST_TOKEN"), "{env}");
}
