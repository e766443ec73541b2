//! A packet forwarder and LoRaWAN devices without radios, for the demo, the tests and the
//! benchmark: [`SimDevice`] builds real, encrypted and signed frames with the `lorawan`
//! crate's creators; [`Forwarder`] carries them to a server over real UDP exactly as a
//! gateway's packet forwarder does (PUSH_DATA, PULL_DATA keep-alives, PULL_RESP, TX_ACK);
//! [`smart_pole_payload`] is what a smart street pole sends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use fieldgate_adapter::Shutdown;
use lorawan_encoding::creator::{DataPayloadCreator, JoinRequestCreator};
use lorawan_encoding::default_crypto::DefaultFactory;
use lorawan_encoding::keys::{AppKey, AppSKey, NewSKey, AES128};
use lorawan_encoding::parser::{parse, DataHeader, DataPayload, FRMPayload, PhyPayload};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::semtech::{self, base64_decode, base64_encode};

/// An ABP device (or an OTAA device after its join): it numbers and seals its uplinks. Its
/// `Debug` hides the keys, like the network's.
#[derive(Clone)]
pub struct SimDevice {
    /// Device address.
    pub dev_addr: u32,
    /// Network session key.
    pub nwk_skey: [u8; 16],
    /// Application session key.
    pub app_skey: [u8; 16],
    /// The counter of the next uplink.
    pub fcnt: u32,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("dev_addr", &format_args!("{:08x}", self.dev_addr))
            .field("nwk_skey", &crate::config::Redacted)
            .field("app_skey", &crate::config::Redacted)
            .field("fcnt", &self.fcnt)
            .finish()
    }
}

impl SimDevice {
    /// The PHYPayload of the next uplink (counter then incremented).
    pub fn uplink(&mut self, fport: u8, payload: &[u8], confirmed: bool) -> Vec<u8> {
        let frame = self.frame(fport, payload, confirmed, &[]);
        self.fcnt = self.fcnt.wrapping_add(1);
        frame
    }

    /// Opens a downlink meant for this device, as the device would: `(FCnt, FPort, payload)`
    /// if `phy` is a data frame to its DevAddr whose MIC checks with its NwkSKey and whose
    /// payload decrypts (FPort 0 with the NwkSKey, others with the AppSKey); `None` otherwise.
    pub fn open_downlink(&self, phy: &[u8]) -> Option<(u16, Option<u8>, Vec<u8>)> {
        let Ok(PhyPayload::Data(DataPayload::Encrypted(enc))) = parse(phy.to_vec()) else {
            return None;
        };
        if enc.is_uplink() || enc.fhdr().dev_addr().as_ref() != self.dev_addr.to_le_bytes() {
            return None;
        }
        let fcnt = enc.fhdr().fcnt();
        let (nwk, app) = (AES128(self.nwk_skey), AES128(self.app_skey));
        if !enc.validate_mic(&nwk, u32::from(fcnt)) {
            return None;
        }
        let port = enc.f_port();
        let dec = enc.decrypt(Some(&nwk), Some(&app), u32::from(fcnt)).ok()?;
        let payload = match dec.frm_payload() {
            FRMPayload::Data(p) => p.to_vec(),
            FRMPayload::None => Vec::new(),
            FRMPayload::MACCommands(m) => m.data().to_vec(),
        };
        Some((fcnt, port, payload))
    }

    /// An uplink with counter `self.fcnt` and MAC commands `fopts` in FOpts, without
    /// advancing the counter.
    pub fn frame(&self, fport: u8, payload: &[u8], confirmed: bool, fopts: &[u8]) -> Vec<u8> {
        let Ok(mut c) = DataPayloadCreator::with_options([0u8; 256], DefaultFactory) else {
            return Vec::new();
        };
        c.set_uplink(true)
            .set_confirmed(confirmed)
            .set_dev_addr(&self.dev_addr.to_le_bytes())
            .set_fcnt(self.fcnt)
            .set_f_port(fport);
        match c.build(
            payload,
            &[],
            &NewSKey::from(self.nwk_skey),
            &AppSKey::from(self.app_skey),
        ) {
            Ok(b) if fopts.is_empty() => b.to_vec(),
            Ok(_) => self.with_fopts(fport, payload, confirmed, fopts),
            Err(_) => Vec::new(),
        }
    }

