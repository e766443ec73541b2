//! The LoRaWAN adapter: fieldgate as the LoRaWAN server of its own devices, at the edge.
//!
//! LoRa concentrators run a packet forwarder that speaks Semtech's UDP protocol
//! ([`semtech`]) to fieldgate instead of to a cloud network server. [`Server`] is that
//! protocol's server side without sockets: it acknowledges PUSH_DATA and PULL_DATA, keeps
//! the downlink route of every gateway, folds the copies of one frame heard by several
//! gateways into one (keeping the best RSSI/SNR), turns `stat` reports into readings of the
//! gateway, and hands each frame to the [`network::Network`], which verifies, decrypts,
//! decodes ([`codec`]) and answers joins and downlinks.
//!
//! [`Lorawan`] is the [`Adapter`]: a UDP socket around a [`Server`]. It stores the session
//! state of the frames it handled (frame counters, OTAA sessions, used DevNonces) in the
//! gateway's state store *before* their readings go to the queue and their downlinks to the
//! air, so that neither a restart nor a power cut reopens a replay or reuses a downlink
//! counter. Garbage from the air or the network is counted in [`LorawanStats`] and logged at
//! most once a minute per kind; no datagram can stop it.
//!
//! [`sim`] is a packet forwarder with devices behind it, for the demo, the tests and the
//! benchmark.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod network;
pub mod semtech;
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_adapter::complaints::Complaints;
use fieldgate_adapter::{
    Adapter, AdapterContext, AdapterError, BoxFuture, Command, CommandError, Name, Reading, Value,
};
use tokio::net::UdpSocket;

pub use config::{DeviceConfig, ForwardConfig, LorawanConfig};
pub use network::{LorawanStats, Network, Reject, RxMeta};

use network::{eui_hex, Downlink};
use semtech::{Packet, PushPayload, Stat};

/// How many distinct frames may wait in the de-duplication window at once; beyond it the
/// oldest are handled early.
pub const MAX_PENDING_FRAMES: usize = 65_536;
/// How many gateways are remembered for downlinks.
pub const MAX_GATEWAYS: usize = 4096;
/// How long a version-2 gateway has to answer a PULL_RESP with TX_ACK.
pub const TX_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server wants done after a datagram or a flush.
#[derive(Debug, Default)]
pub struct Effects {
    /// Datagrams to send now (acknowledgements).
    pub replies: Vec<(SocketAddr, Vec<u8>)>,
    /// Readings to queue once the state is stored.
    pub readings: Vec<Reading>,
    /// PULL_RESP datagrams to send once the state is stored.
    pub downlinks: Vec<(SocketAddr, Vec<u8>)>,
}

#[derive(Debug)]
struct Pending {
    at: SystemTime,
    best: RxMeta,
    /// The distinct gateways that heard it (a gateway may report a frame twice, from two
    /// antennas or by a retransmission of its PUSH_DATA).
    gateways: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Gateway {
    addr: SocketAddr,
    version: u8,
}

#[derive(Debug)]
struct InFlight {
    command: Option<Command>,
    device: Name,
    sent: Instant,
}

/// The packet-forwarder server without its socket; see the crate documentation.
#[derive(Debug)]
pub struct Server {
    adapter: Name,
    net: Network,
    window: Duration,
    gateway_stats: bool,
    pending: HashMap<Vec<u8>, Pending>,
    order: VecDeque<(Instant, Vec<u8>)>,
    gateways: HashMap<u64, Gateway>,
    in_flight: HashMap<(u64, u16), InFlight>,
    next_token: u16,
    complaints: Complaints,
}

impl Server {
    /// A server for the validated `cfg`.
    pub fn new(adapter: Name, cfg: &LorawanConfig, stats: Arc<LorawanStats>) -> Server {
        Server {
            net: Network::new(adapter.clone(), cfg, stats),
            adapter,
            window: cfg.dedup_window,
            gateway_stats: cfg.gateway_stats,
            pending: HashMap::new(),
            order: VecDeque::new(),
            gateways: HashMap::new(),
            in_flight: HashMap::new(),
            next_token: 1,
            complaints: Complaints::default(),
        }
    }

    /// The network behind the server (sessions, queued downlinks).
    pub fn network(&mut self) -> &mut Network {
        &mut self.net
    }

    fn stats(&self) -> &LorawanStats {
        self.net.stats()
    }

