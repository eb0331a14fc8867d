//! Async submits (`?wait=false`, `noop` jobs, keep-alive) to the `http`
//! provider against a baseline: a bare tiny_http server with the same
//! number of handler threads answering `202` without a job. (goworker no
//! longer runs on tiny_http; the bare server stays the reference point so
//! figures compare with earlier runs: a plain HTTP server doing no work.) Both run in
//! this process, alternately, with the same load generator (C keep-alive
//! ureq clients posting for D seconds); requests/s, median of R rounds.
//!
//! `cargo bench --bench http` (env: HTTP_BENCH_CLIENTS, HTTP_BENCH_SECS,
//! HTTP_BENCH_ROUNDS, HTTP_BENCH_THREADS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The baseline: tiny_http, `threads` handlers, 202 without a job.
struct Bare {
    addr: String,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start(threads: usize) -> Bare {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let addr = server.server_addr().to_ip().expect("ip").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (server, stop) = (server.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Ok(Some(mut rq)) = server.recv_timeout(Duration::from_millis(100)) {
                            let mut body = Vec::new();
                            let _ = std::io::Read::read_to_end(rq.as_reader(), &mut body);
                            let header = tiny_http::Header::from_bytes(
                                &b"Content-Type"[..],
                                &b"application/json"[..],
                            )
                            .expect("header");
                            let _ = rq.respond(
                                tiny_http::Response::from_data(
                                    &br#"{"id":"01JBASELINE0000000000000000","status":"accepted"}"#
                                        [..],
                                )
                                .with_status_code(202)
                                .with_header(header),
                            );
                        }
                    }
                })
            })
            .collect();
        Bare {
            addr,
            stop,
            threads,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn goworker_service(threads: usize) -> (goworker::RunningService, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let yaml = format!(
        "manager:\n  stats_listen: \"\"\nproviders:\n  - type: http\n    name: api\n    listen: 127.0.0.1:{port}\n    threads: {threads}\nworkers:\n  - type: noop\n    count: 2\n"
    );
    let config =
        goworker::Config::parse(&yaml, &goworker::Registry::with_builtins()).expect("config");
    let service = goworker::Service::builder(config)
        .build()
        .expect("build")
        .start()
        .expect("start");
    (service, format!("127.0.0.1:{port}"))
}

/// Requests/s of 202 answers over `secs` from `clients` keep-alive
/// clients, the number of 202 answers, and of other outcomes: 503
/// (pipeline full) and anything else (other statuses, transport errors).
fn load(addr: &str, clients: usize, secs: u64) -> (f64, u64, Other) {
    let url = format!("http://{addr}/job/add?wait=false");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let (mut ok, mut other) = (0u64, Other::default());
                while !stop.load(Ordering::Relaxed) {
                    match agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(r#"{"type":"noop","name":"bench"}"#)
                    {
                        Ok(mut r) => {
                            let _ = r.body_mut().read_to_vec();
                            match r.status().as_u16() {
                                202 => ok += 1,
                                503 => other.full += 1,
                                _ => other.failed += 1,
                            }
                        }
                        Err(_) => other.failed += 1,
                    }
                }
                (ok, other)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut other) = (0, Other::default());
    for w in workers {
        let (o, x) = w.join().expect("client");
        ok += o;
        other.full += x.full;
        other.failed += x.failed;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), ok, other)
}

/// Answers other than 202.
#[derive(Debug, Default, Clone, Copy)]
struct Other {
    /// 503: the pipeline was full (Retry-After).
    full: u64,
    /// Any other status, or no answer.
    failed: u64,
}

impl std::fmt::Display for Other {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} full, {} failed", self.full, self.failed)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // we care about: run a short smoke round then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let clients = env("HTTP_BENCH_CLIENTS", 16);
    let secs = env("HTTP_BENCH_SECS", if quick { 1 } else { 5 }) as u64;
    let rounds = env("HTTP_BENCH_ROUNDS", if quick { 1 } else { 5 });
    let threads = env("HTTP_BENCH_THREADS", 16);
    println!(
        "http bench: {clients} keep-alive clients, {threads} handler threads, {secs}s x {rounds} rounds"
    );
    let (mut base, mut gw) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let bare = Bare::start(threads);
        let (b, _, b_other) = load(&bare.addr, clients, secs);
        bare.stop();
        let (service, addr) = goworker_service(threads);
        let (g, accepted, g_other) = load(&addr, clients, secs);
        // Every accepted job runs: wait (outside the timed part) until the
        // snapshot counts them all.
        let deadline = Instant::now() + Duration::from_secs(60);
        while service.snapshot().totals.succeeded < accepted && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let done = service.snapshot().totals.succeeded;
        service.shutdown();
        service.wait();
        println!(
            "round {round}: baseline {b:.0} req/s ({b_other}), goworker {g:.0} req/s ({g_other}, {accepted} accepted, {done} run), ratio {:.2}",
            g / b
        );
        base.push(b);
        gw.push(g);
    }
    let (b, g) = (median(base), median(gw));
    println!(
        "median: baseline {b:.0} req/s, goworker {g:.0} req/s, ratio {:.2}",
        g / b
    );
}
