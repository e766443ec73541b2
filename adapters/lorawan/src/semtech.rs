//! The Semtech UDP packet-forwarder protocol (PROTOCOL.TXT of Lora-net/packet_forwarder and
//! sx1302_hal), versions 1 and 2, as seen from the server.
//!
//! Every datagram starts with a protocol version byte, a two-byte random token and an
//! identifier. Gateways send PUSH_DATA (uplinks in `rxpk`, health in `stat`; answered with
//! PUSH_ACK), PULL_DATA (a keep-alive that opens the downlink path; answered with PULL_ACK)
//! and, in version 2, TX_ACK (the outcome of a PULL_RESP). The server sends PULL_RESP with a
//! `txpk` to transmit.
//!
//! [`parse`] never panics on any input: it is where every datagram from the network enters.

use serde::{Deserialize, Serialize};

/// PUSH_DATA identifier.
pub const PUSH_DATA: u8 = 0x00;
/// PUSH_ACK identifier.
pub const PUSH_ACK: u8 = 0x01;
/// PULL_DATA identifier.
pub const PULL_DATA: u8 = 0x02;
/// PULL_RESP identifier.
pub const PULL_RESP: u8 = 0x03;
/// PULL_ACK identifier.
pub const PULL_ACK: u8 = 0x04;
/// TX_ACK identifier.
pub const TX_ACK: u8 = 0x05;

/// A datagram from a packet forwarder.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet<'a> {
    /// Uplinks and/or statistics, to be acknowledged with PUSH_ACK.
    PushData {
        /// Protocol version (1 or 2).
        version: u8,
        /// Random token, echoed in the ACK.
        token: u16,
        /// The gateway's EUI.
        gateway: u64,
        /// The JSON object.
        json: &'a [u8],
    },
    /// Keep-alive that opens the downlink route, to be acknowledged with PULL_ACK.
    PullData {
        /// Protocol version.
        version: u8,
        /// Random token.
        token: u16,
        /// The gateway's EUI.
        gateway: u64,
    },
    /// The gateway's answer to a PULL_RESP (version 2 only).
    TxAck {
        /// Protocol version.
        version: u8,
        /// The token of the PULL_RESP it answers.
        token: u16,
        /// The gateway's EUI.
        gateway: u64,
        /// The `txpk_ack` JSON, empty when the transmission was accepted.
        json: &'a [u8],
    },
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its header.
    TooShort(usize),
    /// A protocol version other than 1 and 2.
    Version(u8),
    /// An identifier a server does not receive.
    Identifier(u8),
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketError::TooShort(n) => write!(f, "datagram of {n} bytes is too short"),
            PacketError::Version(v) => write!(f, "unknown protocol version {v}"),
            PacketError::Identifier(i) => write!(f, "unexpected identifier 0x{i:02x}"),
        }
    }
}

fn gateway_eui(d: &[u8]) -> Result<u64, PacketError> {
    d.get(4..12)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or(PacketError::TooShort(d.len()))
}

/// Parses one datagram.
pub fn parse(d: &[u8]) -> Result<Packet<'_>, PacketError> {
    if d.len() < 4 {
        return Err(PacketError::TooShort(d.len()));
    }
    let version = d[0];
    if !(version == 1 || version == 2) {
        return Err(PacketError::Version(version));
    }
    let token = u16::from_be_bytes([d[1], d[2]]);
    match d[3] {
        PUSH_DATA => Ok(Packet::PushData {
            version,
            token,
            gateway: gateway_eui(d)?,
            json: &d[12..],
        }),
        PULL_DATA => Ok(Packet::PullData {
            version,
            token,
            gateway: gateway_eui(d)?,
        }),
        TX_ACK => Ok(Packet::TxAck {
            version,
            token,
            gateway: gateway_eui(d)?,
            json: &d[12..],
        }),
        other => Err(PacketError::Identifier(other)),
    }
}

/// The 4-byte PUSH_ACK or PULL_ACK for a datagram.
pub fn ack(version: u8, token: u16, identifier: u8) -> [u8; 4] {
    let [a, b] = token.to_be_bytes();
    [version, a, b, identifier]
}

