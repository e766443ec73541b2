//! `type = "mqtt"`: at-least-once delivery to any MQTT broker.
//!
//! [`MqttUplink`] owns a connection task that runs rumqttc's event loop. Every publish is
//! paired with a tracker: trackers wait in a FIFO in the order their requests went into
//! rumqttc's channel, move to an in-flight map keyed by packet id when rumqttc reports the
//! packet written (`Outgoing::Publish(pkid)`), and complete when the matching PUBACK arrives
//! (at QoS 0: as soon as the packet is written). A batch is acknowledged in the queue only when
//! every message that carries it completed.
//!
//! *Architecture invariant:* the queue is the source of truth. On any connection loss every
//! pending tracker fails, the batch is sent again after a backoff, and a brand-new client and
//! event loop are made for the next connection, so no request of a dead session can ever be
//! matched with a tracker of a live one. (rumqttc reuses packet ids modulo the in-flight
//! window and drops in-flight messages on a clean reconnect; neither can lose a reading here.)

mod azure;
mod config;
mod message;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{BoxFuture, Shutdown, ShutdownTrigger};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, LastWill, Packet};
use rumqttc::mqttbytes::QoS;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, TlsConfiguration,
    Transport,
};
use tokio::sync::{oneshot, watch};

pub use config::{
    parse_url, BodyFormat, MessageMode, MqttSettings, MqttUplinkConfig, Preset, ValueFormat,
};
pub use message::{build as build_messages, topic_for, Message};

use super::{Delivery, Pending, SendError, Uplink};
use crate::backoff::Backoff;
use crate::command::Inbox;
use crate::uplink::sleep_or_shutdown;
use message::RateLimiter;

type Tracker = oneshot::Sender<Result<(), String>>;

#[derive(Debug, Default)]
struct Shared {
    client: Option<AsyncClient>,
    next_id: u64,
    /// Requests handed to rumqttc, not yet written, in order.
    pending: VecDeque<(u64, Tracker)>,
    /// Written QoS 1 publishes waiting for their PUBACK.
    inflight: HashMap<u16, Tracker>,
    /// PUBACKs received since the uplink started.
    acks: u64,
}

impl Shared {
    fn fail_all(&mut self, why: &str) {
        for (_, t) in self.pending.drain(..) {
            let _ = t.send(Err(why.to_string()));
        }
        for (_, t) in self.inflight.drain() {
            let _ = t.send(Err(why.to_string()));
        }
    }
}

pub use crate::uplink::LinkState;

/// The MQTT uplink.
#[derive(Debug)]
pub struct MqttUplink {
    settings: Arc<MqttSettings>,
    gateway: String,
    queue_id: String,
    shared: Arc<Mutex<Shared>>,
    state: watch::Receiver<LinkState>,
    limiter: Option<RateLimiter>,
    _stop: ShutdownTrigger,
}

impl MqttUplink {
    /// Starts connecting in the background (must be called inside a tokio runtime).
    pub fn start(settings: MqttSettings, gateway: String) -> Self {
        Self::start_with_commands(settings, gateway, None)
    }

    /// [`MqttUplink::start`], taking commands on `command_topic` into `inbox` (with the
    /// uplink's id, for the audit) and publishing their responses on `response_topic`.
    pub fn start_with_commands(
        settings: MqttSettings,
        gateway: String,
        inbox: Option<(String, Inbox)>,
    ) -> Self {
        let settings = Arc::new(settings);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (state_tx, state) = watch::channel(LinkState::Down(None));
        let (stop, shutdown) = ShutdownTrigger::new();
        let commands = match (&settings.commands, inbox) {
            (Some((_, response_topic)), Some((origin, inbox))) => {
                let (tx, rx) = tokio::sync::mpsc::channel(crate::command::RESPONSE_CAPACITY);
                tokio::spawn(responder(
                    Arc::clone(&settings),
                    Arc::clone(&shared),
                    state.clone(),
                    rx,
                    response_topic.clone(),
                    shutdown.clone(),
                ));
                Some(CommandLink {
                    origin,
                    inbox,
                    responses: tx,
                })
            }
            _ => None,
        };
        tokio::spawn(connection(
            Arc::clone(&settings),
            Arc::clone(&shared),
            state_tx,
            shutdown,
            commands,
        ));
        MqttUplink {
            limiter: settings.max_publish_rate.map(RateLimiter::new),
            settings,
            gateway,
            queue_id: String::new(),
            shared,
            state,
            _stop: stop,
        }
    }

