//! Northbound delivery: the [`Uplink`] trait, the uplinks, and the [`forwarder`] loop.
//!
//! One forwarder per configured uplink drains the queue from that uplink's watermark:
//! peek a batch → [`Uplink::send`] → acknowledge in the queue. A send either succeeds (the far
//! side has the batch durably: an fsync, a PUBACK, an HTTP 2xx), fails with
//! [`SendError::Retry`] (transient: the same batch is sent again after a jittered, capped
//! exponential backoff) or with [`SendError::Reject`] (the batch can never be accepted: its
//! readings go to the dead-letter table, counted and logged, and the forwarder moves on).
//!
//! *Architecture invariant:* a reading is acknowledged for an uplink only after `send`
//! returned `Ok` for a batch holding it. Everything else, including a crash mid-send, leads
//! to the batch being sent again: delivery is at-least-once, and the sequence ids let the far
//! side de-duplicate.

mod console;
mod file;
mod filter;
mod forwarder;
pub mod https;
pub mod mqtt;
pub(crate) mod tls;

pub use filter::{glob, Filter};
pub use forwarder::{forwarder, Drain, ForwarderOptions};
pub(crate) use forwarder::{sleep_or_shutdown, sleep_until_opt};

use fieldgate_adapter::BoxFuture;

pub use console::ConsoleUplink;
pub use file::FileUplink;

use crate::config::{Config, UplinkConfig, UplinkSection};
use crate::queue::Queued;

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Transient (connection down, timeout, disk busy): send the same batch again later.
    #[error("{0} (will retry)")]
    Retry(String),
    /// Transient, and the far side said when to come back (HTTP `Retry-After`): send the
    /// batch again no sooner than this.
    #[error("{0} (will retry in {secs}s)", secs = .1.as_secs())]
    RetryAfter(String, std::time::Duration),
    /// Permanent for this batch (the far side refuses it): dead-letter it and move on.
    #[error("{0} (rejected)")]
    Reject(String),
}

/// What a successful [`Uplink::send`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Readings of the batch the uplink refused for good, by sequence id, with the reason
    /// (a reading too large for the broker, say). They go to the dead-letter table; every
    /// other reading of the batch was delivered.
    pub rejected: Vec<(u64, String)>,
    /// Bytes sent for the batch (message bodies), for `backlog_rate`; 0 if not known.
    pub bytes: u64,
}

impl Delivery {
    /// Everything was delivered.
    pub fn all() -> Delivery {
        Delivery::default()
    }
}

/// The settlement of a batch handed to an uplink: resolves once the far side has durably every
/// reading of the batch not listed in [`Delivery::rejected`], or with the reason it did not.
pub type Pending = BoxFuture<'static, Result<Delivery, SendError>>;

/// True if the authority of `url` (after `scheme://`, up to the first `/`, `?` or `#`)
/// holds an `@`: a user name, maybe with a password. The uplinks refuse such urls without
/// quoting them, since they print their url in errors and logs.
pub(crate) fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

/// A [`Pending`] that is already settled.
pub fn settled(result: Result<Delivery, SendError>) -> Pending {
    Box::pin(std::future::ready(result))
}

/// A northbound destination.
pub trait Uplink: Send + 'static {
    /// Hands `batch` (oldest first) to the far side and returns once the uplink has taken it
    /// (written and fsynced for a file; published for MQTT). The returned [`Pending`] settles
    /// when the far side acknowledged it. An `Err` here means the batch was not taken at all.
    /// `historical` is true for backlog sent behind live readings (`drain = "live_first"`);
    /// uplinks that can say so in their payload do.
    fn send<'a>(
        &'a mut self,
        batch: &'a [Queued],
        historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>>;

    /// How many batches may be in flight (sent, not yet settled) at once. With more than one,
    /// the link stays busy while acknowledgements travel back; on a failure every batch after
    /// the last settled one is sent again, so duplicates are bounded by this window.
    fn window(&self) -> usize {
        1
    }

    /// Tells the uplink the id of the queue database it drains, for its payloads (called
    /// by the forwarder before the first send).
    fn set_queue_id(&mut self, queue_id: &str) {
        let _ = queue_id;
    }

    /// The state of the uplink's connection, for uplinks that hold one (the status page shows
    /// it); `None` for uplinks that connect per send.
    fn link(&self) -> Option<tokio::sync::watch::Receiver<LinkState>> {
        None
    }
}

/// The state of an uplink's connection, for uplinks that hold one (MQTT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; the last error, if any.
    Down(Option<String>),
    /// Connected (for MQTT: CONNACK received).
    Up,
}

/// True if the uplink a config section describes takes commands from the cloud.
pub fn takes_commands(section: &UplinkSection) -> bool {
    match &section.kind {
        UplinkConfig::Mqtt(m) => m.commands.is_some(),
        UplinkConfig::Https(h) => h.commands.is_some(),
        UplinkConfig::File(_) | UplinkConfig::Console(_) => false,
    }
}

/// Builds the uplink a config section describes. Must run inside a tokio runtime (the MQTT
/// uplink starts connecting at once).
pub fn build(
    config: &Config,
    section: &UplinkSection,
    inbox: Option<&crate::command::Inbox>,
) -> Box<dyn Uplink> {
    match &section.kind {
        UplinkConfig::File(f) => Box::new(FileUplink::new(
            config.resolve(&f.path),
            f.max_file_size.0,
            f.max_files,
            config.gateway.id.clone(),
        )),
        UplinkConfig::Console(c) => {
            Box::new(ConsoleUplink::new(c.format, config.gateway.id.clone()))
        }
        UplinkConfig::Https(h) => Box::new(https::HttpsUplink::new_with_commands(
            (**h).clone(),
            config.gateway.id.clone(),
            inbox.map(|i| (section.id.clone(), i.clone())),
        )),
        UplinkConfig::Mqtt(m) => Box::new(mqtt::MqttUplink::start_with_commands(
            (**m).clone(),
            config.gateway.id.clone(),
            inbox.map(|i| (section.id.clone(), i.clone())),
        )),
    }
}
