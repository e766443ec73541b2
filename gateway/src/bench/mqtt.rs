//! `fieldgate bench --mqtt URL`: the MQTT uplink against a real broker, beside a bare
//! rumqttc publisher sending the same payloads in the same run.
//!
//! 1. **bare rumqttc publisher**: the messages fieldgate builds for one batch, published again
//!    and again at QoS 1 with the same in-flight window, until `n` readings' worth were
//!    acknowledged. No queue, no tracking: the broker's ceiling for these payloads.
//! 2. **backlog drain**: `n` readings are queued first (not timed), then a pipeline with only
//!    the MQTT uplink drains them.
//! 3. **live**: the simulator at full rate → queue → MQTT.

use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{bench_dir, drain_phase, sample_queued, BenchReport, Phase, Probe};
use crate::queue::QueueError;
use crate::uplink::mqtt::{build_messages, MqttSettings, MqttUplink, MqttUplinkConfig};

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Incompatible(e.to_string())
}

fn settings(url: &str) -> Result<MqttSettings, QueueError> {
    let raw = MqttUplinkConfig::from_toml(&format!(
        "url = \"{url}\"\nstatus_topic = \"\"\nclient_id = \"fieldgate-bench\""
    ))
    .map_err(err)?;
    raw.settings("bench", Path::new("."), &[])
        .map_err(|p| err(format!("{p:?}")))
}

/// Runs the three MQTT phases with `n` readings each.
pub async fn run(url: &str, dir: &Path, n: u64, batch: usize) -> Result<BenchReport, QueueError> {
    let dir = bench_dir(dir)?;
    let s = settings(url)?;
    let mut report = BenchReport::default();
    report.phases.push(Phase {
        name: "bare rumqttc publisher, prebuilt (QoS 1)".into(),
        ..bare_publisher(&s, n, batch, false).await?
    });
    report.phases.push(Phase {
        name: "bare rumqttc publisher, encoding (QoS 1)".into(),
        ..bare_publisher(&s, n, batch, true).await?
    });
    report.phases.push(Phase {
        name: format!("mqtt: drain a queued backlog of {n}"),
        ..drain_phase(&dir, "bench-mqtt.db", n, batch, false, || {
            Box::new(MqttUplink::start(s.clone(), "bench".into()))
        })
        .await?
    });
    report.phases.push(Phase {
        name: "mqtt: live sim→queue→mqtt".into(),
        ..drain_phase(&dir, "bench-mqtt.db", n, batch, true, || {
            Box::new(MqttUplink::start(s.clone(), "bench".into()))
        })
        .await?
    });
    report.set_peak_rss();
    Ok(report)
}

/// Publishes `n` readings' worth of messages at QoS 1 and waits for every PUBACK. With
/// `encode`, each batch's messages are built from the in-memory readings inside the loop (what
/// any publisher must do); without, one batch's messages are built once and sent again and
/// again (the broker's ceiling for these payloads).
async fn bare_publisher(
    s: &MqttSettings,
    n: u64,
    batch: usize,
    encode: bool,
) -> Result<Phase, QueueError> {
    let items = sample_queued(batch);
    let (messages, _) = build_messages(
        s,
        crate::payload::Origin {
            gateway: "bench",
            queue_id: "0000000000000000",
        },
        &items,
        false,
    );
    let settings = s.clone();
    let rounds = n.div_ceil(batch as u64);
    let total = rounds * messages.len() as u64;
    let mut o = MqttOptions::new("fieldgate-bench-bare", s.host.clone(), s.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(s.inflight);
    o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
    let (client, mut el) = AsyncClient::new(o, usize::from(s.inflight) * 2);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    // Connect first, outside the measurement.
    loop {
        match el.poll().await.map_err(err)? {
            Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    let probe = Probe::now();
    let publisher = tokio::spawn(async move {
        for _ in 0..rounds {
            let built;
            let round = if encode {
                built = build_messages(
                    &settings,
                    crate::payload::Origin {
                        gateway: "bench",
                        queue_id: "0000000000000000",
                    },
                    &items,
                    false,
                )
                .0;
                &built
            } else {
                &messages
            };
            for m in round {
                if client
                    .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.map_err(err)? {
            acked += 1;
        }
    }
    let phase = probe.phase(String::new(), rounds * batch as u64);
    let _ = publisher.await;
    Ok(phase)
}
