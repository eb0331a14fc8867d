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
    /// Connections in the pool (one each for fetch, acks and upkeep, plus spares); at least 3. Default 4.
    pub pool_size: u32,
    /// Most jobs moved in one round trip when a queue is deep. Default 1000.
    pub fetch_batch: usize,
    /// How often this process records that it is alive. Default `2s`.
    pub heartbeat: String,
    /// A consumer silent this long is dead: its jobs go back to the queue. Default `30s`.
    pub orphan_after: String,
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
            pool_size: 4,
            fetch_batch: 1000,
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
    pub(super) heartbeat: Duration,
    pub(super) orphan_after: Duration,
    pub(super) max_recoveries: u32,
    pub(super) rate_limit: f64,
    pub(super) dead_letter_max: usize,
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| format!("{key}: {v:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{key}: must be more than 0"));
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
        if o.pool_size < 3 {
            return Err("pool_size: at least 3 (fetch, acks, upkeep)".into());
        }
        if o.fetch_batch == 0 {
            return Err("fetch_batch: at least 1".into());
        }
        let heartbeat = duration("heartbeat", &o.heartbeat)?;
        let orphan_after = duration("orphan_after", &o.orphan_after)?;
        if orphan_after < heartbeat * 2 {
            return Err(format!(
                "orphan_after: must be at least twice heartbeat ({})",
                o.heartbeat
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
            queues: o.queues,
            pool_size: o.pool_size,
            fetch_batch: o.fetch_batch,
            heartbeat,
            orphan_after,
            max_recoveries: o.max_recoveries,
            rate_limit: o.rate_limit,
            dead_letter_max: o.dead_letter_max,
        })
    }
}

/// The URL without its password, for logs.
pub(super) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split(':').next().unwrap_or("");
            let masked = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{}{masked}{}", &url[..start], &rest[at..])
        }
        None => url.to_string(),
    }
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
        assert!(bad(|o| o.rate_limit = -1.0).starts_with("rate_limit:"));
        assert!(Settings::from_options("r", RedisOptions::default()).is_ok());
    }
}
