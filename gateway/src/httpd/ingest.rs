//! [`IngestServer`]: an HTTPS endpoint that takes the HTTPS uplink's batches, the way a
//! cloud ingest service would: it checks the bearer token, decompresses, parses, and
//! de-duplicates by idempotency key. Faults can be scripted (a status with `Retry-After`, a
//! response that comes too late) and the server can go down and come back on the same port.
//! Used by the end-to-end tests and `fieldgate bench --https`.
//!
//! It also plays the cloud's side of the command poll (docs/commands.md): commands queued with
//! [`IngestServer::push_command`] are handed out, and removed, by `GET .../commands` (a JSON
//! array; `204` when there are none), and every `POST .../commands/responses` body is kept
//! for [`IngestServer::responses`]. These requests check the bearer token like the rest,
//! have their own fault scripts and are not counted in [`IngestServer::seen`].

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate_adapter::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use super::pki::Pki;
use super::{serve, text, Handler};

/// How the server runs.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Serve TLS (with the server certificate of the generated PKI); otherwise plain HTTP.
    pub tls: bool,
    /// Require a client certificate signed by the PKI's CA.
    pub client_auth: bool,
    /// Require `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// Parse and keep every body (tests); otherwise only count readings (benchmark).
    pub record: bool,
}

/// A scripted answer for the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (the batch is not taken).
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header value, if any.
        retry_after: Option<String>,
        /// Response body.
        body: String,
    },
    /// Take the batch, then answer only after this long (longer than the client waits: the
    /// response is lost and the client sends the batch again).
    Late(Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// Its idempotency key.
    pub key: Option<String>,
}

/// A batch the server took (first time its key was seen).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its idempotency key.
    pub key: Option<String>,
    /// It came gzipped.
    pub gzip: bool,
    /// Readings it held (`count`).
    pub count: u64,
    /// The parsed body (with `record`).
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Fault>,
    seen: Vec<Seen>,
    keys: HashSet<String>,
    batches: Vec<Batch>,
    duplicates: u64,
    readings: u64,
    /// Commands waiting for the next poll.
    commands: VecDeque<serde_json::Value>,
    /// Polls answered (any status).
    polls: u64,
    /// Scripted answers for the next polls.
    poll_script: VecDeque<Fault>,
    /// Response bodies taken, in arrival order.
    responses: Vec<serde_json::Value>,
    /// Scripted answers for the next response posts.
    response_script: VecDeque<Fault>,
}

#[derive(Debug)]
struct Ingest {
    opts: IngestOptions,
    state: Mutex<State>,
}

/// The in-process ingest endpoint; stops when dropped.
#[derive(Debug)]
pub struct IngestServer {
    addr: SocketAddr,
    pki: Pki,
    tls: Option<Arc<rustls::ServerConfig>>,
    ingest: Arc<Ingest>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl IngestServer {
    /// Starts on a free port of 127.0.0.1 (inside a tokio runtime).
    pub async fn start(opts: IngestOptions) -> std::io::Result<IngestServer> {
        let pki = Pki::generate("ingest").map_err(std::io::Error::other)?;
        let tls = if opts.tls {
            Some(
                pki.server_config(opts.client_auth)
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut server = IngestServer {
            addr: listener.local_addr()?,
            pki,
            tls,
            ingest: Arc::new(Ingest {
                opts,
                state: Mutex::new(State::default()),
            }),
            task: None,
        };
        server.run(listener);
        Ok(server)
    }

    fn run(&mut self, listener: TcpListener) {
        let handler: Arc<dyn Handler> = Arc::clone(&self.ingest) as Arc<dyn Handler>;
        self.task = Some(tokio::spawn(serve(listener, self.tls.clone(), handler)));
    }

    /// `https://127.0.0.1:PORT/ingest` (or `http://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/ingest", self.addr)
    }

    /// `https://127.0.0.1:PORT/commands` (or `http://`): where the uplink polls for
    /// commands; its responses go to this url + `/responses`.
    pub fn commands_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/commands", self.addr)
    }

    /// Queues a command for the next poll.
    pub fn push_command(&self, command: serde_json::Value) {
        self.ingest.lock().commands.push_back(command);
    }

    /// Command responses posted so far, in arrival order (a response sent again after a lost
    /// answer is here twice).
    pub fn responses(&self) -> Vec<serde_json::Value> {
        self.ingest.lock().responses.clone()
    }

    /// Polls for commands so far (any outcome but a wrong bearer token).
    pub fn command_polls(&self) -> u64 {
        self.ingest.lock().polls
    }

    /// Answers the next polls for commands with these faults, in order. `Status` hands out
    /// nothing; `Late` hands out the queued commands but answers too late (they are lost).
    pub fn script_polls(&self, faults: impl IntoIterator<Item = Fault>) {
        self.ingest.lock().poll_script.extend(faults);
    }

    /// Answers the next response posts with these faults, in order. `Status` does not keep
    /// the response; `Late` keeps it but answers too late.
    pub fn script_responses(&self, faults: impl IntoIterator<Item = Fault>) {
        self.ingest.lock().response_script.extend(faults);
    }

    /// The PKI whose CA signed the server certificate (and can sign clients).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Closes the listener and cuts every connection, as a crashed server would.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The aborted accept loop releases the port when its task is dropped; retry briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 250 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.run(listener);
        Ok(())
    }

