//! The network core against public LoRaWAN 1.0.x test vectors. Every expected value comes
//! from the source named beside it, never from the code under test:
//! LP = anthonykirby/lora-packet (README, `__tests__/*.ts`), BL = brocaar/lorawan
//! (`phypayload_test.go`, `backend/joinserver/joinserver_test.go`), CS = chirpstack `lrwn`,
//! TTN = TheThingsNetwork/lorawan-stack `pkg/crypto/*_test.go`, LS = brocaar/loraserver
//! `internal/testsuite/uplink_test.go`. Each was also checked with an independent Python
//! implementation (AES/CMAC from `cryptography`) when the test was written.

use std::sync::Arc;
use std::time::SystemTime;

use fieldgate_adapter::{Command, CommandAction, Quality, Reading, Value};
use fieldgate_lorawan::network::{complete_mac_commands, join_accept, next_fcnt};
use fieldgate_lorawan::semtech::{base64_decode, DataRate};
use fieldgate_lorawan::sim::SimDevice;
use fieldgate_lorawan::{LorawanConfig, LorawanStats, Network, Reject, RxMeta};
use std::sync::atomic::Ordering;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key(s: &str) -> [u8; 16] {
    hex(s).try_into().expect("16 bytes")
}

fn network(toml: &str) -> Network {
    use figment::providers::{Format as _, Toml};
    let cfg: LorawanConfig = figment::Figment::from(Toml::string(toml))
        .extract()
        .expect("config");
    assert_eq!(cfg.validate(), vec![], "{toml}");
    Network::new("lora".into(), &cfg, Arc::new(LorawanStats::default()))
}

fn abp(addr: &str, nwk: &str, app: &str, extra: &str) -> String {
    format!(
        "[[devices]]\nname = \"dev\"\ndev_eui = \"0000000000000001\"\nactivation = \"abp\"\ndev_addr = \"{addr}\"\nnwk_skey = \"{nwk}\"\napp_skey = \"{app}\"\n{extra}\n"
    )
}

fn meta() -> RxMeta {
    RxMeta {
        gateway: 0xAA55_5A00_0000_0101,
        tmst: 1_000_000,
        freq: 868.1,
        chan: 0,
        rfch: 0,
        datr: DataRate::Lora("SF7BW125".into()),
        codr: "4/5".into(),
        rssi: Some(-57.0),
        snr: Some(9.5),
    }
}

fn value<'a>(readings: &'a [Reading], point: &str) -> &'a Value {
    &readings
        .iter()
        .find(|r| r.point == point)
        .unwrap_or_else(|| panic!("no `{point}` in {readings:?}"))
        .value
}

const LP_NWK: &str = "44024241ed4ce9a68c6a8bc055233fd3";
const LP_APP: &str = "ec925802ae430ca77fd3dd73cb2cc588";

