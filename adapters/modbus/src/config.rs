//! The `type = "modbus"` adapter section: one link (a TCP connection or one RS-485 bus), the
//! devices on it and their register maps.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::codec::{ByteOrder, DataType};

/// `[[adapters]] type = "modbus"`: one Modbus link and the devices on it.
///
/// Every request on one adapter goes out on one link, one at a time, with `frame_gap` between
/// them: the devices on an RS-485 bus never collide. Devices on different links (two TCP
/// hosts, two serial ports) belong in different adapters, which poll in parallel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// `"tcp"`, `"rtu"` (a serial port) or `"rtu_over_tcp"` (a serial server speaking raw RTU
    /// frames over TCP).
    pub transport: Transport,
    /// `host:port` for `tcp` and `rtu_over_tcp`, like `"192.168.1.20:502"`.
    #[serde(default)]
    pub address: Option<String>,
    /// The serial device for `rtu`, like `"/dev/ttyUSB0"` or a stable
    /// `"/dev/serial/by-id/..."` name.
    #[serde(default)]
    pub port: Option<PathBuf>,
    /// Serial speed in baud (`rtu`). Default 9600.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `"none"` (default), `"even"` or `"odd"` (`rtu`).
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8 (default) (`rtu`).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 (default) or 2 (`rtu`).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// How long to wait for each response. Default `"1s"`.
    #[serde(default = "default_timeout", with = "fieldgate_adapter::duration")]
    pub timeout: Duration,
    /// Extra attempts after a timeout or transport error before the device is marked stale
    /// and left alone for a backoff. Default 1.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Silence kept on the link between a response and the next request. Default: 3.5
    /// character times at `baud`, at least 2 ms, for `rtu`; none for TCP.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub frame_gap: Option<Duration>,
    /// Poll interval for points that set none (and devices that set none). Default `"5s"`.
    #[serde(default = "default_interval", with = "fieldgate_adapter::duration")]
    pub interval: Duration,
    /// First delay before reconnecting, or before polling a device that stopped answering;
    /// doubled (with jitter) after every failure up to `backoff_max`. Default `"1s"`.
    #[serde(default = "default_backoff_min", with = "fieldgate_adapter::duration")]
    pub backoff_min: Duration,
    /// Longest delay between attempts. Default `"60s"`.
    #[serde(default = "default_backoff_max", with = "fieldgate_adapter::duration")]
    pub backoff_max: Duration,
    /// The devices (slaves) on this link.
    pub devices: Vec<DeviceConfig>,
}

/// How the adapter reaches its devices.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Modbus TCP (MBAP header, transaction ids).
    Tcp,
    /// Modbus RTU on a serial port.
    Rtu,
    /// Modbus RTU frames carried over a TCP connection (serial device servers).
    RtuOverTcp,
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

/// One Modbus device (slave) on the link.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id readings carry.
    pub id: String,
    /// The Modbus unit (slave) id, 0–247. Default 1. (For `tcp`, the unit id a TCP gateway
    /// uses to pick the serial device behind it; plain TCP devices usually ignore it.)
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Byte and word order of multi-register values: `"ABCD"` (default, big-endian),
    /// `"CDAB"`, `"BADC"` or `"DCBA"`. A point can override it.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Poll interval of this device's points that set none. Default: the adapter's.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub interval: Option<Duration>,
    /// Largest run of unmapped registers (or bits) a merged read may span. Default 16.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Most registers in one read, 1–125. Default 125 (the protocol's limit).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Most coils or discrete inputs in one read, 1–2000. Default 2000 (the protocol's limit).
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// The device's points.
    pub points: Vec<PointConfig>,
}

