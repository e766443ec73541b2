//! Commands for sites that only reach the cloud over HTTPS: the uplink polls for them.
//!
//! Two tasks per uplink with a `commands_url`, both stopped when the uplink is dropped:
//!
//! - the **poller** sends `GET <commands_url>` at once, then every `commands_interval`, with
//!   the uplink's client (its TLS setup, headers and credentials) and its `timeout`. The
//!   answer is `200` with a JSON array of commands or `{"commands": [...]}`; `204` or an empty
//!   body means none. Each command is handed to the router as an [`Inbound`] (the element
//!   serialized again, the uplink's id as origin), waiting for room in the inbox rather than
//!   dropping it. A poll that brought commands is followed by another at once (up to
//!   [`MAX_BURST`] in a row), so a burst drains without waiting an interval per page. A failed
//!   poll (no connection, a status other than 2xx, a body that is not a list of commands) is
//!   logged, rate-limited, and the next poll comes at the next interval (or after
//!   `Retry-After`, if the server says so and it is later).
//! - the **responder** sends every response the router makes (`accepted`, then `done` or
//!   `failed`) as `POST <responses_url>` with `Content-Type: application/json`, one response
//!   per request, in order. A response is sent again after a jittered backoff until the
//!   server answers 2xx (at least once), unless the server rejects it for good (400, 413, 422,
//!   ...: [`classify`]): then it is dropped and logged, so that one response the server
//!   cannot take does not hold up all the others. Responses wait in a bounded channel
//!   ([`RESPONSE_CAPACITY`]); the router drops (and logs) what does not fit.
//!
//! The poll is at-most-once by itself: a command the server handed out is gone from it. A
//! server that wants more can hand a command out again until it sees its `accepted`
//! response; the router refuses a repeated id, answering `failed` ("duplicate").

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fieldgate_adapter::Shutdown;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::sync::mpsc;

use super::{
    authorize, body_quote, build_client, classify, describe, drain, retry_after, HttpsSettings,
};
use crate::backoff::Backoff;
use crate::command::{Inbound, Inbox, RESPONSE_CAPACITY};
use crate::throttle::Throttle;
use crate::uplink::sleep_or_shutdown;
use crate::uplink::SendError;

/// Most polls in a row without waiting for the interval (each of them brought commands).
pub(super) const MAX_BURST: u32 = 16;
/// Largest poll answer read; a larger one is refused (and the poll counts as failed).
const MAX_POLL_BODY: usize = 1024 * 1024;
/// At most one warning per this long for failed polls (or failed response posts), with a count.
const LOG_EVERY: Duration = Duration::from_secs(300);
/// Backoff between attempts to post a response.
const RESPONSE_RETRY_MIN: Duration = Duration::from_secs(1);
const RESPONSE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Starts the poller and the responder for `settings.commands` (nothing without one); both
/// stop when `shutdown` fires. `client` is the uplink's client if it could be built.
pub(super) fn start(
    settings: Arc<HttpsSettings>,
    client: Option<reqwest::Client>,
    origin: String,
    inbox: Inbox,
    shutdown: Shutdown,
) {
    let Some(c) = &settings.commands else {
        return;
    };
    tracing::info!(
        uplink = %origin,
        host = c.url.host_str().unwrap_or("?"),
        interval = %fieldgate_adapter::duration::format(c.interval),
        "polling for commands"
    );
    let (responses, rx) = mpsc::channel(RESPONSE_CAPACITY);
    let client = LazyClient {
        settings: Arc::clone(&settings),
        client,
    };
    tokio::spawn(respond(
        client.clone(),
        origin.clone(),
        rx,
        shutdown.clone(),
    ));
    tokio::spawn(poll(client, origin, inbox, responses, shutdown));
}

/// The uplink's client, built again at the next use while it cannot be built.
#[derive(Debug, Clone)]
struct LazyClient {
    settings: Arc<HttpsSettings>,
    client: Option<reqwest::Client>,
}

impl LazyClient {
    fn get(&mut self) -> Result<reqwest::Client, SendError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = build_client(&self.settings).map_err(SendError::Retry)?;
        self.client = Some(c.clone());
        Ok(c)
    }
}

