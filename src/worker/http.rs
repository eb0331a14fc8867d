//! The `http` worker: a job that calls a URL, on `ureq` (blocking, no async
//! runtime, like the rest of goworker).
//!
//! Each pool thread owns one `ureq::Agent`, so keep-alive connections are
//! reused across the jobs that thread runs. Redirects are followed here,
//! not inside ureq, so that every hop is checked against `allow_hosts`
//! before any connection is made, and so that the limit is exact.
//!
//! Names are checked twice: the host against `allow_hosts`, then every
//! address it resolves to against a deny list (loopback, private,
//! link-local, …) unless `allow_hosts` names that address explicitly (an
//! IP or a CIDR). The check runs in the agent's resolver, so ureq connects
//! to exactly the addresses that passed: a name is resolved once per
//! request, never again between the check and the connection (DNS
//! rebinding).
//!
//! Classification: 2xx succeeds; a status in `retry_on` (default 5xx and
//! 429), a timeout or a connection error is retryable; every other status,
//! a refused host, bad params and the redirect limit are final.

use super::{JobContext, PoolInfo, Worker, WorkerType};
use crate::DurationValue;
use crate::error::PluginError;
use crate::job::{Job, Outcome};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    /// Hosts jobs may call: `host` (any port), `host:port`, an IP network `10.0.0.0/8`, or `*` (any host). Checked before connecting and on every redirect. Loopback, private, link-local and other internal addresses are refused unless named here as an IP or CIDR. Empty: nothing is called.
    pub(crate) allow_hosts: Vec<String>,
    /// Response statuses that are retried: numbers (`503`) or classes (`"5xx"`). Every other non-2xx status is final.
    pub(crate) retry_on: Vec<StatusMatch>,
    /// Redirects followed per attempt; reaching the limit is a final failure.
    pub(crate) max_redirects: u32,
    /// Limit on connecting (DNS, TCP, TLS); the attempt's `timeout` (default 60s) bounds every phase and is checked for the whole attempt.
    pub(crate) connect_timeout: DurationValue,
    /// Request headers dropped when a redirect leaves the job's origin, beside Authorization, Cookie and Proxy-Authorization (always dropped).
    pub(crate) sensitive_headers: Vec<String>,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            allow_hosts: Vec::new(),
            retry_on: vec![StatusMatch::Class("5xx".into()), StatusMatch::Code(429)],
            max_redirects: 5,
            connect_timeout: "10s".into(),
            sensitive_headers: Vec::new(),
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
    Net(Net),
}

