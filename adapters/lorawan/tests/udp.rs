//! The LoRaWAN adapter end to end: a real UDP socket, packet forwarders speaking the Semtech
//! protocol to it ([`Forwarder`]), devices sealing real frames ([`SimDevice`]), readings on
//! the reading channel, commands on the command channel, state in a state store.
//!
//! Expected values are written out by hand from the bytes each test builds (Cayenne LPP
//! records, Join Accept fields, downlink layout), never taken from the code under test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_adapter::{
    reading_channel, Adapter, AdapterContext, AdapterError, Command, CommandAction, CommandError,
    CommandSender, MemoryState, Reading, ReadingReceiver, SharedState, ShutdownTrigger, Value,
};
use fieldgate_lorawan::semtech::{self, base64_encode};
use fieldgate_lorawan::sim::{join_request, pole_device, smart_pole_payload, Forwarder, SimDevice};
use fieldgate_lorawan::{Lorawan, LorawanConfig, LorawanStats};
use lorawan_encoding::keys::AppKey;
use lorawan_encoding::parser::{parse, DevNonce, JoinAcceptPayload, PhyPayload};
use serde_json::json;
use tokio::task::JoinHandle;

const GW_A: u64 = 0xAA55_5A00_0000_0101;
const GW_B: u64 = 0xAA55_5A00_0000_0202;
const WAIT: Duration = Duration::from_secs(3);

/// The demo pole 1 (`pole_device(1)`): DevAddr 26011f01, NwkSKey 21…, AppSKey 31….
const POLE: &str = r#"
[[devices]]
name = "pole-1"
dev_eui = "0000000000000101"
activation = "abp"
dev_addr = "26011f01"
nwk_skey = "21212121212121212121212121212121"
app_skey = "31313131313131313131313131313131"
codec = "cayenne"
"#;

struct Running {
    addr: std::net::SocketAddr,
    stats: Arc<LorawanStats>,
    rx: ReadingReceiver,
    commands: CommandSender,
    stop: ShutdownTrigger,
    task: JoinHandle<Result<(), AdapterError>>,
}

/// A section listening on a free port of 127.0.0.1 with `devices` and a 50 ms window.
fn config(devices: &str) -> LorawanConfig {
    config_with_window(devices, "50ms")
}

fn config_with_window(devices: &str, window: &str) -> LorawanConfig {
    use figment::providers::{Format as _, Toml};
    let text = format!("bind = \"127.0.0.1:0\"\ndedup_window = \"{window}\"\n{devices}");
    let cfg: LorawanConfig = figment::Figment::from(Toml::string(&text))
        .extract()
        .expect("valid TOML for a lorawan section");
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    cfg
}

/// Starts the adapter `lora` on a free port and waits until its socket is bound.
async fn start(cfg: LorawanConfig, state: SharedState) -> Running {
    let mut adapter = Lorawan::new(cfg);
    let bound = adapter.on_bound();
    let stats = adapter.stats();
    let (tx, rx) = reading_channel(10_000);
    let (stop, shutdown) = ShutdownTrigger::new();
    let (commands, command_rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(Box::new(adapter).run(AdapterContext {
        id: "lora".into(),
        readings: tx,
        shutdown,
        commands: command_rx,
        state,
    }));
    let addr = tokio::time::timeout(WAIT, bound)
        .await
        .expect("the adapter binds its socket in time")
        .expect("the adapter reports its address");
    Running {
        addr,
        stats,
        rx,
        commands,
        stop,
        task,
    }
}

impl Running {
    /// Sends the adapter a downlink command; its outcome arrives on the returned receiver.
    async fn command(
        &self,
        id: &str,
        device: &str,
        port: Option<u8>,
        payload: Vec<u8>,
        deadline: Option<std::time::Instant>,
    ) -> tokio::sync::oneshot::Receiver<fieldgate_adapter::Outcome> {
        let (cmd, reply) =
            Command::new(id, device, CommandAction::Send { port, payload }, deadline);
        self.commands.send(cmd).await.expect("send command");
        reply
    }

    async fn forwarder(&self, gateway: u64) -> Forwarder {
        Forwarder::new(gateway, self.addr)
            .await
            .expect("a forwarder socket")
    }

    /// Fires the shutdown signal and waits for `run` to return `Ok`.
    async fn stop(self) {
        self.stop.fire();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the adapter stops when told")
            .expect("no panic")
            .expect("no error");
    }
}

/// Readings until `done` holds for all received so far, or `timeout` passes (then whatever
/// came; the caller asserts).
async fn collect_until(
    rx: &mut ReadingReceiver,
    done: impl Fn(&[Reading]) -> bool,
    timeout: Duration,
) -> Vec<Reading> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Every reading that arrives within `window` (to show that nothing does).
async fn drain(rx: &mut ReadingReceiver, window: Duration) -> Vec<Reading> {
    collect_until(rx, |_| false, window).await
}

/// The readings of one uplink of `device`: `fport` is the last metadata reading of a frame.
async fn uplink_readings(rx: &mut ReadingReceiver, device: &str) -> Vec<Reading> {
    let out = collect_until(
        rx,
        |rs| rs.iter().any(|r| r.device == device && r.point == "fport"),
        WAIT,
    )
    .await;
    assert!(
        out.iter().any(|r| r.device == device && r.point == "fport"),
        "no complete uplink of {device} arrived: {out:?}"
    );
    out
}

fn value<'a>(readings: &'a [Reading], device: &str, point: &str) -> &'a Value {
    &reading(readings, device, point).value
}

