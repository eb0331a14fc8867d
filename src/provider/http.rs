//! The `http` provider: jobs submitted over HTTP, GoWorker's `POST /job/add`.
//!
//! Requests are served by [`crate::httpd`] (a thread per connection, under
//! a cap, with deadlines and size limits). By default a request is held open until the job's final
//! outcome (the [`Acker`] hands the [`Report`] to the waiting thread over a
//! channel, so the manager never blocks); `?wait=false` answers `202` once
//! the job is accepted, and only after it is durable when `store` names a
//! provider offering a [`JobStore`].

use super::{Acker, Delivery, Enqueue, JobStore, Provider, ProviderContext, ProviderType};
use crate::error::Error;
use crate::error::PluginError;
use crate::httpd::{self, Limits, Request, Response, Server};
use crate::job::{FailureRecord, Job, JobStatus, Report};
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The path that also accepts a JSON array of jobs (bulk submit).
const BULK_PATH: &str = "/jobs";
/// How often `run` looks at the stop flag and the listener.
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
    /// Deprecated and ignored: every connection has its own thread now
    /// (see `max_connections`). Still accepted (at least 1) so existing
    /// configs load. Default 16.
    threads: usize,
    /// Largest request body in bytes; larger ones get `413` from the
    /// declared length, unread. Default 1048576 (1 MiB).
    max_body: usize,
    /// Largest request head (request line and headers) in bytes; larger
    /// ones get `431`. Default 16384 (16 KiB).
    max_header: usize,
    /// Connections served at once; one more is answered `503` at once and
    /// closed. Default 256.
    max_connections: usize,
    /// Deadline for a request's head (from its first byte), then for its
    /// body, then for writing the answer; a client slower than this is
    /// dropped. Default `10s`.
    read_timeout: crate::DurationValue,
    /// How long an open connection may wait for its next request before it
    /// is closed. Default `10s`.
    idle_timeout: crate::DurationValue,
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
            max_header: 16 << 10,
            max_connections: 256,
            read_timeout: "10s".into(),
            idle_timeout: "10s".into(),
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
        if self.max_header < 256 {
            return Err(PluginError::at("max_header", "must be at least 256"));
        }
        if self.max_connections == 0 {
            return Err(PluginError::at("max_connections", "must be at least 1"));
        }
        let duration = |key: &str, v: &crate::DurationValue| {
            v.parse()
                .map_err(|e| PluginError::at(key, e))
                .and_then(|d| {
                    if d.is_zero() || d > MAX_TIMEOUT {
                        Err(PluginError::at(key, "must be between 1ms and 1h"))
                    } else {
                        Ok(d)
                    }
                })
        };
        let limits = Limits {
            read_timeout: duration("read_timeout", &self.read_timeout)?,
            idle_timeout: duration("idle_timeout", &self.idle_timeout)?,
            max_header: self.max_header,
            max_body: self.max_body,
            max_connections: self.max_connections,
        };
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
            limits,
            token,
            store: self.store,
            server: None,
        }))
    }
}

/// Bound on `read_timeout` and `idle_timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The provider: validated options, then the listener and its handler.
struct HttpProvider {
    name: String,
    listen: SocketAddr,
    endpoint: String,
    limits: Limits,
    token: Option<TokenSource>,
    store: Option<String>,
    server: Option<(Server, Arc<Shared>)>,
}

