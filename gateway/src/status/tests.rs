use std::time::{Duration, SystemTime};

use fieldgate_adapter::{Quality, Reading, Value};

use super::*;
use crate::queue::{QueueStats, UplinkPosition};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn reading(adapter: &str, device: &str, point: &str, v: Value, q: Quality, t: u64) -> Reading {
    Reading::new(adapter, device, point, at(t), v).with_quality(q)
}

fn stats() -> QueueStats {
    QueueStats {
        depth: 7,
        oldest_age: Some(Duration::from_secs(90)),
        used_bytes: 4096,
        file_bytes: 8192,
        appended: 100,
        delivered: 93,
        dropped_age: 1,
        dropped_oldest: 2,
        dropped_newest: 3,
        dead_letters: 4,
        uplinks: vec![UplinkPosition {
            uplink: "cloud".into(),
            acked: 93,
            pending: 7,
            delivered: 93,
            oldest_age: Some(Duration::from_secs(90)),
        }],
        ..QueueStats::default()
    }
}

/// A board with two adapters, one failing, and one uplink that failed once then delivered.
fn board() -> Arc<Board> {
    let b = Board::new("site-7");
    b.adapter_started("tanks");
    b.adapter_started("meter");
    b.adapter_failed("meter", "i/o: no such device /dev/ttyUSB0");
    b.observe(
        &[
            reading(
                "tanks",
                "tank-1",
                "level",
                Value::F64(2.5),
                Quality::Good,
                10,
            ),
            reading(
                "tanks",
                "tank-1",
                "pump",
                Value::Bool(true),
                Quality::Good,
                10,
            ),
            reading(
                "tanks",
                "tank-2",
                "level",
                Value::F64(0.0),
                Quality::Bad("exception 2".into()),
                11,
            ),
            reading(
                "tanks",
                "tank-1",
                "level",
                Value::F64(2.75),
                Quality::Good,
                12,
            ),
        ],
        at(12),
    );
    let live = Arc::new(UplinkLive::default());
    live.failed("not connected to mqtts://broker: refused");
    live.sent(93, 0, at(20));
    b.add_uplink("cloud", live);
    b
}

#[test]
fn a_snapshot_counts_readings_and_keeps_each_points_last_value() {
    let b = board();
    let s = b.snapshot(Ok(&stats()), Some(1 << 20), true, true, at(30));
    assert_eq!(s.gateway.id, "site-7");
    let ids: Vec<&str> = s.adapters.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["meter", "tanks"]);
    let meter = &s.adapters[0];
    assert_eq!(meter.state, AdapterState::Restarting);
    assert_eq!((meter.readings, meter.errors, meter.restarts), (0, 1, 1));
    assert_eq!(meter.last_success, None);
    let tanks = &s.adapters[1];
    assert_eq!(tanks.state, AdapterState::Running);
    assert_eq!((tanks.readings, tanks.errors, tanks.restarts), (4, 1, 0));
    assert_eq!(tanks.last_success, Some(secs(at(12))));
    assert_eq!(tanks.last_error.as_deref(), Some("exception 2"));
    let t1 = &tanks.devices[0];
    assert_eq!(t1.id, "tank-1");
    let level = t1
        .points
        .iter()
        .find(|p| p.point == "level")
        .expect("level");
    assert_eq!(level.value, serde_json::json!(2.75), "the last value wins");
    assert_eq!(level.ts, secs(at(12)));
    let t2 = &tanks.devices[1].points[0];
    assert_eq!(
        (t2.quality.as_str(), t2.reason.as_deref()),
        ("bad", Some("exception 2"))
    );

    let q = s.queue.as_ref().expect("queue");
    assert_eq!(
        (q.depth, q.oldest_age_secs, q.max_bytes),
        (7, Some(90.0), Some(1 << 20))
    );
    assert_eq!(q.dropped["drop_newest"], 3);
    assert_eq!(q.dropped["rejected"], 4);
    let u = &s.uplinks[0];
    assert_eq!(u.connected, Some(true), "the last send worked");
    assert_eq!(
        (u.delivered, u.retries, u.pending, u.lag_secs),
        (93, 1, Some(7), Some(90.0))
    );
    // Ready needs every uplink up: the failing adapter is a problem, but not one of readiness.
    assert!(s.alive && s.ready);
    assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
    assert!(s.problems[0].contains("meter is restarting after: i/o: no such device"));
}

