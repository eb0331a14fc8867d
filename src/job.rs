//! The job model: GoWorker-compatible JSON in, typed `Job` inside.
//!
//! Unknown fields are kept in `extra` and written back unchanged whenever a
//! job is stored again (retry, dead letter), so producers may carry their
//! own metadata through goworker.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One unit of work, as producers write it (docs/jobs.md, docs/job.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique, time-sortable id; assigned by [`Job::parse`] when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The worker type (pool name) that runs it.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Label for logs and stats; [`Job::name`] falls back to the id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Worker-specific parameters.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// Re-runs after the first failed attempt (`2` = at most 3 attempts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Keep the worker's (bounded) output for the caller and dead letters.
    #[serde(default, skip_serializing_if = "is_false")]
    pub capture_output: bool,
    /// Per-attempt time limit, overriding the pool's default.
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Unix time (seconds) before which the job must not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<f64>,
    /// Attempts already made (goworker's bookkeeping, kept across retries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Unix time of the first attempt (goworker's bookkeeping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<f64>,
    /// The error of the last failed attempt (goworker's bookkeeping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Every other field, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A payload that is not a job; it is dead-lettered with its raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The payload as received (lossy UTF-8).
    pub raw: String,
    /// Why it is not a job.
    pub reason: String,
}

impl Job {
    /// A job of `kind` with `params` and a fresh id.
    pub fn new(job_type: impl Into<String>, params: Value) -> Job {
        Job {
            id: new_id(),
            job_type: job_type.into(),
            name: String::new(),
            params,
            retries: 0,
            capture_output: false,
            timeout: None,
            run_at: None,
            attempts: 0,
            first_attempt_at: None,
            last_error: None,
            extra: Map::new(),
        }
    }

    /// Parses a payload, assigning an id when it has none.
    ///
    /// # Errors
    /// A [`Malformed`] with the raw text when the payload is not JSON, not
    /// an object, lacks `type`, or has a field of the wrong type.
    pub fn parse(payload: &[u8]) -> Result<Job, Malformed> {
        Job::parse_or(payload, new_id)
    }

    /// Parses a payload; a job without an id gets `id()`, e.g. the id a
    /// provider assigned when it first saw the job and keeps for it.
    ///
    /// # Errors
    /// As [`Job::parse`].
    pub fn parse_or(payload: &[u8], id: impl FnOnce() -> String) -> Result<Job, Malformed> {
        let malformed = |reason: String| Malformed {
            raw: String::from_utf8_lossy(payload).into_owned(),
            reason,
        };
        let mut job: Job = serde_json::from_slice(payload).map_err(|e| {
            malformed(match e.is_data() {
                true => format!("invalid job: {}", data_error(payload, &e)),
                false => format!("invalid JSON: {e}"),
            })
        })?;
        if job.job_type.is_empty() {
            return Err(malformed("invalid job: `type` is empty".into()));
        }
        if job.id.is_empty() {
            job.id = id();
        }
        Ok(job)
    }

    /// The job as JSON, unknown fields included.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The job as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The label for logs: `name`, or the id when there is none.
    pub fn name(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }

    /// When the job may start, if `run_at` is set.
    pub fn run_at_time(&self) -> Option<SystemTime> {
        self.run_at.and_then(unix_to_time)
    }
}

/// A fresh job id: a ULID, unique and sortable by creation time.
pub fn new_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Seconds since the Unix epoch, fractional.
pub fn unix_now() -> f64 {
    time_to_unix(SystemTime::now())
}

/// A `SystemTime` as fractional Unix seconds.
pub fn time_to_unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Fractional Unix seconds as a `SystemTime` (`None` if not finite).
pub fn unix_to_time(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() {
        return None;
    }
    let d = Duration::try_from_secs_f64(secs.abs()).ok()?;
    if secs >= 0.0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// What a worker reports for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Ok` on success, else why it failed.
    pub result: Result<(), Failure>,
    /// Captured output, when the job asked for it.
    pub output: Option<String>,
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One line for logs and the dead-letter record.
    pub message: String,
    /// `false` for failures that retrying cannot fix (bad params, command
    /// not allowed): they are final at once.
    pub retryable: bool,
}