#[test]
fn lora_packet_readme_uplinks_decrypt_in_order_and_replays_are_refused() {
    let mut net = network(&abp("49be7df1", LP_NWK, LP_APP, ""));
    let at = SystemTime::now();
    // LP README: DevAddr 49be7df1, FCnt 2, FPort 1, payload "test".
    let v1 = hex("40F17DBE4900020001954378762B11FF0D");
    let out = net.handle(&v1, &meta(), 1, at);
    assert_eq!(out.rejected, None);
    assert_eq!(
        value(&out.readings, "payload"),
        &Value::Bytes(b"test".to_vec())
    );
    assert_eq!(value(&out.readings, "fcnt"), &Value::I64(2));
    assert_eq!(value(&out.readings, "fport"), &Value::I64(1));
    assert_eq!(value(&out.readings, "rssi"), &Value::F64(-57.0));
    assert!(out
        .readings
        .iter()
        .all(|r| r.device == "dev" && r.source == "lora"));
    // LP mic_test.ts: FCnt 3, empty FRMPayload.
    let out = net.handle(&hex("40F17DBE49000300012A3518AF"), &meta(), 1, at);
    assert_eq!(out.rejected, None);
    assert_eq!(value(&out.readings, "fcnt"), &Value::I64(3));
    // LP decrypt_test.ts: a 44-byte payload (three keystream blocks), FCnt 4.
    let big = hex("40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7e5e334263376affb8aa17ad30075293f28dea8a20af3c5e7");
    let out = net.handle(&big, &meta(), 1, at);
    assert_eq!(
        value(&out.readings, "payload"),
        &Value::Bytes(b"The quick brown fox jumps over the lazy dog.".to_vec())
    );
    // The FCnt-2 frame again, and the last one again: replays.
    assert_eq!(
        net.handle(&v1, &meta(), 1, at).rejected,
        Some(Reject::Replay)
    );
    assert_eq!(
        net.handle(&big, &meta(), 1, at).rejected,
        Some(Reject::Replay)
    );
    // One flipped bit: the MIC matches no key.
    let mut bad = v1.clone();
    bad[9] ^= 1;
    assert_eq!(
        net.handle(&bad, &meta(), 1, at).rejected,
        Some(Reject::BadMic)
    );
    assert_eq!(net.stats().uplinks.load(Ordering::Relaxed), 3);
    // The counters are state to store: the device is dirty once.
    let dirty = net.take_dirty();
    assert_eq!(dirty.len(), 1);
    assert!(String::from_utf8_lossy(&dirty[0].1).contains("\"fcnt_up\":4"));
    assert!(net.take_dirty().is_empty());
}

#[test]
fn stored_counters_survive_a_restart() {
    let cfg = abp("49be7df1", LP_NWK, LP_APP, "");
    let mut net = network(&cfg);
    let v1 = hex("40F17DBE4900020001954378762B11FF0D");
    assert_eq!(
        net.handle(&v1, &meta(), 1, SystemTime::now()).rejected,
        None
    );
    let stored = net.take_dirty();
    let mut again = network(&cfg);
    again.restore(&stored);
    assert_eq!(
        again.handle(&v1, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::Replay),
        "a restart must not reopen a replay"
    );
    // New ABP keys for the device: the old counters do not apply.
    let rekeyed = abp("49be7df1", LP_NWK, "00000000000000000000000000000001", "");
    let mut fresh = network(&rekeyed);
    fresh.restore(&stored);
    assert_eq!(
        fresh.handle(&v1, &meta(), 1, SystemTime::now()).rejected,
        None
    );
}

#[test]
fn fport_zero_mac_commands_are_decrypted_with_the_network_key() {
    // LP packet_test.ts "port 0": DevAddr a1b2c3d4, FCnt 16, FRMPayload 02 (LinkCheckReq).
    let k = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";
    let mut net = network(&abp("a1b2c3d4", k, "000102030405060708090a0b0c0d0e0f", ""));
    let out = net.handle(
        &hex("40D4C3B2A1001000002712A3F9C9"),
        &meta(),
        1,
        SystemTime::now(),
    );
    assert_eq!(out.rejected, None);
    assert_eq!(value(&out.readings, "fcnt"), &Value::I64(16));
    assert_eq!(value(&out.readings, "fport"), &Value::I64(0));
    assert!(out.readings.iter().all(|r| r.point != "payload"));
    // BL "Mac-commands in FRMPayload": 02 03 05 (LinkCheckReq, LinkADRAns) under NwkSKey 01..
    let ones = "01010101010101010101010101010101";
    let mut net = network(&abp("01020304", ones, ones, ""));
    let out = net.handle(
        &hex("40040302010000000069369eee6aa508"),
        &meta(),
        1,
        SystemTime::now(),
    );
    assert_eq!(out.rejected, None);
    assert_eq!(net.stats().bad_mac_commands.load(Ordering::Relaxed), 0);
}

