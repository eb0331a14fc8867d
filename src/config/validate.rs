//! From the config as written to a validated [`Config`]: durations parsed,
//! cross-checks made, and every plugin entry built by its type through the
//! registry, one loop for all three families.

use super::locate::{Seg, locate, parse_path, path_text};
use super::raw::{RawConfig, RawManager};
use super::set::Override;
use super::{
    Config, HandlerConfig, MAX_FAILURE_QUEUE, ManagerConfig, PoolConfig, ProviderConfig, SecretEnv,
};
use crate::backoff::{Backoff, RawRetry};
use crate::duration::DurationValue;
use crate::error::ConfigError;
use crate::plain::plain;
use crate::plugin::{Common, Family, NamedCommon, Registry, Table};
use crate::worker::PoolInfo;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Parser<'a> {
    pub(super) text: &'a str,
    pub(super) registry: &'a Registry,
    /// `--set` overrides, applied before validating.
    pub(super) overrides: &'a [Override],
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
        self.error_with_keys(path, message, &[])
    }

    /// An error at `path`, located in the text and put in plain words;
    /// `extra_keys` are valid there besides those serde lists (a plugin
    /// entry's common keys), for the did-you-mean of an unknown key.
    fn error_with_keys(
        &self,
        path: Vec<Seg>,
        message: impl Into<String>,
        extra_keys: &[&str],
    ) -> ConfigError {
        let message = message.into();
        // serde_path_to_error's "?" is a node it could not name.
        let mut path: Vec<Seg> = path
            .into_iter()
            .filter(|s| *s != Seg::Key("?".into()))
            .collect();
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
        let key = match message.strip_prefix("unknown field `") {
            Some(_) => None,
            None => path.iter().rev().find_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            }),
        };
        let mut message = plain(&message, key, extra_keys);
        let mut location = location;
        // A value given with --set is not where the text says.
        if let Some(o) = self.overrides.iter().find(|o| o.covers(&path)) {
            message = format!("{message} (set with --set {})", o.key());
            location = None;
        }
        ConfigError {
            file: None,
            path: path_text(&path),
            location,
            message,
        }
    }

    /// The YAML as written, with the `--set` overrides applied.
    fn raw(&self) -> Result<RawConfig, ConfigError> {
        // Where the parser stopped is the best place to point at (for a
        // mis-indented line, that line, not its block's start). An unknown
        // key is located at the key itself (in `error`).
        let yaml_error = |path: Vec<Seg>, inner: serde_yaml::Error| {
            let message = bare_message(&inner);
            let unknown = message.starts_with("unknown field");
            let mut err = self.error(path, message);
            match inner.location() {
                Some(l) if !unknown || err.location.is_none() => {
                    err.location = Some((l.line(), l.column()));
                }
                _ => {}
            }
            err
        };
        let de = serde_yaml::Deserializer::from_str(self.text);
        if self.overrides.is_empty() {
            return serde_path_to_error::deserialize(de).map_err(|e| {
                let path = parse_path(&e.path().to_string());
                yaml_error(path, e.into_inner())
            });
        }
        let mut doc: Value =
            serde::Deserialize::deserialize(de).map_err(|e| yaml_error(Vec::new(), e))?;
        for o in self.overrides {
            o.apply(&mut doc)?;
        }
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = parse_path(&e.path().to_string());
            yaml_error(path, e.into_inner())
        })
    }

    pub(super) fn parse(&self) -> Result<Config, ConfigError> {
        if self.text.trim().is_empty() {
            return Err(ConfigError::at("", "the config is empty"));
        }
        let raw = self.raw()?;
        let secret_env = secret_env_names(&raw);
        let manager = self.manager(&raw.manager)?;
        let pools = self.pools(&raw.workers, &manager, &secret_env)?;
        let providers = self.providers(&raw.providers)?;
        let failure_handlers = self.handlers(&raw.failure_handlers, &secret_env)?;
        Ok(Config {
            source: None,
            manager,
            providers,
            pools,
            failure_handlers,
            secret_env,
        })
    }

    fn duration(&self, path: &[&str], v: &DurationValue) -> Result<Duration, ConfigError> {
        let segs = path.iter().map(|k| Seg::Key(k.to_string())).collect();
        self.duration_at(segs, v)
    }

    /// Parses a duration: a number of seconds, or `250ms`, `30s`, `5m`, …
    fn duration_at(&self, path: Vec<Seg>, v: &DurationValue) -> Result<Duration, ConfigError> {
        v.parse().map_err(|e| self.error(path, e))
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
        if !(1..=MAX_FAILURE_QUEUE).contains(&raw.failure_queue) {
            return Err(self.error(
                vec![Seg::Key("manager".into()), Seg::Key("failure_queue".into())],
                format!("must be between 1 and {MAX_FAILURE_QUEUE}"),
            ));
        }
        let retry = self.retry(
            vec![Seg::Key("manager".into()), Seg::Key("retry".into())],
            &raw.retry,
            Backoff::DEFAULT,
        )?;
        Ok(ManagerConfig {
            stats_listen,
            shutdown_timeout: self
                .duration(&["manager", "shutdown_timeout"], &raw.shutdown_timeout)?,
            channel_bound: raw.channel_bound,
            retry,
            capture_limit: raw.capture_limit,
            failure_queue: raw.failure_queue,
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
        let duration = |key: &str, v: &Option<DurationValue>, d: Duration| match v {
            None => Ok(d),
            Some(v) => self.duration_at(self::at(&at, key), v),
        };
        Ok(Backoff {
            base: duration("base", &raw.base, inherited.base)?,
            max: duration("max", &raw.max, inherited.max)?,
            jitter: raw.jitter.unwrap_or(inherited.jitter),
        })
    }

    /// Splits an entry into its family's common keys and the plugin's
    /// own options.
    fn split<F: Family>(
        &self,
        entry: &Mapping,
        base: &[Seg],
    ) -> Result<(F::Common, Value), ConfigError> {
        let mut common = Mapping::new();
        let mut rest = Mapping::new();
        for (k, v) in entry {
            match k.as_str() {
                Some(key) if F::COMMON_KEYS.contains(&key) => common.insert(k.clone(), v.clone()),
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

    /// Validates and builds every entry of one family's section (`key`):
    /// common keys, unique names where the family wants them, the type's
    /// options through the registry. `info` checks the common keys and
    /// makes what building needs.
    fn entries<F: Family>(
        &self,
        key: &str,
        raw: &[Mapping],
        table: &Table<F>,
        mut info: impl FnMut(&F::Common, &[Seg]) -> Result<Box<F::Info>, ConfigError>,
    ) -> Result<Vec<Built<F>>, ConfigError> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let base = vec![Seg::Key(key.into()), Seg::Index(i)];
            let (common, options) = self.split::<F>(entry, &base)?;
            let name = common.name().to_string();
            if F::UNIQUE_NAMES && !names.insert(name.clone()) {
                return Err(self.error(
                    at(&base, "name"),
                    format!("duplicate {} name {name:?}", F::NOUN),
                ));
            }
            let info = info(&common, &base)?;
            let plugin_type = common.plugin_type();
            let built = match table.build(plugin_type, options, &*info) {
                None => {
                    return Err(self.error(
                        at(&base, "type"),
                        format!(
                            "unknown {} type {plugin_type:?} (known: {})",
                            F::SECTION.replace('_', " "),
                            table.types().join(", ")
                        ),
                    ));
                }
                Some(r) => r.map_err(|e| {
                    let mut p = base.clone();
                    p.extend(parse_path(e.path()));
                    self.error_with_keys(p, e.message(), F::COMMON_KEYS)
                })?,
            };
            out.push(Built {
                name,
                common,
                info,
                built,
                path: base,
            });
        }
        Ok(out)
    }

    fn pools(
        &self,
        raw: &[Mapping],
        manager: &ManagerConfig,
        secret_env: &SecretEnv,
    ) -> Result<Vec<PoolConfig>, ConfigError> {
        let pools = self.entries("workers", raw, &self.registry.workers, |c, base| {
            if c.count == 0 {
                return Err(self.error(
                    at(base, "count"),
                    "must be at least 1 (a pool with no workers runs nothing)",
                ));
            }
            let timeout = match &c.timeout {
                Some(t) => Some(self.duration_at(at(base, "timeout"), t)?),
                None => None,
            };
            if timeout.is_some_and(|t| t > crate::job::MAX_JOB_TIMEOUT) {
                // Workers add it to clocks; a job cannot ask for more either.
                return Err(self.error(at(base, "timeout"), "at most 365 days"));
            }
            Ok(Box::new(PoolInfo {
                name: c.name().to_string(),
                count: c.count,
                timeout,
                secret_env: secret_env.clone(),
            }))
        })?;
        pools
            .into_iter()
            .map(|p| {
                let retry = match &p.common.retry {
                    Some(r) => self.retry(at(&p.path, "retry"), r, manager.retry)?,
                    None => manager.retry,
                };
                Ok(PoolConfig {
                    name: p.name,
                    plugin_type: p.common.plugin_type,
                    count: p.info.count,
                    timeout: p.info.timeout,
                    retry,
                    spec: p.built,
                })
            })
            .collect()
    }

    fn providers(&self, raw: &[Mapping]) -> Result<Vec<ProviderConfig>, ConfigError> {
        let named = |c: &NamedCommon, _: &[Seg]| Ok(Box::<str>::from(c.name()));
        let built = self.entries("providers", raw, &self.registry.providers, named)?;
        Ok(built
            .into_iter()
            .map(|p| ProviderConfig {
                name: p.name,
                plugin_type: p.common.plugin_type,
                provider: p.built,
            })
            .collect())
    }

    fn handlers(
        &self,
        raw: &[Mapping],
        secret_env: &SecretEnv,
    ) -> Result<Vec<HandlerConfig>, ConfigError> {
        let named = |c: &NamedCommon, _: &[Seg]| Ok(Box::<str>::from(c.name()));
        let built = self.entries("failure_handlers", raw, &self.registry.handlers, named)?;
        Ok(built
            .into_iter()
            .map(|mut h| {
                h.built.hide_env(secret_env);
                HandlerConfig {
                    name: h.name,
                    plugin_type: h.common.plugin_type,
                    handler: h.built,
                }
            })
            .collect())
    }
}

/// One entry of a family's section, validated and built.
struct Built<F: Family> {
    name: String,
    common: F::Common,
    info: Box<F::Info>,
    built: F::Built,
    /// Its key path, e.g. `workers[1]`.
    path: Vec<Seg>,
}

/// `base` and then `key`.
fn at(base: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = base.to_vec();
    p.push(Seg::Key(key.into()));
    p
}

/// Options named `*_env` that do not name a secret variable.
const NOT_SECRET: [&str; 2] = ["inherit_env", "allow_env"];

/// The variables named by any `*_env` option anywhere in the config
/// (`token_env`, `password_env`, ...): a string, or the strings of a list
/// or map. Collected from the raw YAML, so a plugin added later is covered
/// without naming its options here.
pub(super) fn secret_env_names(raw: &RawConfig) -> SecretEnv {
    fn walk_map(m: &Mapping, out: &mut BTreeSet<String>) {
        for (k, v) in m {
            let secret = k
                .as_str()
                .is_some_and(|k| k.ends_with("_env") && !NOT_SECRET.contains(&k));
            if secret {
                names(v, out);
            } else {
                walk(v, out);
            }
        }
    }
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Mapping(m) => walk_map(m, out),
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, out)),
            Value::Tagged(t) => walk(&t.value, out),
            _ => {}
        }
    }
    fn names(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if !s.is_empty() => {
                out.insert(s.clone());
            }
            Value::Sequence(s) => s.iter().for_each(|v| names(v, out)),
            Value::Mapping(m) => m.values().for_each(|v| names(v, out)),
            Value::Tagged(t) => names(&t.value, out),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(manager) = serde_yaml::to_value(&raw.manager) {
        walk(&manager, &mut out);
    }
    for m in raw
        .providers
        .iter()
        .chain(&raw.workers)
        .chain(&raw.failure_handlers)
    {
        walk_map(m, &mut out);
    }
    Arc::new(out)
}
