use super::*;
use crate::uplink::mqtt::config::MqttUplinkConfig;
use fieldgate_adapter::{Quality, Reading, Value};
use std::path::Path;

const GW: Origin<'static> = Origin {
    gateway: "gw",
    queue_id: "00c0ffee00c0ffee",
};

fn settings(extra: &str) -> MqttSettings {
    let raw = MqttUplinkConfig::from_toml(&format!("url = \"mqtt://localhost\"\n{extra}"))
        .expect("valid section");
    raw.settings("gw", Path::new("."), &[])
        .expect("valid settings")
}

fn q(seq: u64, device: &str, point: &str, value: Value) -> Queued {
    Queued {
        unsynced: false,
        only_for: None,
        alert: None,
        seq,
        reading: Reading::new(
            "plc",
            device,
            point,
            UNIX_EPOCH + Duration::from_millis(1_763_704_800_250),
            value,
        ),
    }
}

fn json(m: &Message) -> serde_json::Value {
    serde_json::from_slice(&m.payload).expect("a message body is JSON")
}

#[test]
fn batches_group_by_device_in_order_and_carry_the_sequence_range() {
    let s = settings("");
    let batch = [
        q(1, "pump-1", "p", Value::F64(1.5)),
        q(2, "pump-2", "p", Value::I64(2)),
        q(3, "pump-1", "t", Value::Bool(true)),
    ];
    let (msgs, rejected) = build(&s, GW, &batch, false);
    assert!(rejected.is_empty());
    assert_eq!(
        msgs.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["fieldgate/gw/plc/pump-1", "fieldgate/gw/plc/pump-2"]
    );
    let first = json(&msgs[0]);
    assert_eq!(
        first,
        serde_json::json!({
            "v": 1, "gateway": "gw", "queue_id": "00c0ffee00c0ffee", "adapter": "plc", "device": "pump-1", "historical": false,
            "readings": [
                {"seq": 1, "point": "p", "ts": "2025-11-21T06:00:00.250000Z", "type": "float", "value": 1.5, "quality": "good"},
                {"seq": 3, "point": "t", "ts": "2025-11-21T06:00:00.250000Z", "type": "bool", "value": true, "quality": "good"}
            ],
            "first_seq": 1, "last_seq": 3, "count": 2
        })
    );
    assert_eq!(msgs[0].readings, 2);
}

#[test]
fn messages_respect_the_count_and_byte_limits() {
    let batch: Vec<_> = (1..=1000)
        .map(|i| q(i, "d", "p", Value::I64(i as i64)))
        .collect();
    let (by_count, _) = build(
        &settings("max_readings_per_message = 300"),
        GW,
        &batch,
        false,
    );
    assert_eq!(
        by_count.iter().map(|m| m.readings).collect::<Vec<_>>(),
        [300, 300, 300, 100]
    );
    let (by_size, _) = build(&settings("max_message_bytes = \"4KiB\""), GW, &batch, false);
    assert!(by_size.len() > 10);
    assert!(
        by_size.iter().all(|m| m.payload.len() <= 4096),
        "every message under 4 KiB"
    );
    assert_eq!(by_size.iter().map(|m| m.readings).sum::<usize>(), 1000);
    // The ranges chain: nothing skipped, nothing twice.
    let mut next = 1;
    for m in &by_size {
        let v = json(m);
        assert_eq!(v["first_seq"], next);
        next = v["last_seq"].as_u64().expect("last_seq") + 1;
    }
    assert_eq!(next, 1001);
}