/// A PULL_RESP carrying `txpk`. Version 1 has no token in PULL_RESP (the bytes are zero).
pub fn pull_resp(version: u8, token: u16, txpk: &Txpk) -> Vec<u8> {
    let token = if version >= 2 { token } else { 0 };
    let mut out = ack(version, token, PULL_RESP).to_vec();
    #[derive(Serialize)]
    struct Wrap<'a> {
        txpk: &'a Txpk,
    }
    // Serializing plain numbers and strings cannot fail.
    if let Ok(json) = serde_json::to_vec(&Wrap { txpk }) {
        out.extend_from_slice(&json);
    }
    out
}

/// The JSON of a PUSH_DATA.
#[derive(Debug, Default, Deserialize)]
pub struct PushPayload {
    /// Received frames.
    #[serde(default)]
    pub rxpk: Vec<Rxpk>,
    /// Gateway statistics.
    #[serde(default)]
    pub stat: Option<Stat>,
}

/// One received frame (`rxpk`). Fields a forwarder leaves out take defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rxpk {
    /// Concentrator counter at the end of reception, in microseconds.
    #[serde(default)]
    pub tmst: u32,
    /// Frequency in MHz.
    #[serde(default)]
    pub freq: f64,
    /// IF channel.
    #[serde(default)]
    pub chan: u32,
    /// RF chain.
    #[serde(default)]
    pub rfch: u32,
    /// CRC status: 1 OK, -1 failed, 0 no CRC.
    #[serde(default = "crc_ok")]
    pub stat: i8,
    /// `"LORA"` or `"FSK"`.
    #[serde(default)]
    pub modu: String,
    /// Data rate: `"SF7BW125"` for LoRa, bits per second for FSK.
    #[serde(default)]
    pub datr: DataRate,
    /// Coding rate, like `"4/5"`.
    #[serde(default)]
    pub codr: Option<String>,
    /// RSSI in dBm (absent in some sx1302 versions, which give `rsig` instead).
    #[serde(default)]
    pub rssi: Option<f64>,
    /// SNR in dB.
    #[serde(default)]
    pub lsnr: Option<f64>,
    /// Per-antenna signal reports (sx1302 HAL, protocol version 2).
    #[serde(default)]
    pub rsig: Vec<Rsig>,
    /// Payload size in bytes.
    #[serde(default)]
    pub size: usize,
    /// PHYPayload in base64.
    #[serde(default)]
    pub data: String,
}

const fn crc_ok() -> i8 {
    1
}

/// A per-antenna signal report.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rsig {
    /// Channel RSSI in dBm.
    #[serde(default)]
    pub rssic: Option<f64>,
    /// SNR in dB.
    #[serde(default)]
    pub lsnr: Option<f64>,
}

impl Rxpk {
    /// The RSSI, from `rssi` or the best antenna's `rsig`.
    pub fn best_rssi(&self) -> Option<f64> {
        self.rssi.or_else(|| {
            self.rsig
                .iter()
                .filter_map(|r| r.rssic)
                .fold(None, |a, b| Some(a.map_or(b, |a: f64| a.max(b))))
        })
    }

    /// The SNR, from `lsnr` or the best antenna's `rsig`.
    pub fn best_snr(&self) -> Option<f64> {
        self.lsnr.or_else(|| {
            self.rsig
                .iter()
                .filter_map(|r| r.lsnr)
                .fold(None, |a, b| Some(a.map_or(b, |a: f64| a.max(b))))
        })
    }
}

/// A data rate: a LoRa `"SF7BW125"` string or an FSK bit rate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DataRate {
    /// LoRa, like `"SF7BW125"`.
    Lora(String),
    /// FSK bits per second.
    Fsk(u32),
}

impl Default for DataRate {
    fn default() -> Self {
        DataRate::Lora(String::new())
    }
}

impl std::fmt::Display for DataRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataRate::Lora(s) => f.write_str(s),
            DataRate::Fsk(b) => write!(f, "FSK{b}"),
        }
    }
}

