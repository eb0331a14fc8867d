//! Configuration, in three steps:
//!
//! - [`raw`]: serde structs that mirror the YAML as written;
//! - [`validate`]: from those to the validated [`Config`], in which
//!   durations are `Duration`s and every plugin entry has been built by its
//!   type (after `Config::load` no code sees "30s");
//! - [`locate`]: where a key path is in the text, so every error names the
//!   file, the key path, and the line and column;
//! - `crate::plain`: serde's messages in an operator's words, with a
//!   did-you-mean for unknown keys;
//! - [`set`]: `--set KEY=VALUE` overrides from the command line.

mod locate;
pub(crate) mod raw;
mod set;
mod validate;

use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::failure::FailureHandler;
use crate::plugin::{Registry, TypeDoc, WorkerSpec, schema_of};
use crate::provider::Provider;
pub use crate::worker::SecretEnv;
pub use set::Override;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default configuration: what `make run` starts, embedded in the binary.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config.example.yaml");

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
    /// Failure records queued for the failure handlers. Default 10,000.
    pub failure_queue: usize,
}

/// Default of `manager.failure_queue`.
pub(crate) const DEFAULT_FAILURE_QUEUE: usize = 10_000;
/// Largest `manager.failure_queue` (the queue is allocated up front).
pub(crate) const MAX_FAILURE_QUEUE: usize = 1_000_000;

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            stats_listen: None,
            shutdown_timeout: Duration::from_secs(30),
            channel_bound: 1024,
            retry: Backoff::default(),
            capture_limit: 64 * 1024,
            failure_queue: DEFAULT_FAILURE_QUEUE,
        }
    }
}

/// A validated worker pool.
#[derive(Clone)]
pub struct PoolConfig {
    /// Pool name (the job type routed to it).
    pub name: String,
    /// Its worker type (the plugin type; not the job type, which is the pool's name).
    pub plugin_type: String,
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
            .field("plugin_type", &self.plugin_type)
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
    /// Its plugin type.
    pub plugin_type: String,
    pub(crate) provider: Box<dyn Provider>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("plugin_type", &self.plugin_type)
            .finish()
    }
}

impl ProviderConfig {
    /// The configured rate limit (jobs per second, 0 = unlimited), when the
    /// type has one.
    pub fn rate_limit(&self) -> Option<f64> {
        self.provider.rate_limit()
    }

    /// Submissions from outside the service (`goworker enqueue`), when
    /// the type takes them.
    pub fn enqueue(&mut self) -> Option<&mut dyn crate::provider::Enqueue> {
        self.provider.enqueue()
    }

    /// Its dead letters (`goworker dead`), when the type keeps them.
    pub fn dead_letters(&mut self) -> Option<&mut dyn crate::provider::DeadLetters> {
        self.provider.dead_letters()
    }

    /// The provider whose store this one puts the jobs it takes into.
    pub fn stores_into(&self) -> Option<&str> {
        self.provider.stores_into()
    }
}

/// A validated failure handler.
pub struct HandlerConfig {
    /// Its name.
    pub name: String,
    /// Its plugin type.
    pub plugin_type: String,
    pub(crate) handler: Box<dyn FailureHandler>,
}

