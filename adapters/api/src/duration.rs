//! Human-readable durations in config files: `"250ms"`, `"5s"`, `"2h 30m"`, `"7d"`.
//!
//! Use with `#[serde(with = "fieldgate_adapter::duration")]` on a `std::time::Duration` field,
//! or [`option`] on an `Option<Duration>`. Plain numbers are refused on purpose: `interval = 5`
//! is ambiguous (seconds? milliseconds?), `interval = "5s"` is not.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserializer, Serializer};

/// Parses `"5s"`, `"1m 30s"`, `"250ms"`, `"7d"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "`{s}` is negative; durations must be positive, like \"5s\""
        ));
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like \"500ms\", \"5s\", \"10m\", \"2h\" or \"7d\""))
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"5s\" or \"10m\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "a bare number ({v}) is ambiguous; write the unit, like \"{v}s\" or \"{v}ms\""
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "a bare number ({v}) is ambiguous; write the unit, like \"{v}s\" or \"{v}ms\""
        )))
    }
}

/// Deserializes a duration from a string like `"5s"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(Visitor)
}

/// Serializes a duration as a string like `"5s"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// The same for `Option<Duration>` fields.
pub mod option {
    use super::*;

    /// Deserializes an optional duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }

    /// Serializes an optional duration.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
    }

    fn check(input: &str, expected: Result<Duration, &str>) {
        let got = serde_json::from_str::<T>(input)
            .map(|t| t.d)
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{input}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{input}: {g:?} should contain {e:?}"),
            (g, e) => panic!("{input}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn parses_human_durations_and_explains_mistakes() {
        check(r#"{"d":"5s"}"#, Ok(Duration::from_secs(5)));
        check(r#"{"d":"250ms"}"#, Ok(Duration::from_millis(250)));
        check(r#"{"d":"1m 30s"}"#, Ok(Duration::from_secs(90)));
        check(r#"{"d":"7d"}"#, Ok(Duration::from_secs(7 * 86_400)));
        check(r#"{"d":"-5s"}"#, Err("is negative"));
        check(r#"{"d":"5 parsecs"}"#, Err("is not a duration"));
        check(r#"{"d":5}"#, Err("bare number (5) is ambiguous"));
    }

    #[test]
    fn formats_round_trip() {
        for d in [Duration::from_millis(250), Duration::from_secs(3600 + 5)] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
