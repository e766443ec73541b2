//! Commands from the cloud, end to end: the real binary takes commands on an MQTT command
//! topic of a real Mosquitto and acts on real field devices in this process — a Modbus TCP
//! server, a LoRaWAN packet forwarder with an ABP device, an instrument on a pseudo-terminal.
//! Every test checks the exact responses on the response topic, what the device received,
//! and the audit table as `fieldgate queue audit` prints it.
//!
//! Expected values are written out by hand (raw register values, frame layout, reasons from
//! docs/commands.md), never taken from the code under test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mqtt::{Mosquitto, Publisher, Subscriber};
use common::{audit, free_udp_port, mqtt_site_with, start, stop, wait_for};
use serde_json::{json, Value};

const COMMANDS: &str = "fieldgate/e2e/commands";
const RESPONSES: &str = "fieldgate/e2e/commands/response";

/// A site with `adapters` (TOML `[[adapters]]` sections) and one MQTT uplink to `broker`
/// taking commands on [`COMMANDS`], answering on [`RESPONSES`].
fn site(dir: &Path, broker: &Mosquitto, adapters: &str) -> std::path::PathBuf {
    let uplink = format!(
        "url = \"{}\"\ncommand_topic = \"fieldgate/{{gateway}}/commands\"\nresponse_topic = \"fieldgate/{{gateway}}/commands/response\"",
        broker.url()
    );
    mqtt_site_with(dir, adapters, &uplink)
}

/// The cloud's side: publishes commands, reads the responses.
struct Cloud {
    publisher: Publisher,
    sub: Subscriber,
}

impl Cloud {
    fn new(broker: &Mosquitto) -> Cloud {
        Cloud {
            sub: Subscriber::start(broker.plain_port, "fieldgate/#"),
            publisher: Publisher::start(broker.plain_port, "cloud-commander"),
        }
    }

    fn send(&self, command: &Value) {
        self.publisher.publish(COMMANDS, &command.to_string());
    }

    /// Every response so far, in arrival order.
    fn responses(&self) -> Vec<Value> {
        self.sub
            .messages()
            .into_iter()
            .filter(|(t, _)| t == RESPONSES)
            .map(|(_, body)| serde_json::from_slice(&body).expect("a response is JSON"))
            .collect()
    }

    /// The responses to command `id`, in arrival order.
    fn responses_to(&self, id: &str) -> Vec<Value> {
        self.responses()
            .into_iter()
            .filter(|r| r["id"] == id)
            .collect()
    }

    /// Waits until command `id` has a final (`done` or `failed`) response and returns all
    /// its responses.
    fn finished(&self, id: &str) -> Vec<Value> {
        wait_for(&format!("a final response to {id}"), 10, || {
            self.responses_to(id)
                .iter()
                .any(|r| r["status"] == "done" || r["status"] == "failed")
        });
        self.responses_to(id)
    }

    /// Sends `command` and returns its responses once it finished.
    fn run(&self, command: &Value) -> Vec<Value> {
        self.send(command);
        self.finished(command["id"].as_str().expect("an id"))
    }

    /// Sends probes (commands for an adapter that does not exist) until one is answered
    /// naming `adapter` among the running ones: the gateway is then subscribed to the
    /// command topic and `adapter` takes commands. Returns the ids of the probes answered.
    fn wait_ready(&self, adapter: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in 1.. {
            assert!(
                Instant::now() < deadline,
                "the gateway never answered a probe naming `{adapter}`: {:?}",
                self.responses()
            );
            let id = format!("probe-{n}");
            self.send(&json!({"id": id, "adapter": "nowhere", "device": "d",
                              "action": "send", "hex": "00"}));
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && self.responses_to(&id).is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let known = |r: &Value| {
                r["reason"]
                    .as_str()
                    .and_then(|w| w.split("(known: ").nth(1))
                    .is_some_and(|k| k.trim_end_matches(')').split(", ").any(|a| a == adapter))
            };
            if self.responses_to(&id).iter().any(known) {
                break;
            }
        }
        // Every probe answered (also late ones) was refused the same way, once, not accepted.
        let probes: Vec<String> = self
            .responses()
            .iter()
            .filter_map(|r| r["id"].as_str().filter(|i| i.starts_with("probe-")))
            .map(str::to_string)
            .collect();
        for r in self
            .responses()
            .iter()
            .filter(|r| r["id"].as_str().is_some_and(|i| i.starts_with("probe-")))
        {
            assert_eq!(r["status"], "failed", "{r}");
            assert_eq!(r["gateway"], "e2e", "{r}");
            let why = r["reason"].as_str().expect("a reason");
            assert!(
                why.starts_with("unknown target: no running adapter `nowhere` (known: "),
                "{r}"
            );
        }
        let mut unique = probes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            probes.len(),
            "one response per probe: {probes:?}"
        );
        probes
    }
}