    /// Handles one datagram from `from`, received at `now` (`at` on the wall clock).
    pub fn datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        at: SystemTime,
        out: &mut Effects,
    ) {
        LorawanStats::bump(&self.stats().datagrams);
        let packet = match semtech::parse(data) {
            Ok(p) => p,
            Err(e) => {
                LorawanStats::bump(&self.stats().bad_datagrams);
                self.complaints.note(&self.adapter, "datagram", || {
                    format!(
                        "ignored a datagram from {from} that is not packet-forwarder protocol: {e}"
                    )
                });
                return;
            }
        };
        match packet {
            Packet::PushData {
                version,
                token,
                gateway,
                json,
            } => {
                out.replies.push((
                    from,
                    semtech::ack(version, token, semtech::PUSH_ACK).to_vec(),
                ));
                match serde_json::from_slice::<PushPayload>(semtech::trim_json(json)) {
                    Ok(p) => self.push_data(gateway, p, now, at, out),
                    Err(e) => {
                        LorawanStats::bump(&self.stats().bad_datagrams);
                        self.complaints.note(&self.adapter, "json", || {
                            format!(
                                "PUSH_DATA from gateway {} has unreadable JSON: {e}",
                                eui_hex(gateway)
                            )
                        });
                    }
                }
            }
            Packet::PullData {
                version,
                token,
                gateway,
            } => {
                out.replies.push((
                    from,
                    semtech::ack(version, token, semtech::PULL_ACK).to_vec(),
                ));
                if self.gateways.len() >= MAX_GATEWAYS && !self.gateways.contains_key(&gateway) {
                    self.complaints.note(&self.adapter, "gateways", || {
                        format!(
                            "more than {MAX_GATEWAYS} gateways; no downlink route for {}",
                            eui_hex(gateway)
                        )
                    });
                } else {
                    self.gateways.insert(
                        gateway,
                        Gateway {
                            addr: from,
                            version,
                        },
                    );
                }
            }
            Packet::TxAck {
                token,
                gateway,
                json,
                ..
            } => {
                let error = semtech::tx_ack_error(json);
                if let Some(f) = self.in_flight.remove(&(gateway, token)) {
                    self.finish(f, error);
                }
            }
        }
    }

    fn finish(&mut self, f: InFlight, error: Option<String>) {
        match error {
            None => {
                if let Some(c) = f.command {
                    c.reply(Ok(None));
                }
            }
            Some(e) => {
                LorawanStats::bump(&self.stats().downlink_errors);
                tracing::warn!(adapter = %self.adapter, device = %f.device, error = %e, "gateway refused a downlink");
                if let Some(c) = f.command {
                    c.reply(Err(CommandError::Device(format!(
                        "the gateway refused the downlink: {e}"
                    ))));
                }
            }
        }
    }

    fn push_data(
        &mut self,
        gateway: u64,
        p: PushPayload,
        now: Instant,
        at: SystemTime,
        out: &mut Effects,
    ) {
        if let Some(stat) = p.stat {
            // Only gateways with a route (they sent PULL_DATA) report, and only so many: a
            // spoofed `stat` with a random EUI must not make up devices without end.
            if self.gateway_stats && self.gateways.contains_key(&gateway) {
                self.gateway_readings(gateway, &stat, at, &mut out.readings);
            }
        }
        for rx in p.rxpk {
            LorawanStats::bump(&self.stats().rxpk);
            if rx.stat == -1 {
                LorawanStats::bump(&self.stats().crc_errors);
                continue;
            }
            // A PHYPayload is at most 255 bytes (LoRa's own limit); anything longer is not a
            // frame and must not take memory in the window.
            let Some(phy) = semtech::base64_decode(&rx.data).filter(|p| p.len() <= 255) else {
                LorawanStats::bump(&self.stats().malformed);
                self.complaints.note(&self.adapter, "base64", || {
                    format!(
                        "gateway {} sent a frame that is not base64",
                        eui_hex(gateway)
                    )
                });
                continue;
            };
            let meta = RxMeta {
                gateway,
                tmst: rx.tmst,
                freq: rx.freq,
                chan: rx.chan,
                rfch: rx.rfch,
                rssi: rx.best_rssi(),
                snr: rx.best_snr(),
                datr: rx.datr,
                codr: rx.codr.unwrap_or_default(),
            };
            if let Some(p) = self.pending.get_mut(&phy) {
                LorawanStats::bump(&self.net.stats().duplicates);
                if !p.gateways.contains(&gateway) && p.gateways.len() < 64 {
                    p.gateways.push(gateway);
                }
                if meta.better_than(&p.best) {
                    p.best = meta;
                }
                continue;
            }
            if self.pending.len() >= MAX_PENDING_FRAMES {
                self.flush_one(out);
            }
            self.order.push_back((now + self.window, phy.clone()));
            self.pending.insert(
                phy,
                Pending {
                    at,
                    best: meta,
                    gateways: vec![gateway],
                },
            );
        }
    }

