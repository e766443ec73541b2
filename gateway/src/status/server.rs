//! The local HTTP endpoint (`[http]`): the status page, its JSON, Prometheus metrics, health
//! probes and reload.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the status page (one HTML document, no external assets) |
//! | `GET /api/status` | the [`Snapshot`](super::Snapshot) as JSON |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | liveness: 200 `alive` while the pipeline works (the queue writer beats and the queue answers), else 503 |
//! | `GET /readyz` | readiness: 200 `ready` when alive, the queue readable and no uplink known to be down, else 503 |
//! | `POST /api/reload` | re-reads the config file and applies it (as SIGHUP does); 200 with what changed, 422 with why it was refused |
//!
//! With `[http] token`, every path but the two probes needs `Authorization: Bearer <token>`
//! (or `?token=<token>`, for a browser; the page passes it on to its API calls).
//!
//! Against web pages the operator has open in the same browser: without a token, a request
//! must name the host by an IP address or `localhost` (a DNS-rebinding page names its own
//! domain), and a reload must come as `Content-Type: application/json` without a foreign
//! `Origin` (a form on another site can send neither).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fieldgate_adapter::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio::sync::{mpsc, oneshot};

use super::Board;
use crate::httpd::{self, Handler};
use crate::queue::QueueHandle;
use crate::queue::QueueStats;
use crate::watchdog::Heartbeat;

/// The status page.
pub const PAGE: &str = include_str!("page.html");

/// How long the writer may go without beating before the gateway counts as stalled.
const STALL: Duration = Duration::from_secs(10);

/// A request to re-read and apply the config file; the reply says what changed, or why the
/// new config was refused.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Where the outcome goes (none for SIGHUP).
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Endpoint {
    /// The live status.
    pub board: Arc<Board>,
    /// The queue, for its stats.
    pub queue: QueueHandle,
    /// `[queue] max_bytes`.
    pub max_bytes: Option<u64>,
    /// The writer's heartbeat.
    pub heartbeat: Arc<Heartbeat>,
    /// Where reload requests go.
    pub reloads: Option<mpsc::Sender<ReloadRequest>>,
    /// `[http] token`.
    pub token: Option<String>,
    /// The last queue stats, shared by requests that come within a second of each other
    /// (and only one query at a time: probes must not queue up ahead of the writer).
    pub stats: Arc<tokio::sync::Mutex<Option<CachedStats>>>,
}

