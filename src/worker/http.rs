//! The `http` worker: a job that calls a URL, on `ureq` (blocking, no async
//! runtime, like the rest of goworker).
//!
//! Each pool thread owns one `ureq::Agent`, so keep-alive connections are
//! reused across the jobs that thread runs. Redirects are followed here,
//! not inside ureq, so that every hop is checked against `allow_hosts`
//! before any connection is made, and so that the limit is exact.
//!
//! Classification: 2xx succeeds; a status in `retry_on` (default 5xx and
//! 429), a timeout or a connection error is retryable; every other status,
//! a refused host, bad params and the redirect limit are final.

use super::{JobContext, PoolInfo, Worker, WorkerType};
use crate::error::PluginError;
use crate::job::{Job, Outcome};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::{Host, Url};

/// Total per-attempt limit when neither the job nor the pool sets `timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Response bytes read past the kept part so the connection can be reused;
/// a longer body is dropped with its connection.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Response bytes kept for the error message when output is not captured.
const SNIPPET: usize = 200;

/// Options of the `http` worker type.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpOptions {
    /// Hosts jobs may call: `host` (any port) or `host:port`; `*` allows any. Checked before connecting and on every redirect. Empty: nothing is called.
    pub(crate) allow_hosts: Vec<String>,
    /// Response statuses that are retried: numbers (`503`) or classes (`"5xx"`). Every other non-2xx status is final.
    pub(crate) retry_on: Vec<StatusMatch>,
    /// Redirects followed per attempt; reaching the limit is a final failure.
    pub(crate) max_redirects: u32,
    /// Limit on connecting (DNS, TCP, TLS); the attempt's `timeout` (default 60s) bounds every phase and is checked for the whole attempt.
    pub(crate) connect_timeout: String,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            allow_hosts: Vec::new(),
            retry_on: vec![StatusMatch::Class("5xx".into()), StatusMatch::Code(429)],
            max_redirects: 5,
            connect_timeout: "10s".into(),
        }
    }
}

/// One entry of `retry_on`: a status code or a class like `"5xx"`.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(untagged)]
pub(crate) enum StatusMatch {
    /// One status code.
    Code(u16),
    /// A class: `"4xx"` or `"5xx"`.
    Class(String),
}

/// The statuses that are retried, validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryOn {
    codes: Vec<u16>,
    classes: Vec<u16>,
}

impl RetryOn {
    pub(crate) fn parse(list: &[StatusMatch]) -> Result<RetryOn, String> {
        let mut r = RetryOn::default();
        for (i, m) in list.iter().enumerate() {
            match m {
                StatusMatch::Code(c) if (100..=599).contains(c) => r.codes.push(*c),
                StatusMatch::Code(c) => {
                    return Err(format!("retry_on[{i}]: {c} is not an HTTP status"));
                }
                StatusMatch::Class(s) => {
                    let b = s.as_bytes();
                    let ok = b.len() == 3
                        && (b'1'..=b'5').contains(&b[0])
                        && b[1..].eq_ignore_ascii_case(b"xx");
                    if !ok {
                        return Err(format!(
                            "retry_on[{i}]: {s:?} is neither a status nor a class like \"5xx\""
                        ));
                    }
                    r.classes.push(u16::from(b[0] - b'0'));
                }
            }
        }
        Ok(r)
    }

    pub(crate) fn contains(&self, status: u16) -> bool {
        self.codes.contains(&status) || self.classes.contains(&(status / 100))
    }
}

/// One `allow_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowEntry {
    Any,
    Host(Host<String>, Option<u16>),
}

/// A validated host allow list.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowHosts {
    entries: Vec<AllowEntry>,
}

