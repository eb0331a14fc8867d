//! Helpers: run the real `goworker` binary in a temp dir, start a real
//! redis-server on a free loopback port, poll until a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous deadline for things that should take a moment (avoids hangs;
/// never a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn goworker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_goworker"))
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has exited (a zombie waiting for its reaper
/// counts as exited).
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("goworker-test-")
        .tempdir()
        .expect("temp dir")
}

/// Writes an executable script into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running `goworker` process, killed on drop.
pub struct Goworker {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Goworker {
    /// Writes `config` to `dir/config.yaml` and runs `goworker run` in `dir`.
    pub fn start(dir: &Path, config: &str) -> Goworker {
        Goworker::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Goworker {
        let vars = owned_env(env);
        Goworker::start_with_log_env(dir, config, move |_| vars)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&self) -> bool {
        // SAFETY: kill with signal 0 only checks the process exists.
        let alive = unsafe { libc::kill(self.pid(), 0) } == 0;
        !alive || self.log_text().contains("goworker: ")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Goworker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `goworker ARGS` to completion: (exit code, stdout, stderr).
pub fn goworker(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(goworker_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run goworker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real redis-server on a free loopback port, without persistence,
/// stopped on drop.
pub struct Redis {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = temp_dir();
        let port = free_port();
        Redis::start_on(port, dir)
    }

    /// Starts (or restarts) a server on `port`.
    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Redis {
        Redis::spawn(port, dir, &["--appendonly", "no"])
    }

    fn spawn(port: u16, dir: tempfile::TempDir, persistence: &[&str]) -> Redis {
        let port_text = port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port_text, "--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `make test`, which installs it");
        let r = Redis { child, port, dir };
        assert!(
            wait_until(PATIENCE, || r.ping()),
            "redis-server did not start on port {port}"
        );
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        self.cmd(&["PING"])
            .map(|r| r.contains("PONG"))
            .unwrap_or(false)
    }

    /// Runs one command with a tiny RESP client; returns the raw reply.
    pub fn cmd(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        s.write_all(req.as_bytes())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    }

    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, temp_dir())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Goworker {
    /// Like `start_with_env`, plus variables computed from the log file
    /// that goworker's stdout and stderr go to (e.g. `JOURNAL_STREAM`,
    /// which names the stream by device and inode).
    pub fn start_with_log_env(
        dir: &Path,
        config: &str,
        env: impl FnOnce(&std::fs::File) -> Vec<(String, String)>,
    ) -> Goworker {
        Goworker::start_program(&goworker_bin(), dir, config, env)
    }

    /// Like `start_with_log_env`, for another binary built on
    /// `goworker::app::main` (e.g. an example with its own plugins).
    pub fn start_program(
        exe: &Path,
        dir: &Path,
        config: &str,
        env: impl FnOnce(&std::fs::File) -> Vec<(String, String)>,
    ) -> Goworker {
        let g = Goworker::launch_program(exe, dir, config, env);
        assert!(
            wait_until(PATIENCE, || g.log_text().contains("goworker started")
                || g.exited()),
            "goworker did not start:\n{}",
            g.log_text()
        );
        g
    }

    /// Like `start_with_env`, without waiting for the process to be up
    /// (for a restart while its source may be down).
    pub fn launch(dir: &Path, config: &str, env: &[(&str, &str)]) -> Goworker {
        let vars = owned_env(env);
        Goworker::launch_program(&goworker_bin(), dir, config, move |_| vars)
    }

    fn launch_program(
        exe: &Path,
        dir: &Path,
        config: &str,
        env: impl FnOnce(&std::fs::File) -> Vec<(String, String)>,
    ) -> Goworker {
        let cfg = dir.join("config.yaml");
        // Written aside and renamed, so a process starting meanwhile in the
        // same directory never reads a half-written file.
        let tmp = dir.join(format!("config.yaml.{}.tmp", std::process::id()));
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &cfg).expect("rename config");
        // A new log per start, so a restarted process's log stands apart.
        let log = dir.join(format!(
            "goworker-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let vars = env(&out);
        let child = Command::new(exe)
            .args(["run", "-c"])
            .arg(&cfg)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn goworker");
        Goworker {
            child,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// Threads of the process whose name starts with `prefix` (pool
    /// threads are named `goworker-<pool>-<n>`), from /proc.
    pub fn threads_named(&self, prefix: &str) -> usize {
        threads_named(self.pid() as u32, prefix)
    }
}

/// Threads of process `pid` whose name starts with `prefix`, from /proc
/// (names are cut to 15 bytes by the kernel).
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

/// Thread ids of process `pid` whose name starts with `prefix`.
pub fn thread_ids(pid: u32, prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sends `sig` to one thread of process `pid` (tgkill(2)): its handler
/// runs on that thread, as the kernel may choose for a process signal.
pub fn signal_thread(pid: u32, tid: i32, sig: i32) {
    // SAFETY: tgkill takes plain integers; an exited thread is ESRCH.
    unsafe {
        libc::syscall(libc::SYS_tgkill, pid as libc::c_int, tid, sig);
    }
}

/// A RESP reply, read fully (arrays included).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The strings of an array reply (or of one bulk string).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items.iter().flat_map(|i| i.strings()).collect(),
            Resp::Bulk(Some(s)) | Resp::Simple(s) => vec![s.clone()],
            Resp::Int(n) => vec![n.to_string()],
            _ => Vec::new(),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("not an integer reply: {other:?}"),
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
    Ok(match kind {
        "+" => Resp::Simple(rest.into()),
        "-" => Resp::Error(rest.into()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                std::io::Read::read_exact(r, &mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}

impl Redis {
    /// Runs one command and reads its whole reply.
    pub fn query(&self, args: &[&str]) -> std::io::Result<Resp> {
        resp_query(self.port, args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (a clean SHUTDOWN: the append-only
    /// file is flushed and kept) and returns its directory for a restart.
    pub fn terminate(mut self) -> tempfile::TempDir {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, temp_dir())
    }
}

/// Runs one command on the redis-server at 127.0.0.1:`port` (a fresh
/// connection) and reads its whole reply.
pub fn resp_query(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req)?;
    read_resp(&mut BufReader::new(s))
}

impl Redis {
    /// `query`, panicking on an I/O error (the server is ours).
    pub fn q(&self, args: &[&str]) -> Resp {
        self.query(args).expect("redis query")
    }

    pub fn llen(&self, key: &str) -> i64 {
        self.q(&["LLEN", key]).int()
    }

    pub fn lrange(&self, key: &str) -> Vec<String> {
        self.q(&["LRANGE", key, "0", "-1"]).strings()
    }

    /// Keys matching `pattern` (tests only: fine on a tiny server).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.q(&["KEYS", pattern]).strings()
    }

    /// Starts a server on `port` that keeps its data across a kill
    /// (append-only file, fsync on every write) in `dir`.
    pub fn start_persistent_on(port: u16, dir: tempfile::TempDir) -> Redis {
        Redis::spawn(
            port,
            dir,
            &["--appendonly", "yes", "--appendfsync", "always"],
        )
    }
}

/// A request as [`HttpServer`] saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's address: the same one twice means a reused connection.
    pub peer: Option<std::net::SocketAddr>,
}

impl Seen {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or("")
    }

    /// The query string decoded (form encoding: `+` or `%20` is a space).
    pub fn query(&self) -> Vec<(String, String)> {
        let q = self.url.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }
}

/// What [`HttpServer`] answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.as_bytes().to_vec();
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A real HTTP server (tiny_http) on a free 127.0.0.1 port that records
/// every request and answers with `handler(request, index)`; each request
/// is answered on its own thread, so a slow answer blocks no other.
pub struct HttpServer {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> HttpServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind test server");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
                let s = Seen {
                    method: req.method().to_string(),
                    url: req.url().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                    peer: req.remote_addr().copied(),
                };
                let index = {
                    let mut all = seen2.lock().unwrap();
                    all.push(s.clone());
                    all.len() - 1
                };
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let reply = handler(&s, index);
                    std::thread::sleep(reply.delay);
                    let mut resp =
                        tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
                    for (k, v) in &reply.headers {
                        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                            resp.add_header(h);
                        }
                    }
                    let _ = req.respond(resp);
                });
            }
        });
        HttpServer {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lines of a file (none when missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An HTTP client that returns every status as a response (no error for
/// 4xx/5xx), with a deadline so a test never hangs.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE * 2))
        .build()
        .into()
}

/// A TCP proxy on a free loopback port in front of a redis-server, for
/// faults a real network has: a request that reaches the server whose
/// reply never comes back, and a client that cannot get through for a
/// while. Real sockets both ways; threads end with their connections.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// Cut the connection that next sends a request containing these bytes.
    cut_on: std::sync::Mutex<Option<Vec<u8>>>,
    cuts: std::sync::atomic::AtomicUsize,
    /// While set, connections are closed and new ones refused.
    blocked: std::sync::atomic::AtomicBool,
    /// Bumped by `block`: connections of an older generation close.
    generation: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if st.blocked.load(SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                Proxy::pump(st.clone(), client, server);
            }
        });
        Proxy { port, state }
    }

    fn pump(st: std::sync::Arc<ProxyState>, client: TcpStream, server: TcpStream) {
        use std::io::Read;
        use std::sync::atomic::Ordering::SeqCst;
        let generation = st.generation.load(SeqCst);
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let close = |a: &TcpStream, b: &TcpStream| {
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        };
        for (from, to, upstream) in [
            (client.try_clone(), server.try_clone(), true),
            (server.try_clone(), client.try_clone(), false),
        ] {
            let (Ok(mut from), Ok(mut to)) = (from, to) else {
                return;
            };
            let st = st.clone();
            let mute = mute.clone();
            std::thread::spawn(move || {
                let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    if st.stop.load(SeqCst) || st.generation.load(SeqCst) != generation {
                        close(&from, &to);
                        return;
                    }
                    let n = match from.read(&mut buf) {
                        Ok(0) => {
                            close(&from, &to);
                            return;
                        }
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue;
                        }
                        Err(_) => {
                            close(&from, &to);
                            return;
                        }
                    };
                    let chunk = &buf[..n];
                    let cut = upstream && {
                        let mut on = st.cut_on.lock().expect("lock");
                        let hit = on
                            .as_ref()
                            .is_some_and(|p| chunk.windows(p.len()).any(|w| w == &p[..]));
                        if hit {
                            *on = None;
                        }
                        hit
                    };
                    if cut {
                        // The request reaches the server; its reply does not
                        // come back, and the connection breaks.
                        mute.store(true, SeqCst);
                        let _ = to.write_all(chunk);
                        std::thread::sleep(Duration::from_millis(300));
                        st.cuts.fetch_add(1, SeqCst);
                        close(&from, &to);
                        return;
                    }
                    if !upstream && mute.load(SeqCst) {
                        continue;
                    }
                    if to.write_all(chunk).is_err() {
                        close(&from, &to);
                        return;
                    }
                }
            });
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The next request that contains `pattern` reaches the server, but its
    /// reply is dropped and its connection closed.
    pub fn cut_on(&self, pattern: &[u8]) {
        *self.state.cut_on.lock().expect("lock") = Some(pattern.to_vec());
    }

    /// Requests cut so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every connection and refuses new ones until `unblock`.
    pub fn block(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.state.blocked.store(true, SeqCst);
        self.state.generation.fetch_add(1, SeqCst);
    }

    pub fn unblock(&self) {
        self.state
            .blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
