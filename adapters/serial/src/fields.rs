//! From one frame's text to point values: the parsers (NMEA, CSV, `key=value`, regular
//! expression) and the mapping of their fields to points, types, scales and units.

use std::borrow::Cow;
use std::collections::HashMap;

use fieldgate_adapter::{Name, Value};
use regex::Regex;

use crate::config::{Checksum, FieldType, Format, SerialConfig};
use crate::nmea::{self, NmeaError};

/// How a parser names a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// By name: an NMEA field id, a key, a capture name.
    Name(Cow<'a, str>),
    /// By CSV column.
    Index(usize),
}

/// A field's value as the parser found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<'a> {
    /// A number already read.
    Num(f64),
    /// A whole number already read.
    Int(i64),
    /// A flag.
    Bool(bool),
    /// Text, converted by the field's type.
    Text(&'a str),
}

/// One field of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    /// Which field.
    pub key: Key<'a>,
    /// Its value.
    pub raw: Raw<'a>,
    /// The unit the format itself gives (NMEA), if any.
    pub unit: Option<&'static str>,
    /// Set when the instrument flagged the data invalid: the reason.
    pub invalid: Option<&'static str>,
}

/// One point value decoded from a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The point.
    pub point: Name,
    /// The value, or why the field's text could not be converted.
    pub value: Result<Value, String>,
    /// Its unit.
    pub unit: Option<Name>,
    /// Set when the instrument flagged the data invalid: the reason.
    pub invalid: Option<&'static str>,
}

/// Why a frame gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// NMEA: bad or missing checksum, unsupported sentence, malformed field.
    Nmea(NmeaError),
    /// The frame is not the expected form: no `prefix`, no match of `pattern`, no pairs.
    Unmatched,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Nmea(e) => e.fmt(f),
            FrameError::Unmatched => f.write_str("the frame does not have the configured form"),
        }
    }
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Data.
    Data,
    /// A CSV header line (its column names were taken).
    Header,
}

#[derive(Debug, Clone)]
struct Target {
    point: Name,
    /// `None`: take what the parser found (numbers as floats, other text as text).
    data_type: Option<FieldType>,
    scale: f64,
    offset: f64,
    unit: Option<Name>,
}

#[derive(Debug)]
enum Kind {
    Nmea(Checksum),
    Csv {
        separator: Separator,
        prefix: Option<String>,
        header: bool,
    },
    Kv {
        separator: Option<String>,
        assign: String,
        prefix: Option<String>,
    },
    Regex(Regex),
}

#[derive(Debug)]
enum Separator {
    Whitespace,
    Text(String),
}

/// Parses frames and maps their fields to points, as one adapter's config says.
#[derive(Debug)]
pub struct Decoder {
    kind: Kind,
    /// Named fields from config.
    named: HashMap<String, Target>,
    /// CSV columns from config by index.
    indexed: Vec<(usize, Target)>,
    /// CSV: the target of each column, from `indexed` and the last header.
    columns: Vec<Option<Target>>,
    /// No fields in config: every field becomes a point named after it.
    auto: bool,
    auto_targets: HashMap<String, Target>,
    /// NMEA: point names drop the sentence (`GGA.altitude` → `altitude`).
    nmea: bool,
}