impl AllowHosts {
    pub(crate) fn parse(list: &[String]) -> Result<AllowHosts, String> {
        let mut entries = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let entry =
                parse_allow_entry(e.trim()).map_err(|m| format!("allow_hosts[{i}]: {m}"))?;
            entries.push(entry);
        }
        Ok(AllowHosts { entries })
    }

    /// Whether `url`'s host (and effective port) may be called.
    pub(crate) fn allows(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_owned();
        self.entries.iter().any(|e| match e {
            AllowEntry::Any => true,
            AllowEntry::Host(h, p) => *h == host && p.is_none_or(|p| p == port),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_allow_entry(e: &str) -> Result<AllowEntry, String> {
    if e == "*" {
        return Ok(AllowEntry::Any);
    }
    if e.is_empty() {
        return Err("empty host".into());
    }
    // `[v6]:port`, `[v6]`, bare `v6` (several colons), `host:port`, `host`.
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{e:?}: missing `]`"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{e:?}: bad port"))?,
            ),
        };
        (format!("[{h}]"), port)
    } else if e.matches(':').count() > 1 {
        (format!("[{e}]"), None)
    } else {
        match e.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (e.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("{e:?}: bad port {p:?}"))?,
        ),
        None => None,
    };
    let host = Host::parse(&host).map_err(|err| format!("{e:?}: {err}"))?;
    Ok(AllowEntry::Host(host, port))
}

/// Parses a duration option such as `"10s"`.
pub(crate) fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{key}: {text:?}: {e}"))
}

/// The `http` worker type: a validated allow list and client settings.
#[derive(Debug)]
pub(crate) struct Http {
    allow: Arc<AllowHosts>,
    retry_on: Arc<RetryOn>,
    max_redirects: u32,
    connect_timeout: Duration,
    timeout: Duration,
}

impl WorkerType for Http {
    type Options = HttpOptions;
    const TYPE: &'static str = "http";
    const DESCRIPTION: &'static str =
        "calls a URL on an allow-listed host; 2xx succeeds, 5xx/429/timeouts are retried";