/// One mapped value of a device.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// The point id readings carry.
    pub name: String,
    /// Where the value lives. Either a 0-based protocol address (a number, 0–65535) together
    /// with `table`, or a Modicon reference as a *string*: `"40001"` / `"400001"` is holding
    /// register 0, `"30001"` input register 0, `"10001"` discrete input 0, `"00001"` coil 0.
    pub address: Address,
    /// `"coil"`, `"discrete_input"`, `"input_register"` or `"holding_register"`. Required with
    /// a numeric address; implied by a Modicon reference.
    #[serde(default)]
    pub table: Option<Table>,
    /// The value's type: `bool` (coils and discrete inputs; the default there), `u16` (the
    /// default for registers), `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `string` (with
    /// `length` registers) or `bit` (one bit of a register, with `bit`).
    #[serde(rename = "type", default)]
    pub data_type: Option<DataType>,
    /// The bit of the register for `type = "bit"`, 0 (least significant) to 15.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Registers holding a `string` (two characters each).
    #[serde(default)]
    pub length: Option<u16>,
    /// Overrides the device's `byte_order` for this point.
    #[serde(default)]
    pub byte_order: Option<ByteOrder>,
    /// Multiplier applied to the raw value: `value = raw * scale + offset`. Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after `scale`. Default 0.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Unit attached to every reading, like `"m"`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Poll interval. Default: the device's, else the adapter's.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub interval: Option<Duration>,
    /// Report by exception: a reading is produced only when the value moved more than this
    /// (in engineering units, after scaling) since the last one produced, when it changed at
    /// all for non-numeric values, or when the quality changed. Default: every poll.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// With `deadband`: produce a reading at least this often even when nothing moved.
    /// Default `"15m"` when `deadband` is set.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub heartbeat: Option<Duration>,
    /// Whether commands may write this point (coils and holding registers only). Default false.
    #[serde(default)]
    pub writable: bool,
    /// With `writable`: the lowest value a command may write (engineering units). Default: the
    /// type's range only.
    #[serde(default)]
    pub min: Option<f64>,
    /// With `writable`: the highest value a command may write (engineering units).
    #[serde(default)]
    pub max: Option<f64>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write bits (function codes 1, 5, 15); Modicon `0xxxx`.
    Coil,
    /// Read-only bits (function code 2); Modicon `1xxxx`.
    DiscreteInput,
    /// Read-only registers (function code 4); Modicon `3xxxx`.
    InputRegister,
    /// Read/write registers (function codes 3, 6, 16); Modicon `4xxxx`.
    HoldingRegister,
}

impl Table {
    /// True for the two bit tables.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::InputRegister => "input_register",
            Table::HoldingRegister => "holding_register",
        }
    }

    /// Most elements one read may ask for (the protocol's limit).
    pub fn protocol_max(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

/// A point's address as written in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A 0-based protocol address; the table comes from `table`.
    Offset(u16),
    /// A Modicon reference: the table from its first digit, then a 1-based number.
    Reference {
        /// The table the first digit names.
        table: Table,
        /// The 0-based protocol address.
        offset: u16,
        /// The text as written, for messages.
        text: String,
    },
}