    /// Watches the connection state.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    async fn deliver(
        &mut self,
        batch: &[crate::queue::Queued],
        historical: bool,
    ) -> Result<Pending, SendError> {
        let s = Arc::clone(&self.settings);
        // Wait for a connection, but not forever: the forwarder must get to check shutdown.
        let up = tokio::time::timeout(
            s.connect_timeout,
            self.state.wait_for(|st| *st == LinkState::Up),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !up {
            let why = match &*self.state.borrow() {
                LinkState::Down(Some(e)) => e.clone(),
                _ => "no connection yet".into(),
            };
            return Err(SendError::Retry(format!(
                "not connected to {}: {why}",
                s.url
            )));
        }
        let origin = crate::payload::Origin {
            gateway: &self.gateway,
            queue_id: &self.queue_id,
        };
        let (messages, rejected) = message::build(&s, origin, batch, historical);
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        let qos = if s.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            if let Some(l) = self.limiter.as_mut() {
                l.acquire().await;
            }
            acks.push(
                publish(&self.shared, m.topic, qos, false, m.payload)
                    .await
                    .map_err(SendError::Retry)?,
            );
        }
        let deadline = tokio::time::Instant::now() + s.ack_timeout;
        Ok(Box::pin(async move {
            for ack in acks {
                match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(why))) => return Err(SendError::Retry(why)),
                    Ok(Err(_)) => {
                        return Err(SendError::Retry(
                            "connection closed before the broker acknowledged".into(),
                        ))
                    }
                    Err(_) => {
                        return Err(SendError::Retry(format!(
                            "no PUBACK within ack_timeout ({})",
                            fieldgate_adapter::duration::format(s.ack_timeout)
                        )))
                    }
                }
            }
            Ok(Delivery { rejected, bytes })
        }))
    }
}

/// Batches in flight at once: enough to keep the link busy while PUBACKs travel back (a
/// broker with Nagle's algorithm on holds small PUBACKs until it sees more data).
const WINDOW: usize = 4;

impl Uplink for MqttUplink {
    fn send<'a>(
        &'a mut self,
        batch: &'a [crate::queue::Queued],
        historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>> {
        Box::pin(self.deliver(batch, historical))
    }

    fn window(&self) -> usize {
        WINDOW
    }

    fn set_queue_id(&mut self, queue_id: &str) {
        self.queue_id = queue_id.to_string();
    }

    fn link(&self) -> Option<watch::Receiver<LinkState>> {
        Some(self.state.clone())
    }
}