#[test]
fn an_uplink_that_fails_or_whose_link_is_down_makes_the_gateway_not_ready() {
    let b = board();
    let live = Arc::new(UplinkLive::default());
    b.add_uplink("backup", Arc::clone(&live));
    let s = b.snapshot(Ok(&stats()), None, true, true, at(30));
    assert_eq!(s.uplinks[0].connected, None, "not used yet: unknown");
    assert!(s.ready);

    live.failed("HTTP 503");
    let s = b.snapshot(Ok(&stats()), None, true, true, at(31));
    assert_eq!(s.uplinks[0].connected, Some(false));
    assert!(!s.ready && s.alive);
    assert!(s
        .problems
        .iter()
        .any(|p| p == "uplink backup is down: HTTP 503"));

    // A connection's own state wins over the last send's outcome.
    let (tx, rx) = watch::channel(LinkState::Up);
    live.watch_link(rx);
    assert_eq!(
        b.snapshot(Ok(&stats()), None, true, true, at(32)).uplinks[0].connected,
        Some(true)
    );
    tx.send_replace(LinkState::Down(Some("connection refused".into())));
    let s = b.snapshot(Ok(&stats()), None, true, true, at(33));
    assert_eq!(s.uplinks[0].connected, Some(false));
    assert_eq!(
        s.uplinks[0].last_error.as_deref(),
        Some("connection refused")
    );

    // A stalled pipeline or an unreadable queue is neither alive nor ready.
    let s = b.snapshot(Err("disk I/O error".into()), None, false, true, at(34));
    assert!(!s.alive && !s.ready);
    assert_eq!(s.queue, None);
    assert!(s.problems.iter().any(|p| p == "queue: disk I/O error"));
}

#[test]
fn points_past_the_cap_are_counted_not_listed_and_a_removed_adapter_frees_its_points() {
    let b = Board::new("g");
    b.adapter_started("a");
    b.adapter_started("b");
    let many: Vec<Reading> = (0..MAX_POINTS + 5)
        .map(|i| reading("a", "d", &format!("p{i}"), Value::I64(1), Quality::Good, 0))
        .collect();
    b.observe(&many, at(0));
    let s = b.snapshot(Ok(&QueueStats::default()), None, true, true, at(1));
    assert_eq!(s.adapters[0].devices[0].points.len(), MAX_POINTS);
    assert_eq!(s.untracked_points, 5);
    assert_eq!(s.adapters[0].readings, (MAX_POINTS + 5) as u64);
    // A point already listed is still updated at the cap.
    b.observe(
        &[reading("a", "d", "p0", Value::I64(9), Quality::Good, 2)],
        at(2),
    );
    let s = b.snapshot(Ok(&QueueStats::default()), None, true, true, at(3));
    let p0 = s.adapters[0].devices[0]
        .points
        .iter()
        .find(|p| p.point == "p0");
    assert_eq!(p0.map(|p| p.value.clone()), Some(serde_json::json!(9)));
    b.adapter_removed("a");
    b.observe(
        &[
            reading("b", "d", "x", Value::I64(1), Quality::Good, 4),
            // A reading the removed adapter left in the channel does not bring it back.
            reading("a", "d", "late", Value::I64(1), Quality::Good, 4),
        ],
        at(4),
    );
    let s = b.snapshot(Ok(&QueueStats::default()), None, true, true, at(5));
    assert_eq!(s.adapters.len(), 1);
    assert_eq!(
        s.adapters[0].devices[0].points.len(),
        1,
        "room again after the removal"
    );
}

#[test]
fn history_takes_a_sample_every_five_seconds_and_keeps_ten_minutes() {
    let b = board();
    for t in 0..(HISTORY as u64 * 5 + 50) {
        b.sample(at(t));
    }
    let s = b.snapshot(Ok(&stats()), None, true, true, at(1000));
    assert_eq!(s.history.len(), HISTORY);
    let gaps: Vec<f64> = s.history.windows(2).map(|w| w[1].t - w[0].t).collect();
    assert!(gaps.iter().all(|g| (*g - 5.0).abs() < 1e-6), "{gaps:?}");
    assert_eq!(
        s.history.last().map(|h| (h.readings, h.delivered)),
        Some((4, 93))
    );
}