fn reading<'a>(readings: &'a [Reading], device: &str, point: &str) -> &'a Reading {
    readings
        .iter()
        .find(|r| r.device == device && r.point == point)
        .unwrap_or_else(|| panic!("no `{point}` of `{device}` in {readings:?}"))
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Waits until `counter` reaches `want` (it never should pass it; the caller checks).
async fn counter_reaches(counter: &AtomicU64, want: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(counter) < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} stayed at {} (expected {want})",
            get(counter)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A PUSH_DATA (version 2) with any JSON body.
fn push_json(token: u16, gateway: u64, body: &str) -> Vec<u8> {
    let mut d = vec![2];
    d.extend_from_slice(&token.to_be_bytes());
    d.push(semtech::PUSH_DATA);
    d.extend_from_slice(&gateway.to_be_bytes());
    d.extend_from_slice(body.as_bytes());
    d
}

/// A Cayenne LPP payload built by hand; every value the tests expect is read off these bytes.
const LPP: [u8; 19] = [
    0x01, 0x67, 0x00, 0xE1, // ch 1 temperature: 0x00E1 = 225 x 0.1 °C = 22.5 °C
    0x02, 0x68, 0x6C, // ch 2 humidity: 0x6C = 108 x 0.5 %RH = 54 %RH
    0x03, 0x7D, 0x01, 0x90, // ch 3 concentration: 0x0190 = 400 ppm
    0x04, 0x02, 0xFF, 0x38, // ch 4 analog input: 0xFF38 = -200 x 0.01 = -2.0
    0x05, 0x65, 0x01, 0x2C, // ch 5 illuminance: 0x012C = 300 lux
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abp_cayenne_uplink_end_to_end() {
    let mut gw = start(config(POLE), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_A).await;
    let mut pole = pole_device(1);

    // The demo pole's own payload at step 0. Its bytes, read here by hand: 01 67 TT TT,
    // 02 68 HH, 03 7D CC CC, 04 02 PP PP, 05 65 LL LL.
    let p = smart_pole_payload(1, 0);
    assert_eq!(p.len(), 19);
    assert_eq!(
        [p[0], p[1], p[4], p[5], p[7], p[8], p[11], p[12], p[15], p[16]],
        [1, 0x67, 2, 0x68, 3, 0x7D, 4, 0x02, 5, 0x65]
    );
    let temp = f64::from(i16::from_be_bytes([p[2], p[3]])) / 10.0;
    let hum = f64::from(p[6]) / 2.0;
    let co2 = i64::from(u16::from_be_bytes([p[9], p[10]]));
    let pm = f64::from(i16::from_be_bytes([p[13], p[14]])) / 100.0;
    let lux = i64::from(u16::from_be_bytes([p[17], p[18]]));

    let frame = pole.uplink(2, &p, false);
    assert!(
        fwd.push(&[frame], 1_000_000, -57.0, 9.5).await,
        "PUSH_ACK for the uplink"
    );
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "temperature_1"), &Value::F64(temp));
    assert_eq!(value(&rs, "pole-1", "humidity_2"), &Value::F64(hum));
    assert_eq!(value(&rs, "pole-1", "concentration_3"), &Value::I64(co2));
    assert_eq!(value(&rs, "pole-1", "analog_in_4"), &Value::F64(pm));
    assert_eq!(value(&rs, "pole-1", "illuminance_5"), &Value::I64(lux));
    assert_eq!(value(&rs, "pole-1", "rssi"), &Value::F64(-57.0));
    assert_eq!(value(&rs, "pole-1", "snr"), &Value::F64(9.5));
    assert_eq!(
        value(&rs, "pole-1", "gateway"),
        &Value::Text("aa555a0000000101".into())
    );
    assert_eq!(value(&rs, "pole-1", "gateways"), &Value::I64(1));
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(0));
    assert_eq!(value(&rs, "pole-1", "fport"), &Value::I64(2));
    assert_eq!(value(&rs, "pole-1", "frequency"), &Value::F64(868.1));
    assert_eq!(
        value(&rs, "pole-1", "data_rate"),
        &Value::Text("SF7BW125".into())
    );
    assert!(rs
        .iter()
        .all(|r| r.source == "lora" && r.device == "pole-1"));

    // A payload built by hand, with every value written out.
    let frame = pole.uplink(2, &LPP, false);
    assert!(fwd.push(&[frame], 2_000_000, -80.5, -3.25).await);
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    let t = reading(&rs, "pole-1", "temperature_1");
    assert_eq!(t.value, Value::F64(22.5));
    assert_eq!(t.unit.as_deref(), Some("°C"));
    assert_eq!(value(&rs, "pole-1", "humidity_2"), &Value::F64(54.0));
    assert_eq!(value(&rs, "pole-1", "concentration_3"), &Value::I64(400));
    assert_eq!(value(&rs, "pole-1", "analog_in_4"), &Value::F64(-2.0));
    let lux = reading(&rs, "pole-1", "illuminance_5");
    assert_eq!(lux.value, Value::I64(300));
    assert_eq!(lux.unit.as_deref(), Some("lux"));
    assert_eq!(value(&rs, "pole-1", "rssi"), &Value::F64(-80.5));
    assert_eq!(value(&rs, "pole-1", "snr"), &Value::F64(-3.25));
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(1));
    // 5 values and 8 metadata readings (rssi, snr, frequency, data_rate, gateway,
    // gateways, fcnt, fport), nothing else.
    assert_eq!(rs.len(), 13, "{rs:?}");
    assert_eq!(get(&gw.stats.uplinks), 2);
    assert_eq!(get(&gw.stats.rxpk), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_from_two_gateways_are_one_uplink_with_the_best_reception() {
    // A window wide enough that both copies surely fall in it.
    let mut gw = start(config_with_window(POLE, "400ms"), MemoryState::shared()).await;
    let mut a = gw.forwarder(GW_A).await;
    let mut b = gw.forwarder(GW_B).await;
    let frame = pole_device(1).uplink(2, &LPP, false);
    // A hears it louder but noisier; B weaker but with the better SNR: SNR decides.
    assert!(
        a.push(std::slice::from_ref(&frame), 1_000_000, -60.0, -5.0)
            .await
    );
    assert!(b.push(&[frame], 7_000_000, -100.0, 7.0).await);
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "gateways"), &Value::I64(2));
    assert_eq!(value(&rs, "pole-1", "rssi"), &Value::F64(-100.0));
    assert_eq!(value(&rs, "pole-1", "snr"), &Value::F64(7.0));
    assert_eq!(
        value(&rs, "pole-1", "gateway"),
        &Value::Text("aa555a0000000202".into())
    );
    assert_eq!(value(&rs, "pole-1", "temperature_1"), &Value::F64(22.5));
    // Exactly one set: one of each point, and nothing more comes.
    assert_eq!(
        rs.iter().filter(|r| r.point == "temperature_1").count(),
        1,
        "{rs:?}"
    );
    let more = drain(&mut gw.rx, Duration::from_millis(600)).await;
    assert!(more.is_empty(), "a second set arrived: {more:?}");
    assert_eq!(get(&gw.stats.rxpk), 2);
    assert_eq!(get(&gw.stats.duplicates), 1);
    assert_eq!(get(&gw.stats.uplinks), 1);
    assert_eq!(get(&gw.stats.replays), 0);
    gw.stop().await;
}