    fn from_options(o: HttpOptions, pool: &PoolInfo) -> Result<Http, PluginError> {
        let allow = AllowHosts::parse(&o.allow_hosts)?;
        if allow.is_empty() {
            log::warn!(
                "http pool {}: allow_hosts is empty, every job will be refused",
                pool.name
            );
        }
        Ok(Http {
            allow: Arc::new(allow),
            retry_on: Arc::new(RetryOn::parse(&o.retry_on)?),
            max_redirects: o.max_redirects,
            connect_timeout: parse_duration("connect_timeout", &o.connect_timeout)?,
            timeout: pool.timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(HttpWorker {
            agent: agent(self.connect_timeout, self.timeout),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            allow: self.allow.clone(),
            retry_on: self.retry_on.clone(),
            max_redirects: self.max_redirects,
        })
    }
}

/// Sets every phase timeout of a ureq config builder (agent or request
/// scope: ureq seals the scope trait, so a function cannot take both).
macro_rules! phases {
    ($b:expr, $connect:expr, $t:expr) => {{
        let t = Some($t);
        $b.timeout_connect(Some($connect.min($t)))
            .timeout_send_request(t)
            .timeout_send_body(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
    }};
}

/// A blocking client that follows no redirects itself and returns every
/// status as a response.
///
/// `timeout` bounds each phase (connecting, sending, waiting for the
/// response, reading the body); the worker checks the attempt's deadline
/// as a whole between phases and body reads. ureq's single global timeout
/// would do that too, but it costs ~60 µs a request on loopback (measured;
/// see BENCHMARKS.md), more than the rest of the request.
pub(crate) fn agent(connect_timeout: Duration, timeout: Duration) -> ureq::Agent {
    phases!(ureq::Agent::config_builder(), connect_timeout, timeout)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("goworker/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `params` of an `http` job.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpParams {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    url_params: serde_json::Map<String, Value>,
}

struct HttpWorker {
    agent: ureq::Agent,
    connect_timeout: Duration,
    timeout: Duration,
    allow: Arc<AllowHosts>,
    retry_on: Arc<RetryOn>,
    max_redirects: u32,
}

/// One request, as it is sent on each hop.
struct Call {
    method: ureq::http::Method,
    url: Url,
    headers: Vec<(ureq::http::HeaderName, ureq::http::HeaderValue)>,
    body: Option<Vec<u8>>,
}

impl Worker for HttpWorker {
    fn run(&mut self, job: &Job, ctx: &JobContext) -> Outcome {
        let call = match build_call(job) {
            Ok(c) => c,
            Err(m) => return Outcome::fatal(m),
        };
        let timeout = ctx.timeout().unwrap_or(self.timeout);
        let keep = if job.capture_output {
            ctx.capture_limit()
        } else {
            SNIPPET
        };
        self.perform(call, timeout, keep, &|| ctx.is_aborted())
            .into_outcome(&self.retry_on, job.capture_output)
    }
}

/// How an attempt ended, before classification.
enum Ended {
    Response {
        status: u16,
        reason: &'static str,
        body: Vec<u8>,
        truncated: bool,
    },
    Refused(String),
    Fatal(String),
    Retryable(String),
}

impl Ended {
    fn into_outcome(self, retry_on: &RetryOn, capture: bool) -> Outcome {
        match self {
            Ended::Response {
                status,
                reason,
                body,
                truncated,
            } => {
                let mut text = String::from_utf8_lossy(&body).into_owned();
                if truncated && capture {
                    text.push_str("\n[output truncated]");
                }
                if (200..300).contains(&status) {
                    return Outcome::success().with_output(capture.then_some(text));
                }
                let snippet: String = text.chars().take(SNIPPET).collect();
                let snippet = snippet.lines().next().unwrap_or("").trim().to_string();
                let mut message = format!("HTTP {status} {reason}");
                if !snippet.is_empty() {
                    message.push_str(": ");
                    message.push_str(&snippet);
                }
                let outcome = if retry_on.contains(status) {
                    Outcome::failed(message)
                } else {
                    Outcome::fatal(message)
                };
                outcome.with_output(capture.then_some(text))
            }
            Ended::Refused(m) | Ended::Fatal(m) => Outcome::fatal(m),
            Ended::Retryable(m) => Outcome::failed(m),
        }
    }
}

fn build_call(job: &Job) -> Result<Call, String> {
    let p =
        HttpParams::deserialize(&job.params).map_err(|e| format!("invalid http params: {e}"))?;
    let method = p.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let method = ureq::http::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid http params: method {method:?}"))?;
    let mut url = Url::parse(&p.url).map_err(|e| format!("invalid url {:?}: {e}", p.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid url {:?}: scheme must be http or https",
            p.url
        ));
    }
    if !p.url_params.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in &p.url_params {
            match v {
                Value::Array(items) => {
                    for item in items {
                        q.append_pair(k, &param_text(k, item)?);
                    }
                }
                other => {
                    q.append_pair(k, &param_text(k, other)?);
                }
            }
        }
    }
    let mut headers = Vec::with_capacity(p.headers.len() + 1);
    let mut has_content_type = false;
    for (k, v) in &p.headers {
        let name = ureq::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid http params: header name {k:?}"))?;
        // The value is not echoed: headers may carry credentials.
        let value = ureq::http::HeaderValue::from_str(v)
            .map_err(|_| format!("invalid http params: value of header {k:?}"))?;
        has_content_type |= name == ureq::http::header::CONTENT_TYPE;
        headers.push((name, value));
    }
    let body = match p.body {
        Value::Null => None,
        Value::String(s) => Some(s.into_bytes()),
        other => {
            if !has_content_type {
                headers.push((
                    ureq::http::header::CONTENT_TYPE,
                    ureq::http::HeaderValue::from_static("application/json"),
                ));
            }
            Some(serde_json::to_vec(&other).map_err(|e| format!("invalid http params: {e}"))?)
        }
    };
    Ok(Call {
        method,
        url,
        headers,
        body,
    })
}

fn param_text(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!(
            "invalid http params: url_params.{key}: expected a string, number, boolean or list of them"
        )),
    }
}

/// `host:port` for messages.
fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.as_str().to_string(),
    }
}

