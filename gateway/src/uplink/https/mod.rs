//! `type = "https"`: batches POSTed as JSON to any HTTPS endpoint.
//!
//! Each batch the forwarder hands over becomes one request (docs/payload.md, "HTTPS"): a
//! versioned envelope with the gateway id, `queue_id`, the batch's sequence range and its
//! readings, optionally gzipped. The request carries an idempotency key
//! (`<queue_id>:<first_seq>-<last_seq>`) so the server can recognise a batch sent again after a
//! lost response. Requests run as their own tasks, up to `max_in_flight` at once.
//!
//! The response decides ([`classify`]): 2xx is an acknowledgement; a connection error, a
//! timeout, 408, 409, 429 and 5xx are transient and the batch is sent again, no sooner than
//! `Retry-After` says; so are 401/403, 404/405/410/415 and 3xx, which say the credentials or
//! the url need fixing — the batch is fine, and dead-lettering every batch while an operator
//! fixes a typo would empty the queue into the capped dead-letter table. Any other 4xx (400,
//! 413, 422, ...) rejects the batch, which the forwarder moves to the dead-letter table.
//!
//! With `commands_url`, the uplink also takes commands from the cloud (`commands.rs`): it polls
//! that url and posts the responses, with the same client, headers and credentials.

mod commands;
mod config;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{BoxFuture, ShutdownTrigger};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::ser::Serializer;

pub use config::{Auth, HttpsCommands, HttpsSettings, HttpsUplinkConfig};

use super::{Delivery, Pending, SendError, Uplink};
use crate::command::Inbox;
use crate::payload;
use crate::queue::Queued;

/// The longest `Retry-After` honoured; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Bytes of an error response's body quoted in the error.
const BODY_QUOTE: usize = 200;

/// The HTTPS uplink.
#[derive(Debug)]
pub struct HttpsUplink {
    settings: Arc<HttpsSettings>,
    gateway: String,
    queue_id: String,
    /// Built at the first send, and again after a failure to build it.
    client: Option<reqwest::Client>,
    /// Stops the command poller and responder when the uplink is dropped.
    _stop: ShutdownTrigger,
}

impl HttpsUplink {
    /// The uplink for `settings`; connects at the first send.
    pub fn new(settings: HttpsSettings, gateway: String) -> Self {
        Self::new_with_commands(settings, gateway, None)
    }

    /// [`HttpsUplink::new`], polling `commands_url` for commands into `inbox` (with the
    /// uplink's id, for the audit) and posting their responses to `responses_url`, when the
    /// settings have a `commands_url`. Must be called inside a tokio runtime then (the poller
    /// starts at once); the poller stops when the uplink is dropped.
    pub fn new_with_commands(
        settings: HttpsSettings,
        gateway: String,
        inbox: Option<(String, Inbox)>,
    ) -> Self {
        if settings.insecure_skip_verify {
            tracing::warn!(url = %settings.url, "insecure_skip_verify = true: the server's certificate is not checked; anyone on the path can read and alter readings");
        } else if !settings.tls() {
            tracing::warn!(url = %settings.url, "plain http:// uplink: readings cross the network unencrypted");
        }
        let settings = Arc::new(settings);
        let (stop, shutdown) = ShutdownTrigger::new();
        let mut client = None;
        if let (Some(_), Some((origin, inbox))) = (&settings.commands, inbox) {
            // One client for deliveries, polls and responses: one connection pool. If it
            // cannot be built now, each task builds its own later (and says why it cannot).
            client = build_client(&settings).ok();
            commands::start(
                Arc::clone(&settings),
                client.clone(),
                origin,
                inbox,
                shutdown,
            );
        }
        HttpsUplink {
            settings,
            gateway,
            queue_id: String::new(),
            client,
            _stop: stop,
        }
    }

