//! The `http` provider: jobs submitted over HTTP, GoWorker's `POST /job/add`.
//!
//! A fixed number of handler threads take requests from one `tiny_http`
//! listener. By default a request is held open until the job's final
//! outcome (the [`Acker`] hands the [`Report`] to the waiting thread over a
//! channel, so the manager never blocks); `?wait=false` answers `202` once
//! the job is accepted, and only after it is durable when `store` names a
//! provider offering a [`JobStore`].

use super::{Acker, Delivery, Enqueue, JobStore, Provider, ProviderContext, ProviderType};
use crate::error::Error;
use crate::error::PluginError;
use crate::job::{FailureRecord, Job, JobStatus, Report};
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

/// The path that also accepts a JSON array of jobs (bulk submit).
const BULK_PATH: &str = "/jobs";
/// Declared body sizes above this are not discarded but abandoned (see
/// [`refuse_absurd_body`]).
const ABANDON_OVER: usize = 64 << 20;
/// How often handler threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// `Retry-After` seconds when the pipeline is full.
const RETRY_FULL: u32 = 1;
/// `Retry-After` seconds while shutting down.
const RETRY_STOPPING: u32 = 5;

/// Options of the `http` provider.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpOptions {
    /// Address to listen on. Default `127.0.0.1:8081` (loopback only).
    listen: String,
    /// Path that takes one job (GoWorker's). `/jobs` is served too and also
    /// takes a JSON array of jobs. Default `/job/add`.
    endpoint: String,
    /// Handler threads; a waiting request holds one until its job ends.
    /// Default 16.
    threads: usize,
    /// Largest request body in bytes; larger ones get `413`. Default 1048576 (1 MiB).
    max_body: usize,
    /// Environment variable holding the bearer token callers must send.
    /// Default none (no token).
    token_env: Option<String>,
    /// File holding the bearer token (surrounding whitespace is ignored).
    /// Default none (no token).
    token_file: Option<PathBuf>,
    /// Name of a provider offering a durable store (e.g. a `disk`
    /// provider): `?wait=false` jobs are put there and answered `202` only
    /// once durable. Default none (jobs go straight into the pipeline).
    store: Option<String>,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            listen: "127.0.0.1:8081".into(),
            endpoint: "/job/add".into(),
            threads: 16,
            max_body: 1 << 20,
            token_env: None,
            token_file: None,
            store: None,
        }
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    fn read(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::Env(var) => std::env::var(var)
                .map_err(|e| format!("token_env {var:?}: {e}"))?
                .trim()
                .to_string(),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("token_file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(format!("{}: the token is empty", self.describe()));
        }
        Ok(token)
    }

    fn describe(&self) -> String {
        match self {
            TokenSource::Env(var) => format!("token_env {var:?}"),
            TokenSource::File(path) => format!("token_file {}", path.display()),
        }
    }
}

impl ProviderType for HttpOptions {
    const TYPE: &'static str = "http";
    const DESCRIPTION: &'static str =
        "jobs submitted over HTTP: POST /job/add and /jobs, waiting for the outcome or not";

    fn build(self, name: &str) -> Result<Box<dyn Provider>, PluginError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| format!("listen {:?}: {e}", self.listen))?;
        if !self.endpoint.starts_with('/') || self.endpoint.contains('?') {
            return Err(PluginError::at(
                "endpoint",
                format!("{:?}: must be a path starting with /", self.endpoint),
            ));
        }
        if self.threads == 0 {
            return Err("threads: must be at least 1".into());
        }
        if self.max_body == 0 {
            return Err("max_body: must be at least 1".into());
        }
        let token = match (self.token_env, self.token_file) {
            (Some(_), Some(_)) => return Err("give token_env or token_file, not both".into()),
            (Some(var), None) => Some(TokenSource::Env(var)),
            (None, Some(path)) => Some(TokenSource::File(path)),
            (None, None) => None,
        };
        Ok(Box::new(HttpProvider {
            name: name.to_string(),
            listen,
            endpoint: self.endpoint,
            threads: self.threads,
            max_body: self.max_body,
            token,
            store: self.store,
            shared: None,
            handlers: Vec::new(),
        }))
    }
}