#[test]
fn counters_above_65535_need_the_upper_bits_the_air_does_not_carry() {
    // LS "unconfirmed uplink with FCnt rollover": stored FCntUp 65535, FCnt 65536 on the
    // wire as 0000, MIC 2e74fafc with NwkSKey 0102..10.
    let frame = hex("400403020100000001010203042e74fafc");
    let k = "0102030405060708090a0b0c0d0e0f10";
    let mut net = network(&abp("01020304", k, k, "fcnt_up = 65535"));
    let out = net.handle(&frame, &meta(), 1, SystemTime::now());
    assert_eq!(out.rejected, None);
    assert_eq!(value(&out.readings, "fcnt"), &Value::I64(65_536));
    // Without knowing the device passed 65535, the same frame cannot verify.
    let mut blind = network(&abp("01020304", k, k, ""));
    assert_eq!(
        blind.handle(&frame, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::BadMic)
    );
    // The reconstruction rule itself, with hand-computed cases.
    assert_eq!(next_fcnt(None, 7), Some(7));
    assert_eq!(next_fcnt(Some(65_535), 0), Some(65_536));
    assert_eq!(next_fcnt(Some(0x0001_2AFF), 0x2B00), Some(0x0001_2B00));
    assert_eq!(next_fcnt(Some(0x0001_2AFF), 0x2AFF), Some(0x0002_2AFF));
    // Past the 32-bit space nothing is accepted (wrapping would reopen old frames).
    assert_eq!(next_fcnt(Some(0xFFFF_FFF0), 3), None);
    assert_eq!(next_fcnt(Some(0xFFFF_FFF0), 0xFFF5), Some(0xFFFF_FFF5));
}

#[test]
fn confirmed_uplink_with_fopts_reports_device_status_and_is_acknowledged() {
    // BL/CS "LoRaWAN 1.0.x confirmed uplink": FOpts 06 73 07 = DevStatusAns battery 115,
    // margin 7; FPort 10; payload 01020304.
    let mut net = network(&abp(
        "01020304",
        "0102030405060708090a0b0c0d0e0f10",
        "100f0e0d0c0b0a090807060504030201",
        "",
    ));
    let out = net.handle(
        &hex("80040302010300000673070ae264d4f7e117d2c0"),
        &meta(),
        1,
        SystemTime::now(),
    );
    assert_eq!(out.rejected, None);
    assert_eq!(
        value(&out.readings, "payload"),
        &Value::Bytes(vec![1, 2, 3, 4])
    );
    assert_eq!(value(&out.readings, "margin"), &Value::I64(7));
    // Battery 115 of 254 (LoRaWAN 1.0 §5.5), as a percentage with one decimal.
    assert_eq!(value(&out.readings, "battery"), &Value::F64(45.3));
    let dl = out.downlink.expect("a confirmed uplink gets an ACK");
    let phy = base64_decode(&dl.txpk.data).expect("base64");
    assert_eq!(phy[0], 0x60, "unconfirmed data down");
    assert_eq!(phy[5] & 0x20, 0x20, "ACK set");
    assert_eq!(dl.txpk.tmst, 2_000_000, "RX1: one second after the uplink");
    assert_eq!(dl.txpk.freq, 868.1);
}

#[test]
fn downlinks_match_lora_packet_ack_vector() {
    // LP mic_test.ts "MIC for ACK": 60 f17dbe49 20 0200 01 f9d65d27: the third downlink
    // (FCnt 2) to 49be7df1, ACK set, FPort 1, no payload.
    let mut net = network(&abp("49be7df1", LP_NWK, LP_APP, ""));
    let mut dev = SimDevice {
        dev_addr: 0x49be_7df1,
        nwk_skey: key(LP_NWK),
        app_skey: key(LP_APP),
        fcnt: 10,
    };
    let mut replies = Vec::new();
    for i in 0..3 {
        let mut reply = None;
        if i == 2 {
            let (cmd, rx) = Command::new(
                "c1",
                "dev",
                CommandAction::Send {
                    port: Some(1),
                    payload: vec![],
                },
                None,
            );
            net.enqueue(cmd);
            reply = Some(rx);
        }
        let out = net.handle(&dev.uplink(2, b"x", true), &meta(), 1, SystemTime::now());
        assert_eq!(out.rejected, None);
        let dl = out.downlink.expect("ACK");
        replies.push(base64_decode(&dl.txpk.data).expect("base64"));
        if let Some(mut rx) = reply {
            assert!(dl.command.is_some(), "the command rides on this downlink");
            assert!(
                rx.try_recv().is_err(),
                "answered only once the gateway sent it"
            );
        }
    }
    assert_eq!(replies[2], hex("60f17dbe4920020001f9d65d27"));
    assert_eq!(replies[0][6..8], [0, 0], "downlink counters start at 0");
}