/// Polls until shutdown, or until the router is gone.
async fn poll(
    mut client: LazyClient,
    origin: String,
    inbox: Inbox,
    responses: mpsc::Sender<Vec<u8>>,
    mut shutdown: Shutdown,
) {
    let s = Arc::clone(&client.settings);
    let Some(c) = &s.commands else {
        return;
    };
    let host = c.url.host_str().unwrap_or("?");
    let mut log = Throttle::new(LOG_EVERY);
    let mut failing = false;
    let mut burst = 0;
    loop {
        let result = match client.get() {
            Ok(http) => tokio::select! {
                () = shutdown.fired() => return,
                r = tokio::time::timeout(s.timeout, poll_once(&http, &s)) => r.unwrap_or_else(|_| {
                    Err(SendError::Retry(format!("polling {host} timed out")))
                }),
            },
            Err(e) => Err(e),
        };
        let delay = match result {
            Ok(commands) => {
                if failing {
                    tracing::info!(uplink = %origin, host, "polling for commands again");
                    failing = false;
                }
                let n = commands.len();
                for command in commands {
                    // A serde_json::Value always serializes (its keys are strings).
                    let Ok(payload) = serde_json::to_vec(&command) else {
                        continue;
                    };
                    let inbound = Inbound {
                        payload,
                        origin: origin.clone(),
                        responses: responses.clone(),
                    };
                    let handed = tokio::select! {
                        () = shutdown.fired() => return,
                        r = inbox.send(inbound) => r,
                    };
                    if handed.is_err() {
                        tracing::debug!(uplink = %origin, "the command router stopped; no more polls");
                        return;
                    }
                }
                if n > 0 {
                    tracing::debug!(uplink = %origin, count = n, "commands received");
                    if burst < MAX_BURST {
                        burst += 1;
                        continue;
                    }
                }
                burst = 0;
                c.interval
            }
            Err(e) => {
                failing = true;
                burst = 0;
                let delay = match &e {
                    SendError::RetryAfter(_, after) => c.interval.max(*after),
                    _ => c.interval,
                };
                if let Some(n) = log.hit(1, Instant::now()) {
                    tracing::warn!(uplink = %origin, host, error = %reason(&e), failures = n, retry_in = ?delay, "cannot poll for commands");
                }
                delay
            }
        };
        if sleep_or_shutdown(delay, &mut shutdown).await {
            return;
        }
    }
}

/// One poll: the commands the server handed out, or why there are none.
async fn poll_once(
    client: &reqwest::Client,
    s: &HttpsSettings,
) -> Result<Vec<serde_json::Value>, SendError> {
    let Some(c) = &s.commands else {
        return Ok(Vec::new());
    };
    let host = c.url.host_str().unwrap_or("?");
    let req = client
        .get(c.url.clone())
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    let mut response = authorize(req, &s.auth)
        .send()
        .await
        .map_err(|e| describe(e, host))?;
    let status = response.status();
    if !status.is_success() {
        let after = retry_after(response.headers(), SystemTime::now());
        let quote = body_quote(response).await;
        // Every status but 2xx is an error here.
        return classify(status, after, &quote).map(|()| Vec::new());
    }
    if status == StatusCode::NO_CONTENT {
        return Ok(Vec::new());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(e, host))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_POLL_BODY {
            return Err(SendError::Reject(format!(
                "the answer from {host} is larger than {} KiB",
                MAX_POLL_BODY / 1024
            )));
        }
    }
    parse_commands(&body).map_err(|why| SendError::Reject(format!("the answer from {host} {why}")))
}

/// The commands in a poll's answer: a JSON array, `{"commands": [...]}`, or nothing.
pub(super) fn parse_commands(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    use serde_json::Value;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let expected = "is not a JSON array of commands (nor {\"commands\": [...]})";
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(commands)) => Ok(commands),
        Ok(Value::Object(mut o)) => match o.remove("commands") {
            Some(Value::Array(commands)) => Ok(commands),
            _ => Err(format!("{expected}: an object without a `commands` array")),
        },
        Ok(_) => Err(format!("{expected}: a JSON scalar")),
        Err(e) => Err(format!("{expected}: {e}")),
    }
}