impl Address {
    /// Parses a Modicon reference: 5 digits (`"40001"`, numbers 1–9999) or 6 digits
    /// (`"400001"`, numbers 1–65536); first digit 0 coil, 1 discrete input, 3 input register,
    /// 4 holding register.
    pub fn parse_reference(s: &str) -> Result<Address, String> {
        let t = s.trim();
        if !(t.len() == 5 || t.len() == 6) || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{s}` is not a Modicon reference; write 5 or 6 digits like \"40001\" (holding \
                 register 0), or a 0-based number with `table`"
            ));
        }
        let table = match t.as_bytes()[0] {
            b'0' => Table::Coil,
            b'1' => Table::DiscreteInput,
            b'3' => Table::InputRegister,
            b'4' => Table::HoldingRegister,
            _ => {
                return Err(format!(
                    "`{s}`: a Modicon reference starts with 0 (coil), 1 (discrete input), 3 \
                     (input register) or 4 (holding register)"
                ))
            }
        };
        let number: u32 = t[1..]
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        let max = if t.len() == 5 { 9999 } else { 65536 };
        if number == 0 || number > max {
            return Err(format!(
                "`{s}`: the number after the table digit counts from 1, up to {max}"
            ));
        }
        Ok(Address::Reference {
            table,
            offset: u16::try_from(number - 1).map_err(|_| format!("`{s}` is out of range"))?,
            text: t.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a 0-based register number (0-65535, with `table`) or a Modicon reference \
                     string like \"40001\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Address, E> {
                u16::try_from(v).map(Address::Offset).map_err(|_| {
                    E::custom(format!(
                        "address {v} is out of range: a 0-based address is 0-65535 (a Modicon \
                         reference like 40001 must be written as a string, \"40001\")"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Address, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Address, E> {
                Address::parse_reference(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
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
const fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
const fn default_retries() -> u32 {
    1
}
const fn default_interval() -> Duration {
    Duration::from_secs(5)
}
const fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
const fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
const fn default_unit() -> u8 {
    1
}
const fn default_max_gap() -> u16 {
    16
}
const fn default_max_registers() -> u16 {
    125
}
const fn default_max_bits() -> u16 {
    2000
}

/// The longest interval, timeout or backoff accepted.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The heartbeat used when `deadband` is set without one.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15 * 60);

impl ModbusConfig {
    /// The silence kept between frames on this link.
    pub fn effective_frame_gap(&self) -> Duration {
        if let Some(gap) = self.frame_gap {
            return gap;
        }
        match self.transport {
            Transport::Tcp => Duration::ZERO,
            // 3.5 characters of 11 bits each; the spec fixes 1.75 ms above 19200 baud.
            Transport::Rtu | Transport::RtuOverTcp => {
                let per_char = 11.0 / f64::from(self.baud.max(1));
                Duration::from_secs_f64(3.5 * per_char).max(Duration::from_millis(2))
            }
        }
    }

    /// Every problem with this section.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut push = |k: String, m: String| out.push(ConfigProblem::new(k, m));
        match self.transport {
            Transport::Tcp | Transport::RtuOverTcp => {
                match self.address.as_deref().map(str::trim) {
                    None | Some("") => push(
                        "address".into(),
                        format!(
                            "transport \"{}\" needs `address`, like \"192.168.1.20:502\"",
                            self.transport_name()
                        ),
                    ),
                    Some(a) if !a.contains(':') => push(
                        "address".into(),
                        format!("`{a}` needs a port, like \"{a}:502\""),
                    ),
                    Some(_) => {}
                }
                if self.port.is_some() {
                    push(
                        "port".into(),
                        "`port` is a serial device, for transport \"rtu\" only".into(),
                    );
                }
            }
            Transport::Rtu => {
                if self.port.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                    push(
                        "port".into(),
                        "transport \"rtu\" needs `port`, the serial device, like \"/dev/ttyUSB0\""
                            .into(),
                    );
                }
                if self.address.is_some() {
                    push(
                        "address".into(),
                        "`address` is host:port, for transports \"tcp\" and \"rtu_over_tcp\"; a \
                         serial link takes `port`"
                            .into(),
                    );
                }
            }
        }
        if self.baud == 0 {
            push("baud".into(), "must be greater than zero, like 9600".into());
        }
        if !(self.data_bits == 7 || self.data_bits == 8) {
            push("data_bits".into(), "must be 7 or 8".into());
        }
        if !(self.stop_bits == 1 || self.stop_bits == 2) {
            push("stop_bits".into(), "must be 1 or 2".into());
        }
        if self.timeout.is_zero() {
            push(
                "timeout".into(),
                "must be greater than zero, like \"1s\"".into(),
            );
        }
        if self.interval.is_zero() {
            push(
                "interval".into(),
                "must be greater than zero, like \"5s\"".into(),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            push(
                "backoff_min".into(),
                "must be greater than zero and at most `backoff_max`".into(),
            );
        }
        for (k, d) in [
            ("timeout", Some(self.timeout)),
            ("interval", Some(self.interval)),
            ("backoff_max", Some(self.backoff_max)),
            ("frame_gap", self.frame_gap),
        ] {
            if d.is_some_and(|d| d > MAX_DURATION) {
                push(k.into(), "must be at most 365 days".into());
            }
        }
        if self.devices.is_empty() {
            push("devices".into(), "needs at least one device".into());
        }
        let mut ids = HashSet::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let dk = |k: &str| format!("devices[{d}].{k}");
            if dev.id.trim().is_empty() {
                push(dk("id"), "must not be empty".into());
            }
            if !ids.insert(dev.id.as_str()) {
                push(dk("id"), format!("device `{}` is defined twice", dev.id));
            }
            if dev.unit > 247 {
                push(dk("unit"), "a unit id is 0-247".into());
            }
            if dev.unit == 0 && self.transport != Transport::Tcp {
                push(
                    dk("unit"),
                    "unit 0 is the broadcast address on a serial bus: no device answers a read \
                     sent to it; use the device's own id (1-247)"
                        .into(),
                );
            }
            if dev
                .interval
                .is_some_and(|i| i.is_zero() || i > MAX_DURATION)
            {
                push(
                    dk("interval"),
                    "must be greater than zero and at most 365 days".into(),
                );
            }
            if !(1..=125).contains(&dev.max_registers) {
                push(dk("max_registers"), "must be 1-125".into());
            }
            if !(1..=2000).contains(&dev.max_bits) {
                push(dk("max_bits"), "must be 1-2000".into());
            }
            if dev.points.is_empty() {
                push(dk("points"), "needs at least one point".into());
            }
            let mut names = HashSet::new();
            for (p, point) in dev.points.iter().enumerate() {
                let key = |k: &str| format!("devices[{d}].points[{p}].{k}");
                if point.name.trim().is_empty() {
                    push(key("name"), "must not be empty".into());
                }
                if !names.insert(point.name.as_str()) {
                    push(
                        key("name"),
                        format!(
                            "point `{}` is defined twice in device `{}`",
                            point.name, dev.id
                        ),
                    );
                }
                if let Err((k, m)) = point.resolve(dev) {
                    push(key(k), m);
                }
                for (k, d) in [("interval", point.interval), ("heartbeat", point.heartbeat)] {
                    if d.is_some_and(|i| i.is_zero() || i > MAX_DURATION) {
                        push(
                            key(k),
                            "must be greater than zero and at most 365 days".into(),
                        );
                    }
                }
                for (k, v) in [
                    ("scale", point.scale),
                    ("offset", point.offset),
                    ("deadband", point.deadband),
                ] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        push(key(k), "must be a finite number".into());
                    }
                }
                if point.scale == Some(0.0) {
                    push(
                        key("scale"),
                        "must not be zero (every value would read 0)".into(),
                    );
                }
                if point.deadband.is_some_and(|d| d < 0.0) {
                    push(key("deadband"), "must be zero or positive".into());
                }
                if point.heartbeat.is_some() && point.deadband.is_none() {
                    push(
                        key("heartbeat"),
                        "only means something with `deadband` (without it every poll is reported)"
                            .into(),
                    );
                }
            }
        }
        out
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Tcp => "tcp",
            Transport::Rtu => "rtu",
            Transport::RtuOverTcp => "rtu_over_tcp",
        }
    }
}

/// A point's location and type with every default applied and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The table.
    pub table: Table,
    /// The 0-based address of its first register or bit.
    pub offset: u16,
    /// The type.
    pub data_type: DataType,
    /// Registers (or bits) it occupies.
    pub count: u16,
    /// Byte order (the point's, else the device's).
    pub order: ByteOrder,
    /// The bit for `DataType::Bit`.
    pub bit: u8,
}

impl PointConfig {
    /// Applies defaults and checks the point's table, type, size and flags; an error names the
    /// key at fault.
    pub fn resolve(&self, dev: &DeviceConfig) -> Result<Resolved, (&'static str, String)> {
        let (table, offset) = match (&self.address, self.table) {
            (Address::Offset(o), None) => {
                let hint = if matches!(o / 10_000, 1 | 3 | 4) {
                    format!(
                        "{o} looks like a Modicon reference: write it as a string, address = \
                         \"{o}\"; "
                    )
                } else {
                    String::new()
                };
                return Err((
                    "table",
                    format!(
                        "{hint}a numeric address is 0-based and needs `table` (\"coil\", \
                         \"discrete_input\", \"input_register\" or \"holding_register\"), or \
                         write a Modicon reference as a string, like address = \"40001\""
                    ),
                ));
            }
            (Address::Offset(o), Some(t)) => (t, *o),
            (
                Address::Reference {
                    table,
                    offset,
                    text,
                },
                t,
            ) => {
                if let Some(t) = t.filter(|t| t != table) {
                    return Err((
                        "table",
                        format!(
                            "\"{text}\" is a {} reference but `table` says \"{}\"; drop \
                             `table` or write a 0-based number",
                            table.as_str(),
                            t.as_str()
                        ),
                    ));
                }
                (*table, *offset)
            }
        };
        let data_type = self.data_type.unwrap_or(if table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        });
        if table.is_bits() != (data_type == DataType::Bool) {
            return Err((
                "type",
                if table.is_bits() {
                    format!("a {} holds one bit: type \"bool\"", table.as_str())
                } else {
                    "a register is not a bool; use type \"bit\" with `bit` for one bit of it".into()
                },
            ));
        }
        let count = match data_type {
            DataType::String => match self.length {
                Some(n) if (1..=125).contains(&n) => n,
                _ => {
                    return Err((
                        "length",
                        "type \"string\" needs `length`, its number of registers (1-125)".into(),
                    ))
                }
            },
            other => other.registers(),
        };
        if self.length.is_some() && data_type != DataType::String {
            return Err(("length", "only for type \"string\"".into()));
        }
        let bit = match (data_type, self.bit) {
            (DataType::Bit, Some(b)) if b < 16 => b,
            (DataType::Bit, _) => {
                return Err((
                    "bit",
                    "type \"bit\" needs `bit`, 0 (least significant) to 15".into(),
                ))
            }
            (_, Some(_)) => return Err(("bit", "only for type \"bit\"".into())),
            (_, None) => 0,
        };
        if u32::from(offset) + u32::from(count) > 65536 {
            return Err((
                "address",
                format!("{count} registers from address {offset} run past 65535"),
            ));
        }
        let max = if table.is_bits() {
            dev.max_bits
        } else {
            dev.max_registers
        };
        if count > max {
            return Err((
                "length",
                format!("{count} registers do not fit in one read (max_registers = {max})"),
            ));
        }
        if self.writable && !matches!(table, Table::Coil | Table::HoldingRegister) {
            return Err((
                "writable",
                format!(
                    "a {} is read-only; only coils and holding registers can be written",
                    table.as_str()
                ),
            ));
        }
        if self.writable && count > 123 {
            return Err((
                "length",
                "a write carries at most 123 registers; shorten the string or make it \
                 read-only"
                    .into(),
            ));
        }
        if !self.writable && (self.min.is_some() || self.max.is_some()) {
            return Err((
                if self.min.is_some() { "min" } else { "max" },
                "limits what commands may write; it needs `writable = true`".into(),
            ));
        }
        if (self.min.is_some() || self.max.is_some()) && data_type == DataType::String {
            return Err((
                if self.min.is_some() { "min" } else { "max" },
                "limits numbers; a string point has no range".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi || lo.is_nan() || hi.is_nan() {
                return Err(("max", format!("{hi} is below min ({lo})")));
            }
        }
        if self.writable && data_type == DataType::Bit {
            return Err((
                "writable",
                "writing one bit of a register is not supported (it would race with the \
                 device); map the whole register as u16 to write it"
                    .into(),
            ));
        }
        if (self.scale.is_some() || self.offset.is_some())
            && matches!(data_type, DataType::Bool | DataType::Bit | DataType::String)
        {
            return Err((
                if self.scale.is_some() {
                    "scale"
                } else {
                    "offset"
                },
                "only numeric types can be scaled".into(),
            ));
        }
        Ok(Resolved {
            table,
            offset,
            data_type,
            count,
            order: self.byte_order.unwrap_or(dev.byte_order),
            bit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `address` as written → (table, 0-based offset), or the start of the error.
    fn check(text: &str, expected: Result<(Table, u16), &str>) {
        let got = Address::parse_reference(text).map(|a| match a {
            Address::Reference { table, offset, .. } => (table, offset),
            Address::Offset(o) => panic!("a string never parses to a bare offset: {o}"),
        });
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{text}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{text}: {g}"),
            (g, e) => panic!("{text}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn modicon_references_in_five_and_six_digits() {
        check("40001", Ok((Table::HoldingRegister, 0)));
        check("400001", Ok((Table::HoldingRegister, 0)));
        check("49999", Ok((Table::HoldingRegister, 9998)));
        check("465536", Ok((Table::HoldingRegister, 65535)));
        check("30010", Ok((Table::InputRegister, 9)));
        check("10001", Ok((Table::DiscreteInput, 0)));
        check("00001", Ok((Table::Coil, 0)));
        check("000017", Ok((Table::Coil, 16)));
        check("40000", Err("counts from 1"));
        check("465537", Err("counts from 1"));
        check("20001", Err("starts with 0 (coil)"));
        check("4001", Err("not a Modicon reference"));
        check("4x001", Err("not a Modicon reference"));
    }

    fn device(points: &str) -> Result<Vec<Resolved>, Vec<ConfigProblem>> {
        let text = format!(
            "transport = \"rtu\"\nport = \"/dev/ttyUSB0\"\n[[devices]]\nid = \"d\"\n{points}"
        );
        let cfg: ModbusConfig = figment::Figment::from(figment::providers::Toml::string(&text))
            .extract()
            .expect("parses");
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(problems);
        }
        let dev = &cfg.devices[0];
        Ok(dev
            .points
            .iter()
            .map(|p| p.resolve(dev).expect("valid"))
            .collect())
    }

    fn problem(points: &str) -> (String, String) {
        let p = device(points).expect_err("invalid").remove(0);
        (p.key, p.message)
    }

    use figment::providers::Format;

    #[test]
    fn numeric_and_reference_addresses_name_the_same_register() {
        let r = device(
            "[[devices.points]]\nname = \"a\"\naddress = \"40001\"\n\
             [[devices.points]]\nname = \"b\"\naddress = 0\ntable = \"holding_register\"\n\
             [[devices.points]]\nname = \"c\"\naddress = \"40011\"\ntype = \"f64\"\nbyte_order = \"DCBA\"",
        )
        .expect("valid");
        assert_eq!(r[0], r[1]);
        assert_eq!(
            (r[2].offset, r[2].count, r[2].order),
            (10, 4, ByteOrder::Dcba)
        );
    }

    #[test]
    fn mistakes_name_the_key_and_say_what_to_do() {
        let cases = [
            (
                "address = 40001",
                "devices[0].points[0].table",
                "looks like a Modicon reference",
            ),
            (
                "address = \"30001\"\nwritable = true",
                "devices[0].points[0].writable",
                "read-only",
            ),
            (
                "address = \"00001\"\ntype = \"u16\"",
                "devices[0].points[0].type",
                "one bit",
            ),
            (
                "address = \"40001\"\ntype = \"bool\"",
                "devices[0].points[0].type",
                "type \"bit\"",
            ),
            (
                "address = \"40001\"\ntype = \"string\"",
                "devices[0].points[0].length",
                "needs `length`",
            ),
            (
                "address = \"40001\"\ntype = \"bit\"",
                "devices[0].points[0].bit",
                "0 (least significant) to 15",
            ),
            (
                "address = \"465536\"\ntype = \"u32\"",
                "devices[0].points[0].address",
                "run past 65535",
            ),
            (
                "address = \"40001\"\ntable = \"coil\"",
                "devices[0].points[0].table",
                "holding_register reference",
            ),
            (
                "address = \"40001\"\nheartbeat = \"1m\"",
                "devices[0].points[0].heartbeat",
                "with `deadband`",
            ),
            (
                "address = \"40001\"\nscale = 0.0",
                "devices[0].points[0].scale",
                "must not be zero",
            ),
        ];
        for (point, key, msg) in cases {
            let (k, m) = problem(&format!("[[devices.points]]\nname = \"p\"\n{point}"));
            assert_eq!(k, key, "{point}");
            assert!(m.contains(msg), "{point}: {m}");
        }
        let (k, m) = problem("unit = 0\n[[devices.points]]\nname = \"p\"\naddress = \"40001\"");
        assert_eq!(k, "devices[0].unit");
        assert!(m.contains("broadcast"), "{m}");
    }
}