#[test]
fn cayenne_lpp_payload_from_ttn_docs() {
    let nwk = "000102030405060708090a0b0c0d0e0f";
    let app = "0f0e0d0c0b0a09080706050403020100";
    let mut net = network(&abp("26011f01", nwk, app, "codec = \"cayenne\""));
    let mut dev = SimDevice {
        dev_addr: 0x2601_1F01,
        nwk_skey: key(nwk),
        app_skey: key(app),
        fcnt: 0,
    };
    let out = net.handle(
        &dev.uplink(2, &hex("03 67 01 10 05 67 00 FF"), false),
        &meta(),
        1,
        SystemTime::now(),
    );
    assert_eq!(value(&out.readings, "temperature_3"), &Value::F64(27.2));
    assert_eq!(value(&out.readings, "temperature_5"), &Value::F64(25.5));
    let unit = out
        .readings
        .iter()
        .find(|r| r.point == "temperature_3")
        .and_then(|r| r.unit.clone());
    assert_eq!(unit.as_deref(), Some("°C"));
    // A payload that is not LPP is kept raw, with bad quality and the reason.
    let out = net.handle(
        &dev.uplink(2, &[3, 0x67, 1], false),
        &meta(),
        1,
        SystemTime::now(),
    );
    let raw = out
        .readings
        .iter()
        .find(|r| r.point == "payload")
        .expect("raw");
    assert_eq!(raw.value, Value::Bytes(vec![3, 0x67, 1]));
    assert!(matches!(raw.quality, Quality::Bad(_)), "{raw:?}");
    assert_eq!(net.stats().codec_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn truncated_mac_commands_are_cut_off_not_a_panic() {
    // lorawan 0.9.0's MAC command iterator indexes past the end of `[0x03]` (LinkADRAns
    // without its status byte) and panics; the guard hands it only complete commands.
    let crate_panics = std::panic::catch_unwind(|| {
        lorawan_encoding::maccommands::parse_uplink_mac_commands(&[0x03]).count()
    });
    assert!(
        crate_panics.is_err(),
        "the crate bug this guards against is fixed; the guard may go"
    );
    assert_eq!(complete_mac_commands(&[0x03]), (0, true));
    assert_eq!(complete_mac_commands(&[0x02, 0x06, 0x73]), (1, true));
    assert_eq!(complete_mac_commands(&[0x02, 0x03, 0x05]), (3, false));
    assert_eq!(complete_mac_commands(&[0x80]), (0, true));
    let k = "000102030405060708090a0b0c0d0e0f";
    let mut net = network(&abp("26011f01", k, k, ""));
    let dev = SimDevice {
        dev_addr: 0x2601_1F01,
        nwk_skey: key(k),
        app_skey: key(k),
        fcnt: 1,
    };
    for (i, fopts) in [&[0x03][..], &[0x06, 0x73], &[0x02, 0x03], &[0xFF; 15]]
        .into_iter()
        .enumerate()
    {
        let mut d = dev.clone();
        d.fcnt += u32::try_from(i).expect("small");
        let out = net.handle(
            &d.frame(1, b"ok", false, fopts),
            &meta(),
            1,
            SystemTime::now(),
        );
        assert_eq!(out.rejected, None, "{fopts:?}");
        assert_eq!(
            value(&out.readings, "payload"),
            &Value::Bytes(b"ok".to_vec())
        );
    }
    assert_eq!(net.stats().bad_mac_commands.load(Ordering::Relaxed), 4);
}

#[test]
fn join_requests_verify_and_devnonces_are_not_reused() {
    // BL ExamplePHYPayload_joinRequest: AppKey 0102..10, JoinEUI 0101.., DevEUI 0202..,
    // DevNonce 771, MIC 09b97b32.
    let toml = "net_id = \"000013\"\n[[devices]]\nname = \"pole\"\ndev_eui = \"0202020202020202\"\nactivation = \"otaa\"\napp_key = \"0102030405060708090a0b0c0d0e0f10\"\njoin_eui = \"0101010101010101\"\n";
    let mut net = network(toml);
    let req = hex("0001010101010101010202020202020202030309b97b32");
    let mut tampered = req.clone();
    tampered[17] ^= 1;
    assert_eq!(
        net.handle(&tampered, &meta(), 1, SystemTime::now())
            .rejected,
        Some(Reject::BadMic)
    );
    let out = net.handle(&req, &meta(), 1, SystemTime::now());
    assert_eq!(out.rejected, None);
    let dl = out.downlink.expect("a join accept");
    assert_eq!(
        dl.txpk.tmst, 6_000_000,
        "JOIN_ACCEPT_DELAY1 = 5 s after the request"
    );
    let accept = base64_decode(&dl.txpk.data).expect("base64");
    assert_eq!(accept.len(), 17);
    assert_eq!(accept[0], 0x20);
    // The same DevNonce again is refused, even after a restart.
    assert_eq!(
        net.handle(&req, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::NonceReuse)
    );
    let stored = net.take_dirty();
    let mut again = network(toml);
    again.restore(&stored);
    assert_eq!(
        again.handle(&req, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::NonceReuse)
    );
    // BL TestPHYPayloadJoinRequest for a device that is not configured: unknown.
    let other = hex("00040302010403020105040302050403022d106a990e12");
    assert_eq!(
        again.handle(&other, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::Unknown)
    );
}

#[test]
fn join_accept_and_session_keys_match_public_vectors() {
    // LP matched set (parse_test.ts, mic_test.ts, key_gen_test.ts): AppKey 98929b92..,
    // AppNonce 376338, NetID aabbcc, DevAddr 012ccde7, DevNonce f18e; the plaintext accept
    // 20 386337 ccbbaa e7cd2c01 00 00 d9d0a6e7.
    let (accept, nwk, app) = join_accept(
        key("98929b92c49edba9676d646d3b612456"),
        0x37_6338,
        [0xaa, 0xbb, 0xcc],
        0x012c_cde7,
        0,
        0xf18e,
    )
    .expect("accept");
    assert_eq!(nwk, key("4e3d6e6afbcc67af2ba3c8e8ec4acf4b"));
    assert_eq!(app, key("610897aa6f1460623443b527d3ac6a9d"));
    assert_eq!(accept.len(), 17);
    // TTN TestJoinAcceptEncryption: AppKey 01.., JoinNonce 010203, NetID 010203, DevAddr
    // 01020304, RxDelay 1 encrypts to c9fbb259e11649096a568a9e3b7117c3.
    let (accept, ..) =
        join_accept([1; 16], 0x01_0203, [1, 2, 3], 0x0102_0304, 1, 0).expect("accept");
    assert_eq!(accept, hex("20c9fbb259e11649096a568a9e3b7117c3"));
    // BL join server "valid join-request (LoRaWAN 1.0)": AppKey 0102..0708 twice,
    // JoinNonce 65536, NetID 010203, DevNonce 258.
    let (_, nwk, app) = join_accept(
        key("01020304050607080102030405060708"),
        65_536,
        [1, 2, 3],
        0x0102_0304,
        1,
        258,
    )
    .expect("accept");
    assert_eq!(nwk, key("df53c35f3034ccced0ff354c70de04df"));
    assert_eq!(app, key("927b9c911183cffe4cb2ff4b75545f6d"));
}

#[test]
fn joined_device_uplinks_with_its_new_session() {
    let toml = "net_id = \"000013\"\n[[devices]]\nname = \"pole\"\ndev_eui = \"0202020202020202\"\nactivation = \"otaa\"\napp_key = \"0102030405060708090a0b0c0d0e0f10\"\ncodec = \"cayenne\"\n";
    let mut net = network(toml);
    let req = hex("0001010101010101010202020202020202030309b97b32");
    let dl = net
        .handle(&req, &meta(), 1, SystemTime::now())
        .downlink
        .expect("accept");
    let mut accept = base64_decode(&dl.txpk.data).expect("base64");
    // Decrypt as the device does, with the crate, and take the address and keys from it.
    let Ok(lorawan_encoding::parser::PhyPayload::JoinAccept(
        lorawan_encoding::parser::JoinAcceptPayload::Encrypted(enc),
    )) = lorawan_encoding::parser::parse(&mut accept[..])
    else {
        panic!("not a join accept");
    };
    let appkey = lorawan_encoding::keys::AppKey::from(key("0102030405060708090a0b0c0d0e0f10"));
    let plain = enc.decrypt(&appkey);
    assert!(plain.validate_mic(&appkey));
    let addr = plain.dev_addr();
    let dev_addr = u32::from_le_bytes(addr.as_ref().try_into().expect("4"));
    assert_eq!(dev_addr >> 25, 0x13, "NwkID from the NetID");
    assert_eq!(plain.rx_delay(), 1);
    let nonce = lorawan_encoding::parser::DevNonce::from(771u16.to_le_bytes());
    let mut dev = SimDevice {
        dev_addr,
        nwk_skey: *plain
            .derive_newskey(&nonce, &appkey)
            .as_ref()
            .first_chunk()
            .expect("16"),
        app_skey: *plain
            .derive_appskey(&nonce, &appkey)
            .as_ref()
            .first_chunk()
            .expect("16"),
        fcnt: 0,
    };
    let out = net.handle(
        &dev.uplink(3, &hex("01 67 FF D7"), false),
        &meta(),
        1,
        SystemTime::now(),
    );
    assert_eq!(out.rejected, None);
    // Cayenne docs: 01 67 FF D7 = channel 1, -4.1 °C.
    assert_eq!(value(&out.readings, "temperature_1"), &Value::F64(-4.1));
}

#[test]
fn unknown_devices_are_forwarded_raw_when_the_filter_matches() {
    let toml =
        "[forward]\ndev_addr_prefixes = [\"48000000/7\"]\njoin_euis = [\"aa13693363343639\"]\n";
    let mut net = network(toml);
    let v1 = hex("40F17DBE4900020001954378762B11FF0D"); // 49be7df1: NwkID 0x24, in 48000000/7
    let out = net.handle(&v1, &meta(), 2, SystemTime::now());
    assert_eq!(out.rejected, None);
    assert_eq!(out.readings[0].device, "devaddr-49be7df1");
    assert_eq!(value(&out.readings, "frame"), &Value::Bytes(v1.clone()));
    assert_eq!(value(&out.readings, "gateways"), &Value::I64(2));
    // LP join request with JoinEUI aa13693363343639.
    let join = hex("0039363463336913AA05693574323831330489C65B1304");
    let out = net.handle(&join, &meta(), 1, SystemTime::now());
    assert_eq!(out.readings[0].device, "deveui-3331383274356905");
    // Not in the filter: dropped and counted.
    let other = hex("40040302010000000069369eee6aa508");
    assert_eq!(
        net.handle(&other, &meta(), 1, SystemTime::now()).rejected,
        Some(Reject::Unknown)
    );
    assert_eq!(net.stats().forwarded.load(Ordering::Relaxed), 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
    #[test]
    fn no_frame_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
        let k = "000102030405060708090a0b0c0d0e0f";
        let mut net = network(&format!(
            "[forward]\ndev_addr_prefixes = [\"00000000/0\"]\n{}",
            abp("26011f01", k, k, "codec = \"cayenne\"")
        ));
        let _ = net.handle(&bytes, &meta(), 1, SystemTime::now());
        // The same bytes behind a known DevAddr reach the MIC check and beyond.
        let mut framed = vec![0x40, 0x01, 0x1f, 0x01, 0x26];
        framed.extend_from_slice(&bytes);
        let _ = net.handle(&framed, &meta(), 1, SystemTime::now());
    }
}