impl Outcome {
    /// A successful attempt.
    pub fn success() -> Outcome {
        Outcome {
            result: Ok(()),
            output: None,
        }
    }

    /// A failed attempt that a retry may fix.
    pub fn failed(message: impl Into<String>) -> Outcome {
        Outcome {
            result: Err(Failure {
                message: message.into(),
                retryable: true,
            }),
            output: None,
        }
    }

    /// A failure that no retry can fix.
    pub fn fatal(message: impl Into<String>) -> Outcome {
        Outcome {
            result: Err(Failure {
                message: message.into(),
                retryable: false,
            }),
            output: None,
        }
    }

    /// Attaches captured output.
    pub fn with_output(mut self, output: Option<String>) -> Outcome {
        self.output = output;
        self
    }

    /// Whether the attempt succeeded.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// The final state of a job as its source is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// It ran and succeeded.
    Succeeded,
    /// It failed for good (retries exhausted or not retryable).
    Failed,
    /// It was handed back un-finished (shutdown).
    Released,
}

/// A job's final report: what HTTP callers waiting on a job receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The job id.
    pub id: String,
    /// Final status.
    pub status: JobStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Duration of the last attempt, in milliseconds.
    pub duration_ms: u64,
    /// Milliseconds from the start of the first attempt to the end of the
    /// last (retry waits included; for a job recovered after a crash,
    /// since its first attempt in any process).
    pub elapsed_ms: u64,
    /// Captured output of the last attempt, when asked for.
    pub output: Option<String>,
    /// The last error, on failure.
    pub error: Option<String>,
}

/// The dead-letter record (docs/jobs.md, "Dead letters").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The job id (absent for a payload that was never a job).
    #[serde(default)]
    pub id: Option<String>,
    /// The job as it would be stored again, unknown fields included.
    #[serde(default)]
    pub job: Option<Value>,
    /// The raw payload, when it could not be parsed as a job.
    #[serde(default)]
    pub raw: Option<String>,
    /// Why it failed.
    pub error: String,
    /// Attempts made (0 for a payload that never ran).
    pub attempts: u32,
    /// Unix time of the first attempt.
    #[serde(default)]
    pub first_attempt_at: Option<f64>,
    /// Unix time of the last attempt.
    #[serde(default)]
    pub last_attempt_at: Option<f64>,
    /// Captured output of the last attempt.
    #[serde(default)]
    pub output: Option<String>,
    /// The provider the job came from.
    #[serde(default)]
    pub provider: String,
    /// Unix time it was dead-lettered.
    pub failed_at: f64,
}

impl FailureRecord {
    /// The record for a payload that could not be parsed.
    pub fn malformed(provider: &str, m: &Malformed) -> FailureRecord {
        FailureRecord {
            id: None,
            job: None,
            raw: Some(m.raw.clone()),
            error: m.reason.clone(),
            attempts: 0,
            first_attempt_at: None,
            last_attempt_at: None,
            output: None,
            provider: provider.to_string(),
            failed_at: unix_now(),
        }
    }

    /// The record for a job that failed for good.
    pub fn for_job(
        provider: &str,
        job: &Job,
        error: &str,
        output: Option<String>,
    ) -> FailureRecord {
        FailureRecord {
            id: Some(job.id.clone()),
            job: Some(job.to_value()),
            raw: None,
            error: error.to_string(),
            attempts: job.attempts,
            first_attempt_at: job.first_attempt_at,
            last_attempt_at: if job.attempts > 0 {
                Some(unix_now())
            } else {
                None
            },
            output,
            provider: provider.to_string(),
            failed_at: unix_now(),
        }
    }
}

