//! The `type = "lorawan"` adapter section: where the packet forwarders reach fieldgate, the
//! devices it terminates (ABP or OTAA, with their keys and codecs), and which frames of other
//! devices it forwards raw.
//!
//! Keys and identifiers are hex strings in the order LoRaWAN servers print them (most
//! significant byte first): `dev_eui = "70b3d57ed0000001"`, `dev_addr = "26011f01"`. They
//! are checked by [`LorawanConfig::validate`], which names the key of every mistake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use serde::Deserialize;

use crate::codec::{self, CodecKind, LayoutField};

/// `[[adapters]] type = "lorawan"`: a Semtech UDP packet-forwarder server and the devices
/// whose frames it verifies, decrypts and decodes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LorawanConfig {
    /// UDP address the packet forwarders send to (their `server_address` and
    /// `serv_port_up`/`serv_port_down`). Default `"0.0.0.0:1700"`.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// How RX1 downlinks are placed: `"eu868"` (default; also right for every region whose
    /// RX1 channel is the uplink channel: EU433, CN779, IN865, KR920, AS923 with offset 0) or
    /// `"us915"` / `"au915"` (the fixed 500 kHz downlink channels).
    #[serde(default)]
    pub region: Region,
    /// The network id (3 bytes of hex) put in Join Accepts; its low 7 bits are the NwkID at
    /// the top of every DevAddr that fieldgate gives out. Default `"000000"`.
    #[serde(default = "default_net_id")]
    pub net_id: String,
    /// Copies of one frame heard by several gateways (or antennas) within this window are
    /// delivered once, with the best RSSI/SNR. Default `"200ms"`.
    #[serde(default = "default_dedup_window", with = "fieldgate_adapter::duration")]
    pub dedup_window: Duration,
    /// Transmit power of downlinks, in dBm. Default 14.
    #[serde(default = "default_tx_power")]
    pub tx_power: u8,
    /// RX1 delay of the devices' sessions (`RECEIVE_DELAY1`, 1 to 15 s), sent in Join
    /// Accepts and used for every downlink. Default `"1s"`.
    #[serde(default = "default_rx1_delay", with = "fieldgate_adapter::duration")]
    pub rx1_delay: Duration,
    /// Delay of the Join Accept after the Join Request (`JOIN_ACCEPT_DELAY1`). Default `"5s"`.
    #[serde(default = "default_join_delay", with = "fieldgate_adapter::duration")]
    pub join_accept_delay: Duration,
    /// Turn a forwarder's `stat` report (packets received, forwarded, sent; position) into
    /// readings of the device `gateway-<eui>`. Default true.
    #[serde(default = "yes")]
    pub gateway_stats: bool,
    /// Send each uplink's radio metadata (`rssi`, `snr`, `frequency`, `data_rate`,
    /// `gateway`, `gateways`, `fcnt`, `fport`) as readings beside the decoded values.
    /// Default true.
    #[serde(default = "yes")]
    pub metadata: bool,
    /// The devices fieldgate terminates.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Raw forwarding of frames from devices not in `devices`.
    #[serde(default)]
    pub forward: ForwardConfig,
}

/// Where RX1 downlinks go.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// RX1 on the uplink's frequency and data rate.
    #[default]
    Eu868,
    /// RX1 on 923.3 + 0.6 × (uplink channel mod 8) MHz at 500 kHz.
    Us915,
    /// RX1 on 923.3 + 0.6 × (uplink channel mod 8) MHz at 500 kHz.
    Au915,
}

/// How a device joined.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Activation by personalization: DevAddr and session keys in config.
    Abp,
    /// Over-the-air activation: the device joins with its AppKey.
    Otaa,
}

