//! A small embedded MQTT 3.1.1 broker, for `fieldgate demo` and the tests.
//!
//! It speaks real MQTT over TCP (packets encoded and decoded by rumqttc's `mqttbytes`), so the
//! MQTT uplink talks to it exactly as to Mosquitto: CONNECT/CONNACK with optional
//! credentials, PUBLISH at QoS 0 and 1 with PUBACK, SUBSCRIBE with `+` and `#` wildcards,
//! retained messages, last wills, keep-alive pings. Subscribers receive at QoS 0.
//!
//! It is **not** a production broker: no persistence, no QoS 2, no ACLs, and unbounded
//! per-subscriber queues. Sites point the MQTT uplink at their own broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use fieldgate_adapter::{Shutdown, ShutdownTrigger};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How the broker behaves.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Username and password every client must present; `None` accepts anyone.
    pub credentials: Option<(String, String)>,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: usize,
    /// Keep every PUBLISH received, for [`Broker::recorded`] (tests).
    pub record: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            credentials: None,
            max_packet_size: 1 << 20,
            record: false,
        }
    }
}

/// A running embedded broker. Dropping it stops it.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    stop: ShutdownTrigger,
    task: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

/// Counters of a broker.
#[derive(Debug, Default)]
pub struct Stats {
    /// PUBLISH packets received from clients.
    pub published: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Every PUBLISH received (topic, payload), when recording.
    pub recorded: Mutex<Vec<(String, Bytes)>>,
}

type Outbox = mpsc::UnboundedSender<Bytes>;

#[derive(Debug, Default)]
struct Router {
    next_id: u64,
    subscriptions: Vec<(u64, String, Outbox)>,
    retained: HashMap<String, Publish>,
}

