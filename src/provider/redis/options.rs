//! Options as written in YAML, then validated into [`Settings`].

use std::time::Duration;

/// Options of the `redis` provider type.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedisOptions {
    /// Server URL, `redis://[user:password@]host:port/db`, or `rediss://` for TLS. Default `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Environment variable holding the password (replaces one in the URL). Default: none.
    pub password_env: Option<String>,
    /// Queues (lists) served in priority order, first = highest. Default `[job_list]`.
    pub queues: Vec<String>,
    /// Prepended to every key name, to keep several applications apart on one Redis: with `app1:`, the queue `job_list` is the list `app1:job_list` and its keys `app1:job_list:dead`, …; producers push to the prefixed name. At most 256 bytes. Default: none.
    pub prefix: String,
    /// Connections in the pool (one each for fetch, acks and upkeep, plus spares); at least 3. Default 4.
    pub pool_size: u32,
    /// Most jobs moved in one round trip when a queue is deep; 1 to 100000. Default 1000.
    pub fetch_batch: usize,
    /// Most payload bytes moved in one round trip (one larger job is still taken alone). Default 4194304 (4 MiB).
    pub fetch_max_bytes: u64,
    /// How often this process records that it is alive; at most 24h. Default `2s`.
    pub heartbeat: crate::DurationValue,
    /// A consumer silent this long is dead: its jobs go back to the queue; at most 24h. Default `30s`.
    pub orphan_after: crate::DurationValue,
    /// Jobs whose consumer died while holding them more than this many times are dead-lettered as poison pills. Default 3.
    pub max_recoveries: u32,
    /// Jobs per second taken from this provider (GoWorker's `target`); 0 = unlimited. Default 0.
    pub rate_limit: f64,
    /// Dead-letter records kept per queue; older ones are trimmed. Default 10000.
    pub dead_letter_max: usize,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            url: "redis://127.0.0.1:6379/0".into(),
            password_env: None,
            queues: vec!["job_list".into()],
            prefix: String::new(),
            pool_size: 4,
            fetch_batch: 1000,
            fetch_max_bytes: 4 << 20,
            heartbeat: "2s".into(),
            orphan_after: "30s".into(),
            max_recoveries: 3,
            rate_limit: 0.0,
            dead_letter_max: 10_000,
        }
    }
}

/// Validated options.
#[derive(Debug)]
pub(super) struct Settings {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) redacted_url: String,
    pub(super) password_env: Option<String>,
    pub(super) queues: Vec<String>,
    pub(super) pool_size: u32,
    pub(super) fetch_batch: usize,
    pub(super) fetch_max_bytes: u64,
    pub(super) heartbeat: Duration,
    pub(super) orphan_after: Duration,
    pub(super) max_recoveries: u32,
    pub(super) rate_limit: f64,
    pub(super) dead_letter_max: usize,
}

/// Most jobs in one fetch: bounds the script's work and its reply.
const MAX_FETCH_BATCH: usize = 100_000;

/// Longest `heartbeat` or `orphan_after`: keeps every time computed from
/// them far from overflowing.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

fn duration(key: &str, v: &crate::DurationValue) -> Result<Duration, String> {
    let d = v.parse().map_err(|e| format!("{key}: {e}"))?;
    if d.is_zero() || d > MAX_PERIOD {
        return Err(format!("{key}: more than 0 and at most 24h"));
    }
    Ok(d)
}

impl Settings {
    pub(super) fn from_options(name: &str, o: RedisOptions) -> Result<Settings, String> {
        let url = o.url.trim().to_string();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err("url: must start with redis:// or rediss://".into());
        }
        if o.queues.is_empty() {
            return Err("queues: at least one queue".into());
        }
        for (i, q) in o.queues.iter().enumerate() {
            if q.is_empty() {
                return Err(format!("queues[{i}]: empty name"));
            }
            if o.queues[..i].contains(q) {
                return Err(format!("queues[{i}]: {q:?} listed twice"));
            }
        }
        if o.prefix.len() > 256 {
            return Err("prefix: at most 256 bytes".into());
        }
        if o.pool_size < 3 {
            return Err("pool_size: at least 3 (fetch, acks, upkeep)".into());
        }
        if o.fetch_batch == 0 || o.fetch_batch > MAX_FETCH_BATCH {
            return Err(format!("fetch_batch: from 1 to {MAX_FETCH_BATCH}"));
        }
        if o.fetch_max_bytes == 0 {
            return Err("fetch_max_bytes: at least 1".into());
        }
        let heartbeat = duration("heartbeat", &o.heartbeat)?;
        let orphan_after = duration("orphan_after", &o.orphan_after)?;
        if orphan_after < heartbeat.saturating_mul(2) {
            return Err(format!(
                "orphan_after: must be at least twice heartbeat ({})",
                humantime::format_duration(heartbeat)
            ));
        }
        if !o.rate_limit.is_finite() || o.rate_limit < 0.0 {
            return Err("rate_limit: a number of jobs per second, 0 = unlimited".into());
        }
        if o.dead_letter_max == 0 {
            return Err("dead_letter_max: at least 1".into());
        }
        if matches!(&o.password_env, Some(v) if v.is_empty()) {
            return Err("password_env: empty variable name".into());
        }
        Ok(Settings {
            name: name.to_string(),
            redacted_url: redact(&url),
            url,
            password_env: o.password_env,
            // Every key is derived from the queue's name: prefixing the
            // name prefixes them all.
            queues: o
                .queues
                .iter()
                .map(|q| format!("{}{q}", o.prefix))
                .collect(),
            pool_size: o.pool_size,
            fetch_batch: o.fetch_batch,
            fetch_max_bytes: o.fetch_max_bytes,
            heartbeat,
            orphan_after,
            max_recoveries: o.max_recoveries,
            rate_limit: o.rate_limit,
            dead_letter_max: o.dead_letter_max,
        })
    }
}