/// `[[adapters.devices]]`: one LoRaWAN end device.
///
/// Its `Debug` shows `<redacted>` for the keys (`nwk_skey`, `app_skey`, `app_key`), and a key
/// of the wrong type is refused without echoing it, so that neither reaches a log.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id its readings carry. Default: the DevEUI in lower-case hex.
    #[serde(default)]
    pub name: Option<String>,
    /// DevEUI, 8 bytes of hex.
    pub dev_eui: String,
    /// `"abp"` or `"otaa"`.
    pub activation: Activation,
    /// ABP: the device address, 4 bytes of hex.
    #[serde(default)]
    pub dev_addr: Option<String>,
    /// ABP: the network session key, 16 bytes of hex.
    #[serde(default, deserialize_with = "key_text")]
    pub nwk_skey: Option<String>,
    /// ABP: the application session key, 16 bytes of hex.
    #[serde(default, deserialize_with = "key_text")]
    pub app_skey: Option<String>,
    /// ABP: the last uplink frame counter the device is known to have used, for a device
    /// whose counter is already past 65535 when fieldgate first hears it (the upper 16 bits
    /// are never on air). Ignored once fieldgate has stored a counter of its own.
    #[serde(default)]
    pub fcnt_up: Option<u32>,
    /// OTAA: the root key, 16 bytes of hex.
    #[serde(default, deserialize_with = "key_text")]
    pub app_key: Option<String>,
    /// OTAA: the JoinEUI (AppEUI) the device sends, 8 bytes of hex. Default: any.
    #[serde(default)]
    pub join_eui: Option<String>,
    /// How the application payload is decoded: `"cayenne"` (Cayenne LPP), `"layout"`
    /// (`fields` below) or `"raw"` (default: the bytes as one `payload` reading).
    #[serde(default)]
    pub codec: CodecKind,
    /// `codec = "layout"`: where each value sits in the payload.
    #[serde(default)]
    pub fields: Vec<LayoutField>,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = |k: &Option<String>| k.as_ref().map(|_| Redacted);
        f.debug_struct("DeviceConfig")
            .field("name", &self.name)
            .field("dev_eui", &self.dev_eui)
            .field("activation", &self.activation)
            .field("dev_addr", &self.dev_addr)
            .field("nwk_skey", &key(&self.nwk_skey))
            .field("app_skey", &key(&self.app_skey))
            .field("fcnt_up", &self.fcnt_up)
            .field("app_key", &key(&self.app_key))
            .field("join_eui", &self.join_eui)
            .field("codec", &self.codec)
            .field("fields", &self.fields)
            .finish()
    }
}

/// Stands in for a key in `Debug` output: prints `<redacted>`.
#[derive(Clone, Copy)]
pub(crate) struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A key as written: a string, taken as is ([`LorawanConfig::validate`] checks its digits).
/// Anything else is refused with an error that does not show it: serde's own message would
/// quote a key written as a bare number ("found integer `1234…`") into `fieldgate check`'s
/// output and the log of a refused reload.
fn key_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};
    struct KeyText;
    impl KeyText {
        fn number<E: Error>(&self) -> E {
            E::invalid_type(Unexpected::Other("a number"), self)
        }
    }
    impl Visitor<'_> for KeyText {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("16 bytes of hex in quotes")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_i128<E: Error>(self, _: i128) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_u128<E: Error>(self, _: u128) -> Result<Self::Value, E> {
            Err(self.number())
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(self.number())
        }
    }
    d.deserialize_any(KeyText)
}

/// `[adapters.forward]`: frames of devices fieldgate does not know, queued raw (the whole
/// PHYPayload as bytes) when they match, like a packet-forwarder bridge.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Data frames whose DevAddr starts with one of these prefixes, written
    /// `"26000000/7"` (address / prefix length in bits).
    #[serde(default)]
    pub dev_addr_prefixes: Vec<String>,
    /// Join Requests with one of these JoinEUIs (8 bytes of hex).
    #[serde(default)]
    pub join_euis: Vec<String>,
}

const fn yes() -> bool {
    true
}
fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1700))
}
fn default_net_id() -> String {
    "000000".into()
}
const fn default_dedup_window() -> Duration {
    Duration::from_millis(200)
}
const fn default_tx_power() -> u8 {
    14
}
const fn default_rx1_delay() -> Duration {
    Duration::from_secs(1)
}
const fn default_join_delay() -> Duration {
    Duration::from_secs(5)
}

/// Why a hex value did not parse. It says nothing of the value itself, so that a key is
/// never echoed into a log; callers quote identifiers themselves (see [`quoted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// The wrong number of digits.
    Length {
        /// Digits found.
        digits: usize,
        /// Bytes wanted.
        bytes: usize,
    },
    /// A character that is not a hex digit (or separator).
    NotHex,
}

impl std::fmt::Display for HexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HexError::Length { digits, bytes } => write!(
                f,
                "has {digits} hex digits; it needs {} ({bytes} bytes)",
                2 * bytes
            ),
            HexError::NotHex => f.write_str("is not hex"),
        }
    }
}

/// The error about a value that is not secret, quoting it: "`26011f0` has 7 hex digits...".
pub fn quoted(s: &str, e: HexError) -> String {
    format!("`{s}` {e}")
}