    fn gateway_readings(&self, gateway: u64, s: &Stat, at: SystemTime, out: &mut Vec<Reading>) {
        let device = Name::from(format!("gateway-{}", eui_hex(gateway)));
        let mut push = |point: &str, v: Value, unit: Option<&str>| {
            let mut r = Reading::new(self.adapter.clone(), device.clone(), point, at, v);
            if let Some(u) = unit {
                r = r.with_unit(u);
            }
            out.push(r);
        };
        let int = |v: u64| Value::I64(i64::try_from(v).unwrap_or(i64::MAX));
        for (point, v) in [
            ("rx_received", s.rxnb),
            ("rx_ok", s.rxok),
            ("rx_forwarded", s.rxfw),
            ("downlinks_received", s.dwnb),
            ("tx_emitted", s.txnb),
        ] {
            if let Some(v) = v {
                push(point, int(v), None);
            }
        }
        for (point, v, unit) in [
            ("ack_ratio", s.ackr, "%"),
            ("latitude", s.lati, "°"),
            ("longitude", s.long, "°"),
            ("altitude", s.alti, "m"),
            ("temperature", s.temp, "°C"),
        ] {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                push(point, Value::F64(v), Some(unit));
            }
        }
    }

    /// When the next frame leaves the de-duplication window.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(d, _)| *d)
    }

    /// Handles every frame whose window closed by `now` (every frame with `all`), and
    /// answers in-flight downlinks whose TX_ACK did not come within [`TX_ACK_TIMEOUT`].
    pub fn flush(&mut self, now: Instant, all: bool, out: &mut Effects) {
        while self.order.front().is_some_and(|(d, _)| all || *d <= now) {
            self.flush_one(out);
        }
        self.net.expire(now);
        let late: Vec<(u64, u16)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.sent) >= TX_ACK_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some(f) = self.in_flight.remove(&k) {
                // Some forwarders never send TX_ACK; the frame went to them.
                tracing::debug!(adapter = %self.adapter, device = %f.device, "no TX_ACK for a downlink; taking it as sent");
                self.finish(f, None);
            }
        }
    }

    fn flush_one(&mut self, out: &mut Effects) {
        let Some((_, phy)) = self.order.pop_front() else {
            return;
        };
        let Some(p) = self.pending.remove(&phy) else {
            return;
        };
        let outcome = self.net.handle(&phy, &p.best, p.gateways.len(), p.at);
        out.readings.extend(outcome.readings);
        if let Some(r) = outcome.rejected {
            self.rejected(r, &phy, &p.best);
        }
        if let Some(d) = outcome.downlink {
            self.route(d, out);
        }
    }

    fn rejected(&mut self, r: Reject, phy: &[u8], best: &RxMeta) {
        let s = self.net.stats();
        let (counter, kind, what) = match r {
            Reject::Malformed => (&s.malformed, "malformed", "a frame that is not LoRaWAN 1.0"),
            Reject::Unknown => (
                &s.unknown,
                "unknown",
                "a frame of a device not in config (and not forwarded)",
            ),
            Reject::BadMic => (&s.bad_mic, "mic", "a frame whose MIC matches no key"),
            Reject::Replay => (
                &s.replays,
                "replay",
                "a frame with an old counter (replay or late copy)",
            ),
            Reject::NonceReuse => (&s.nonce_reuse, "nonce", "a Join Request reusing a DevNonce"),
            Reject::NotUplink => return,
        };
        LorawanStats::bump(counter);
        let (adapter, gw) = (self.adapter.clone(), eui_hex(best.gateway));
        let head = network::to_hex(&phy[..phy.len().min(12)]);
        self.complaints.note(&adapter, kind, || {
            format!("dropped {what}, heard by gateway {gw} (starts {head})")
        });
    }

    fn route(&mut self, d: Downlink, out: &mut Effects) {
        let Some(gw) = self.gateways.get(&d.gateway).copied() else {
            LorawanStats::bump(&self.stats().downlink_errors);
            let why = format!(
                "gateway {} has not sent PULL_DATA, so it has no downlink route",
                eui_hex(d.gateway)
            );
            tracing::warn!(adapter = %self.adapter, device = %d.device, "{why}");
            if let Some(c) = d.command {
                c.reply(Err(CommandError::Device(why)));
            }
            return;
        };
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        out.downlinks
            .push((gw.addr, semtech::pull_resp(gw.version, token, &d.txpk)));
        LorawanStats::bump(&self.stats().downlinks);
        let f = InFlight {
            command: d.command,
            device: d.device,
            sent: Instant::now(),
        };
        if gw.version >= 2 {
            self.in_flight.insert((d.gateway, token), f);
        } else {
            self.finish(f, None);
        }
    }
}

/// The LoRaWAN adapter built from a `type = "lorawan"` section.
#[derive(Debug)]
pub struct Lorawan {
    cfg: LorawanConfig,
    stats: Arc<LorawanStats>,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

impl Lorawan {
    /// An adapter for a validated config.
    pub fn new(cfg: LorawanConfig) -> Lorawan {
        Lorawan {
            cfg,
            stats: Arc::default(),
            bound: None,
        }
    }

