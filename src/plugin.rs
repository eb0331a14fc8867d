//! Plugin families and the registry: provider, worker and failure-handler
//! types by name.
//!
//! As in GoWorker, plugins are compiled in: a user builds their own binary,
//! calls `Registry::with_builtins()`, registers their types, and hands the
//! registry to [`crate::app::main`]. The three families differ only in what
//! every entry of theirs has (a [`Family`]'s common keys), what building one
//! needs and what it gives; registering, building from YAML and documenting
//! (`goworker options`) are written once, in [`Table`].

use crate::error::PluginError;
use crate::failure::{FailureHandler, FailureHandlerType};
use crate::provider::{Provider, ProviderType};
use crate::worker::{PoolInfo, Worker, WorkerType};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One family of plugins: what each entry of its config section has in
/// common, what building a type needs and what it gives.
pub(crate) trait Family: 'static {
    /// The name used in docs and errors: `provider`, `worker`, `failure_handler`.
    const SECTION: &'static str;
    /// What one entry is called in errors: `provider`, `pool`, `failure handler`.
    const NOUN: &'static str;
    /// The keys every entry has beside its type's own options.
    const COMMON_KEYS: &'static [&'static str];
    /// Whether two entries may share a name.
    const UNIQUE_NAMES: bool;
    /// Those keys as written.
    type Common: DeserializeOwned + schemars::JsonSchema + Common;
    /// What building needs besides the options.
    type Info: ?Sized;
    /// What building gives.
    type Built;
}

/// What every family's common keys say.
pub(crate) trait Common {
    /// The `type:` key: the plugin type.
    fn plugin_type(&self) -> &str;
    /// The `name:` key; the type when absent.
    fn name(&self) -> &str;
}

/// A plugin type of family `F`, seen the same way whatever the family.
pub(crate) trait Plugin<F: Family> {
    type Options: DeserializeOwned + schemars::JsonSchema;
    const TYPE: &'static str;
    const DESCRIPTION: &'static str;
    fn build(options: Self::Options, info: &F::Info) -> Result<F::Built, PluginError>;
}

/// The providers family.
#[derive(Debug)]
pub(crate) struct Providers;
/// The worker pools family.
#[derive(Debug)]
pub(crate) struct Workers;
/// The failure handlers family.
#[derive(Debug)]
pub(crate) struct Handlers;

/// The keys every provider and failure handler has.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedCommon {
    /// The plugin type.
    #[serde(rename = "type")]
    pub(crate) plugin_type: String,
    /// Its name in logs, stats and commands. Default: the type.
    #[serde(default)]
    pub(crate) name: Option<String>,
}

impl Common for NamedCommon {
    fn plugin_type(&self) -> &str {
        &self.plugin_type
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.plugin_type)
    }
}

/// The keys every worker pool has, beside its type's own options.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolCommon {
    /// The worker type.
    #[serde(rename = "type")]
    pub(crate) plugin_type: String,
    /// Pool name; jobs whose type equals it run here. Default: the type.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Threads in the pool, each with its own worker.
    #[serde(default = "one")]
    pub(crate) count: usize,
    /// Default per-attempt time limit (e.g. 60s, at most 365 days); a job's timeout overrides it. Default: none.
    #[serde(default)]
    pub(crate) timeout: Option<crate::duration::DurationValue>,
    /// Retry back-off for this pool; unset keys come from manager.retry.
    #[serde(default)]
    pub(crate) retry: Option<crate::backoff::RawRetry>,
}

fn one() -> usize {
    1
}

impl Common for PoolCommon {
    fn plugin_type(&self) -> &str {
        &self.plugin_type
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.plugin_type)
    }
}

impl Family for Providers {
    const SECTION: &'static str = "provider";
    const NOUN: &'static str = "provider";
    const COMMON_KEYS: &'static [&'static str] = &["type", "name"];
    const UNIQUE_NAMES: bool = true;
    type Common = NamedCommon;
    /// The provider's name.
    type Info = str;
    type Built = Box<dyn Provider>;
}

