//! The normalized reading every adapter produces.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A cheap-to-clone, immutable name (adapter id, device id, point id, unit).
///
/// Readings are produced at up to millions per second; names are shared `Arc<str>`s so that
/// cloning a reading never copies its strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// The id of an adapter instance, as written in `[[adapters]] id = ...`.
pub type AdapterId = Name;
/// The id of a field device (a Modbus slave, a LoRaWAN DevEUI, a serial instrument).
pub type DeviceId = Name;
/// The id of one measured or controlled point of a device.
pub type PointId = Name;
/// A unit of measure, free text (`"°C"`, `"m3/h"`, `"%"`).
pub type Unit = Name;

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Arc::from(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(Arc::from(s.as_str()))
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// A value read from (or written to) a point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A coil, a discrete input, a flag.
    Bool(bool),
    /// Any integer register or counter.
    I64(i64),
    /// Any scaled or floating-point measurement.
    F64(f64),
    /// Text (a status word, an NMEA field).
    Text(String),
    /// Raw bytes (an undecoded LoRaWAN payload).
    Bytes(Vec<u8>),
}

impl Value {
    /// The value as a float, when it is numeric (`Bool` counts as 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            // Precision loss above 2^53 is accepted: this is for thresholds and display.
            #[allow(clippy::cast_precision_loss)]
            Value::I64(i) => Some(*i as f64),
            Value::F64(f) => Some(*f),
            Value::Text(_) | Value::Bytes(_) => None,
        }
    }

    /// A short name of the value's type, as used in payloads: `bool`, `int`, `float`, `text`, `bytes`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::I64(_) => "int",
            Value::F64(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::I64(i) => write!(f, "{i}"),
            Value::F64(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// How much a reading can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    /// Read from the device just now, as the device reported it.
    Good,
    /// The device answered but the value is not usable (an exception, a bad checksum).
    Bad(String),
    /// The value is the last known one; the device could not be reached.
    Stale(String),
}

impl Quality {
    /// `good`, `bad` or `stale`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad(_) => "bad",
            Quality::Stale(_) => "stale",
        }
    }

    /// The reason for a bad or stale quality.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Quality::Good => None,
            Quality::Bad(r) | Quality::Stale(r) => Some(r),
        }
    }
}

/// One value of one point of one device, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The adapter that produced it.
    pub source: AdapterId,
    /// The field device it belongs to.
    pub device: DeviceId,
    /// The point of that device.
    pub point: PointId,
    /// When it was measured (wall clock).
    pub ts: SystemTime,
    /// The value.
    pub value: Value,
    /// The unit of the value, if known.
    pub unit: Option<Unit>,
    /// Whether the value can be trusted.
    pub quality: Quality,
}

impl Reading {
    /// A good-quality reading without a unit.
    pub fn new(
        source: impl Into<AdapterId>,
        device: impl Into<DeviceId>,
        point: impl Into<PointId>,
        ts: SystemTime,
        value: Value,
    ) -> Self {
        Reading {
            source: source.into(),
            device: device.into(),
            point: point.into(),
            ts,
            value,
            unit: None,
            quality: Quality::Good,
        }
    }

    /// The same reading with a unit.
    #[must_use]
    pub fn with_unit(mut self, unit: impl Into<Unit>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    /// The same reading with another quality.
    #[must_use]
    pub fn with_quality(mut self, quality: Quality) -> Self {
        self.quality = quality;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_with_strings_and_clone_cheaply() {
        let a = Name::from("pump-1");
        let b = a.clone();
        assert_eq!(a, "pump-1");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(format!("{a}/{b:?}"), "pump-1/\"pump-1\"");
    }

    #[test]
    fn values_display_and_convert() {
        let cases = [
            (Value::Bool(true), "true", Some(1.0), "bool"),
            (Value::I64(-3), "-3", Some(-3.0), "int"),
            (Value::F64(2.5), "2.5", Some(2.5), "float"),
            (Value::Text("ok".into()), "\"ok\"", None, "text"),
            (Value::Bytes(vec![0xde, 0x01]), "0xde01", None, "bytes"),
        ];
        for (value, shown, float, ty) in cases {
            assert_eq!(value.to_string(), shown);
            assert_eq!(value.as_f64(), float);
            assert_eq!(value.type_name(), ty);
        }
    }

    #[test]
    fn quality_carries_its_reason() {
        assert_eq!(Quality::Good.reason(), None);
        assert_eq!(
            Quality::Bad("exception 2".into()).reason(),
            Some("exception 2")
        );
        assert_eq!(Quality::Stale("timeout".into()).as_str(), "stale");
    }
}
