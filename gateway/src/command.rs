//! Commands from the cloud: the wire format, the router, and the responses.
//!
//! An uplink that takes commands (MQTT with `command_topic`, HTTPS with `commands_url`) hands
//! every message it receives to the [`Inbox`] as an [`Inbound`], with a channel for the
//! responses. The [`Router`] parses it ([`docs/commands.md`](../../docs/commands.md) is the
//! protocol), refuses what it must (unparseable, duplicate id, expired, unknown adapter),
//! records it in the [`AuditLog`], answers `accepted`, passes it to the adapter as a
//! [`Command`] and answers again with `done` (and the value read back) or `failed` and why.
//! The adapter checks what only it can: that the device and point exist, that the point is
//! writable and the value within its range.
//!
//! Every command gets a deadline (its own `deadline` or `ttl`, else `[commands] default_ttl`):
//! an adapter refuses a command it gets after its deadline, and the router answers `failed`
//! ("expired") if the adapter has not finished by then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{Command, CommandAction, CommandError, CommandSender, Shutdown, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::queue::{AuditLog, NewEntry, QueueError};

/// Command senders by adapter id; an adapter's entry is replaced when it restarts.
pub type CommandRoutes = Arc<Mutex<HashMap<String, CommandSender>>>;

/// One message received by an uplink on its command channel.
#[derive(Debug)]
pub struct Inbound {
    /// The message body (JSON).
    pub payload: Vec<u8>,
    /// The uplink's id, for the audit.
    pub origin: String,
    /// Where the responses go (JSON bodies), in order.
    pub responses: mpsc::Sender<Vec<u8>>,
}

/// Where uplinks hand in the commands they receive.
pub type Inbox = mpsc::Sender<Inbound>;

/// Most commands waiting for the router; more are refused with "busy".
pub const INBOX_CAPACITY: usize = 64;
/// Most responses waiting for an uplink to send them.
pub const RESPONSE_CAPACITY: usize = 256;
/// Most commands running at once.
const MAX_RUNNING: usize = 64;
/// The furthest deadline a command may have (a meter that uplinks once a day gets its
/// downlink within a week).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long past its deadline the router still waits for an adapter that took a command,
/// so that what it reports is what happened (a write in progress at the deadline finishes).
const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// A command as it arrives (the wire format, version 1).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WireCommand {
    /// The caller's id; echoed in every response and used to refuse duplicates.
    pub id: String,
    /// The adapter that owns the device (as in the readings' `adapter`).
    pub adapter: String,
    /// The device.
    pub device: String,
    /// `"write"` or `"send"`.
    pub action: WireAction,
    /// `write`: the point.
    #[serde(default)]
    pub point: Option<String>,
    /// `write`: the value (a JSON boolean, number or string).
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// `send`: the protocol port (a LoRaWAN FPort).
    #[serde(default)]
    pub port: Option<u8>,
    /// `send`: the bytes as hex.
    #[serde(default)]
    pub hex: Option<String>,
    /// `send`: the bytes as base64.
    #[serde(default)]
    pub base64: Option<String>,
    /// `send`: the bytes as text (a serial line; add its terminator, like `"\r\n"`).
    #[serde(default)]
    pub text: Option<String>,
    /// Do not execute after this time (RFC 3339, like `"2026-11-21T10:00:00Z"`).
    #[serde(default)]
    pub deadline: Option<String>,
    /// Do not execute later than this after arrival (like `"30s"`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// What a command asks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireAction {
    /// Write a value to a writable point.
    Write,
    /// Send bytes to a device.
    Send,
}

/// A command's state in a response.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Valid, recorded and passed to the adapter.
    Accepted,
    /// The adapter did it.
    Done,
    /// Refused or failed; `reason` says why.
    Failed,
}

/// A response, published on the response topic (or posted to the responses url).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    /// The command's id (empty if the command had none that could be read).
    pub id: String,
    /// The gateway that answers.
    pub gateway: String,
    /// accepted, done or failed.
    pub status: Status,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// After a write: the value read back from the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// When the response was made (RFC 3339).
    pub ts: String,
}

/// Whether a command's id is new.
enum Claim {
    /// New, recorded as the given audit entry (none without an audit table).
    New(Option<i64>),
    /// Seen before; the first one's status.
    Duplicate(String),
    /// The audit table could not record it.
    Unrecorded,
}