impl Family for Workers {
    const SECTION: &'static str = "worker";
    const NOUN: &'static str = "pool";
    const COMMON_KEYS: &'static [&'static str] = &["type", "name", "count", "timeout", "retry"];
    const UNIQUE_NAMES: bool = true;
    type Common = PoolCommon;
    type Info = PoolInfo;
    type Built = Arc<dyn WorkerSpec>;
}

impl Family for Handlers {
    const SECTION: &'static str = "failure_handler";
    const NOUN: &'static str = "failure handler";
    const COMMON_KEYS: &'static [&'static str] = &["type", "name"];
    const UNIQUE_NAMES: bool = false;
    type Common = NamedCommon;
    /// The handler's name.
    type Info = str;
    type Built = Box<dyn FailureHandler>;
}

impl<T: ProviderType> Plugin<Providers> for T {
    type Options = T;
    const TYPE: &'static str = T::TYPE;
    const DESCRIPTION: &'static str = T::DESCRIPTION;
    fn build(options: T, name: &str) -> Result<Box<dyn Provider>, PluginError> {
        options.build(name)
    }
}

impl<T: WorkerType> Plugin<Workers> for T {
    type Options = T::Options;
    const TYPE: &'static str = T::TYPE;
    const DESCRIPTION: &'static str = T::DESCRIPTION;
    fn build(options: T::Options, pool: &PoolInfo) -> Result<Arc<dyn WorkerSpec>, PluginError> {
        Ok(Arc::new(T::from_options(options, pool)?))
    }
}

impl<T: FailureHandlerType> Plugin<Handlers> for T {
    type Options = T;
    const TYPE: &'static str = T::TYPE;
    const DESCRIPTION: &'static str = T::DESCRIPTION;
    fn build(options: T, name: &str) -> Result<Box<dyn FailureHandler>, PluginError> {
        options.build(name)
    }
}

/// A validated worker type, shared by the threads of one pool.
pub(crate) trait WorkerSpec: Send + Sync {
    fn new_worker(&self) -> Box<dyn Worker>;
}

impl<T: WorkerType> WorkerSpec for T {
    fn new_worker(&self) -> Box<dyn Worker> {
        WorkerType::new_worker(self)
    }
}

type Build<F> =
    fn(serde_yaml::Value, &<F as Family>::Info) -> Result<<F as Family>::Built, PluginError>;

struct Entry<F: Family> {
    description: &'static str,
    schema: fn() -> schemars::Schema,
    build: Build<F>,
}

/// The registered types of one family, by `type:` name.
pub(crate) struct Table<F: Family> {
    entries: BTreeMap<&'static str, Entry<F>>,
}

fn build_from_yaml<F: Family, T: Plugin<F>>(
    value: serde_yaml::Value,
    info: &F::Info,
) -> Result<F::Built, PluginError> {
    let options: T::Options = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        PluginError::at(path, e.into_inner().to_string())
    })?;
    T::build(options, info)
}

impl<F: Family> Table<F> {
    fn new() -> Table<F> {
        Table {
            entries: BTreeMap::new(),
        }
    }

    fn register<T: Plugin<F>>(&mut self) {
        self.entries.insert(
            T::TYPE,
            Entry {
                description: T::DESCRIPTION,
                schema: schema_of::<T::Options>,
                build: build_from_yaml::<F, T>,
            },
        );
    }

    /// The registered type names.
    pub(crate) fn types(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }

    /// Builds a `plugin_type` from its options; `None` when no such type is
    /// registered.
    pub(crate) fn build(
        &self,
        plugin_type: &str,
        options: serde_yaml::Value,
        info: &F::Info,
    ) -> Option<Result<F::Built, PluginError>> {
        self.entries
            .get(plugin_type)
            .map(|e| (e.build)(options, info))
    }