impl HttpWorker {
    fn perform(
        &mut self,
        mut call: Call,
        timeout: Duration,
        keep: usize,
        aborted: &dyn Fn() -> bool,
    ) -> Ended {
        let deadline = Instant::now() + timeout;
        let mut hops = 0u32;
        loop {
            if !self.allow.allows(&call.url) {
                return Ended::Refused(format!(
                    "host not allowed: {} is not in allow_hosts",
                    host_port(&call.url)
                ));
            }
            if aborted() {
                return Ended::Retryable("stopped at shutdown".into());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return timed_out(timeout);
            }
            // The agent's limit is the pool's: the first hop of a job without
            // its own timeout needs no per-request config.
            let limit = (timeout != self.timeout || hops > 0).then_some(remaining);
            let mut response = match send(&self.agent, &call, self.connect_timeout, limit) {
                Ok(r) => r,
                Err(e) => return classify(e, &call.url, timeout),
            };
            if Instant::now() >= deadline {
                return timed_out(timeout);
            }
            let status = response.status();
            let location = status
                .is_redirection()
                .then(|| response.headers().get(ureq::http::header::LOCATION))
                .flatten()
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            if let Some(location) = location {
                drain(response.body_mut(), deadline);
                if hops >= self.max_redirects {
                    return Ended::Fatal(format!(
                        "too many redirects: stopped after {hops} (max_redirects {}) at {}",
                        self.max_redirects,
                        host_port(&call.url)
                    ));
                }
                let next = match call.url.join(&location) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                    _ => {
                        return Ended::Fatal(format!(
                            "HTTP {}: unusable redirect location {location:?}",
                            status.as_u16()
                        ));
                    }
                };
                redirect(&mut call, status.as_u16(), next);
                hops += 1;
                continue;
            }
            let (body, truncated) = match read_body(response.body_mut(), keep, deadline) {
                Ok(b) => b,
                Err(e) => return classify(e, &call.url, timeout),
            };
            return Ended::Response {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or(""),
                body,
                truncated,
            };
        }
    }
}

/// Moves `call` to the redirect target, as browsers and ureq do: 303 (and
/// 301/302 after a POST) turn into a bodyless GET; 307/308 keep both.
fn redirect(call: &mut Call, status: u16, next: Url) {
    use ureq::http::Method;
    let to_get = status == 303 || (matches!(status, 301 | 302) && call.method == Method::POST);
    if to_get && call.method != Method::HEAD {
        call.method = Method::GET;
        call.body = None;
        call.headers
            .retain(|(n, _)| n != ureq::http::header::CONTENT_TYPE);
    }
    if call.url.origin() != next.origin() {
        // Credentials are for the host the job named, not the one it bounced to.
        call.headers.retain(|(n, _)| {
            n != ureq::http::header::AUTHORIZATION && n != ureq::http::header::COOKIE
        });
    }
    call.url = next;
}

fn send(
    agent: &ureq::Agent,
    call: &Call,
    connect: Duration,
    limit: Option<Duration>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut builder = ureq::http::Request::builder()
        .method(call.method.clone())
        .uri(call.url.as_str());
    for (k, v) in &call.headers {
        builder = builder.header(k, v);
    }
    match &call.body {
        Some(body) => {
            let req = builder.body(body.as_slice())?;
            match limit {
                Some(t) => agent.run(phases!(agent.configure_request(req), connect, t).build()),
                None => agent.run(req),
            }
        }
        None => {
            let req = builder.body(())?;
            match limit {
                Some(t) => agent.run(phases!(agent.configure_request(req), connect, t).build()),
                None => agent.run(req),
            }
        }
    }
}

/// Reads up to `keep` bytes, then drains (bounded) so the connection can go
/// back to the agent's pool; gives up at the attempt's deadline.
fn read_body(
    body: &mut ureq::Body,
    keep: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, bool), ureq::Error> {
    let mut reader = body.as_reader();
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut drained = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((kept, drained > 0)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ureq::Error::from(e)),
        };
        let room = keep.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
        drained += (n - room) as u64;
        if drained > DRAIN_LIMIT {
            // Too long to drain: the connection is dropped instead.
            return Ok((kept, true));
        }
        if Instant::now() >= deadline {
            return Err(ureq::Error::Timeout(ureq::Timeout::Global));
        }
    }
}

