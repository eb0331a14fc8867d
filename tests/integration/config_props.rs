//! Property tests of the config loader (`Config::parse`, `Config::load`):
//! whatever the text — arbitrary characters, a mutated example config, or
//! well-formed YAML whose known keys hold arbitrary values — the loader
//! returns `Ok` or an `Err` with a message; it never panics.
//!
//! The keys and their defaults come from the registry (`goworker options`
//! prints the same), so a new option is covered without touching this file.

use goworker::{Config, ConfigError, Registry, TypeDoc};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_yaml::{Mapping, Value};
use std::sync::OnceLock;

fn docs() -> &'static [TypeDoc] {
    static DOCS: OnceLock<Vec<TypeDoc>> = OnceLock::new();
    DOCS.get_or_init(|| Registry::with_builtins().describe())
}

fn section(name: &str) -> Vec<&'static TypeDoc> {
    docs().iter().filter(|d| d.section == name).collect()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &Registry::with_builtins())
}

/// The property: `Ok`, or an `Err` that says something.
fn check(result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
        prop_assert!(!e.to_string().trim().is_empty(), "empty display: {e:?}");
    }
    Ok(())
}

/// Duration-like text, in and out of range: `30s`, `-1ms`, `18446744073709551615h`.
fn duration_text() -> impl Strategy<Value = String> {
    let units = [
        "", "ns", "us", "ms", "s", "m", "h", "d", "w", "y", "sec", "µs",
    ];
    (
        prop_oneof![Just(""), Just("-"), Just(" "), Just("+")],
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            any::<u64>()
        ],
        prop::sample::select(units.to_vec()),
        prop_oneof![Just(""), Just(" 5s"), Just(".5"), Just("x")],
    )
        .prop_map(|(sign, n, unit, tail)| format!("{sign}{n}{unit}{tail}"))
}

/// Addresses and URLs, good and bad.
fn address_text() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "127.0.0.1",
            "[::1]",
            "0.0.0.0",
            "localhost",
            "999.1.1.1",
            "",
            "redis://127.0.0.1",
            "rediss://[::1]",
            "redis://u:p@127.0.0.1",
            "http://127.0.0.1",
            "unix:///tmp/x",
        ]),
        prop_oneof![
            Just(String::new()),
            any::<u32>().prop_map(|p| format!(":{p}"))
        ],
        prop_oneof![
            Just(""),
            Just("/0"),
            Just("/99999999999999999999"),
            Just("/x")
        ],
    )
        .prop_map(|(host, port, path)| format!("{host}{port}{path}"))
}

/// Every scalar YAML can hold, with the edge values a config parser meets.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, -1, 2, 3, i64::MAX, i64::MIN]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, -0.0, 1e300, 0.5]).prop_map(Value::from),
        duration_text().prop_map(Value::from),
        address_text().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "full",
            "equal",
            "none",
            "immediate",
            "eventual",
            "5xx",
            "*"
        ])
        .prop_map(Value::from),
    ]
}

/// Keys that mean something somewhere (so that nested maps hit real
/// options), plus arbitrary ones.
fn key() -> impl Strategy<Value = Value> {
    let mut known: Vec<String> = docs()
        .iter()
        .flat_map(|d| d.options.iter().map(|o| o.key.clone()))
        .collect();
    known.extend(["base", "max", "jitter", "command", "params"].map(String::from));
    known.sort();
    known.dedup();
    prop_oneof![
        4 => prop::sample::select(known).prop_map(Value::from),
        1 => leaf(),
    ]
}

/// Any YAML value, nested a few levels.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Mapping(kv.into_iter().collect::<Mapping>())),
        ]
    })
}

/// One option of an entry: which key (an index into the type's options),
/// and either its documented default (valid) or an arbitrary value.
type Field = (Index, bool, Value);

fn fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec((any::<Index>(), any::<bool>(), value()), 0..8)
}

/// The documented default of an option as YAML, when it is one.
fn default_value(default: &str) -> Option<Value> {
    serde_yaml::from_str(default).ok()
}

/// A map of `doc`'s options built from `fields`.
fn options(doc: &TypeDoc, fields: &[Field]) -> Mapping {
    let mut m = Mapping::new();
    if doc.options.is_empty() {
        return m;
    }
    for (i, use_default, v) in fields {
        let o = &doc.options[i.index(doc.options.len())];
        let v = match (use_default, default_value(&o.default)) {
            (true, Some(d)) => d,
            _ => v.clone(),
        };
        m.insert(Value::from(o.key.clone()), v);
    }
    m
}