    fn describe(&self, out: &mut Vec<TypeDoc>) {
        let common = schema_of::<F::Common>();
        for (name, e) in &self.entries {
            out.push(TypeDoc::new(
                F::SECTION,
                name,
                e.description,
                &[&common, &(e.schema)()],
            ));
        }
    }
}

/// Every plugin type this binary knows, by `type:` name.
pub struct Registry {
    pub(crate) providers: Table<Providers>,
    pub(crate) workers: Table<Workers>,
    pub(crate) handlers: Table<Handlers>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("providers", &self.providers.types())
            .field("workers", &self.workers.types())
            .field("failure_handlers", &self.handlers.types())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            providers: Table::new(),
            workers: Table::new(),
            handlers: Table::new(),
        }
    }

    /// The built-in types: providers `disk`, `http`, `memory` and `redis`,
    /// workers `cli`, `http` and `noop`, failure handlers `file`, `http`
    /// and `cli`.
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        r.register_provider::<crate::provider::disk::DiskOptions>();
        r.register_provider::<crate::provider::http::HttpOptions>();
        r.register_provider::<crate::provider::memory::MemoryOptions>();
        r.register_provider::<crate::provider::redis::RedisOptions>();
        r.register_worker::<crate::worker::cli::Cli>();
        r.register_worker::<crate::worker::http::Http>();
        r.register_worker::<crate::worker::noop::Noop>();
        r.register_failure_handler::<crate::failure::file::FileOptions>();
        r.register_failure_handler::<crate::failure::http::HttpHandlerOptions>();
        r.register_failure_handler::<crate::failure::cli::CliHandlerOptions>();
        r
    }

    /// Adds (or replaces) a provider type.
    pub fn register_provider<T: ProviderType>(&mut self) -> &mut Registry {
        self.providers.register::<T>();
        self
    }

    /// Adds (or replaces) a worker type.
    pub fn register_worker<T: WorkerType>(&mut self) -> &mut Registry {
        self.workers.register::<T>();
        self
    }

    /// Adds (or replaces) a failure handler type.
    pub fn register_failure_handler<T: FailureHandlerType>(&mut self) -> &mut Registry {
        self.handlers.register::<T>();
        self
    }

    /// Every registered type with its options (common keys first), for
    /// `goworker options`: providers, then workers, then failure handlers.
    /// The `manager:` section is [`crate::Config::describe_manager`].
    pub fn describe(&self) -> Vec<TypeDoc> {
        let mut out = Vec::new();
        self.providers.describe(&mut out);
        self.workers.describe(&mut out);
        self.handlers.describe(&mut out);
        out
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::with_builtins()
    }
}

pub(crate) fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

/// One plugin type's documentation, generated from its options schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeDoc {
    /// `manager`, `provider`, `worker` or `failure_handler`.
    pub section: &'static str,
    /// The `type:` name.
    pub name: String,
    /// One line.
    pub description: String,
    /// Its options, common keys first.
    pub options: Vec<OptionDoc>,
}

/// One option of a plugin type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OptionDoc {
    /// The YAML key.
    pub key: String,
    /// Its type, e.g. `string`, `integer`, `list of string`, `duration`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its default as YAML-ish text (`required` when there is none).
    pub default: String,
    /// What it does.
    pub description: String,
}

impl TypeDoc {
    pub(crate) fn new(
        section: &'static str,
        name: &str,
        description: &str,
        schemas: &[&schemars::Schema],
    ) -> TypeDoc {
        let mut options = Vec::new();
        for s in schemas {
            let root = s.as_value();
            options_of(root, root, "", None, &mut options);
        }
        TypeDoc {
            section,
            name: name.to_string(),
            description: description.to_string(),
            options,
        }
    }
}