/// The URL without its credentials, for logs, errors and `/healthz`.
///
/// Everything between `://` and the last `@` is user information, however
/// it is written (a password may hold an unescaped `/`, `@`, `#` or `?`,
/// which a URL parser would take for the end of the host): it becomes
/// `user:***` (or `***` when there is no `:`). A password given as a query
/// parameter (`pass=`, `password=`, as unix-socket URLs do) is blanked
/// through the `url` crate's parser. Anything else is kept, so the host,
/// port and database stay readable.
pub(super) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return "<url without a scheme, hidden>".into();
    };
    let (head, rest) = url.split_at(start);
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => format!("***{host}"),
            }
        }
        None => rest.to_string(),
    };
    let out = format!("{head}{rest}");
    let Ok(mut parsed) = url::Url::parse(&out) else {
        return out;
    };
    let secret = |k: &str| matches!(k.to_ascii_lowercase().as_str(), "pass" | "password");
    if !parsed.query_pairs().any(|(k, _)| secret(&k)) {
        return out;
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if secret(&k) {
                "***".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://u:pw@h/0"), "rediss://u:***@h/0");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        // Characters a URL parser would stop at.
        for pw in ["a/b", "a@b", "a#b", "a?b", "p/w@x:y", "%2F/"] {
            let url = format!("redis://user:{pw}@127.0.0.1:6379/0");
            let shown = redact(&url);
            assert_eq!(shown, "redis://user:***@127.0.0.1:6379/0", "{pw}");
        }
        let unix = redact("redis+unix:///run/redis.sock?db=1&pass=s3cret");
        assert!(!unix.contains("s3cret") && unix.contains("db=1"), "{unix}");
        assert!(!redact("no scheme:pw@h").contains("pw"));
    }

    proptest::proptest! {
        #[test]
        fn no_password_is_ever_shown(pw in "[ -~]{6,24}", user in "[a-z]{0,6}",
                                     tail in "[a-z0-9./?=&]{0,12}") {
            let url = format!("redis://{user}:{pw}@127.0.0.1:6379/0{tail}");
            let shown = redact(&url);
            // Only a password that also appears in the rest is allowed through.
            let rest = format!("redis://{user}:***@127.0.0.1:6379/0{tail}");
            proptest::prop_assert!(!shown.contains(&pw) || rest.contains(&pw), "{}", shown);
        }

        #[test]
        fn redacting_never_panics(url in "\\PC{0,60}") {
            let _ = redact(&url);
        }
    }

    #[test]
    fn bad_options_are_named() {
        let bad = |f: fn(&mut RedisOptions)| {
            let mut o = RedisOptions::default();
            f(&mut o);
            Settings::from_options("r", o).unwrap_err()
        };
        assert!(bad(|o| o.url = "http://x".into()).starts_with("url:"));
        assert!(bad(|o| o.queues.clear()).starts_with("queues:"));
        assert!(bad(|o| o.queues = vec!["a".into(), "a".into()]).starts_with("queues[1]"));
        assert!(bad(|o| o.pool_size = 1).starts_with("pool_size:"));
        assert!(bad(|o| o.heartbeat = "soon".into()).starts_with("heartbeat:"));
        assert!(bad(|o| o.orphan_after = "1s".into()).starts_with("orphan_after:"));
        assert!(bad(|o| o.heartbeat = "100000000years".into()).starts_with("heartbeat:"));
        assert!(bad(|o| o.fetch_batch = 1_000_000).starts_with("fetch_batch:"));
        assert!(bad(|o| o.fetch_max_bytes = 0).starts_with("fetch_max_bytes:"));
        assert!(bad(|o| o.rate_limit = -1.0).starts_with("rate_limit:"));
        assert!(Settings::from_options("r", RedisOptions::default()).is_ok());
    }
}
