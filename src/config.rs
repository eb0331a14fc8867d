//! Configuration: raw serde structs that mirror the YAML, then a validated
//! [`Config`] in which durations are `Duration`s and every plugin's options
//! have been checked by its type. After `Config::load` no code sees "30s".
//!
//! Errors name the file, the key path and the line and column: plugin
//! options are deserialized from a `serde_yaml::Value`, which has no
//! positions, so a failing path is looked up again in the text (see
//! [`locate`]).

use crate::backoff::{Backoff, Jitter};
use crate::error::ConfigError;
use crate::failure::FailureHandler;
use crate::provider::Provider;
use crate::registry::{Registry, WorkerSpec};
use crate::worker::PoolInfo;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default configuration: what `make run` starts, embedded in the binary.
pub const EXAMPLE_CONFIG: &str = include_str!("../config.example.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    manager: RawManager,
    #[serde(default)]
    providers: Vec<Mapping>,
    #[serde(default)]
    workers: Vec<Mapping>,
    #[serde(default)]
    failure_handlers: Vec<Mapping>,
}

/// The `manager:` section as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawManager {
    /// Address of the stats server (/stats, /metrics, /healthz); null turns it off.
    pub(crate) stats_listen: Option<String>,
    /// How long running jobs may finish after SIGTERM before they are killed and handed back.
    pub(crate) shutdown_timeout: String,
    /// Capacity of the delivery channel from the providers to the manager.
    pub(crate) channel_bound: usize,
    /// Retry back-off for every pool that does not set its own.
    pub(crate) retry: RawRetry,
    /// Bytes of output kept for jobs with capture_output.
    pub(crate) capture_limit: usize,
}

impl Default for RawManager {
    fn default() -> RawManager {
        RawManager {
            stats_listen: Some("127.0.0.1:9090".into()),
            shutdown_timeout: "30s".into(),
            channel_bound: 1024,
            retry: RawRetry::from(Backoff::DEFAULT),
            capture_limit: 64 * 1024,
        }
    }
}

/// Retry back-off as written, e.g. `{ base: 1s, max: 5m, jitter: full }`,
/// in `manager.retry` and in a pool's `retry`. An unset key keeps the
/// value it overrides: the pool's from `manager.retry`, the manager's from
/// [`Backoff::DEFAULT`].
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetry {
    /// Delay cap of the first retry; doubles each attempt.
    pub(crate) base: Option<String>,
    /// Largest delay.
    pub(crate) max: Option<String>,
    /// full (uniform 0..cap), equal (cap/2..cap) or none (exactly cap).
    pub(crate) jitter: Option<Jitter>,
}

impl From<Backoff> for RawRetry {
    /// The back-off written out, for the defaults `goworker options` shows.
    fn from(b: Backoff) -> RawRetry {
        let text = |d: Duration| Some(humantime::format_duration(d).to_string());
        RawRetry {
            base: text(b.base),
            max: text(b.max),
            jitter: Some(b.jitter),
        }
    }
}

/// The keys every worker pool has, beside its type's own options.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoolCommon {
    /// The worker type.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Pool name; jobs whose type equals it run here. Default: the type.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Threads in the pool, each with its own worker.
    #[serde(default = "one")]
    pub(crate) count: usize,
    /// Default per-attempt time limit (e.g. 60s); a job's timeout overrides it. Default: none.
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    /// Retry back-off for this pool; unset keys come from manager.retry.
    #[serde(default)]
    pub(crate) retry: Option<RawRetry>,
}

fn one() -> usize {
    1
}

/// The keys every provider and failure handler has.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNamedCommon {
    /// The plugin type.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Its name in logs, stats and commands. Default: the type.
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// The validated `manager:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerConfig {
    /// Where the stats server listens; `None` when off.
    pub stats_listen: Option<SocketAddr>,
    /// Grace period for running jobs at shutdown. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Delivery channel capacity. Default 1024.
    pub channel_bound: usize,
    /// Default retry back-off. Default 1 s doubling to 5 min, full jitter.
    pub retry: Backoff,
    /// Output bytes kept per attempt. Default 64 KiB.
    pub capture_limit: usize,
}

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            stats_listen: None,
            shutdown_timeout: Duration::from_secs(30),
            channel_bound: 1024,
            retry: Backoff::default(),
            capture_limit: 64 * 1024,
        }
    }
}