/// Gateway statistics (`stat`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stat {
    /// Latitude in degrees.
    #[serde(default)]
    pub lati: Option<f64>,
    /// Longitude in degrees.
    #[serde(default)]
    pub long: Option<f64>,
    /// Altitude in metres.
    #[serde(default)]
    pub alti: Option<f64>,
    /// Packets received.
    #[serde(default)]
    pub rxnb: Option<u64>,
    /// Packets received with a valid CRC.
    #[serde(default)]
    pub rxok: Option<u64>,
    /// Packets forwarded.
    #[serde(default)]
    pub rxfw: Option<u64>,
    /// Percentage of upstream datagrams acknowledged.
    #[serde(default)]
    pub ackr: Option<f64>,
    /// Downlink datagrams received.
    #[serde(default)]
    pub dwnb: Option<u64>,
    /// Packets emitted.
    #[serde(default)]
    pub txnb: Option<u64>,
    /// Concentrator temperature in °C (sx1302).
    #[serde(default)]
    pub temp: Option<f64>,
}

/// A frame to transmit (`txpk` of a PULL_RESP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Txpk {
    /// Send immediately instead of at `tmst` (class C; fieldgate sends class A: false).
    pub imme: bool,
    /// Concentrator time to send at, in microseconds.
    pub tmst: u32,
    /// Frequency in MHz.
    pub freq: f64,
    /// RF chain.
    pub rfch: u32,
    /// Power in dBm.
    pub powe: u8,
    /// `"LORA"`.
    pub modu: String,
    /// Data rate.
    pub datr: DataRate,
    /// Coding rate.
    pub codr: String,
    /// Inverted polarity: true for downlinks to devices.
    pub ipol: bool,
    /// Payload size.
    pub size: usize,
    /// PHYPayload in base64.
    pub data: String,
}

/// The JSON of a TX_ACK.
#[derive(Debug, Default, Deserialize)]
pub struct TxAckPayload {
    /// The outcome.
    #[serde(default)]
    pub txpk_ack: Option<TxAckInfo>,
}

/// The outcome of a transmission request.
#[derive(Debug, Default, Deserialize)]
pub struct TxAckInfo {
    /// `"NONE"` when accepted; `"TOO_LATE"`, `"TOO_EARLY"`, `"COLLISION_PACKET"`,
    /// `"COLLISION_BEACON"`, `"TX_FREQ"`, `"TX_POWER"`, `"GPS_UNLOCKED"` otherwise.
    #[serde(default)]
    pub error: Option<String>,
    /// Set by some forwarders instead of `error`.
    #[serde(default)]
    pub warn: Option<String>,
}

/// The error in a TX_ACK's JSON, if any (an empty body means success).
pub fn tx_ack_error(json: &[u8]) -> Option<String> {
    let json = trim_json(json);
    if json.is_empty() {
        return None;
    }
    match serde_json::from_slice::<TxAckPayload>(json) {
        Ok(p) => p
            .txpk_ack
            .and_then(|a| a.error)
            .filter(|e| !e.eq_ignore_ascii_case("NONE")),
        Err(e) => Some(format!("unreadable TX_ACK: {e}")),
    }
}

