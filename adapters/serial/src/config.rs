//! The `type = "serial"` adapter section: one serial port, how its byte stream is cut into
//! frames, how each frame is parsed, and which parsed fields become which points.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use serde::Deserialize;

use crate::nmea;

/// `[[adapters]] type = "serial"`: one instrument on one serial port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The serial device, like `"/dev/ttyUSB0"`, or better a stable
    /// `"/dev/serial/by-id/usb-FTDI_..."` name that survives replugging into another socket.
    pub port: PathBuf,
    /// Speed in baud. Default 9600 (4800 is NMEA 0183's own speed).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `"none"` (default), `"even"` or `"odd"`.
    #[serde(default)]
    pub parity: Parity,
    /// 5 to 8. Default 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `"none"` (default), `"software"` (XON/XOFF) or `"hardware"` (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// The device id readings carry. Default: the adapter's id.
    #[serde(default)]
    pub device: Option<String>,
    /// `"line"` (default): frames end with `terminator`. `"delimited"`: frames sit between
    /// `start` and `end`; bytes outside them are discarded.
    #[serde(default)]
    pub framing: Framing,
    /// What ends a line (`framing = "line"`). Default `"\n"`; a `"\r"` left at either end of
    /// a line is dropped, so `"\r\n"` lines need no setting.
    #[serde(default = "default_terminator")]
    pub terminator: String,
    /// What starts a frame (`framing = "delimited"`), like `"\u0002"` (STX).
    #[serde(default)]
    pub start: Option<String>,
    /// What ends a frame (`framing = "delimited"`), like `"\u0003"` (ETX).
    #[serde(default)]
    pub end: Option<String>,
    /// The longest frame accepted, in bytes. Longer input is discarded up to the next
    /// terminator and counted. Default 1024.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// Appended to lines sent by commands that do not already end in `\r` or `\n`.
    /// Default `"\r\n"`.
    #[serde(default = "default_line_ending")]
    pub line_ending: String,
    /// Instruments that answer only when asked: send `request` every `interval`.
    #[serde(default)]
    pub poll: Option<PollConfig>,
    /// When no reading came for this long, the last values are reported again with stale
    /// quality and the port is reopened. Default: three poll intervals when polling, else
    /// never (set it to a few times the instrument's own period).
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub stale_after: Option<Duration>,
    /// First delay before reopening a port that failed or disappeared; doubled (with
    /// jitter) after every failure up to `backoff_max`. Default `"1s"`.
    #[serde(default = "default_backoff_min", with = "fieldgate_adapter::duration")]
    pub backoff_min: Duration,
    /// Longest delay between attempts to reopen. Default `"30s"`.
    #[serde(default = "default_backoff_max", with = "fieldgate_adapter::duration")]
    pub backoff_max: Duration,
    /// How frames are parsed: `"nmea"`, `"csv"`, `"kv"` (key=value pairs) or `"regex"`.
    pub format: Format,
    /// `"nmea"`: `"required"` (default) drops sentences without a `*hh` checksum;
    /// `"optional"` accepts them (a present checksum must still be right).
    #[serde(default)]
    pub checksum: Checksum,
    /// `"csv"`: the field separator, default `","`; `" "` splits on runs of spaces and tabs.
    /// `"kv"`: what separates pairs, default: any run of spaces, tabs, `,` or `;`.
    #[serde(default)]
    pub separator: Option<String>,
    /// `"csv"`: the instrument prints a header line naming its columns (when it starts, and
    /// some every so often): a line holding every column name `fields` use is taken as the
    /// header, and its column order kept until the next one. Until the first, columns named
    /// by `field` give nothing; instruments that print it only at power-up are better read
    /// by `index`.
    #[serde(default)]
    pub header: bool,
    /// `"kv"`: what joins a key to its value. Default `"="`.
    #[serde(default)]
    pub assign: Option<String>,
    /// `"regex"`: a regular expression with named captures (`(?P<temp>-?\d+\.\d)`); frames
    /// it does not match are counted and dropped.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `"csv"` and `"kv"`: only frames starting with this text are parsed (it is removed
    /// first); others are counted as unmatched.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Which parsed fields become which points. `"csv"` needs them; for the others, when
    /// empty, every field becomes a point named after it.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
}

