//! The JSON form of a reading, shared by the file and console uplinks.
//!
//! Format version 1, one object per reading (documented in `docs/payload.md`):
//!
//! ```json
//! {"v":1,"gateway":"site-01","queue_id":"5b9e0d7c1a2f3e44","seq":42,"adapter":"sim","device":"pump-1","point":"temperature",
//!  "ts":"2026-11-21T06:00:00.123456Z","type":"float","value":21.5,"unit":"°C","quality":"good"}
//! ```

use std::time::SystemTime;

use fieldgate_adapter::{Quality, Value};
use serde::ser::{SerializeMap, Serializer};

use crate::config::LogFormat;
use crate::queue::Queued;

/// The payload format version written in `"v"`.
pub const VERSION: u32 = 1;

/// Where readings come from: the gateway's id and its queue database's id.
/// `(queue_id, seq)` identifies a reading for de-duplication.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// `[gateway] id`.
    pub gateway: &'a str,
    /// The queue database's random id.
    pub queue_id: &'a str,
}

/// Appends `q` as one JSON object (no newline) to `out`.
pub fn write_json(out: &mut Vec<u8>, origin: Origin<'_>, q: &Queued) {
    write_object(out, q, Some(origin), true);
}

/// Appends `q` as a JSON object inside a batch envelope that names the gateway but not the
/// device (the HTTPS body): `{"seq":..,"adapter":..,"device":..,"point":..,...}`.
pub fn write_sourced_item(out: &mut Vec<u8>, q: &Queued) {
    write_object(out, q, None, true);
}

/// Appends `q` as a JSON object inside a batch envelope that already names the gateway,
/// adapter and device: `{"seq":..,"point":..,"ts":..,"type":..,"value":..,...}`.
pub fn write_batch_item(out: &mut Vec<u8>, q: &Queued) {
    write_object(out, q, None, false);
}

fn write_object(out: &mut Vec<u8>, q: &Queued, header: Option<Origin<'_>>, source: bool) {
    let r = &q.reading;
    let mut ser = serde_json::Serializer::new(&mut *out);
    // Writing into a Vec cannot fail, and every field is a plain string or number.
    let result: Result<(), serde_json::Error> = (|| {
        let mut m = ser.serialize_map(None)?;
        if let Some(origin) = header {
            m.serialize_entry("v", &VERSION)?;
            m.serialize_entry("gateway", origin.gateway)?;
            m.serialize_entry("queue_id", origin.queue_id)?;
        }
        m.serialize_entry("seq", &q.seq)?;
        if source {
            m.serialize_entry("adapter", r.source.as_str())?;
            m.serialize_entry("device", r.device.as_str())?;
        }
        m.serialize_entry("point", r.point.as_str())?;
        m.serialize_entry("ts", &rfc3339(r.ts))?;
        m.serialize_entry("type", r.value.type_name())?;
        m.serialize_entry("value", &JsonValue(&r.value))?;
        if let Some(u) = &r.unit {
            m.serialize_entry("unit", u.as_str())?;
        }
        m.serialize_entry("quality", r.quality.as_str())?;
        if let Quality::Bad(why) | Quality::Stale(why) = &r.quality {
            m.serialize_entry("reason", why)?;
        }
        if q.unsynced {
            // The timestamp was taken before the clock was synchronized and could not be
            // corrected: it may be wrong (and is never before the build date).
            m.serialize_entry("clock", "unsynced")?;
        }
        if let Some(a) = &q.alert {
            m.serialize_entry("alert", &AlertJson(a))?;
        }
        m.end()
    })();
    debug_assert!(
        result.is_ok(),
        "serializing to memory cannot fail: {result:?}"
    );
}

/// An alert event as JSON: `{"rule":"tank-high","state":"raised","level":"high",
/// "threshold":9.5,"severity":"critical"}`.
struct AlertJson<'a>(&'a crate::queue::Alert);

impl serde::Serialize for AlertJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("rule", a.rule.as_str())?;
        m.serialize_entry("state", a.state.as_str())?;
        m.serialize_entry("level", a.level.as_str())?;
        m.serialize_entry("threshold", &JsonValue(&Value::F64(a.threshold)))?;
        m.serialize_entry("severity", a.severity.as_str())?;
        m.end()
    }
}

/// A reading's value as JSON: booleans, integers and finite floats as themselves, NaN and
/// infinities as `null` (JSON has neither), text as a string, bytes as base64.
#[derive(Debug)]
pub struct JsonValue<'a>(pub &'a Value);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I64(i) => s.serialize_i64(*i),
            Value::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Value::F64(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_str(&base64(b)),
        }
    }
}

