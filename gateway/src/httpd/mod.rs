//! A small HTTP/1.1 server (hyper), over plain TCP or rustls: the in-process peer of the
//! HTTPS uplink's tests and benchmark ([`ingest`]).
//!
//! [`serve`] accepts connections until it is dropped or shut down; each connection runs as
//! its own task, owned by the accept loop, so stopping the server also cuts every
//! connection — the way a server that crashes looks to a client. A client gets
//! [`HEADER_TIMEOUT`] to send its request head, and at most [`MAX_CONNECTIONS`] are served
//! at once (more are closed at once), so idle or slow clients cannot use up the process's
//! file descriptors, which the uplinks need.

pub mod ingest;
pub mod pki;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use fieldgate_adapter::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long a client has to send a request's head.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A request handler: one response per request.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`.
    fn handle(self: Arc<Self>, req: Request<Incoming>)
        -> BoxFuture<'static, Response<Full<Bytes>>>;
}

/// Accepts connections on `listener` and answers their requests with `handler` until the
/// returned future is dropped (which closes the listener and every connection).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors, say: back off a little rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if connections.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(handler.handle(req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            match acceptor {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    // A failed handshake (an untrusted client certificate, say) just ends the
                    // connection; the client sees the TLS alert.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
            }
        });
    }
}

/// A response with `status` and a text body.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r
}
