//! Data-driven tests: a TOML config, a script of readings and ticks, and the exact transcript
//! of what comes out.
//!
//! Script lines (times are seconds after the Unix epoch, optionally with milliseconds):
//!
//! ```text
//! <now> <adapter>/<device>/<point> <value> [unit=<u>] [q=bad|stale] [ts=<t>]
//! tick <now>
//! flush <now>
//! ```
//!
//! `ts` defaults to `now`. A value is `true`/`false`, `"text"` (no spaces), `0x<hex>` bytes,
//! a float when it has a `.` (or is `nan`, `inf`, `-inf`), an integer otherwise. Each output
//! line is `@<now of the step> <reading>` or `@<now> ALERT <rule> <state> <level>
//! <threshold> <severity>: <reading>`, where a reading is `<ts> <adapter>/<device>/<point>
//! <value> [<unit>] [bad|stale]`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_adapter::{Quality, Reading, Value};
use figment::providers::{Format, Toml};
use proptest::prelude::*;
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Site {
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    alerts: Vec<AlertConfig>,
}

fn parse(toml: &str) -> Result<Site, String> {
    figment::Figment::from(Toml::string(toml))
        .extract()
        .map_err(|e| e.to_string())
}

fn site(toml: &str) -> Site {
    match parse(toml) {
        Ok(s) => s,
        Err(e) => panic!("bad test config: {e}\n{toml}"),
    }
}

fn engine(toml: &str) -> Rules {
    let s = site(toml);
    assert_eq!(validate_rules(&s.rules), vec![], "test rules must be valid");
    assert_eq!(
        validate_alerts(&s.alerts),
        vec![],
        "test alerts must be valid"
    );
    Rules::new(&s.rules, &s.alerts)
}

/// `"12"` or `"12.250"` seconds after the epoch.
fn at(s: &str) -> SystemTime {
    let (secs, millis) = match s.split_once('.') {
        Some((s, m)) => (s, format!("{m:0<3}")),
        None => (s, "0".to_string()),
    };
    let secs: u64 = secs.parse().expect("seconds");
    let millis: u64 = millis.parse().expect("milliseconds");
    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
}

fn show_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).expect("after the epoch");
    match d.subsec_millis() {
        0 => d.as_secs().to_string(),
        ms => format!("{}.{ms:03}", d.as_secs()),
    }
}

fn value(s: &str) -> Value {
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "nan" => Value::F64(f64::NAN),
        "inf" => Value::F64(f64::INFINITY),
        "-inf" => Value::F64(f64::NEG_INFINITY),
        _ if s.starts_with('"') => Value::Text(s.trim_matches('"').to_string()),
        _ if s.starts_with("0x") => Value::Bytes(
            (2..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                .collect(),
        ),
        _ if s.contains('.') => Value::F64(s.parse().expect("float")),
        _ => Value::I64(s.parse().expect("integer")),
    }
}

fn reading_line(now: &str, rest: &[&str]) -> Reading {
    let names: Vec<&str> = rest[0].split('/').collect();
    assert_eq!(names.len(), 3, "adapter/device/point: {rest:?}");
    let mut r = Reading::new(names[0], names[1], names[2], at(now), value(rest[1]));
    for opt in &rest[2..] {
        match opt.split_once('=') {
            Some(("unit", u)) => r.unit = Some(u.into()),
            Some(("q", "bad")) => r.quality = Quality::Bad("test".into()),
            Some(("q", "stale")) => r.quality = Quality::Stale("test".into()),
            Some(("ts", t)) => r.ts = at(t),
            _ => panic!("unknown option {opt}"),
        }
    }
    r
}

fn show(r: &Reading) -> String {
    let mut s = format!(
        "{} {}/{}/{} {:?}",
        show_time(r.ts),
        r.source,
        r.device,
        r.point,
        r.value
    );
    if let Some(u) = &r.unit {
        s += &format!(" [{u}]");
    }
    if r.quality != Quality::Good {
        s += &format!(" {}", r.quality.as_str());
    }
    s
}

fn show_alert(r: &Reading, a: &Alert) -> String {
    format!(
        "ALERT {} {} {} {} {}: {}",
        a.rule,
        a.state.as_str(),
        a.level.as_str(),
        a.threshold,
        a.severity.as_str(),
        show(r)
    )
}

/// Trimmed, non-empty lines.
fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Runs `script` through `rules` and returns the transcript.
fn run(rules: &mut Rules, script: &str) -> Vec<String> {
    let mut transcript = Vec::new();
    for line in lines(script) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut out = Output::default();
        let now = match words[0] {
            "tick" => {
                rules.tick(at(words[1]), &mut out);
                words[1]
            }
            "flush" => {
                rules.flush(at(words[1]), &mut out);
                words[1]
            }
            now => {
                rules.apply(reading_line(now, &words[1..]), at(now), &mut out);
                now
            }
        };
        transcript.extend(out.readings.iter().map(|r| format!("@{now} {}", show(r))));
        transcript.extend(
            out.alerts
                .iter()
                .map(|(r, a)| format!("@{now} {}", show_alert(r, a))),
        );
    }
    transcript
}

/// Builds the engine from `toml`, runs `script`, and compares the transcript.
fn check(toml: &str, script: &str, expected: &str) -> Rules {
    let mut rules = engine(toml);
    let got = run(&mut rules, script);
    assert_eq!(
        got.join("\n"),
        lines(expected).join("\n"),
        "\n--- got ---\n{}\n",
        got.join("\n")
    );
    rules
}

