//! Durations as people write them, with one rule everywhere (config files,
//! plugin options and jobs): a bare number is seconds (`30`, `0.25`), a
//! string needs a unit (`"250ms"`, `"30s"`, `"5m"`, `"1h 30m"`).

use std::borrow::Cow;
use std::time::Duration;

/// The longest duration accepted anywhere: far beyond any real timeout or
/// delay, and far from where time arithmetic could overflow.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration as written in a config or options: a number of seconds or a
/// string with a unit. Use it for a plugin's duration options to follow
/// the same rule as every built-in one (and show as `duration` in
/// `goworker options`); [`DurationValue::parse`] gives the `Duration`.
#[derive(Debug, Clone, PartialEq)]
pub enum DurationValue {
    /// A bare number: seconds.
    Seconds(f64),
    /// A string: needs a unit.
    Text(String),
}

impl From<&str> for DurationValue {
    fn from(s: &str) -> DurationValue {
        DurationValue::Text(s.to_string())
    }
}

impl DurationValue {
    /// The duration, checked: not negative, not NaN, at most 100 years.
    ///
    /// # Errors
    /// A message that says what is accepted.
    pub fn parse(&self) -> Result<Duration, String> {
        match self {
            DurationValue::Seconds(s) => seconds(*s),
            DurationValue::Text(t) => text(t),
        }
    }
}

/// Seconds as a duration, checked.
pub(crate) fn seconds(s: f64) -> Result<Duration, String> {
    if !s.is_finite() || s < 0.0 {
        return Err(format!("{s}: a duration cannot be negative or infinite"));
    }
    match Duration::try_from_secs_f64(s) {
        Ok(d) if d <= LONGEST => Ok(d),
        _ => Err(format!("{s} seconds: longer than {} years", years())),
    }
}

/// A duration string with a unit, checked.
pub(crate) fn text(t: &str) -> Result<Duration, String> {
    let trimmed = t.trim();
    if !trimmed.is_empty() && trimmed.parse::<f64>().is_ok() {
        return Err(format!(
            "{t:?}: a duration in quotes needs a unit, such as \"{trimmed}s\" (or write the number without quotes for seconds)"
        ));
    }
    match humantime::parse_duration(trimmed) {
        Ok(d) if d <= LONGEST => Ok(d),
        Ok(_) => Err(format!("{t:?}: longer than {} years", years())),
        Err(_) => Err(format!(
            "{t:?} is not a duration: write a number of seconds or a duration such as 250ms, 30s, 5m"
        )),
    }
}

fn years() -> u64 {
    LONGEST.as_secs() / (365 * 24 * 3600)
}

impl<'de> serde::Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DurationValue, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds or a duration such as 30s")
            }
            fn visit_u64<E>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<DurationValue, E> {
                Ok(DurationValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for DurationValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DurationValue::Seconds(v) => s.serialize_f64(*v),
            DurationValue::Text(t) => s.serialize_str(t),
        }
    }
}

impl schemars::JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "title": "duration",
            "type": ["number", "string"],
            "description": "a number of seconds, or a string with a unit such as 250ms, 30s, 5m"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Duration, String> {
        let w: DurationValue = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        w.parse()
    }

    #[test]
    fn a_bare_number_is_seconds_and_a_string_needs_a_unit() {
        assert_eq!(yaml("30"), Ok(Duration::from_secs(30)));
        assert_eq!(yaml("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(yaml("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(yaml("\"1h 30m\""), Ok(Duration::from_secs(5400)));
        let e = yaml("\"30\"").unwrap_err();
        assert!(e.contains("needs a unit, such as \"30s\""), "{e}");
        let e = yaml("soon").unwrap_err();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn nonsense_is_refused_without_panicking() {
        for bad in ["-1", "1e300", ".nan", ".inf", "-.inf", "\"1000000000000h\""] {
            assert!(yaml(bad).is_err(), "{bad}");
        }
        assert!(yaml("[1]").is_err());
        assert!(seconds(f64::MAX).is_err());
        assert_eq!(seconds(0.0), Ok(Duration::ZERO));
    }
}
