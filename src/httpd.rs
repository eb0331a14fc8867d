//! The HTTP/1.1 server behind both listeners (the `http` provider and the
//! stats server), written once so both get the same protections.
//!
//! One accept thread per listener and one thread per connection, with a
//! small stack, under a cap (`max_connections`): a connection above the cap
//! is answered `503` at once and closed, never queued. Every connection has
//! deadlines: the next request must start within `idle_timeout`, its head
//! must be complete within `read_timeout` of its first byte, and its body
//! within `read_timeout` of the head; answers are written under the same
//! deadline. A client that stalls is dropped and its thread ends. The head
//! is capped (`max_header`, `431`), the body too (`max_body`, `413`, refused
//! from the declared length before any of it is read).
//!
//! Requests are parsed by `httparse` (heads and chunk sizes); this module
//! only frames them. `accept` failing for lack of descriptors or memory
//! (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged and retried with back-off;
//! any other accept error ends the listener and is reported by
//! [`Server::failure`] so its owner can go down.

use serde_json::{Value, json};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop flag and their deadline.
const SLICE: Duration = Duration::from_millis(100);
/// Stack of a connection thread. Requests are parsed with bounded
/// recursion (serde_json stops at 128 levels), well within this.
pub(crate) const STACK: usize = 256 << 10;
/// Headers per request (more → `431`).
const MAX_HEADERS: usize = 64;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 8 << 10;
/// After an answer that closes the connection, unread request bytes are
/// discarded for at most this long and this many bytes before closing, so
/// the client gets the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// Back-off bounds when `accept` fails for lack of resources.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long [`Server::stop`] waits for connection threads to end.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The answer to a connection over the cap, written without reading.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}";

/// Per-listener limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Deadline for a request's head (from its first byte), then for its
    /// body, then for writing the answer.
    pub(crate) read_timeout: Duration,
    /// Deadline for the first byte of a request on an open connection.
    pub(crate) idle_timeout: Duration,
    /// Largest request head (request line and headers) in bytes.
    pub(crate) max_header: usize,
    /// Largest request body in bytes.
    pub(crate) max_body: usize,
    /// Connections served at once.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_header: 16 << 10,
            max_body: 1 << 20,
            max_connections: 256,
        }
    }
}

/// A request: its head, then (for [`Handler::handle`]) its body.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, as sent.
    pub(crate) method: String,
    /// The request target: path and query.
    pub(crate) target: String,
    headers: Vec<(String, String)>,
    /// The body (empty in [`Handler::check`]).
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive), lossily as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path: the target up to `?`.
    pub(crate) fn path(&self) -> &str {
        split_target(&self.target).0
    }
}

/// Splits a request target into path and query.
pub(crate) fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// An answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// An answer with that content type and body.
    pub(crate) fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A JSON answer.
    pub(crate) fn json(status: u16, body: &Value) -> Response {
        Response::new(status, "application/json", body.to_string().into_bytes())
    }

    /// `{"error": message}`.
    pub(crate) fn error(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "error": message }))
    }

    /// Adds a header (a constant name; the value must not contain CR/LF,
    /// which is checked when writing).
    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    /// The bytes on the wire.
    fn encode(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            if !value.bytes().any(|b| b == b'\r' || b == b'\n') {
                let _ = write!(out, "{name}: {value}\r\n");
            }
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What a listener does with requests.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Called once the head is read, before any of the body: an answer
    /// refuses the request (its body is then discarded unread).
    fn check(&self, _head: &Request) -> Option<Response> {
        None
    }

    /// Answers a request whose body has been read.
    fn handle(&self, request: Request) -> Response;
}

/// What the accept thread and connection threads share.
struct State {
    name: String,
    limits: Limits,
    stop: AtomicBool,
    open: AtomicUsize,
    failure: Mutex<Option<String>>,
}