impl Broker {
    /// Starts a broker on `bind` (use port 0 for a free port).
    pub async fn start(bind: SocketAddr, opts: BrokerOptions) -> std::io::Result<Broker> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = ShutdownTrigger::new();
        let stats = Arc::new(Stats::default());
        let router = Arc::new(Mutex::new(Router::default()));
        let task = tokio::spawn(accept_loop(
            listener,
            opts,
            router,
            Arc::clone(&stats),
            shutdown,
        ));
        Ok(Broker {
            addr,
            stop,
            task: Some(task),
            stats,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Its counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The PUBLISH packets received so far (with `record = true`).
    pub fn recorded(&self) -> Vec<(String, Bytes)> {
        self.stats
            .recorded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Stops listening and drops every connection at once (as a crash would: clients see
    /// their connection reset; wills of connected clients are not published).
    pub async fn stop(mut self) {
        self.stop.fire();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

async fn accept_loop(
    listener: TcpListener,
    opts: BrokerOptions,
    router: Arc<Mutex<Router>>,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.fired() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, opts.clone(), Arc::clone(&router), Arc::clone(&stats), shutdown.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "broker accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

fn encode(packet: &Packet, max: usize) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, max).ok()?;
    Some(buf.freeze())
}

/// MQTT topic filter matching with `+` (one level) and `#` (the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn route(router: &Mutex<Router>, publish: &Publish, max: usize) {
    let Ok(mut r) = router.lock() else { return };
    if publish.retain {
        if publish.payload.is_empty() {
            r.retained.remove(&publish.topic);
        } else {
            r.retained.insert(publish.topic.clone(), publish.clone());
        }
    }
    let mut out = Publish::new(
        publish.topic.clone(),
        QoS::AtMostOnce,
        publish.payload.to_vec(),
    );
    out.retain = false;
    let Some(bytes) = encode(&Packet::Publish(out), max) else {
        return;
    };
    r.subscriptions.retain(|(_, filter, outbox)| {
        if topic_matches(filter, &publish.topic) {
            outbox.send(bytes.clone()).is_ok()
        } else {
            !outbox.is_closed()
        }
    });
}

async fn connection(
    stream: TcpStream,
    opts: BrokerOptions,
    router: Arc<Mutex<Router>>,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let max = opts.max_packet_size;
    let mut buf = BytesMut::with_capacity(8192);
    let mut will = None;
    let mut conn_id = None;
    let mut clean_exit = false;
    'conn: loop {
        // Decode every complete packet in the buffer, then read more.
        loop {
            let packet = match Packet::read(&mut buf, max) {
                Ok(p) => p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => {
                    tracing::debug!(error = ?e, "broker: bad packet; closing");
                    break 'conn;
                }
            };
            match packet {
                Packet::Connect(c) => {
                    let ok = match (&opts.credentials, &c.login) {
                        (None, _) => true,
                        (Some((u, p)), Some(l)) => &l.username == u && &l.password == p,
                        (Some(_), None) => false,
                    };
                    let code = if ok {
                        ConnectReturnCode::Success
                    } else {
                        ConnectReturnCode::BadUserNamePassword
                    };
                    if let Some(b) = encode(&Packet::ConnAck(ConnAck::new(code, false)), max) {
                        let _ = outbox.send(b);
                    }
                    if !ok {
                        clean_exit = true;
                        break 'conn;
                    }
                    will = c.last_will;
                    if let Ok(mut r) = router.lock() {
                        r.next_id += 1;
                        conn_id = Some(r.next_id);
                    }
                }
                Packet::Publish(p) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    if opts.record {
                        if let Ok(mut r) = stats.recorded.lock() {
                            r.push((p.topic.clone(), p.payload.clone()));
                        }
                    }
                    route(&router, &p, max);
                    if p.qos != QoS::AtMostOnce {
                        if let Some(b) = encode(&Packet::PubAck(PubAck::new(p.pkid)), max) {
                            let _ = outbox.send(b);
                        }
                    }
                }
                Packet::Subscribe(s) => {
                    let Some(id) = conn_id else { break 'conn };
                    let codes = s
                        .filters
                        .iter()
                        .map(|_| SubscribeReasonCode::Success(QoS::AtMostOnce))
                        .collect();
                    if let Some(b) = encode(&Packet::SubAck(SubAck::new(s.pkid, codes)), max) {
                        let _ = outbox.send(b);
                    }
                    if let Ok(mut r) = router.lock() {
                        for f in &s.filters {
                            r.subscriptions.push((id, f.path.clone(), outbox.clone()));
                            for retained in r
                                .retained
                                .values()
                                .filter(|p| topic_matches(&f.path, &p.topic))
                            {
                                let mut out = Publish::new(
                                    retained.topic.clone(),
                                    QoS::AtMostOnce,
                                    retained.payload.to_vec(),
                                );
                                out.retain = true;
                                if let Some(b) = encode(&Packet::Publish(out), max) {
                                    let _ = outbox.send(b);
                                }
                            }
                        }
                    }
                }
                Packet::PingReq => {
                    if let Some(b) = encode(&Packet::PingResp, max) {
                        let _ = outbox.send(b);
                    }
                }
                Packet::Disconnect => {
                    clean_exit = true;
                    break 'conn;
                }
                // QoS 2 and unsubscribe are not needed by fieldgate; ignore them.
                _ => {}
            }
        }
        tokio::select! {
            () = shutdown.fired() => { clean_exit = true; break 'conn; }
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => {}
            },
        }
    }
    if let Some(id) = conn_id {
        if let Ok(mut r) = router.lock() {
            r.subscriptions.retain(|(sub, _, _)| *sub != id);
        }
    }
    if !clean_exit {
        if let Some(w) = will {
            let mut p = Publish::new(w.topic, w.qos, w.message.to_vec());
            p.retain = w.retain;
            route(&router, &p, max);
        }
    }
    drop(outbox);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_like_mqtt() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/x/c", true),
            ("a/+/c", "a/x/y/c", false),
            ("a/#", "a/x/y/c", true),
            ("#", "anything/at/all", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("fieldgate/+/status", "fieldgate/gw/status", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