/// A validated worker pool.
#[derive(Clone)]
pub struct PoolConfig {
    /// Pool name (the job type routed to it).
    pub name: String,
    /// Worker type.
    pub kind: String,
    /// Threads.
    pub count: usize,
    /// Default per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Retry back-off for jobs of this pool.
    pub retry: Backoff,
    pub(crate) spec: Arc<dyn WorkerSpec>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("count", &self.count)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A validated provider, built but not started.
pub struct ProviderConfig {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: String,
    pub(crate) provider: Box<dyn Provider>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl ProviderConfig {
    /// The configured rate limit (jobs per second, 0 = unlimited), when the
    /// type has one.
    pub fn rate_limit(&self) -> Option<f64> {
        self.provider.rate_limit()
    }

    /// Offline administration (`enqueue`, `dead`), when the type offers it.
    pub fn admin(&mut self) -> Option<&mut dyn crate::provider::ProviderAdmin> {
        self.provider.admin()
    }
}

/// A validated failure handler.
pub struct HandlerConfig {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: String,
    pub(crate) handler: Box<dyn FailureHandler>,
}

impl std::fmt::Debug for HandlerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// A whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub source: Option<PathBuf>,
    /// The manager section.
    pub manager: ManagerConfig,
    /// Providers in config order.
    pub providers: Vec<ProviderConfig>,
    /// Worker pools in config order.
    pub pools: Vec<PoolConfig>,
    /// Failure handlers in config order.
    pub failure_handlers: Vec<HandlerConfig>,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, key path and position.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            path: String::new(),
            location: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&text, registry).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Validates config text.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path and position.
    pub fn parse(text: &str, registry: &Registry) -> Result<Config, ConfigError> {
        Parser { text, registry }.parse()
    }

    /// An empty config with default manager settings (library use).
    pub fn empty() -> Config {
        Config {
            source: None,
            manager: ManagerConfig::default(),
            providers: Vec::new(),
            pools: Vec::new(),
            failure_handlers: Vec::new(),
        }
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

pub(crate) fn path_text(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Turns serde_path_to_error's path text (`a.b[0].c`) into segments.
pub(crate) fn parse_path(text: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in text.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

struct Parser<'a> {
    text: &'a str,
    registry: &'a Registry,
}

/// serde's message without serde_yaml's "path: " prefix and " at line X
/// column Y" suffix (we print both ourselves).
fn bare_message(e: &serde_yaml::Error) -> String {
    let mut s = e.to_string();
    if let Some(i) = s.find(" at line ") {
        s.truncate(i);
    }
    if let Some(loc) = e.location() {
        let _ = loc; // the position is reported separately
    }
    match s.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && !path.is_empty() => rest.to_string(),
        _ => s,
    }
}

impl Parser<'_> {
    fn error(&self, path: Vec<Seg>, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let mut path = path;
        // An unknown key is best located at the key itself.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next());
        let location = match unknown {
            Some(key) => {
                if path.last() == Some(&Seg::Key(key.to_string())) {
                    path.pop();
                }
                let mut at = path.clone();
                at.push(Seg::Key(key.to_string()));
                // Located at its value, which shares the key's line.
                locate(self.text, &at)
            }
            None => locate(self.text, &path),
        };
        ConfigError {
            file: None,
            path: path_text(&path),
            location,
            message,
        }
    }

    fn parse(&self) -> Result<Config, ConfigError> {
        if self.text.trim().is_empty() {
            return Err(ConfigError::at("", "the config is empty"));
        }
        let de = serde_yaml::Deserializer::from_str(self.text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = parse_path(&e.path().to_string());
            let inner = e.into_inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            let mut err = self.error(path, bare_message(&inner));
            if err.location.is_none() {
                err.location = location;
            }
            err
        })?;
        let manager = self.manager(&raw.manager)?;
        let pools = self.pools(&raw.workers, &manager)?;
        let providers = self.providers(&raw.providers)?;
        let failure_handlers = self.handlers(&raw.failure_handlers)?;
        Ok(Config {
            source: None,
            manager,
            providers,
            pools,
            failure_handlers,
        })
    }

    fn duration(&self, path: &[&str], v: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(v).map_err(|e| {
            let segs = path.iter().map(|k| Seg::Key(k.to_string())).collect();
            self.error(
                segs,
                format!("invalid duration {v:?}: {e} (write e.g. 250ms, 30s, 5m)"),
            )
        })
    }

