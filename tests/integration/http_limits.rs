//! Hostile and careless HTTP clients against both listeners of a real
//! `goworker` process, over real sockets: stalled clients, oversize heads
//! and bodies, more connections than the cap, running out of file
//! descriptors, shutdown with clients hanging on.

use crate::http::{CLI_AND_NOOP, Service, answer, raw, start_env};
use crate::util::{PATIENCE, agent, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";

fn with_token(provider_extra: &str, manager_extra: &str) -> Service {
    start_env(
        &format!("    token_env: API_TOKEN\n{provider_extra}"),
        manager_extra,
        CLI_AND_NOOP,
        &[("API_TOKEN", TOKEN)],
    )
}

fn host(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Connects and sends `bytes`, then holds the connection.
fn stall(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.write_all(bytes).expect("send");
    c
}

/// Whether the server closes the connection (EOF or reset) before
/// `PATIENCE`; whatever it sends first is skipped.
fn closed_by_server(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// An authorised waiting submit with a short hang guard: answered, or
/// `None` when the guard ran out.
fn quick_submit(api: &str, guard: Duration) -> Option<u16> {
    guarded(guard)
        .post(&format!("{api}/job/add"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send(r#"{"type":"noop"}"#)
        .ok()
        .map(|r| r.status().as_u16())
}

fn quick_get(url: &str, guard: Duration) -> Option<u16> {
    guarded(guard)
        .get(url)
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

/// A client that gives up after `guard` (a hang guard).
fn guarded(guard: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(guard))
        .build()
        .into()
}

/// Reads one response from a kept-alive connection: status and body.
/// `buf` keeps what was read beyond it (pipelined answers).
fn read_from(c: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let status = r.code.expect("status");
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < n + len {
                let k = c.read(&mut chunk).expect("body");
                assert!(k > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..k]);
            }
            let body = String::from_utf8_lossy(&buf[n..n + len]).into_owned();
            buf.drain(..n + len);
            return (status, body);
        }
        let k = c.read(&mut chunk).expect("head");
        assert!(k > 0, "connection closed before an answer");
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Reads one response; nothing may follow it.
fn read_response(c: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let r = read_from(c, &mut buf);
    assert!(buf.is_empty(), "unexpected bytes after the answer");
    r
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Peak resident memory of `pid` in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn stalled_clients_hold_up_nobody_and_shutdown_still_finishes_in_time() {
    let mut s = with_token("", "  shutdown_timeout: 1s\n");
    let (api, stats) = (host(&s.api), host(&s.stats));
    let mut stalled = Vec::new();
    // Headers promising a body that never comes (no token needed).
    for _ in 0..16 {
        stalled.push(stall(
            &api,
            b"POST /job/add HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n",
        ));
    }
    // Heads that never end.
    for _ in 0..16 {
        stalled.push(stall(&api, b"POST /job/add HTTP/1.1\r\nHost: x\r\n"));
    }
    for _ in 0..2 {
        stalled.push(stall(
            &stats,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        ));
        stalled.push(stall(&stats, b"GET /healthz HTTP/1.1\r\n"));
    }
    // Generous hang guards, not timing assertions.
    let guard = Duration::from_secs(2);
    assert_eq!(quick_submit(&s.api, guard), Some(200), "{}", s.log());
    assert_eq!(quick_get(&format!("{}/healthz", s.stats), guard), Some(200));

    s.g.sigterm();
    let status = s.g.wait_exit(Duration::from_secs(1 + 5));
    assert!(
        status.is_some_and(|st| st.success()),
        "goworker did not stop in time ({status:?}):\n{}",
        s.log()
    );
    drop(stalled);
}

#[test]
fn a_stalled_client_is_dropped_at_its_deadline_and_its_thread_ends() {
    let s = with_token("    read_timeout: 1s\n    idle_timeout: 1s\n", "");
    let api = host(&s.api);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let mut idle = TcpStream::connect(&api).unwrap();
    let mut half_head = stall(&api, b"POST /job/add HTTP/1.1\r\nHost: x\r\n");
    let mut no_body = stall(
        &api,
        format!("POST /job/add HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{{")
            .as_bytes(),
    );
    // A kept-alive connection that goes quiet after one request.
    let mut kept = TcpStream::connect(&api).unwrap();
    let body = r#"{"type":"noop"}"#;
    write!(
        kept,
        "POST /job/add HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(read_response(&mut kept).0, 200);
    // A client that keeps sending its head, one byte at a time: the head
    // deadline counts from its first byte, so it is dropped all the same.
    let trickle = {
        let api = api.clone();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&api).unwrap();
            let head = b"POST /job/add HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in head.iter() {
                if c.write_all(&[*b]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    for (what, c) in [
        ("idle", &mut idle),
        ("half a head", &mut half_head),
        ("no body", &mut no_body),
        ("kept alive, then quiet", &mut kept),
    ] {
        assert!(closed_by_server(c), "{what}: still open");
    }
    assert!(
        trickle.join().unwrap(),
        "the trickling client was never cut off"
    );
    assert!(
        wait_until(PATIENCE, || s.g.threads_named("goworker-conn") == 0),
        "connection threads left: {}",
        s.g.threads_named("goworker-conn")
    );
    assert_eq!(quick_submit(&s.api, PATIENCE), Some(200));
}

#[test]
fn oversize_heads_and_bodies_are_refused_without_buffering_or_leaking() {
    let s = with_token("    max_body: 4096\n", "");
    let api = host(&s.api);
    let pid = s.g.pid();

    // A head over 16 KiB: 431 with a JSON error.
    let big = format!(
        "GET /job/add HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let text = raw(&api, big.as_bytes());
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.contains(r#"{"error":"#), "{text}");
    // So are too many header fields.
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let text = raw(
        &api,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // One 64 MiB header line is not buffered: peak memory barely moves.
    let before = peak_rss_kib(pid);
    {
        let mut c = TcpStream::connect(&api).unwrap();
        c.set_write_timeout(Some(PATIENCE)).unwrap();
        let _ = c.write_all(b"POST /job/add HTTP/1.1\r\nX-Huge: ");
        let line = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            if c.write_all(&line).is_err() {
                break;
            }
        }
    }
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 << 10, "peak memory grew by {grown} KiB");

    // Bodies declared over max_body (and over any memory) are refused
    // unread, and every connection and thread is given back.
    let fds = open_fds(pid);
    for n in ["5000", "99999999999", "99999999999999999999999999"] {
        for _ in 0..20 {
            let text = raw(
                &api,
                format!(
                    "POST /job/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {n}\r\n\r\n{{"
                )
                .as_bytes(),
            );
            assert!(text.starts_with("HTTP/1.1 413"), "{n}: {text}");
            assert!(text.contains("over the limit of 4096 bytes"), "{text}");
        }
    }
    assert!(
        wait_until(PATIENCE, || open_fds(pid) <= fds
            && s.g.threads_named("goworker-conn") == 0),
        "fds {} (before {fds}), connection threads {}",
        open_fds(pid),
        s.g.threads_named("goworker-conn")
    );
    assert_eq!(quick_submit(&s.api, PATIENCE), Some(200));
}

#[test]
fn connections_over_the_cap_get_503_at_once_and_are_closed() {
    let s = with_token("    max_connections: 4\n", "");
    let api = host(&s.api);
    let held: Vec<_> = (0..4)
        .map(|_| stall(&api, b"POST /job/add HTTP/1.1\r\n"))
        .collect();
    assert!(wait_until(PATIENCE, || s
        .g
        .threads_named("goworker-conn-h")
        == 4));
    let mut extra = TcpStream::connect(&api).unwrap();
    extra.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut text = String::new();
    let _ = extra.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    // The stats server has a cap of its own: it still answers.
    assert_eq!(
        quick_get(&format!("{}/healthz", s.stats), PATIENCE),
        Some(200)
    );
    drop(held);
    assert!(wait_until(PATIENCE, || s
        .g
        .threads_named("goworker-conn-h")
        == 0));
    assert_eq!(quick_submit(&s.api, PATIENCE), Some(200));
}

#[test]
fn running_out_of_file_descriptors_does_not_kill_the_listener() {
    let s = with_token("", "");
    let api = host(&s.api);
    let pid = s.g.pid().to_string();
    // Room for what is open now and a few connections more.
    let limit = open_fds(s.g.pid()) + 8;
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={limit}:{limit}")])
        .status()
        .expect("run prlimit");
    assert!(st.success());
    let held: Vec<_> = (0..40)
        .map(|_| TcpStream::connect(&api).expect("connect (the backlog takes it)"))
        .collect();
    assert!(
        wait_until(PATIENCE, || s.log().contains("Too many open files")),
        "{}",
        s.log()
    );
    drop(held);
    // Once descriptors are free again the same listener answers.
    assert!(
        wait_until(PATIENCE, || quick_submit(&s.api, PATIENCE) == Some(200)),
        "{}",
        s.log()
    );
    assert!(s.log().contains("accepting again"), "{}", s.log());
    assert_eq!(
        quick_get(&format!("{}/healthz", s.stats), PATIENCE),
        Some(200)
    );
}

#[test]
fn chunked_bodies_continue_and_pipelined_requests_are_served() {
    let s = with_token("", "");
    let api = host(&s.api);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let mut c = TcpStream::connect(&api).unwrap();
    // Chunked, with a trailer.
    write!(
        c,
        "POST /job/add?wait=false HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
         6\r\n{{\"type\r\n9\r\n\":\"noop\"}}\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(&mut c);
    assert_eq!(status, 202, "{body}");
    // Expect: 100-continue, on the same connection.
    let body = r#"{"type":"noop"}"#;
    write!(
        c,
        "POST /job/add HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    assert_eq!(read_response(&mut c).0, 100);
    c.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).0, 200);
    // Two requests in one write: two answers, in order.
    let one = format!(
        "POST /job/add HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let two = format!("GET /job/add HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    c.write_all(format!("{one}{two}").as_bytes()).unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_from(&mut c, &mut buf).0, 200);
    assert_eq!(read_from(&mut c, &mut buf).0, 405);
    assert!(buf.is_empty());
    // A refused request's small body is discarded and the connection kept.
    let wrong = format!(
        "POST /job/add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer no\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(wrong.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).0, 401);
    c.write_all(one.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).0, 200);

    // Deeply nested JSON is fine on a connection thread's small stack:
    // within serde_json's depth limit it runs, beyond it is refused.
    let nested = |depth: usize| {
        format!(
            r#"{{"type":"noop","params":{{"deep":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let authed = |b: &str| {
        answer(
            agent()
                .post(&format!("{}/job/add", s.api))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .send(b),
        )
    };
    assert_eq!(authed(&nested(100)).status, 200);
    assert_eq!(authed(&nested(100_000)).status, 400);
    assert_eq!(quick_submit(&s.api, PATIENCE), Some(200));
}

/// The descriptor number of the socket listening on `port` in process
/// `pid`, from /proc.
fn listening_fd(pid: i32, port: u16) -> Option<i32> {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
            .then(|| f.get(9).map(|s| s.to_string()))
            .flatten()
    })?;
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

#[test]
fn a_listener_that_dies_takes_the_provider_down_and_the_service_exits_non_zero() {
    let mut s = with_token("", "");
    let port: u16 = s.api.rsplit(':').next().unwrap().parse().unwrap();
    let pid = s.g.pid();
    let fd = listening_fd(pid, port).expect("the listening socket");
    // Shut the listening socket down from outside (a copy of goworker's
    // descriptor): accept then fails with EINVAL, which is not a lack of
    // resources to wait out.
    // SAFETY: plain system calls on descriptors this test owns.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(pidfd >= 0, "pidfd_open");
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        assert!(copy >= 0, "pidfd_getfd");
        assert_eq!(libc::shutdown(copy, libc::SHUT_RD), 0);
        libc::close(copy);
        libc::close(pidfd);
    }
    // Poke the listener so it notices.
    let _ = TcpStream::connect(s.api.trim_start_matches("http://"));
    assert!(
        wait_until(PATIENCE, || s.log().contains("died")),
        "{}",
        s.log()
    );
    // From then on health is down, naming the provider (while the process
    // still answers at all).
    if let Ok(mut r) = guarded(PATIENCE)
        .get(&format!("{}/healthz", s.stats))
        .call()
    {
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(r.status().as_u16(), 503, "{body}");
        assert!(body.contains("\"api\""), "{body}");
    }
    let status = s.g.wait_exit(PATIENCE);
    assert!(
        status.is_some_and(|st| !st.success()),
        "exit {status:?}\n{}",
        s.log()
    );
}