/// Parses exactly `N` bytes of hex (separators `:`, `-` and spaces are allowed).
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b':' | b'-' | b' '))
        .collect();
    if digits.len() != 2 * N {
        return Err(HexError::Length {
            digits: digits.len(),
            bytes: N,
        });
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return Err(HexError::NotHex),
        }
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A DevAddr prefix: `addr` with its top `bits` bits significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The address.
    pub addr: u32,
    /// How many leading bits must match (0 to 32).
    pub bits: u8,
}

impl Prefix {
    /// Parses `"26000000/7"`.
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (addr, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` needs a length, like \"26000000/7\""))?;
        let addr = u32::from_be_bytes(parse_hex::<4>(addr).map_err(|e| quoted(addr, e))?);
        let bits: u8 = bits
            .trim()
            .parse()
            .ok()
            .filter(|b| *b <= 32)
            .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to 32"))?;
        Ok(Prefix { addr, bits })
    }

    /// True if `addr` starts with this prefix.
    pub fn matches(&self, addr: u32) -> bool {
        let mask = if self.bits == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.bits))
        };
        addr & mask == self.addr & mask
    }
}

impl LorawanConfig {
    /// Every mistake in the section, by key.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut push = |k: String, m: String| out.push(ConfigProblem::new(k, m));
        if let Err(e) = parse_hex::<3>(&self.net_id) {
            push("net_id".into(), quoted(&self.net_id, e));
        }
        let rx1 = self.rx1_delay.as_secs();
        if !(1..=15).contains(&rx1) || self.rx1_delay.subsec_nanos() != 0 {
            push(
                "rx1_delay".into(),
                "must be whole seconds from 1s to 15s".into(),
            );
        }
        if self.join_accept_delay < Duration::from_secs(1)
            || self.join_accept_delay > Duration::from_secs(15)
        {
            push(
                "join_accept_delay".into(),
                "must be from 1s to 15s (LoRaWAN's JOIN_ACCEPT_DELAY1 is 5s)".into(),
            );
        }
        if self.dedup_window > Duration::from_millis(800) {
            push(
                "dedup_window".into(),
                "must be at most 800ms: a downlink must still reach RX1, one second after the uplink".into(),
            );
        }
        let mut euis: HashMap<[u8; 8], usize> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = |k: &str| format!("devices[{i}].{k}");
            match parse_hex::<8>(&d.dev_eui) {
                Ok(eui) => {
                    if let Some(j) = euis.insert(eui, i) {
                        push(at("dev_eui"), format!("the same DevEUI as devices[{j}]"));
                    }
                }
                Err(e) => push(at("dev_eui"), quoted(&d.dev_eui, e)),
            }
            // The same default as the network's: the DevEUI as 16 lower-case hex digits.
            let name = d.name.clone().unwrap_or_else(|| {
                parse_hex::<8>(&d.dev_eui).map_or_else(
                    |_| d.dev_eui.to_lowercase(),
                    |e| format!("{:016x}", u64::from_be_bytes(e)),
                )
            });
            if name.trim().is_empty() {
                push(at("name"), "must not be empty".into());
            } else if let Some(j) = names.insert(name.clone(), i) {
                push(
                    at("name"),
                    format!("`{name}` is already the name of devices[{j}]"),
                );
            }
            type Keys<'k> = &'k [(&'k str, bool)];
            let (needed, unwanted): (Keys<'_>, Keys<'_>) = match d.activation {
                Activation::Abp => (
                    &[
                        ("dev_addr", d.dev_addr.is_some()),
                        ("nwk_skey", d.nwk_skey.is_some()),
                        ("app_skey", d.app_skey.is_some()),
                    ],
                    &[
                        ("app_key", d.app_key.is_some()),
                        ("join_eui", d.join_eui.is_some()),
                    ],
                ),
                Activation::Otaa => (
                    &[("app_key", d.app_key.is_some())],
                    &[
                        ("dev_addr", d.dev_addr.is_some()),
                        ("nwk_skey", d.nwk_skey.is_some()),
                        ("app_skey", d.app_skey.is_some()),
                        ("fcnt_up", d.fcnt_up.is_some()),
                    ],
                ),
            };
            let mode = match d.activation {
                Activation::Abp => "abp",
                Activation::Otaa => "otaa",
            };
            for (k, present) in needed {
                if !present {
                    push(at(k), format!("is required for activation = \"{mode}\""));
                }
            }
            for (k, present) in unwanted {
                if *present {
                    push(
                        at(k),
                        format!("is not used with activation = \"{mode}\"; remove it"),
                    );
                }
            }
            if let Some(a) = d.dev_addr.as_deref() {
                if let Err(e) = parse_hex::<4>(a) {
                    push(at("dev_addr"), quoted(a, e));
                }
            }
            for (k, v) in [
                ("nwk_skey", &d.nwk_skey),
                ("app_skey", &d.app_skey),
                ("app_key", &d.app_key),
            ] {
                // A key is never quoted: it would land in logs.
                match v.as_deref().map(parse_hex::<16>) {
                    Some(Err(HexError::NotHex)) => push(at(k), "is not 16 bytes of hex".into()),
                    Some(Err(e)) => push(at(k), e.to_string()),
                    _ => {}
                }
            }
            if let Some(j) = d.join_eui.as_deref() {
                if let Err(e) = parse_hex::<8>(j) {
                    push(at("join_eui"), quoted(j, e));
                }
            }
            for p in codec::validate(&d.codec, &d.fields) {
                push(at(&p.key), p.message);
            }
        }
        for (i, p) in self.forward.dev_addr_prefixes.iter().enumerate() {
            if let Err(e) = Prefix::parse(p) {
                push(format!("forward.dev_addr_prefixes[{i}]"), e);
            }
        }
        for (i, j) in self.forward.join_euis.iter().enumerate() {
            if let Err(e) = parse_hex::<8>(j) {
                push(format!("forward.join_euis[{i}]"), quoted(j, e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_in_errors_and_keys_never_are() {
        let cfg: LorawanConfig = serde_json::from_value(serde_json::json!({
            "devices": [{
                "dev_eui": "70b3d57ed000001",
                "activation": "abp",
                "dev_addr": "26011f01",
                "nwk_skey": "zz212121212121212121212121212121",
                "app_skey": "313131313131313131313131313131",
            }]
        }))
        .expect("config");
        let got: Vec<String> = cfg
            .validate()
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        assert_eq!(
            got,
            [
                "devices[0].dev_eui: `70b3d57ed000001` has 15 hex digits; it needs 16 (8 bytes)",
                "devices[0].nwk_skey: is not 16 bytes of hex",
                "devices[0].app_skey: has 30 hex digits; it needs 32 (16 bytes)",
            ]
        );
    }

    #[test]
    fn keys_never_show_in_debug_output_or_in_type_errors() {
        let cfg: LorawanConfig = serde_json::from_value(serde_json::json!({
            "devices": [
                {
                    "name": "abp-1",
                    "dev_eui": "70b3d57ed0000001",
                    "activation": "abp",
                    "dev_addr": "26011f01",
                    "nwk_skey": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                    "app_skey": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                },
                {
                    "name": "otaa-1",
                    "dev_eui": "70b3d57ed0000002",
                    "activation": "otaa",
                    "app_key": "c3a5e7f9b1d3f5a7c9e1b3d5f7a9c1e3",
                },
            ]
        }))
        .expect("config");
        assert!(cfg.validate().is_empty());
        let net = crate::Network::new("lora".into(), &cfg, std::sync::Arc::default());
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}"), format!("{net:?}")] {
            let lower = shown.to_lowercase();
            for secret in [
                "a1b2c3d4",
                "0f1e2d3c",
                "c3a5e7f9",
                "161, 178, 195",
                "15, 30, 45",
                "195, 165, 231",
            ] {
                assert!(!lower.contains(secret), "`{secret}` in {shown}");
            }
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(
            format!("{cfg:?}").contains("70b3d57ed0000002"),
            "the rest still shows"
        );

        // A key written as a bare number is refused without echoing it.
        for bad in [
            serde_json::json!(7_319_462_850_123_456_789_u64),
            serde_json::json!(-7_319_462_850_123_456_i64),
            serde_json::json!(3.25),
        ] {
            let e = serde_json::from_value::<DeviceConfig>(serde_json::json!({
                "dev_eui": "70b3d57ed0000002",
                "activation": "otaa",
                "app_key": bad,
            }))
            .expect_err("a number is not a key")
            .to_string();
            assert!(e.contains("16 bytes of hex in quotes"), "{e}");
            assert!(!e.contains("7319") && !e.contains("3.25"), "{e}");
        }
    }
}