fn stats(s: &str) -> RulesStats {
    let mut st = RulesStats::default();
    for pair in s.split_whitespace() {
        let (k, v) = pair.split_once('=').expect("key=value");
        let v: u64 = v.parse().expect("count");
        let field = match k {
            "passed" => &mut st.passed,
            "dropped" => &mut st.dropped,
            "suppressed" => &mut st.suppressed,
            "aggregated" => &mut st.aggregated,
            "aggregates_emitted" => &mut st.aggregates_emitted,
            "alerts_raised" => &mut st.alerts_raised,
            "alerts_cleared" => &mut st.alerts_cleared,
            "untracked" => &mut st.untracked,
            _ => panic!("unknown counter {k}"),
        };
        *field = v;
    }
    st
}

// ---------------------------------------------------------------------------------------------
// Transforms, drop, matching

#[test]
fn no_rules_pass_everything_unchanged() {
    let mut rules = check(
        "",
        r#"
        0 plc/t1/level 10.5 unit=m
        1 plc/t1/state "ok" q=bad
        "#,
        r#"
        @0 0 plc/t1/level F64(10.5) [m]
        @1 1 plc/t1/state Text("ok") bad
        "#,
    );
    assert!(rules.is_empty());
    assert_eq!(rules.stats(), stats("passed=2"));
    assert_eq!(rules.next_deadline(), None);
    let mut out = Output::default();
    rules.flush(at("10"), &mut out);
    assert!(out.readings.is_empty() && out.alerts.is_empty());
}

#[test]
fn rename_scale_offset_unit() {
    let rules = check(
        r#"
        [[rules]]
        device = "t*"
        point = "raw_level"
        rename = "level"
        scale = 0.5
        offset = -2
        unit = "m"
        "#,
        r#"
        0 plc/t1/raw_level 250
        1 plc/t2/raw_level 12.5 unit=cm
        2 plc/t1/raw_level true
        3 plc/t1/raw_level "full"
        4 plc/t1/raw_level 0x0a0b
        5 plc/p1/raw_level 250
        6 plc/t1/raw_level nan
        "#,
        r#"
        @0 0 plc/t1/level F64(123.0) [m]
        @1 1 plc/t2/level F64(4.25) [m]
        @2 2 plc/t1/level Bool(true) [m]
        @3 3 plc/t1/level Text("full") [m]
        @4 4 plc/t1/level Bytes([10, 11]) [m]
        @5 5 plc/p1/raw_level I64(250)
        @6 6 plc/t1/level F64(NaN) [m]
        "#,
    );
    assert_eq!(rules.stats(), stats("passed=7"));
}

#[test]
fn offset_alone_turns_integers_into_floats() {
    check(
        r#"
        [[rules]]
        point = "temp"
        offset = -273
        "#,
        "0 s/d/temp 300",
        "@0 0 s/d/temp F64(27.0)",
    );
}

#[test]
fn first_matching_rule_wins_on_the_original_names() {
    let rules = check(
        r#"
        [[rules]]
        adapter = "plc"
        point = "x"
        rename = "y"
        [[rules]]
        point = "y"
        drop = true
        [[rules]]
        point = "*"
        scale = 2
        "#,
        r#"
        0 plc/d/x 1
        1 plc/d/y 1
        2 lora/d/x 1
        3 plc/d/z 1
        "#,
        r#"
        @0 0 plc/d/y I64(1)
        @2 2 lora/d/x F64(2.0)
        @3 3 plc/d/z F64(2.0)
        "#,
    );
    assert_eq!(rules.stats(), stats("passed=3 dropped=1"));
}

#[test]
fn drop_discards_and_counts() {
    let rules = check(
        r#"
        [[rules]]
        device = "debug-?"
        drop = true
        "#,
        r#"
        0 plc/debug-1/a 1
        1 plc/debug-12/a 1
        2 plc/debug-2/b "x" q=stale
        "#,
        "@1 1 plc/debug-12/a I64(1)",
    );
    assert_eq!(rules.stats(), stats("passed=1 dropped=2"));
}

// ---------------------------------------------------------------------------------------------
// Deadband

#[test]
fn deadband_passes_moves_larger_than_the_band() {
    let rules = check(
        r#"
        [[rules]]
        point = "level"
        deadband = 0.1
        "#,
        r#"
        0 plc/t1/level 10.0
        60 plc/t1/level 10.04
        120 plc/t1/level 10.2
        180 plc/t1/level 10.21
        240 plc/t1/level 9.9
        250 plc/t2/level 9.95
        300 plc/t1/temp 1.0
        "#,
        r#"
        @0 0 plc/t1/level F64(10.0)
        @120 120 plc/t1/level F64(10.2)
        @240 240 plc/t1/level F64(9.9)
        @250 250 plc/t2/level F64(9.95)
        @300 300 plc/t1/temp F64(1.0)
        "#,
    );
    assert_eq!(rules.stats(), stats("passed=5 suppressed=2"));
}

#[test]
fn deadband_compares_with_the_last_value_passed_not_the_last_seen() {
    // Creeping by 0.06 per reading: 10.12 is 0.12 from 10.0, the last value that passed.
    check(
        r#"
        [[rules]]
        point = "level"
        deadband = 0.1
        "#,
        r#"
        0 plc/t1/level 10.0
        1 plc/t1/level 10.06
        2 plc/t1/level 10.12
        3 plc/t1/level 10.18
        "#,
        r#"
        @0 0 plc/t1/level F64(10.0)
        @2 2 plc/t1/level F64(10.12)
        "#,
    );
}

