//! `--set KEY=VALUE`: one option changed on the command line, by its key
//! path (`manager.stats_listen=127.0.0.1:9191`, `workers[0].count=8`),
//! applied to the YAML before it is validated.

use super::locate::{Seg, parse_path, path_text};
use crate::error::ConfigError;
use serde_yaml::{Mapping, Value};

/// One `KEY=VALUE` given with `--set`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    path: Vec<Seg>,
    value: Value,
    text: String,
}

impl Override {
    /// Parses `KEY=VALUE`: KEY is a key path as errors print it
    /// (`providers[1].listen`), VALUE is YAML (`8`, `null`, `[a, b]`,
    /// `30s`).
    ///
    /// # Errors
    /// No `=`, an empty or malformed key path, or a value that is not YAML.
    pub fn parse(text: &str) -> Result<Override, ConfigError> {
        let err = |m: String| ConfigError::at("", format!("--set {text}: {m}"));
        let (key, value) = text.split_once('=').ok_or_else(|| {
            err("write KEY=VALUE, e.g. manager.stats_listen=127.0.0.1:9191".into())
        })?;
        let path = parse_path(key.trim());
        // parse_path skips what it cannot read: the path must print back
        // as it was written.
        if path.is_empty() || path_text(&path) != key.trim() {
            return Err(err(format!(
                "{key:?} is not a key path such as workers[0].count"
            )));
        }
        let value = serde_yaml::from_str(value).map_err(|e| err(format!("the value: {e}")))?;
        Ok(Override {
            path,
            value,
            text: text.to_string(),
        })
    }

    /// The key path it sets.
    pub fn key(&self) -> String {
        path_text(&self.path)
    }

    /// Whether it sets `path` or something above it.
    pub(super) fn covers(&self, path: &[Seg]) -> bool {
        path.starts_with(&self.path)
    }

    /// Sets the value in `doc`, creating maps on the way; a list entry
    /// must already exist.
    pub(super) fn apply(&self, doc: &mut Value) -> Result<(), ConfigError> {
        let err = |m: &str| ConfigError::at("", format!("--set {}: {m}", self.text));
        let mut node = doc;
        for (i, seg) in self.path.iter().enumerate() {
            if node.is_null() {
                *node = Value::Mapping(Mapping::new());
            }
            node = match (seg, node) {
                (Seg::Key(k), Value::Mapping(m)) => {
                    let key = Value::String(k.clone());
                    if !m.contains_key(&key) {
                        m.insert(key.clone(), Value::Null);
                    }
                    m.get_mut(&key).ok_or_else(|| err("cannot set that key"))?
                }
                (Seg::Index(n), Value::Sequence(s)) => {
                    let len = s.len();
                    s.get_mut(*n).ok_or_else(|| {
                        err(&format!(
                            "{} has {len} entr{}",
                            path_text(&self.path[..i]),
                            if len == 1 { "y" } else { "ies" }
                        ))
                    })?
                }
                _ => {
                    return Err(err(&format!(
                        "{} is not a {}",
                        path_text(&self.path[..i]),
                        if matches!(seg, Seg::Index(_)) {
                            "list"
                        } else {
                            "map"
                        }
                    )));
                }
            };
        }
        *node = self.value.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(doc: &str, o: &str) -> Result<String, String> {
        let mut v: Value = serde_yaml::from_str(doc).unwrap();
        let o = Override::parse(o).map_err(|e| e.to_string())?;
        o.apply(&mut v).map_err(|e| e.to_string())?;
        Ok(serde_yaml::to_string(&v).unwrap())
    }

    #[test]
    fn sets_existing_and_new_keys_by_path() {
        let doc = "manager:\n  stats_listen: 127.0.0.1:9090\nworkers:\n- type: noop\n";
        let out = set(doc, "manager.stats_listen=127.0.0.1:9191").unwrap();
        assert!(out.contains("stats_listen: 127.0.0.1:9191"), "{out}");
        let out = set(doc, "workers[0].count=8").unwrap();
        assert!(out.contains("count: 8"), "{out}");
        let out = set("{}", "manager.retry.base=2s").unwrap();
        assert!(out.contains("base: 2s"), "{out}");
        let out = set(doc, "manager.stats_listen=null").unwrap();
        assert!(out.contains("stats_listen: null"), "{out}");
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let doc = "workers:\n- type: noop\n";
        let e = set(doc, "workers[3].count=1").unwrap_err();
        assert!(e.contains("workers has 1 entry"), "{e}");
        let e = set(doc, "workers.count=1").unwrap_err();
        assert!(e.contains("workers is not a map"), "{e}");
        assert!(set(doc, "nokey").unwrap_err().contains("write KEY=VALUE"));
        assert!(set(doc, "=1").unwrap_err().contains("not a key path"));
        assert!(
            set(doc, "a..b[x]=1")
                .unwrap_err()
                .contains("not a key path")
        );
        assert!(set(doc, "a=[").unwrap_err().contains("the value"));
    }
}