/// An IP network: `addr/prefix`, `addr` already masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(text: &str) -> Result<Net, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: not a CIDR"))?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: bad network address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: bad prefix length (0 to {max})"))?;
        Ok(Net {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
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
        let ip = match host {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        };
        let host = host.to_owned();
        self.entries.iter().any(|e| match e {
            AllowEntry::Any => true,
            AllowEntry::Host(h, p) => *h == host && p.is_none_or(|p| p == port),
            AllowEntry::Net(n) => ip.is_some_and(|ip| n.contains(ip.to_canonical())),
        })
    }

    /// Whether an entry names this address itself (an IP, with the port if
    /// it gives one, or a network holding it): only then may an internal
    /// address be called.
    pub(crate) fn names_address(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.entries.iter().any(|e| match e {
            AllowEntry::Any => false,
            AllowEntry::Host(Host::Ipv4(a), p) => {
                ip == IpAddr::V4(*a) && p.is_none_or(|p| p == addr.port())
            }
            AllowEntry::Host(Host::Ipv6(a), p) => {
                ip == IpAddr::V6(*a).to_canonical() && p.is_none_or(|p| p == addr.port())
            }
            AllowEntry::Host(Host::Domain(_), _) => false,
            AllowEntry::Net(n) => n.contains(ip),
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
    if e.contains('/') {
        return Net::parse(e).map(AllowEntry::Net);
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

/// Why an address is internal (not for jobs unless named explicitly), or
/// `None` for a public address. IPv4 addresses embedded in IPv6 (mapped,
/// compatible, NAT64, 6to4) are judged as the IPv4 address.
pub(crate) fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => internal_v4(a),
        IpAddr::V6(a) => internal_v6(a),
    }
}

fn internal_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [b0, b1, b2, _] = a.octets();
    Some(match (b0, b1, b2) {
        (0, ..) => "unspecified",
        (127, ..) => "loopback",
        (10, ..) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved or broadcast",
        _ => return None,
    })
}

fn internal_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let embedded = |hi: usize| Ipv4Addr::from((u32::from(s[hi]) << 16) | u32::from(s[hi + 1]));
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    match s[0] {
        // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::a.b.c.d (NAT64).
        0 if s[1..6].iter().all(|x| *x == 0) => internal_v4(embedded(6)).or(Some("reserved")),
        0x64 if s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) => internal_v4(embedded(6)),
        0x2002 => internal_v4(embedded(1)), // 6to4
        0x2001 if s[1] == 0x0db8 => Some("documentation"),
        0x0100 if s[1..4].iter().all(|x| *x == 0) => Some("discard-only"),
        x if x & 0xfe00 == 0xfc00 => Some("private (unique local)"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// The `http` worker's resolver: resolves as ureq would (IP literals
/// without a lookup), then keeps only the addresses jobs may reach. ureq
/// connects to what this returns, so nothing is resolved twice.
#[derive(Debug)]
struct CheckedResolver {
    allow: Arc<AllowHosts>,
    inner: ureq::unversioned::resolver::DefaultResolver,
}

/// Why the resolver refused every address of a host: a final failure.
#[derive(Debug)]
struct AddressRefused(String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

impl ureq::unversioned::resolver::Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("");
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let found = match literal {
            Some(ip) => {
                let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                let mut one = self.empty();
                one.push(SocketAddr::new(ip, port));
                one
            }
            None => self.inner.resolve(uri, config, timeout)?,
        };
        let mut kept = self.empty();
        let mut refused = None;
        for &addr in &found {
            match internal(addr.ip()) {
                Some(why) if !self.allow.names_address(addr) => {
                    refused.get_or_insert((addr, why));
                }
                _ => kept.push(addr),
            }
        }
        match (kept.is_empty(), refused) {
            (true, Some((addr, why))) => {
                let port = addr.port();
                let name = if literal.is_some() {
                    String::new()
                } else {
                    format!("{host}:{port} resolves to ")
                };
                Err(ureq::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    AddressRefused(format!(
                        "address not allowed: {name}{} ({why}); name it as an IP or CIDR in allow_hosts to call it",
                        SocketAddr::new(addr.ip(), port)
                    )),
                )))
            }
            (true, None) => Err(ureq::Error::HostNotFound),
            (false, _) => Ok(kept),
        }
    }
}

/// Parses a duration option such as `"10s"`.
pub(crate) fn parse_duration(key: &str, v: &DurationValue) -> Result<Duration, PluginError> {
    v.parse().map_err(|e| PluginError::at(key, e))
}