#[test]
fn deadband_heartbeat_resends_an_unchanged_value_every_15_minutes() {
    let rules = check(
        r#"
        [[rules]]
        point = "level"
        deadband = 0.5
        "#,
        r#"
        0 plc/t1/level 10.0
        300 plc/t1/level 10.0
        600 plc/t1/level 10.0
        899 plc/t1/level 10.0
        900 plc/t1/level 10.0
        1200 plc/t1/level 10.0
        1799 plc/t1/level 10.0
        1800 plc/t1/level 10.0
        "#,
        r#"
        @0 0 plc/t1/level F64(10.0)
        @900 900 plc/t1/level F64(10.0)
        @1800 1800 plc/t1/level F64(10.0)
        "#,
    );
    assert_eq!(rules.stats(), stats("passed=3 suppressed=5"));
}

#[test]
fn deadband_heartbeat_runs_on_the_callers_clock_not_the_readings_timestamps() {
    check(
        r#"
        [[rules]]
        point = "count"
        deadband = 10
        heartbeat = "1m"
        "#,
        r#"
        0 plc/m/count 100
        30 plc/m/count 105 ts=1000
        60 plc/m/count 105 ts=1
        61 plc/m/count 116
        "#,
        r#"
        @0 0 plc/m/count I64(100)
        @60 1 plc/m/count I64(105)
        @61 61 plc/m/count I64(116)
        "#,
    );
}

#[test]
fn deadband_passes_quality_type_and_non_numeric_changes() {
    check(
        r#"
        [[rules]]
        point = "*"
        deadband = 1
        "#,
        r#"
        0 plc/t1/level 10.0
        1 plc/t1/level 10.0 q=bad
        2 plc/t1/level 10.0 q=bad
        3 plc/t1/level 10.0 q=stale
        4 plc/t1/level 10.0
        5 plc/t1/level 10
        6 plc/t1/level 10
        7 plc/t1/level nan
        8 plc/t1/level nan
        9 plc/t1/level 10.5
        10 plc/t1/level inf
        20 plc/t1/state "on"
        21 plc/t1/state "on"
        22 plc/t1/state "off"
        30 plc/t1/pump false
        31 plc/t1/pump false
        32 plc/t1/pump true
        40 plc/t1/raw 0x01
        41 plc/t1/raw 0x01
        42 plc/t1/raw 0x02
        "#,
        r#"
        @0 0 plc/t1/level F64(10.0)
        @1 1 plc/t1/level F64(10.0) bad
        @3 3 plc/t1/level F64(10.0) stale
        @4 4 plc/t1/level F64(10.0)
        @5 5 plc/t1/level I64(10)
        @7 7 plc/t1/level F64(NaN)
        @8 8 plc/t1/level F64(NaN)
        @9 9 plc/t1/level F64(10.5)
        @10 10 plc/t1/level F64(inf)
        @20 20 plc/t1/state Text("on")
        @22 22 plc/t1/state Text("off")
        @30 30 plc/t1/pump Bool(false)
        @32 32 plc/t1/pump Bool(true)
        @40 40 plc/t1/raw Bytes([1])
        @42 42 plc/t1/raw Bytes([2])
        "#,
    );
}

#[test]
fn deadband_applies_after_scaling_and_per_renamed_series() {
    // Raw 1000 → 100.0, 1004 → 100.4 (within 0.5), 1006 → 100.6 (moved 0.6).
    check(
        r#"
        [[rules]]
        point = "raw"
        rename = "level"
        scale = 0.1
        deadband = 0.5
        "#,
        r#"
        0 plc/t1/raw 1000
        1 plc/t1/raw 1004
        2 plc/t1/raw 1006
        "#,
        r#"
        @0 0 plc/t1/level F64(100.0)
        @2 2 plc/t1/level F64(100.60000000000001)
        "#,
    );
}

// ---------------------------------------------------------------------------------------------
// Aggregation

const AGG_ALL: &str = r#"
    [[rules]]
    point = "level"
    unit = "m"
    aggregate = { window = "1m", functions = ["min", "max", "mean", "last", "count", "sum"] }
"#;

#[test]
fn aggregates_over_two_windows_closed_by_apply_and_by_tick() {
    let mut rules = engine(AGG_ALL);
    let got = run(
        &mut rules,
        r#"
        5 plc/t1/level 1.0
        20 plc/t1/level 4.0
        40 plc/t1/level 2.5
        59 plc/t1/level 99.0 q=bad
        59.500 plc/t1/level "overflow"
        65 plc/t1/level 10
        90 plc/t1/level 11.0
        "#,
    );
    // [0, 60): 1.0, 4.0, 2.5 → min 1, max 4, mean 7.5 / 3, last 2.5, count 3, sum 7.5.
    // The reading at 65 finds its series' window due and closes it first.
    let expected = lines(
        r#"
        @59 59 plc/t1/level F64(99.0) [m] bad
        @59.500 59.500 plc/t1/level Text("overflow") [m]
        @65 0 plc/t1/level_min F64(1.0) [m]
        @65 0 plc/t1/level_max F64(4.0) [m]
        @65 0 plc/t1/level_mean F64(2.5) [m]
        @65 0 plc/t1/level_last F64(2.5) [m]
        @65 0 plc/t1/level_count I64(3)
        @65 0 plc/t1/level_sum F64(7.5) [m]
        "#,
    );
    assert_eq!(got, expected);
    assert_eq!(rules.next_deadline(), Some(at("120")));
    let got = run(&mut rules, "tick 119.999\n tick 120");
    // [60, 120): 10 (an integer, folded as 10.0) and 11.0.
    let expected = lines(
        r#"
        @120 60 plc/t1/level_min F64(10.0) [m]
        @120 60 plc/t1/level_max F64(11.0) [m]
        @120 60 plc/t1/level_mean F64(10.5) [m]
        @120 60 plc/t1/level_last F64(11.0) [m]
        @120 60 plc/t1/level_count I64(2)
        @120 60 plc/t1/level_sum F64(21.0) [m]
        "#,
    );
    assert_eq!(got, expected);
    assert_eq!(rules.next_deadline(), None);
    assert_eq!(
        rules.stats(),
        stats("passed=2 aggregated=5 aggregates_emitted=12")
    );
}

