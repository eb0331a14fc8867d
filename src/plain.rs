//! serde's messages in an operator's words, for config files and for jobs
//! alike: "expected usize" becomes "a whole number", and an unknown key
//! gets a did-you-mean.

/// `message` as an operator would say it. `key` is the last key of the
/// path the message is about; `extra_keys` are keys valid there that the
/// message does not list (a plugin entry's common keys).
pub(crate) fn plain(message: &str, key: Option<&str>, extra_keys: &[&str]) -> String {
    if let Some(m) = unknown_key(message, extra_keys) {
        return m;
    }
    if let Some((got, expected)) = mismatch(message) {
        if let Some(want) = expected_words(expected, key) {
            return format!("{got}: expected {want}");
        }
    }
    message.to_string()
}

/// serde's `invalid type: X, expected Y` / `invalid value: X, expected Y`,
/// as (X in plain words, Y).
fn mismatch(message: &str) -> Option<(String, &str)> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (got, expected) = rest.rsplit_once(", expected ")?;
    let got = match got.split_once(' ') {
        // "string \"four\"" → "\"four\"", "integer `-1`" → "-1"
        Some(("string" | "integer" | "floating" | "boolean", v)) => {
            v.trim_start_matches("point ").trim_matches('`').to_string()
        }
        _ => got.to_string(),
    };
    Some((got, expected))
}

fn expected_words(expected: &str, key: Option<&str>) -> Option<&'static str> {
    // Keys that only make sense from 1 up.
    let at_least_one = matches!(
        key,
        Some("count" | "channel_bound" | "threads" | "pool_size" | "fetch_batch" | "batch")
    );
    Some(match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" if at_least_one => "a whole number ≥ 1",
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number ≥ 0",
        "i64" | "i32" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string (text)",
        "a sequence" => "a list",
        "a map" => "a map of key: value",
        _ => return None,
    })
}

/// serde's unknown-field message, with the closest valid key suggested.
fn unknown_key(message: &str, extra_keys: &[&str]) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, listed) = rest.split_once('`')?;
    let mut valid: Vec<&str> = listed
        .split('`')
        .skip(1)
        .step_by(2)
        .chain(extra_keys.iter().copied())
        .collect();
    valid.sort_unstable();
    valid.dedup();
    let best = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(key, v), *v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Some(match (best, valid.is_empty()) {
        (Some((_, v)), _) => format!("unknown key `{key}`; did you mean `{v}`?"),
        (None, true) => format!("unknown key `{key}`: nothing goes here"),
        (None, false) => format!("unknown key `{key}`; valid keys: {}", valid.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_become_words() {
        assert_eq!(
            plain(
                "invalid type: string \"four\", expected usize",
                Some("count"),
                &[]
            ),
            "\"four\": expected a whole number ≥ 1"
        );
        assert_eq!(
            plain(
                "invalid value: integer `-1`, expected usize",
                Some("capture_limit"),
                &[]
            ),
            "-1: expected a whole number ≥ 0"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected f64", None, &[]),
            "\"x\": expected a number"
        );
        assert_eq!(plain("something else", None, &[]), "something else");
    }

    #[test]
    fn an_unknown_key_gets_the_closest_valid_one() {
        let m = "unknown field `cout`, expected `allow` or `inherit_env`";
        assert_eq!(
            plain(m, None, &["type", "name", "count", "timeout", "retry"]),
            "unknown key `cout`; did you mean `count`?"
        );
        assert_eq!(
            plain("unknown field `zzz`, expected `allow` or `env`", None, &[]),
            "unknown key `zzz`; valid keys: allow, env"
        );
        assert_eq!(
            plain(
                "unknown field `manajer`, expected one of `manager`, `providers`",
                None,
                &[]
            ),
            "unknown key `manajer`; did you mean `manager`?"
        );
        assert_eq!(
            plain("unknown field `a`, there are no fields", None, &[]),
            "unknown key `a`: nothing goes here"
        );
    }
}