impl Decoder {
    /// The decoder for a validated config.
    pub fn new(config: &SerialConfig) -> Result<Decoder, String> {
        let kind = match config.format {
            Format::Nmea => Kind::Nmea(config.checksum),
            Format::Csv => Kind::Csv {
                separator: match config.separator.as_deref() {
                    None => Separator::Text(",".into()),
                    Some(" ") => Separator::Whitespace,
                    Some(s) => Separator::Text(s.to_string()),
                },
                prefix: config.prefix.clone(),
                header: config.header,
            },
            Format::Kv => Kind::Kv {
                separator: config.separator.clone(),
                assign: config.assign.clone().unwrap_or_else(|| "=".into()),
                prefix: config.prefix.clone(),
            },
            Format::Regex => Kind::Regex(
                Regex::new(config.pattern.as_deref().unwrap_or_default())
                    .map_err(|e| format!("pattern: {e}"))?,
            ),
        };
        let mut named = HashMap::new();
        let mut indexed = Vec::new();
        for f in &config.fields {
            let native = f.field.as_deref().and_then(nmea::field_info);
            let target = Target {
                point: Name::from(f.point_name(config.format).unwrap_or_default()),
                // Scaling makes a float, whatever the field's own type.
                data_type: f
                    .data_type
                    .or_else(|| {
                        (f.scale.is_some() || f.offset.is_some()).then_some(FieldType::Float)
                    })
                    .or(native.map(|(t, _)| t))
                    .or(Some(FieldType::Float)),
                scale: f.scale.unwrap_or(1.0),
                offset: f.offset.unwrap_or(0.0),
                unit: f
                    .unit
                    .as_deref()
                    .or(native.and_then(|(_, u)| u))
                    .map(Name::from),
            };
            match (&f.field, f.index) {
                (_, Some(i)) => indexed.push((i, target)),
                (Some(name), None) => {
                    named.insert(name.clone(), target);
                }
                (None, None) => return Err("a field has neither `field` nor `index`".into()),
            }
        }
        let mut decoder = Decoder {
            auto: config.fields.is_empty(),
            kind,
            named,
            indexed,
            columns: Vec::new(),
            auto_targets: HashMap::new(),
            nmea: config.format == Format::Nmea,
        };
        decoder.set_header(&[]);
        Ok(decoder)
    }

    fn set_header(&mut self, names: &[&str]) {
        let width = names
            .len()
            .max(self.indexed.iter().map(|(i, _)| i + 1).max().unwrap_or(0));
        self.columns = vec![None; width];
        for (i, name) in names.iter().enumerate() {
            if let Some(t) = self.named.get(*name) {
                self.columns[i] = Some(t.clone());
            }
        }
        for (i, t) in &self.indexed {
            self.columns[*i] = Some(t.clone());
        }
    }