#[test]
fn a_reading_in_a_later_window_closes_the_open_one() {
    // The device's clock runs ahead: at now=50 a reading stamped 61 opens [60, 120).
    check(
        r#"
        [[rules]]
        point = "level"
        aggregate = { window = "1m", functions = ["mean", "count"] }
        "#,
        r#"
        10 plc/t1/level 1.0
        20 plc/t1/level 2.0
        50 plc/t1/level 7.0 ts=61
        55 plc/t1/level 9.0 ts=62
        flush 56
        "#,
        r#"
        @50 0 plc/t1/level_mean F64(1.5)
        @50 0 plc/t1/level_count I64(2)
        @56 60 plc/t1/level_mean F64(8.0)
        @56 60 plc/t1/level_count I64(2)
        "#,
    );
}

#[test]
fn late_readings_fold_into_the_first_window_not_closed() {
    check(
        r#"
        [[rules]]
        point = "level"
        aggregate = { window = "1m", functions = ["sum", "count"] }
        "#,
        r#"
        10 plc/t1/level 1.0
        tick 60
        70 plc/t1/level 5.0 ts=30
        80 plc/t1/level 6.0 ts=20
        90 plc/t1/level 7.0
        tick 120
        "#,
        r#"
        @60 0 plc/t1/level_sum F64(1.0)
        @60 0 plc/t1/level_count I64(1)
        @120 60 plc/t1/level_sum F64(18.0)
        @120 60 plc/t1/level_count I64(3)
        "#,
    );
}

#[test]
fn aggregation_windows_are_aligned_to_the_epoch_and_flushed_at_shutdown() {
    let mut rules = check(
        r#"
        [[rules]]
        device = "*"
        aggregate = { window = "15m" }
        "#,
        r#"
        1000 lora/a/temp 20.0 unit=°C
        1100 lora/a/temp 22.0 unit=°C
        1200 lora/b/on true
        1300 lora/b/on false
        flush 1500
        "#,
        r#"
        @1500 900 lora/a/temp_min F64(20.0) [°C]
        @1500 900 lora/a/temp_max F64(22.0) [°C]
        @1500 900 lora/a/temp_mean F64(21.0) [°C]
        @1500 900 lora/a/temp_last F64(22.0) [°C]
        @1500 900 lora/a/temp_count I64(2)
        @1500 900 lora/b/on_min F64(0.0)
        @1500 900 lora/b/on_max F64(1.0)
        @1500 900 lora/b/on_mean F64(0.5)
        @1500 900 lora/b/on_last F64(0.0)
        @1500 900 lora/b/on_count I64(2)
        "#,
    );
    assert_eq!(rules.next_deadline(), None);
    // Nothing left to flush.
    assert_eq!(run(&mut rules, "flush 1600"), Vec::<String>::new());
}

#[test]
fn aggregation_passes_bad_and_non_finite_readings_through() {
    let rules = check(
        r#"
        [[rules]]
        point = "level"
        aggregate = { window = "1h", functions = ["max"] }
        "#,
        r#"
        3700 plc/t1/level 2.0
        3701 plc/t1/level 5.0 q=stale
        3702 plc/t1/level nan
        3703 plc/t1/level -inf
        3704 plc/t1/level 3.0
        tick 7200
        "#,
        r#"
        @3701 3701 plc/t1/level F64(5.0) stale
        @3702 3702 plc/t1/level F64(NaN)
        @3703 3703 plc/t1/level F64(-inf)
        @7200 3600 plc/t1/level_max F64(3.0)
        "#,
    );
    assert_eq!(
        rules.stats(),
        stats("passed=3 aggregated=2 aggregates_emitted=1")
    );
}

#[test]
fn next_deadline_is_the_earliest_window_end_or_alert_due() {
    let mut rules = engine(
        r#"
        [[rules]]
        point = "a"
        aggregate = { window = "1m", functions = ["count"] }
        [[rules]]
        point = "b"
        aggregate = { window = "10s", functions = ["count"] }
        [[alerts]]
        name = "hot"
        point = "c"
        high = 1
        for = "5s"
        "#,
    );
    run(&mut rules, "1 s/d/a 1");
    assert_eq!(rules.next_deadline(), Some(at("60")));
    run(&mut rules, "2 s/d/b 1");
    assert_eq!(rules.next_deadline(), Some(at("10")));
    run(&mut rules, "3 s/d/c 2");
    assert_eq!(rules.next_deadline(), Some(at("8")));
    let got = run(&mut rules, "tick 10");
    assert_eq!(
        got,
        lines(
            r#"
            @10 0 s/d/b_count I64(1)
            @10 ALERT hot raised high 1 warning: 10 s/d/c I64(2)
            "#
        )
    );
    assert_eq!(rules.next_deadline(), Some(at("60")));
}

