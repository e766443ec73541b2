//! Commands from the cloud to the field: write a point, send bytes to a device.
//!
//! The route from the cloud (an MQTT command topic, an HTTPS poll) lives in the gateway; an
//! adapter only sees [`Command`]s for its own devices and answers each one exactly once with
//! [`Command::reply`].

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::{DeviceId, PointId, Value};

/// What a command asks an adapter to do.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandAction {
    /// Write `value` to a writable point (a coil, a holding register, a setpoint).
    Write {
        /// The point to write.
        point: PointId,
        /// The value in engineering units; the adapter applies the inverse of its scaling.
        value: Value,
    },
    /// Send raw bytes to the device (a LoRaWAN downlink, a line on a serial port).
    Send {
        /// Protocol-specific port (a LoRaWAN FPort); `None` where the protocol has none.
        port: Option<u8>,
        /// The bytes to send.
        payload: Vec<u8>,
    },
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The adapter does not know the device or point.
    #[error("unknown target: {0}")]
    UnknownTarget(String),
    /// The adapter cannot do this kind of command.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The value does not fit the point (type or range).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The deadline passed before the command could run.
    #[error("expired before it could be executed")]
    Expired,
    /// The device refused or did not answer.
    #[error("device error: {0}")]
    Device(String),
}

/// The result of a command: on success, the value read back from the device, if any.
pub type Outcome = Result<Option<Value>, CommandError>;

/// One command for an adapter. Answer it with [`Command::reply`]; dropping it unanswered
/// tells the sender it failed.
#[derive(Debug)]
pub struct Command {
    /// The caller's id for this command, echoed in responses and the audit log.
    pub id: String,
    /// The device it is for.
    pub device: DeviceId,
    /// What to do.
    pub action: CommandAction,
    /// After this instant the command must not be executed.
    pub deadline: Option<Instant>,
    reply: oneshot::Sender<Outcome>,
}

impl Command {
    /// A command and the receiver on which its outcome will arrive.
    pub fn new(
        id: impl Into<String>,
        device: impl Into<DeviceId>,
        action: CommandAction,
        deadline: Option<Instant>,
    ) -> (Command, oneshot::Receiver<Outcome>) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            id: id.into(),
            device: device.into(),
            action,
            deadline,
            reply,
        };
        (cmd, rx)
    }

    /// True if the deadline has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Answers the command. The caller may have gone away; that is not an error.
    pub fn reply(self, outcome: Outcome) {
        let _ = self.reply.send(outcome);
    }
}

/// Sends commands to one adapter.
pub type CommandSender = mpsc::Sender<Command>;
/// Where an adapter receives its commands.
pub type CommandReceiver = mpsc::Receiver<Command>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reply_reaches_the_caller_and_deadline_is_checked() {
        let now = Instant::now();
        let (cmd, rx) = Command::new(
            "c1",
            "pump-1",
            CommandAction::Write {
                point: "setpoint".into(),
                value: Value::F64(1.5),
            },
            Some(now + Duration::from_secs(5)),
        );
        assert!(!cmd.is_expired(now));
        assert!(cmd.is_expired(now + Duration::from_secs(5)));
        cmd.reply(Err(CommandError::Unsupported("read-only".into())));
        assert_eq!(
            rx.await.expect("a reply"),
            Err(CommandError::Unsupported("read-only".into()))
        );
    }
}