    fn manager(&self, raw: &RawManager) -> Result<ManagerConfig, ConfigError> {
        let stats_listen = match &raw.stats_listen {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                self.error(
                    vec![Seg::Key("manager".into()), Seg::Key("stats_listen".into())],
                    format!("{s:?}: {e}"),
                )
            })?),
        };
        if raw.channel_bound == 0 {
            return Err(self.error(
                vec![Seg::Key("manager".into()), Seg::Key("channel_bound".into())],
                "must be at least 1",
            ));
        }
        let retry_at = vec![Seg::Key("manager".into()), Seg::Key("retry".into())];
        let retry = self.retry(retry_at, &raw.retry, Backoff::DEFAULT)?;
        Ok(ManagerConfig {
            stats_listen,
            shutdown_timeout: self
                .duration(&["manager", "shutdown_timeout"], &raw.shutdown_timeout)?,
            channel_bound: raw.channel_bound,
            retry,
            capture_limit: raw.capture_limit,
        })
    }

    /// A retry back-off: the keys `raw` sets, the rest from `inherited`.
    /// `at` is where `raw` is written (`manager.retry`, `workers[i].retry`).
    fn retry(
        &self,
        at: Vec<Seg>,
        raw: &RawRetry,
        inherited: Backoff,
    ) -> Result<Backoff, ConfigError> {
        let duration = |key: &str, v: &Option<String>, d: Duration| match v {
            None => Ok(d),
            Some(v) => humantime::parse_duration(v).map_err(|e| {
                let mut p = at.clone();
                p.push(Seg::Key(key.into()));
                self.error(
                    p,
                    format!("invalid duration {v:?}: {e} (write e.g. 250ms, 30s, 5m)"),
                )
            }),
        };
        Ok(Backoff {
            base: duration("base", &raw.base, inherited.base)?,
            max: duration("max", &raw.max, inherited.max)?,
            jitter: raw.jitter.unwrap_or(inherited.jitter),
        })
    }

    /// Splits an entry into its common keys and the plugin's own options.
    fn split<C: serde::de::DeserializeOwned>(
        &self,
        entry: &Mapping,
        common_keys: &[&str],
        base: &[Seg],
    ) -> Result<(C, Value), ConfigError> {
        let mut common = Mapping::new();
        let mut rest = Mapping::new();
        for (k, v) in entry {
            match k.as_str() {
                Some(key) if common_keys.contains(&key) => common.insert(k.clone(), v.clone()),
                _ => rest.insert(k.clone(), v.clone()),
            };
        }
        if !common.contains_key("type") {
            return Err(self.error(base.to_vec(), "missing key `type`"));
        }
        let c = serde_path_to_error::deserialize(Value::Mapping(common)).map_err(|e| {
            let mut path = base.to_vec();
            path.extend(parse_path(&e.path().to_string()));
            self.error(path, bare_message(e.inner()))
        })?;
        Ok((c, Value::Mapping(rest)))
    }

    fn options_error(&self, base: &[Seg], (path, message): (String, String)) -> ConfigError {
        let mut p = base.to_vec();
        p.extend(parse_path(&path));
        self.error(p, message)
    }

    fn unknown_type(&self, base: &[Seg], kind: &str, section: &str, known: &[&str]) -> ConfigError {
        let mut p = base.to_vec();
        p.push(Seg::Key("type".into()));
        self.error(
            p,
            format!(
                "unknown {section} type {kind:?} (known: {})",
                known.join(", ")
            ),
        )
    }

    fn pools(
        &self,
        raw: &[Mapping],
        manager: &ManagerConfig,
    ) -> Result<Vec<PoolConfig>, ConfigError> {
        let keys = ["type", "name", "count", "timeout", "retry"];
        let mut names = HashSet::new();
        let mut pools = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let base = vec![Seg::Key("workers".into()), Seg::Index(i)];
            let (c, rest): (RawPoolCommon, Value) = self.split(entry, &keys, &base)?;
            let at = |k: &str| {
                let mut p = base.clone();
                p.push(Seg::Key(k.into()));
                p
            };
            if c.count == 0 {
                return Err(self.error(
                    at("count"),
                    "must be at least 1 (a pool with no workers runs nothing)",
                ));
            }
            let name = c.name.clone().unwrap_or_else(|| c.kind.clone());
            if !names.insert(name.clone()) {
                return Err(self.error(at("name"), format!("duplicate pool name {name:?}")));
            }
            let timeout = match &c.timeout {
                Some(t) => Some(humantime::parse_duration(t).map_err(|e| {
                    self.error(
                        at("timeout"),
                        format!("invalid duration {t:?}: {e} (write e.g. 250ms, 30s, 5m)"),
                    )
                })?),
                None => None,
            };
            let retry = match &c.retry {
                Some(r) => self.retry(at("retry"), r, manager.retry)?,
                None => manager.retry,
            };
            let info = PoolInfo {
                name: name.clone(),
                count: c.count,
                timeout,
            };
            let spec = match self.registry.build_worker(&c.kind, rest, &info) {
                None => {
                    return Err(self.unknown_type(
                        &base,
                        &c.kind,
                        "worker",
                        &self.registry.worker_types(),
                    ));
                }
                Some(r) => r.map_err(|e| self.options_error(&base, e))?,
            };
            pools.push(PoolConfig {
                name,
                kind: c.kind,
                count: c.count,
                timeout,
                retry,
                spec,
            });
        }
        Ok(pools)
    }

    fn providers(&self, raw: &[Mapping]) -> Result<Vec<ProviderConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let base = vec![Seg::Key("providers".into()), Seg::Index(i)];
            let (c, rest): (RawNamedCommon, Value) = self.split(entry, &["type", "name"], &base)?;
            let name = c.name.unwrap_or_else(|| c.kind.clone());
            if !names.insert(name.clone()) {
                let mut p = base.clone();
                p.push(Seg::Key("name".into()));
                return Err(self.error(p, format!("duplicate provider name {name:?}")));
            }
            let provider = match self.registry.build_provider(&c.kind, &name, rest) {
                None => {
                    return Err(self.unknown_type(
                        &base,
                        &c.kind,
                        "provider",
                        &self.registry.provider_types(),
                    ));
                }
                Some(r) => r.map_err(|e| self.options_error(&base, e))?,
            };
            out.push(ProviderConfig {
                name,
                kind: c.kind,
                provider,
            });
        }
        Ok(out)
    }

    fn handlers(&self, raw: &[Mapping]) -> Result<Vec<HandlerConfig>, ConfigError> {
        let mut out = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let base = vec![Seg::Key("failure_handlers".into()), Seg::Index(i)];
            let (c, rest): (RawNamedCommon, Value) = self.split(entry, &["type", "name"], &base)?;
            let name = c.name.unwrap_or_else(|| c.kind.clone());
            let handler = match self.registry.build_handler(&c.kind, &name, rest) {
                None => {
                    return Err(self.unknown_type(
                        &base,
                        &c.kind,
                        "failure handler",
                        &self.registry.handler_types(),
                    ));
                }
                Some(r) => r.map_err(|e| self.options_error(&base, e))?,
            };
            out.push(HandlerConfig {
                name,
                kind: c.kind,
                handler,
            });
        }
        Ok(out)
    }
}

