//! The real binary end to end: readings flow, and SIGTERM/SIGINT lose nothing in memory.

mod common;

use common::{fieldgate, json_lines, run, site, wait_for};
use std::collections::BTreeSet;

/// Values of the counter point found in the file uplink and still in the queue.
fn counter_values(dir: &std::path::Path, cfg: &str) -> Vec<i64> {
    let mut values: Vec<i64> = json_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|v| v["value"].as_i64().expect("int value"))
        .collect();
    let peek = run(&["queue", "peek", "-c", cfg, "--json", "-n", "1000000"]);
    assert!(
        peek.status.success(),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
    for line in String::from_utf8_lossy(&peek.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        values.push(v["value"].as_i64().expect("int"));
    }
    values
}

fn stop_with(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A flush interval far longer than the run: whatever is committed was committed by the
    // shutdown path, not by the timer.
    let cfg = site(
        dir.path(),
        "flush_interval = \"60s\"\nbatch_size = 100000",
        r#"
[[adapters.devices.points]]
name = "n"
waveform = "counter"
interval = "1ms"
count = 500
"#,
    );
    let cfg = cfg.to_str().expect("utf-8").to_string();
    let child = fieldgate()
        .args(["run", "-c", &cfg, "--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    common::signal(child.id(), signal);
    let out = child.wait_with_output().expect("exits");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit status {} after SIG{signal}; logs:\n{logs}",
        out.status
    );
    assert!(logs.contains("\"message\":\"stopped\""), "logs:\n{logs}");

    // All 500 were generated in the first half second and sat in memory (the flush interval
    // is a minute): every one of them must have been committed by the shutdown, once.
    let values = counter_values(dir.path(), &cfg);
    let unique: BTreeSet<i64> = values.iter().copied().collect();
    assert_eq!(unique.len(), values.len(), "no reading twice");
    assert_eq!(
        unique,
        (0..500).collect::<BTreeSet<i64>>(),
        "every generated reading is committed, none lost"
    );
    assert!(logs.contains("\"committed\":500"), "logs:\n{logs}");
}

#[test]
fn sigterm_commits_everything_in_memory_and_exits_0() {
    stop_with("TERM");
}

#[test]
fn sigint_does_the_same() {
    stop_with("INT");
}

#[test]
fn json_logs_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = site(
        dir.path(),
        "",
        "[[adapters.devices.points]]\nname = \"n\"\nwaveform = \"counter\"\ninterval = \"10ms\"",
    );
    let child = fieldgate()
        .args([
            "run",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    wait_for("a delivery", 30, || {
        !json_lines(&dir.path().join("out.jsonl")).is_empty()
    });
    common::signal(child.id(), "TERM");
    let out = child.wait_with_output().expect("exits");
    let logs = String::from_utf8_lossy(&out.stderr);
    let mut n = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        n += 1;
    }
    assert!(n >= 3, "{logs}");
}

#[test]
fn demo_delivers_readings_within_seconds() {
    let out = fieldgate()
        .args(["demo", "--duration", "3s", "--status-port", "0"])
        .output()
        .expect("demo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let delivered = stdout.lines().filter(|l| l.starts_with('#')).count();
    assert!(
        delivered >= 5,
        "demo printed {delivered} readings:\n{stdout}"
    );
    assert!(
        stdout.contains("pumpstation/pump-1/outlet_pressure"),
        "{stdout}"
    );
    assert!(stdout.contains(" readings committed, 0 lost."), "{stdout}");
}

/// Under systemd: READY=1 once running, WATCHDOG=1 while alive, STOPPING=1 on SIGTERM.
#[test]
fn notifies_systemd_when_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = site(
        dir.path(),
        "",
        "[[adapters.devices.points]]\nname = \"n\"\nwaveform = \"counter\"\ninterval = \"10ms\"",
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let child = fieldgate()
        .args(["run", "-c", cfg.to_str().expect("utf-8")])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let recv = || -> Option<String> {
        let mut buf = [0u8; 128];
        let n = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(recv().as_deref(), Some("READY=1"));
    for _ in 0..3 {
        assert_eq!(recv().as_deref(), Some("WATCHDOG=1"));
    }
    common::signal(child.id(), "TERM");
    let mut messages = Vec::new();
    while let Some(m) = recv() {
        let stop = m == "STOPPING=1";
        messages.push(m);
        if stop {
            break;
        }
    }
    assert_eq!(
        messages.last().map(String::as_str),
        Some("STOPPING=1"),
        "{messages:?}"
    );
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success());
}

/// What `fieldgate demo --site <site>` prints in 4 s; it must exit cleanly.
fn demo(site: &str) -> String {
    let out = fieldgate()
        .args([
            "demo",
            "--site",
            site,
            "--duration",
            "4s",
            "--status-port",
            "0",
        ])
        .output()
        .expect("demo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `config/water-tank.toml`, unchanged but for its port and broker, against three simulated
/// Modbus RTU tanks on a pseudo-terminal: every tank's points arrive through the broker.
#[test]
fn water_tank_demo_reads_three_modbus_tanks_over_rtu() {
    let stdout = demo("water-tank");
    for tank in ["tank-1", "tank-2", "tank-3"] {
        for point in ["level", "pump_running", "high_level_alarm"] {
            let needle = format!("tanks/{tank}/{point} = ");
            assert!(stdout.contains(&needle), "no {needle} in:\n{stdout}");
        }
    }
    // Levels are centimetres scaled to metres.
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("/level = "))
            .all(|l| l.contains(" m ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("tanks/tank-1/water_temperature = "),
        "{stdout}"
    );
    // The demo prints a quality only when it is not good.
    assert!(
        !stdout.contains("(stale:") && !stdout.contains("(bad:"),
        "{stdout}"
    );
    assert!(stdout.contains(" readings committed, 0 lost."), "{stdout}");
}

/// The water-tank demo plays a control room: a command round trip through the broker to a
/// Modbus coil, three refusals with their reasons, and the pump it started raising and then
/// clearing the `tank-high` alert of config/water-tank.toml (held 5 s above 3.5 m, cleared
/// below 3.3 m), printed from the alert topic.
#[test]
fn water_tank_demo_shows_commands_and_an_alert_raised_and_cleared() {
    let out = fieldgate()
        .args([
            "demo",
            "--site",
            "water-tank",
            "--duration",
            "50s",
            "--status-port",
            "0",
        ])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[command <-] demo-1 accepted",
        "[command <-] demo-1 done (read back true)",
        "[command <-] demo-2 failed: not supported: point `level` of device `tank-1` is not writable",
        "[command <-] demo-3 failed: invalid value: 5.5 is out of range for point `high_level_setpoint` of device `tank-1` (allowed 1 to 4)",
        "[command <-] demo-4 failed: expired before it could be executed",
        "[ALERT] tank-high RAISED (critical): tanks/tank-3/level = ",
        "[ALERT] tank-high CLEARED (critical): tanks/tank-3/level = ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let raised = stdout.find("tank-high RAISED").expect("raised");
    let cleared = stdout.find("tank-high CLEARED").expect("cleared");
    assert!(raised < cleared, "{stdout}");
    assert!(!stdout.contains("demo-2 done"), "{stdout}");
}

/// `config/weather-station.toml`, unchanged but for its port and broker, against a simulated
/// NMEA weather station on a pseudo-terminal: every field of every sentence becomes a point
/// in its own unit and arrives through the broker.
#[test]
fn weather_station_demo_reads_nmea_over_a_serial_port() {
    let stdout = demo("weather-station");
    let mut points = std::collections::BTreeSet::new();
    for line in stdout.lines() {
        if let Some((_, rest)) = line.split_once("weather/mast-07-wx/") {
            if let Some((point, _)) = rest.split_once(" = ") {
                points.insert(point.to_string());
            }
        }
    }
    assert_eq!(points.len(), 29, "{points:?}\n{stdout}");
    for (point, unit) in [
        ("pressure", "hPa"),
        ("air_temperature", "°C"),
        ("humidity", "%"),
        ("wind_speed_true", "m/s"),
        ("wind_angle_relative", "°"),
        ("AirTemp", "°C"),
        ("Battery", "V"),
        ("altitude", "m"),
        ("heading", "°"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("weather/mast-07-wx/{point} = ")))
            .unwrap_or_else(|| panic!("no {point} in:\n{stdout}"));
        assert!(line.contains(&format!(" {unit}   [mqtt")), "{line}");
    }
    assert!(
        !stdout.contains("(stale:") && !stdout.contains("(bad:"),
        "{stdout}"
    );
    assert!(stdout.contains(" readings committed, 0 lost."), "{stdout}");
}

/// `config/smart-pole.toml`, unchanged but for its UDP address and broker, against a
/// simulated packet forwarder: three poles' Cayenne LPP uplinks are verified, decrypted and
/// decoded, with their radio metadata, and arrive through the broker.
#[test]
fn smart_pole_demo_decodes_lorawan_uplinks() {
    let stdout = demo("smart-pole");
    for pole in ["pole-01", "pole-02", "pole-03"] {
        for (point, unit) in [
            ("temperature_1", " °C "),
            ("humidity_2", " %RH "),
            ("concentration_3", " ppm "),
            ("illuminance_5", " lux "),
            ("rssi", " dBm "),
            ("snr", " dB "),
        ] {
            let needle = format!("poles/{pole}/{point} = ");
            let line = stdout
                .lines()
                .find(|l| l.contains(&needle))
                .unwrap_or_else(|| panic!("no {needle} in:\n{stdout}"));
            assert!(line.contains(unit), "{line}");
        }
        assert!(
            stdout.contains(&format!("poles/{pole}/fcnt = 0 ")),
            "{stdout}"
        );
    }
    assert!(
        !stdout.contains("(stale:") && !stdout.contains("(bad:"),
        "{stdout}"
    );
    assert!(stdout.contains(" readings committed, 0 lost."), "{stdout}");
}
