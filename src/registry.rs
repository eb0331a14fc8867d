//! The plugin registry: provider, worker and failure-handler types by name.
//!
//! As in GoWorker, plugins are compiled in: a user builds their own binary,
//! calls `Registry::with_builtins()`, registers their types, and hands the
//! registry to the service. `goworker options` is generated from here.

use crate::failure::{FailureHandler, FailureHandlerType};
use crate::provider::{Provider, ProviderType};
use crate::worker::{PoolInfo, Worker, WorkerType};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An options error: key path inside the plugin's options, and message.
pub(crate) type OptionsError = (String, String);

/// A validated worker type, shared by the threads of one pool.
pub(crate) trait WorkerSpec: Send + Sync {
    fn new_worker(&self) -> Box<dyn Worker>;
}

impl<T: WorkerType> WorkerSpec for T {
    fn new_worker(&self) -> Box<dyn Worker> {
        WorkerType::new_worker(self)
    }
}

type BuildWorker = fn(serde_yaml::Value, &PoolInfo) -> Result<Arc<dyn WorkerSpec>, OptionsError>;
type BuildProvider = fn(&str, serde_yaml::Value) -> Result<Box<dyn Provider>, OptionsError>;
type BuildHandler = fn(&str, serde_yaml::Value) -> Result<Box<dyn FailureHandler>, OptionsError>;

struct Entry<B> {
    description: &'static str,
    schema: fn() -> schemars::Schema,
    build: B,
}