/// Queue stats and when they were read.
pub type CachedStats = (tokio::time::Instant, Result<QueueStats, String>);

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("max_bytes", &self.max_bytes)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A snapshot of the board and the queue now (`points`: with every point's last value;
    /// the probes and metrics do without).
    pub async fn snapshot(&self, points: bool) -> super::Snapshot {
        let stats = {
            let mut cached = self.stats.lock().await;
            match &*cached {
                Some((at, s)) if at.elapsed() < Duration::from_secs(1) => s.clone(),
                _ => {
                    let s = match tokio::time::timeout(Duration::from_secs(2), self.queue.stats())
                        .await
                    {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the queue did not answer within 2 s".to_string()),
                    };
                    *cached = Some((tokio::time::Instant::now(), s.clone()));
                    s
                }
            }
        };
        let alive = stats.is_ok() && self.heartbeat.writer_age() < STALL;
        self.board.snapshot(
            stats.as_ref().map_err(Clone::clone),
            self.max_bytes,
            alive,
            points,
            SystemTime::now(),
        )
    }

    /// Without a token, the `Host` must be an IP address or `localhost` (DNS rebinding).
    fn host_ok(&self, req: &Request<Incoming>) -> bool {
        if self.token.is_some() {
            return true;
        }
        let Some(host) = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
        else {
            return true; // HTTP/1.0 clients; browsers always send it
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
    }

    /// A reload must not be something a page on another site can send.
    fn reload_ok(req: &Request<Incoming>) -> bool {
        let header =
            |name: hyper::header::HeaderName| req.headers().get(name).and_then(|h| h.to_str().ok());
        let json =
            header(hyper::header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"));
        let same_origin = match (header(hyper::header::ORIGIN), header(hyper::header::HOST)) {
            (None, _) => true,
            (Some(origin), Some(host)) => origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o == host),
            (Some(_), None) => false,
        };
        json && same_origin
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let bearer = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let query = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        bearer
            .into_iter()
            .chain(query)
            .any(|given| same(given.as_bytes(), token.as_bytes()))
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if !self.host_ok(&req) {
            return typed(
                421,
                "text/plain; charset=utf-8",
                "name this gateway by its IP address or localhost, or set [http] token\n",
            );
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                let s = self.snapshot(false).await;
                if s.alive {
                    typed(200, "text/plain; charset=utf-8", "alive\n")
                } else {
                    typed(503, "text/plain; charset=utf-8", "stalled\n")
                }
            }
            (&Method::GET, "/readyz") => {
                let s = self.snapshot(false).await;
                if s.ready {
                    typed(200, "text/plain; charset=utf-8", "ready\n")
                } else {
                    typed(
                        503,
                        "text/plain; charset=utf-8",
                        format!("not ready: {} problem(s)\n", s.problems.len()),
                    )
                }
            }
            _ if !self.authorized(&req) => {
                let mut r = typed(
                    401,
                    "text/plain; charset=utf-8",
                    "a bearer token is needed ([http] token): send Authorization: Bearer <token>, or open /?token=<token>\n",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                r
            }
            (&Method::GET, "/") => typed(200, "text/html; charset=utf-8", PAGE),
            (&Method::GET, "/api/status") => {
                let s = self.snapshot(true).await;
                match serde_json::to_vec(&s) {
                    Ok(body) => typed(200, "application/json", body),
                    Err(e) => httpd::text(500, e.to_string()),
                }
            }
            (&Method::GET, "/metrics") => {
                let s = self.snapshot(false).await;
                typed(
                    200,
                    super::metrics::CONTENT_TYPE,
                    super::metrics::render(&s),
                )
            }
            (&Method::POST, "/api/reload") if !Self::reload_ok(&req) => typed(
                403,
                "text/plain; charset=utf-8",
                "a reload is sent with Content-Type: application/json and no foreign Origin (`fieldgate reload` does)\n",
            ),
            (&Method::POST, "/api/reload") => {
                let Some(reloads) = &self.reloads else {
                    return httpd::text(503, "this gateway does not reload\n");
                };
                let (tx, rx) = oneshot::channel();
                if reloads
                    .send(ReloadRequest { reply: Some(tx) })
                    .await
                    .is_err()
                {
                    return httpd::text(503, "the gateway is stopping\n");
                }
                match rx.await {
                    Ok(Ok(done)) => typed(200, "text/plain; charset=utf-8", format!("{done}\n")),
                    Ok(Err(why)) => typed(422, "text/plain; charset=utf-8", format!("{why}\n")),
                    Err(_) => httpd::text(503, "the gateway is stopping\n"),
                }
            }
            (_, "/" | "/api/status" | "/metrics" | "/healthz" | "/readyz" | "/api/reload") => {
                httpd::text(405, "method not allowed\n")
            }
            _ => httpd::text(
                404,
                "not found: try /, /api/status, /metrics, /healthz, /readyz or POST /api/reload\n",
            ),
        }
    }
}

impl Handler for Endpoint {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Response<Full<Bytes>>> {
        Box::pin(self.answer(req))
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn typed(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = httpd::text(status, body);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Binds `addr` and serves `endpoint` until the returned task is aborted. Logs the address
/// it listens on (with port 0, the one the kernel chose).
pub async fn start(
    addr: SocketAddr,
    endpoint: Endpoint,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && endpoint.token.is_none() {
        tracing::warn!(listen = %local, "the status endpoint listens beyond this machine without a token: anyone on the network can read the status and reload the config; set [http] token");
    }
    tracing::info!(listen = %local, "status endpoint listening (/, /api/status, /metrics, /healthz, /readyz)");
    let task = tokio::spawn(httpd::serve(listener, None, Arc::new(endpoint)));
    Ok((local, task))
}