/// The statuses of `responses`, in order.
fn statuses(responses: &[Value]) -> Vec<&str> {
    responses
        .iter()
        .map(|r| r["status"].as_str().expect("a status"))
        .collect()
}

/// Checks that `responses` are exactly `want` (statuses in order), that each is well formed
/// (gateway, RFC 3339 `ts`), and that the last one's reason is `reason` (`None`: none).
#[track_caller]
fn check(responses: &[Value], want: &[&str], reason: Option<&str>) {
    assert_eq!(statuses(responses), want, "{responses:#?}");
    for r in responses {
        assert_eq!(r["gateway"], "e2e", "{r}");
        let ts = r["ts"].as_str().expect("a ts");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{r}");
        if r["status"] != "failed" {
            assert!(r.get("reason").is_none(), "{r}");
        }
    }
    let last = responses.last().expect("a response");
    match reason {
        Some(want) => assert_eq!(last["reason"], want, "{last}"),
        None => assert!(last.get("reason").is_none(), "{last}"),
    }
}

/// Like [`check`], for reasons checked by their start only (those quoting a parser's words).
#[track_caller]
fn check_prefix(responses: &[Value], want: &[&str], reason_starts: &str) {
    assert_eq!(statuses(responses), want, "{responses:#?}");
    let why = responses.last().expect("a response")["reason"]
        .as_str()
        .expect("a reason")
        .to_string();
    assert!(why.starts_with(reason_starts), "{why}");
}

/// The audit rows of command `id`.
fn rows<'a>(audit: &'a [Value], id: &str) -> Vec<&'a Value> {
    audit.iter().filter(|e| e["command_id"] == id).collect()
}

/// The one audit row of `id`, checked: `status`, `action`, `detail`, origin and target.
#[track_caller]
fn audited<'a>(
    audit: &'a [Value],
    id: &str,
    target: (&str, &str),
    action: &str,
    detail: &str,
    status: &str,
) -> &'a Value {
    let r = rows(audit, id);
    assert_eq!(r.len(), 1, "one audit row for {id}: {audit:#?}");
    let e = r[0];
    assert_eq!(e["origin"], "cloud", "{e}");
    assert_eq!(
        (e["adapter"].as_str(), e["device"].as_str()),
        (Some(target.0), Some(target.1)),
        "{e}"
    );
    assert_eq!(e["action"], action, "{e}");
    assert_eq!(e["detail"], detail, "{e}");
    assert_eq!(e["status"], status, "{e}");
    assert!(
        e["finished_ms"].as_i64() >= e["received_ms"].as_i64(),
        "{e}"
    );
    e
}

/// A multi-threaded runtime for the field devices that live in the test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const TANK: (&str, &str) = ("tanks", "tank-1");

/// The tank's section: a setpoint holding register limited to 1–4 m, a pump coil, and the
/// level, which is read-only.
fn tank_adapter(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[[adapters]]
id = "tanks"
type = "modbus"
transport = "tcp"
address = "{addr}"
interval = "500ms"

[[adapters.devices]]
id = "tank-1"
unit = 1

[[adapters.devices.points]]
name = "setpoint"
address = "40001"
scale = 0.01
unit = "m"
writable = true
min = 1.0
max = 4.0

[[adapters.devices.points]]
name = "pump"
address = "00001"
writable = true

[[adapters.devices.points]]
name = "level"
address = "30001"
scale = 0.01
unit = "m"
"#
    )
}

fn write_cmd(id: &str, point: &str, value: Value) -> Value {
    json!({"id": id, "adapter": "tanks", "device": "tank-1", "action": "write",
           "point": point, "value": value})
}