// ---------------------------------------------------------------------------------------------
// Alerts

const TANK: &str = r#"
    [[rules]]
    point = "level"
    unit = "%"
    [[alerts]]
    name = "tank-level"
    point = "level"
    high = 80
    low = 10
    hysteresis = 5
    severity = "critical"
"#;

#[test]
fn alerts_raise_and_clear_with_hysteresis() {
    let rules = check(
        TANK,
        r#"
        0 plc/t1/level 50.0
        10 plc/t1/level 80.0
        20 plc/t1/level 81.0
        30 plc/t1/level 78.0
        40 plc/t1/level 75.0
        50 plc/t1/level 74.9
        60 plc/t1/level 10.0
        70 plc/t1/level 5.0
        80 plc/t1/level 15.0
        90 plc/t1/level 15.5
        "#,
        r#"
        @0 0 plc/t1/level F64(50.0) [%]
        @10 10 plc/t1/level F64(80.0) [%]
        @20 20 plc/t1/level F64(81.0) [%]
        @20 ALERT tank-level raised high 80 critical: 20 plc/t1/level F64(81.0) [%]
        @30 30 plc/t1/level F64(78.0) [%]
        @40 40 plc/t1/level F64(75.0) [%]
        @50 50 plc/t1/level F64(74.9) [%]
        @50 ALERT tank-level cleared high 80 critical: 50 plc/t1/level F64(74.9) [%]
        @60 60 plc/t1/level F64(10.0) [%]
        @70 70 plc/t1/level F64(5.0) [%]
        @70 ALERT tank-level raised low 10 critical: 70 plc/t1/level F64(5.0) [%]
        @80 80 plc/t1/level F64(15.0) [%]
        @90 90 plc/t1/level F64(15.5) [%]
        @90 ALERT tank-level cleared low 10 critical: 90 plc/t1/level F64(15.5) [%]
        "#,
    );
    assert_eq!(
        rules.stats(),
        stats("passed=10 alerts_raised=2 alerts_cleared=2")
    );
}

#[test]
fn a_raised_high_falling_below_low_clears_and_raises_low() {
    check(
        TANK,
        r#"
        0 plc/t1/level 90.0
        10 plc/t1/level 2.0
        20 plc/t1/level 95.0
        "#,
        r#"
        @0 0 plc/t1/level F64(90.0) [%]
        @0 ALERT tank-level raised high 80 critical: 0 plc/t1/level F64(90.0) [%]
        @10 10 plc/t1/level F64(2.0) [%]
        @10 ALERT tank-level cleared high 80 critical: 10 plc/t1/level F64(2.0) [%]
        @10 ALERT tank-level raised low 10 critical: 10 plc/t1/level F64(2.0) [%]
        @20 20 plc/t1/level F64(95.0) [%]
        @20 ALERT tank-level cleared low 10 critical: 20 plc/t1/level F64(95.0) [%]
        @20 ALERT tank-level raised high 80 critical: 20 plc/t1/level F64(95.0) [%]
        "#,
    );
}

#[test]
fn alerts_keep_state_per_series() {
    check(
        r#"
        [[rules]]
        point = "*"
        drop = true
        [[alerts]]
        name = "hot"
        high = 50
        "#,
        r#"
        0 plc/a/temp 60
        1 plc/b/temp 60
        2 plc/a/temp 40
        3 lora/a/temp 70
        "#,
        r#"
        @0 ALERT hot raised high 50 warning: 0 plc/a/temp I64(60)
        @1 ALERT hot raised high 50 warning: 1 plc/b/temp I64(60)
        @2 ALERT hot cleared high 50 warning: 2 plc/a/temp I64(40)
        @3 ALERT hot raised high 50 warning: 3 lora/a/temp I64(70)
        "#,
    );
}

const HOT_FOR_30S: &str = r#"
    [[rules]]
    point = "temp"
    drop = true
    [[alerts]]
    name = "hot"
    point = "temp"
    high = 50
    for = "30s"
"#;

#[test]
fn alert_for_is_cancelled_by_a_dip_and_raised_by_tick_at_since_plus_for() {
    let mut rules = engine(HOT_FOR_30S);
    let got = run(
        &mut rules,
        r#"
        0 s/d/temp 60
        10 s/d/temp 40
        20 s/d/temp 55
        30 s/d/temp 56 unit=C
        tick 49.999
        "#,
    );
    assert_eq!(
        got,
        Vec::<String>::new(),
        "pending, then cancelled, then pending"
    );
    assert_eq!(rules.next_deadline(), Some(at("50")));
    // Raised by the tick at exactly since (20) + for (30s), with the latest value seen,
    // stamped with the tick's time.
    let got = run(&mut rules, "tick 50\n 60 s/d/temp 50\n 61 s/d/temp 49.9");
    assert_eq!(
        got,
        lines(
            r#"
            @50 ALERT hot raised high 50 warning: 50 s/d/temp I64(56) [C]
            @61 ALERT hot cleared high 50 warning: 61 s/d/temp F64(49.9)
            "#
        )
    );
    assert_eq!(rules.next_deadline(), None);
    assert_eq!(
        rules.stats(),
        stats("dropped=6 alerts_raised=1 alerts_cleared=1")
    );
}

