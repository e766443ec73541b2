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
pub mod mqtt;

use std::collections::HashSet;
use std::time::Duration;

use fieldgate_adapter::{BoxFuture, Shutdown};

pub use console::ConsoleUplink;
pub use file::FileUplink;

use crate::backoff::Backoff;
use crate::config::{Config, UplinkConfig, UplinkSection};
use crate::queue::{QueueHandle, Queued};

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Transient (connection down, timeout, disk busy): send the same batch again later.
    #[error("{0} (will retry)")]
    Retry(String),
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
}

impl Delivery {
    /// Everything was delivered.
    pub fn all() -> Delivery {
        Delivery::default()
    }
}

/// A northbound destination.
pub trait Uplink: Send + 'static {
    /// Delivers `batch` (oldest first). Returns `Ok` only once the far side has durably every
    /// reading not listed in [`Delivery::rejected`].
    fn send<'a>(&'a mut self, batch: &'a [Queued]) -> BoxFuture<'a, Result<Delivery, SendError>>;
}

/// Builds the uplink a config section describes. Must run inside a tokio runtime (the MQTT
/// uplink starts connecting at once).
pub fn build(config: &Config, section: &UplinkSection) -> Box<dyn Uplink> {
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
        UplinkConfig::Mqtt(m) => Box::new(mqtt::MqttUplink::start(
            (**m).clone(),
            config.gateway.id.clone(),
        )),
    }
}

/// How a forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// The uplink's id (its watermark's name in the queue).
    pub id: String,
    /// Only readings from these adapters; `None` for all.
    pub adapters: Option<HashSet<String>>,
    /// Most readings per send.
    pub batch_size: usize,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl ForwarderOptions {
    /// The options a config section describes.
    pub fn from_section(s: &UplinkSection) -> Self {
        ForwarderOptions {
            id: s.id.clone(),
            adapters: s.adapters.as_ref().map(|a| a.iter().cloned().collect()),
            batch_size: s.batch_size,
            retry_min: s.retry_min,
            retry_max: s.retry_max,
        }
    }
}

/// Drains the queue into `uplink` until `shutdown` fires. A send in progress when it fires
/// is finished (or fails) first, so a delivered batch is always acknowledged.
pub async fn forwarder(
    queue: QueueHandle,
    mut uplink: Box<dyn Uplink>,
    opts: ForwarderOptions,
    mut shutdown: Shutdown,
) {
    let id = opts.id.as_str();
    let mut committed = queue.subscribe();
    let mut backoff = Backoff::new(opts.retry_min, opts.retry_max);
    let mut cursor = match queue.watermark(id).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            tracing::error!(uplink = %id, "uplink is not registered with the queue; not forwarding");
            return;
        }
        Err(e) => {
            tracing::error!(uplink = %id, error = %e, "cannot read the uplink's queue position; not forwarding");
            return;
        }
    };
    tracing::info!(uplink = %id, from_seq = cursor + 1, "forwarder started");
    let mut pending: Option<(Vec<Queued>, u64)> = None;
    while !shutdown.is_fired() {
        let (batch, last) = match pending.take() {
            Some(p) => p,
            None => match queue.peek(cursor, opts.batch_size).await {
                Ok(items) if items.is_empty() => {
                    tokio::select! {
                        () = shutdown.fired() => break,
                        changed = committed.wait_for(|&last| last > cursor) => {
                            if changed.is_err() { break; }
                        }
                    }
                    continue;
                }
                Ok(items) => {
                    let last = items.last().map_or(cursor, |q| q.seq);
                    let batch: Vec<Queued> = match &opts.adapters {
                        None => items,
                        Some(wanted) => items
                            .into_iter()
                            .filter(|q| wanted.contains(q.reading.source.as_str()))
                            .collect(),
                    };
                    (batch, last)
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(uplink = %id, error = %e, retry_in = ?delay, "cannot read the queue");
                    sleep_or_shutdown(delay, &mut shutdown).await;
                    continue;
                }
            },
        };
        let result = if batch.is_empty() {
            Ok(Delivery::all())
        } else {
            uplink.send(&batch).await
        };
        match result {
            Ok(delivery) => {
                if !delivery.rejected.is_empty()
                    && !dead_letter_some(&queue, id, &delivery.rejected).await
                {
                    pending = Some((batch, last));
                    sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
                    continue;
                }
                let delivered = (batch.len() - delivery.rejected.len()) as u64;
                if let Err(e) = queue.ack(id, last, delivered).await {
                    // Not acknowledged: the batch will be sent again (at-least-once).
                    tracing::error!(uplink = %id, error = %e, "delivered but could not record it; it will be sent again");
                    sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
                    continue;
                }
                if backoff.attempts() > 0 {
                    tracing::info!(uplink = %id, after_failures = backoff.attempts(), "uplink recovered");
                }
                backoff.reset();
                tracing::debug!(uplink = %id, readings = batch.len(), through_seq = last, "delivered");
                cursor = last;
            }
            Err(SendError::Retry(why)) => {
                let delay = backoff.next_delay();
                tracing::warn!(uplink = %id, error = %why, attempt = backoff.attempts(), retry_in = ?delay, "delivery failed; will retry");
                pending = Some((batch, last));
                sleep_or_shutdown(delay, &mut shutdown).await;
            }
            Err(SendError::Reject(why)) => {
                let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
                tracing::error!(uplink = %id, error = %why, readings = seqs.len(), first_seq = seqs.first(), "uplink rejected a batch; moved to dead letters");
                match queue.dead_letter(id, seqs, why).await {
                    Ok(()) => {
                        if let Err(e) = queue.ack(id, last, 0).await {
                            tracing::error!(uplink = %id, error = %e, "could not move past a rejected batch");
                        } else {
                            cursor = last;
                        }
                    }
                    Err(e) => {
                        tracing::error!(uplink = %id, error = %e, "could not store dead letters; will retry the batch");
                        sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
                    }
                }
            }
        }
    }
    tracing::info!(uplink = %id, through_seq = cursor, "forwarder stopped");
}

/// Dead-letters the readings an uplink refused one by one; false if that failed.
async fn dead_letter_some(queue: &QueueHandle, id: &str, rejected: &[(u64, String)]) -> bool {
    for (seq, why) in rejected {
        tracing::error!(uplink = %id, seq, error = %why, "uplink refused a reading; moved to dead letters");
        if let Err(e) = queue.dead_letter(id, vec![*seq], why.clone()).await {
            tracing::error!(uplink = %id, error = %e, "could not store a dead letter; will retry the batch");
            return false;
        }
    }
    true
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut Shutdown) {
    tokio::select! {
        () = shutdown.fired() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