    /// Builds a frame with raw FOpts bytes (even malformed ones, which the creator would not
    /// write), encrypting and signing it the same way.
    fn with_fopts(&self, fport: u8, payload: &[u8], confirmed: bool, fopts: &[u8]) -> Vec<u8> {
        // Encrypt the payload alone through the creator, then splice FOpts in and re-sign.
        let plain = self.frame(fport, payload, confirmed, &[]);
        let enc_payload = &plain[9..plain.len() - 4];
        let mut phy = plain[..5].to_vec();
        phy.push(u8::try_from(fopts.len().min(15)).unwrap_or(15));
        phy.extend_from_slice(&plain[6..8]);
        phy.extend_from_slice(&fopts[..fopts.len().min(15)]);
        phy.push(fport);
        phy.extend_from_slice(enc_payload);
        let mic = data_mic(&self.nwk_skey, self.dev_addr, self.fcnt, &phy);
        phy.extend_from_slice(&mic);
        phy
    }
}

/// The MIC of an uplink `msg` (MHDR to the end of FRMPayload), LoRaWAN 1.0 §4.4: the first
/// four bytes of AES-CMAC(NwkSKey, B0 | msg), with the crate's CMAC.
fn data_mic(nwk_skey: &[u8; 16], dev_addr: u32, fcnt: u32, msg: &[u8]) -> [u8; 4] {
    use lorawan_encoding::keys::{CryptoFactory, Mac};
    let mut b0 = [0u8; 16];
    b0[0] = 0x49;
    b0[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b0[10..14].copy_from_slice(&fcnt.to_le_bytes());
    b0[15] = u8::try_from(msg.len()).unwrap_or(u8::MAX);
    let mut mac = DefaultFactory.new_mac(&lorawan_encoding::keys::AES128(*nwk_skey));
    mac.input(&b0);
    mac.input(msg);
    let full = mac.result();
    [full[0], full[1], full[2], full[3]]
}

/// A Join Request of an OTAA device.
pub fn join_request(app_key: [u8; 16], join_eui: u64, dev_eui: u64, dev_nonce: u16) -> Vec<u8> {
    let Ok(mut c) = JoinRequestCreator::with_options([0u8; 23], DefaultFactory) else {
        return Vec::new();
    };
    c.set_app_eui(&join_eui.to_le_bytes())
        .set_dev_eui(&dev_eui.to_le_bytes())
        .set_dev_nonce(&dev_nonce.to_le_bytes());
    c.build(&AppKey::from(app_key)).to_vec()
}

/// A PUSH_DATA datagram (protocol version 2) carrying `frames` as `rxpk`, each heard with
/// `rssi`/`snr` at concentrator time `tmst`.
pub fn push_data(
    token: u16,
    gateway: u64,
    frames: &[Vec<u8>],
    tmst: u32,
    rssi: f64,
    snr: f64,
) -> Vec<u8> {
    let rxpk: Vec<_> = frames
        .iter()
        .map(|f| {
            json!({
                "tmst": tmst, "chan": 0, "rfch": 0, "freq": 868.1, "stat": 1,
                "modu": "LORA", "datr": "SF7BW125", "codr": "4/5",
                "rssi": rssi, "lsnr": snr, "size": f.len(), "data": base64_encode(f),
            })
        })
        .collect();
    datagram(semtech::PUSH_DATA, token, gateway, &json!({ "rxpk": rxpk }))
}

/// A protocol-version-2 datagram from `gateway`: the header, then `body` (JSON; `Null` for
/// none).
fn datagram(identifier: u8, token: u16, gateway: u64, body: &serde_json::Value) -> Vec<u8> {
    let mut d = semtech::ack(2, token, identifier).to_vec();
    d.extend_from_slice(&gateway.to_be_bytes());
    if !body.is_null() {
        d.extend_from_slice(body.to_string().as_bytes());
    }
    d
}

/// A downlink a [`Forwarder`] received in a PULL_RESP.
#[derive(Debug, Clone)]
pub struct Received {
    /// The PULL_RESP token, to answer with [`Forwarder::tx_ack`].
    pub token: u16,
    /// The `txpk` object.
    pub txpk: serde_json::Value,
    /// The PHYPayload to transmit.
    pub phy: Vec<u8>,
}

/// A packet forwarder of one gateway, on one UDP socket.
#[derive(Debug)]
pub struct Forwarder {
    socket: UdpSocket,
    /// The gateway's EUI.
    pub gateway: u64,
    server: SocketAddr,
    token: u16,
    stash: VecDeque<Vec<u8>>,
}

impl Forwarder {
    /// A forwarder for `gateway` sending to `server`, bound to a free local port.
    pub async fn new(gateway: u64, server: SocketAddr) -> std::io::Result<Forwarder> {
        let local: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?
        } else {
            "[::1]:0".parse().map_err(std::io::Error::other)?
        };
        Ok(Forwarder {
            socket: UdpSocket::bind(local).await?,
            gateway,
            server,
            token: 0,
            stash: VecDeque::new(),
        })
    }

    fn next_token(&mut self) -> u16 {
        self.token = self.token.wrapping_add(1);
        self.token
    }

    /// Waits up to `timeout` for a datagram with `identifier` (and `token`, if given);
    /// others are kept for later calls.
    async fn expect(
        &mut self,
        identifier: u8,
        token: Option<u16>,
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        let matches = |d: &[u8]| {
            d.len() >= 4 && d[3] == identifier && token.is_none_or(|t| d[1..3] == t.to_be_bytes())
        };
        if let Some(i) = self.stash.iter().position(|d| matches(d)) {
            return self.stash.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let r = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await;
            match r {
                Ok(Ok(n)) => {
                    let d = buf[..n].to_vec();
                    if matches(&d) {
                        return Some(d);
                    }
                    if self.stash.len() < 1024 {
                        self.stash.push_back(d);
                    }
                }
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Sends `d` (built with `token`) and waits for the answer `identifier` with that token;
    /// false without one.
    async fn exchange(&mut self, d: &[u8], token: u16, identifier: u8) -> bool {
        if self.socket.send_to(d, self.server).await.is_err() {
            return false;
        }
        self.expect(identifier, Some(token), Duration::from_secs(2))
            .await
            .is_some()
    }

    /// Sends `frames` in one PUSH_DATA and waits for its PUSH_ACK; false without one.
    pub async fn push(&mut self, frames: &[Vec<u8>], tmst: u32, rssi: f64, snr: f64) -> bool {
        let token = self.next_token();
        let d = push_data(token, self.gateway, frames, tmst, rssi, snr);
        self.exchange(&d, token, semtech::PUSH_ACK).await
    }

    /// Sends raw bytes to the server (garbage, for tests).
    pub async fn send_raw(&self, d: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(d, self.server).await.map(|_| ())
    }

    /// Sends a `stat` report in a PUSH_DATA and waits for its PUSH_ACK.
    pub async fn stat(&mut self, stat: serde_json::Value) -> bool {
        let token = self.next_token();
        let d = datagram(
            semtech::PUSH_DATA,
            token,
            self.gateway,
            &json!({ "stat": stat }),
        );
        self.exchange(&d, token, semtech::PUSH_ACK).await
    }

    /// Sends PULL_DATA (opening the downlink route) and waits for PULL_ACK.
    pub async fn pull(&mut self) -> bool {
        let token = self.next_token();
        let d = datagram(
            semtech::PULL_DATA,
            token,
            self.gateway,
            &serde_json::Value::Null,
        );
        self.exchange(&d, token, semtech::PULL_ACK).await
    }

    /// Waits up to `timeout` for a PULL_RESP.
    pub async fn downlink(&mut self, timeout: Duration) -> Option<Received> {
        let d = self.expect(semtech::PULL_RESP, None, timeout).await?;
        let token = u16::from_be_bytes([d[1], d[2]]);
        let v: serde_json::Value = serde_json::from_slice(&d[4..]).ok()?;
        let txpk = v.get("txpk")?.clone();
        let phy = base64_decode(txpk.get("data")?.as_str()?)?;
        Some(Received { token, txpk, phy })
    }

    /// Answers a PULL_RESP with TX_ACK, with `error` (`None` = sent).
    pub async fn tx_ack(&self, token: u16, error: Option<&str>) -> std::io::Result<()> {
        let body = json!({ "txpk_ack": { "error": error.unwrap_or("NONE") } });
        let d = datagram(semtech::TX_ACK, token, self.gateway, &body);
        self.socket.send_to(&d, self.server).await.map(|_| ())
    }
}

/// Readings in one [`smart_pole_payload`].
pub const SMART_POLE_READINGS: usize = 5;

/// A smart pole's Cayenne LPP uplink at step `t`: temperature (channel 1, °C), relative
/// humidity (2, %RH), CO2 concentration (3, ppm), PM2.5 as an analog input (4, µg/m³) and
/// illuminance (5, lux), drifting slowly with `t` and differing by `pole`.
pub fn smart_pole_payload(pole: u32, t: u64) -> Vec<u8> {
    let phase = (t % 240) as f64 / 240.0 * std::f64::consts::TAU;
    let temp = (180.0 + 40.0 * phase.sin() + f64::from(pole % 7)) as i16; // 0.1 °C
    let hum = (120.0 - 20.0 * phase.sin()) as u8; // 0.5 %RH
    let co2 = (420.0 + 60.0 * (phase * 2.0).sin() + f64::from(pole % 5) * 10.0) as u16;
    let pm25 = (1200.0 + 400.0 * phase.cos()) as i16; // 0.01 µg/m³
    let lux = (500.0 + 450.0 * phase.sin()) as u16;
    let mut p = Vec::with_capacity(20);
    p.extend_from_slice(&[1, 0x67]);
    p.extend_from_slice(&temp.to_be_bytes());
    p.extend_from_slice(&[2, 0x68, hum]);
    p.extend_from_slice(&[3, 0x7D]);
    p.extend_from_slice(&co2.to_be_bytes());
    p.extend_from_slice(&[4, 0x02]);
    p.extend_from_slice(&pm25.to_be_bytes());
    p.extend_from_slice(&[5, 0x65]);
    p.extend_from_slice(&lux.to_be_bytes());
    p
}

/// The ABP session of demo pole `n` (matching `config/smart-pole.toml`): DevAddr
/// `26011f00 + n`, every NwkSKey byte `0x20 + n`, every AppSKey byte `0x30 + n`.
pub fn pole_device(n: u8) -> SimDevice {
    SimDevice {
        dev_addr: 0x2601_1F00 + u32::from(n),
        nwk_skey: [0x20 + n; 16],
        app_skey: [0x30 + n; 16],
        fcnt: 0,
    }
}

/// Runs `poles` demo poles behind one gateway until `shutdown`: every `period` each pole
/// sends a smart-pole uplink; the forwarder keeps its downlink route open and acknowledges
/// downlinks.
pub async fn run_smart_poles(
    server: SocketAddr,
    poles: u8,
    period: Duration,
    mut shutdown: Shutdown,
) {
    let Ok(mut fwd) = Forwarder::new(0x00AA_BBFF_FE00_0001, server).await else {
        tracing::warn!(server = %server, "demo packet forwarder cannot bind a socket");
        return;
    };
    let mut devices: Vec<SimDevice> = (1..=poles).map(pole_device).collect();
    let mut t = 0u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.fired() => return,
            _ = tick.tick() => {}
        }
        if t.is_multiple_of(10) {
            fwd.pull().await;
        }
        for (i, d) in devices.iter_mut().enumerate() {
            let pole = u32::try_from(i).unwrap_or(0) + 1;
            let f = d.uplink(2, &smart_pole_payload(pole, t), false);
            let tmst = u32::try_from(t % 4000).unwrap_or(0) * 1_000_000;
            fwd.push(&[f], tmst, -70.0 - f64::from(pole), 7.5).await;
        }
        while let Some(rx) = fwd.downlink(Duration::ZERO).await {
            let _ = fwd.tx_ack(rx.token, None).await;
        }
        t += 1;
    }
}