#[test]
fn modbus_writes_are_executed_read_back_refused_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (server, _serving, addr) = common::modbus_device(&rt);
    let broker = Mosquitto::start(dir.path(), None);
    let cloud = Cloud::new(&broker);
    let cfg = site(dir.path(), &broker, &tank_adapter(addr));
    let gw = start(&cfg);
    let probes = cloud.wait_ready("tanks");

    // A setpoint in metres: 3.2 m is raw 320 (scale 0.01); done carries the value read back.
    let r = cloud.run(&write_cmd("sp-1", "setpoint", json!(3.2)));
    check(&r, &["accepted", "done"], None);
    let back = r[1]["value"].as_f64().expect("a read-back number");
    assert!((back - 3.2).abs() < 1e-9, "{r:?}");
    assert!(r[0].get("value").is_none());
    assert_eq!(server.holding(1, 0, 1), vec![320]);

    // The pump's coil.
    assert!(!server.coil(1, 0));
    let r = cloud.run(&write_cmd("pump-1", "pump", json!(true)));
    check(&r, &["accepted", "done"], None);
    assert_eq!(r[1]["value"], true);
    assert!(server.coil(1, 0));

    // Refused by the adapter (so accepted first): a read-only point, a value over `max`.
    let r = cloud.run(&write_cmd("level-1", "level", json!(1)));
    check(
        &r,
        &["accepted", "failed"],
        Some(
            "not supported: point `level` of device `tank-1` is not writable (set \
             `writable = true` in its config to allow it)",
        ),
    );
    let r = cloud.run(&write_cmd("sp-2", "setpoint", json!(4.5)));
    check(
        &r,
        &["accepted", "failed"],
        Some("invalid value: 4.5 is out of range for point `setpoint` of device `tank-1` (allowed 1 to 4)"),
    );
    assert_eq!(server.holding(1, 0, 1), vec![320], "nothing written");

    // Refused before the adapter (so failed only): expired, a duplicate id, a malformed one.
    let mut expired = write_cmd("sp-3", "setpoint", json!(2.0));
    expired["deadline"] = json!("2020-01-01T00:00:00Z");
    let r = cloud.run(&expired);
    check(&r, &["failed"], Some("expired before it could be executed"));
    let r0 = cloud.responses_to("sp-1").len();
    cloud.send(&write_cmd("sp-1", "setpoint", json!(1.5)));
    wait_for("the duplicate's response", 10, || {
        cloud.responses_to("sp-1").len() > r0
    });
    let r = cloud.responses_to("sp-1");
    check(
        &r[r0..],
        &["failed"],
        Some("duplicate command id: already received (status done)"),
    );
    let mut typo = write_cmd("bad-1", "setpoint", json!(2.0));
    typo["colour"] = json!("red");
    let r = cloud.run(&typo);
    check_prefix(
        &r,
        &["failed"],
        "bad command: unknown field `colour`, expected one of",
    );
    assert_eq!(server.holding(1, 0, 1), vec![320], "nothing written");
    assert!(server.coil(1, 0));

    // Nothing else was answered: every response belongs to a command above, in order.
    let ids: Vec<String> = cloud
        .responses()
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .filter(|i| !i.starts_with("probe-"))
        .collect();
    assert_eq!(
        ids,
        [
            "sp-1", "sp-1", "pump-1", "pump-1", "level-1", "level-1", "sp-2", "sp-2", "sp-3",
            "sp-1", "bad-1"
        ]
    );

    // The audit, read beside the running gateway, then after it stopped: one row per
    // command (the duplicate adds none), newest first.
    let check_audit = |audit: &[Value]| {
        let e = audited(audit, "sp-1", TANK, "write", "setpoint = 3.2", "done");
        assert_eq!(e["result"], "3.2");
        assert!(e["reason"].is_null(), "{e}");
        let e = audited(audit, "pump-1", TANK, "write", "pump = true", "done");
        assert_eq!(e["result"], "true");
        let e = audited(audit, "level-1", TANK, "write", "level = 1", "failed");
        assert!(
            e["reason"]
                .as_str()
                .expect("reason")
                .contains("not writable"),
            "{e}"
        );
        assert!(e["result"].is_null(), "{e}");
        let e = audited(audit, "sp-2", TANK, "write", "setpoint = 4.5", "failed");
        assert!(
            e["reason"]
                .as_str()
                .expect("reason")
                .contains("out of range"),
            "{e}"
        );
        let e = audited(audit, "sp-3", TANK, "write", "setpoint = 2", "failed");
        assert_eq!(e["reason"], "expired before it could be executed");
        let e = audited(
            audit,
            "bad-1",
            ("", ""),
            "invalid",
            &typo.to_string(),
            "failed",
        );
        assert!(
            e["reason"]
                .as_str()
                .expect("reason")
                .starts_with("bad command: unknown field `colour`"),
            "{e}"
        );
        for p in &probes {
            audited(audit, p, ("nowhere", "d"), "send", "00", "failed");
        }
        let order: Vec<&str> = audit
            .iter()
            .filter_map(|e| e["command_id"].as_str())
            .filter(|i| !i.starts_with("probe-"))
            .collect();
        assert_eq!(
            order,
            ["bad-1", "sp-3", "sp-2", "level-1", "pump-1", "sp-1"]
        );
        assert_eq!(audit.len(), 6 + probes.len(), "{audit:#?}");
    };
    check_audit(&audit(&cfg));
    stop(gw);
    check_audit(&audit(&cfg));
}