/// Posts the responses in order until shutdown, or until every sender is gone.
async fn respond(
    mut client: LazyClient,
    origin: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut shutdown: Shutdown,
) {
    let s = Arc::clone(&client.settings);
    let Some(c) = &s.commands else {
        return;
    };
    let host = c.responses_url.host_str().unwrap_or("?");
    let mut backoff = Backoff::new(RESPONSE_RETRY_MIN, RESPONSE_RETRY_MAX);
    let mut log = Throttle::new(LOG_EVERY);
    loop {
        let body = tokio::select! {
            () = shutdown.fired() => return,
            b = rx.recv() => match b {
                Some(b) => Bytes::from(b),
                None => return,
            },
        };
        loop {
            let result = match client.get() {
                Ok(http) => tokio::select! {
                    () = shutdown.fired() => return,
                    r = tokio::time::timeout(s.timeout, post_once(&http, &s, body.clone())) => r.unwrap_or_else(|_| {
                        Err(SendError::Retry(format!("posting a response to {host} timed out")))
                    }),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                Err(SendError::Reject(why)) => {
                    tracing::error!(uplink = %origin, host, error = %why, "the server refused a command response; it is dropped");
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let delay = match &e {
                        SendError::RetryAfter(_, after) => backoff.next_delay().max(*after),
                        _ => backoff.next_delay(),
                    };
                    if let Some(n) = log.hit(1, Instant::now()) {
                        tracing::warn!(uplink = %origin, host, error = %reason(&e), failures = n, retry_in = ?delay, "cannot post a command response; will send it again");
                    }
                    if sleep_or_shutdown(delay, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// One response, posted once.
async fn post_once(
    client: &reqwest::Client,
    s: &HttpsSettings,
    body: Bytes,
) -> Result<(), SendError> {
    let Some(c) = &s.commands else {
        return Ok(());
    };
    let host = c.responses_url.host_str().unwrap_or("?");
    let req = client
        .post(c.responses_url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    let response = authorize(req, &s.auth)
        .send()
        .await
        .map_err(|e| describe(e, host))?;
    let status = response.status();
    let after = retry_after(response.headers(), SystemTime::now());
    let quote = if status.is_success() {
        drain(response).await;
        String::new()
    } else {
        body_quote(response).await
    };
    classify(status, after, &quote)
}

/// The sentence of a [`SendError`], without its "(will retry)".
fn reason(e: &SendError) -> &str {
    match e {
        SendError::Retry(why) | SendError::RetryAfter(why, _) | SendError::Reject(why) => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<&str, &str>) {
        let got =
            parse_commands(body.as_bytes()).map(|cs| serde_json::Value::Array(cs).to_string());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{body:?}"),
            (Err(why), Err(want)) => assert!(why.contains(want), "{body:?}: {why}"),
            (got, want) => panic!("{body:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn poll_answers_are_arrays_wrapped_arrays_or_nothing() {
        check("", Ok("[]"));
        check(" \r\n", Ok("[]"));
        check("[]", Ok("[]"));
        check(
            r#"[{"id":"a"},{"id":"b"}]"#,
            Ok(r#"[{"id":"a"},{"id":"b"}]"#),
        );
        check(
            r#"{"commands":[{"id":"a"}],"next":null}"#,
            Ok(r#"[{"id":"a"}]"#),
        );
        // Elements that are not commands go to the router, which answers `failed`.
        check(r#"[1,"x"]"#, Ok(r#"[1,"x"]"#));
        check(r#"{"id":"a"}"#, Err("without a `commands` array"));
        check(
            r#"{"commands":{"id":"a"}}"#,
            Err("without a `commands` array"),
        );
        check("42", Err("a JSON scalar"));
        check("null", Err("a JSON scalar"));
        check("<html>", Err("is not a JSON array of commands"));
        check("[1,", Err("EOF"));
    }
}