/// The provider: validated options, then the listener and handler threads.
struct HttpProvider {
    name: String,
    listen: SocketAddr,
    endpoint: String,
    threads: usize,
    max_body: usize,
    token: Option<TokenSource>,
    store: Option<String>,
    shared: Option<Arc<Shared>>,
    handlers: Vec<JoinHandle<()>>,
}

/// What every handler thread needs.
struct Shared {
    server: Server,
    ctx: ProviderContext,
    endpoint: String,
    max_body: usize,
    token: Option<String>,
    store: Option<Arc<dyn JobStore>>,
    /// Set in `finish`, after the manager settled every delivery.
    closed: AtomicBool,
}

impl Provider for HttpProvider {
    fn open(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        let fail = |m: String| Error::provider(&self.name, m);
        let token = match &self.token {
            Some(t) => Some(t.read().map_err(fail)?),
            None => None,
        };
        let store = match &self.store {
            Some(s) => Some(ctx.store(s).ok_or_else(|| {
                fail(format!(
                    "store {s:?}: no provider of that name offers a store"
                ))
            })?),
            None => None,
        };
        let server =
            Server::http(self.listen).map_err(|e| fail(format!("listen {}: {e}", self.listen)))?;
        log::info!(
            "provider {}: listening on http://{}{} and {BULK_PATH}{}",
            self.name,
            self.listen,
            self.endpoint,
            if token.is_some() {
                " (bearer token required)"
            } else {
                ""
            }
        );
        self.shared = Some(Arc::new(Shared {
            server,
            ctx: ctx.clone(),
            endpoint: self.endpoint.clone(),
            max_body: self.max_body,
            token,
            store,
            closed: AtomicBool::new(false),
        }));
        Ok(())
    }

    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        let Some(shared) = self.shared.clone() else {
            return Err(Error::provider(&self.name, "run before open"));
        };
        for i in 0..self.threads {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("goworker-http-{}-{i}", self.name))
                .spawn(move || s.serve())
                .map_err(|e| Error::io("spawn http handler thread", e))?;
            self.handlers.push(handle);
        }
        ctx.set_up();
        // Handler threads answer 503 from now on until `finish`.
        while !ctx.is_stopping() {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(s) = &self.shared {
            s.closed.store(true, Ordering::Release);
        }
        for h in self.handlers.drain(..) {
            let _ = h.join();
        }
        // Dropping the server closes the listening socket.
        self.shared = None;
    }

    fn stores_into(&self) -> Option<&str> {
        self.store.as_deref()
    }

    fn enqueue(&mut self) -> Option<&mut dyn Enqueue> {
        Some(self)
    }
}

/// An HTTP answer: status, JSON body, extra headers.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u32>,
    allow: bool,
    challenge: bool,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            retry_after: None,
            allow: false,
            challenge: false,
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer::json(status, json!({ "error": message.into() }))
    }

    fn unavailable(message: impl Into<String>, retry_after: u32) -> Answer {
        let mut a = Answer::error(503, message);
        a.retry_after = Some(retry_after);
        a
    }

    fn send(self, rq: Request) {
        let mut response = Response::from_data(self.body.to_string()).with_status_code(self.status);
        add_header(&mut response, "Content-Type", "application/json");
        if let Some(secs) = self.retry_after {
            add_header(&mut response, "Retry-After", &secs.to_string());
        }
        if self.allow {
            add_header(&mut response, "Allow", "POST");
        }
        if self.challenge {
            add_header(&mut response, "WWW-Authenticate", "Bearer");
        }
        // A client that went away is not an error worth more than a line.
        if let Err(e) = rq.respond(response) {
            log::debug!("http: answering {}: {e}", self.status);
        }
    }
}

/// Adds a header; names and values here are ASCII constants or digits,
/// which tiny_http always accepts.
fn add_header<R: Read>(response: &mut Response<R>, name: &str, value: &str) {
    if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        response.add_header(h);
    }
}

