//! The real binary against a real Mosquitto: plain, TLS and mutual TLS; a wrong CA and a
//! wrong password; the broker restarted and the gateway SIGKILLed in the middle of a stream.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::{pki, Mosquitto, Subscriber};
use common::{mqtt_site, queue_stats, start, stop, wait_for};

/// `n` readings per point from `points` counter points at 1 ms.
fn counters(points: usize, n: u64) -> String {
    (0..points)
        .map(|i| format!("[[adapters.devices.points]]\nname = \"p{i}\"\nwaveform = \"counter\"\ninterval = \"1ms\"\ncount = {n}\n"))
        .collect()
}

/// Waits until the subscriber has seen every sequence id from 1 to `n`.
fn wait_all_seen(sub: &Subscriber, n: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen = sub.seqs();
        if (1..=n).all(|s| seen.contains_key(&s)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {secs}s the subscriber has {} distinct of {n} sequence ids",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivers(listener: Option<&str>, uplink: impl Fn(&Mosquitto) -> String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), listener);
    let sub = Subscriber::start(broker.plain_port, "fieldgate/#");
    let cfg = mqtt_site(dir.path(), &counters(2, 100), &uplink(&broker));
    let gw = start(&cfg);
    wait_all_seen(&sub, 200, 30);
    let logs = stop(gw);
    let online = sub
        .messages()
        .iter()
        .any(|(t, p)| t == "fieldgate/e2e/status" && p == b"online");
    assert!(online, "birth message; logs:\n{logs}");
    // A clean stop says goodbye: the retained status becomes "offline".
    wait_for("offline status", 10, || {
        sub.messages()
            .iter()
            .any(|(t, p)| t == "fieldgate/e2e/status" && p == b"offline")
    });
}

#[test]
fn delivers_over_plain_mqtt() {
    delivers(None, |b| format!("url = \"{}\"", b.url()));
}

#[test]
fn delivers_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path(), "tls");
    let listener = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        p.ca.display(),
        p.server_cert.display(),
        p.server_key.display()
    );
    let ca = p.ca.display().to_string();
    delivers(Some(&listener), |b| {
        format!("url = \"mqtts://localhost:{}\"\nca_file = \"{ca}\"", b.port)
    });
}

#[test]
fn delivers_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path(), "mtls");
    let listener = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        p.ca.display(),
        p.server_cert.display(),
        p.server_key.display()
    );
    let (ca, cert, key) = (
        p.ca.display().to_string(),
        p.client_cert.display().to_string(),
        p.client_key.display().to_string(),
    );
    delivers(Some(&listener), |b| {
        format!("url = \"mqtts://localhost:{}\"\nca_file = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"", b.port)
    });
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = pki(dir.path(), "real");
    let other = pki(dir.path(), "other");
    let listener = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        real.ca.display(),
        real.server_cert.display(),
        real.server_key.display()
    );
    let broker = Mosquitto::start(dir.path(), Some(&listener));
    let cfg = mqtt_site(
        dir.path(),
        &counters(1, 10),
        &format!(
            "url = \"mqtts://localhost:{}\"\nca_file = \"{}\"",
            broker.port,
            other.ca.display()
        ),
    );
    let gw = start(&cfg);
    std::thread::sleep(Duration::from_secs(3));
    let logs = stop(gw);
    assert!(
        logs.contains("not signed by a trusted CA: check ca_file"),
        "logs:\n{logs}"
    );
    let stats = queue_stats(&cfg);
    assert_eq!(
        stats["uplinks"][0]["delivered"], 0,
        "nothing delivered to an unverified broker"
    );
    assert_eq!(stats["depth"], 10, "the readings wait in the queue");
}

#[test]
fn a_wrong_password_is_refused_and_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args([
            "-b",
            "-c",
            passwd.to_str().expect("utf-8"),
            "gateway",
            "right-password",
        ])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(made.success());
    let broker = Mosquitto::start(
        dir.path(),
        Some(&format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        )),
    );
    let secret = dir.path().join("mqtt.pass");
    std::fs::write(&secret, "wrong-password\n").expect("write secret");
    let cfg = mqtt_site(
        dir.path(),
        &counters(1, 10),
        &format!(
            "url = \"{}\"\nusername = \"gateway\"\npassword = {{ file = \"{}\" }}",
            broker.url(),
            secret.display()
        ),
    );
    let gw = start(&cfg);
    std::thread::sleep(Duration::from_secs(5));
    let logs = stop(gw);
    // Attempts while running (the log after SIGTERM is the shutdown's).
    let running = logs.split("shutting down").next().unwrap_or("");
    let refusals = running.matches("cannot connect to the MQTT broker").count();
    assert!(
        running.contains("the broker refused"),
        "the cause is named; logs:\n{logs}"
    );
    // Backoff 1 s, 2 s, 4 s (jittered): a handful of attempts in 5 s, not a spin.
    assert!(
        (2..=5).contains(&refusals),
        "{refusals} refusals in 5 s; logs:\n{logs}"
    );
    assert!(
        !logs.contains("wrong-password"),
        "the password never appears in logs"
    );
}

#[test]
fn a_broker_restart_in_a_stream_of_100000_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::start(broker.plain_port, "fieldgate/#");
    let cfg = mqtt_site(
        dir.path(),
        &counters(50, 2000),
        &format!("url = \"{}\"", broker.url()),
    );
    let gw = start(&cfg);
    wait_for("a fifth of the stream", 60, || sub.seqs().len() >= 20_000);
    broker.restart(Duration::from_millis(1500));
    wait_all_seen(&sub, 100_000, 120);
    let logs = stop(gw);
    let seen = sub.seqs();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    // At most what was in flight when the link dropped is sent twice: 4 batches of 1000.
    assert!(duplicates <= 4000, "{duplicates} duplicates; logs:\n{logs}");
    assert!(
        logs.contains("lost the MQTT connection"),
        "the outage was noticed; logs:\n{logs}"
    );
}

#[test]
fn a_gateway_killed_mid_stream_delivers_everything_it_committed_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::start(broker.plain_port, "fieldgate/#");
    let cfg = mqtt_site(
        dir.path(),
        &counters(20, 2000),
        &format!("url = \"{}\"", broker.url()),
    );
    let gw = start(&cfg);
    wait_for("part of the stream", 60, || sub.seqs().len() >= 5_000);
    drop(gw); // SIGKILL
              // Restarted, it sends what the queue holds (and the simulator starts over).
    let gw = start(&cfg);
    wait_for("the queue to drain", 60, || {
        let s = queue_stats(&cfg);
        s["depth"] == 0 && s["appended"].as_u64().unwrap_or(0) >= 40_000
    });
    let appended = queue_stats(&cfg)["appended"].as_u64().expect("appended");
    wait_all_seen(&sub, appended, 30);
    stop(gw);
}
