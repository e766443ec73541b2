//! The contract between the fieldgate core and its southbound adapters.
//!
//! Every adapter (Modbus, LoRaWAN, serial, the simulator) turns what it hears from the field
//! into [`Reading`]s: one normalized value of one point of one device, with a timestamp, an
//! optional unit and a [`Quality`]. It pushes them into the bounded [`ReadingSender`] it finds
//! in its [`AdapterContext`], watches the context's [`Shutdown`] signal, and answers the
//! [`Command`]s (register writes, downlinks, lines to send) that arrive on its
//! [`CommandReceiver`].
//!
//! An adapter that must remember something across restarts (LoRaWAN frame counters) keeps it
//! in the [`StateStore`] of its context, which the gateway backs with its SQLite file.
//!
//! *Architecture invariant:* this crate has no I/O dependencies. Adapters never see SQLite,
//! MQTT or HTTP; the core never sees a Modbus frame.

#![forbid(unsafe_code)]

pub mod backoff;
mod command;
pub mod complaints;
pub mod duration;
mod reading;
mod shutdown;
pub mod state;

use std::future::Future;
use std::pin::Pin;

pub use command::{Command, CommandAction, CommandError, CommandReceiver, CommandSender, Outcome};
pub use reading::{AdapterId, DeviceId, Name, PointId, Quality, Reading, Unit, Value};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use state::{MemoryState, SharedState, StateError, StateStore};

/// A boxed, sendable future, as returned by [`Adapter::run`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A southbound adapter: something that produces [`Reading`]s until told to stop.
///
/// The gateway builds an adapter from its config section, then calls [`Adapter::run`] once.
/// If `run` returns an error (or panics), the supervisor logs why and builds a fresh adapter
/// from the same config after a backoff; an adapter therefore never needs to survive its own
/// fatal errors, only to retry transient I/O itself.
pub trait Adapter: Send + 'static {
    /// Runs until `ctx.shutdown` fires. Retries transient I/O itself; returns `Err` only when
    /// the adapter cannot work at all (bad config, no such port), which the supervisor logs and
    /// retries with backoff.
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>>;
}

/// Everything an adapter gets from the gateway when it starts.
#[derive(Debug)]
pub struct AdapterContext {
    /// The adapter's id from the config (`[[adapters]] id = ...`).
    pub id: AdapterId,
    /// Where readings go. Bounded: `send` waits when the queue applies backpressure.
    pub readings: ReadingSender,
    /// Fires when the gateway stops; `run` should return soon after.
    pub shutdown: Shutdown,
    /// Commands addressed to this adapter's devices.
    pub commands: CommandReceiver,
    /// Durable state the adapter keeps across restarts, stored by the gateway.
    pub state: SharedState,
}

/// Why an adapter stopped working.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The adapter's configuration cannot work (for example a point the device does not have).
    #[error("configuration: {0}")]
    Config(String),
    /// The adapter lost a resource it cannot do without (a serial port, a socket).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway is shutting down and the reading channel is closed.
    #[error("the gateway stopped accepting readings")]
    Closed,
    /// Anything else, with a sentence saying what.
    #[error("{0}")]
    Other(String),
}

/// One mistake found in an adapter's config section, reported by `fieldgate check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key path inside the adapter's section, like `devices[0].points[2].interval`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The sending half of the bounded channel from adapters to the queue writer.
#[derive(Debug, Clone)]
pub struct ReadingSender {
    tx: tokio::sync::mpsc::Sender<Reading>,
}

/// The receiving half of the reading channel, held by the gateway's queue writer.
pub type ReadingReceiver = tokio::sync::mpsc::Receiver<Reading>;

/// A bounded channel for readings: `capacity` readings may wait before senders block.
pub fn reading_channel(capacity: usize) -> (ReadingSender, ReadingReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (ReadingSender { tx }, rx)
}

impl ReadingSender {
    /// Sends one reading, waiting while the channel is full (that is the queue's backpressure).
    pub async fn send(&self, reading: Reading) -> Result<(), AdapterError> {
        self.tx
            .send(reading)
            .await
            .map_err(|_| AdapterError::Closed)
    }

    /// Sends several readings in order.
    pub async fn send_all(
        &self,
        readings: impl IntoIterator<Item = Reading>,
    ) -> Result<(), AdapterError> {
        for reading in readings {
            self.send(reading).await?;
        }
        Ok(())
    }

    /// True once the gateway has stopped receiving.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[tokio::test]
    async fn channel_is_bounded_and_reports_closure() {
        let (tx, mut rx) = reading_channel(1);
        let r = Reading::new("a", "d", "p", SystemTime::UNIX_EPOCH, Value::I64(1));
        tx.send(r.clone()).await.expect("room for one");
        // The second send must wait: the channel holds one reading.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), tx.send(r.clone()));
        assert!(
            pending.await.is_err(),
            "a full channel must apply backpressure"
        );
        assert_eq!(rx.recv().await.expect("a reading").value, Value::I64(1));
        drop(rx);
        assert!(matches!(tx.send(r).await, Err(AdapterError::Closed)));
        assert!(tx.is_closed());
    }
}