/// The same command id delivered twice in a row (an MQTT redelivery arrives right behind
/// the original) runs once: one `accepted`/`done`, one `failed` duplicate.
///
/// Regression: the router used to look the id up and record it in two steps of tasks that
/// run concurrently, so both deliveries passed the check and both ran (`accepted, accepted,
/// done, done`, two audit rows). `AuditLog::claim` now does both under one lock.
#[test]
fn a_command_delivered_twice_back_to_back_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (server, _serving, addr) = common::modbus_device(&rt);
    let broker = Mosquitto::start(dir.path(), None);
    let cloud = Cloud::new(&broker);
    let cfg = site(dir.path(), &broker, &tank_adapter(addr));
    let gw = start(&cfg);
    cloud.wait_ready("tanks");
    for i in 0..5 {
        let id = format!("twice-{i}");
        let cmd = write_cmd(&id, "setpoint", json!(1.0 + f64::from(i) / 2.0));
        cloud.send(&cmd);
        cloud.send(&cmd);
        wait_for("both deliveries answered", 10, || {
            let r = cloud.responses_to(&id);
            r.iter().filter(|r| r["status"] != "accepted").count() == 2
        });
        let r = cloud.responses_to(&id);
        let (refused, ran): (Vec<Value>, Vec<Value>) =
            r.iter().cloned().partition(|r| r["status"] == "failed");
        // The duplicate's refusal may come before, between or after the original's responses.
        assert_eq!(statuses(&ran), ["accepted", "done"], "{r:#?}");
        assert_eq!(refused.len(), 1, "{r:#?}");
        let why = refused[0]["reason"].as_str().expect("a reason");
        assert!(
            why.starts_with("duplicate command id: already received (status "),
            "{r:#?}"
        );
        let a = audit(&cfg);
        assert_eq!(rows(&a, &id).len(), 1, "{a:#?}");
    }
    let raw = 100 + 4 * 50; // the last one: 3.0 m
    assert_eq!(server.holding(1, 0, 1), vec![raw]);
    stop(gw);
}

const POLE_EUI: u64 = 0xAA55_5A00_0000_0101;