    /// Decodes one frame into `out` (appended).
    pub fn decode(&mut self, frame: &str, out: &mut Vec<Decoded>) -> Result<Frame, FrameError> {
        let mut parsed = Vec::with_capacity(16);
        let result = self.parse(frame, &mut parsed);
        if let Ok(Frame::Data) = result {
            for p in parsed.drain(..) {
                let target = match &p.key {
                    Key::Index(i) => self.columns.get(*i).and_then(Option::as_ref),
                    Key::Name(name) if self.auto => {
                        match auto_target(&mut self.auto_targets, name, p.unit, self.nmea) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                out.push(Decoded {
                                    point: Name::from(crate::excerpt(name, 40)),
                                    value: Err(e),
                                    unit: None,
                                    invalid: None,
                                });
                                None
                            }
                        }
                    }
                    Key::Name(name) => self.named.get(name.as_ref()),
                };
                if let Some(t) = target {
                    out.push(Decoded {
                        point: t.point.clone(),
                        value: t.convert(&p.raw),
                        unit: t.unit.clone(),
                        invalid: p.invalid,
                    });
                }
            }
        }
        result
    }

    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<Parsed<'a>>,
    ) -> Result<Frame, FrameError> {
        match &self.kind {
            Kind::Nmea(checksum) => nmea::parse(frame, *checksum, out)
                .map(|()| Frame::Data)
                .map_err(FrameError::Nmea),
            Kind::Csv {
                separator,
                prefix,
                header,
            } => {
                let rest = strip(frame, prefix.as_deref())?;
                let cells: Vec<&str> = match separator {
                    Separator::Whitespace => rest.split_whitespace().collect(),
                    Separator::Text(s) => rest.split(s.as_str()).map(unquote).collect(),
                };
                // The instrument prints its header when it starts (and some every so
                // often); a line naming every configured column is one. What it taught is
                // kept across reopens of the port: the instrument did not restart.
                let is_header = *header
                    && !self.named.is_empty()
                    && self.named.keys().all(|n| cells.contains(&n.as_str()));
                if is_header {
                    self.set_header(&cells);
                    return Ok(Frame::Header);
                }
                for (i, cell) in cells.into_iter().enumerate() {
                    if !cell.is_empty() {
                        out.push(Parsed {
                            key: Key::Index(i),
                            raw: Raw::Text(cell),
                            unit: None,
                            invalid: None,
                        });
                    }
                }
                Ok(Frame::Data)
            }
            Kind::Kv {
                separator,
                assign,
                prefix,
            } => {
                let rest = strip(frame, prefix.as_deref())?;
                let pieces: Box<dyn Iterator<Item = &str>> = match separator {
                    Some(s) if s == " " => Box::new(rest.split_whitespace()),
                    Some(s) => Box::new(rest.split(s.as_str())),
                    None => {
                        Box::new(rest.split(|c: char| c.is_whitespace() || c == ',' || c == ';'))
                    }
                };
                let before = out.len();
                for piece in pieces {
                    if let Some((k, v)) = piece.split_once(assign.as_str()) {
                        let (k, v) = (k.trim(), unquote(v));
                        if !k.is_empty() && !v.is_empty() {
                            out.push(Parsed {
                                key: Key::Name(Cow::Borrowed(k)),
                                raw: Raw::Text(v),
                                unit: None,
                                invalid: None,
                            });
                        }
                    }
                }
                if out.len() == before {
                    return Err(FrameError::Unmatched);
                }
                Ok(Frame::Data)
            }
            Kind::Regex(re) => {
                let caps = re.captures(frame).ok_or(FrameError::Unmatched)?;
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        let v = m.as_str().trim();
                        if !v.is_empty() {
                            out.push(Parsed {
                                key: Key::Name(Cow::Owned(name.to_string())),
                                raw: Raw::Text(v),
                                unit: None,
                                invalid: None,
                            });
                        }
                    }
                }
                Ok(Frame::Data)
            }
        }
    }
}

fn strip<'a>(frame: &'a str, prefix: Option<&str>) -> Result<&'a str, FrameError> {
    match prefix {
        Some(p) => frame.strip_prefix(p).ok_or(FrameError::Unmatched),
        None => Ok(frame),
    }
}

fn unquote(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t)
}

/// The most points one adapter makes up from field names when `fields` is empty: line noise
/// that happens to look like `key=value` must not grow memory for ever.
pub const MAX_AUTO_POINTS: usize = 1000;
/// The longest field name that becomes a point by itself.
pub const MAX_AUTO_NAME: usize = 64;

fn auto_target<'t>(
    cache: &'t mut HashMap<String, Target>,
    id: &str,
    unit: Option<&'static str>,
    nmea: bool,
) -> Result<&'t Target, String> {
    if !cache.contains_key(id) {
        if id.len() > MAX_AUTO_NAME
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        {
            return Err(format!(
                "`{}` is not taken as a point name (at most {MAX_AUTO_NAME} letters, digits, \
                 `_`, `-`, `.`, `/`); map it in [[adapters.fields]]",
                crate::excerpt(id, 40)
            ));
        }
        if cache.len() >= MAX_AUTO_POINTS {
            return Err(format!(
                "more than {MAX_AUTO_POINTS} distinct fields seen; name the ones to keep in \
                 [[adapters.fields]]"
            ));
        }
        let point = if nmea {
            id.split_once('.').map_or(id, |(_, f)| f)
        } else {
            id
        };
        let native = nmea::field_info(id).map(|(t, _)| t);
        cache.insert(
            id.to_string(),
            Target {
                point: Name::from(point),
                data_type: native,
                scale: 1.0,
                offset: 0.0,
                unit: unit.map(Name::from),
            },
        );
    }
    cache.get(id).ok_or_else(|| format!("`{id}` has no point"))
}