/// The `http` worker type: a validated allow list and client settings.
#[derive(Debug)]
pub(crate) struct Http {
    allow: Arc<AllowHosts>,
    retry_on: Arc<RetryOn>,
    sensitive: Arc<Vec<ureq::http::HeaderName>>,
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
        let mut sensitive = vec![
            ureq::http::header::AUTHORIZATION,
            ureq::http::header::COOKIE,
            ureq::http::header::PROXY_AUTHORIZATION,
        ];
        for (i, h) in o.sensitive_headers.iter().enumerate() {
            let name = ureq::http::HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| format!("sensitive_headers[{i}]: {h:?} is not a header name"))?;
            if !sensitive.contains(&name) {
                sensitive.push(name);
            }
        }
        Ok(Http {
            allow: Arc::new(allow),
            retry_on: Arc::new(RetryOn::parse(&o.retry_on)?),
            sensitive: Arc::new(sensitive),
            max_redirects: o.max_redirects,
            connect_timeout: parse_duration("connect_timeout", &o.connect_timeout)?,
            timeout: pool.timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(HttpWorker {
            agent: checked_agent(self.connect_timeout, self.timeout, self.allow.clone()),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            allow: self.allow.clone(),
            retry_on: self.retry_on.clone(),
            sensitive: self.sensitive.clone(),
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
    config(connect_timeout, timeout).build().into()
}

fn config(
    connect_timeout: Duration,
    timeout: Duration,
) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    phases!(ureq::Agent::config_builder(), connect_timeout, timeout)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("goworker/", env!("CARGO_PKG_VERSION")))
}

/// [`agent`] for jobs: it connects only to addresses that pass the
/// [`CheckedResolver`], and ignores proxy variables (a proxy would resolve
/// names where they cannot be checked).
fn checked_agent(
    connect_timeout: Duration,
    timeout: Duration,
    allow: Arc<AllowHosts>,
) -> ureq::Agent {
    ureq::Agent::with_parts(
        config(connect_timeout, timeout).proxy(None).build(),
        ureq::unversioned::transport::DefaultConnector::default(),
        CheckedResolver {
            allow,
            inner: ureq::unversioned::resolver::DefaultResolver::default(),
        },
    )
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
    sensitive: Arc<Vec<ureq::http::HeaderName>>,
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
                redirect(&mut call, status.as_u16(), next, &self.sensitive);
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
fn redirect(call: &mut Call, status: u16, next: Url, sensitive: &[ureq::http::HeaderName]) {
    use ureq::http::Method;
    let to_get = status == 303 || (matches!(status, 301 | 302) && call.method == Method::POST);
    if to_get && call.method != Method::HEAD {
        call.method = Method::GET;
        call.body = None;
        call.headers
            .retain(|(n, _)| n != ureq::http::header::CONTENT_TYPE);
    }
    if call.url.origin() != next.origin() {
        // Credentials are for the origin the job named, not the one it bounced to.
        call.headers.retain(|(n, _)| !sensitive.contains(n));
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
        ureq::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<AddressRefused>()) => {
            Ended::Refused(io.to_string())
        }
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
    fn internal_addresses_and_their_embedded_forms() {
        let why = |a: &str| internal(a.parse().unwrap());
        for (addr, want) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("fd12:3456::1", "private (unique local)"),
            ("fc00::1", "private (unique local)"),
            ("169.254.169.254", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("192.0.2.1", "documentation"),
            ("2001:db8::1", "documentation"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved or broadcast"),
        ] {
            assert_eq!(why(addr), Some(want), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert_eq!(why(public), None, "{public}");
        }
    }

    #[test]
    fn only_ip_and_cidr_entries_name_an_address() {
        let a = AllowHosts::parse(&[
            "*".into(),
            "localhost".into(),
            "127.0.0.1:8080".into(),
            "10.0.0.0/8".into(),
            "[::1]".into(),
            "fd00::/8".into(),
        ])
        .unwrap();
        let named = |s: &str| a.names_address(s.parse().unwrap());
        assert!(named("127.0.0.1:8080"));
        assert!(named("[::ffff:127.0.0.1]:8080"));
        assert!(!named("127.0.0.1:8081"));
        assert!(named("10.200.3.4:1"));
        assert!(!named("11.0.0.1:1"));
        assert!(named("[::1]:9"));
        assert!(named("[fd12::1]:443"));
        assert!(!named("[fe80::1]:443"));
        let only_names = AllowHosts::parse(&["*".into(), "localhost".into()]).unwrap();
        assert!(!only_names.names_address("127.0.0.1:80".parse().unwrap()));
        // A CIDR allows IP-literal URLs inside it, at any port.
        let nets = AllowHosts::parse(&["127.0.0.0/8".into()]).unwrap();
        assert!(nets.allows(&Url::parse("http://127.3.2.1:9/").unwrap()));
        assert!(!nets.allows(&Url::parse("http://localhost:9/").unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "nope/8", "10.0.0.0/x"] {
            assert!(AllowHosts::parse(&[bad.into()]).is_err(), "{bad}");
        }
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