/// Finds the line and column of the node at `path` in YAML `text`.
///
/// serde_yaml stamps an error raised while visiting a node with that node's
/// position, so a visitor that walks down `path` and raises an error when it
/// arrives makes serde_yaml tell where the node is.
pub(crate) fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    use serde::de::DeserializeSeed;
    let de = serde_yaml::Deserializer::from_str(text);
    match (Finder { path }).deserialize(de) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

const FOUND: &str = "goworker-locate-found";

struct Finder<'p> {
    path: &'p [Seg],
}

impl<'de> serde::de::DeserializeSeed<'de> for Finder<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Finder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Value>()? {
            let hit =
                matches!((self.path.first(), key.as_str()), (Some(Seg::Key(k)), Some(s)) if k == s);
            if hit && self.path.len() == 1 {
                return map.next_value_seed(Here);
            } else if hit {
                map.next_value_seed(Finder {
                    path: &self.path[1..],
                })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let found = match self.path.first() {
                Some(Seg::Index(n)) if *n == i && self.path.len() == 1 => {
                    seq.next_element_seed(Here).map(|o| o.is_some())
                }
                Some(Seg::Index(n)) if *n == i => seq
                    .next_element_seed(Finder {
                        path: &self.path[1..],
                    })
                    .map(|o| o.is_some()),
                _ => seq
                    .next_element::<serde::de::IgnoredAny>()
                    .map(|o| o.is_some()),
            }?;
            if !found {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Raises the marker error at the node being visited.
struct Here;

impl<'de> serde::de::DeserializeSeed<'de> for Here {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        use serde::de::Error;
        d.deserialize_any(HereVisitor)
            .and(Err(D::Error::custom(FOUND)))
    }
}

struct HereVisitor;

impl<'de> serde::de::Visitor<'de> for HereVisitor {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(FOUND))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(FOUND))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &Registry::with_builtins())
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = EXAMPLE_CONFIG;
        let c = Config::parse(text, &Registry::with_builtins());
        assert!(c.is_ok(), "{}", c.unwrap_err());
    }

    #[test]
    fn locate_finds_nested_nodes() {
        let text =
            "manager:\n  channel_bound: 3\nworkers:\n  - type: noop\n  - type: cli\n    count: x\n";
        let p = parse_path("workers[1].count");
        assert_eq!(locate(text, &p), Some((6, 12)));
        assert_eq!(
            locate(text, &parse_path("manager.channel_bound")),
            Some((2, 18))
        );
        assert_eq!(locate(text, &parse_path("nothing.here")), None);
    }

    #[test]
    fn errors_name_path_and_position() {
        let e = parse("workers:\n  - type: noop\n    count: 0\n").unwrap_err();
        assert_eq!(e.path, "workers[0].count");
        assert_eq!(e.location, Some((3, 12)));

        let e =
            parse("workers:\n  - type: cli\n    allow: [/bin/echo]\n    bogus: 1\n").unwrap_err();
        assert_eq!(e.path, "workers[0]");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(4));

        let e = parse("workers:\n  - type: teleport\n").unwrap_err();
        assert_eq!(e.path, "workers[0].type");
        assert!(
            e.message.contains("unknown worker type \"teleport\""),
            "{e}"
        );

        let e = parse("manager:\n  shutdown_timeout: soon\n").unwrap_err();
        assert_eq!(e.path, "manager.shutdown_timeout");
        assert_eq!(e.location, Some((2, 21)));

        let e = parse("manager:\n  channel_bound: lots\n").unwrap_err();
        assert_eq!(e.path, "manager.channel_bound");
        assert_eq!(e.location.map(|l| l.0), Some(2));

        let e = parse("workers: [\n").unwrap_err();
        assert!(e.location.is_some(), "{e}");
    }

    #[test]
    fn retry_keys_not_set_are_inherited_pool_from_manager_manager_from_default() {
        let c = parse("workers:\n  - type: noop\n").unwrap();
        assert_eq!(c.manager.retry, Backoff::DEFAULT);
        assert_eq!(c.pools[0].retry, Backoff::DEFAULT);

        let c = parse(
            "manager:\n  retry: { base: 2s, jitter: none }\nworkers:\n  - type: noop\n    retry: { max: 9s }\n  - type: noop\n    name: other\n",
        )
        .unwrap();
        let manager = Backoff {
            base: Duration::from_secs(2),
            max: Backoff::DEFAULT.max,
            jitter: Jitter::None,
        };
        assert_eq!(c.manager.retry, manager);
        assert_eq!(
            c.pools[0].retry,
            Backoff {
                max: Duration::from_secs(9),
                ..manager
            }
        );
        assert_eq!(c.pools[1].retry, manager);
    }

    #[test]
    fn a_bad_retry_duration_names_its_key_with_the_same_hint_everywhere() {
        let e = parse("manager:\n  retry: { max: forever }\n").unwrap_err();
        assert_eq!(e.path, "manager.retry.max");
        assert!(e.message.contains("(write e.g. 250ms, 30s, 5m)"), "{e}");
        let e = parse("workers:\n  - type: noop\n    retry: { base: soon }\n").unwrap_err();
        assert_eq!(e.path, "workers[0].retry.base");
        assert!(e.message.contains("(write e.g. 250ms, 30s, 5m)"), "{e}");
    }

    #[test]
    fn options_show_the_retry_defaults_from_the_one_backoff_default() {
        let raw = RawManager::default().retry;
        assert_eq!(raw.base.as_deref(), Some("1s"));
        assert_eq!(raw.max.as_deref(), Some("5m"));
        assert_eq!(raw.jitter, Some(Jitter::Full));
    }
}