/// Trailing NULs and whitespace that some forwarders append.
pub fn trim_json(json: &[u8]) -> &[u8] {
    let end = json
        .iter()
        .rposition(|b| !matches!(b, 0 | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(0, |i| i + 1);
    &json[..end]
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes bytes as padded standard base64.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 leniently, as packet forwarders write it: padding optional, the URL-safe
/// alphabet accepted, whitespace ignored. `None` for any other character or a dangling
/// single character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut n = 0u8;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            n = 0;
        }
    }
    match n {
        0 => {}
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_identifier_of_protocol_text_examples() {
        // PUSH_DATA v2, token 0x1234, gateway AA555A0000000101, then JSON.
        let mut push = vec![2, 0x12, 0x34, 0x00, 0xAA, 0x55, 0x5A, 0, 0, 0, 0x01, 0x01];
        push.extend_from_slice(br#"{"rxpk":[]}"#);
        assert_eq!(
            parse(&push),
            Ok(Packet::PushData {
                version: 2,
                token: 0x1234,
                gateway: 0xAA55_5A00_0000_0101,
                json: br#"{"rxpk":[]}"#
            })
        );
        let pull = [1, 0, 7, 0x02, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            parse(&pull),
            Ok(Packet::PullData {
                version: 1,
                token: 7,
                gateway: 0x0102_0304_0506_0708
            })
        );
        assert_eq!(parse(&[3, 0, 0, 0]), Err(PacketError::Version(3)));
        assert_eq!(parse(&[2, 0, 0]), Err(PacketError::TooShort(3)));
        assert_eq!(parse(&[2, 0, 0, 0, 1]), Err(PacketError::TooShort(5)));
        assert_eq!(parse(&[2, 0, 0, PUSH_ACK]), Err(PacketError::Identifier(1)));
        assert_eq!(ack(2, 0x1234, PUSH_ACK), [2, 0x12, 0x34, 0x01]);
    }

    #[test]
    fn pull_resp_of_version_1_has_no_token() {
        let tx = Txpk {
            imme: false,
            tmst: 1_000_000,
            freq: 868.1,
            rfch: 0,
            powe: 14,
            modu: "LORA".into(),
            datr: DataRate::Lora("SF7BW125".into()),
            codr: "4/5".into(),
            ipol: true,
            size: 2,
            data: "AAE=".into(),
        };
        let v1 = pull_resp(1, 0xBEEF, &tx);
        assert_eq!(&v1[..4], &[1, 0, 0, PULL_RESP]);
        let v2 = pull_resp(2, 0xBEEF, &tx);
        assert_eq!(&v2[..4], &[2, 0xBE, 0xEF, PULL_RESP]);
        let json: serde_json::Value = serde_json::from_slice(&v2[4..]).expect("json");
        assert_eq!(json["txpk"]["datr"], "SF7BW125");
        assert_eq!(json["txpk"]["tmst"], 1_000_000);
        assert_eq!(json["txpk"]["ipol"], true);
    }

    #[test]
    fn rxpk_reads_both_forwarder_generations() {
        let legacy: PushPayload = serde_json::from_str(
            r#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":32,"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"}]}"#,
        )
        .expect("PROTOCOL.TXT example");
        let r = &legacy.rxpk[0];
        assert_eq!(r.tmst, 3_512_348_611);
        assert_eq!(r.datr, DataRate::Lora("SF7BW125".into()));
        assert_eq!(r.best_rssi(), Some(-35.0));
        assert_eq!(
            base64_decode(&r.data).map(|d| d.len()),
            Some(32),
            "URL-safe, unpadded base64 as in the example"
        );
        let sx1302: PushPayload = serde_json::from_str(
            r#"{"rxpk":[{"tmst":1,"freq":868.1,"modu":"FSK","datr":50000,"size":1,"data":"AA==","rsig":[{"ant":0,"rssic":-90,"lsnr":2.5},{"ant":1,"rssic":-80,"lsnr":-1}]}],"stat":{"rxnb":2,"temp":41.5}}"#,
        )
        .expect("sx1302 form");
        let r = &sx1302.rxpk[0];
        assert_eq!(r.datr, DataRate::Fsk(50_000));
        assert_eq!((r.best_rssi(), r.best_snr()), (Some(-80.0), Some(2.5)));
        assert_eq!(sx1302.stat.and_then(|s| s.temp), Some(41.5));
    }

    #[test]
    fn base64_round_trips_and_is_lenient() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let s = base64_encode(&bytes);
            assert_eq!(base64_decode(&s), Some(bytes.clone()));
            assert_eq!(base64_decode(s.trim_end_matches('=')), Some(bytes));
        }
        // RFC 4648 test vectors.
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9v\nYg=="), Some(b"foob".to_vec()));
        assert_eq!(base64_decode("Zm9*"), None);
        assert_eq!(base64_decode("Z"), None);
    }

    #[test]
    fn tx_ack_errors() {
        assert_eq!(tx_ack_error(b""), None);
        assert_eq!(tx_ack_error(b"{\"txpk_ack\":{\"error\":\"NONE\"}}\0"), None);
        assert_eq!(
            tx_ack_error(b"{\"txpk_ack\":{\"error\":\"TOO_LATE\"}}"),
            Some("TOO_LATE".into())
        );
        assert!(tx_ack_error(b"{oops").is_some());
    }
}