/// A value as bare text, for one-value-per-topic dashboards: `21.5`, `true`, `open`;
/// bytes as base64, a non-finite float as `nan`/`inf`/`-inf`.
pub fn plain_value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::I64(i) => i.to_string(),
        Value::F64(f) if f.is_nan() => "nan".into(),
        Value::F64(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => base64(b),
    }
}

/// Appends `q` as one line for people (no newline):
/// `#42       2026-11-21T06:00:00.123456Z  sim/pump-1/temperature = 21.5 °C [stale: timeout]`.
pub fn write_text(out: &mut Vec<u8>, q: &Queued) {
    use std::io::Write;
    let r = &q.reading;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "#{:<8} {}  {}/{}/{} = {}",
        q.seq,
        rfc3339(r.ts),
        r.source,
        r.device,
        r.point,
        r.value
    );
    if let Some(u) = &r.unit {
        let _ = write!(out, " {u}");
    }
    if let Some(why) = r.quality.reason() {
        let _ = write!(out, " [{}: {why}]", r.quality.as_str());
    }
    if let Some(a) = &q.alert {
        let _ = write!(
            out,
            " ALERT {} {} ({} {} {})",
            a.rule,
            a.state.as_str(),
            a.severity.as_str(),
            a.level.as_str(),
            a.threshold
        );
    }
}

/// Readings as lines of text or JSON, each ending in a newline.
pub fn render_lines(format: LogFormat, origin: Origin<'_>, items: &[Queued]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 160);
    for q in items {
        match format {
            LogFormat::Text => write_text(&mut out, q),
            LogFormat::Json => write_json(&mut out, origin, q),
        }
        out.push(b'\n');
    }
    out
}

/// `2026-11-21T06:00:00.123456Z`. Total: times outside what RFC 3339 can say (before 1970
/// or after 9999, only ever from a broken clock or device) are clamped to its ends.
pub fn rfc3339(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999999Z
    let max = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(253_402_300_799_999_999);
    let t = t.clamp(SystemTime::UNIX_EPOCH, max);
    humantime::format_rfc3339_micros(t).to_string()
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_adapter::Reading;
    use std::time::{Duration, UNIX_EPOCH};

    fn json(value: Value, quality: Quality) -> serde_json::Value {
        let q = Queued {
            unsynced: false,
            only_for: None,
            alert: None,
            seq: 42,
            reading: Reading::new(
                "sim",
                "pump-1",
                "t",
                UNIX_EPOCH + Duration::from_micros(1_763_704_800_123_456),
                value,
            )
            .with_unit("°C")
            .with_quality(quality),
        };
        let mut out = Vec::new();
        write_json(
            &mut out,
            Origin {
                gateway: "site-01",
                queue_id: "00c0ffee00c0ffee",
            },
            &q,
        );
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn documented_shape() {
        let v = json(Value::F64(21.5), Quality::Good);
        assert_eq!(
            v,
            serde_json::json!({"v":1,"gateway":"site-01","queue_id":"00c0ffee00c0ffee","seq":42,"adapter":"sim","device":"pump-1","point":"t",
                "ts":"2025-11-21T06:00:00.123456Z","type":"float","value":21.5,"unit":"°C","quality":"good"})
        );
        let v = json(Value::F64(f64::NAN), Quality::Stale("timeout".into()));
        assert_eq!(
            (
                v["value"].clone(),
                v["quality"].clone(),
                v["reason"].clone()
            ),
            (serde_json::Value::Null, "stale".into(), "timeout".into())
        );
        assert_eq!(
            json(Value::Bytes(b"test".to_vec()), Quality::Good)["value"],
            "dGVzdA=="
        );
        assert_eq!(json(Value::Bool(true), Quality::Good)["type"], "bool");
    }

    #[test]
    fn text_lines_for_people() {
        let q = |quality| Queued {
            unsynced: false,
            only_for: None,
            alert: None,
            seq: 42,
            reading: Reading::new(
                "sim",
                "pump-1",
                "t",
                UNIX_EPOCH + Duration::from_secs(1_763_704_800),
                Value::F64(21.5),
            )
            .with_unit("°C")
            .with_quality(quality),
        };
        let out = render_lines(
            LogFormat::Text,
            Origin {
                gateway: "gw",
                queue_id: "q",
            },
            &[q(Quality::Good), q(Quality::Stale("timeout".into()))],
        );
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "#42       2025-11-21T06:00:00.000000Z  sim/pump-1/t = 21.5 °C\n\
             #42       2025-11-21T06:00:00.000000Z  sim/pump-1/t = 21.5 °C [stale: timeout]\n"
        );
    }

    /// Regression: a reading stamped after year 9999 made humantime fail, and the forwarder
    /// carrying it panicked and stopped for good.
    #[test]
    fn timestamps_outside_rfc3339_are_clamped_not_a_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
