//! `http` jobs against a local server that answers at once, through the
//! whole service (memory provider → manager → http pool → ureq), against a
//! baseline in the same run: the same number of requests made by plain
//! ureq loops, one agent per thread, on the same number of threads.
//!
//! N = 400 requests per iteration; T = 2 and 8 threads.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use goworker::{
    Config, Job, MemoryHandle, MemoryProvider, Registry, RunningService, Service, Settled,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const N: usize = 400;

/// A minimal keep-alive HTTP/1.1 responder on 127.0.0.1: one thread per
/// connection, every request answered `200 ok` at once. (tiny_http's
/// connection pool stalled here with 8 keep-alive clients, and the bench
/// should measure the client side, not a server.)
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve(conn));
                }
            }
        });
        Server { port, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bench", self.port)
    }
}

/// Answers each request (bodyless GETs) on one connection until it closes.
fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 8192];
    let mut pending = Vec::new();
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let reply =
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake accept
    }
}

fn service(threads: usize) -> (RunningService, MemoryHandle) {
    let yaml = format!(
        "manager: {{ stats_listen: null }}\nworkers:\n  - type: http\n    count: {threads}\n    allow_hosts: [\"127.0.0.1\"]\n  - type: noop\n    count: {threads}\n"
    );
    let config = Config::parse(&yaml, &Registry::with_builtins()).expect("config");
    let (provider, handle) = MemoryProvider::new();
    let running = Service::builder(config)
        .provider("memory", provider)
        .build()
        .expect("build")
        .start()
        .expect("start");
    (running, handle)
}

fn run_jobs(handle: &MemoryHandle, kind: &str, url: &str) {
    for _ in 0..N {
        handle
            .submit(Job::new(kind, serde_json::json!({"url": url})))
            .expect("submit");
    }
    for _ in 0..N {
        match handle.settled().recv_timeout(Duration::from_secs(60)) {
            Ok(Settled::Succeeded(_)) => {}
            other => panic!("job did not succeed: {other:?}"),
        }
    }
}

fn plain_ureq(agents: &[ureq::Agent], url: &str) {
    let per = N / agents.len();
    std::thread::scope(|s| {
        for agent in agents {
            s.spawn(move || {
                for _ in 0..per {
                    let mut r = agent.get(url).call().expect("request");
                    assert!(r.status().is_success());
                    let _ = r.body_mut().read_to_vec();
                }
            });
        }
    });
}

fn bench(c: &mut Criterion) {
    let server = Server::start();
    let url = server.url();
    let mut g = c.benchmark_group("http_worker");
    g.throughput(Throughput::Elements(N as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for threads in [2usize, 8] {
        let agents: Vec<ureq::Agent> = (0..threads)
            .map(|_| ureq::Agent::new_with_defaults())
            .collect();
        g.bench_with_input(BenchmarkId::new("plain_ureq", threads), &threads, |b, _| {
            b.iter(|| plain_ureq(&agents, &url))
        });
        let (running, handle) = service(threads);
        g.bench_with_input(BenchmarkId::new("goworker", threads), &threads, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    run_jobs(&handle, "http", &url);
                }
                start.elapsed()
            })
        });
        // The pipeline alone: the same jobs on `noop` workers, no HTTP.
        g.bench_with_input(
            BenchmarkId::new("goworker_noop", threads),
            &threads,
            |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run_jobs(&handle, "noop", &url);
                    }
                    start.elapsed()
                })
            },
        );
        running.shutdown();
        running.wait();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