/// Every plugin type this binary knows, by `type:` name.
pub struct Registry {
    workers: BTreeMap<&'static str, Entry<BuildWorker>>,
    providers: BTreeMap<&'static str, Entry<BuildProvider>>,
    handlers: BTreeMap<&'static str, Entry<BuildHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field(
                "failure_handlers",
                &self.handlers.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn options<O: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<O, OptionsError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

fn build_worker<T: WorkerType>(
    v: serde_yaml::Value,
    pool: &PoolInfo,
) -> Result<Arc<dyn WorkerSpec>, OptionsError> {
    let o = options::<T::Options>(v)?;
    let t = T::from_options(o, pool).map_err(|m| (String::new(), m))?;
    Ok(Arc::new(t))
}

fn build_provider<T: ProviderType>(
    name: &str,
    v: serde_yaml::Value,
) -> Result<Box<dyn Provider>, OptionsError> {
    let o = options::<T::Options>(v)?;
    T::build(name, o).map_err(|m| (String::new(), m))
}

fn build_handler<T: FailureHandlerType>(
    name: &str,
    v: serde_yaml::Value,
) -> Result<Box<dyn FailureHandler>, OptionsError> {
    let o = options::<T::Options>(v)?;
    T::build(name, o).map_err(|m| (String::new(), m))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            workers: BTreeMap::new(),
            providers: BTreeMap::new(),
            handlers: BTreeMap::new(),
        }
    }

    /// The built-in types: workers `cli`, `http` and `noop`, provider
    /// `memory`, failure handlers `file`, `http` and `cli`.
    pub fn with_builtins() -> Registry {
        let mut r = Registry::new();
        r.register_worker::<crate::worker::cli::Cli>();
        r.register_worker::<crate::worker::http::Http>();
        r.register_worker::<crate::worker::noop::Noop>();
        r.register_provider::<crate::provider::redis::RedisType>();
        r.register_failure_handler::<crate::failure::file::FileHandlerType>();
        r.register_failure_handler::<crate::failure::http::HttpHandlerType>();
        r.register_failure_handler::<crate::failure::cli::CliHandlerType>();
        r.register_provider::<crate::provider::memory::MemoryType>();
        r.register_provider::<crate::provider::http::HttpProviderType>();
        r.register_provider::<crate::provider::disk::Disk>();
        r
    }

    /// Adds (or replaces) a worker type.
    pub fn register_worker<T: WorkerType>(&mut self) -> &mut Registry {
        self.workers.insert(
            T::TYPE,
            Entry {
                description: T::DESCRIPTION,
                schema: schema_of::<T::Options>,
                build: build_worker::<T>,
            },
        );
        self
    }

    /// Adds (or replaces) a provider type.
    pub fn register_provider<T: ProviderType>(&mut self) -> &mut Registry {
        self.providers.insert(
            T::TYPE,
            Entry {
                description: T::DESCRIPTION,
                schema: schema_of::<T::Options>,
                build: build_provider::<T>,
            },
        );
        self
    }

    /// Adds (or replaces) a failure handler type.
    pub fn register_failure_handler<T: FailureHandlerType>(&mut self) -> &mut Registry {
        self.handlers.insert(
            T::TYPE,
            Entry {
                description: T::DESCRIPTION,
                schema: schema_of::<T::Options>,
                build: build_handler::<T>,
            },
        );
        self
    }

    pub(crate) fn worker_types(&self) -> Vec<&'static str> {
        self.workers.keys().copied().collect()
    }

    pub(crate) fn provider_types(&self) -> Vec<&'static str> {
        self.providers.keys().copied().collect()
    }

    pub(crate) fn handler_types(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    pub(crate) fn build_worker(
        &self,
        kind: &str,
        v: serde_yaml::Value,
        pool: &PoolInfo,
    ) -> Option<Result<Arc<dyn WorkerSpec>, OptionsError>> {
        self.workers.get(kind).map(|e| (e.build)(v, pool))
    }

    pub(crate) fn build_provider(
        &self,
        kind: &str,
        name: &str,
        v: serde_yaml::Value,
    ) -> Option<Result<Box<dyn Provider>, OptionsError>> {
        self.providers.get(kind).map(|e| (e.build)(name, v))
    }

    pub(crate) fn build_handler(
        &self,
        kind: &str,
        name: &str,
        v: serde_yaml::Value,
    ) -> Option<Result<Box<dyn FailureHandler>, OptionsError>> {
        self.handlers.get(kind).map(|e| (e.build)(name, v))
    }

    /// Every registered type with its options, for `goworker options`.
    pub fn describe(&self) -> Vec<TypeDoc> {
        let manager = schema_of::<crate::config::RawManager>();
        let mut out = vec![TypeDoc::new(
            "manager",
            "manager",
            "the manager: stats server, shutdown, retries",
            &[&manager],
        )];
        let common_pool = schema_of::<crate::config::RawPoolCommon>();
        let common_named = schema_of::<crate::config::RawNamedCommon>();
        for (name, e) in &self.providers {
            out.push(TypeDoc::new(
                "provider",
                name,
                e.description,
                &[&common_named, &(e.schema)()],
            ));
        }
        for (name, e) in &self.workers {
            out.push(TypeDoc::new(
                "worker",
                name,
                e.description,
                &[&common_pool, &(e.schema)()],
            ));
        }
        for (name, e) in &self.handlers {
            out.push(TypeDoc::new(
                "failure_handler",
                name,
                e.description,
                &[&common_named, &(e.schema)()],
            ));
        }
        out
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::with_builtins()
    }
}

fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

/// One plugin type's documentation, generated from its options schema.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionDoc {
    /// The YAML key.
    pub key: String,
    /// Its type, e.g. `string`, `integer`, `array of string`.
    pub ty: String,
    /// Its default as YAML-ish text (`required` when there is none).
    pub default: String,
    /// What it does.
    pub description: String,
}

impl TypeDoc {
    fn new(
        section: &'static str,
        name: &str,
        description: &str,
        schemas: &[&schemars::Schema],
    ) -> TypeDoc {
        let mut options = Vec::new();
        for s in schemas {
            let root = s.as_value();
            let Some(props) = root.get("properties").and_then(Json::as_object) else {
                continue;
            };
            for (key, p) in props {
                options.push(OptionDoc {
                    key: key.clone(),
                    ty: type_name(root, p),
                    default: p
                        .get("default")
                        .map(default_text)
                        .unwrap_or_else(|| "required".into()),
                    description: p
                        .get("description")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .replace('\n', " "),
                });
            }
        }
        TypeDoc {
            section,
            name: name.to_string(),
            description: description.to_string(),
            options,
        }
    }
}

fn default_text(v: &Json) -> String {
    match v {
        Json::Null => "none".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_name(root: &Json, p: &Json) -> String {
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