/// The longest `timeout` a job may ask for; a job asking for more is
/// malformed. (Pools cap it further, e.g. the `cli` worker's `max_timeout`.)
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The fields the job model reads; every other field is kept as it came.
const KNOWN_FIELDS: [&str; 11] = [
    "id",
    "type",
    "name",
    "params",
    "retries",
    "capture_output",
    "timeout",
    "run_at",
    "attempts",
    "first_attempt_at",
    "last_error",
];

/// Which field of a job payload is wrong, and how, in plain words
/// (`retries: "x": expected a whole number ≥ 0`). Found by reading the
/// payload again with paths — with the free-form parts (`params`, unknown
/// fields) left out, so that a deeply nested payload costs no deeper
/// recursion than the first read did.
fn data_error(payload: &[u8], e: &serde_json::Error) -> String {
    let text = e.to_string();
    let bare = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    let found = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut fields)) => {
            fields.retain(|k, _| KNOWN_FIELDS.contains(&k.as_str()));
            fields.insert("params".into(), Value::Null);
            serde_path_to_error::deserialize::<_, Job>(Value::Object(fields)).err()
        }
        _ => None,
    };
    let Some(found) = found else {
        return crate::plain::plain(bare, None, &[]);
    };
    let path = found.path().to_string();
    let message = found.into_inner().to_string();
    match path.as_str() {
        "." | "" | "?" => crate::plain::plain(&message, None, &[]),
        path => format!("{path}: {}", crate::plain::plain(&message, Some(path), &[])),
    }
}