/// Answers `413` to a request declaring a body larger than 64 MiB and
/// abandons its connection; gives back every other request.
///
/// tiny_http discards an unread body when a request is dropped, allocating
/// a buffer of the declared size first: for an absurd `Content-Length` that
/// aborts the process. So such a request is never dropped: the answer goes
/// out and the connection is left (its tiny_http thread and socket are not
/// reclaimed, which is the lesser harm).
pub(crate) fn refuse_absurd_body(rq: Request, max_body: usize) -> Option<Request> {
    let Some(n) = rq.body_length().filter(|n| *n > ABANDON_OVER) else {
        return Some(rq);
    };
    log::warn!(
        "http: {} declared a {n}-byte body; refused, connection abandoned",
        rq.remote_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let body = json!({ "error": format!("request body over the limit of {max_body} bytes") });
    let mut response = Response::from_data(body.to_string()).with_status_code(413);
    add_header(&mut response, "Content-Type", "application/json");
    std::mem::forget(rq.upgrade("goworker-refused", response));
    None
}

/// A parsed submission: the jobs and whether it came as an array.
struct Submission {
    jobs: Vec<Job>,
    bulk: bool,
    wait: bool,
}

impl Shared {
    fn serve(&self) {
        while !self.closed.load(Ordering::Acquire) {
            match self.server.recv_timeout(POLL) {
                Ok(Some(rq)) => self.handle(rq),
                Ok(None) => {}
                Err(e) => {
                    log::error!("provider {}: accept: {e}", self.ctx.name());
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    fn handle(&self, rq: Request) {
        let Some(mut rq) = refuse_absurd_body(rq, self.max_body) else {
            return;
        };
        let submission = match self.check(&mut rq) {
            Ok(s) => s,
            Err(answer) => return answer.send(rq),
        };
        if self.ctx.is_stopping() {
            return Answer::unavailable("shutting down", RETRY_STOPPING).send(rq);
        }
        let answer = match (submission.wait, &self.store) {
            (false, Some(store)) => self.store_jobs(store.as_ref(), submission),
            (false, None) => self.accept(submission),
            (true, _) => self.wait_for(submission),
        };
        answer.send(rq)
    }

    /// Everything that can be refused before a job enters the pipeline.
    fn check(&self, rq: &mut Request) -> Result<Submission, Answer> {
        let url = rq.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        if path != self.endpoint && path != BULK_PATH {
            return Err(Answer::error(404, format!("no such path {path:?}")));
        }
        if *rq.method() != Method::Post {
            let mut a = Answer::error(405, format!("{} not allowed; use POST", rq.method()));
            a.allow = true;
            return Err(a);
        }
        self.authorize(rq)?;
        let body = self.read_body(rq)?;
        let wait = !query
            .split('&')
            .any(|kv| kv == "wait=false" || kv == "wait=0");
        let (jobs, bulk) = parse_jobs(&body, path == BULK_PATH)?;
        if let Some(job) = jobs.iter().find(|j| !self.ctx.knows_type(&j.kind)) {
            return Err(Answer::error(
                422,
                format!("no worker pool for type {:?}", job.kind),
            ));
        }
        Ok(Submission { jobs, bulk, wait })
    }

    fn authorize(&self, rq: &Request) -> Result<(), Answer> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| h.value.as_str().trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
        if ok {
            return Ok(());
        }
        let mut a = Answer::error(401, "missing or wrong bearer token");
        a.challenge = true;
        Err(a)
    }

    /// Reads at most `max_body` bytes. An oversize body is refused before
    /// any of it is read; tiny_http then discards the rest as it arrives.
    fn read_body(&self, rq: &mut Request) -> Result<Vec<u8>, Answer> {
        let too_large = || {
            Answer::error(
                413,
                format!("request body over the limit of {} bytes", self.max_body),
            )
        };
        if rq.body_length().is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        rq.as_reader()
            .take(self.max_body as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| Answer::error(400, format!("reading the body: {e}")))?;
        if body.len() > self.max_body {
            return Err(too_large());
        }
        Ok(body)
    }

    /// `?wait=false` with a store: durable before `202`.
    fn store_jobs(&self, store: &dyn JobStore, s: Submission) -> Answer {
        match store.put(&s.jobs) {
            Ok(()) => {
                for j in &s.jobs {
                    log::debug!("job {} ({}): stored over http", j.id, j.name());
                }
                let ids: Vec<String> = s.jobs.iter().map(|j| j.id.clone()).collect();
                accepted(&ids, s.bulk)
            }
            Err(e) => {
                log::error!("provider {}: storing jobs: {e}", self.ctx.name());
                Answer::unavailable(format!("could not store the job: {e}"), RETRY_FULL)
            }
        }
    }

    /// `?wait=false` without a store: `202` once in the pipeline.
    fn accept(&self, s: Submission) -> Answer {
        let name = self.ctx.name().to_string();
        self.send_all(s.jobs, s.bulk, |_| {
            Box::new(LogAcker {
                provider: name.clone(),
            })
        })
        .unwrap_or_else(|a| a)
    }

    /// The default: hold the request until every job's final outcome.
    fn wait_for(&self, s: Submission) -> Answer {
        let n = s.jobs.len();
        // Room for every report, so an acker's send never blocks.
        let (tx, rx) = crossbeam_channel::bounded(n);
        let sent = self.send_all(s.jobs, s.bulk, |job| {
            Box::new(WaitAcker {
                id: job.id.clone(),
                tx: tx.clone(),
            })
        });
        drop(tx);
        if let Err(answer) = sent {
            return answer;
        }
        collect(&rx, n, s.bulk)
    }

    /// Sends every job with `try_send`; on the first refusal, answers 503
    /// naming the jobs already accepted.
    fn send_all(
        &self,
        jobs: Vec<Job>,
        bulk: bool,
        acker: impl Fn(&Job) -> Box<dyn Acker>,
    ) -> Result<Answer, Answer> {
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            let id = job.id.clone();
            log::debug!("job {id} ({}): received over http", job.name());
            let a = acker(&job);
            if let Err(d) = self.ctx.try_send(Delivery::new(Ok(job), a)) {
                // Never entered the pipeline: nothing to hand back.
                drop(d.into_parts());
                let (msg, secs) = if self.ctx.is_stopping() {
                    ("shutting down", RETRY_STOPPING)
                } else {
                    ("the pipeline is full", RETRY_FULL)
                };
                let mut a = Answer::unavailable(msg, secs);
                if !ids.is_empty() {
                    a.body["accepted"] = json!(ids);
                }
                return Err(a);
            }
            ids.push(id);
        }
        Ok(accepted(&ids, bulk))
    }
}

/// `202`: `{"id","status"}`, or `{"ids","status"}` for a bulk submit.
fn accepted(ids: &[String], bulk: bool) -> Answer {
    if bulk {
        return Answer::json(202, json!({ "ids": ids, "status": "accepted" }));
    }
    let id = ids.first().map(String::as_str).unwrap_or_default();
    Answer::json(202, json!({ "id": id, "status": "accepted" }))
}

/// Parses one job, or (on the bulk path) a JSON array of jobs.
fn parse_jobs(body: &[u8], bulk_path: bool) -> Result<(Vec<Job>, bool), Answer> {
    let bad = |m: String| Answer::error(400, m);
    let is_array = bulk_path && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !is_array {
        let job = Job::parse(body).map_err(|m| bad(m.reason))?;
        return Ok((vec![job], false));
    }
    let items: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if items.is_empty() {
        return Err(bad("empty job list".into()));
    }
    let mut jobs = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let raw = serde_json::to_vec(v).map_err(|e| bad(format!("job {i}: {e}")))?;
        jobs.push(Job::parse(&raw).map_err(|m| bad(format!("job {i}: {}", m.reason)))?);
    }
    Ok((jobs, true))
}

/// Waits for `n` reports: `200` when all succeeded, `500` when one failed,
/// `503` when one was handed back (shutdown).
fn collect(rx: &Receiver<Report>, n: usize, bulk: bool) -> Answer {
    let mut reports = Vec::with_capacity(n);
    for _ in 0..n {
        match rx.recv() {
            Ok(r) => reports.push(r),
            // Every acker was dropped unsettled: the pipeline is gone.
            Err(_) => break,
        }
    }
    let released = reports.len() < n || reports.iter().any(|r| r.status == JobStatus::Released);
    let failed = reports.iter().any(|r| r.status == JobStatus::Failed);
    let body = if bulk {
        json!(reports)
    } else {
        reports.first().map(|r| json!(r)).unwrap_or(Value::Null)
    };
    if released {
        let mut a = Answer::unavailable("shutting down; the job did not finish", RETRY_STOPPING);
        a.body = json!({ "error": "shutting down; the job did not finish", "reports": body });
        return a;
    }
    Answer::json(if failed { 500 } else { 200 }, body)
}

/// Hands the final report to the thread holding the request.
struct WaitAcker {
    id: String,
    tx: Sender<Report>,
}

impl WaitAcker {
    fn report(&self, report: &Report) {
        // The channel has room for every report: this never blocks. It
        // fails only if the waiting thread is gone, which it never is
        // before its reports arrive.
        if self.tx.try_send(report.clone()).is_err() {
            log::warn!("job {}: nobody waits for its outcome", self.id);
        }
    }
}

impl Acker for WaitAcker {
    fn ack(self: Box<Self>, report: &Report) {
        self.report(report);
    }

    fn dead(self: Box<Self>, _record: &FailureRecord, report: &Report) {
        self.report(report);
    }

    fn release(self: Box<Self>, job: Option<&Job>) {
        self.report(&Report {
            id: self.id.clone(),
            status: JobStatus::Released,
            attempts: job.map(|j| j.attempts).unwrap_or(0),
            duration_ms: 0,
            output: None,
            error: Some("shutting down".into()),
        });
    }
}

/// For `?wait=false` jobs without a store: the caller has gone, so the
/// outcome is only logged.
struct LogAcker {
    provider: String,
}

impl Acker for LogAcker {
    fn ack(self: Box<Self>, report: &Report) {
        log::debug!("job {}: succeeded (submitted with wait=false)", report.id);
    }

    fn dead(self: Box<Self>, _record: &FailureRecord, report: &Report) {
        log::debug!(
            "job {}: failed for good (submitted with wait=false)",
            report.id
        );
    }

    fn release(self: Box<Self>, job: Option<&Job>) {
        if let Some(j) = job {
            log::warn!(
                "provider {}: job {} ({}) accepted with wait=false did not finish before shutdown and is dropped; configure `store` to keep such jobs",
                self.provider,
                j.id,
                j.name()
            );
        }
    }
}

impl Enqueue for HttpProvider {
    /// Submits to the running service with `?wait=false`.
    fn enqueue(&mut self, payload: &[u8]) -> Result<String, Error> {
        let fail = |m: String| Error::provider(&self.name, m);
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url = format!("http://{addr}{}?wait=false", self.endpoint);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut req = agent.post(&url).header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header(
                "Authorization",
                &format!("Bearer {}", t.read().map_err(fail)?),
            );
        }
        // Nothing answering is not a refusal: the caller may go another way.
        let mut resp = req.send(payload).map_err(|e| Error::Unreachable {
            provider: self.name.clone(),
            message: format!("POST {url}: {e}"),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| fail(format!("POST {url}: reading the answer: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 202 {
            let why = body["error"].as_str().unwrap_or(text.trim());
            return Err(fail(format!("POST {url}: {status}: {why}")));
        }
        match body["id"].as_str() {
            Some(id) => Ok(id.to_string()),
            None => Err(fail(format!("POST {url}: answer without an id: {text}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_bulk() {
        let (jobs, bulk) = parse_jobs(br#"{"type":"noop"}"#, false).ok().unwrap();
        assert_eq!((jobs.len(), bulk), (1, false));
        let (jobs, bulk) = parse_jobs(br#" [{"type":"noop"},{"type":"cli"}]"#, true)
            .ok()
            .unwrap();
        assert_eq!((jobs.len(), bulk), (2, true));
        let e = parse_jobs(br#"[{"type":"noop"},{"x":1}]"#, true)
            .err()
            .unwrap();
        assert_eq!(e.status, 400);
        assert!(e.body["error"].as_str().unwrap().starts_with("job 1:"));
        assert_eq!(parse_jobs(b"[]", true).err().unwrap().status, 400);
        assert_eq!(
            parse_jobs(br#"[{"type":"noop"}]"#, false)
                .err()
                .unwrap()
                .status,
            400
        );
    }

    #[test]
    fn options_are_validated() {
        let o = |f: fn(&mut HttpOptions)| {
            let mut o = HttpOptions::default();
            f(&mut o);
            o.build("api").err().map(|e| e.to_string())
        };
        assert!(o(|_| {}).is_none());
        assert!(
            o(|o| o.listen = "nowhere".into())
                .unwrap()
                .contains("listen")
        );
        assert!(
            o(|o| o.endpoint = "job".into())
                .unwrap()
                .contains("endpoint")
        );
        assert!(o(|o| o.threads = 0).unwrap().contains("threads"));
        assert!(
            o(|o| {
                o.token_env = Some("A".into());
                o.token_file = Some("b".into());
            })
            .unwrap()
            .contains("not both")
        );
    }
}