const APP_KEY: [u8; 16] = [
    0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6, 0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF, 0x4F, 0x3C,
];
const DEV_EUI: u64 = 0x70B3_D57E_D000_0001;
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0000;

const OTAA: &str = r#"
[[devices]]
name = "otaa-1"
dev_eui = "70b3d57ed0000001"
activation = "otaa"
app_key = "2b7e151628aed2a6abf7158809cf4f3c"
join_eui = "70b3d57ed0000000"
codec = "cayenne"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otaa_join_round_trip_over_udp() {
    let mut gw = start(config(OTAA), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_A).await;
    assert!(fwd.pull().await, "PULL_ACK");
    let nonce: u16 = 0x1234;
    let request = join_request(APP_KEY, JOIN_EUI, DEV_EUI, nonce);
    assert_eq!(request.len(), 23);
    assert!(
        fwd.push(std::slice::from_ref(&request), 1_000_000, -70.0, 8.0)
            .await
    );

    let rx = fwd
        .downlink(WAIT)
        .await
        .expect("a PULL_RESP with the Join Accept");
    // JOIN_ACCEPT_DELAY1 (5 s) after the request, on its frequency, inverted polarity.
    assert_eq!(rx.txpk["tmst"], json!(6_000_000u32));
    assert_eq!(rx.txpk["freq"], json!(868.1));
    assert_eq!(rx.txpk["ipol"], json!(true));
    assert_eq!(rx.txpk["imme"], json!(false));
    assert_eq!(rx.txpk["datr"], json!("SF7BW125"));
    assert_eq!(rx.txpk["size"], json!(rx.phy.len()));
    assert_eq!(rx.phy.len(), 17, "a Join Accept without CFList");
    assert_eq!(rx.phy[0], 0x20, "MHDR of a Join Accept");

    let key = AppKey::from(APP_KEY);
    let Ok(PhyPayload::JoinAccept(JoinAcceptPayload::Encrypted(enc))) = parse(rx.phy.clone())
    else {
        panic!("not a Join Accept: {:02x?}", rx.phy);
    };
    let accept = enc.decrypt(&key);
    assert!(
        accept.validate_mic(&key),
        "the accept is signed with AppKey"
    );
    let a = accept.dev_addr();
    let dev_addr = u32::from_le_bytes([a.as_ref()[0], a.as_ref()[1], a.as_ref()[2], a.as_ref()[3]]);
    assert_eq!(dev_addr >> 25, 0, "NwkID of NetID 000000");
    assert_eq!(accept.rx_delay() & 0x0F, 1, "RX1 delay of 1 s");
    let dev_nonce = DevNonce::from(nonce.to_le_bytes());
    let nwk = accept.derive_newskey(&dev_nonce, &key);
    let app = accept.derive_appskey(&dev_nonce, &key);
    fwd.tx_ack(rx.token, None).await.expect("TX_ACK");

    let mut device = SimDevice {
        dev_addr,
        nwk_skey: nwk.inner().0,
        app_skey: app.inner().0,
        fcnt: 0,
    };
    assert!(
        fwd.push(&[device.uplink(2, &LPP, false)], 9_000_000, -71.0, 7.0)
            .await
    );
    let rs = uplink_readings(&mut gw.rx, "otaa-1").await;
    assert_eq!(value(&rs, "otaa-1", "temperature_1"), &Value::F64(22.5));
    assert_eq!(value(&rs, "otaa-1", "fcnt"), &Value::I64(0));
    assert_eq!(get(&gw.stats.joins), 1);
    assert_eq!(get(&gw.stats.downlinks), 1);
    assert_eq!(get(&gw.stats.downlink_errors), 0);

    // The same Join Request again (a replay of a recorded one): no accept, counted.
    assert!(fwd.push(&[request], 20_000_000, -70.0, 8.0).await);
    counter_reaches(&gw.stats.nonce_reuse, 1, "nonce_reuse").await;
    let again = fwd.downlink(Duration::from_millis(500)).await;
    assert!(again.is_none(), "answered a reused DevNonce: {again:?}");
    assert_eq!(get(&gw.stats.nonce_reuse), 1);
    assert_eq!(get(&gw.stats.joins), 1);
    assert_eq!(get(&gw.stats.downlinks), 1);
    // The session of the first join still works.
    assert!(
        fwd.push(&[device.uplink(2, &LPP, false)], 30_000_000, -71.0, 7.0)
            .await
    );
    let rs = uplink_readings(&mut gw.rx, "otaa-1").await;
    assert_eq!(value(&rs, "otaa-1", "fcnt"), &Value::I64(1));
    gw.stop().await;
}