#[test]
fn metrics_have_help_and_type_for_every_family_and_escape_labels() {
    let b = board();
    b.adapter_started("we\"ird\\id");
    b.observe(
        &[reading(
            "we\"ird\\id",
            "d",
            "p",
            Value::I64(1),
            Quality::Good,
            0,
        )],
        at(12),
    );
    b.reloaded(false, "bad key", at(25));
    let text = metrics::render(&b.snapshot(Ok(&stats()), Some(1000), true, true, at(30)));
    let has = |line: &str| text.lines().any(|l| l == line);
    for line in [
        "fieldgate_adapter_readings_total{adapter=\"tanks\"} 4",
        "fieldgate_adapter_errors_total{adapter=\"meter\"} 1",
        "fieldgate_adapter_up{adapter=\"meter\"} 0",
        "fieldgate_adapter_restarts_total{adapter=\"meter\"} 1",
        "fieldgate_adapter_readings_total{adapter=\"we\\\"ird\\\\id\"} 1",
        "fieldgate_queue_depth 7",
        "fieldgate_queue_oldest_age_seconds 90",
        "fieldgate_queue_max_bytes 1000",
        "fieldgate_queue_dropped_total{reason=\"drop_oldest\"} 2",
        "fieldgate_queue_dropped_total{reason=\"rejected\"} 4",
        "fieldgate_uplink_connected{uplink=\"cloud\"} 1",
        "fieldgate_uplink_delivered_total{uplink=\"cloud\"} 93",
        "fieldgate_uplink_retries_total{uplink=\"cloud\"} 1",
        "fieldgate_uplink_pending{uplink=\"cloud\"} 7",
        "fieldgate_uplink_lag_seconds{uplink=\"cloud\"} 90",
        "fieldgate_last_reload_success 0",
        "fieldgate_alive 1",
    ] {
        assert!(has(line), "missing `{line}` in\n{text}");
    }
    // Every sample belongs to a family announced with HELP and TYPE before it.
    let mut announced = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            announced.insert(name.to_string());
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(announced.contains(name), "{name} sampled before its TYPE");
            let value = l.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not a number in `{l}`");
        }
    }
}

#[test]
fn a_snapshot_survives_json_and_prints_for_a_terminal() {
    let b = board();
    b.reloaded(true, "added adapter meter", at(25));
    for t in [0, 5, 10, 15, 20, 25, 30] {
        b.sample(at(t));
    }
    let mut s = b.snapshot(Ok(&stats()), Some(1 << 20), true, true, at(30));
    // A start time with a short binary fraction: serde_json's float parsing is exact for it.
    s.gateway.started = s.gateway.now - 100.0;
    let json = serde_json::to_string(&s).expect("json");
    let back: Snapshot = serde_json::from_str(&json).expect("back");
    assert_eq!(back, s, "`fieldgate status` reads what the endpoint writes");

    let text = text::render(&s);
    // Compared with runs of spaces collapsed: the columns are for eyes, not for this test.
    let flat: String = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "gateway site-7 — ok, up 1m40s",
        "last reload 5s ago: applied — added adapter meter",
        "! adapter meter is restarting after: i/o: no such device /dev/ttyUSB0",
        "\ntank-1\n",
        "level 2.75 good 18s ago",
        "level 0.0 bad 19s ago (exception 2)",
        "pump true good 20s ago",
        "depth 7 oldest 1m30s used 4.0 KiB of 1.0 MiB file 8.0 KiB",
        "dropped drop_newest 3, drop_oldest 2, max_age 1, rejected 4",
        "cloud connected delivered 93 pending 7 lag 1m30s retries 1 last sent 10s ago",
        "last 30 s 0.0 → 0.0",
    ] {
        assert!(flat.contains(needle), "missing `{needle}` in\n{text}");
    }
}

#[test]
fn spans_read_like_a_person_would_write_them() {
    assert_eq!(text::span(0.4), "0s");
    assert_eq!(text::span(59.9), "59s");
    assert_eq!(text::span(192.0), "3m12s");
    assert_eq!(text::span(5.0 * 3600.0 + 180.0), "5h03m");
    assert_eq!(text::span(2.0 * 86_400.0 + 4.0 * 3600.0), "2d04h");
    assert_eq!(
        text::span(-3.0),
        "0s",
        "a clock step back is not a negative age"
    );
}
