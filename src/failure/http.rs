//! The `http` failure handler: POSTs each failure record as JSON to a
//! webhook (a chat bridge, an incident tool), with its own retries.
//!
//! Where it may connect: the webhook URL is written by the operator in the
//! config, not by a job, so it is its own allow list. The handler calls
//! exactly that URL and follows no redirects (a 3xx is a failure), so a
//! record never travels to a host the operator did not name. Header values
//! (tokens) are never logged.

use super::{FailureHandler, FailureHandlerType, HandlerContext};
use crate::backoff::{Backoff, Jitter};
use crate::error::PluginError;
use crate::job::FailureRecord;
use crate::worker::http::{agent, parse_duration};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

/// Options of the `http` failure handler.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpHandlerOptions {
    /// Webhook URL (http or https) that receives each record as a JSON POST. Required.
    pub(crate) url: Option<String>,
    /// Extra request headers, e.g. Authorization; values are never logged.
    pub(crate) headers: BTreeMap<String, String>,
    /// Limit on each phase of a POST: connecting, sending, waiting for and reading the response.
    pub(crate) timeout: crate::DurationValue,
    /// POSTs retried after the first fails with 408, 429, 5xx, a timeout or a connection error.
    pub(crate) retries: u32,
    /// Wait before the first retry; doubles each retry, up to 30s.
    pub(crate) retry_delay: crate::DurationValue,
}

impl Default for HttpHandlerOptions {
    fn default() -> HttpHandlerOptions {
        HttpHandlerOptions {
            url: None,
            headers: BTreeMap::new(),
            timeout: "10s".into(),
            retries: 3,
            retry_delay: "500ms".into(),
        }
    }
}

impl FailureHandlerType for HttpHandlerOptions {
    const TYPE: &'static str = "http";
    const DESCRIPTION: &'static str =
        "POSTs each failure record as JSON to a webhook, with retries; follows no redirects";

    fn build(self, _name: &str) -> Result<Box<dyn FailureHandler>, PluginError> {
        let url = self.url.ok_or("url: required")?;
        let parsed = url::Url::parse(&url).map_err(|e| format!("url: {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(PluginError::at(
                "url",
                format!("{url:?}: must be an http or https URL with a host"),
            ));
        }
        let mut headers = Vec::new();
        for k in self.headers.keys() {
            ureq::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers.{k}: invalid header name"))?;
        }
        for (k, v) in self.headers {
            ureq::http::HeaderValue::from_str(&v)
                .map_err(|_| format!("headers.{k}: invalid header value"))?;
            headers.push((k, v));
        }
        let timeout = parse_duration("timeout", &self.timeout)?;
        let delay = parse_duration("retry_delay", &self.retry_delay)?;
        Ok(Box::new(HttpHandler {
            agent: agent(timeout, timeout),
            url,
            headers,
            retries: self.retries,
            backoff: Backoff {
                base: delay,
                max: Duration::from_secs(30).max(delay),
                jitter: Jitter::None,
            },
        }))
    }
}

struct HttpHandler {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    retries: u32,
    backoff: Backoff,
}

/// One POST's result: `Err((message, worth retrying))`.
type Attempt = Result<(), (String, bool)>;

impl HttpHandler {
    /// One POST; `left` is what remains of the shutdown deadline, if any.
    fn post(&self, body: &[u8], left: Option<Duration>) -> Attempt {
        let mut req = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(left) = left {
            req = req.config().timeout_global(Some(left)).build();
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Err(("timed out".into(), true)),
            Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_))) => {
                return Err((e.to_string(), false));
            }
            Err(e) => return Err((e.to_string(), true)),
        };
        let status = resp.status().as_u16();
        // Read a little of the body: for the message, and to reuse the connection.
        let mut text = Vec::new();
        let _ = resp
            .body_mut()
            .as_reader()
            .take(64 * 1024)
            .read_to_end(&mut text);
        if (200..300).contains(&status) {
            return Ok(());
        }
        let snippet: String = String::from_utf8_lossy(&text).chars().take(200).collect();
        let retry = status == 408 || status == 429 || status >= 500;
        Err((
            format!("HTTP {status}: {}", snippet.lines().next().unwrap_or("")),
            retry,
        ))
    }
}

impl FailureHandler for HttpHandler {
    fn handle(&mut self, record: &FailureRecord) -> Result<(), String> {
        self.handle_within(record, &HandlerContext::default())
    }

    fn handle_within(
        &mut self,
        record: &FailureRecord,
        ctx: &HandlerContext,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let mut attempt = 1;
        loop {
            let result = match ctx.remaining() {
                Some(left) if left.is_zero() => Err(("shutdown deadline passed".into(), false)),
                left => self.post(&body, left),
            };
            match result {
                Ok(()) => return Ok(()),
                Err((m, retry)) if retry && attempt <= self.retries && !ctx.is_aborted() => {
                    let mut wait = self.backoff.cap(attempt);
                    if let Some(left) = ctx.remaining() {
                        wait = wait.min(left);
                    }
                    log::warn!(
                        "http failure handler: POST {} attempt {attempt} failed: {m}; retry in {wait:?}",
                        self.url
                    );
                    ctx.sleep(wait);
                    attempt += 1;
                }
                Err((m, _)) => {
                    return Err(format!(
                        "POST {}: gave up after {attempt} attempt(s): {m}",
                        self.url
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let build = |o: HttpHandlerOptions| o.build("h").err().map(|e| e.to_string());
        assert_eq!(
            build(HttpHandlerOptions::default()).as_deref(),
            Some("url: required")
        );
        let with_url = |u: &str| HttpHandlerOptions {
            url: Some(u.into()),
            ..HttpHandlerOptions::default()
        };
        assert!(
            build(with_url("ftp://x/"))
                .unwrap()
                .contains("http or https")
        );
        assert!(build(with_url("nope")).unwrap().starts_with("url:"));
        assert!(build(with_url("http://127.0.0.1:1/hook")).is_none());
        let mut o = with_url("http://127.0.0.1:1/");
        o.timeout = "soon".into();
        assert!(build(o).unwrap().starts_with("timeout:"));
        let mut o = with_url("http://127.0.0.1:1/");
        o.headers.insert("bad name".into(), "secret".into());
        let err = build(o).unwrap();
        assert!(err.starts_with("headers.bad name") && !err.contains("secret"));
    }
}