/// Opens a downlink of pole 1 (DevAddr 26011f01, MIC with its NwkSKey, decrypted by the
/// crate) and returns (FCnt, FPort, payload).
fn open_downlink(phy: &[u8]) -> (u16, Option<u8>, Vec<u8>) {
    pole_device(1)
        .open_downlink(phy)
        .unwrap_or_else(|| panic!("not a downlink pole 1 can open: {phy:02x?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_commands_wait_for_an_uplink_and_for_tx_ack() {
    let mut gw = start(config(POLE), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_A).await;
    assert!(fwd.pull().await);
    let mut pole = pole_device(1);
    let deadline = || Some(std::time::Instant::now() + Duration::from_secs(30));

    // Refused at once: an unknown device, a missing port.
    let reply = gw
        .command("c0", "no-such-pole", Some(5), vec![1], deadline())
        .await;
    let r = tokio::time::timeout(WAIT, reply)
        .await
        .expect("answered at once")
        .expect("a reply");
    assert!(matches!(r, Err(CommandError::UnknownTarget(_))), "{r:?}");
    let reply = gw.command("c0b", "pole-1", None, vec![1], deadline()).await;
    let r = tokio::time::timeout(WAIT, reply)
        .await
        .expect("answered at once")
        .expect("a reply");
    assert!(matches!(r, Err(CommandError::InvalidValue(_))), "{r:?}");

    // A downlink for the pole: it waits for the pole's next uplink.
    let mut reply = gw
        .command("c1", "pole-1", Some(5), vec![1, 2, 3], deadline())
        .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut reply)
            .await
            .is_err(),
        "no reply before the device opened a receive window"
    );
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 2_000_000, -60.0, 5.0)
            .await
    );
    let rx = fwd.downlink(WAIT).await.expect("a PULL_RESP");
    // RX1: one second after the uplink, on its frequency.
    assert_eq!(rx.txpk["tmst"], json!(3_000_000u32));
    assert_eq!(rx.txpk["freq"], json!(868.1));
    assert_eq!(rx.txpk["ipol"], json!(true));
    assert_eq!(rx.txpk["powe"], json!(14));
    // MHDR (unconfirmed down), DevAddr LE, FCtrl 0, FCnt 0, FPort 5, 3 bytes, MIC.
    assert_eq!(rx.phy.len(), 1 + 4 + 1 + 2 + 1 + 3 + 4);
    assert_eq!(&rx.phy[..9], &[0x60, 0x01, 0x1F, 0x01, 0x26, 0x00, 0, 0, 5]);
    assert_eq!(open_downlink(&rx.phy), (0, Some(5), vec![1, 2, 3]));
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(0));
    // Pending until the gateway says it sent it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut reply)
            .await
            .is_err(),
        "the command was answered before TX_ACK"
    );
    fwd.tx_ack(rx.token, None).await.expect("TX_ACK");
    let r = tokio::time::timeout(WAIT, reply)
        .await
        .expect("answered after TX_ACK")
        .expect("a reply");
    assert_eq!(r, Ok(None));

    // Two more at once: the first goes with FPending set, and the gateway sends it too
    // late; the second follows the next uplink.
    let reply2 = gw
        .command("c2", "pole-1", Some(7), vec![0xAB], deadline())
        .await;
    let reply3 = gw
        .command("c3", "pole-1", Some(8), vec![0xCD, 0xEF], deadline())
        .await;
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 4_000_000, -60.0, 5.0)
            .await
    );
    let rx2 = fwd.downlink(WAIT).await.expect("a second PULL_RESP");
    assert_ne!(rx2.token, rx.token);
    assert_eq!(rx2.txpk["tmst"], json!(5_000_000u32));
    assert_eq!(rx2.phy[5], 0x10, "FCtrl with FPending: one more waits");
    assert_eq!(open_downlink(&rx2.phy), (1, Some(7), vec![0xAB]));
    fwd.tx_ack(rx2.token, Some("TOO_LATE"))
        .await
        .expect("TX_ACK");
    let r = tokio::time::timeout(WAIT, reply2)
        .await
        .expect("answered after TX_ACK")
        .expect("a reply");
    match r {
        Err(CommandError::Device(why)) => assert!(why.contains("TOO_LATE"), "{why}"),
        other => panic!("expected a device error, got {other:?}"),
    }
    uplink_readings(&mut gw.rx, "pole-1").await;
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 8_000_000, -60.0, 5.0)
            .await
    );
    let rx3 = fwd.downlink(WAIT).await.expect("a third PULL_RESP");
    assert_eq!(rx3.phy[5], 0x00, "nothing more pending");
    assert_eq!(open_downlink(&rx3.phy), (2, Some(8), vec![0xCD, 0xEF]));
    fwd.tx_ack(rx3.token, None).await.expect("TX_ACK");
    let r = tokio::time::timeout(WAIT, reply3)
        .await
        .expect("answered after TX_ACK")
        .expect("a reply");
    assert_eq!(r, Ok(None));
    uplink_readings(&mut gw.rx, "pole-1").await;

    // A command whose deadline passes before the device is heard again: Expired.
    let reply4 = gw
        .command(
            "c4",
            "pole-1",
            Some(5),
            vec![4],
            Some(std::time::Instant::now() + Duration::from_millis(100)),
        )
        .await;
    let r = tokio::time::timeout(WAIT, reply4)
        .await
        .expect("expired commands are answered without an uplink")
        .expect("a reply");
    assert_eq!(r, Err(CommandError::Expired));

    assert_eq!(get(&gw.stats.downlinks), 3);
    assert_eq!(get(&gw.stats.downlink_errors), 1);
    // Without a command, an unconfirmed uplink gets no downlink.
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 12_000_000, -60.0, 5.0)
            .await
    );
    uplink_readings(&mut gw.rx, "pole-1").await;
    assert!(fwd.downlink(Duration::from_millis(300)).await.is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_never_stops_the_server() {
    let mut gw = start(config(POLE), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_A).await;
    let mut pole = pole_device(1);

    // One good frame first (fcnt 0), kept for a replay later.
    let first = pole.uplink(2, &LPP, false);
    assert!(
        fwd.push(std::slice::from_ref(&first), 1_000_000, -60.0, 5.0)
            .await
    );
    uplink_readings(&mut gw.rx, "pole-1").await;

    // Not packet-forwarder protocol, or unreadable JSON: bad_datagrams.
    let gw_eui = GW_A.to_be_bytes();
    let mut wrong_version = vec![3, 0, 1, semtech::PUSH_DATA];
    wrong_version.extend_from_slice(&gw_eui);
    wrong_version.extend_from_slice(br#"{"rxpk":[]}"#);
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![2, 0, 1],
        wrong_version,
        vec![2, 0, 2, semtech::PUSH_DATA, 0xAA, 0x55], // header cut short
        vec![2, 0, 3, semtech::PUSH_ACK],              // an identifier a server never gets
        push_json(4, GW_A, "{\"rxpk\":[{\"data\":"),   // JSON cut short
        push_json(5, GW_A, "\u{1}\u{2} not json"),
    ];
    for d in &bad {
        fwd.send_raw(d).await.expect("send");
    }
    // Readable, but the frames in them are not: malformed, crc_errors.
    let rxpk = |data: &str, stat: i8| {
        json!({"rxpk": [{"tmst": 5, "freq": 868.1, "stat": stat, "modu": "LORA",
            "datr": "SF7BW125", "codr": "4/5", "rssi": -60, "lsnr": 5.0, "data": data}]})
        .to_string()
    };
    // Not base64.
    fwd.send_raw(&push_json(6, GW_A, &rxpk("QEAB*%!", 1)))
        .await
        .expect("send");
    // A CRC error reported by the radio.
    fwd.send_raw(&push_json(7, GW_A, &rxpk(&base64_encode(&LPP), -1)))
        .await
        .expect("send");
    // A data frame too short to be LoRaWAN.
    fwd.send_raw(&push_json(8, GW_A, &rxpk(&base64_encode(&[0x40, 1, 2]), 1)))
        .await
        .expect("send");

    // A device of another network (no forward filter): unknown.
    let mut stranger = SimDevice {
        dev_addr: 0x0102_0304,
        ..pole_device(1)
    };
    assert!(
        fwd.push(&[stranger.uplink(2, &LPP, false)], 10, -60.0, 5.0)
            .await
    );
    // Pole 1's next frame with one bit of its MIC flipped: bad_mic.
    let mut forged = pole.frame(2, &LPP, false, &[]);
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    assert!(fwd.push(&[forged], 11, -60.0, 5.0).await);
    // The first frame again: a replay.
    assert!(fwd.push(&[first], 12, -60.0, 5.0).await);

    let s = &gw.stats;
    counter_reaches(&s.replays, 1, "replays").await;
    counter_reaches(&s.bad_mic, 1, "bad_mic").await;
    counter_reaches(&s.unknown, 1, "unknown").await;
    counter_reaches(&s.malformed, 2, "malformed").await;
    let nothing = drain(&mut gw.rx, Duration::from_millis(150)).await;
    assert!(nothing.is_empty(), "garbage produced readings: {nothing:?}");

    // And a good frame still goes through.
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 13, -61.0, 4.0)
            .await
    );
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(1));
    assert_eq!(value(&rs, "pole-1", "temperature_1"), &Value::F64(22.5));

    assert_eq!(get(&s.bad_datagrams), bad.len() as u64);
    assert_eq!(get(&s.malformed), 2, "bad base64 and a short frame");
    assert_eq!(get(&s.crc_errors), 1);
    assert_eq!(get(&s.unknown), 1);
    assert_eq!(get(&s.bad_mic), 1);
    assert_eq!(get(&s.replays), 1);
    assert_eq!(get(&s.uplinks), 2);
    assert_eq!(get(&s.duplicates), 0);
    // 7 bad + 3 raw PUSH_DATA + 4 pushes of frames + the last one.
    assert_eq!(get(&s.datagrams), bad.len() as u64 + 3 + 4 + 1);
    assert!(!gw.task.is_finished(), "the adapter stopped");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_counters_survive_a_restart() {
    let store = Arc::new(MemoryState::default());
    let shared: SharedState = store.clone();
    let mut gw = start(config(POLE), Arc::clone(&shared)).await;
    let mut fwd = gw.forwarder(GW_A).await;
    let mut pole = pole_device(1);
    pole.fcnt = 41;
    let frame = pole.uplink(2, &LPP, false);
    assert!(
        fwd.push(std::slice::from_ref(&frame), 1_000_000, -60.0, 5.0)
            .await
    );
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(41));
    gw.stop().await;
    let stored = fieldgate_adapter::StateStore::load(store.as_ref(), "lora").expect("load");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].0, "dev:0000000000000101");

    // A fresh adapter on the same state: the old frame is a replay.
    let mut gw = start(config(POLE), shared).await;
    let mut fwd = gw.forwarder(GW_A).await;
    assert!(fwd.push(&[frame], 2_000_000, -60.0, 5.0).await);
    counter_reaches(&gw.stats.replays, 1, "replays").await;
    let nothing = drain(&mut gw.rx, Duration::from_millis(300)).await;
    assert!(nothing.is_empty(), "a replay was delivered: {nothing:?}");
    assert_eq!(get(&gw.stats.replays), 1);
    assert_eq!(get(&gw.stats.uplinks), 0);
    // The next one is not.
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 3_000_000, -60.0, 5.0)
            .await
    );
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(42));
    assert_eq!(get(&gw.stats.replays), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stat_reports_become_readings_of_the_gateway() {
    let mut gw = start(config(POLE), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_B).await;
    // A gateway that never sent PULL_DATA is not one of ours yet: its `stat` makes no device
    // (a spoofed EUI must not grow the series without end).
    assert!(fwd.stat(json!({ "rxnb": 1 })).await);
    let early = drain(&mut gw.rx, Duration::from_millis(200)).await;
    assert!(early.is_empty(), "{early:?}");
    assert!(fwd.pull().await);
    assert!(
        fwd.stat(json!({
            "time": "2024-05-01 12:00:00 GMT",
            "lati": 52.3702, "long": 4.8952, "alti": 12,
            "rxnb": 120, "rxok": 110, "rxfw": 105, "ackr": 99.5,
            "dwnb": 7, "txnb": 6, "temp": 41.5
        }))
        .await
    );
    let device = "gateway-aa555a0000000202";
    let rs = collect_until(&mut gw.rx, |rs| rs.len() >= 10, WAIT).await;
    assert_eq!(rs.len(), 10, "{rs:?}");
    assert!(rs.iter().all(|r| r.device == device && r.source == "lora"));
    for (point, v) in [
        ("rx_received", 120),
        ("rx_ok", 110),
        ("rx_forwarded", 105),
        ("downlinks_received", 7),
        ("tx_emitted", 6),
    ] {
        assert_eq!(value(&rs, device, point), &Value::I64(v), "{point}");
    }
    for (point, v, unit) in [
        ("ack_ratio", 99.5, "%"),
        ("latitude", 52.3702, "°"),
        ("longitude", 4.8952, "°"),
        ("altitude", 12.0, "m"),
        ("temperature", 41.5, "°C"),
    ] {
        let r = reading(&rs, device, point);
        assert_eq!(r.value, Value::F64(v), "{point}");
        assert_eq!(r.unit.as_deref(), Some(unit), "{point}");
    }
    // A partial report gives only what it has.
    assert!(fwd.stat(json!({"rxnb": 121})).await);
    let rs = collect_until(&mut gw.rx, |rs| !rs.is_empty(), WAIT).await;
    let more = drain(&mut gw.rx, Duration::from_millis(100)).await;
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(value(&rs, device, "rx_received"), &Value::I64(121));
    gw.stop().await;
}

// Regression: on shutdown, `run` flushed the window with `all = true`, which routed the
// pending uplink's downlink and, in the same `Server::flush`, answered every in-flight
// downlink `Ok(None)` ("no TX_ACK; taking it as sent"); the shutdown branch then returned
// without sending the downlinks. Now they are sent, and commands still waiting for their
// TX_ACK are dropped unanswered (outcome unknown), never reported sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_not_reported_sent_when_shutdown_drops_its_downlink() {
    let mut gw = start(config_with_window(POLE, "800ms"), MemoryState::shared()).await;
    let mut fwd = gw.forwarder(GW_A).await;
    assert!(fwd.pull().await);
    let reply = gw
        .command(
            "c1",
            "pole-1",
            Some(5),
            vec![1, 2, 3],
            Some(std::time::Instant::now() + Duration::from_secs(30)),
        )
        .await;
    // Commands are taken in order: once this one is refused, c1 is queued.
    let refused = gw
        .command("barrier", "no-such-pole", Some(5), vec![1], None)
        .await;
    let r = tokio::time::timeout(WAIT, refused)
        .await
        .expect("answered at once")
        .expect("a reply");
    assert!(matches!(r, Err(CommandError::UnknownTarget(_))), "{r:?}");
    // The uplink that opens the receive window is still in the 800 ms window when the
    // adapter is told to stop.
    let mut pole = pole_device(1);
    assert!(
        fwd.push(&[pole.uplink(2, &LPP, false)], 1_000_000, -60.0, 5.0)
            .await
    );
    gw.stop.fire();
    tokio::time::timeout(WAIT, &mut gw.task)
        .await
        .expect("the adapter stops when told")
        .expect("no panic")
        .expect("no error");
    // The uplink itself is delivered on the way out.
    let rs = uplink_readings(&mut gw.rx, "pole-1").await;
    assert_eq!(value(&rs, "pole-1", "fcnt"), &Value::I64(0));
    let sent = fwd.downlink(Duration::from_millis(500)).await;
    let outcome = tokio::time::timeout(WAIT, reply).await.expect("answered");
    assert!(
        sent.is_some(),
        "the downlink of the last uplink goes out on the way out"
    );
    assert_ne!(
        outcome,
        Ok(Ok(None)),
        "no TX_ACK came: the command must not be reported sent"
    );
}