    fn client(&mut self) -> Result<reqwest::Client, SendError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = build_client(&self.settings).map_err(SendError::Retry)?;
        self.client = Some(c.clone());
        Ok(c)
    }

    fn request(&mut self, batch: &[Queued], historical: bool) -> Result<Pending, SendError> {
        let client = self.client()?;
        let s = Arc::clone(&self.settings);
        let origin = payload::Origin {
            gateway: &self.gateway,
            queue_id: &self.queue_id,
        };
        let body = body(origin, batch, historical);
        let body = if s.gzip { gzip(&body) } else { body };
        let bytes = body.len() as u64;
        let mut req = client
            .post(s.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if s.gzip {
            req = req.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let (Some(h), Some(first), Some(last)) =
            (&s.idempotency_header, batch.first(), batch.last())
        {
            req = req.header(h, idempotency_key(&self.queue_id, first.seq, last.seq));
        }
        req = authorize(req, &s.auth);
        let task = tokio::spawn(async move {
            let host = s.url.host_str().unwrap_or("?");
            let response = req.send().await.map_err(|e| describe(e, host))?;
            let status = response.status();
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let quote = if status.is_success() {
                drain(response).await;
                String::new()
            } else {
                body_quote(response).await
            };
            classify(status, retry_after, &quote).map(|()| Delivery {
                rejected: Vec::new(),
                bytes,
            })
        });
        let task = AbortOnDrop(task);
        Ok(Box::pin(async move {
            match task.await {
                Ok(result) => result,
                Err(e) => Err(SendError::Retry(format!("request task failed: {e}"))),
            }
        }))
    }
}

impl Uplink for HttpsUplink {
    fn send<'a>(
        &'a mut self,
        batch: &'a [Queued],
        historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>> {
        let result = self.request(batch, historical);
        Box::pin(std::future::ready(result))
    }

    fn window(&self) -> usize {
        self.settings.max_in_flight
    }

    fn set_queue_id(&mut self, queue_id: &str) {
        self.queue_id = queue_id.to_string();
    }
}

/// Aborts the request task when the forwarder gives up on it (a rewind, shutdown).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The uplink's HTTP client: its TLS configuration, timeouts, no redirects, no proxy, and
/// the configured headers.
pub(crate) fn build_client(s: &HttpsSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("fieldgate/", env!("CARGO_PKG_VERSION")))
        .timeout(s.timeout)
        .connect_timeout(s.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(s.max_in_flight)
        .tcp_nodelay(true)
        .no_proxy();
    builder = builder.default_headers(s.headers.iter().cloned().collect());
    if s.tls() {
        let tls = super::tls::client_config(
            s.ca_file.as_deref(),
            s.client_auth.as_ref(),
            s.insecure_skip_verify,
        )?;
        builder = builder.use_preconfigured_tls(tls).https_only(true);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))
}

/// Adds the configured credentials to a request.
fn authorize(req: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
    match auth {
        Auth::None => req,
        Auth::Bearer(t) => req.bearer_auth(t.expose()),
        Auth::Basic { username, password } => req.basic_auth(username, Some(password.expose())),
    }
}

/// `<queue_id>:<first_seq>-<last_seq>`: the same batch sent again carries the same key.
pub fn idempotency_key(queue_id: &str, first: u64, last: u64) -> String {
    format!("{queue_id}:{first}-{last}")
}

/// The request body (docs/payload.md):
///
/// ```json
/// {"v":1,"gateway":"site-01","queue_id":"5b9e0d7c1a2f3e44","historical":false,
///  "first_seq":41,"last_seq":42,"count":2,
///  "readings":[{"seq":41,"adapter":"plc","device":"pump-1","point":"pressure","ts":"...",
///               "type":"float","value":3.2,"unit":"bar","quality":"good"}, ...]}
/// ```
pub fn body(origin: payload::Origin<'_>, batch: &[Queued], historical: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.len() * 160);
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(payload::VERSION.to_string().as_bytes());
    for (key, value) in [("gateway", origin.gateway), ("queue_id", origin.queue_id)] {
        out.extend_from_slice(format!(",\"{key}\":").as_bytes());
        let mut ser = serde_json::Serializer::new(&mut out);
        // Writing a string into a Vec cannot fail.
        let _ = ser.serialize_str(value);
    }
    let first = batch.first().map_or(0, |q| q.seq);
    let last = batch.last().map_or(0, |q| q.seq);
    out.extend_from_slice(
        format!(
            ",\"historical\":{historical},\"first_seq\":{first},\"last_seq\":{last},\"count\":{},\"readings\":[",
            batch.len()
        )
        .as_bytes(),
    );
    for (i, q) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        payload::write_sourced_item(&mut out, q);
    }
    out.extend_from_slice(b"]}");
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// What a response status means for the batch. `quote` is the start of the response body.
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    quote: &str,
) -> Result<(), SendError> {
    let code = status.as_u16();
    let what = if quote.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {quote}")
    };
    match code {
        200..=299 => Ok(()),
        408 | 409 | 429 | 500..=599 => match retry_after {
            Some(after) => Err(SendError::RetryAfter(what, after.min(MAX_RETRY_AFTER))),
            None => Err(SendError::Retry(what)),
        },
        // The batch is fine; the credentials are not. Dead-lettering would empty the queue
        // into the dead-letter table while an operator fixes a token.
        401 | 403 => Err(SendError::Retry(format!(
            "{what} (check the uplink's credentials)"
        ))),
        404 | 405 | 410 | 415 => Err(SendError::Retry(format!(
            "{what} (the endpoint does not take these requests: check the uplink's url)"
        ))),
        300..=399 => Err(SendError::Retry(format!(
            "{what} (redirects are not followed; set url to the final address)"
        ))),
        _ => Err(SendError::Reject(what)),
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads a little of a success response's body, so a short one leaves the connection
/// reusable; a long one is dropped unread (the connection closes) rather than buffered.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < 64 * 1024 {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => return,
        }
    }
}

