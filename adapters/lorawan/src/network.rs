//! [`Network`]: the LoRaWAN 1.0.x network- and application-server work fieldgate does at the
//! edge, without any I/O, so that tests, fuzzing and the benchmark drive it directly.
//!
//! For each (de-duplicated) frame, [`Network::handle`]:
//! 1. parses the PHYPayload with the `lorawan` crate;
//! 2. for a data uplink, finds the devices with its DevAddr, reconstructs the 32-bit frame
//!    counter from the 16 bits on air and the last counter seen, verifies the MIC with the
//!    NwkSKey, rejects counters at or below the last one (replays; a confirmed frame sent again
//!    with the same counter is acknowledged again, not delivered twice), decrypts, reads the
//!    MAC commands (guarded: see [`complete_mac_commands`]) and decodes the payload with the
//!    device's codec;
//! 3. for a Join Request of a known OTAA device, verifies its MIC with the AppKey, rejects a
//!    DevNonce the device used before, allocates a DevAddr, derives the session keys and
//!    builds the Join Accept;
//! 4. for a frame of a device it does not know, queues it raw when the `forward` filter
//!    matches;
//! 5. for a data uplink that opened a receive window, builds the class A downlink due in RX1:
//!    the oldest queued command for the device, or an empty acknowledgement of a confirmed
//!    uplink.
//!
//! The session state that must survive a restart (counters, OTAA sessions, used DevNonces)
//! is marked dirty and collected with [`Network::take_dirty`]; the adapter stores it before
//! it lets the readings of the same frames go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fieldgate_adapter::{Command, CommandAction, CommandError, Name, Quality, Reading, Value};
use lorawan_encoding::creator::{DataPayloadCreator, JoinAcceptCreator};
use lorawan_encoding::default_crypto::DefaultFactory;
use lorawan_encoding::keys::{AppKey, AppSKey, NewSKey, AES128};
use lorawan_encoding::maccommands::{parse_uplink_mac_commands, UplinkMacCommand};
use lorawan_encoding::parser::{
    parse, DataHeader, DataPayload, DecryptedJoinAcceptPayload, FCtrl, FRMPayload, PhyPayload,
};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecKind, LayoutField};
use crate::config::{parse_hex, Activation, LorawanConfig, Prefix, Redacted, Region};
use crate::semtech::{base64_encode, DataRate, Txpk};

/// How many DevNonces of a device are remembered to refuse their reuse.
pub const MAX_DEV_NONCES: usize = 1024;
/// How many downlinks may wait for one device's next uplink.
pub const MAX_QUEUED_DOWNLINKS: usize = 8;
/// The largest downlink application payload accepted (the smallest maximum of EU868 DR0–2).
pub const MAX_DOWNLINK_PAYLOAD: usize = 51;

/// Counters of one LoRaWAN adapter.
#[derive(Debug, Default)]
pub struct LorawanStats {
    /// Datagrams received from packet forwarders.
    pub datagrams: AtomicU64,
    /// Datagrams that were not packet-forwarder protocol, or whose JSON was unreadable.
    pub bad_datagrams: AtomicU64,
    /// Frames reported by forwarders (`rxpk` entries, before de-duplication).
    pub rxpk: AtomicU64,
    /// Frames dropped because the radio reported a CRC error.
    pub crc_errors: AtomicU64,
    /// Copies of a frame already heard by another gateway or antenna.
    pub duplicates: AtomicU64,
    /// Frames that are not LoRaWAN 1.0 (too short, unknown type, bad base64).
    pub malformed: AtomicU64,
    /// Data uplinks verified and delivered.
    pub uplinks: AtomicU64,
    /// Join Requests answered.
    pub joins: AtomicU64,
    /// Frames of unknown devices queued raw by the `forward` filter.
    pub forwarded: AtomicU64,
    /// Frames of unknown devices dropped.
    pub unknown: AtomicU64,
    /// Frames whose MIC matched no key.
    pub bad_mic: AtomicU64,
    /// Uplinks with a counter at or below the last one (replays, late copies).
    pub replays: AtomicU64,
    /// Join Requests that reused a DevNonce.
    pub nonce_reuse: AtomicU64,
    /// Payloads the device's codec could not decode (sent raw with bad quality).
    pub codec_errors: AtomicU64,
    /// MAC command lists cut short or with unknown commands (read up to that point).
    pub bad_mac_commands: AtomicU64,
    /// Downlinks and Join Accepts handed to a gateway.
    pub downlinks: AtomicU64,
    /// Downlinks a gateway refused (TX_ACK error) or that had no route.
    pub downlink_errors: AtomicU64,
}

impl LorawanStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Radio metadata of one reception of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RxMeta {
    /// The gateway that heard it.
    pub gateway: u64,
    /// Concentrator time at the end of reception (µs).
    pub tmst: u32,
    /// Frequency in MHz.
    pub freq: f64,
    /// IF channel.
    pub chan: u32,
    /// RF chain.
    pub rfch: u32,
    /// Data rate.
    pub datr: DataRate,
    /// Coding rate.
    pub codr: String,
    /// RSSI in dBm.
    pub rssi: Option<f64>,
    /// SNR in dB.
    pub snr: Option<f64>,
}