fn drain(body: &mut ureq::Body, deadline: Instant) {
    let _ = read_body(body, 0, deadline);
}

fn timed_out(timeout: Duration) -> Ended {
    Ended::Retryable(format!(
        "timed out after {}",
        humantime::format_duration(timeout)
    ))
}

/// Client errors: timeouts and connection trouble may pass, a request that
/// cannot be built never will.
fn classify(e: ureq::Error, url: &Url, timeout: Duration) -> Ended {
    let target = host_port(url);
    match e {
        ureq::Error::Timeout(_) => timed_out(timeout),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => timed_out(timeout),
        ureq::Error::Io(io) => Ended::Retryable(format!("{target}: {io}")),
        ureq::Error::HostNotFound => Ended::Retryable(format!("{target}: host not found")),
        ureq::Error::ConnectionFailed => Ended::Retryable(format!("{target}: connection failed")),
        ureq::Error::BadUri(m) => Ended::Fatal(format!("invalid url: {m}")),
        ureq::Error::Http(h) => Ended::Fatal(format!("invalid request: {h}")),
        other => Ended::Retryable(format!("{target}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_host_and_port() {
        let a = AllowHosts::parse(&[
            "Example.COM".into(),
            "127.0.0.1:8080".into(),
            "[::1]:80".into(),
        ])
        .unwrap();
        let ok = |u: &str| a.allows(&Url::parse(u).unwrap());
        assert!(ok("https://example.com/x"));
        assert!(ok("http://EXAMPLE.com:9999/"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://127.0.0.1:8081/"));
        assert!(!ok("http://127.0.0.1/"));
        assert!(ok("http://[::1]/"));
        assert!(!ok("https://[::1]/"));
        assert!(!ok("http://example.org/"));
        assert!(!AllowHosts::default().allows(&Url::parse("http://a/").unwrap()));
        let any = AllowHosts::parse(&["*".into()]).unwrap();
        assert!(any.allows(&Url::parse("http://anything:1/").unwrap()));
        assert!(AllowHosts::parse(&["host:notaport".into()]).is_err());
        assert!(AllowHosts::parse(&["".into()]).is_err());
    }

    #[test]
    fn retry_on_codes_and_classes() {
        let r = RetryOn::parse(&HttpOptions::default().retry_on).unwrap();
        assert!(r.contains(500) && r.contains(503) && r.contains(429));
        assert!(!r.contains(404) && !r.contains(200) && !r.contains(408));
        assert!(RetryOn::parse(&[StatusMatch::Class("6xx".into())]).is_err());
        assert!(RetryOn::parse(&[StatusMatch::Code(42)]).is_err());
    }

    #[test]
    fn bad_params_are_final() {
        let info = PoolInfo {
            name: "http".into(),
            count: 1,
            timeout: None,
            secret_env: Default::default(),
        };
        let o = HttpOptions {
            allow_hosts: vec!["*".into()],
            ..HttpOptions::default()
        };
        let mut w = Http::from_options(o, &info).unwrap().new_worker();
        let ctx = JobContext::new(None, 1024);
        for (params, want) in [
            (serde_json::json!({"url": "ftp://x/"}), "scheme"),
            (serde_json::json!({"url": "not a url"}), "invalid url"),
            (serde_json::json!({"method": "GET"}), "invalid http params"),
            (
                serde_json::json!({"url": "http://x/", "method": "BAD METHOD"}),
                "method",
            ),
            (
                serde_json::json!({"url": "http://x/", "headers": {"bad name": "v"}}),
                "header name",
            ),
            (
                serde_json::json!({"url": "http://x/", "url_params": {"a": {"b": 1}}}),
                "url_params.a",
            ),
        ] {
            let out = w.run(&Job::new("http", params.clone()), &ctx);
            assert!(
                matches!(&out.result, Err(f) if !f.retryable && f.message.contains(want)),
                "{params}: {out:?}"
            );
        }
    }
}