/// `[adapters.poll]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Sent as written (say `"R\r\n"`), every `interval`, while the port is open.
    pub request: String,
    /// How often. Like `"10s"`.
    #[serde(with = "fieldgate_adapter::duration")]
    pub interval: Duration,
}

/// One `[[adapters.fields]]` entry: a parsed field and the point it becomes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// The field: an NMEA field like `"GGA.altitude"` or `"XDR.AirTemp"`, a CSV column
    /// name (with `header = true`), a `kv` key, or a `regex` capture name.
    #[serde(default)]
    pub field: Option<String>,
    /// `"csv"`: the field's 0-based column, instead of `field`.
    #[serde(default)]
    pub index: Option<usize>,
    /// The point id readings carry. Default: the field's name (for NMEA, the part after the
    /// `.`).
    #[serde(default)]
    pub point: Option<String>,
    /// `"float"`, `"int"`, `"bool"` or `"text"`. Default: the NMEA field's own type, else
    /// `"float"`.
    #[serde(rename = "type", default)]
    pub data_type: Option<FieldType>,
    /// Multiplier: `value = raw * scale + offset` (`float` only). Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after `scale`. Default 0.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Unit attached to every reading. Default: the NMEA field's own unit, else none.
    #[serde(default)]
    pub unit: Option<String>,
}

/// The type a field's text is converted to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A number, scaled.
    Float,
    /// A whole number (`12`, `-3`).
    Int,
    /// `1`/`0`, `true`/`false`, `on`/`off`, `yes`/`no`, `A`/`V` (NMEA status).
    Bool,
    /// The text as it came.
    Text,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// How the byte stream is cut into frames.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Frames end with a terminator.
    #[default]
    Line,
    /// Frames sit between a start and an end marker.
    Delimited,
}

/// How frames are parsed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// NMEA 0183 sentences.
    Nmea,
    /// Delimited fields, by column index or header name.
    Csv,
    /// `key=value` pairs.
    Kv,
    /// A regular expression with named captures.
    Regex,
}

impl Format {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Nmea => "nmea",
            Format::Csv => "csv",
            Format::Kv => "kv",
            Format::Regex => "regex",
        }
    }
}

/// Whether NMEA sentences must carry a checksum.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// Sentences without `*hh` are dropped.
    #[default]
    Required,
    /// Sentences without `*hh` are accepted; a wrong one is still dropped.
    Optional,
}

const fn default_baud() -> u32 {
    9600
}
const fn default_data_bits() -> u8 {
    8
}
const fn default_stop_bits() -> u8 {
    1
}
fn default_terminator() -> String {
    "\n".into()
}
fn default_line_ending() -> String {
    "\r\n".into()
}
const fn default_max_frame() -> usize {
    1024
}
const fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
const fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// The longest interval or backoff accepted.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
/// The largest `max_frame` accepted.
pub const MAX_FRAME_LIMIT: usize = 65_536;
/// CSV columns are numbered below this.
pub const MAX_COLUMNS: usize = 4096;

impl SerialConfig {
    /// When the last values go stale: `stale_after`, else three poll intervals when polling.
    pub fn effective_stale_after(&self) -> Option<Duration> {
        self.stale_after
            .or_else(|| self.poll.as_ref().map(|p| p.interval.saturating_mul(3)))
    }