impl RxMeta {
    /// The better of two receptions: higher SNR, then higher RSSI.
    pub fn better_than(&self, other: &RxMeta) -> bool {
        let key = |m: &RxMeta| (m.snr.unwrap_or(f64::MIN), m.rssi.unwrap_or(f64::MIN));
        key(self) > key(other)
    }
}

/// A frame to send, and what it answers.
#[derive(Debug)]
pub struct Downlink {
    /// The gateway to send it through.
    pub gateway: u64,
    /// The transmit request.
    pub txpk: Txpk,
    /// The device it goes to.
    pub device: Name,
    /// The command it carries, answered when the gateway confirms the transmission.
    pub command: Option<Command>,
}

/// Why a frame produced nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a LoRaWAN 1.0 frame.
    Malformed,
    /// A device fieldgate neither knows nor forwards.
    Unknown,
    /// No key of the device(s) with this address produces its MIC.
    BadMic,
    /// A counter at or below the last one.
    Replay,
    /// A Join Request with a DevNonce used before.
    NonceReuse,
    /// A downlink or a Join Accept heard by a gateway (another network's traffic).
    NotUplink,
}

/// What one frame produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Readings to queue.
    pub readings: Vec<Reading>,
    /// A frame to transmit in the device's receive window.
    pub downlink: Option<Downlink>,
    /// Why nothing came of it, when nothing did.
    pub rejected: Option<Reject>,
}

impl Outcome {
    fn reject(r: Reject) -> Outcome {
        Outcome {
            rejected: Some(r),
            ..Outcome::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Session {
    dev_addr: u32,
    nwk_skey: [u8; 16],
    app_skey: [u8; 16],
}

/// Keys never reach `Debug` output (and with it a log line or a panic message).
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("dev_addr", &format_args!("{:08x}", self.dev_addr))
            .field("nwk_skey", &Redacted)
            .field("app_skey", &Redacted)
            .finish()
    }
}

/// What is stored per device (JSON in the adapter's state). Its `Debug` hides the keys.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stored {
    /// The DevAddr of the session the counters belong to (hex).
    #[serde(default)]
    dev_addr: Option<String>,
    /// OTAA session keys (hex); ABP keys stay in the config.
    #[serde(default)]
    nwk_skey: Option<String>,
    #[serde(default)]
    app_skey: Option<String>,
    /// A fingerprint of the ABP keys the counters were kept with.
    #[serde(default)]
    abp_tag: Option<u32>,
    #[serde(default)]
    fcnt_up: Option<u32>,
    #[serde(default)]
    fcnt_down: u32,
    #[serde(default)]
    join_nonce: u32,
    #[serde(default)]
    dev_nonces: Vec<u16>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = |k: &Option<String>| k.as_ref().map(|_| Redacted);
        f.debug_struct("Stored")
            .field("dev_addr", &self.dev_addr)
            .field("nwk_skey", &key(&self.nwk_skey))
            .field("app_skey", &key(&self.app_skey))
            .field("abp_tag", &self.abp_tag)
            .field("fcnt_up", &self.fcnt_up)
            .field("fcnt_down", &self.fcnt_down)
            .field("join_nonce", &self.join_nonce)
            .field("dev_nonces", &self.dev_nonces)
            .finish()
    }
}

struct Device {
    name: Name,
    dev_eui: u64,
    activation: Activation,
    app_key: Option<[u8; 16]>,
    join_eui: Option<u64>,
    abp_tag: Option<u32>,
    codec: CodecKind,
    fields: Vec<LayoutField>,
    session: Option<Session>,
    fcnt_up: Option<u32>,
    fcnt_down: u32,
    join_nonce: u32,
    dev_nonces: VecDeque<u16>,
    queue: VecDeque<Command>,
    points: HashMap<String, Name>,
    /// The counter of the last confirmed uplink acknowledged a second time.
    reacked: Option<u32>,
}

/// Every field but the AppKey, which shows as `<redacted>` (the session's keys too).
impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("dev_eui", &format_args!("{:016x}", self.dev_eui))
            .field("activation", &self.activation)
            .field("app_key", &self.app_key.map(|_| Redacted))
            .field("join_eui", &self.join_eui)
            .field("abp_tag", &self.abp_tag)
            .field("codec", &self.codec)
            .field("fields", &self.fields)
            .field("session", &self.session)
            .field("fcnt_up", &self.fcnt_up)
            .field("fcnt_down", &self.fcnt_down)
            .field("join_nonce", &self.join_nonce)
            .field("dev_nonces", &self.dev_nonces)
            .field("queue", &self.queue)
            .field("points", &self.points)
            .field("reacked", &self.reacked)
            .finish()
    }
}

impl Device {
    fn point(&mut self, name: &str) -> Name {
        if let Some(n) = self.points.get(name) {
            return n.clone();
        }
        let n = Name::from(name);
        // Codec point names come from config or the fixed Cayenne table; bounded.
        if self.points.len() < 4096 {
            self.points.insert(name.to_owned(), n.clone());
        }
        n
    }