/// A parsed, checked command ready for its adapter.
#[derive(Debug)]
struct Checked {
    wire: WireCommand,
    action: CommandAction,
    /// Wall-clock deadline.
    deadline: SystemTime,
}

/// Routes commands from the inbox to the adapters.
#[derive(Debug, Clone)]
pub struct Router {
    /// Adapter command senders.
    pub routes: CommandRoutes,
    /// The audit table (none in tests that do not need one).
    pub audit: Option<Arc<AuditLog>>,
    /// Deadline of commands that give none.
    pub default_ttl: Duration,
    /// `[gateway] id`, echoed in responses.
    pub gateway: String,
}

impl Router {
    /// Takes commands from `inbox` until it closes or `shutdown` fires; commands still
    /// running then are answered by their adapters or dropped (the audit shows them
    /// `accepted`).
    pub async fn run(self, mut inbox: mpsc::Receiver<Inbound>, mut shutdown: Shutdown) {
        let running = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING));
        loop {
            let msg = tokio::select! {
                () = shutdown.fired() => return,
                m = inbox.recv() => match m { Some(m) => m, None => return },
            };
            let Ok(permit) = Arc::clone(&running).try_acquire_owned() else {
                let id = peek_id(&msg.payload);
                tracing::warn!(command = %id, "too many commands running; refused");
                self.respond(
                    &msg,
                    &id,
                    Err("busy: too many commands running".into()),
                    None,
                );
                continue;
            };
            let router = self.clone();
            tokio::spawn(async move {
                router.handle(msg).await;
                drop(permit);
            });
        }
    }

    /// Handles one message to the end (all its responses sent).
    pub async fn handle(&self, msg: Inbound) {
        let received = SystemTime::now();
        let checked = match parse(&msg.payload, received, self.default_ttl) {
            Ok(c) => c,
            Err((id, why)) => {
                tracing::warn!(origin = %msg.origin, command = %id, error = %why, "command refused");
                self.audit_invalid(&msg, &id, &why, received).await;
                self.respond(&msg, &id, Err(why), None);
                return;
            }
        };
        let id = checked.wire.id.clone();
        let detail = describe(&checked.action);
        let action_name = match checked.wire.action {
            WireAction::Write => "write",
            WireAction::Send => "send",
        };
        // A command delivered twice (MQTT at-least-once, a poll that saw it again) runs once:
        // the id is looked up and recorded under one lock, so a copy right behind the
        // original cannot slip between the two.
        let entry = match self
            .audit_claim(&msg, &id, &checked, action_name, &detail, received)
            .await
        {
            Claim::Duplicate(status) => {
                let why = format!("duplicate command id: already received (status {status})");
                tracing::warn!(origin = %msg.origin, command = %id, "duplicate command refused");
                self.respond(&msg, &id, Err(why), None);
                return;
            }
            Claim::New(entry) => entry,
            Claim::Unrecorded => {
                self.respond(
                    &msg,
                    &id,
                    Err("device error: the audit table cannot be written; not executed".into()),
                    None,
                );
                return;
            }
        };
        let refuse = |why: String| {
            let (id, msg) = (&id, &msg);
            async move {
                self.audit_finish(id, entry, Err(why.clone())).await;
                self.respond(msg, id, Err(why), None);
            }
        };
        if received >= checked.deadline {
            refuse(CommandError::Expired.to_string()).await;
            return;
        }
        let route = self
            .routes
            .lock()
            .ok()
            .and_then(|r| r.get(&checked.wire.adapter).cloned());
        let Some(route) = route else {
            let mut known: Vec<String> = self
                .routes
                .lock()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            known.sort();
            refuse(format!(
                "unknown target: no running adapter `{}` (known: {})",
                checked.wire.adapter,
                known.join(", ")
            ))
            .await;
            return;
        };
        tracing::info!(origin = %msg.origin, command = %id, adapter = %checked.wire.adapter, device = %checked.wire.device, action = %detail, "command accepted");
        self.respond(&msg, &id, Ok(false), None);

        let left = checked
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let deadline = std::time::Instant::now() + left;
        let (cmd, reply) = Command::new(
            id.clone(),
            checked.wire.device.as_str(),
            checked.action,
            Some(deadline),
        );
        let outcome = tokio::time::timeout(left + ANSWER_GRACE, async move {
            route
                .send(cmd)
                .await
                .map_err(|_| CommandError::Device("the adapter is restarting".into()))?;
            reply
                .await
                .map_err(|_| CommandError::Device("the adapter stopped before answering".into()))?
        })
        .await
        .unwrap_or_else(|_| {
            Err(CommandError::Device(
                "no answer from the adapter by the deadline; the command may or may not have been executed".into(),
            ))
        });
        let (result, value) = match outcome {
            Ok(v) => (
                Ok(v.as_ref().map(Value::to_string)),
                // As in the readings' JSON (payload.md): bytes as base64, non-finite as null.
                v.as_ref()
                    .and_then(|v| serde_json::to_value(crate::payload::JsonValue(v)).ok()),
            ),
            Err(e) => (Err(e.to_string()), None),
        };
        match &result {
            Ok(_) => {
                tracing::info!(command = %id, "command done");
            }
            Err(why) => tracing::warn!(command = %id, error = %why, "command failed"),
        }
        self.audit_finish(&id, entry, result.clone()).await;
        self.respond(&msg, &id, result.map(|_| true), value);
    }

    /// Runs `f` with this command's audit entry (`target` is its adapter and device) on the
    /// blocking pool. `Ok(None)` without an audit table, `Err(())` if it failed.
    async fn audit_entry<T: Send + 'static>(
        &self,
        msg: &Inbound,
        id: &str,
        target: (&str, &str),
        action: &str,
        detail: &str,
        f: impl FnOnce(&AuditLog, &NewEntry<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<Option<T>, ()> {
        let Some(audit) = self.audit.as_ref().map(Arc::clone) else {
            return Ok(None);
        };
        let owned = [id, &msg.origin, target.0, target.1, action, detail].map(str::to_string);
        let r = tokio::task::spawn_blocking(move || {
            let [command_id, origin, adapter, device, action, detail] = &owned;
            f(
                &audit,
                &NewEntry {
                    command_id,
                    origin,
                    adapter,
                    device,
                    action,
                    detail,
                },
            )
        })
        .await;
        match r {
            Ok(Ok(t)) => Ok(Some(t)),
            _ => Err(()),
        }
    }

    /// Records a command in the audit unless its id was seen before.
    async fn audit_claim(
        &self,
        msg: &Inbound,
        id: &str,
        checked: &Checked,
        action: &str,
        detail: &str,
        at: SystemTime,
    ) -> Claim {
        let target = (checked.wire.adapter.as_str(), checked.wire.device.as_str());
        match self
            .audit_entry(msg, id, target, action, detail, move |a, e| a.claim(e, at))
            .await
        {
            Ok(None) => Claim::New(None),
            Ok(Some(Ok(entry))) => Claim::New(Some(entry)),
            Ok(Some(Err(first))) => Claim::Duplicate(first.status),
            Err(()) => {
                // Nothing runs unrecorded (and without the record, duplicates cannot be told).
                tracing::error!(command = %id, "cannot record the command in the audit table; refused");
                Claim::Unrecorded
            }
        }
    }

    /// Records how an audited command ended.
    async fn audit_finish(
        &self,
        id: &str,
        entry: Option<i64>,
        result: Result<Option<String>, String>,
    ) {
        let (Some(audit), Some(entry)) = (&self.audit, entry) else {
            return;
        };
        let a = Arc::clone(audit);
        let done =
            tokio::task::spawn_blocking(move || a.finish(entry, result, SystemTime::now())).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!(command = %id, "cannot record the command's outcome in the audit table");
        }
    }

    /// Records a command that could not be parsed, with the start of its payload.
    async fn audit_invalid(&self, msg: &Inbound, id: &str, why: &str, at: SystemTime) {
        let detail = String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(200)]);
        match self
            .audit_entry(msg, id, ("", ""), "invalid", &detail, move |a, e| {
                a.record(e, at)
            })
            .await
        {
            Ok(entry) => self.audit_finish(id, entry, Err(why.to_string())).await,
            Err(()) => {
                tracing::error!(command = %id, "cannot record the command in the audit table");
            }
        }
    }

    /// Answers: `Ok(false)` accepted, `Ok(true)` done, `Err` failed and why.
    fn respond(
        &self,
        msg: &Inbound,
        id: &str,
        outcome: Result<bool, String>,
        value: Option<serde_json::Value>,
    ) {
        let (status, reason) = match outcome {
            Ok(true) => (Status::Done, None),
            Ok(false) => (Status::Accepted, None),
            Err(why) => (Status::Failed, Some(why)),
        };
        let response = Response {
            id: id.to_string(),
            gateway: self.gateway.clone(),
            status,
            reason,
            value,
            ts: crate::payload::rfc3339(SystemTime::now()),
        };
        send_response(msg, &response);
    }
}

