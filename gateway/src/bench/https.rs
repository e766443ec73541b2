//! `fieldgate bench --https`: the HTTPS uplink against an HTTPS ingest server in the same
//! process (hyper + rustls, a certificate made for the run), beside a bare reqwest client
//! posting the same bodies the same way.
//!
//! 1. **bare reqwest client**: one batch's body, built once, POSTed again and again over TLS
//!    with the same number of requests in flight, until `n` readings' worth were answered
//!    200. No queue, no encoding: the ceiling of this server and client on this machine.
//! 2. **backlog drain**: `n` readings queued first (not timed), then a pipeline with only the
//!    HTTPS uplink drains them; plain JSON, then gzip.
//! 3. **live**: the simulator at full rate → queue → HTTPS.
//!
//! The server counts readings from each body's `"count"` without parsing the rest, and it
//! shares the machine's cores with the gateway: on a 2-core machine both phases pay for it.

use std::path::Path;
use std::sync::Arc;

use super::{bench_dir, drain_phase, sample_queued, BenchReport, Phase, Probe};
use crate::httpd::ingest::{IngestOptions, IngestServer};
use crate::queue::QueueError;
use crate::uplink::https::{body, HttpsSettings, HttpsUplink, HttpsUplinkConfig};

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Incompatible(e.to_string())
}

fn settings(server: &IngestServer, dir: &Path, gzip: bool) -> Result<HttpsSettings, QueueError> {
    let ca = dir.join("bench-ingest-ca.pem");
    std::fs::write(&ca, &server.pki().ca).map_err(err)?;
    let raw = HttpsUplinkConfig::from_toml(&format!(
        "url = \"{}\"\nca_file = \"{}\"\ngzip = {gzip}",
        server.url(),
        ca.display()
    ))
    .map_err(err)?;
    raw.settings(Path::new("."), &[])
        .map_err(|p| err(format!("{p:?}")))
}

/// Runs the HTTPS phases with `n` readings each.
pub async fn run(dir: &Path, n: u64, batch: usize) -> Result<BenchReport, QueueError> {
    let dir = bench_dir(dir)?;
    let server = IngestServer::start(IngestOptions {
        tls: true,
        ..IngestOptions::default()
    })
    .await
    .map_err(err)?;
    let plain = settings(&server, &dir, false)?;
    let gzip = settings(&server, &dir, true)?;
    let mut report = BenchReport::default();
    report.phases.push(Phase {
        name: format!(
            "bare reqwest client, prebuilt bodies ({} in flight)",
            plain.max_in_flight
        ),
        ..bare_client(&plain, n, batch).await?
    });
    for (name, s, live) in [
        (
            format!("https: drain a queued backlog of {n}"),
            &plain,
            false,
        ),
        (
            format!("https: drain a queued backlog of {n}, gzip"),
            &gzip,
            false,
        ),
        ("https: live sim→queue→https".to_string(), &plain, true),
    ] {
        let before = server.readings();
        let phase = drain_phase(&dir, "bench-https.db", n, batch, live, || {
            Box::new(HttpsUplink::new(s.clone(), "bench".into()))
        })
        .await?;
        let taken = server.readings() - before;
        if taken < n {
            return Err(err(format!(
                "{name}: the server took {taken} of {n} readings"
            )));
        }
        report.phases.push(Phase { name, ..phase });
    }
    report.set_peak_rss();
    Ok(report)
}

/// POSTs one prebuilt body of `batch` readings until `n` readings' worth were answered, with
/// the uplink's number of requests in flight.
async fn bare_client(s: &HttpsSettings, n: u64, batch: usize) -> Result<Phase, QueueError> {
    let items = sample_queued(batch);
    let payload = bytes::Bytes::from(body(
        crate::payload::Origin {
            gateway: "bench",
            queue_id: "0000000000000000",
        },
        &items,
        false,
    ));
    // The uplink's own client settings (TLS, pool), without anything else of the uplink.
    let client = crate::uplink::https::build_client(s).map_err(err)?;
    let rounds = n.div_ceil(batch as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = Probe::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..s.max_in_flight {
        let (client, url, payload, next) = (
            client.clone(),
            s.url.clone(),
            payload.clone(),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < rounds {
                let r = client
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .body(payload.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status()));
                }
                let _ = r.bytes().await;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(err)?.map_err(err)?;
    }
    Ok(probe.phase(String::new(), rounds * batch as u64))
}
