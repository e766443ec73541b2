//! The MQTT uplink against the embedded broker, in process: every sequence id arrives, a
//! broker restart loses nothing, an oversized reading is refused alone, bad credentials back
//! off. Mosquitto, TLS and the real binary are exercised in `tests/mqtt.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_adapter::{Adapter, AdapterContext, AdapterError, Reading, Value};

use super::*;
use crate::broker::{Broker, BrokerOptions};
use crate::config::Config;
use crate::pipeline::{start_with, AdapterFactory, Parts, PipelineOptions, Running};
use crate::uplink::{Filter, ForwarderOptions};

fn settings(url: &str, extra: &str) -> MqttSettings {
    let raw =
        MqttUplinkConfig::from_toml(&format!("url = \"{url}\"\n{extra}")).expect("valid section");
    raw.settings("gw", Path::new("."), &[])
        .expect("valid settings")
}

fn recording() -> BrokerOptions {
    BrokerOptions {
        record: true,
        ..BrokerOptions::default()
    }
}

/// Emits the given values as text readings of device `d`, then idles.
struct Emit(Vec<Value>);

impl Adapter for Emit {
    fn run(
        self: Box<Self>,
        mut ctx: AdapterContext,
    ) -> fieldgate_adapter::BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(async move {
            let (src, dev, point) = (
                ctx.id.clone(),
                fieldgate_adapter::Name::from("d"),
                fieldgate_adapter::Name::from("p"),
            );
            for v in self.0 {
                let r = Reading {
                    source: src.clone(),
                    device: dev.clone(),
                    point: point.clone(),
                    ts: SystemTime::now(),
                    value: v,
                    unit: None,
                    quality: fieldgate_adapter::Quality::Good,
                };
                ctx.readings.send(r).await?;
            }
            ctx.shutdown.fired().await;
            Ok(())
        })
    }
}

async fn pipeline(dir: &Path, values: Vec<Value>, uplink: MqttUplink) -> Running {
    let text = format!(
        "[gateway]\nid = \"gw\"\ndata_dir = \"{}\"\n[queue]\nflush_interval = \"20ms\"\n[[adapters]]\nid = \"a\"\ntype = \"simulator\"\n[[adapters.devices]]\nid = \"d\"\n[[adapters.devices.points]]\nname = \"p\"\nwaveform = \"counter\"\ninterval = \"1s\"\n[[uplinks]]\nid = \"mqtt\"\ntype = \"console\"\n",
        dir.display()
    );
    let cfg = Config::from_toml(&dir.join("t.toml"), &text, &[]).expect("valid");
    let factory: AdapterFactory = {
        let values = std::sync::Mutex::new(Some(values));
        Box::new(move || {
            let v = values.lock().expect("lock").take().unwrap_or_default();
            Ok(Box::new(Emit(v)) as Box<dyn Adapter>)
        })
    };
    let parts = Parts {
        commands: None,
        adapters: vec![("a".into(), factory)],
        uplinks: vec![(
            ForwarderOptions {
                id: "mqtt".into(),
                filter: Filter::default(),
                batch_size: 1000,
                retry_min: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                drain: crate::uplink::Drain::Fifo,
                live: Default::default(),
            },
            Box::new(uplink),
        )],
    };
    start_with(&cfg, parts, PipelineOptions::default())
        .await
        .expect("starts")
}

/// Sequence ids in fieldgate batch bodies, with how often each was seen.
fn seqs(recorded: &[(String, bytes::Bytes)]) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    for (topic, body) in recorded {
        if topic.ends_with("/status") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
        for r in v["readings"].as_array().expect("readings") {
            *out.entry(r["seq"].as_u64().expect("seq")).or_insert(0) += 1;
        }
    }
    out
}

async fn wait_delivered(running: &Running, n: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = running.queue().stats().await.expect("stats");
        if s.uplinks[0].delivered + s.dead_letters >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} delivered: {s:?}",
            s.uplinks[0].delivered
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ints(n: i64) -> Vec<Value> {
    (0..n).map(Value::I64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_with_its_sequence_id_and_a_birth_message() {
    let broker = Broker::start("127.0.0.1:0".parse().expect("addr"), recording())
        .await
        .expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let up = MqttUplink::start(settings(&broker.url(), ""), "gw".into());
    let running = pipeline(dir.path(), ints(2000), up).await;
    wait_delivered(&running, 2000, 30).await;
    let rec = broker.recorded();
    let seen = seqs(&rec);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=2000).collect::<Vec<_>>()
    );
    assert!(
        seen.values().all(|&n| n == 1),
        "no duplicates without a failure"
    );
    assert!(rec
        .iter()
        .any(|(t, p)| t == "fieldgate/gw/status" && p.as_ref() == b"online"));
    running.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let first = Broker::start(addr, recording()).await.expect("broker");
    let addr = first.addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let up = MqttUplink::start(settings(&first.url(), ""), "gw".into());
    let running = pipeline(dir.path(), ints(100_000), up).await;
    // Let part of the stream through, then pull the broker out from under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs(&first.recorded()).len() < 10_000 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = first.recorded();
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = Broker::start(addr, recording())
        .await
        .expect("broker restarts on the same port");
    wait_delivered(&running, 100_000, 60).await;
    let mut all = before;
    all.extend(second.recorded());
    let seen = seqs(&all);
    let missing: Vec<u64> = (1..=100_000).filter(|s| !seen.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} sequence ids lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    // What was in flight when the link dropped is sent again: at most the window of batches.
    let bound = u32::try_from(WINDOW * 1000).unwrap_or(u32::MAX);
    assert!(
        duplicates <= bound,
        "duplicates ({duplicates}) are bounded by the in-flight window ({bound})"
    );
    running.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reading_is_dead_lettered_without_a_reconnect_loop() {
    let broker = Broker::start("127.0.0.1:0".parse().expect("addr"), recording())
        .await
        .expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let up = MqttUplink::start(settings(&broker.url(), ""), "gw".into());
    let values = vec![
        Value::I64(1),
        Value::Text("x".repeat(400_000)),
        Value::I64(3),
    ];
    let running = pipeline(dir.path(), values, up).await;
    wait_delivered(&running, 3, 30).await;
    let s = running.queue().stats().await.expect("stats");
    assert_eq!((s.dead_letters, s.uplinks[0].delivered), (1, 2));
    assert_eq!(
        seqs(&broker.recorded()).keys().copied().collect::<Vec<_>>(),
        [1, 3]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        broker
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "no reconnects"
    );
    running.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_and_retried_with_backoff() {
    let opts = BrokerOptions {
        credentials: Some(("gw".into(), "right".into())),
        ..BrokerOptions::default()
    };
    let broker = Broker::start("127.0.0.1:0".parse().expect("addr"), opts)
        .await
        .expect("broker");
    let up = MqttUplink::start(
        settings(&broker.url(), "username = \"gw\"\npassword = \"wrong\""),
        "gw".into(),
    );
    let mut state = up.link_state();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(
            |s| matches!(s, LinkState::Down(Some(e)) if e.contains("bad username or password")),
        ),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(refused, "the refusal is reported: {:?}", *state.borrow());
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Backoff 1s, 2s, 4s (each jittered to 50-100%): at most 4 attempts in ~4 s, not hundreds.
    let attempts = broker
        .stats()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} connection attempts"
    );
    drop(up);
}