/// The first bytes of an error response's body, as one line of text.
async fn body_quote(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_QUOTE {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf[..buf.len().min(BODY_QUOTE)]);
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if buf.len() > BODY_QUOTE {
        line.push('…');
    }
    line.trim().to_string()
}

/// A transport failure as a sentence: what failed, the causes, and a hint. Only the `host`
/// is named: the url's path or query may hold a token.
fn describe(e: reqwest::Error, host: &str) -> SendError {
    let e = e.without_url();
    let causes = chain(&e);
    let msg = if e.is_timeout() {
        format!("request to {host} timed out ({causes})")
    } else if e.is_connect() {
        let hint = if causes.contains("certificate") || causes.contains("Certificate") {
            " (the server's certificate is not trusted: check ca_file)"
        } else {
            ""
        };
        format!("cannot connect to {host}: {causes}{hint}")
    } else {
        format!("request to {host} failed: {causes}")
    };
    SendError::Retry(msg)
}

/// An error and its sources, joined with ": ", without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_adapter::{Reading, Value};

    #[test]
    fn statuses_are_classified_as_the_docs_say() {
        let cases: &[(u16, Option<u64>, &str)] = &[
            (200, None, "ok"),
            (201, None, "ok"),
            (204, None, "ok"),
            (408, None, "retry"),
            (429, Some(7), "retry after 7"),
            (429, None, "retry"),
            (500, None, "retry"),
            (502, None, "retry"),
            (503, Some(99_999), "retry after 3600"),
            (401, None, "retry"),
            (403, None, "retry"),
            (404, None, "retry"),
            (405, None, "retry"),
            (409, Some(1), "retry after 1"),
            (410, None, "retry"),
            (415, None, "retry"),
            (301, None, "retry"),
            (400, None, "reject"),
            (413, None, "reject"),
            (422, None, "reject"),
            (451, None, "reject"),
        ];
        for (code, after, expected) in cases {
            let status = StatusCode::from_u16(*code).expect("valid code");
            let got = match classify(status, after.map(Duration::from_secs), "why") {
                Ok(()) => "ok".to_string(),
                Err(SendError::Retry(_)) => "retry".to_string(),
                Err(SendError::RetryAfter(_, d)) => format!("retry after {}", d.as_secs()),
                Err(SendError::Reject(msg)) => {
                    assert!(
                        msg.contains(&code.to_string()) && msg.contains("why"),
                        "{msg}"
                    );
                    "reject".to_string()
                }
            };
            assert_eq!(&got, expected, "HTTP {code}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("ascii"));
            m
        };
        assert_eq!(retry_after(&h("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after(&h("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&h("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&h("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn body_is_the_documented_envelope() {
        let q = |seq, point: &str, value| Queued {
            seq,
            unsynced: false,
            only_for: None,
            alert: None,
            reading: Reading::new(
                "plc",
                "pump-1",
                point,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                value,
            )
            .with_unit("bar"),
        };
        let origin = payload::Origin {
            gateway: "site-\"01\"",
            queue_id: "abc",
        };
        let b = body(
            origin,
            &[
                q(41, "pressure", Value::F64(3.5)),
                q(42, "running", Value::Bool(true)),
            ],
            true,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).expect("valid JSON");
        assert_eq!(v["v"], 1);
        assert_eq!(v["gateway"], "site-\"01\"");
        assert_eq!(v["queue_id"], "abc");
        assert_eq!(v["historical"], true);
        assert_eq!(v["first_seq"], 41);
        assert_eq!(v["last_seq"], 42);
        assert_eq!(v["count"], 2);
        let r = &v["readings"][0];
        assert_eq!(r["seq"], 41);
        assert_eq!(r["adapter"], "plc");
        assert_eq!(r["device"], "pump-1");
        assert_eq!(r["point"], "pressure");
        assert_eq!(r["value"], 3.5);
        assert_eq!(r["unit"], "bar");
        assert_eq!(r["ts"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["readings"][1]["value"], true);
        assert_eq!(idempotency_key("abc", 41, 42), "abc:41-42");
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let text = br#"{"readings":[1,2,3]}"#.repeat(100);
        let packed = gzip(&text);
        assert!(packed.len() < text.len() / 4);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .expect("valid gzip");
        assert_eq!(out, text);
    }
}

#[cfg(test)]
mod commands_tests;