#[test]
fn alert_for_is_raised_by_a_later_reading_still_past_the_threshold() {
    check(
        HOT_FOR_30S,
        r#"
        100 s/d/temp 70
        129 s/d/temp 71
        130 s/d/temp 72 ts=128
        140 s/d/temp 73
        "#,
        "@130 ALERT hot raised high 50 warning: 128 s/d/temp I64(72)",
    );
}

#[test]
fn a_due_alert_is_cancelled_by_a_reading_back_within_before_the_tick() {
    let mut rules = check(
        HOT_FOR_30S,
        r#"
        0 s/d/temp 70
        35 s/d/temp 40
        tick 40
        "#,
        "",
    );
    assert_eq!(rules.next_deadline(), None);
    assert_eq!(run(&mut rules, "flush 100"), Vec::<String>::new());
}

#[test]
fn low_alerts() {
    check(
        r#"
        [[alerts]]
        name = "battery.low"
        point = "battery"
        low = 3.3
        hysteresis = 0.1
        severity = "info"
        [[rules]]
        point = "battery"
        deadband = 100
        "#,
        r#"
        0 lora/n1/battery 3.6 unit=V
        10 lora/n1/battery 3.2 unit=V
        20 lora/n1/battery 3.35 unit=V
        30 lora/n1/battery 3.41 unit=V
        "#,
        r#"
        @0 0 lora/n1/battery F64(3.6) [V]
        @10 ALERT battery.low raised low 3.3 info: 10 lora/n1/battery F64(3.2) [V]
        @30 ALERT battery.low cleared low 3.3 info: 30 lora/n1/battery F64(3.41) [V]
        "#,
    );
}

#[test]
fn alerts_see_dropped_suppressed_and_aggregated_readings_by_their_new_names() {
    let rules = check(
        r#"
        [[rules]]
        point = "raw"
        rename = "level"
        scale = 10
        deadband = 1000
        [[rules]]
        point = "debug"
        drop = true
        [[rules]]
        point = "flow"
        aggregate = { window = "1m", functions = ["count"] }
        [[alerts]]
        name = "high"
        point = "level"
        high = 80
        [[alerts]]
        name = "raw-never"
        point = "raw"
        high = 0
        [[alerts]]
        name = "debug"
        point = "debug"
        high = 0.5
        [[alerts]]
        name = "flow"
        point = "flow"
        high = 5
        "#,
        r#"
        0 plc/t1/raw 9
        1 plc/t1/raw 9.05
        2 plc/t1/raw 7
        3 plc/t1/debug true
        4 plc/t1/flow 6
        "#,
        r#"
        @0 0 plc/t1/level F64(90.0)
        @0 ALERT high raised high 80 warning: 0 plc/t1/level F64(90.0)
        @2 ALERT high cleared high 80 warning: 2 plc/t1/level F64(70.0)
        @3 ALERT debug raised high 0.5 warning: 3 plc/t1/debug Bool(true)
        @4 ALERT flow raised high 5 warning: 4 plc/t1/flow I64(6)
        "#,
    );
    assert_eq!(
        rules.stats(),
        stats("passed=1 suppressed=2 dropped=1 aggregated=1 alerts_raised=3 alerts_cleared=1")
    );
}