/// A bound listener; serving once [`Server::start`] is called.
pub(crate) struct Server {
    addr: SocketAddr,
    listener: Option<TcpListener>,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.state.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Server {
    /// Binds `addr`; `name` names the threads and log lines.
    pub(crate) fn bind(name: &str, addr: SocketAddr, limits: Limits) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            addr,
            listener: Some(listener),
            state: Arc::new(State {
                name: name.to_string(),
                limits,
                stop: AtomicBool::new(false),
                open: AtomicUsize::new(0),
                failure: Mutex::new(None),
            }),
            accept: None,
        })
    }

    /// Starts the accept thread.
    pub(crate) fn start(&mut self, handler: Arc<dyn Handler>) -> io::Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let state = self.state.clone();
        let t = std::thread::Builder::new()
            .name(format!("goworker-accept-{}", self.state.name))
            .spawn(move || accept_loop(listener, state, handler))?;
        self.accept = Some(t);
        Ok(())
    }

    /// Why the listener died, if it did (it then accepts nothing more).
    pub(crate) fn failure(&self) -> Option<String> {
        self.state
            .failure
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Closes the listener, drops idle and stalled connections, and waits
    /// a little (at most two seconds) for answers being written.
    pub(crate) fn stop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.listener = None;
        let deadline = Instant::now() + STOP_GRACE;
        while self.state.open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.state.open.load(Ordering::Acquire);
        if left > 0 {
            log::warn!(
                "{}: {left} connection(s) still writing at shutdown; not waiting for them",
                self.state.name
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

/// Whether an accept error is a lack of resources that may pass.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::TimedOut
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// Waits until the listener has a connection to accept, at most `wait`.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for a descriptor the listener owns.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    n > 0
}

fn accept_loop(listener: TcpListener, state: Arc<State>, handler: Arc<dyn Handler>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing_since: Option<Instant> = None;
    while !state.stop.load(Ordering::Acquire) {
        if !readable(&listener, SLICE) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Some(since) = failing_since.take() {
                    log::info!(
                        "{}: accepting again after {:.1}s",
                        state.name,
                        since.elapsed().as_secs_f64()
                    );
                }
                backoff = ACCEPT_BACKOFF_MIN;
                admit(&state, &handler, stream, peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) if transient(&e) => {
                if failing_since.is_none() || backoff == ACCEPT_BACKOFF_MAX {
                    log::error!(
                        "{}: accept: {e}; retrying in {}ms ({} connection(s) open)",
                        state.name,
                        backoff.as_millis(),
                        state.open.load(Ordering::Acquire)
                    );
                }
                failing_since.get_or_insert_with(Instant::now);
                let until = Instant::now() + backoff;
                while Instant::now() < until && !state.stop.load(Ordering::Acquire) {
                    std::thread::sleep(SLICE.min(backoff));
                }
                backoff = backoff.saturating_mul(2).min(ACCEPT_BACKOFF_MAX);
            }
            Err(e) => {
                log::error!("{}: accept: {e}; the listener is gone", state.name);
                if let Ok(mut f) = state.failure.lock() {
                    *f = Some(format!("accept: {e}"));
                }
                return;
            }
        }
    }
}

/// Decrements the open count when a connection thread ends.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(state: &Arc<State>, handler: &Arc<dyn Handler>, stream: TcpStream, peer: SocketAddr) {
    let open = state.open.fetch_add(1, Ordering::AcqRel);
    let guard = Open(state.clone());
    if open >= state.limits.max_connections {
        log::debug!("{}: {peer}: over {open} connections; refused", state.name);
        refuse(stream);
        return;
    }
    let (st, h) = (state.clone(), handler.clone());
    // The stream moves into the thread; if spawning fails it comes back
    // through this slot to be answered.
    let slot = Arc::new(Mutex::new(Some(stream)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("goworker-conn-{}", state.name))
        .stack_size(STACK)
        .spawn(move || {
            let _guard = guard;
            let stream = theirs.lock().ok().and_then(|mut s| s.take());
            if let Some(stream) = stream {
                Conn::new(stream, peer, st).serve(h.as_ref());
            }
        });
    if let Err(e) = spawned {
        log::error!("{}: {peer}: no thread for the connection: {e}", state.name);
        if let Some(stream) = slot.lock().ok().and_then(|mut s| s.take()) {
            refuse(stream);
        }
    }
}

/// Answers `503` without reading and closes.
fn refuse(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write(OVER_CAP);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Why a request could not be read.
enum ReadError {
    /// The connection ended, stalled or the server stops: close quietly.
    Gone,
    /// Answer this and close.
    Answer(Response),
}

/// How the body is framed.
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// One connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    /// Bytes read but not yet used (the start of the next request).
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, state: Arc<State>) -> Conn {
        Conn {
            stream,
            peer,
            state,
            buf: Vec::new(),
        }
    }

    fn limits(&self) -> &Limits {
        &self.state.limits
    }

    fn stopping(&self) -> bool {
        self.state.stop.load(Ordering::Acquire)
    }

    fn serve(mut self, handler: &dyn Handler) {
        let setup = self
            .stream
            .set_nonblocking(false)
            .and_then(|()| self.stream.set_nodelay(true))
            .and_then(|()| self.stream.set_read_timeout(Some(SLICE)))
            .and_then(|()| self.stream.set_write_timeout(Some(SLICE)));
        if let Err(e) = setup {
            log::debug!("{}: {}: {e}", self.state.name, self.peer);
            return;
        }
        loop {
            let keep = match self.one(handler) {
                Ok(keep) => keep,
                Err(ReadError::Gone) => return,
                Err(ReadError::Answer(r)) => {
                    self.close_with(&r);
                    return;
                }
            };
            if !keep || self.stopping() {
                return;
            }
        }
    }

    /// Reads, handles and answers one request; whether to keep the
    /// connection open.
    fn one(&mut self, handler: &dyn Handler) -> Result<bool, ReadError> {
        let (mut rq, keep_alive, framing, expect) = self.read_head()?;
        let declared_over = matches!(framing, Framing::Length(n) if n > self.limits().max_body);
        if let Some(refusal) = handler.check(&rq) {
            // Refused before the body: discard a small declared body and
            // go on, otherwise close.
            let drained = match framing {
                Framing::None => true,
                Framing::Length(n) if !declared_over && !expect => {
                    self.discard(n).map_err(|()| ReadError::Gone)?;
                    true
                }
                _ => false,
            };
            let keep = keep_alive && drained;
            if keep {
                return self.answer(&refusal, false).map(|()| true);
            }
            return Err(ReadError::Answer(refusal));
        }
        if declared_over {
            log::debug!(
                "{}: {}: body over max_body; refused",
                self.state.name,
                self.peer
            );
            return Err(ReadError::Answer(self.too_large()));
        }
        if expect && !matches!(framing, Framing::None) {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|()| ReadError::Gone)?;
        }
        rq.body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_body(n)?,
            Framing::Chunked => self.read_chunked()?,
        };
        let response = handler.handle(rq);
        self.answer(&response, !keep_alive)?;
        Ok(keep_alive)
    }

    fn too_large(&self) -> Response {
        Response::error(
            413,
            &format!(
                "request body over the limit of {} bytes",
                self.limits().max_body
            ),
        )
    }

    fn answer(&mut self, r: &Response, close: bool) -> Result<(), ReadError> {
        self.write_all(&r.encode(close))
            .map_err(|()| ReadError::Gone)
    }

    /// Writes the answer, then discards what the client still sends for a
    /// little while, so it reads the answer rather than a reset.
    fn close_with(&mut self, r: &Response) {
        if self.write_all(&r.encode(true)).is_err() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut chunk = [0u8; READ_CHUNK];
        let mut left = LINGER_BYTES;
        while left > 0 && Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if retry(&e) => {}
                Err(_) => return,
            }
        }
    }

    /// Writes everything before the read deadline.
    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        let deadline = Instant::now() + self.limits().read_timeout;
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(()),
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if retry(&e) => {
                    if Instant::now() >= deadline {
                        log::debug!("{}: {}: write timed out", self.state.name, self.peer);
                        return Err(());
                    }
                }
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Reads more bytes into `buf` before `deadline`. `Ok(false)` at EOF.
    fn fill(&mut self, deadline: Instant) -> Result<bool, ReadError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    return Ok(true);
                }
                Err(e) if retry(&e) => {
                    if self.stopping() || Instant::now() >= deadline {
                        return Err(ReadError::Gone);
                    }
                }
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    /// Reads a request head: the request, whether the connection may stay
    /// open, the body's framing and whether the client expects `100`.
    fn read_head(&mut self) -> Result<(Request, bool, Framing, bool), ReadError> {
        let limits = self.limits().clone();
        let mut deadline = Instant::now() + limits.idle_timeout;
        let mut started = false;
        loop {
            if !self.buf.is_empty() {
                if !started {
                    started = true;
                    deadline = Instant::now() + limits.read_timeout;
                }
                if let Some(head) = self.parse_head()? {
                    return Ok(head);
                }
                if self.buf.len() >= limits.max_header {
                    return Err(header_too_large(limits.max_header));
                }
            }
            if !self.fill(deadline)? {
                return Err(ReadError::Gone);
            }
        }
    }

    /// Parses the head if `buf` holds all of it.
    #[allow(clippy::type_complexity)]
    fn parse_head(&mut self) -> Result<Option<(Request, bool, Framing, bool)>, ReadError> {
        let max_header = self.limits().max_header;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Answer(Response::error(
                    431,
                    &format!("more than {MAX_HEADERS} header fields"),
                )));
            }
            Err(e) => return Err(bad(&format!("malformed request: {e}"))),
        };
        if len > max_header {
            return Err(header_too_large(max_header));
        }
        let version = parsed.version.unwrap_or(1);
        let request = Request {
            method: parsed.method.unwrap_or_default().to_string(),
            target: parsed.path.unwrap_or_default().to_string(),
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
        };
        self.buf.drain(..len);
        let has_token = |name: &str, token: &str| {
            request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        let keep_alive = version == 1 && !has_token("connection", "close");
        let expect = version == 1 && has_token("expect", "100-continue");
        let framing = framing(&request)?;
        Ok(Some((request, keep_alive, framing, expect)))
    }

    /// Reads and drops `n` body bytes (at most `max_body`).
    fn discard(&mut self, n: usize) -> Result<(), ()> {
        let deadline = Instant::now() + self.limits().read_timeout;
        let mut left = n;
        loop {
            let have = self.buf.len().min(left);
            self.buf.drain(..have);
            left -= have;
            if left == 0 {
                return Ok(());
            }
            match self.fill(deadline) {
                Ok(true) => {}
                _ => return Err(()),
            }
        }
    }

    /// Reads a body of `n` bytes (at most `max_body`, checked before).
    fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + self.limits().read_timeout;
        while self.buf.len() < n {
            if !self.fill(deadline)? {
                return Err(ReadError::Gone);
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// Reads a chunked body, at most `max_body` bytes of data.
    fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let limits = self.limits().clone();
        let deadline = Instant::now() + limits.read_timeout;
        let mut body = Vec::new();
        loop {
            let (skip, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > limits.max_header {
                            return Err(bad("chunk size line too long"));
                        }
                        if !self.fill(deadline)? {
                            return Err(ReadError::Gone);
                        }
                    }
                    Err(_) => return Err(bad("malformed chunk size")),
                }
            };
            self.buf.drain(..skip);
            if size == 0 {
                self.skip_trailers(deadline)?;
                return Ok(body);
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|s| body.len().saturating_add(*s) <= limits.max_body)
                .ok_or_else(|| ReadError::Answer(self.too_large()))?;
            let want = size.saturating_add(2);
            while self.buf.len() < want {
                if !self.fill(deadline)? {
                    return Err(ReadError::Gone);
                }
            }
            if self.buf.get(size..want) != Some(b"\r\n".as_slice()) {
                return Err(bad("chunk not followed by CRLF"));
            }
            body.extend_from_slice(self.buf.get(..size).unwrap_or_default());
            self.buf.drain(..want);
        }
    }

    /// Reads the trailer section after the last chunk and drops it.
    fn skip_trailers(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let max_header = self.limits().max_header;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&self.buf, &mut headers) {
                Ok(httparse::Status::Complete((n, _))) => {
                    self.buf.drain(..n);
                    return Ok(());
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() >= max_header {
                        return Err(header_too_large(max_header));
                    }
                    if !self.fill(deadline)? {
                        return Err(ReadError::Gone);
                    }
                }
                Err(_) => return Err(bad("malformed trailers")),
            }
        }
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn bad(message: &str) -> ReadError {
    ReadError::Answer(Response::error(400, message))
}