    /// Every problem with this section.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut push = |k: &str, m: String| out.push(ConfigProblem::new(k, m));
        if self.port.as_os_str().is_empty() {
            push(
                "port",
                "needs the serial device, like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/...\""
                    .into(),
            );
        }
        if self.baud == 0 {
            push("baud", "must be greater than zero, like 9600".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            push("data_bits", "must be 5, 6, 7 or 8".into());
        }
        if !(self.stop_bits == 1 || self.stop_bits == 2) {
            push("stop_bits", "must be 1 or 2".into());
        }
        if self.device.as_deref().is_some_and(|d| d.trim().is_empty()) {
            push(
                "device",
                "must not be empty (leave it out to use the adapter id)".into(),
            );
        }
        match self.framing {
            Framing::Line => {
                if self.terminator.is_empty() {
                    push("terminator", "must not be empty, like \"\\n\"".into());
                }
                for (k, v) in [("start", &self.start), ("end", &self.end)] {
                    if v.is_some() {
                        push(
                            k,
                            format!("`{k}` is for framing = \"delimited\"; set that, or use `terminator`"),
                        );
                    }
                }
            }
            Framing::Delimited => {
                for (k, v) in [("start", &self.start), ("end", &self.end)] {
                    if v.as_deref().is_none_or(str::is_empty) {
                        push(
                            k,
                            format!("framing = \"delimited\" needs `{k}`, like \"\\u0002\""),
                        );
                    }
                }
                if self.start.is_some() && self.start == self.end {
                    push(
                        "end",
                        "must differ from `start` (for one separator between frames, use \
                         framing = \"line\" with it as `terminator`)"
                            .into(),
                    );
                }
            }
        }
        if !(8..=MAX_FRAME_LIMIT).contains(&self.max_frame) {
            push("max_frame", format!("must be 8-{MAX_FRAME_LIMIT} bytes"));
        }
        if let Some(poll) = &self.poll {
            if poll.request.is_empty() {
                push("poll.request", "must not be empty, like \"R\\r\\n\"".into());
            }
            if poll.interval.is_zero() || poll.interval > MAX_DURATION {
                push(
                    "poll.interval",
                    "must be greater than zero and at most 365 days".into(),
                );
            }
        }
        if self
            .stale_after
            .is_some_and(|d| d.is_zero() || d > MAX_DURATION)
        {
            push(
                "stale_after",
                "must be greater than zero and at most 365 days".into(),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            push(
                "backoff_min",
                "must be greater than zero and at most `backoff_max`".into(),
            );
        }
        if self.backoff_max > MAX_DURATION {
            push("backoff_max", "must be at most 365 days".into());
        }
        self.validate_format(&mut push);
        out.extend(self.validate_fields());
        out
    }

    fn validate_format(&self, push: &mut impl FnMut(&str, String)) {
        let only = |key: &str, formats: &str| {
            format!(
                "`{key}` is for format {formats}; this adapter's format is \"{}\"",
                self.format.as_str()
            )
        };
        let f = self.format;
        if self.checksum != Checksum::Required && f != Format::Nmea {
            push("checksum", only("checksum", "\"nmea\""));
        }
        if self.separator.is_some() && !matches!(f, Format::Csv | Format::Kv) {
            push("separator", only("separator", "\"csv\" or \"kv\""));
        }
        if self.separator.as_deref() == Some("") {
            push("separator", "must not be empty".into());
        }
        if self.header && f != Format::Csv {
            push("header", only("header", "\"csv\""));
        }
        if self.assign.is_some() && f != Format::Kv {
            push("assign", only("assign", "\"kv\""));
        }
        if self.assign.as_deref() == Some("") {
            push("assign", "must not be empty, like \"=\"".into());
        }
        if self.prefix.is_some() && !matches!(f, Format::Csv | Format::Kv) {
            push(
                "prefix",
                only(
                    "prefix",
                    "\"csv\" or \"kv\" (a `pattern` can anchor itself)",
                ),
            );
        }
        match (f, &self.pattern) {
            (Format::Regex, None) => push(
                "pattern",
                "format \"regex\" needs `pattern`, a regular expression with named captures like \
                 \"T=(?P<temp>-?[0-9.]+)\""
                    .into(),
            ),
            (Format::Regex, Some(p)) => match regex::Regex::new(p) {
                Err(e) => push("pattern", format!("is not a valid regular expression: {e}")),
                Ok(re) if re.capture_names().flatten().next().is_none() => push(
                    "pattern",
                    "has no named capture; name the values to keep, like (?P<temp>-?[0-9.]+)"
                        .into(),
                ),
                Ok(_) => {}
            },
            (_, Some(_)) => push("pattern", only("pattern", "\"regex\"")),
            (_, None) => {}
        }
        if f == Format::Csv && self.fields.is_empty() {
            push(
                "fields",
                "format \"csv\" needs `fields`: which column (`index` or, with `header = true`, \
                 `field`) becomes which point"
                    .into(),
            );
        }
    }

    fn validate_fields(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let captures: Option<Vec<String>> = match (&self.format, &self.pattern) {
            (Format::Regex, Some(p)) => regex::Regex::new(p)
                .ok()
                .map(|re| re.capture_names().flatten().map(str::to_string).collect()),
            _ => None,
        };
        let mut points = HashSet::new();
        let mut sources = HashSet::new();
        if self.format == Format::Csv
            && self.header
            && !self.fields.iter().any(|f| f.field.is_some())
        {
            out.push(ConfigProblem::new(
                "header",
                "`header = true` names columns by the instrument's header line: give at least \
                 one field a `field` (a column name), or leave `header` out and use `index`",
            ));
        }
        for (i, field) in self.fields.iter().enumerate() {
            let mut push = |k: &str, m: String| {
                out.push(ConfigProblem::new(format!("fields[{i}].{k}"), m));
            };
            match (&field.field, field.index) {
                (None, None) => push(
                    "field",
                    if self.format == Format::Csv {
                        "needs `index` (the 0-based column) or `field` (its header name)".into()
                    } else {
                        "needs `field`, the name of the parsed value".into()
                    },
                ),
                (Some(_), Some(_)) => push("index", "set `field` or `index`, not both".into()),
                (None, Some(_)) if self.format != Format::Csv => push(
                    "index",
                    "`index` is for format \"csv\"; name the field with `field`".into(),
                ),
                (Some(name), None) => {
                    if name.trim().is_empty() {
                        push("field", "must not be empty".into());
                    } else {
                        match self.format {
                            Format::Nmea => {
                                if let Err(m) = nmea::check_field(name) {
                                    push("field", m);
                                }
                            }
                            Format::Csv if !self.header => push(
                                "field",
                                "a column name needs `header = true`; or use `index`".into(),
                            ),
                            Format::Regex => {
                                if let Some(names) = &captures {
                                    if !names.iter().any(|n| n == name) {
                                        push(
                                            "field",
                                            format!(
                                                "`{name}` is not a named capture of `pattern`; it has: {}",
                                                names.join(", ")
                                            ),
                                        );
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                (None, Some(i)) => {
                    if i >= MAX_COLUMNS {
                        push("index", format!("must be below {MAX_COLUMNS}"));
                    }
                }
            }
            let key = match (&field.field, field.index) {
                (Some(f), _) => Some(f.clone()),
                (None, Some(i)) => Some(format!("#{i}")),
                (None, None) => None,
            };
            if let Some(key) = key {
                if !sources.insert(key) {
                    let what = match (&field.field, field.index) {
                        (Some(f), _) => format!("field `{f}`"),
                        (None, i) => format!("column {}", i.unwrap_or_default()),
                    };
                    push(
                        if field.field.is_some() {
                            "field"
                        } else {
                            "index"
                        },
                        format!("{what} is mapped twice; one field makes one point"),
                    );
                }
            }
            let point = field.point_name(self.format);
            match point {
                Some(p) if p.trim().is_empty() => push("point", "must not be empty".into()),
                Some(p) => {
                    if !points.insert(p.to_string()) {
                        push("point", format!("point `{p}` is produced by two fields"));
                    }
                }
                None => push(
                    "point",
                    "a column by `index` needs `point`, its name".into(),
                ),
            }
            for (k, v) in [("scale", field.scale), ("offset", field.offset)] {
                if let Some(v) = v {
                    if !v.is_finite() {
                        push(k, "must be a finite number".into());
                    } else if field.data_type.is_some_and(|t| t != FieldType::Float) {
                        push(k, format!("`{k}` applies to type \"float\" only"));
                    }
                }
            }
        }
        out
    }
}

impl FieldConfig {
    /// The point id: `point`, else the field's name (after the `.` for NMEA fields).
    pub fn point_name(&self, format: Format) -> Option<&str> {
        if let Some(p) = &self.point {
            return Some(p);
        }
        let f = self.field.as_deref()?;
        Some(match format {
            Format::Nmea => f.split_once('.').map_or(f, |(_, name)| name),
            _ => f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> SerialConfig {
        use figment::providers::{Format as _, Toml};
        figment::Figment::from(Toml::string(toml))
            .extract()
            .expect("valid toml")
    }

    fn problems(toml: &str) -> Vec<String> {
        parse(toml)
            .validate()
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn defaults_are_those_documented() {
        let c = parse("port = \"/dev/ttyUSB0\"\nformat = \"nmea\"");
        assert_eq!(c.baud, 9600);
        assert_eq!(c.terminator, "\n");
        assert_eq!(c.line_ending, "\r\n");
        assert_eq!(c.max_frame, 1024);
        assert_eq!(c.checksum, Checksum::Required);
        assert_eq!(c.effective_stale_after(), None);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let polled = parse(
            "port = \"/dev/ttyS0\"\nformat = \"kv\"\n[poll]\nrequest = \"R\\r\\n\"\ninterval = \"10s\"",
        );
        assert_eq!(
            polled.effective_stale_after(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn mistakes_are_reported_by_key() {
        let got = problems(
            r#"
            port = "/dev/ttyUSB0"
            format = "csv"
            data_bits = 9
            framing = "delimited"
            start = "\u0002"
            pattern = "x"
            max_frame = 2
            [[fields]]
            field = "temp"
            [[fields]]
            index = 2
            [[fields]]
            index = 3
            point = "temp"
            scale = 2.0
            type = "int"
            "#,
        );
        let want = [
            "data_bits: must be 5, 6, 7 or 8",
            "end: framing = \"delimited\" needs `end`, like \"\\u0002\"",
            "max_frame: must be 8-65536 bytes",
            "pattern: `pattern` is for format \"regex\"; this adapter's format is \"csv\"",
            "fields[0].field: a column name needs `header = true`; or use `index`",
            "fields[1].point: a column by `index` needs `point`, its name",
            "fields[2].point: point `temp` is produced by two fields",
            "fields[2].scale: `scale` applies to type \"float\" only",
        ];
        assert_eq!(got, want);
        let got = problems(
            r#"
            port = "/dev/ttyUSB0"
            format = "csv"
            header = true
            framing = "delimited"
            start = "|"
            end = "|"
            [[fields]]
            index = 1
            point = "a"
            [[fields]]
            index = 1
            point = "b"
            [[fields]]
            index = 5000
            point = "c"
            "#,
        );
        let want = [
            "end: must differ from `start` (for one separator between frames, use framing = \"line\" with it as `terminator`)",
            "header: `header = true` names columns by the instrument's header line: give at least one field a `field` (a column name), or leave `header` out and use `index`",
            "fields[1].index: column 1 is mapped twice; one field makes one point",
            "fields[2].index: must be below 4096",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn regex_and_nmea_fields_are_checked_against_what_exists() {
        let got = problems(
            r#"
            port = "/dev/ttyUSB0"
            format = "regex"
            pattern = "T=(?P<temp>[0-9.]+) H=(?P<hum>[0-9.]+)"
            [[fields]]
            field = "humidity"
            "#,
        );
        assert_eq!(
            got,
            ["fields[0].field: `humidity` is not a named capture of `pattern`; it has: temp, hum"]
        );
        let got = problems("port = \"/dev/ttyUSB0\"\nformat = \"regex\"\npattern = \"(unclosed\"");
        assert!(
            got[0].starts_with("pattern: is not a valid regular expression"),
            "{got:?}"
        );
        let got = problems(
            "port = \"/dev/ttyUSB0\"\nformat = \"nmea\"\n[[fields]]\nfield = \"GGA.altitud\"",
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("fields[0].field: `GGA.altitud`: GGA has no field `altitud`"),
            "{got:?}"
        );
    }
}