#[test]
fn only_good_finite_numbers_change_alert_state() {
    check(
        r#"
        [[rules]]
        point = "*"
        drop = true
        [[alerts]]
        name = "pump-on"
        point = "pump"
        high = 0.5
        [[alerts]]
        name = "hot"
        point = "temp"
        high = 50
        "#,
        r#"
        0 s/d/pump true
        1 s/d/pump false q=bad
        2 s/d/pump false
        10 s/d/temp 60 q=stale
        11 s/d/temp inf
        12 s/d/temp "hot"
        13 s/d/temp 51
        14 s/d/temp nan
        15 s/d/temp -inf
        16 s/d/temp 1 q=bad
        17 s/d/temp 49
        "#,
        r#"
        @0 ALERT pump-on raised high 0.5 warning: 0 s/d/pump Bool(true)
        @2 ALERT pump-on cleared high 0.5 warning: 2 s/d/pump Bool(false)
        @13 ALERT hot raised high 50 warning: 13 s/d/temp I64(51)
        @17 ALERT hot cleared high 50 warning: 17 s/d/temp I64(49)
        "#,
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds

#[test]
fn beyond_max_series_readings_keep_stateless_actions_but_lose_state() {
    let mut rules = engine(
        r#"
        [[rules]]
        point = "t*"
        scale = 2
        deadband = 1
        [[alerts]]
        name = "hot"
        point = "t*"
        high = 50
        "#,
    );
    rules.max_series = 2;
    // x/other: a route, no state. a/temp: a route and state. b/temp: state, but the routes
    // are full (its globs run at every reading). c/temp: neither.
    let got = run(
        &mut rules,
        r#"
        0 s/x/other 1
        1 s/a/temp 30
        2 s/b/temp 30
        3 s/b/temp 30
        4 s/c/temp 30
        5 s/c/temp 30
        6 s/a/temp 30
        "#,
    );
    assert_eq!(
        got,
        lines(
            r#"
            @0 0 s/x/other I64(1)
            @1 1 s/a/temp F64(60.0)
            @1 ALERT hot raised high 50 warning: 1 s/a/temp F64(60.0)
            @2 2 s/b/temp F64(60.0)
            @2 ALERT hot raised high 50 warning: 2 s/b/temp F64(60.0)
            @4 4 s/c/temp F64(60.0)
            @5 5 s/c/temp F64(60.0)
            "#
        )
    );
    assert_eq!((rules.routes.len(), rules.state.series.len()), (2, 2));
    assert_eq!(
        rules.stats(),
        stats("passed=5 suppressed=2 untracked=2 alerts_raised=2")
    );
}

#[test]
fn routes_are_cached_once_per_series() {
    let mut rules = engine(
        r#"
        [[rules]]
        point = "x"
        rename = "y"
        deadband = 5
        [[rules]]
        point = "z"
        rename = "y"
        deadband = 5
        "#,
    );
    let script: String = (0..100)
        .map(|i| format!("{i} s/d/p{} 1\n", i % 3))
        .collect();
    run(&mut rules, &script);
    assert_eq!(rules.routes.len(), 3);
    assert!(
        rules.state.series.is_empty(),
        "no state without deadband, aggregate or alerts"
    );
    // Two names renamed into one series share its deadband.
    let got = run(
        &mut rules,
        "200 s/d/z 1\n 201 s/d/x 2\n 202 s/d/z 2\n 203 s/d/z 7",
    );
    assert_eq!(
        got,
        lines(
            r#"
            @200 200 s/d/y I64(1)
            @203 203 s/d/y I64(7)
            "#
        )
    );
    assert_eq!((rules.routes.len(), rules.state.series.len()), (5, 1));
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn config_defaults() {
    let s = site(
        r#"
        [[rules]]
        point = "p"
        deadband = 1
        aggregate = { window = "30s" }
        [[alerts]]
        name = "a"
        high = 1
        "#,
    );
    let r = &s.rules[0];
    assert_eq!((r.drop, r.heartbeat, r.scale), (false, None, None));
    assert_eq!(
        r.aggregate,
        Some(AggregateConfig {
            window: Duration::from_secs(30),
            functions: vec![
                AggFn::Min,
                AggFn::Max,
                AggFn::Mean,
                AggFn::Last,
                AggFn::Count
            ],
        })
    );
    let a = &s.alerts[0];
    assert_eq!(
        (a.hysteresis, a.hold, a.severity, a.low),
        (0.0, Duration::ZERO, Severity::Warning, None)
    );
}

fn check_parse_error(toml: &str, expected: &str) {
    match parse(toml) {
        Ok(s) => panic!("parsed: {s:?}"),
        Err(e) => assert!(e.contains(expected), "{e:?} should contain {expected:?}"),
    }
}

#[test]
fn config_parse_errors() {
    check_parse_error(
        "[[rules]]\npont = \"x\"\ndrop = true",
        "unknown field: found `pont`",
    );
    check_parse_error(
        "[[rules]]\naggregate = { window = \"1m\", functions = [\"median\"] }",
        "unknown variant: found `median`",
    );
    check_parse_error(
        "[[rules]]\naggregate = { window = \"1m\", size = 3 }",
        "unknown field: found `size`",
    );
    check_parse_error("[[alerts]]\nhigh = 1", "missing field `name`");
    check_parse_error(
        "[[alerts]]\nname = \"a\"\nhigh = 1\nfor = 30",
        "bare number (30) is ambiguous",
    );
    check_parse_error(
        "[[alerts]]\nname = \"a\"\nhigh = 1\nseverity = \"urgent\"",
        "unknown variant: found `urgent`",
    );
}

/// Validates `toml` and compares `rules[i].key: message` lines.
fn check_problems(toml: &str, expected: &str) {
    let s = site(toml);
    let mut got: Vec<String> = validate_rules(&s.rules)
        .into_iter()
        .map(|(i, p)| format!("rules[{i}].{}: {}", p.key, p.message))
        .collect();
    got.extend(
        validate_alerts(&s.alerts)
            .into_iter()
            .map(|(i, p)| format!("alerts[{i}].{}: {}", p.key, p.message)),
    );
    assert_eq!(
        got.join("\n"),
        lines(expected).join("\n"),
        "\n--- got ---\n{}\n",
        got.join("\n")
    );
}

#[test]
fn rule_validation() {
    check_problems(
        r#"
        [[rules]]
        point = "a"
        drop = true
        rename = "b"
        unit = "m"
        [[rules]]
        point = "a"
        [[rules]]
        deadband = -1
        heartbeat = "0s"
        aggregate = { window = "0s", functions = [] }
        [[rules]]
        heartbeat = "1m"
        scale = 0
        offset = nan
        rename = ""
        [[rules]]
        scale = inf
        aggregate = { window = "25h", functions = ["mean", "max", "mean", "mean"] }
        [[rules]]
        point = "ok"
        deadband = 0
        heartbeat = "1h"
        "#,
        r#"
        rules[0].drop: drop = true discards the readings, so rename, unit would have no effect; remove them or drop
        rules[1].: this rule does nothing; add drop, rename, scale, offset, unit, deadband or aggregate, or remove the rule
        rules[2].deadband: -1 is not a valid deadband; write a finite amount ≥ 0 in the point's units, like 0.5
        rules[2].deadband: cannot be combined with aggregate (which already reports once per window); remove one of them
        rules[2].heartbeat: must be greater than zero, like "15m"
        rules[2].aggregate.window: must be greater than zero, like "1m" or "1h"
        rules[2].aggregate.functions: is empty; list at least one of min, max, mean, last, count, sum (or leave it out for min, max, mean, last, count)
        rules[3].rename: must not be empty; give the point's new name
        rules[3].scale: must not be 0 (every value would become the offset); write a factor like 0.1
        rules[3].offset: NaN is not a finite number; write an amount like -273.15
        rules[3].heartbeat: only applies with deadband; add a deadband or remove heartbeat
        rules[4].scale: inf is not a finite number; write a factor like 0.1
        rules[4].aggregate.window: must be at most 24h; use a shorter window
        rules[4].aggregate.functions[2]: `mean` is listed twice; remove the duplicate
        rules[4].aggregate.functions[3]: `mean` is listed twice; remove the duplicate
        "#,
    );
}

#[test]
fn alert_validation() {
    check_problems(
        r#"
        [[alerts]]
        name = "tank-1.high_level"
        high = 80
        low = 20
        hysteresis = 59.9
        [[alerts]]
        name = "tank-1.high_level"
        [[alerts]]
        name = "tank high!"
        high = 20
        low = 80
        [[alerts]]
        name = ""
        low = 1
        hysteresis = -1
        [[alerts]]
        name = "b"
        high = 80
        low = 20
        hysteresis = 60
        [[alerts]]
        name = "c"
        high = inf
        "#,
        r#"
        alerts[1].name: `tank-1.high_level` is already the name of alerts[0]; alert names must be unique
        alerts[1].: has neither high nor low; give at least one threshold, like high = 80
        alerts[2].name: `tank high!` may hold only letters, digits, `-`, `_` and `.`; rename it
        alerts[2].high: 20 must be greater than low (80); swap them or fix one
        alerts[3].name: must not be empty; name the alert, like "tank-high"
        alerts[3].hysteresis: -1 is not valid; write a finite amount ≥ 0, like 2
        alerts[4].hysteresis: 60 must be smaller than high - low (60), or clearing one threshold would cross the other; make it smaller
        alerts[5].high: inf is not a finite number; write a threshold like 80
        "#,
    );
}

// ---------------------------------------------------------------------------------------------
// Never panics

const EVERYTHING: &str = r#"
    [[rules]]
    device = "d0"
    point = "p0"
    drop = true
    [[rules]]
    device = "d1"
    point = "p*"
    rename = "q"
    scale = 3
    offset = 1
    deadband = 0.5
    heartbeat = "10s"
    [[rules]]
    device = "d2"
    unit = "u"
    aggregate = { window = "7s", functions = ["min", "max", "mean", "last", "count", "sum"] }
    [[rules]]
    device = "d3"
    scale = 1e300
    [[alerts]]
    name = "a"
    high = 10
    low = -10
    hysteresis = 1
    for = "5s"
    [[alerts]]
    name = "b"
    point = "q"
    high = 0
"#;

#[derive(Debug, Clone)]
enum Op {
    Apply {
        device: u8,
        point: u8,
        value: Value,
        quality: u8,
        ts: i64,
        now: i64,
    },
    Tick(i64),
    Flush(i64),
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_map(Value::F64),
        (-30.0..30.0f64).prop_map(Value::F64),
        Just(Value::F64(f64::NAN)),
        Just(Value::F64(f64::INFINITY)),
        any::<i64>().prop_map(Value::I64),
        (-30..30i64).prop_map(Value::I64),
        any::<bool>().prop_map(Value::Bool),
        "[a-c]{0,2}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(Value::Bytes),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    // Times in seconds around the epoch (before it too); `now` mostly moves forward.
    let time = prop_oneof![0..120i64, -20_000_000_000..20_000_000_000i64];
    prop_oneof![
        6 => (0..5u8, 0..3u8, any_value(), 0..4u8, time.clone(), time.clone()).prop_map(
            |(device, point, value, quality, ts, now)| Op::Apply {
                device,
                point,
                value,
                quality,
                ts,
                now,
            }
        ),
        1 => time.clone().prop_map(Op::Tick),
        1 => time.prop_map(Op::Flush),
    ]
}

fn epoch_secs(s: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

proptest! {
    #[test]
    fn apply_tick_and_flush_never_panic_and_account_for_every_reading(
        ops in proptest::collection::vec(any_op(), 0..60),
        max_series in 1..8usize,
    ) {
        let mut rules = engine(EVERYTHING);
        rules.max_series = max_series;
        let mut applied = 0u64;
        let mut out = Output::default();
        for op in ops {
            match op {
                Op::Apply { device, point, value, quality, ts, now } => {
                    let mut r = Reading::new("s", format!("d{device}"), format!("p{point}"), epoch_secs(ts), value);
                    r.quality = match quality {
                        0 => Quality::Bad("x".into()),
                        1 => Quality::Stale("x".into()),
                        _ => Quality::Good,
                    };
                    rules.apply(r, epoch_secs(now), &mut out);
                    applied += 1;
                }
                Op::Tick(now) => {
                    rules.tick(epoch_secs(now), &mut out);
                    prop_assert!(rules.next_deadline().is_none_or(|t| t > epoch_secs(now)));
                }
                Op::Flush(now) => {
                    rules.flush(epoch_secs(now), &mut out);
                    prop_assert!(!rules.state.deadlines.iter().any(|(_, d)| matches!(d, Due::Window(_))));
                }
            }
            let s = rules.stats();
            prop_assert_eq!(s.passed + s.dropped + s.suppressed + s.aggregated, applied);
            prop_assert_eq!(out.readings.len() as u64, s.passed + s.aggregates_emitted);
            prop_assert_eq!(out.alerts.len() as u64, s.alerts_raised + s.alerts_cleared);
            prop_assert!(rules.routes.len() <= max_series && rules.state.series.len() <= max_series);
        }
    }
}