    fn stored(&self) -> Stored {
        let otaa = self.activation == Activation::Otaa;
        Stored {
            dev_addr: self.session.map(|s| format!("{:08x}", s.dev_addr)),
            nwk_skey: self.session.filter(|_| otaa).map(|s| to_hex(&s.nwk_skey)),
            app_skey: self.session.filter(|_| otaa).map(|s| to_hex(&s.app_skey)),
            abp_tag: self.abp_tag,
            fcnt_up: self.fcnt_up,
            fcnt_down: self.fcnt_down,
            join_nonce: self.join_nonce,
            dev_nonces: self.dev_nonces.iter().copied().collect(),
        }
    }
}

/// Lower-case hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// FNV-1a, to fingerprint ABP keys without storing them.
fn fingerprint(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in *p {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The 32-bit counter a 16-bit wire value stands for after `last`: the smallest value above
/// `last` with those low bits (the device counts up, and 16 bits may have wrapped). With no
/// `last`, the wire value itself. `None` past the end of the 32-bit space: the session is
/// used up (the device must rejoin or be rekeyed), and wrapping to a small counter would
/// reopen every old frame to replay.
pub fn next_fcnt(last: Option<u32>, wire: u16) -> Option<u32> {
    match last {
        None => Some(u32::from(wire)),
        Some(last) => {
            let c = (last & 0xFFFF_0000) | u32::from(wire);
            if c > last {
                Some(c)
            } else {
                c.checked_add(0x1_0000)
            }
        }
    }
}

/// The same low bits at or below `last`: what a replay of an old frame would carry.
fn old_fcnt(last: u32, wire: u16) -> u32 {
    let c = (last & 0xFFFF_0000) | u32::from(wire);
    if c <= last {
        c
    } else {
        c.wrapping_sub(0x1_0000)
    }
}

/// Payload lengths of the uplink MAC commands of LoRaWAN 1.0.x, by CID.
fn uplink_mac_len(cid: u8) -> Option<usize> {
    match cid {
        0x02 | 0x04 | 0x08 | 0x09 | 0x0D => Some(0),
        0x03 | 0x05 | 0x07 | 0x0A => Some(1),
        0x06 => Some(2),
        _ => None,
    }
}

/// How many leading bytes of `data` are complete, known uplink MAC commands, and whether
/// anything after them was cut short or unknown.
///
/// `lorawan` 0.9.0's MAC command iterator indexes past the end of a truncated command (it
/// panics on `[0x03]`), so only this prefix is ever handed to it.
pub fn complete_mac_commands(data: &[u8]) -> (usize, bool) {
    let mut i = 0;
    while i < data.len() {
        match uplink_mac_len(data[i]) {
            Some(n) if i + 1 + n <= data.len() => i += 1 + n,
            _ => return (i, true),
        }
    }
    (i, false)
}

/// The network state and the frame pipeline; see the module documentation.
#[derive(Debug)]
pub struct Network {
    adapter: Name,
    devices: Vec<Device>,
    by_eui: HashMap<u64, usize>,
    by_addr: HashMap<u32, Vec<usize>>,
    by_name: HashMap<String, usize>,
    prefixes: Vec<Prefix>,
    join_euis: HashSet<u64>,
    net_id: [u8; 3],
    region: Region,
    tx_power: u8,
    rx1_delay_us: u32,
    join_delay_us: u32,
    metadata: bool,
    dirty: HashSet<usize>,
    stats: Arc<LorawanStats>,
    meta_names: MetaNames,
    /// Units of decoded values, shared: the queue recognizes a series by the addresses of
    /// its names, so a fresh `Name` per reading would cost it a string hash each time.
    units: HashMap<String, Name>,
}

#[derive(Debug)]
struct MetaNames {
    rssi: Name,
    snr: Name,
    frequency: Name,
    data_rate: Name,
    gateway: Name,
    gateways: Name,
    fcnt: Name,
    fport: Name,
    battery: Name,
    margin: Name,
    payload: Name,
    frame: Name,
    db: Name,
    dbm: Name,
    mhz: Name,
    pct: Name,
}

impl MetaNames {
    fn new() -> MetaNames {
        MetaNames {
            rssi: "rssi".into(),
            snr: "snr".into(),
            frequency: "frequency".into(),
            data_rate: "data_rate".into(),
            gateway: "gateway".into(),
            gateways: "gateways".into(),
            fcnt: "fcnt".into(),
            fport: "fport".into(),
            battery: "battery".into(),
            margin: "margin".into(),
            payload: "payload".into(),
            frame: "frame".into(),
            db: "dB".into(),
            dbm: "dBm".into(),
            mhz: "MHz".into(),
            pct: "%".into(),
        }
    }
}

/// The gateway EUI as hex.
pub fn eui_hex(eui: u64) -> String {
    format!("{eui:016x}")
}

fn key(hex: Option<&String>) -> Option<[u8; 16]> {
    hex.and_then(|h| parse_hex::<16>(h).ok())
}

impl Network {
    /// Builds the network of a validated config (invalid entries are skipped; `fieldgate
    /// check` reports them first).
    pub fn new(adapter: Name, cfg: &LorawanConfig, stats: Arc<LorawanStats>) -> Network {
        let mut net = Network {
            adapter,
            devices: Vec::new(),
            by_eui: HashMap::new(),
            by_addr: HashMap::new(),
            by_name: HashMap::new(),
            prefixes: cfg
                .forward
                .dev_addr_prefixes
                .iter()
                .filter_map(|p| Prefix::parse(p).ok())
                .collect(),
            join_euis: cfg
                .forward
                .join_euis
                .iter()
                .filter_map(|e| parse_hex::<8>(e).ok().map(u64::from_be_bytes))
                .collect(),
            net_id: parse_hex::<3>(&cfg.net_id).unwrap_or_default(),
            region: cfg.region,
            tx_power: cfg.tx_power,
            rx1_delay_us: duration_us(cfg.rx1_delay),
            join_delay_us: duration_us(cfg.join_accept_delay),
            metadata: cfg.metadata,
            dirty: HashSet::new(),
            stats,
            meta_names: MetaNames::new(),
            units: HashMap::new(),
        };
        for d in &cfg.devices {
            let Ok(eui) = parse_hex::<8>(&d.dev_eui).map(u64::from_be_bytes) else {
                continue;
            };
            let session = match (
                d.dev_addr.as_deref().and_then(|a| parse_hex::<4>(a).ok()),
                key(d.nwk_skey.as_ref()),
                key(d.app_skey.as_ref()),
            ) {
                (Some(a), Some(n), Some(s)) if d.activation == Activation::Abp => Some(Session {
                    dev_addr: u32::from_be_bytes(a),
                    nwk_skey: n,
                    app_skey: s,
                }),
                _ => None,
            };
            let name = d.name.clone().unwrap_or_else(|| eui_hex(eui));
            let idx = net.devices.len();
            net.devices.push(Device {
                name: Name::from(name.as_str()),
                dev_eui: eui,
                activation: d.activation,
                app_key: key(d.app_key.as_ref()),
                join_eui: d
                    .join_eui
                    .as_deref()
                    .and_then(|e| parse_hex::<8>(e).ok())
                    .map(u64::from_be_bytes),
                abp_tag: session
                    .map(|s| fingerprint(&[&s.dev_addr.to_be_bytes(), &s.nwk_skey, &s.app_skey])),
                codec: d.codec.clone(),
                fields: d.fields.clone(),
                session,
                fcnt_up: d.fcnt_up,
                fcnt_down: 0,
                join_nonce: 0,
                dev_nonces: VecDeque::new(),
                queue: VecDeque::new(),
                points: HashMap::new(),
                reacked: None,
            });
            net.by_eui.insert(eui, idx);
            net.by_name.insert(name, idx);
            if let Some(s) = session {
                net.by_addr.entry(s.dev_addr).or_default().push(idx);
            }
        }
        net
    }

    /// The adapter's counters.
    pub fn stats(&self) -> &Arc<LorawanStats> {
        &self.stats
    }

    /// Restores what [`Network::take_dirty`] stored. Entries of devices no longer
    /// configured, or of ABP devices whose address or keys changed, are ignored.
    pub fn restore(&mut self, entries: &[(String, Vec<u8>)]) {
        for (k, v) in entries {
            let Some(eui) = k
                .strip_prefix("dev:")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let Some(&idx) = self.by_eui.get(&eui) else {
                continue;
            };
            let Ok(s) = serde_json::from_slice::<Stored>(v) else {
                tracing::warn!(adapter = %self.adapter, key = %k, "unreadable stored LoRaWAN state; starting this device afresh");
                continue;
            };
            let d = &mut self.devices[idx];
            d.join_nonce = s.join_nonce;
            d.dev_nonces = s.dev_nonces.into_iter().collect();
            match d.activation {
                Activation::Abp => {
                    if s.abp_tag.is_some() && s.abp_tag == d.abp_tag {
                        d.fcnt_up = s.fcnt_up.max(d.fcnt_up);
                        d.fcnt_down = s.fcnt_down;
                    }
                }
                Activation::Otaa => {
                    let addr = s
                        .dev_addr
                        .as_deref()
                        .and_then(|a| parse_hex::<4>(a).ok())
                        .map(u32::from_be_bytes);
                    if let (Some(dev_addr), Some(nwk_skey), Some(app_skey)) =
                        (addr, key(s.nwk_skey.as_ref()), key(s.app_skey.as_ref()))
                    {
                        d.session = Some(Session {
                            dev_addr,
                            nwk_skey,
                            app_skey,
                        });
                        d.fcnt_up = s.fcnt_up;
                        d.fcnt_down = s.fcnt_down;
                        self.by_addr.entry(dev_addr).or_default().push(idx);
                    }
                }
            }
        }
    }

    /// The state of every device changed since the last call, as (key, JSON) pairs.
    pub fn take_dirty(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for idx in self.dirty.drain() {
            let d = &self.devices[idx];
            if let Ok(json) = serde_json::to_vec(&d.stored()) {
                out.push((format!("dev:{:016x}", d.dev_eui), json));
            }
        }
        out
    }

    /// Queues a command (a downlink) for a device's next uplink. Refused at once when the
    /// device is unknown, the payload does not fit, or the device's queue is full.
    pub fn enqueue(&mut self, cmd: Command) {
        let Some(&idx) = self.by_name.get(cmd.device.as_str()) else {
            let why = format!("no LoRaWAN device named `{}` in this adapter", cmd.device);
            cmd.reply(Err(CommandError::UnknownTarget(why)));
            return;
        };
        let refusal = match &cmd.action {
            CommandAction::Write { .. } => Some(CommandError::Unsupported(
                "LoRaWAN devices take downlinks: send bytes with a port".into(),
            )),
            CommandAction::Send { port, payload } => match port {
                None | Some(0) | Some(224..) => Some(CommandError::InvalidValue(
                    "a downlink needs an FPort from 1 to 223".into(),
                )),
                Some(_) if payload.len() > MAX_DOWNLINK_PAYLOAD => {
                    Some(CommandError::InvalidValue(format!(
                        "{} bytes is more than a downlink carries at the slowest data rate ({MAX_DOWNLINK_PAYLOAD})",
                        payload.len()
                    )))
                }
                Some(_) => None,
            },
        };
        if let Some(e) = refusal {
            cmd.reply(Err(e));
            return;
        }
        let d = &mut self.devices[idx];
        if d.queue.len() >= MAX_QUEUED_DOWNLINKS {
            cmd.reply(Err(CommandError::Device(format!(
                "{MAX_QUEUED_DOWNLINKS} downlinks already wait for this device's next uplink"
            ))));
            return;
        }
        d.queue.push_back(cmd);
    }

    /// Answers queued commands whose deadline passed with `Expired`.
    pub fn expire(&mut self, now: Instant) {
        for d in &mut self.devices {
            let mut i = 0;
            while i < d.queue.len() {
                if d.queue[i].is_expired(now) {
                    if let Some(c) = d.queue.remove(i) {
                        c.reply(Err(CommandError::Expired));
                    }
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Handles one de-duplicated frame heard by `heard_by` receptions, the best of which is
    /// `best`.
    pub fn handle(
        &mut self,
        phy: &[u8],
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
    ) -> Outcome {
        let Some(&mhdr) = phy.first() else {
            return Outcome::reject(Reject::Malformed);
        };
        match mhdr >> 5 {
            0b000 => self.join_request(phy, best, heard_by, at),
            0b010 | 0b100 => self.data_uplink(phy, best, heard_by, at),
            0b001 | 0b011 | 0b101 => Outcome::reject(Reject::NotUplink),
            _ => Outcome::reject(Reject::Malformed),
        }
    }

    fn data_uplink(
        &mut self,
        phy: &[u8],
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
    ) -> Outcome {
        let mut buf = phy.to_vec();
        let Ok(PhyPayload::Data(DataPayload::Encrypted(enc))) = parse(&mut buf[..]) else {
            return Outcome::reject(Reject::Malformed);
        };
        let fhdr = enc.fhdr();
        let addr_le = fhdr.dev_addr();
        let dev_addr = u32::from_le_bytes([
            addr_le.as_ref()[0],
            addr_le.as_ref()[1],
            addr_le.as_ref()[2],
            addr_le.as_ref()[3],
        ]);
        let wire = fhdr.fcnt();
        let fopts: Vec<u8> = fhdr.data().to_vec();
        let ack_requested = enc.is_confirmed();
        let candidates = self.by_addr.get(&dev_addr).cloned().unwrap_or_default();
        if candidates.is_empty() {
            return self.forward_data(phy, dev_addr, best, heard_by, at);
        }
        // Which device's key produces the MIC, and with which full counter?
        let mut found = None;
        let mut replayed = None;
        for &idx in &candidates {
            let d = &self.devices[idx];
            let Some(s) = d.session else { continue };
            let key = AES128(s.nwk_skey);
            if let Some(fcnt) = next_fcnt(d.fcnt_up, wire) {
                if enc.validate_mic(&key, fcnt) {
                    found = Some((idx, fcnt));
                    break;
                }
            }
            if let Some(last) = d.fcnt_up {
                let old = old_fcnt(last, wire);
                if enc.validate_mic(&key, old) {
                    replayed = Some((idx, old, last));
                    break;
                }
            }
        }
        let (idx, fcnt) = match (found, replayed) {
            (Some(f), _) => f,
            (None, Some((idx, old, last))) => {
                // A confirmed uplink sent again because our ACK was lost: acknowledge it
                // again (once per counter, so a replayed copy cannot make the gateway
                // transmit without end), but deliver nothing twice.
                if ack_requested && old == last && self.devices[idx].reacked != Some(old) {
                    self.devices[idx].reacked = Some(old);
                    let downlink = self.downlink(idx, best, true, false);
                    return Outcome {
                        downlink,
                        rejected: Some(Reject::Replay),
                        ..Outcome::default()
                    };
                }
                return Outcome::reject(Reject::Replay);
            }
            (None, None) => return Outcome::reject(Reject::BadMic),
        };
        let Some(s) = self.devices[idx].session else {
            return Outcome::reject(Reject::BadMic);
        };
        let nwk = AES128(s.nwk_skey);
        let app = AES128(s.app_skey);
        let Ok(dec) = enc.decrypt(Some(&nwk), Some(&app), fcnt) else {
            return Outcome::reject(Reject::Malformed);
        };
        let fport = dec.f_port();
        let d = &mut self.devices[idx];
        d.fcnt_up = Some(fcnt);
        self.dirty.insert(idx);

        let mut out = Outcome::default();
        let mut mac = fopts;
        let mut app_payload: Option<Vec<u8>> = None;
        match dec.frm_payload() {
            FRMPayload::Data(p) => app_payload = Some(p.to_vec()),
            FRMPayload::MACCommands(m) => mac.extend_from_slice(m.data()),
            FRMPayload::None => {}
        }
        self.mac_commands(idx, &mac, at, &mut out.readings);
        if let (Some(port), Some(payload)) = (fport, app_payload) {
            self.decode(idx, port, &payload, at, &mut out.readings);
        }
        if self.metadata {
            self.metadata_readings(idx, best, heard_by, fcnt, fport, at, &mut out.readings);
        }
        LorawanStats::bump(&self.stats.uplinks);
        out.downlink = self.downlink(idx, best, ack_requested, true);
        out
    }

    fn mac_commands(&mut self, idx: usize, mac: &[u8], at: SystemTime, out: &mut Vec<Reading>) {
        if mac.is_empty() {
            return;
        }
        let (ok, cut) = complete_mac_commands(mac);
        if cut {
            LorawanStats::bump(&self.stats.bad_mac_commands);
            tracing::debug!(adapter = %self.adapter, device = %self.devices[idx].name, commands = %to_hex(mac), "MAC commands cut short or unknown; read up to there");
        }
        for cmd in parse_uplink_mac_commands(&mac[..ok]) {
            if let UplinkMacCommand::DevStatusAns(s) = cmd {
                let battery = s.battery();
                let margin = s.margin();
                let device = self.devices[idx].name.clone();
                let m = &self.meta_names;
                // 0: external power; 255: the device could not measure; else 1..254 of 254.
                let value = match battery {
                    0 => Some(100.0),
                    255 => None,
                    b => Some((f64::from(b) * 100.0 / 254.0 * 10.0).round() / 10.0),
                };
                if let Some(v) = value {
                    out.push(
                        Reading::new(
                            self.adapter.clone(),
                            device.clone(),
                            m.battery.clone(),
                            at,
                            Value::F64(v),
                        )
                        .with_unit(m.pct.clone()),
                    );
                }
                out.push(
                    Reading::new(
                        self.adapter.clone(),
                        device,
                        m.margin.clone(),
                        at,
                        Value::I64(i64::from(margin)),
                    )
                    .with_unit(m.db.clone()),
                );
            }
        }
    }

    fn decode(
        &mut self,
        idx: usize,
        fport: u8,
        payload: &[u8],
        at: SystemTime,
        out: &mut Vec<Reading>,
    ) {
        let d = &mut self.devices[idx];
        match codec::decode(&d.codec, &d.fields, fport, payload) {
            Ok(values) => {
                for v in values {
                    let point = d.point(&v.point);
                    let mut r =
                        Reading::new(self.adapter.clone(), d.name.clone(), point, at, v.value);
                    if let Some(u) = v.unit {
                        let unit = match self.units.get(&u) {
                            Some(n) => n.clone(),
                            None => {
                                let n = Name::from(u.as_str());
                                // Units come from config or the fixed Cayenne table: bounded.
                                if self.units.len() < 1024 {
                                    self.units.insert(u, n.clone());
                                }
                                n
                            }
                        };
                        r.unit = Some(unit);
                    }
                    out.push(r);
                }
            }
            Err(e) => {
                LorawanStats::bump(&self.stats.codec_errors);
                tracing::debug!(adapter = %self.adapter, device = %d.name, fport, error = %e, "payload did not decode; sent raw with bad quality");
                out.push(
                    Reading::new(
                        self.adapter.clone(),
                        d.name.clone(),
                        self.meta_names.payload.clone(),
                        at,
                        Value::Bytes(payload.to_vec()),
                    )
                    .with_quality(Quality::Bad(e.to_string())),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn metadata_readings(
        &self,
        idx: usize,
        best: &RxMeta,
        heard_by: usize,
        fcnt: u32,
        fport: Option<u8>,
        at: SystemTime,
        out: &mut Vec<Reading>,
    ) {
        let device = &self.devices[idx].name;
        self.radio_readings(device, best, heard_by, at, out);
        let m = &self.meta_names;
        let r = |p: &Name, v: Value| {
            Reading::new(self.adapter.clone(), device.clone(), p.clone(), at, v)
        };
        out.push(r(&m.fcnt, Value::I64(i64::from(fcnt))));
        if let Some(p) = fport {
            out.push(r(&m.fport, Value::I64(i64::from(p))));
        }
    }

    fn radio_readings(
        &self,
        device: &Name,
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
        out: &mut Vec<Reading>,
    ) {
        let m = &self.meta_names;
        let r = |p: &Name, v: Value| {
            Reading::new(self.adapter.clone(), device.clone(), p.clone(), at, v)
        };
        if let Some(rssi) = best.rssi {
            out.push(r(&m.rssi, Value::F64(rssi)).with_unit(m.dbm.clone()));
        }
        if let Some(snr) = best.snr {
            out.push(r(&m.snr, Value::F64(snr)).with_unit(m.db.clone()));
        }
        out.push(r(&m.frequency, Value::F64(best.freq)).with_unit(m.mhz.clone()));
        out.push(r(&m.data_rate, Value::Text(best.datr.to_string())));
        out.push(r(&m.gateway, Value::Text(eui_hex(best.gateway))));
        out.push(r(
            &m.gateways,
            Value::I64(i64::try_from(heard_by).unwrap_or(i64::MAX)),
        ));
    }

    fn forward_data(
        &mut self,
        phy: &[u8],
        dev_addr: u32,
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
    ) -> Outcome {
        if !self.prefixes.iter().any(|p| p.matches(dev_addr)) {
            return Outcome::reject(Reject::Unknown);
        }
        self.forward_raw(&format!("devaddr-{dev_addr:08x}"), phy, best, heard_by, at)
    }

    fn forward_raw(
        &mut self,
        device: &str,
        phy: &[u8],
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
    ) -> Outcome {
        LorawanStats::bump(&self.stats.forwarded);
        let device = Name::from(device);
        let mut readings = vec![Reading::new(
            self.adapter.clone(),
            device.clone(),
            self.meta_names.frame.clone(),
            at,
            Value::Bytes(phy.to_vec()),
        )];
        if self.metadata {
            self.radio_readings(&device, best, heard_by, at, &mut readings);
        }
        Outcome {
            readings,
            ..Outcome::default()
        }
    }

    fn join_request(
        &mut self,
        phy: &[u8],
        best: &RxMeta,
        heard_by: usize,
        at: SystemTime,
    ) -> Outcome {
        let mut buf = phy.to_vec();
        let Ok(PhyPayload::JoinRequest(req)) = parse(&mut buf[..]) else {
            return Outcome::reject(Reject::Malformed);
        };
        let le8 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        };
        let dev_eui = le8(req.dev_eui().as_ref());
        let join_eui = le8(req.app_eui().as_ref());
        let dev_nonce =
            u16::from_le_bytes([req.dev_nonce().as_ref()[0], req.dev_nonce().as_ref()[1]]);
        let idx = match self.by_eui.get(&dev_eui) {
            Some(&i) if self.devices[i].activation == Activation::Otaa => i,
            _ => {
                if self.join_euis.contains(&join_eui) {
                    return self.forward_raw(
                        &format!("deveui-{dev_eui:016x}"),
                        phy,
                        best,
                        heard_by,
                        at,
                    );
                }
                return Outcome::reject(Reject::Unknown);
            }
        };
        let d = &self.devices[idx];
        if d.join_eui.is_some_and(|j| j != join_eui) {
            return Outcome::reject(Reject::Unknown);
        }
        let Some(app_key) = d.app_key else {
            return Outcome::reject(Reject::Unknown);
        };
        if !req.validate_mic(&AES128(app_key)) {
            return Outcome::reject(Reject::BadMic);
        }
        if d.dev_nonces.contains(&dev_nonce) {
            return Outcome::reject(Reject::NonceReuse);
        }
        // A fresh JoinNonce for every accept; the DevAddr is fixed per device (NwkID from
        // the NetID, the rest from the DevEUI), so a rejoin keeps its address.
        let join_nonce = (d.join_nonce + 1) & 0x00FF_FFFF;
        let nwk_id = u32::from(self.net_id[2] & 0x7F);
        let dev_addr = (nwk_id << 25) | (fingerprint(&[&dev_eui.to_be_bytes()]) & 0x01FF_FFFF);
        let rx_delay = u8::try_from(self.rx1_delay_us / 1_000_000).unwrap_or(1);
        let Some((accept, nwk_skey, app_skey)) = join_accept(
            app_key,
            join_nonce,
            self.net_id,
            dev_addr,
            rx_delay,
            dev_nonce,
        ) else {
            return Outcome::reject(Reject::Malformed);
        };
        let session = Session {
            dev_addr,
            nwk_skey,
            app_skey,
        };
        // Re-index the device under its (possibly new) address.
        let d = &mut self.devices[idx];
        if let Some(old) = d.session.replace(session) {
            if let Some(v) = self.by_addr.get_mut(&old.dev_addr) {
                v.retain(|&i| i != idx);
            }
        }
        self.by_addr.entry(dev_addr).or_default().push(idx);
        d.join_nonce = join_nonce;
        d.dev_nonces.push_back(dev_nonce);
        while d.dev_nonces.len() > MAX_DEV_NONCES {
            d.dev_nonces.pop_front();
        }
        d.fcnt_up = None;
        d.fcnt_down = 0;
        self.dirty.insert(idx);
        LorawanStats::bump(&self.stats.joins);
        tracing::info!(adapter = %self.adapter, device = %d.name, dev_addr = %format!("{dev_addr:08x}"), "device joined");
        let txpk = self.txpk(best, self.join_delay_us, &accept);
        Outcome {
            readings: Vec::new(),
            downlink: Some(Downlink {
                gateway: best.gateway,
                txpk,
                device: self.devices[idx].name.clone(),
                command: None,
            }),
            rejected: None,
        }
    }

    /// The RX1 downlink after an uplink of device `idx`: the oldest queued command, or an
    /// empty frame acknowledging a confirmed uplink. `None` when neither is due.
    fn downlink(
        &mut self,
        idx: usize,
        best: &RxMeta,
        ack: bool,
        take_command: bool,
    ) -> Option<Downlink> {
        let d = &mut self.devices[idx];
        let now = Instant::now();
        let mut command = None;
        if take_command {
            while let Some(c) = d.queue.pop_front() {
                if c.is_expired(now) {
                    c.reply(Err(CommandError::Expired));
                } else {
                    command = Some(c);
                    break;
                }
            }
        }
        if command.is_none() && !ack {
            return None;
        }
        let s = d.session?;
        let (port, payload) = match command.as_ref().map(|c| &c.action) {
            Some(CommandAction::Send { port, payload }) => (*port, payload.as_slice()),
            _ => (None, &[][..]),
        };
        let mut fctrl = FCtrl::new(0, false);
        if ack {
            fctrl.set_ack();
        }
        if !d.queue.is_empty() {
            // FPending: more is waiting; the device should open another window soon.
            fctrl = FCtrl::new(fctrl.raw_value() | 0x10, false);
        }
        let fcnt = d.fcnt_down;
        let mut creator = match DataPayloadCreator::with_options([0u8; 256], DefaultFactory) {
            Ok(c) => c,
            Err(_) => return None,
        };
        creator
            .set_uplink(false)
            .set_confirmed(false)
            .set_dev_addr(&s.dev_addr.to_le_bytes())
            .set_fctrl(&fctrl)
            .set_fcnt(fcnt);
        if let Some(p) = port {
            creator.set_f_port(p);
        }
        let phy = match creator.build(
            payload,
            &[],
            &NewSKey::from(s.nwk_skey),
            &AppSKey::from(s.app_skey),
        ) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                if let Some(c) = command {
                    c.reply(Err(CommandError::InvalidValue(format!(
                        "cannot build the downlink: {e:?}"
                    ))));
                }
                return None;
            }
        };
        d.fcnt_down = fcnt.wrapping_add(1);
        self.dirty.insert(idx);
        let txpk = self.txpk(best, self.rx1_delay_us, &phy);
        Some(Downlink {
            gateway: best.gateway,
            txpk,
            device: self.devices[idx].name.clone(),
            command,
        })
    }

    /// The RX1 transmit request for `phy`, `delay_us` after the uplink `best`.
    fn txpk(&self, best: &RxMeta, delay_us: u32, phy: &[u8]) -> Txpk {
        let (freq, datr) = match self.region {
            Region::Eu868 => (best.freq, best.datr.clone()),
            Region::Us915 | Region::Au915 => {
                let freq = 923.3 + 0.6 * f64::from(best.chan % 8);
                let datr = match &best.datr {
                    DataRate::Lora(s) => {
                        let sf = s
                            .strip_prefix("SF")
                            .and_then(|r| r.split("BW").next())
                            .and_then(|n| n.parse::<u8>().ok())
                            .unwrap_or(10);
                        // RX1 with offset 0: DR0..DR3 (SF10..SF7 at 125 kHz) keep their
                        // spreading factor at 500 kHz (DR10..DR13); DR4 (SF8 at 500 kHz)
                        // goes to DR13 (SF7 at 500 kHz).
                        let sf = if s.ends_with("BW500") {
                            7
                        } else {
                            sf.clamp(7, 12)
                        };
                        DataRate::Lora(format!("SF{sf}BW500"))
                    }
                    other => other.clone(),
                };
                ((freq * 10.0).round() / 10.0, datr)
            }
        };
        Txpk {
            imme: false,
            tmst: best.tmst.wrapping_add(delay_us),
            freq,
            rfch: 0,
            powe: self.tx_power,
            modu: "LORA".into(),
            datr,
            codr: if best.codr.is_empty() {
                "4/5".into()
            } else {
                best.codr.clone()
            },
            ipol: true,
            size: phy.len(),
            data: base64_encode(phy),
        }
    }
}

/// The Join Accept (as sent on air) for a device with `app_key` and the session keys it
/// establishes (NwkSKey, AppSKey), LoRaWAN 1.0.x §6.2.5. `join_nonce` (24 bits) and `net_id`
/// are written most significant byte first, as printed; `dev_nonce` is the Join Request's.
pub fn join_accept(
    app_key: [u8; 16],
    join_nonce: u32,
    net_id: [u8; 3],
    dev_addr: u32,
    rx_delay: u8,
    dev_nonce: u16,
) -> Option<(Vec<u8>, [u8; 16], [u8; 16])> {
    let key = AppKey::from(app_key);
    let nonce_le = join_nonce.to_le_bytes();
    let mut creator = JoinAcceptCreator::new();
    creator
        .set_app_nonce(&[nonce_le[0], nonce_le[1], nonce_le[2]])
        .set_net_id(&[net_id[2], net_id[1], net_id[0]])
        .set_dev_addr(&dev_addr.to_le_bytes())
        .set_dl_settings(0)
        .set_rx_delay(rx_delay);
    // The creator's buffer has room for a CFList; without one the accept is 17 bytes.
    let accept = creator.build(&AES128(app_key)).ok()?.get(..17)?.to_vec();
    // The keys come from the accept just built, through the crate's derivation.
    let plain =
        DecryptedJoinAcceptPayload::new_with_factory(accept.clone(), &key, DefaultFactory).ok()?;
    let nonce = lorawan_encoding::parser::DevNonce::from(dev_nonce.to_le_bytes());
    let nwk: NewSKey = plain.derive_newskey(&nonce, &key);
    let app: AppSKey = plain.derive_appskey(&nonce, &key);
    Some((accept, nwk.inner().0, app.inner().0))
}

fn duration_us(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