#[test]
fn lorawan_downlinks_go_out_after_the_next_uplink_and_finish_on_tx_ack() {
    use fieldgate_lorawan::sim::{pole_device, smart_pole_payload, Forwarder};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let broker = Mosquitto::start(dir.path(), None);
    let cloud = Cloud::new(&broker);
    let port = free_udp_port();
    // The demo's pole 1 (`pole_device(1)`): DevAddr 26011f01, NwkSKey 21…, AppSKey 31….
    let adapter = format!(
        r#"
[[adapters]]
id = "poles"
type = "lorawan"
bind = "127.0.0.1:{port}"
dedup_window = "50ms"

[[adapters.devices]]
name = "pole-1"
dev_eui = "0000000000000101"
activation = "abp"
dev_addr = "26011f01"
nwk_skey = "21212121212121212121212121212121"
app_skey = "31313131313131313131313131313131"
codec = "cayenne"
"#
    );
    let cfg = site(dir.path(), &broker, &adapter);
    let gw = start(&cfg);
    let mut fwd = rt
        .block_on(Forwarder::new(POLE_EUI, ([127, 0, 0, 1], port).into()))
        .expect("a forwarder socket");
    // PULL_DATA opens the downlink route (and shows the adapter listens).
    wait_for("PULL_ACK", 10, || rt.block_on(fwd.pull()));
    cloud.wait_ready("poles");
    let mut pole = pole_device(1);
    // Its radio: opens what the gateway sends it (DevAddr, MIC, decryption).
    let radio = pole.clone();
    let mut t = 0u64;

    // Uplinks until one carries the downlink away (the command reaches the adapter a
    // moment after `accepted`). Returns the PULL_RESP.
    let mut uplink_until_downlink = |fwd: &mut Forwarder| {
        for _ in 0..10 {
            let frame = pole.uplink(2, &smart_pole_payload(1, t), false);
            let tmst = 1_000_000 * u32::try_from(t + 1).expect("small");
            t += 1;
            assert!(
                rt.block_on(fwd.push(&[frame], tmst, -60.0, 5.0)),
                "PUSH_ACK"
            );
            if let Some(rx) = rt.block_on(fwd.downlink(Duration::from_secs(1))) {
                // RX1: one second after the uplink that opened it.
                assert_eq!(rx.txpk["tmst"], json!(tmst + 1_000_000), "{}", rx.txpk);
                return rx;
            }
        }
        panic!("no PULL_RESP after 10 uplinks: {:#?}", cloud.responses());
    };

    let send = |id: &str, port: u8, hex: &str| {
        json!({"id": id, "adapter": "poles", "device": "pole-1", "action": "send",
               "port": port, "hex": hex, "ttl": "30s"})
    };
    cloud.send(&send("dl-1", 10, "0164"));
    wait_for("dl-1 accepted", 10, || {
        !cloud.responses_to("dl-1").is_empty()
    });
    let rx = uplink_until_downlink(&mut fwd);
    // MHDR unconfirmed data down, DevAddr 26011f01 LE, FCtrl 0, FCnt 0, FPort 10, 2 bytes,
    // MIC.
    assert_eq!(rx.phy.len(), 1 + 4 + 1 + 2 + 1 + 2 + 4, "{:02x?}", rx.phy);
    assert_eq!(
        &rx.phy[..9],
        &[0x60, 0x01, 0x1F, 0x01, 0x26, 0x00, 0, 0, 10]
    );
    assert_eq!(
        radio.open_downlink(&rx.phy),
        Some((0, Some(10), vec![0x01, 0x64]))
    );
    // Not done before the gateway confirmed the transmission.
    check(&cloud.responses_to("dl-1"), &["accepted"], None);
    rt.block_on(fwd.tx_ack(rx.token, None)).expect("TX_ACK");
    let r = cloud.finished("dl-1");
    check(&r, &["accepted", "done"], None);
    assert!(r[1].get("value").is_none(), "a downlink reads nothing back");

    // The gateway refuses the next one (TX_ACK with an error): failed, with its error.
    cloud.send(&send("dl-2", 11, "ab"));
    wait_for("dl-2 accepted", 10, || {
        !cloud.responses_to("dl-2").is_empty()
    });
    let rx = uplink_until_downlink(&mut fwd);
    assert_eq!(
        &rx.phy[5..9],
        &[0x00, 1, 0, 11],
        "FCtrl 0, FCnt 1, FPort 11"
    );
    assert_eq!(
        radio.open_downlink(&rx.phy),
        Some((1, Some(11), vec![0xAB]))
    );
    rt.block_on(fwd.tx_ack(rx.token, Some("TOO_LATE")))
        .expect("TX_ACK");
    let r = cloud.finished("dl-2");
    assert_eq!(statuses(&r), ["accepted", "failed"], "{r:#?}");
    let why = r[1]["reason"].as_str().expect("a reason");
    assert!(
        why.starts_with("device error: ") && why.contains("TOO_LATE"),
        "{why}"
    );

    // Refused by the adapter: FPort 0; by the router: a payload that is not hex.
    let r = cloud.run(&send("dl-3", 0, "01"));
    check(
        &r,
        &["accepted", "failed"],
        Some("invalid value: a downlink needs an FPort from 1 to 223"),
    );
    let r = cloud.run(&send("dl-4", 5, "0g"));
    check(
        &r,
        &["failed"],
        Some("invalid value: `hex` \"0g\" is not hex"),
    );

    let a = audit(&cfg);
    let pole_target = ("poles", "pole-1");
    audited(&a, "dl-1", pole_target, "send", "port 10: 0164", "done");
    let e = audited(&a, "dl-2", pole_target, "send", "port 11: ab", "failed");
    assert!(
        e["reason"].as_str().expect("reason").contains("TOO_LATE"),
        "{e}"
    );
    audited(&a, "dl-3", pole_target, "send", "port 0: 01", "failed");
    let bad = send("dl-4", 5, "0g").to_string();
    audited(&a, "dl-4", ("", ""), "invalid", &bad, "failed");
    stop(gw);
}