/// Hands one publish to rumqttc and returns the receiver of its outcome.
async fn publish(
    shared: &Mutex<Shared>,
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
) -> Result<oneshot::Receiver<Result<(), String>>, String> {
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    loop {
        {
            let mut sh = shared
                .lock()
                .map_err(|_| "MQTT state poisoned".to_string())?;
            let client = sh
                .client
                .clone()
                .ok_or_else(|| "connection lost".to_string())?;
            sh.next_id += 1;
            let id = sh.next_id;
            // The tracker goes in and the request enters rumqttc's channel under one lock:
            // the connection task pops trackers in the order rumqttc writes requests, so two
            // publishers (the forwarder and the command responder) must not interleave
            // between the two steps. A full channel is waited out below, not with the lock.
            let Some(t) = tx.take() else {
                return Err("tracker lost".into());
            };
            sh.pending.push_back((id, t));
            match client.try_publish(topic.clone(), qos, retain, payload.clone()) {
                Ok(()) => return Ok(rx),
                Err(rumqttc::ClientError::TryRequest(_)) => {
                    tx = sh.pending.pop_back().map(|(_, t)| t);
                }
                Err(e) => {
                    sh.pending.pop_back();
                    return Err(format!("cannot publish: {e}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn options(s: &MqttSettings) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive);
    o.set_clean_session(s.clean_session || s.client_id.is_empty());
    o.set_max_packet_size(s.max_packet_size.max(64 * 1024), s.max_packet_size);
    o.set_inflight(s.inflight.max(1));
    o.set_request_channel_capacity(usize::from(s.inflight).max(10) * 2);
    let password = match &s.azure {
        Some(sas) => Some(
            azure::sas_token(
                &sas.resource_uri,
                sas.key.expose(),
                SystemTime::now(),
                sas.ttl,
            )
            .ok_or("cannot make an Azure SAS token from sas_key")?,
        ),
        None => s.password.as_ref().map(|p| p.expose().to_string()),
    };
    match (&s.username, password) {
        (Some(u), p) => {
            o.set_credentials(u.clone(), p.unwrap_or_default());
        }
        (None, Some(p)) => {
            o.set_credentials(String::new(), p);
        }
        (None, None) => {}
    }
    if let Some(topic) = &s.status_topic {
        o.set_last_will(LastWill::new(
            topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    if s.tls {
        let tls = super::tls::client_config(
            s.ca_file.as_deref(),
            s.client_auth.as_ref(),
            s.insecure_skip_verify,
        )?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}

/// A sentence for a connection error, with a hint where one helps.
fn describe(e: &ConnectionError, s: &MqttSettings) -> (String, bool) {
    // The bool says whether an operator must act (wrong credentials or certificates).
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            ("the broker refused: bad username or password".into(), true)
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            ("the broker refused: not authorized (wrong username or password, or a client certificate or ACL it does not accept)".into(), true)
        }
        ConnectionError::ConnectionRefused(code) => (format!("the broker refused the connection: {code:?}"), true),
        ConnectionError::Tls(t) => {
            let text = t.to_string();
            let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
                " (the broker's certificate is not signed by a trusted CA: check ca_file)"
            } else if text.contains("NotValidForName") {
                " (the broker's certificate does not name this host: check the url)"
            } else {
                ""
            };
            (format!("TLS: {text}{hint}"), true)
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            (format!("connection refused at {}:{}", s.host, s.port), false)
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData && io.to_string().contains("certificate") => {
            (format!("TLS: {io} (check ca_file, client_cert and the url's host)"), true)
        }
        other => (other.to_string(), false),
    }
}

async fn connect(el: &mut EventLoop, timeout: Duration) -> Result<(), Option<ConnectionError>> {
    let attempt = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(Some(e)),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(None))
}

/// Connects, runs, and reconnects with backoff until `shutdown` fires.
/// Where the commands an uplink receives go, and where their responses come back.
#[derive(Debug)]
struct CommandLink {
    origin: String,
    inbox: Inbox,
    responses: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// Publishes command responses in order, at least once: each waits for a connection and its
/// PUBACK, and is sent again if the connection drops first.
async fn responder(
    s: Arc<MqttSettings>,
    shared: Arc<Mutex<Shared>>,
    mut state: watch::Receiver<LinkState>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    topic: String,
    mut shutdown: Shutdown,
) {
    let mut next: Option<Vec<u8>> = None;
    loop {
        let body = match next.take() {
            Some(b) => b,
            None => tokio::select! {
                () = shutdown.fired() => return,
                b = rx.recv() => match b { Some(b) => b, None => return },
            },
        };
        tokio::select! {
            () = shutdown.fired() => return,
            up = state.wait_for(|st| *st == LinkState::Up) => if up.is_err() { return },
        }
        let sent = match publish(
            &shared,
            topic.clone(),
            QoS::AtLeastOnce,
            false,
            body.clone(),
        )
        .await
        {
            Ok(ack) => matches!(
                tokio::time::timeout(s.ack_timeout, ack).await,
                Ok(Ok(Ok(())))
            ),
            Err(_) => false,
        };
        if !sent {
            next = Some(body);
            if sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await {
                return;
            }
        }
    }
}

async fn connection(
    s: Arc<MqttSettings>,
    shared: Arc<Mutex<Shared>>,
    state: watch::Sender<LinkState>,
    mut shutdown: Shutdown,
    commands: Option<CommandLink>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        if shutdown.is_fired() {
            return;
        }
        let opts = match options(&s) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(url = %s.url, error = %e, "cannot set up the MQTT connection");
                state.send_replace(LinkState::Down(Some(e)));
                if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let cap = usize::from(s.inflight).max(10) * 2;
        let (client, mut el) = AsyncClient::new(opts, cap);
        let mut net = el.network_options();
        // Without TCP_NODELAY the last packet of a batch can wait for the broker's delayed
        // ACK (40 ms on Linux): one batch per 40 ms instead of a pipeline.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
        el.set_network_options(net);
        tokio::select! {
            () = shutdown.fired() => return,
            result = connect(&mut el, s.connect_timeout) => {
                if let Err(e) = result {
                    let (why, operator) = match &e {
                        Some(e) => describe(e, &s),
                        None => (format!("no CONNACK within connect_timeout ({})", fieldgate_adapter::duration::format(s.connect_timeout)), false),
                    };
                    let delay = backoff.next_delay();
                    if operator {
                        tracing::error!(url = %s.url, error = %why, retry_in = ?delay, "cannot connect to the MQTT broker");
                    } else {
                        tracing::warn!(url = %s.url, error = %why, retry_in = ?delay, "cannot connect to the MQTT broker");
                    }
                    state.send_replace(LinkState::Down(Some(why)));
                    if sleep_or_shutdown(delay, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            }
        }
        if s.insecure_skip_verify {
            tracing::warn!(url = %s.url, "connected WITHOUT verifying the broker's certificate (insecure_skip_verify = true)");
        }
        tracing::info!(url = %s.url, client_id = %s.client_id, "connected to the MQTT broker");
        if let Ok(mut sh) = shared.lock() {
            sh.client = Some(client.clone());
        }
        if let Some(topic) = &s.status_topic {
            // Birth message; its outcome does not matter (the will says "offline" anyway).
            let _ = publish(
                &shared,
                topic.clone(),
                QoS::AtLeastOnce,
                true,
                b"online".to_vec(),
            )
            .await;
        }
        if let (Some((topic, _)), Some(_)) = (&s.commands, &commands) {
            // Again at every connect: a clean session forgets subscriptions.
            if let Err(e) = client.subscribe(topic.clone(), QoS::AtLeastOnce).await {
                tracing::warn!(url = %s.url, topic = %topic, error = %e, "cannot subscribe to the command topic");
            } else {
                tracing::info!(topic = %topic, "taking commands");
            }
        }
        state.send_replace(LinkState::Up);
        let connected_at = tokio::time::Instant::now();
        let acks_before = shared.lock().map_or(0, |sh| sh.acks);
        let lost = run(
            &mut el,
            &shared,
            &s,
            &mut shutdown,
            &client,
            commands.as_ref(),
        )
        .await;
        if let Ok(mut sh) = shared.lock() {
            sh.client = None;
            sh.fail_all(lost.as_deref().unwrap_or("shutting down"));
        }
        drop(el);
        match lost {
            None => {
                state.send_replace(LinkState::Down(Some("stopped".into())));
                return;
            }
            Some(why) => {
                // A connection that stayed up a while, or that delivered (a PUBACK came),
                // earns a fresh backoff: a broker restarted every 30 s must not push the
                // wait towards a minute. One that accepts and drops at once keeps backing off.
                let delivered = shared.lock().is_ok_and(|sh| sh.acks > acks_before);
                if delivered || connected_at.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(url = %s.url, error = %why, retry_in = ?delay, "lost the MQTT connection; unacknowledged readings will be sent again");
                state.send_replace(LinkState::Down(Some(why)));
                if sleep_or_shutdown(delay, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Polls the event loop while connected. Returns the reason the connection ended, or `None`
/// on shutdown (after a clean goodbye).
async fn run(
    el: &mut EventLoop,
    shared: &Mutex<Shared>,
    s: &MqttSettings,
    shutdown: &mut Shutdown,
    client: &AsyncClient,
    commands: Option<&CommandLink>,
) -> Option<String> {
    loop {
        tokio::select! {
            () = shutdown.fired() => {
                if let Some(topic) = &s.status_topic {
                    let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, "offline");
                }
                let _ = client.try_disconnect();
                // Let the goodbye go out, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(ev) = el.poll().await {
                        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
                return None;
            }
            ev = el.poll() => match ev {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let Ok(mut sh) = shared.lock() else { return Some("MQTT state poisoned".into()) };
                    match sh.pending.pop_front() {
                        Some((_, t)) if s.qos == 0 || pkid == 0 => {
                            let _ = t.send(Ok(()));
                        }
                        Some((_, t)) => {
                            if let Some(old) = sh.inflight.insert(pkid, t) {
                                // rumqttc waits for the ack of a pkid before reusing it.
                                let _ = old.send(Err(format!("packet id {pkid} reused before its PUBACK")));
                            }
                        }
                        None => tracing::debug!(pkid, "publish written without a tracker"),
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Ok(mut sh) = shared.lock() {
                        sh.acks += 1;
                        if let Some(t) = sh.inflight.remove(&ack.pkid) {
                            let _ = t.send(Ok(()));
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let (Some(link), Some((topic, _))) = (commands, &s.commands) {
                        if p.topic == *topic && p.retain {
                            // A retained command would run again at every reconnect.
                            tracing::warn!(topic = %topic, "retained message on the command topic ignored; publish commands without the retain flag (and clear it on the broker)");
                        } else if p.topic == *topic {
                            let inbound = crate::command::Inbound {
                                payload: p.payload.to_vec(),
                                origin: link.origin.clone(),
                                responses: link.responses.clone(),
                            };
                            if link.inbox.try_send(inbound).is_err() {
                                tracing::warn!(topic = %topic, "command dropped: too many commands waiting");
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Some(describe(&e, s).0),
            }
        }
    }
}

#[cfg(test)]
mod tests;