    /// The adapter's counters, shared.
    pub fn stats(&self) -> Arc<LorawanStats> {
        Arc::clone(&self.stats)
    }

    /// Tells the receiver the address the socket bound (for `bind = "127.0.0.1:0"`).
    pub fn on_bound(&mut self) -> tokio::sync::oneshot::Receiver<SocketAddr> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.bound = Some(tx);
        rx
    }
}

impl Adapter for Lorawan {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(run(*self, ctx))
    }
}

/// Stores `entries`, retrying with backoff while the store fails (a busy or full disk): the
/// readings and downlinks of the batch wait meanwhile, and are not lost. Gives up only when
/// the adapter is told to stop.
async fn save(ctx: &AdapterContext, entries: Vec<(String, Vec<u8>)>) -> Result<(), AdapterError> {
    if entries.is_empty() {
        return Ok(());
    }
    let entries = Arc::new(entries);
    let mut backoff = fieldgate_adapter::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let state = Arc::clone(&ctx.state);
        let scope = ctx.id.to_string();
        let e = Arc::clone(&entries);
        let r = tokio::task::spawn_blocking(move || state.save(&scope, &e))
            .await
            .map_err(|e| AdapterError::Other(e.to_string()))?;
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(adapter = %ctx.id, error = %e, retry_in = ?delay, "cannot store LoRaWAN session state; holding the batch");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.fired(), if !shutdown.is_fired() => {}
                }
                if shutdown.is_fired() {
                    return Err(AdapterError::Other(format!(
                        "state not stored at shutdown: {e}"
                    )));
                }
            }
        }
    }
}

async fn run(mut me: Lorawan, mut ctx: AdapterContext) -> Result<(), AdapterError> {
    let socket = UdpSocket::bind(me.cfg.bind).await.map_err(|e| {
        AdapterError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot bind UDP {}: {e}", me.cfg.bind),
        ))
    })?;
    let local = socket.local_addr()?;
    let state = Arc::clone(&ctx.state);
    let scope = ctx.id.to_string();
    let stored = tokio::task::spawn_blocking(move || state.load(&scope))
        .await
        .map_err(|e| AdapterError::Other(e.to_string()))?
        .map_err(|e| AdapterError::Other(e.to_string()))?;
    let mut server = Server::new(ctx.id.clone(), &me.cfg, Arc::clone(&me.stats));
    server.network().restore(&stored);
    tracing::info!(adapter = %ctx.id, bind = %local, devices = me.cfg.devices.len(), restored = stored.len(), "LoRaWAN packet-forwarder server listening");
    if let Some(tx) = me.bound.take() {
        let _ = tx.send(local);
    }
    let mut buf = vec![0u8; 65_536];
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let mut fx = Effects::default();
        // Wake when the next frame leaves the window, and at least every second for TX_ACK
        // timeouts and expired commands.
        let second = tokio::time::Instant::now() + Duration::from_secs(1);
        let wake = server
            .next_deadline()
            .map_or(second, |d| tokio::time::Instant::from_std(d).min(second));
        tokio::select! {
            () = shutdown.fired() => {
                // Frames still in the window are handled, stored and queued before stopping,
                // and their downlinks sent. Commands still waiting for a TX_ACK are dropped
                // unanswered, which tells their senders the outcome is unknown.
                server.flush(Instant::now(), true, &mut fx);
                save(&ctx, server.network().take_dirty()).await?;
                for (to, d) in &fx.downlinks {
                    let _ = socket.send_to(d, to).await;
                }
                let _ = ctx.readings.send_all(fx.readings).await;
                return Ok(());
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    server.datagram(from, &buf[..n], Instant::now(), SystemTime::now(), &mut fx);
                    // More datagrams that are already waiting go in the same batch.
                    for _ in 0..256 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => server.datagram(from, &buf[..n], Instant::now(), SystemTime::now(), &mut fx),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => {
                    // ICMP port-unreachable from a gateway that went away shows up here on
                    // Linux; nothing is wrong with the socket.
                    tracing::debug!(adapter = %ctx.id, error = %e, "UDP receive error");
                }
            },
            () = tokio::time::sleep_until(wake) => {}
            Some(cmd) = ctx.commands.recv() => server.network().enqueue(cmd),
        }
        for (to, d) in &fx.replies {
            let _ = socket.send_to(d, to).await;
        }
        server.flush(Instant::now(), false, &mut fx);
        // The counters and sessions behind these readings and downlinks are stored first.
        save(&ctx, server.network().take_dirty()).await?;
        for (to, d) in &fx.downlinks {
            if let Err(e) = socket.send_to(d, to).await {
                tracing::warn!(adapter = %ctx.id, gateway = %to, error = %e, "cannot send a downlink");
            }
        }
        ctx.readings.send_all(fx.readings).await?;
    }
}