impl Target {
    fn convert(&self, raw: &Raw<'_>) -> Result<Value, String> {
        let Some(ty) = self.data_type else {
            return Ok(match raw {
                Raw::Num(v) => Value::F64(*v),
                Raw::Int(i) => Value::I64(*i),
                Raw::Bool(b) => Value::Bool(*b),
                Raw::Text(t) => match number(t) {
                    Some(v) => Value::F64(v),
                    None => Value::Text((*t).to_string()),
                },
            });
        };
        match ty {
            FieldType::Float => {
                let v = match raw {
                    Raw::Num(v) => *v,
                    #[allow(clippy::cast_precision_loss)]
                    Raw::Int(i) => *i as f64,
                    Raw::Bool(b) => f64::from(u8::from(*b)),
                    Raw::Text(t) => number(t).ok_or_else(|| format!("`{t}` is not a number"))?,
                };
                let v = v * self.scale + self.offset;
                if v.is_finite() {
                    Ok(Value::F64(v))
                } else {
                    Err(format!("{v} after scaling is not a finite number"))
                }
            }
            FieldType::Int => match raw {
                Raw::Int(i) => Ok(Value::I64(*i)),
                Raw::Bool(b) => Ok(Value::I64(i64::from(*b))),
                Raw::Num(v) => whole(*v).ok_or_else(|| format!("{v} is not a whole number")),
                Raw::Text(t) => t
                    .trim()
                    .trim_start_matches('+')
                    .parse::<i64>()
                    .map(Value::I64)
                    .map_err(|_| format!("`{t}` is not a whole number")),
            },
            FieldType::Bool => match raw {
                Raw::Bool(b) => Ok(Value::Bool(*b)),
                Raw::Int(0) => Ok(Value::Bool(false)),
                Raw::Int(1) => Ok(Value::Bool(true)),
                Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "on" | "yes" | "a" => Ok(Value::Bool(true)),
                    "0" | "false" | "off" | "no" | "v" => Ok(Value::Bool(false)),
                    _ => Err(format!("`{t}` is not a flag (1/0, true/false, on/off)")),
                },
                other => Err(format!("{other:?} is not a flag")),
            },
            FieldType::Text => Ok(Value::Text(match raw {
                Raw::Text(t) => (*t).to_string(),
                Raw::Num(v) => v.to_string(),
                Raw::Int(i) => i.to_string(),
                Raw::Bool(b) => b.to_string(),
            })),
        }
    }
}