/// Queues `response` for the uplink the command came through.
fn send_response(msg: &Inbound, response: &Response) {
    let body = match serde_json::to_vec(response) {
        Ok(b) => b,
        Err(_) => return, // plain strings and numbers: cannot fail
    };
    if msg.responses.try_send(body).is_err() {
        tracing::warn!(origin = %msg.origin, command = %response.id, "response dropped: the uplink has too many unsent responses");
    }
}

/// The command's id if the payload has one, for responses to what cannot be parsed.
fn peek_id(payload: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Id {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Id>(payload) {
        Ok(Id {
            id: Some(serde_json::Value::String(s)),
        }) => s,
        Ok(Id { id: Some(v) }) => v.to_string(),
        _ => String::new(),
    }
}

/// Parses and checks a command; on error, the id (if readable) and why.
fn parse(
    payload: &[u8],
    received: SystemTime,
    default_ttl: Duration,
) -> Result<Checked, (String, String)> {
    let wire: WireCommand = serde_json::from_slice(payload)
        .map_err(|e| (peek_id(payload), format!("bad command: {e}")))?;
    let id = wire.id.clone();
    let fail = |why: String| (id.clone(), why);
    if wire.id.is_empty() || wire.id.len() > 128 {
        return Err(fail("bad command: `id` must be 1 to 128 characters".into()));
    }
    let deadline = match (&wire.deadline, &wire.ttl) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "bad command: give `deadline` or `ttl`, not both".into(),
            ))
        }
        (Some(d), None) => humantime::parse_rfc3339_weak(d)
            .map_err(|e| fail(format!("bad command: `deadline` {d:?}: {e}")))?,
        (None, Some(t)) => {
            let ttl = humantime::parse_duration(t)
                .map_err(|e| fail(format!("bad command: `ttl` {t:?}: {e}")))?;
            if ttl > MAX_TTL {
                return Err(fail(format!(
                    "invalid value: `ttl` {t:?} is longer than {}",
                    humantime::format_duration(MAX_TTL)
                )));
            }
            received + ttl
        }
        (None, None) => received + default_ttl,
    };
    if deadline.duration_since(received).unwrap_or_default() > MAX_TTL {
        return Err(fail(format!(
            "invalid value: `deadline` is more than {} away",
            humantime::format_duration(MAX_TTL)
        )));
    }
    let action = match wire.action {
        WireAction::Write => {
            if wire.port.is_some()
                || wire.hex.is_some()
                || wire.base64.is_some()
                || wire.text.is_some()
            {
                return Err(fail(
                    "bad command: `write` takes `point` and `value` (port, hex, base64 and text belong to `send`)".into(),
                ));
            }
            let point = wire
                .point
                .clone()
                .ok_or_else(|| fail("bad command: `write` needs `point`".into()))?;
            let value = match &wire.value {
                Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
                Some(serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => Value::I64(i),
                    None => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
                },
                Some(serde_json::Value::String(s)) => Value::Text(s.clone()),
                Some(_) => {
                    return Err(fail(
                        "invalid value: `value` must be a boolean, a number or a string".into(),
                    ))
                }
                None => return Err(fail("bad command: `write` needs `value`".into())),
            };
            CommandAction::Write {
                point: point.as_str().into(),
                value,
            }
        }
        WireAction::Send => {
            if wire.point.is_some() || wire.value.is_some() {
                return Err(fail(
                    "bad command: `send` takes `hex`, `base64` or `text` (point and value belong to `write`)".into(),
                ));
            }
            let payload = match (&wire.hex, &wire.base64, &wire.text) {
                (Some(h), None, None) => decode_hex(h)
                    .ok_or_else(|| fail(format!("invalid value: `hex` {h:?} is not hex")))?,
                (None, Some(b), None) => fieldgate_lorawan::semtech::base64_decode(b)
                    .ok_or_else(|| fail("invalid value: `base64` is not base64".into()))?,
                (None, None, Some(t)) => t.as_bytes().to_vec(),
                _ => {
                    return Err(fail(
                        "bad command: `send` needs exactly one of `hex`, `base64`, `text`".into(),
                    ))
                }
            };
            CommandAction::Send {
                port: wire.port,
                payload,
            }
        }
    };
    Ok(Checked {
        wire,
        action,
        deadline,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The command as one line of text, for logs and the audit.
fn describe(action: &CommandAction) -> String {
    match action {
        CommandAction::Write { point, value } => format!("{point} = {value}"),
        CommandAction::Send { port, payload } => {
            let hex = fieldgate_lorawan::network::to_hex(payload);
            match port {
                Some(p) => format!("port {p}: {hex}"),
                None => hex,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_refused(body: &str, want_id: &str, want: &str) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        match parse(body.as_bytes(), t, Duration::from_secs(60)) {
            Ok(c) => panic!("{body} was accepted: {c:?}"),
            Err((id, why)) => {
                assert_eq!(id, want_id, "{body}");
                assert!(why.contains(want), "{body}: {why} does not say {want}");
            }
        }
    }

    #[test]
    fn parses_writes_and_sends() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = parse(
            br#"{"id":"c1","adapter":"tanks","device":"tank-1","action":"write","point":"pump_running","value":true}"#,
            t,
            Duration::from_secs(60),
        )
        .expect("valid");
        assert_eq!(
            c.action,
            CommandAction::Write {
                point: "pump_running".into(),
                value: Value::Bool(true)
            }
        );
        assert_eq!(c.deadline, t + Duration::from_secs(60));
        let c = parse(
            br#"{"id":"c2","adapter":"poles","device":"pole-1","action":"send","port":10,"hex":"01 ff","ttl":"5s"}"#,
            t,
            Duration::from_secs(60),
        )
        .expect("valid");
        assert_eq!(
            c.action,
            CommandAction::Send {
                port: Some(10),
                payload: vec![1, 0xff]
            }
        );
        assert_eq!(c.deadline, t + Duration::from_secs(5));
        let c = parse(
            br#"{"id":"c3","adapter":"wx","device":"station","action":"send","text":"RESET\r\n","deadline":"2027-01-15T08:00:00Z"}"#,
            t,
            Duration::from_secs(60),
        )
        .expect("valid");
        assert_eq!(
            c.deadline,
            humantime::parse_rfc3339("2027-01-15T08:00:00Z").expect("time")
        );
        let c = parse(
            br#"{"id":"c4","adapter":"a","device":"d","action":"write","point":"sp","value":2.5}"#,
            t,
            Duration::from_secs(60),
        )
        .expect("valid");
        assert!(matches!(c.action, CommandAction::Write { value: Value::F64(v), .. } if v == 2.5));
    }

    #[test]
    fn refusals_say_why_and_keep_the_id() {
        check_refused("not json", "", "bad command");
        check_refused(r#"{"id":"x"}"#, "x", "missing field");
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"write","point":"p","value":1,"colour":"red"}"#,
            "x",
            "unknown field `colour`",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"reboot"}"#,
            "x",
            "unknown variant `reboot`",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"write","value":1}"#,
            "x",
            "needs `point`",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"write","point":"p","value":[1]}"#,
            "x",
            "must be a boolean, a number or a string",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"send","hex":"0g"}"#,
            "x",
            "is not hex",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"send","hex":"00","text":"a"}"#,
            "x",
            "exactly one of",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"send","hex":"00","ttl":"soon"}"#,
            "x",
            "`ttl`",
        );
        // Regression: a ttl past what SystemTime can hold panicked the command's task.
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"send","hex":"00","ttl":"300000000000y"}"#,
            "x",
            "longer than 7days",
        );
        check_refused(
            r#"{"id":"x","adapter":"a","device":"d","action":"send","hex":"00","deadline":"2099-01-01T00:00:00Z"}"#,
            "x",
            "more than 7days away",
        );
        check_refused(
            r#"{"id":"","adapter":"a","device":"d","action":"send","hex":"00"}"#,
            "",
            "1 to 128",
        );
    }
}