fn header_too_large(max: usize) -> ReadError {
    ReadError::Answer(Response::error(
        431,
        &format!("request head over the limit of {max} bytes"),
    ))
}

/// The body's framing from `Content-Length` / `Transfer-Encoding`.
fn framing(rq: &Request) -> Result<Framing, ReadError> {
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for (name, value) in &rq.headers {
        if name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("invalid Content-Length"));
            }
            // A length beyond usize is over any limit: saturate.
            let n = v.parse::<usize>().unwrap_or(usize::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") || chunked {
                return Err(ReadError::Answer(Response::error(
                    501,
                    "unsupported Transfer-Encoding",
                )));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(bad("both Content-Length and Transfer-Encoding")),
        (None, true) => Ok(Framing::Chunked),
        (Some(0) | None, false) => Ok(Framing::None),
        (Some(n), false) => Ok(Framing::Length(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn framing_is_strict() {
        let f = |h: &[(&str, &str)]| framing(&head("/", h));
        assert!(matches!(f(&[]), Ok(Framing::None)));
        assert!(matches!(
            f(&[("Content-Length", "12")]),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            f(&[("content-length", "99999999999999999999999999")]),
            Ok(Framing::Length(usize::MAX))
        ));
        assert!(f(&[("Content-Length", "+1")]).is_err());
        assert!(f(&[("Content-Length", "1"), ("Content-Length", "2")]).is_err());
        assert!(matches!(
            f(&[("Transfer-Encoding", "chunked")]),
            Ok(Framing::Chunked)
        ));
        assert!(f(&[("Transfer-Encoding", "gzip")]).is_err());
        assert!(f(&[("Transfer-Encoding", "chunked"), ("Content-Length", "1")]).is_err());
    }

    #[test]
    fn accept_errors_for_lack_of_resources_are_transient() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(transient(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!transient(&io::Error::from_raw_os_error(libc::EBADF)));
        assert!(!transient(&io::Error::from_raw_os_error(libc::EINVAL)));
    }

    #[test]
    fn header_values_with_line_breaks_are_not_written() {
        let r = Response::error(503, "x").with_header("Retry-After", "1\r\nX: y".into());
        let text = String::from_utf8(r.encode(false)).unwrap();
        assert!(!text.contains("X: y"), "{text}");
    }

    proptest! {
        #[test]
        fn any_target_splits_without_panicking(target in any::<String>()) {
            let rq = head(&target, &[]);
            let (path, query) = split_target(&target);
            prop_assert_eq!(rq.path(), path);
            prop_assert!(path.len() + query.len() <= target.len());
        }

        #[test]
        fn any_bytes_parse_or_are_refused_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            let _ = parsed.parse(&bytes);
            let _ = httparse::parse_chunk_size(&bytes);
        }

        #[test]
        fn any_header_values_frame_without_panicking(
            cl in "[ -~]{0,40}", te in "[ -~]{0,40}"
        ) {
            let _ = framing(&head("/", &[("Content-Length", &cl)]));
            let _ = framing(&head("/", &[("Transfer-Encoding", &te)]));
        }
    }
}