/// A finite number, written the way instruments write them (`+21.5`, ` 3`, `1e3`).
fn number(t: &str) -> Option<f64> {
    let t = t.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    // `inf` and `nan` parse as floats in Rust; no instrument means them.
    if !t.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn whole(v: f64) -> Option<Value> {
    (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(Value::I64(v as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checked config from TOML.
    pub(super) fn config(toml: &str) -> SerialConfig {
        use figment::providers::{Format as _, Toml};
        let c: SerialConfig = figment::Figment::from(Toml::string(toml))
            .extract()
            .expect("valid toml");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c
    }

    fn decode(d: &mut Decoder, frame: &str) -> Result<Vec<String>, FrameError> {
        let mut out = Vec::new();
        d.decode(frame, &mut out)?;
        Ok(out
            .into_iter()
            .map(|r| {
                let v = match r.value {
                    Ok(Value::F64(v)) => format!("{v}"),
                    Ok(Value::I64(v)) => format!("{v}i"),
                    Ok(Value::Bool(v)) => format!("{v}"),
                    Ok(Value::Text(t)) => format!("{t:?}"),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("error: {e}"),
                };
                match r.unit {
                    Some(u) => format!("{}={v} {u}", r.point),
                    None => format!("{}={v}", r.point),
                }
            })
            .collect())
    }

    #[test]
    fn csv_by_index_with_scale_and_types() {
        let c = config(
            r#"
            port = "/dev/null"
            format = "csv"
            separator = ";"
            prefix = "D;"
            [[fields]]
            index = 0
            point = "temp"
            unit = "°C"
            scale = 0.1
            [[fields]]
            index = 2
            point = "alarm"
            type = "bool"
            [[fields]]
            index = 3
            point = "state"
            type = "text"
            [[fields]]
            index = 4
            point = "count"
            type = "int"
            "#,
        );
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, "D;215;ignored;1;\"RUN\";+42").expect("data"),
            ["temp=21.5 °C", "alarm=true", "state=\"RUN\"", "count=42i"]
        );
        assert_eq!(
            decode(&mut d, "D;x;;maybe;ok;4.5").expect("data with bad fields"),
            [
                "temp=error: `x` is not a number °C",
                "alarm=error: `maybe` is not a flag (1/0, true/false, on/off)",
                "state=\"ok\"",
                "count=error: `4.5` is not a whole number"
            ]
        );
        assert_eq!(decode(&mut d, "X;1;2"), Err(FrameError::Unmatched));
    }

    #[test]
    fn csv_by_header_follows_reordered_columns() {
        let c = config(
            r#"
            port = "/dev/null"
            format = "csv"
            header = true
            [[fields]]
            field = "TEMP"
            point = "t"
            [[fields]]
            field = "RH"
            "#,
        );
        let mut d = Decoder::new(&c).expect("decoder");
        let mut out = Vec::new();
        // Before any header (the gateway started while the instrument ran), named columns
        // are unknown: nothing comes out, and a data line is never taken for a header.
        assert_eq!(
            decode(&mut d, "12:00,21.4,39").expect("data"),
            Vec::<String>::new()
        );
        assert_eq!(d.decode("time,TEMP,RH", &mut out), Ok(Frame::Header));
        assert_eq!(
            decode(&mut d, "12:00,21.5,40").expect("data"),
            ["t=21.5", "RH=40"]
        );
        // The instrument restarts with another column order and prints its header again.
        assert_eq!(d.decode("RH,time,TEMP", &mut out), Ok(Frame::Header));
        assert_eq!(
            decode(&mut d, "41,12:01,21.6").expect("data"),
            ["RH=41", "t=21.6"]
        );
        assert_eq!(d.decode("RH,TEMP2", &mut out), Ok(Frame::Data));
    }

    #[test]
    fn kv_and_regex_with_and_without_fields() {
        let c = config("port = \"/dev/null\"\nformat = \"kv\"");
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, "T=21.5, H=40;STATUS=OK  noise p=\"+1013.2\"").expect("data"),
            ["T=21.5", "H=40", "STATUS=\"OK\"", "p=1013.2"]
        );
        assert_eq!(decode(&mut d, "no pairs here"), Err(FrameError::Unmatched));
        // Made-up keys stop becoming points at the cap; known ones keep working.
        for i in 0..MAX_AUTO_POINTS {
            decode(&mut d, &format!("k{i}=1")).expect("data");
        }
        let over = decode(&mut d, "noise=1 T=20").expect("data");
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(
            over[0].starts_with("noise=error: more than 1000 distinct fields"),
            "{over:?}"
        );
        assert_eq!(over[1], "T=20");
        let long = format!("{}=1 bad\u{7f}key=2", "k".repeat(65));
        let refused = decode(&mut d, &long).expect("data");
        assert!(
            refused
                .iter()
                .all(|r| r.contains("is not taken as a point name")),
            "{refused:?}"
        );
        // Dots belong to the name outside NMEA.
        let c = config("port = \"/dev/null\"\nformat = \"kv\"");
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, "ch1.temp=21 ch2.temp=35").expect("data"),
            ["ch1.temp=21", "ch2.temp=35"]
        );
        let c = config(
            "port = \"/dev/null\"\nformat = \"kv\"\nassign = \":\"\n[[fields]]\nfield = \"T\"\npoint = \"temp\"\nunit = \"°C\"",
        );
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, "T:21.5 H:40").expect("data"),
            ["temp=21.5 °C"]
        );

        let c = config(
            r#"
            port = "/dev/null"
            format = "regex"
            pattern = '^CO2 (?P<co2>\d+) ppm(?: T (?P<t>-?[\d.]+))?'
            "#,
        );
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, "CO2 415 ppm T -3.5").expect("data"),
            ["co2=415", "t=-3.5"]
        );
        assert_eq!(decode(&mut d, "CO2 416 ppm").expect("data"), ["co2=416"]);
        assert_eq!(decode(&mut d, "O2 20.9 %"), Err(FrameError::Unmatched));
    }

    #[test]
    fn nmea_fields_by_default_and_mapped() {
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let c = config("port = \"/dev/null\"\nformat = \"nmea\"");
        let mut d = Decoder::new(&c).expect("decoder");
        assert_eq!(
            decode(&mut d, gga).expect("data"),
            [
                "latitude=48.1173 °",
                "longitude=11.516666666666667 °",
                "fix_quality=1i",
                "satellites=8i",
                "hdop=0.9",
                "altitude=545.4 m",
                "geoid_separation=46.9 m"
            ]
        );
        let c = config(
            r#"
            port = "/dev/null"
            format = "nmea"
            [[fields]]
            field = "GGA.altitude"
            point = "alt_ft"
            scale = 3.28084
            unit = "ft"
            [[fields]]
            field = "GGA.satellites"
            "#,
        );
        let mut d = Decoder::new(&c).expect("decoder");
        let got = decode(&mut d, gga).expect("data");
        assert_eq!(got.len(), 2);
        // In the sentence's order; 545.4 m = 1789.37 ft.
        assert_eq!(got[0], "satellites=8i");
        assert!(got[1].starts_with("alt_ft=1789.37"), "{got:?}");
        assert!(got[1].ends_with(" ft"), "{got:?}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn decoder(toml: &str) -> Decoder {
        Decoder::new(&super::tests::config(toml)).expect("decoder")
    }

    proptest! {
        // No frame, however mangled, panics a decoder; every NMEA field keeps its bounds.
        #[test]
        fn any_text_decodes_without_panicking(
            frame in "[$*,.A-Z0-9a-z=;:\"é -]{0,120}",
            sentence in prop_oneof![Just("GPGGA"), Just("GPRMC"), Just("WIMDA"), Just("WIXDR"),
                Just("WIMWV"), Just("GPVTG"), Just("GPGLL"), Just("HCHDT")],
            fields in proptest::collection::vec("[0-9.NSEWAVRTKMNC-]{0,9}", 0..22),
        ) {
            let mut out = Vec::new();
            let body = format!("{sentence},{}", fields.join(","));
            let sum = body.bytes().fold(0u8, |a, b| a ^ b);
            let nmea = format!("${body}*{sum:02X}");
            let mut d = decoder("port = \"/dev/null\"\nformat = \"nmea\"\nchecksum = \"optional\"");
            for text in [frame.as_str(), nmea.as_str()] {
                let _ = d.decode(text, &mut out);
            }
            for r in &out {
                if let (Ok(Value::F64(v)), "latitude" | "longitude") = (&r.value, r.point.as_str()) {
                    prop_assert!(v.abs() <= 180.0, "{r:?}");
                }
                if let Ok(Value::F64(v)) = &r.value {
                    prop_assert!(v.is_finite());
                }
            }
            for toml in [
                "port = \"/dev/null\"\nformat = \"kv\"",
                "port = \"/dev/null\"\nformat = \"csv\"\nheader = true\n[[fields]]\nfield = \"a\"\n[[fields]]\nindex = 3\npoint = \"x\"",
                "port = \"/dev/null\"\nformat = \"regex\"\npattern = '(?P<a>[0-9]+)[=:](?P<b>.*)'",
            ] {
                let mut d = decoder(toml);
                let _ = d.decode(&frame, &mut out);
                let _ = d.decode(&frame, &mut out);
            }
        }
    }
}