#[test]
fn a_reading_too_large_for_the_broker_is_refused_alone() {
    let s = settings("max_message_bytes = \"2KiB\"\nmax_packet_size = \"4KiB\"");
    let batch = [
        q(1, "d", "p", Value::I64(1)),
        q(2, "d", "blob", Value::Text("x".repeat(5000))),
        q(3, "d", "big-but-fits", Value::Text("y".repeat(3000))),
    ];
    let (msgs, rejected) = build(&s, GW, &batch, false);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, 2);
    assert!(
        rejected[0].1.contains("above max_packet_size (4096 bytes)"),
        "{}",
        rejected[0].1
    );
    let carried: Vec<u64> = msgs
        .iter()
        .flat_map(|m| {
            json(m)["readings"]
                .as_array()
                .expect("readings")
                .iter()
                .map(|r| r["seq"].as_u64().expect("seq"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        carried,
        [1, 3],
        "a reading above the soft limit still goes, alone"
    );
}

#[test]
fn per_value_mode_puts_each_point_on_its_own_topic() {
    let s = settings("mode = \"per_value\"");
    let mut bad = q(8, "tank 1", "level", Value::F64(2.25));
    bad.reading.quality = Quality::Stale("timeout".into());
    let batch = [q(7, "tank+1", "valve#a", Value::Bool(false)), bad];
    let (msgs, _) = build(&s, GW, &batch, false);
    assert_eq!(
        msgs[0].topic, "fieldgate/gw/plc/tank_1/valve_a",
        "wildcards are replaced"
    );
    assert_eq!(msgs[0].payload, b"false");
    assert_eq!(msgs[1].topic, "fieldgate/gw/plc/tank 1/level");
    assert_eq!(msgs[1].payload, b"2.25");
    let (msgs, _) = build(
        &settings("mode = \"per_value\"\nvalue_format = \"json\""),
        GW,
        &batch,
        false,
    );
    let v = json(&msgs[1]);
    assert_eq!(
        (
            v["seq"].as_u64(),
            v["quality"].as_str(),
            v["reason"].as_str()
        ),
        (Some(8), Some("stale"), Some("timeout"))
    );
}

#[test]
fn thingsboard_body_is_the_gateway_telemetry_format() {
    let s = settings("preset = \"thingsboard\"\nusername = \"token\"");
    let (msgs, _) = build(
        &s,
        GW,
        &[
            q(1, "Pump 1", "pressure", Value::F64(3.5)),
            q(2, "Pump 1", "on", Value::Bool(true)),
        ],
        false,
    );
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].topic, "v1/gateway/telemetry");
    assert_eq!(
        json(&msgs[0]),
        serde_json::json!({"Pump 1": [
            {"ts": 1_763_704_800_250u64, "values": {"pressure": 3.5}},
            {"ts": 1_763_704_800_250u64, "values": {"on": true}}
        ]})
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limiter_spaces_publishes() {
    let mut l = RateLimiter::new(100.0);
    let start = tokio::time::Instant::now();
    for _ in 0..300 {
        l.acquire().await;
    }
    // A burst of 100, then 200 more at 100/s.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100),
        "{took:?}"
    );
}

fn raised(mut item: Queued) -> Queued {
    item.alert = Some(crate::queue::Alert {
        rule: "tank-high".into(),
        state: crate::queue::AlertState::Raised,
        level: crate::queue::AlertLevel::High,
        threshold: 3.5,
        severity: crate::queue::Severity::Critical,
    });
    item
}

#[test]
fn alerts_ride_in_the_batch_or_on_their_own_topic() {
    let batch = [
        q(1, "tank-1", "level", Value::F64(3.2)),
        raised(q(2, "tank-1", "level", Value::F64(3.6))),
    ];
    let (msgs, _) = build(&settings(""), GW, &batch, false);
    assert_eq!(msgs.len(), 1, "without alert_topic, in the device's batch");
    assert_eq!(
        json(&msgs[0])["readings"][1]["alert"],
        serde_json::json!({"rule": "tank-high", "state": "raised", "level": "high", "threshold": 3.5, "severity": "critical"})
    );
    assert!(json(&msgs[0])["readings"][0].get("alert").is_none());

    let s = settings("alert_topic = \"site/{gateway}/alerts/{device}\"");
    let (msgs, rejected) = build(&s, GW, &batch, false);
    assert!(rejected.is_empty());
    assert_eq!(
        msgs.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["site/gw/alerts/tank-1", "fieldgate/gw/plc/tank-1"]
    );
    let alert = json(&msgs[0]);
    assert_eq!(alert["seq"], 2);
    assert_eq!(alert["device"], "tank-1");
    assert_eq!(alert["queue_id"], "00c0ffee00c0ffee");
    assert_eq!(alert["alert"]["state"], "raised");
    let rest = json(&msgs[1]);
    assert_eq!(
        rest["readings"].as_array().map(Vec::len),
        Some(1),
        "the alert is not sent twice"
    );
    // Per-value mode with plain values still sends an alert with its alert object.
    let s = settings("mode = \"per_value\"\ntopic = \"v/{device}/{point}\"");
    let (values, _) = build(&s, GW, &batch, false);
    assert_eq!(values[0].payload, b"3.2");
    assert_eq!(json(&values[1])["alert"]["rule"], "tank-high");
}

#[test]
fn command_topics_are_resolved_and_checked() {
    let s = settings("command_topic = \"site/{gateway}/cmd\"");
    assert_eq!(
        s.commands,
        Some((
            "site/gw/cmd".to_string(),
            "site/gw/cmd/response".to_string()
        ))
    );
    let s = settings("command_topic = \"a\"\nresponse_topic = \"b/{gateway}\"");
    assert_eq!(s.commands, Some(("a".to_string(), "b/gw".to_string())));
    for (extra, key, says) in [
        (
            "response_topic = \"r\"",
            "response_topic",
            "needs command_topic",
        ),
        (
            "command_topic = \"site/+/cmd\"",
            "command_topic",
            "no wildcards",
        ),
        (
            "command_topic = \"site/{device}\"",
            "command_topic",
            "may only use {gateway}",
        ),
    ] {
        let raw = MqttUplinkConfig::from_toml(&format!("url = \"mqtt://localhost\"\n{extra}"))
            .expect("parses");
        let problems = raw.settings("gw", Path::new("."), &[]).expect_err(extra);
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(says)),
            "{extra}: {problems:?}"
        );
    }
}