/// `timeout` as a humantime string ("30s") or a number of seconds, at most
/// [`MAX_JOB_TIMEOUT`].
mod duration_opt {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        use serde::de::Error;
        let d = match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => return Ok(None),
            // One rule with the config: a number is seconds, a string
            // needs a unit.
            Some(Value::String(s)) => crate::duration::text(&s).map_err(D::Error::custom)?,
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| D::Error::custom(format!("{n}: not a number of seconds")))
                .and_then(|f| match f {
                    // Longer than a job may ask for: say that, not "too long".
                    f if f.is_finite() && f > MAX_JOB_TIMEOUT.as_secs_f64() => Err(
                        D::Error::custom(format!("{f}s: a job may ask for at most 365 days")),
                    ),
                    f => crate::duration::seconds(f).map_err(D::Error::custom),
                })?,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{other}: expected a number of seconds or a duration such as \"30s\""
                )));
            }
        };
        if d > MAX_JOB_TIMEOUT {
            return Err(D::Error::custom(format!(
                "timeout of {}s: a job may ask for at most 365 days",
                d.as_secs()
            )));
        }
        Ok(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip() {
        let job = Job::parse(
            br#"{"type":"cli","params":{"command":"echo"},"queue_hint":"x","meta":{"a":[1,2]}}"#,
        )
        .unwrap();
        assert!(!job.id.is_empty());
        let back: Value = serde_json::from_str(&job.to_json()).unwrap();
        assert_eq!(back["queue_hint"], "x");
        assert_eq!(back["meta"]["a"][1], 2);
        assert_eq!(back["type"], "cli");
    }

    #[test]
    fn bad_payloads_are_malformed() {
        for (raw, want) in [
            (&b"{not json"[..], "invalid JSON"),
            (b"[1,2]", "invalid job"),
            (br#"{"params":{}}"#, "missing field `type`"),
            (br#"{"type":""}"#, "`type` is empty"),
            (br#"{"type":"cli","retries":-1}"#, "invalid job"),
            (br#"{"type":"cli","timeout":"soon"}"#, "timeout"),
            (br#"{"type":"cli","timeout":9.3e18}"#, "at most 365 days"),
            (
                br#"{"type":"cli","timeout":"366 days"}"#,
                "at most 365 days",
            ),
            (br#"{"type":"cli","timeout":-1}"#, "cannot be negative"),
            (
                br#"{"type":"cli","timeout":"30"}"#,
                "needs a unit, such as \"30s\"",
            ),
            (
                br#"{"type":"cli","retries":"x"}"#,
                "retries: \"x\": expected a whole number ≥ 0",
            ),
        ] {
            let err = Job::parse(raw).unwrap_err();
            assert!(
                err.reason.contains(want),
                "{:?}: {}",
                String::from_utf8_lossy(raw),
                err.reason
            );
            assert_eq!(err.raw.as_bytes(), raw);
        }
    }

    #[test]
    fn timeout_and_run_at_parse() {
        let job =
            Job::parse(br#"{"type":"noop","timeout":"1m 30s","run_at":1700000000.5}"#).unwrap();
        assert_eq!(job.timeout, Some(Duration::from_secs(90)));
        assert_eq!(job.run_at_time().map(time_to_unix), Some(1700000000.5));
        let job = Job::parse(br#"{"type":"noop","timeout":2.5}"#).unwrap();
        assert_eq!(job.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_id();
        assert!(a < b);
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Fields the job model knows; generated unknown fields avoid them.
        const KNOWN: [&str; 11] = KNOWN_FIELDS;

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                    .prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
            ]
        }

        /// Any JSON value, with keys that are often the job's own.
        fn json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                proptest::sample::select(&KNOWN[..]).prop_map(str::to_string),
                ".{0,8}",
            ];
            leaf().prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map(key.clone(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Unknown fields with any JSON values.
        fn extras() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::btree_map(
                "[a-z_]{1,10}".prop_filter("not a job field", |k| !KNOWN.contains(&k.as_str())),
                json(),
                0..6,
            )
            .prop_map(|m| m.into_iter().collect())
        }

        proptest! {
            #[test]
            fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = Job::parse(&bytes);
            }

            #[test]
            fn parse_never_panics_on_json(v in json()) {
                let _ = Job::parse(v.to_string().as_bytes());
            }

            #[test]
            fn parse_never_panics_on_job_shaped_objects(
                known in prop::collection::btree_map(
                    proptest::sample::select(&KNOWN[..]),
                    json(),
                    0..8,
                ),
                kind in ".{1,8}",
            ) {
                let mut m: Map<String, Value> =
                    known.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                m.insert("type".into(), Value::from(kind));
                if let Ok(job) = Job::parse(Value::Object(m).to_string().as_bytes()) {
                    // What parses is written back and parses again to the same job.
                    prop_assert_eq!(Job::parse(job.to_json().as_bytes()), Ok(job));
                }
            }

            #[test]
            fn unknown_fields_round_trip(
                extra in extras(),
                kind in "[a-z]{1,8}",
                id in "[A-Z0-9]{1,26}",
            ) {
                let mut original = extra.clone();
                original.insert("type".into(), Value::from(kind));
                original.insert("id".into(), Value::from(id));
                let original = Value::Object(original);
                let job = Job::parse(original.to_string().as_bytes()).unwrap();
                prop_assert_eq!(&job.extra, &extra);
                prop_assert_eq!(job.to_value(), original.clone());
                let back: Value = serde_json::from_str(&job.to_json()).unwrap();
                prop_assert_eq!(back, original);
            }

            #[test]
            fn timeout_never_panics_and_stays_bounded(
                text in prop_oneof![
                    any::<f64>().prop_map(|f| format!("{f:e}")),
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<u64>().prop_map(|n| format!("{n}.5e{}", n % 400)),
                    ".{0,24}".prop_map(|s| Value::from(s).to_string()),
                    "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|y| days)".prop_map(|s| Value::from(s).to_string()),
                ],
            ) {
                let payload = format!(r#"{{"type":"cli","timeout":{text}}}"#);
                if let Ok(job) = Job::parse(payload.as_bytes()) {
                    prop_assert!(job.timeout.is_none_or(|t| t <= MAX_JOB_TIMEOUT));
                }
            }
        }
    }
}
