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

use std::collections::{HashSet, VecDeque};
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

/// The settlement of a batch handed to an uplink: resolves once the far side has durably every
/// reading of the batch not listed in [`Delivery::rejected`], or with the reason it did not.
pub type Pending = BoxFuture<'static, Result<Delivery, SendError>>;

/// A [`Pending`] that is already settled.
pub fn settled(result: Result<Delivery, SendError>) -> Pending {
    Box::pin(std::future::ready(result))
}

/// A northbound destination.
pub trait Uplink: Send + 'static {
    /// Hands `batch` (oldest first) to the far side and returns once the uplink has taken it
    /// (written and fsynced for a file; published for MQTT). The returned [`Pending`] settles
    /// when the far side acknowledged it. An `Err` here means the batch was not taken at all.
    fn send<'a>(&'a mut self, batch: &'a [Queued]) -> BoxFuture<'a, Result<Pending, SendError>>;

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

/// A batch handed to the uplink and not settled yet.
struct InFlight {
    /// The highest sequence id the batch covers (including readings filtered out).
    last: u64,
    /// The sequence ids it carries.
    seqs: Vec<u64>,
    delivery: Pending,
}

/// Drains the queue into `uplink` until `shutdown` fires, keeping up to `uplink.window()`
/// batches in flight and acknowledging them in order. After `shutdown` no new batch is sent;
/// the ones in flight are settled first, so a delivered batch is always acknowledged.
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
    uplink.set_queue_id(queue.instance());
    tracing::info!(uplink = %id, from_seq = cursor + 1, "forwarder started");
    let window = uplink.window().max(1);
    let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(window);
    // Where the next batch is peeked from: ahead of `cursor` while batches are in flight.
    let mut next = cursor;
    loop {
        // Fill the window. `seen` is the last committed id before the peek: an empty peek
        // means everything up to it is sent or gone (expired rows leave no trace), so the
        // forwarder then sleeps until something newer than `seen` is committed.
        let mut seen = next;
        while inflight.len() < window && !shutdown.is_fired() {
            seen = seen.max(*committed.borrow_and_update());
            let items = match queue.peek(next, opts.batch_size).await {
                Ok(items) => items,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(uplink = %id, error = %e, retry_in = ?delay, "cannot read the queue");
                    if inflight.is_empty() {
                        sleep_or_shutdown(delay, &mut shutdown).await;
                    }
                    break;
                }
            };
            let Some(last) = items.last().map(|q| q.seq) else {
                break;
            };
            next = last;
            let batch: Vec<Queued> = match &opts.adapters {
                None => items,
                Some(wanted) => items
                    .into_iter()
                    .filter(|q| wanted.contains(q.reading.source.as_str()))
                    .collect(),
            };
            let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
            if batch.is_empty() {
                inflight.push_back(InFlight {
                    last,
                    seqs,
                    delivery: settled(Ok(Delivery::all())),
                });
                continue;
            }
            match uplink.send(&batch).await {
                Ok(delivery) => inflight.push_back(InFlight {
                    last,
                    seqs,
                    delivery,
                }),
                Err(e) => {
                    inflight.push_back(InFlight {
                        last,
                        seqs,
                        delivery: settled(Err(e)),
                    });
                    break;
                }
            }
        }
        let Some(front) = inflight.pop_front() else {
            if shutdown.is_fired() {
                break;
            }
            // Nothing in flight and nothing queued: sleep until a commit or shutdown.
            tokio::select! {
                () = shutdown.fired() => break,
                changed = committed.wait_for(|&last| last > seen.max(next)) => {
                    if changed.is_err() { break; }
                }
            }
            continue;
        };
        let settled_ok = match front.delivery.await {
            Ok(delivery) => {
                let stored = delivery.rejected.is_empty()
                    || dead_letter_some(&queue, id, &delivery.rejected).await;
                let delivered = (front.seqs.len() - delivery.rejected.len()) as u64;
                match stored {
                    false => false,
                    true => match queue.ack(id, front.last, delivered).await {
                        Ok(_) => {
                            if backoff.attempts() > 0 {
                                tracing::info!(uplink = %id, after_failures = backoff.attempts(), "uplink recovered");
                            }
                            backoff.reset();
                            tracing::debug!(uplink = %id, readings = delivered, through_seq = front.last, "delivered");
                            cursor = front.last;
                            true
                        }
                        Err(e) => {
                            // Not acknowledged: the batch will be sent again (at-least-once).
                            tracing::error!(uplink = %id, error = %e, "delivered but could not record it; it will be sent again");
                            false
                        }
                    },
                }
            }
            Err(SendError::Retry(why)) => {
                tracing::warn!(uplink = %id, error = %why, attempt = backoff.attempts() + 1, "delivery failed; will retry");
                false
            }
            Err(SendError::Reject(why)) => {
                tracing::error!(uplink = %id, error = %why, readings = front.seqs.len(), first_seq = front.seqs.first(), "uplink rejected a batch; moved to dead letters");
                match queue.dead_letter(id, front.seqs.clone(), why).await {
                    Ok(()) => match queue.ack(id, front.last, 0).await {
                        Ok(_) => {
                            cursor = front.last;
                            true
                        }
                        Err(e) => {
                            tracing::error!(uplink = %id, error = %e, "could not move past a rejected batch");
                            false
                        }
                    },
                    Err(e) => {
                        tracing::error!(uplink = %id, error = %e, "could not store dead letters; will retry the batch");
                        false
                    }
                }
            }
        };
        if !settled_ok {
            // Everything after the last acknowledged batch is sent again, after a backoff.
            inflight.clear();
            next = cursor;
            let delay = backoff.next_delay();
            tracing::debug!(uplink = %id, retry_in = ?delay, from_seq = cursor + 1, "rewinding");
            if shutdown.is_fired() {
                break;
            }
            sleep_or_shutdown(delay, &mut shutdown).await;
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