    /// Answers the next requests with these faults, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.ingest.lock().script.extend(faults);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.ingest.lock().seen.clone()
    }

    /// The batches taken (duplicates by idempotency key left out).
    pub fn batches(&self) -> Vec<Batch> {
        self.ingest.lock().batches.clone()
    }

    /// Requests whose idempotency key had been seen before (answered 200, not taken again).
    pub fn duplicates(&self) -> u64 {
        self.ingest.lock().duplicates
    }

    /// Readings taken (duplicates left out).
    pub fn readings(&self) -> u64 {
        self.ingest.lock().readings
    }

    /// With `record`: how many times each sequence id arrived in a batch that was taken.
    pub fn seqs(&self) -> BTreeMap<u64, u32> {
        let mut out = BTreeMap::new();
        for b in &self.ingest.lock().batches {
            let Some(readings) = b.body.as_ref().and_then(|v| v["readings"].as_array()) else {
                continue;
            };
            for r in readings {
                if let Some(seq) = r["seq"].as_u64() {
                    *out.entry(seq).or_insert(0) += 1;
                }
            }
        }
        out
    }
}

impl Drop for IngestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Ingest {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log(&self, status: u16, key: Option<String>) {
        self.lock().seen.push(Seen {
            at: Instant::now(),
            status,
            key,
        });
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let key = header("idempotency-key");
        let gzip = header("content-encoding").is_some_and(|e| e == "gzip");
        let bearer_ok = self.opts.bearer.as_ref().is_none_or(|token| {
            header("authorization").as_deref() == Some(&format!("Bearer {token}"))
        });
        let path = req.uri().path().trim_end_matches('/');
        if path.ends_with("/commands") || path.ends_with("/commands/responses") {
            if !bearer_ok {
                return text(401, "missing or wrong bearer token");
            }
            return if path.ends_with("/responses") {
                self.command_response(req).await
            } else {
                self.poll(&req).await
            };
        }
        if !bearer_ok {
            self.log(401, key);
            return text(401, "missing or wrong bearer token");
        }
        // The body is read before any scripted answer: answering early and closing with the
        // body unread would reset the connection, and the client would see no status at all.
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(400, "cannot read the body"),
        };
        let fault = self.lock().script.pop_front();
        if let Some(Fault::Status {
            status,
            retry_after,
            body,
        }) = &fault
        {
            self.log(*status, key);
            return status_response(*status, retry_after.as_deref(), body);
        }
        let body = if gzip {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .is_err()
            {
                self.log(400, key);
                return text(400, "bad gzip");
            }
            Bytes::from(out)
        } else {
            body
        };
        let (count, parsed) = if self.opts.record {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) if v["v"] == 1 && v["readings"].is_array() => {
                    (v["count"].as_u64().unwrap_or(0), Some(v))
                }
                _ => {
                    self.log(400, key);
                    return text(400, "not a fieldgate batch");
                }
            }
        } else {
            (count_field(&body).unwrap_or(0), None)
        };
        {
            let mut st = self.lock();
            let fresh = key.as_ref().is_none_or(|k| st.keys.insert(k.clone()));
            if fresh {
                st.readings += count;
                st.batches.push(Batch {
                    key: key.clone(),
                    gzip,
                    count,
                    body: parsed,
                });
            } else {
                st.duplicates += 1;
            }
        }
        if let Some(Fault::Late(d)) = fault {
            tokio::time::sleep(d).await;
        }
        self.log(200, key);
        text(200, "ok")
    }
}

impl Ingest {
    /// `GET .../commands`: hands out the queued commands and forgets them.
    async fn poll(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::GET {
            return text(405, "commands are polled with GET");
        }
        let (fault, commands) = {
            let mut st = self.lock();
            st.polls += 1;
            match st.poll_script.pop_front() {
                Some(Fault::Status {
                    status,
                    retry_after,
                    body,
                }) => return status_response(status, retry_after.as_deref(), &body),
                fault => (fault, st.commands.drain(..).collect::<Vec<_>>()),
            }
        };
        if let Some(Fault::Late(d)) = fault {
            tokio::time::sleep(d).await;
        }
        if commands.is_empty() {
            return text(204, "");
        }
        let mut r = text(200, serde_json::Value::Array(commands).to_string());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    }

    /// `POST .../commands/responses`: keeps the response.
    async fn command_response(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::POST {
            return text(405, "responses are posted with POST");
        }
        let json = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        // Read before answering, as for batches.
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(400, "cannot read the body"),
        };
        let fault = self.lock().response_script.pop_front();
        if let Some(Fault::Status {
            status,
            retry_after,
            body,
        }) = &fault
        {
            return status_response(*status, retry_after.as_deref(), body);
        }
        if !json {
            return text(415, "a response is application/json");
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => self.lock().responses.push(v),
            Err(_) => return text(400, "a response is a JSON value"),
        }
        if let Some(Fault::Late(d)) = fault {
            tokio::time::sleep(d).await;
        }
        text(200, "ok")
    }
}

/// A scripted status answer, with `Retry-After` if given.
fn status_response(status: u16, retry_after: Option<&str>, body: &str) -> Response<Full<Bytes>> {
    let mut r = text(status, body.to_string());
    if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

impl Handler for Ingest {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> BoxFuture<'static, Response<Full<Bytes>>> {
        Box::pin(self.answer(req))
    }
}

/// `"count":N` from the envelope's head, without parsing the readings.
fn count_field(body: &[u8]) -> Option<u64> {
    let head = &body[..body.len().min(512)];
    let at = head.windows(8).position(|w| w == b"\"count\":")? + 8;
    let digits: Vec<u8> = head[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