/// The options of `node` (an object schema) as rows, nested maps as
/// `parent.key` rows after their parent; `defaults` is the parent's
/// default value, which holds the children's defaults.
fn options_of(
    root: &Json,
    node: &Json,
    prefix: &str,
    defaults: Option<&Json>,
    out: &mut Vec<OptionDoc>,
) {
    let Some(props) = node.get("properties").and_then(Json::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Json::as_array)
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    for (key, p) in props {
        let default = p
            .get("default")
            .filter(|d| !d.is_null())
            .or_else(|| defaults.and_then(|d| d.get(key)))
            .filter(|d| !d.is_null());
        let text = p
            .get("description")
            .and_then(Json::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        let (description, said) = split_default(&text);
        out.push(OptionDoc {
            key: format!("{prefix}{key}"),
            ty: type_name(root, p),
            // The schema's default wins; else what the doc comment says it
            // is (e.g. "the type"); else there is none.
            default: match (default, said) {
                (Some(d), _) => default_text(d),
                (None, Some(said)) => said,
                (None, None) if required.contains(&key.as_str()) => "required".into(),
                (None, None) => "none".into(),
            },
            description,
        });
        if let Some(inner) = object_schema(root, p) {
            options_of(root, inner, &format!("{prefix}{key}."), default, out);
        }
    }
}

/// The object schema `p` stands for (through `$ref` and `Option`'s
/// `anyOf [T, null]`), when it has properties of its own.
fn object_schema<'a>(root: &'a Json, p: &'a Json) -> Option<&'a Json> {
    if let Some(r) = p.get("$ref").and_then(Json::as_str) {
        let def = r.rsplit('/').next().unwrap_or(r);
        return object_schema(root, root.get("$defs")?.get(def)?);
    }
    if let Some(alts) = p.get("anyOf").and_then(Json::as_array) {
        return alts.iter().find_map(|a| object_schema(root, a));
    }
    p.get("properties").map(|_| p)
}

/// A doc comment's closing "Default: X." (or "Default X.") taken off, so
/// the default is stated once, in its column.
fn split_default(text: &str) -> (String, Option<String>) {
    let trimmed = text.trim_end();
    let Some(i) = trimmed.rfind("Default") else {
        return (trimmed.to_string(), None);
    };
    // Only a last sentence that starts with it.
    let before = trimmed[..i].trim_end();
    if !(before.is_empty() || before.ends_with('.') || before.ends_with(')')) {
        return (trimmed.to_string(), None);
    }
    let said = trimmed[i + "Default".len()..]
        .trim_start_matches(':')
        .trim()
        .trim_end_matches('.')
        .trim_matches('`')
        .to_string();
    if said.is_empty() || said.contains(". ") {
        return (trimmed.to_string(), None);
    }
    (before.to_string(), Some(said))
}

fn default_text(v: &Json) -> String {
    match v {
        Json::Null => "none".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_name(root: &Json, p: &Json) -> String {
    if p.get("title").and_then(Json::as_str) == Some("duration") {
        return "duration".into();
    }
    if let Some(r) = p.get("$ref").and_then(Json::as_str) {
        let def = r.rsplit('/').next().unwrap_or(r);
        return match root.get("$defs").and_then(|d| d.get(def)) {
            Some(d) => type_name(root, d),
            None => def.to_string(),
        };
    }
    if let Some(vals) = p.get("enum").and_then(Json::as_array) {
        let names: Vec<String> = vals.iter().map(default_text).collect();
        return format!("one of {}", names.join("|"));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Json::as_array) {
            // An enum whose variants have doc comments: one `const` each.
            let consts: Vec<String> = alts
                .iter()
                .filter_map(|a| a.get("const"))
                .map(default_text)
                .collect();
            if !consts.is_empty() && consts.len() == alts.len() {
                return format!("one of {}", consts.join("|"));
            }
            let names: Vec<String> = alts
                .iter()
                .map(|a| type_name(root, a))
                .filter(|n| n != "null")
                .collect();
            return names.join(" or ");
        }
    }
    let base = match p.get("type") {
        Some(Json::String(t)) => t.clone(),
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => {
            if p.get("properties").is_some() {
                "map".into()
            } else {
                "any".into()
            }
        }
    };
    match (base.as_str(), p.get("items")) {
        ("array", Some(items)) => format!("list of {}", type_name(root, items)),
        ("object", _) => "map".into(),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, Outcome};
    use crate::worker::JobContext;

    #[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct EchoOptions {
        /// Said back. Default: "hi".
        word: Option<String>,
    }

    struct Echo(String);

    impl WorkerType for Echo {
        type Options = EchoOptions;
        const TYPE: &'static str = "echo";
        const DESCRIPTION: &'static str = "says a word";
        fn from_options(o: EchoOptions, pool: &PoolInfo) -> Result<Echo, PluginError> {
            match o.word.as_deref() {
                Some("") => Err(PluginError::at("word", "empty")),
                w => Ok(Echo(format!("{}:{}", pool.name, w.unwrap_or("hi")))),
            }
        }
        fn new_worker(&self) -> Box<dyn Worker> {
            Box::new(EchoWorker(self.0.clone()))
        }
    }

    struct EchoWorker(String);

    impl Worker for EchoWorker {
        fn run(&mut self, _: &Job, _: &JobContext) -> Outcome {
            Outcome::success().with_output(Some(self.0.clone()))
        }
    }

    fn pool() -> PoolInfo {
        PoolInfo {
            name: "p".into(),
            count: 1,
            timeout: None,
            secret_env: Default::default(),
        }
    }

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn a_registered_type_builds_from_its_options() {
        let mut r = Registry::new();
        r.register_worker::<Echo>();
        assert_eq!(r.workers.types(), ["echo"]);
        let spec = r.workers.build("echo", yaml("word: yo"), &pool());
        let spec = spec.expect("registered").expect("valid");
        let out = spec.new_worker().run(
            &Job::new("p", serde_json::json!({})),
            &JobContext::new(None, 10),
        );
        assert_eq!(out.output.as_deref(), Some("p:yo"));
        assert!(r.workers.build("nosuch", yaml("{}"), &pool()).is_none());
    }

    #[test]
    fn option_errors_carry_the_key_path() {
        let mut r = Registry::new();
        r.register_worker::<Echo>();
        let err = |text: &str| match r.workers.build("echo", yaml(text), &pool()) {
            Some(Err(e)) => e,
            _ => panic!("{text} should fail"),
        };
        // From deserializing: serde's path; from the type: the type's path.
        let e = err("wurd: 1");
        assert_eq!(e.path(), "wurd");
        assert!(e.message().contains("unknown field `wurd`"), "{e}");
        let e = err("word: [1]");
        assert_eq!(e.path(), "word");
        assert_eq!(err("word: ''").to_string(), "word: empty");
    }

    #[test]
    fn describe_lists_every_family_with_common_keys_first() {
        let docs = Registry::with_builtins().describe();
        let sections: Vec<&str> = docs.iter().map(|d| d.section).collect();
        let first = |s: &str| sections.iter().position(|x| *x == s).unwrap();
        assert!(first("provider") < first("worker") && first("worker") < first("failure_handler"));
        assert!(!sections.contains(&"manager"));
        let cli = docs
            .iter()
            .find(|d| d.section == "worker" && d.name == "cli")
            .unwrap();
        let keys: Vec<&str> = cli.options.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            &keys[..8],
            [
                "count",
                "name",
                "retry",
                "retry.base",
                "retry.jitter",
                "retry.max",
                "timeout",
                "type"
            ]
        );
        assert!(keys.contains(&"allow"));
        let redis = docs.iter().find(|d| d.name == "redis").unwrap();
        let url = redis.options.iter().find(|o| o.key == "url").unwrap();
        assert_eq!(url.default, "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn registering_a_type_again_replaces_it() {
        let mut r = Registry::with_builtins();
        let before = r.providers.types().len();
        r.register_provider::<crate::provider::memory::MemoryOptions>();
        assert_eq!(r.providers.types().len(), before);
    }
}