/// A provider, worker or failure-handler entry: a known type (or not),
/// some of its options.
fn entry(section_name: &'static str) -> impl Strategy<Value = Value> {
    (
        any::<Index>(),
        prop_oneof![9 => Just(None), 1 => ".{0,8}".prop_map(Some)],
        fields(),
        prop_oneof![4 => Just(None), 1 => value().prop_map(Some)],
    )
        .prop_map(move |(ty, other_type, fields, replace)| {
            if let Some(v) = replace {
                return v;
            }
            let types = section(section_name);
            let doc = types[ty.index(types.len())];
            let mut m = options(doc, &fields);
            let kind = other_type.unwrap_or_else(|| doc.name.clone());
            m.insert(Value::from("type"), Value::from(kind));
            Value::Mapping(m)
        })
}

/// A whole config document: the four sections, each well-formed or not.
fn document() -> impl Strategy<Value = Value> {
    (
        fields(),
        prop_oneof![6 => Just(None), 1 => value().prop_map(Some)],
        prop::collection::vec(entry("provider"), 0..3),
        prop::collection::vec(entry("worker"), 0..3),
        prop::collection::vec(entry("failure_handler"), 0..2),
        prop_oneof![6 => Just(None), 1 => (key(), value()).prop_map(Some)],
    )
        .prop_map(|(mfields, mreplace, providers, workers, handlers, extra)| {
            let manager = section("manager");
            let mut doc = Mapping::new();
            let m = match (mreplace, manager.first()) {
                (Some(v), _) => v,
                (None, Some(d)) => Value::Mapping(options(d, &mfields)),
                (None, None) => Value::Null,
            };
            doc.insert(Value::from("manager"), m);
            doc.insert(Value::from("providers"), Value::Sequence(providers));
            doc.insert(Value::from("workers"), Value::Sequence(workers));
            doc.insert(Value::from("failure_handlers"), Value::Sequence(handlers));
            if let Some((k, v)) = extra {
                doc.insert(k, v);
            }
            Value::Mapping(doc)
        })
}

/// The example config with one edit: a character inserted, removed or
/// replaced somewhere (indentation, a key, a value).
fn mutated_example() -> impl Strategy<Value = String> {
    let example = goworker::EXAMPLE_CONFIG;
    (
        any::<Index>(),
        0u8..3,
        prop::sample::select(vec![
            ' ', '\t', ':', '-', '#', '"', '[', '{', '0', 'x', '\n', '&', '*',
        ]),
    )
        .prop_map(move |(at, op, c)| {
            let chars: Vec<char> = example.chars().collect();
            let i = at.index(chars.len());
            let mut out: Vec<char> = chars.clone();
            match op {
                0 => out.insert(i, c),
                1 => {
                    out.remove(i);
                }
                _ => out[i] = c,
            }
            out.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(parse(&text))?;
    }

    #[test]
    fn yaml_like_text_never_panics(
        text in prop::collection::vec(
            prop::sample::select(vec![
                "manager:", "providers:", "workers:", "failure_handlers:", "\n", "  ", "- ",
                "type: ", "cli", "disk", "redis", "http", "noop", "memory", "file", "count: ",
                "retry: {base: ", "}", "[", "]", "&a ", "*a", "<<: *a", "!!binary ", "~",
                "18446744073709551616", "-1", "1e999", ".nan", "30s", "\"", "'", "? ", ": ",
                "---\n", "...\n", "%YAML 1.2\n", "#", ",",
            ]),
            0..40,
        ).prop_map(|parts| parts.concat())
    ) {
        check(parse(&text))?;
    }

    #[test]
    fn a_mutated_example_config_never_panics(text in mutated_example()) {
        check(parse(&text))?;
    }

    #[test]
    fn structured_yaml_with_arbitrary_values_never_panics(doc in document()) {
        let text = serde_yaml::to_string(&doc).expect("a Value serializes");
        check(parse(&text))?;
    }

    #[test]
    fn loading_a_file_never_panics_and_names_it(doc in document()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, serde_yaml::to_string(&doc).expect("serializes")).expect("write");
        let result = Config::load(&path, &Registry::with_builtins());
        if let Err(e) = &result {
            prop_assert_eq!(e.file.as_deref(), Some(path.as_path()));
        }
        check(result)?;
    }
}

/// The generator reaches valid configs too (else the properties above
/// would only ever test the first error path).
#[test]
fn the_document_generator_also_makes_valid_configs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = document();
    let mut ok = 0;
    for _ in 0..2000 {
        let doc = strategy.new_tree(&mut runner).expect("generate").current();
        let text = serde_yaml::to_string(&doc).expect("serializes");
        if parse(&text).is_ok() {
            ok += 1;
        }
    }
    assert!(ok > 0, "no valid config in 2000 generated documents");
}