/// What every connection thread needs.
struct Shared {
    ctx: ProviderContext,
    endpoint: String,
    token: Option<String>,
    store: Option<Arc<dyn JobStore>>,
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
        let server = Server::bind(
            &format!("http-{}", self.name),
            self.listen,
            self.limits.clone(),
        )
        .map_err(|e| fail(format!("listen {}: {e}", self.listen)))?;
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
        let shared = Arc::new(Shared {
            ctx: ctx.clone(),
            endpoint: self.endpoint.clone(),
            token,
            store,
        });
        self.server = Some((server, shared));
        Ok(())
    }

    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        let Some((server, shared)) = &mut self.server else {
            return Err(Error::provider(&self.name, "run before open"));
        };
        server
            .start(shared.clone())
            .map_err(|e| Error::io("spawn http accept thread", e))?;
        ctx.set_up();
        // Requests are answered 503 from now on until `finish`. A listener
        // that dies takes the provider down, and with it the service.
        while !ctx.is_stopping() {
            if let Some(why) = server.failure() {
                return Err(Error::provider(
                    &self.name,
                    format!("listener on {} died: {why}", self.listen),
                ));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    fn finish(&mut self) {
        // Closes the listener and every idle or stalled connection.
        if let Some((mut server, _)) = self.server.take() {
            server.stop();
        }
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

    fn response(self) -> Response {
        let mut r = Response::json(self.status, &self.body);
        if let Some(secs) = self.retry_after {
            r = r.with_header("Retry-After", secs.to_string());
        }
        if self.allow {
            r = r.with_header("Allow", "POST".into());
        }
        if self.challenge {
            r = r.with_header("WWW-Authenticate", "Bearer".into());
        }
        r
    }
}

/// A parsed submission: the jobs and whether it came as an array.
struct Submission {
    jobs: Vec<Job>,
    bulk: bool,
    wait: bool,
}

impl httpd::Handler for Shared {
    /// Path, method and token, before any of the body is read.
    fn check(&self, rq: &Request) -> Option<Response> {
        route(&self.endpoint, &rq.method, &rq.target)
            .and_then(|_| self.authorize(rq))
            .err()
            .map(Answer::response)
    }

    fn handle(&self, rq: Request) -> Response {
        let submission = match self.submission(&rq) {
            Ok(s) => s,
            Err(answer) => return answer.response(),
        };
        if self.ctx.is_stopping() {
            return Answer::unavailable("shutting down", RETRY_STOPPING).response();
        }
        let answer = match (submission.wait, &self.store) {
            (false, Some(store)) => self.store_jobs(store.as_ref(), submission),
            (false, None) => self.accept(submission),
            (true, _) => self.wait_for(submission),
        };
        answer.response()
    }
}

/// Where a request goes: whether it is a bulk path and whether it waits;
/// `404`/`405` otherwise. Any method and target, never a panic.
fn route(endpoint: &str, method: &str, target: &str) -> Result<(bool, bool), Answer> {
    let (path, query) = httpd::split_target(target);
    if path != endpoint && path != BULK_PATH {
        return Err(Answer::error(404, format!("no such path {path:?}")));
    }
    if method != "POST" {
        let mut a = Answer::error(405, format!("{method} not allowed; use POST"));
        a.allow = true;
        return Err(a);
    }
    let wait = !query
        .split('&')
        .any(|kv| kv == "wait=false" || kv == "wait=0");
    Ok((path == BULK_PATH, wait))
}

impl Shared {
    /// Everything that can be refused before a job enters the pipeline.
    fn submission(&self, rq: &Request) -> Result<Submission, Answer> {
        let (bulk_path, wait) = route(&self.endpoint, &rq.method, &rq.target)?;
        let (jobs, bulk) = parse_jobs(&rq.body, bulk_path)?;
        if let Some(job) = jobs.iter().find(|j| !self.ctx.knows_type(&j.job_type)) {
            return Err(Answer::error(
                422,
                format!("no worker pool for type {:?}", job.job_type),
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
            .header("Authorization")
            .and_then(|v| v.trim().split_once(' '))
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
        let order: Vec<String> = s.jobs.iter().map(|j| j.id.clone()).collect();
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
        collect(&rx, &order, s.bulk)
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
fn collect(rx: &Receiver<Report>, order: &[String], bulk: bool) -> Answer {
    let n = order.len();
    let mut reports = Vec::with_capacity(n);
    for _ in 0..n {
        match rx.recv() {
            Ok(r) => reports.push(r),
            // Every acker was dropped unsettled: the pipeline is gone.
            Err(_) => break,
        }
    }
    // In the order the jobs were submitted, whatever order they ended in.
    let index: std::collections::HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    reports.sort_by_key(|r| index.get(r.id.as_str()).copied());
    let released = reports.len() < n || reports.iter().any(|r| r.status == JobStatus::Released);
    let failed = reports.iter().any(|r| r.status == JobStatus::Failed);
    let body = if bulk {
        json!(reports)
    } else {
        reports.first().map(|r| json!(r)).unwrap_or(Value::Null)
    };
    if released {
        let mut a = Answer::unavailable("shutting down; the job did not finish", RETRY_STOPPING);
        // One job has one report; a bulk submit has a list of them.
        let key = if bulk { "reports" } else { "report" };
        a.body = json!({ "error": "shutting down; the job did not finish", key: body });
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
            elapsed_ms: 0,
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
            o(|o| o.max_connections = 0)
                .unwrap()
                .contains("max_connections")
        );
        assert!(o(|o| o.max_header = 10).unwrap().contains("max_header"));
        assert!(
            o(|o| o.read_timeout = "0s".into())
                .unwrap()
                .contains("read_timeout")
        );
        assert!(
            o(|o| o.idle_timeout = "soon".into())
                .unwrap()
                .contains("idle_timeout")
        );
        assert!(
            o(|o| {
                o.token_env = Some("A".into());
                o.token_file = Some("b".into());
            })
            .unwrap()
            .contains("not both")
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/job/add", "POST", "/job/add").ok(),
            Some((false, true))
        );
        assert_eq!(
            route("/job/add", "POST", "/jobs?x=1&wait=false").ok(),
            Some((true, false))
        );
        assert_eq!(
            route("/job/add", "POST", "/job/add?wait=0").ok(),
            Some((false, false))
        );
        assert_eq!(
            route("/job/add", "GET", "/job/add").err().map(|a| a.status),
            Some(405)
        );
        assert_eq!(
            route("/job/add", "POST", "/job").err().map(|a| a.status),
            Some(404)
        );
    }

    proptest::proptest! {
        /// Any method and target: routed or refused with 404/405, never a panic.
        #[test]
        fn any_request_line_routes_without_panicking(
            method in proptest::prelude::any::<String>(),
            target in proptest::prelude::any::<String>(),
            tail in "[/?&=a-z0-9%]{0,40}",
        ) {
            for t in [target.clone(), format!("/job/add{tail}"), format!("/jobs?{tail}")] {
                match route("/job/add", &method, &t) {
                    Ok(_) => proptest::prop_assert_eq!(method.as_str(), "POST"),
                    Err(a) => proptest::prop_assert!(a.status == 404 || a.status == 405),
                }
            }
        }
    }
}