impl std::fmt::Debug for HandlerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerConfig")
            .field("name", &self.name)
            .field("plugin_type", &self.plugin_type)
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
    /// Names of the environment variables that hold secrets: the values of
    /// every `*_env` option anywhere in the config. They are removed from
    /// the environment of every child process (`cli` worker and handler).
    pub secret_env: SecretEnv,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, key path and position.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        Config::load_with(path, registry, &[])
    }

    /// Reads a config file, applies `--set` overrides, and validates it.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, key path and position (or the
    /// override that set the value).
    pub fn load_with(
        path: &Path,
        registry: &Registry,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            path: String::new(),
            location: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse_with(&text, registry, overrides).map_err(|mut e| {
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
        Config::parse_with(text, registry, &[])
    }

    /// Validates config text with `--set` overrides applied.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key path and position (or the override).
    pub fn parse_with(
        text: &str,
        registry: &Registry,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        validate::Parser {
            text,
            registry,
            overrides,
        }
        .parse()
    }

    /// Checks what refers to other entries (a provider's `store:`) on the
    /// assumption that this config is all there is — no providers added in
    /// code — as for the `goworker` binary, whose `check` and `run` call it.
    ///
    /// # Errors
    /// A reference to no provider, or to one that offers no store.
    pub fn check_references(&self) -> Result<(), ConfigError> {
        for (i, p) in self.providers.iter().enumerate() {
            let Some(target) = p.stores_into() else {
                continue;
            };
            if !self
                .providers
                .iter()
                .any(|q| q.name == target && q.provider.store().is_some())
            {
                let mut e = ConfigError::at(
                    format!("providers[{i}].store"),
                    format!("{target:?}: no provider of that name offers a store"),
                );
                e.file.clone_from(&self.source);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The `manager:` section's options, for `goworker options` (the
    /// plugin types are [`Registry::describe`]).
    pub fn describe_manager() -> TypeDoc {
        TypeDoc::new(
            "manager",
            "manager",
            "the manager: stats server, shutdown, retries",
            &[&schema_of::<raw::RawManager>()],
        )
    }

    /// An empty config with default manager settings (library use).
    pub fn empty() -> Config {
        Config {
            source: None,
            manager: ManagerConfig::default(),
            providers: Vec::new(),
            pools: Vec::new(),
            failure_handlers: Vec::new(),
            secret_env: SecretEnv::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::locate::{locate, parse_path};
    use super::raw::RawConfig;
    use super::validate::secret_env_names;
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
        assert!(e.message.contains("unknown key `bogus`"), "{e}");
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

        let e = parse("workers:\n  - type: noop\n    timeout: 400days\n").unwrap_err();
        assert_eq!(e.path, "workers[0].timeout");
        assert_eq!(e.message, "at most 365 days");

        // One rule for durations: a bare number is seconds.
        let c = parse("manager:\n  shutdown_timeout: 2.5\n").unwrap();
        assert_eq!(c.manager.shutdown_timeout, Duration::from_millis(2500));

        let e = parse("workers: [\n").unwrap_err();
        assert!(e.location.is_some(), "{e}");
    }

    #[test]
    fn every_env_option_names_a_secret() {
        let c = parse(
            "manager: { stats_listen: null }\n\
             providers:\n  - type: http\n    listen: 127.0.0.1:1\n    token_env: API_TOKEN\n\
             \x20 - type: redis\n    url: redis://127.0.0.1:1/\n    password_env: REDIS_PW\n\
             workers:\n  - type: cli\n    allow: [echo]\n    allow_env: [OMP_THREADS]\n    inherit_env: all\n\
             failure_handlers:\n  - type: cli\n    command: cat\n    inherit_env: true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.secret_env.iter().map(String::as_str).collect();
        assert_eq!(names, ["API_TOKEN", "REDIS_PW"]);

        // Any future option named *_env, at any depth, as a string, list or map.
        let raw: RawConfig = serde_yaml::from_str(
            "providers:\n  - type: x\n    nested: { webhook_secret_env: HOOK, deeper: [{ key_env: [K1, K2] }] }\n\
             failure_handlers:\n  - type: y\n    headers_env: { Authorization: AUTH_VAR }\n",
        )
        .unwrap();
        let names: Vec<String> = secret_env_names(&raw).iter().cloned().collect();
        assert_eq!(names, ["AUTH_VAR", "HOOK", "K1", "K2"]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn duration_text() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,24}",
                "[0-9]{1,30} ?(ns|us|ms|s|m|h|d|w|M|y|days|years)",
                any::<u64>().prop_map(|n| format!("{n}y {n}d {n}s")),
                any::<f64>().prop_map(|f| format!("{f}s")),
            ]
        }

        proptest! {
            /// Every duration a config holds is parsed without panicking:
            /// a value is accepted or refused with a message.
            #[test]
            fn durations_never_panic(
                shutdown in duration_text(),
                base in duration_text(),
                max in duration_text(),
                timeout in duration_text(),
                max_timeout in duration_text(),
                pool_base in duration_text(),
            ) {
                let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
                let text = format!(
                    "manager:\n  stats_listen: null\n  shutdown_timeout: {}\n  retry: {{ base: {}, max: {} }}\n\
                     workers:\n  - type: cli\n    allow: [echo]\n    timeout: {}\n    max_timeout: {}\n    retry: {{ base: {} }}\n",
                    q(&shutdown), q(&base), q(&max), q(&timeout), q(&max_timeout), q(&pool_base),
                );
                if let Err(e) = parse(&text) {
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
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
            jitter: crate::backoff::Jitter::None,
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
        assert!(
            e.message
                .contains("write a number of seconds or a duration such as"),
            "{e}"
        );
        let e = parse("workers:\n  - type: noop\n    retry: { base: soon }\n").unwrap_err();
        assert_eq!(e.path, "workers[0].retry.base");
        assert!(
            e.message
                .contains("write a number of seconds or a duration such as"),
            "{e}"
        );
    }

    #[test]
    fn options_show_the_retry_defaults_from_the_one_backoff_default() {
        use crate::duration::DurationValue;
        let raw = raw::RawManager::default().retry;
        assert_eq!(raw.base, Some(DurationValue::Text("1s".into())));
        assert_eq!(raw.max, Some(DurationValue::Text("5m".into())));
        assert_eq!(raw.jitter, Some(crate::backoff::Jitter::Full));
    }
}