#[test]
fn serial_sends_write_the_line_to_the_port() {
    use fieldgate_serial::sim::{nmea_sentence, VirtualPort};
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let broker = Mosquitto::start(dir.path(), None);
    let cloud = Cloud::new(&broker);
    let link = dir.path().join("ttyWX");
    let adapter = format!(
        r#"
[[adapters]]
id = "wx"
type = "serial"
port = "{}"
format = "nmea"
backoff_min = "50ms"
backoff_max = "200ms"
"#,
        link.display()
    );
    let cfg = site(dir.path(), &broker, &adapter);
    let gw = start(&cfg);
    // The instrument is plugged in after the gateway started (it waits for the port): a
    // pseudo-terminal made before would be inherited by the gateway process.
    let mut port = {
        let _rt = rt.enter();
        VirtualPort::new(&link).expect("a pseudo-terminal")
    };
    // The port is open once the instrument's readings come through.
    let sentence = nmea_sentence("HCHDT,12.5,T");
    wait_for("a reading from the instrument", 15, || {
        rt.block_on(port.write(sentence.as_bytes())).expect("write");
        std::thread::sleep(Duration::from_millis(50));
        cloud
            .sub
            .messages()
            .iter()
            .any(|(t, _)| t == "fieldgate/e2e/wx/wx")
    });
    cloud.wait_ready("wx");

    // What the instrument receives, until `want` (or 5 s).
    let mut received = Vec::new();
    let mut read_until = |want: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !received.windows(want.len()).any(|w| w == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = [0u8; 256];
            match rt.block_on(async { tokio::time::timeout(left, port.read(&mut buf)).await }) {
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("reading the instrument's end: {e}"),
                Err(_) => panic!(
                    "the instrument got {:?}, not {:?}",
                    String::from_utf8_lossy(&received),
                    String::from_utf8_lossy(want)
                ),
            }
        }
        std::mem::take(&mut received)
    };

    let send = |id: &str, text: &str| json!({"id": id, "adapter": "wx", "device": "wx", "action": "send", "text": text});
    let r = cloud.run(&send("reset-1", "RESET\r\n"));
    check(&r, &["accepted", "done"], None);
    assert_eq!(read_until(b"RESET\r\n"), b"RESET\r\n");
    // Without a terminator, the adapter's line_ending ("\r\n") is added.
    let r = cloud.run(&send("status-1", "STATUS"));
    check(&r, &["accepted", "done"], None);
    assert_eq!(read_until(b"STATUS\r\n"), b"STATUS\r\n");
    // A serial line has no port; a write is not a send.
    let mut with_port = send("port-1", "X\r\n");
    with_port["port"] = json!(3);
    let r = cloud.run(&with_port);
    check(
        &r,
        &["accepted", "failed"],
        Some("not supported: a serial line has no port (got 3)"),
    );
    let r = cloud.run(&json!({"id": "write-1", "adapter": "wx", "device": "wx",
                              "action": "write", "point": "heading", "value": 1}));
    check(
        &r,
        &["accepted", "failed"],
        Some(
            "not supported: point `heading`: the serial adapter does not write points; send \
             the instrument's own command line instead",
        ),
    );
    // Another device of this adapter: refused by the adapter.
    let r = cloud.run(&json!({"id": "other-1", "adapter": "wx", "device": "gps",
                              "action": "send", "text": "X\r\n"}));
    check(
        &r,
        &["accepted", "failed"],
        Some("unknown target: device `gps`: this adapter serves `wx`"),
    );

    let a = audit(&cfg);
    let wx = ("wx", "wx");
    audited(&a, "reset-1", wx, "send", "52455345540d0a", "done");
    audited(&a, "status-1", wx, "send", "535441545553", "done");
    audited(&a, "port-1", wx, "send", "port 3: 580d0a", "failed");
    audited(&a, "write-1", wx, "write", "heading = 1", "failed");
    audited(&a, "other-1", ("wx", "gps"), "send", "580d0a", "failed");
    stop(gw);
}
