//! Writes the committed seed inputs under `seeds/<target>/` and checks that the LoRaWAN
//! ones do what their names say (readings, a join, a forwarded frame). Run from `fuzz/`:
//! `cargo run --example gen_seeds`. (The `modbus_response` seeds are checked by running the
//! target on them with `MODBUS_FUZZ_DEBUG=1`, which prints every reading.)

#[path = "../common/lorawan.rs"]
mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fieldgate_lorawan::sim::{self, SimDevice};
use fieldgate_lorawan::{semtech, Effects};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

/// Readings and downlinks of the `lorawan_datagram` target's steps for `datagram` fed raw
/// and wrapped.
fn check(datagram: &[u8]) -> (usize, usize) {
    let mut server = common::server();
    let from = SocketAddr::from(([127, 0, 0, 1], 41_700));
    let now = Instant::now();
    let mut fx = Effects::default();
    let mut pull = vec![2, 0x12, 0x34, semtech::PULL_DATA];
    pull.extend_from_slice(&common::GATEWAY.to_be_bytes());
    server.datagram(from, &pull, now, common::wall_clock(), &mut fx);
    server.datagram(from, datagram, now, common::wall_clock(), &mut fx);
    let push = sim::push_data(
        7,
        common::GATEWAY,
        &[datagram.to_vec()],
        1_000_000,
        -71.0,
        7.5,
    );
    server.datagram(from, &push, now, common::wall_clock(), &mut fx);
    server.flush(now + Duration::from_secs(10), true, &mut fx);
    (fx.readings.len(), fx.downlinks.len())
}

fn main() {
    // --- LoRaWAN frames of the configured devices.
    let mut pole = sim::pole_device(1); // 26011f01, Cayenne
    let pole_phy = pole.uplink(2, &sim::smart_pole_payload(1, 0), false);
    let pole_confirmed = pole.uplink(2, &sim::smart_pole_payload(1, 1), true);
    // LinkCheckReq (0x02) and DevStatusAns (0x06, battery, margin) in FOpts.
    let pole_fopts = pole.frame(
        2,
        &sim::smart_pole_payload(1, 2),
        false,
        &[0x02, 0x06, 0xfe, 0x05],
    );
    let mut tank = SimDevice {
        dev_addr: 0x2601_1F02,
        nwk_skey: [0x22; 16],
        app_skey: [0x32; 16],
        fcnt: 0,
    };
    let mut layout = Vec::new();
    layout.extend_from_slice(&215i16.to_be_bytes()); // temperature 21.5
    layout.push(0b0000_1000); // pump_on
    layout.extend_from_slice(&1.25f32.to_le_bytes()); // level
    layout.extend_from_slice(&[0x00, 0x30, 0x39]); // flow
    layout.extend_from_slice(&123_456_789i64.to_be_bytes()); // total (fport 2)
    let tank_phy = tank.uplink(2, &layout, true);
    let tank_p3 = tank.uplink(3, &layout, false);
    let join = sim::join_request(
        [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ],
        0x70B3_D57E_D000_0000,
        0x70B3_D57E_D000_0003,
        0x0101,
    );
    let mut stranger = SimDevice {
        dev_addr: 0x0400_0001,
        nwk_skey: [0x77; 16],
        app_skey: [0x78; 16],
        fcnt: 9,
    };
    let stranger_phy = stranger.uplink(10, b"hello", false);

    // --- lorawan_datagram: whole datagrams, and bare frames (the target wraps them).
    let t = "lorawan_datagram";
    let push_pole = sim::push_data(
        1,
        common::GATEWAY,
        std::slice::from_ref(&pole_phy),
        1_000_000,
        -71.0,
        7.5,
    );
    let push_two = sim::push_data(
        2,
        common::GATEWAY,
        &[tank_phy.clone(), join.clone(), stranger_phy.clone()],
        2_000_000,
        -90.5,
        -3.25,
    );
    let mut stat = vec![2, 0, 3, semtech::PUSH_DATA];
    stat.extend_from_slice(&common::GATEWAY.to_be_bytes());
    stat.extend_from_slice(
        br#"{"stat":{"time":"2026-11-21 10:00:00 GMT","lati":52.5,"long":13.4,"alti":34,"rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":0,"txnb":0,"temp":21.5}}"#,
    );
    let mut tx_ack = vec![2, 0, 1, semtech::TX_ACK];
    tx_ack.extend_from_slice(&common::GATEWAY.to_be_bytes());
    tx_ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
    let seeds: [(&str, &[u8]); 9] = [
        ("push_data_pole1_uplink", &push_pole),
        ("push_data_tank_join_forward", &push_two),
        ("push_data_stat", &stat),
        ("tx_ack_error", &tx_ack),
        ("phy_pole1_confirmed", &pole_confirmed),
        ("phy_pole1_fopts", &pole_fopts),
        ("phy_tank2_fport3", &tank_p3),
        ("phy_join_request_tracker3", &join),
        ("phy_forwarded_stranger", &stranger_phy),
    ];
    for (name, bytes) in seeds {
        let (readings, downlinks) = check(bytes);
        println!(
            "{t}/{name}: {} bytes, {readings} readings, {downlinks} downlinks",
            bytes.len()
        );
        write(t, name, bytes);
    }

    // --- lorawan_frame: the bytes after the 5-byte header (for pole 1), and whole frames.
    let t = "lorawan_frame";
    let seeds: [(&str, &[u8]); 5] = [
        ("after_header_pole1", &pole_phy[5..]),
        ("after_header_pole1_fopts", &pole_fopts[5..]),
        ("tank2_confirmed", &tank_phy),
        ("join_request_tracker3", &join),
        ("forwarded_stranger", &stranger_phy),
    ];
    for (name, bytes) in seeds {
        let mut phy = vec![0x40, 0x01, 0x1f, 0x01, 0x26];
        phy.extend_from_slice(bytes);
        let mut net = common::network();
        let a = net.handle(&phy, &common::meta(), 1, common::wall_clock());
        let b = net.handle(bytes, &common::meta(), 1, common::wall_clock());
        println!(
            "{t}/{name}: prefixed {} readings {:?}, raw {} readings {:?}",
            a.readings.len(),
            a.rejected,
            b.readings.len(),
            b.rejected
        );
        write(t, name, bytes);
    }

    // --- codec.
    let t = "codec";
    write(t, "cayenne_smart_pole", &sim::smart_pole_payload(3, 17));
    // GPS (136), accelerometer (113), gyrometer (134), colour (135), unix time (133).
    write(
        t,
        "cayenne_extended",
        &[
            1, 136, 0x07, 0xfd, 0x4b, 0x00, 0x20, 0x9c, 0x00, 0x0d, 0x79, //
            2, 113, 0x04, 0xd2, 0xfb, 0x2e, 0x00, 0x00, //
            3, 134, 0xff, 0x38, 0x00, 0x64, 0x01, 0x2c, //
            4, 135, 0xff, 0x80, 0x00, //
            5, 133, 0x69, 0x1f, 0xa0, 0x00,
        ],
    );
    let mut long = layout.clone();
    long.resize(140, 0x5a);
    write(t, "layout_tank", &layout);
    write(t, "layout_every_type", &long);

    // --- serial_frames: first byte = split position, then the stream.
    let t = "serial_frames";
    let weather: Vec<u8> = fieldgate_serial::sim::weather_sentences(3)
        .concat()
        .into_bytes();
    let mut s = vec![37];
    s.extend_from_slice(&weather);
    write(t, "nmea_weather_station", &s);
    let mut s = vec![9];
    s.extend_from_slice(b"CO,O2,ok,note,extra\r\n12,20.9,yes,fine,7.5\r\nO2,CO\r\n20.8,13\r\n");
    write(t, "csv_header_rows", &s);
    let mut s = vec![200];
    s.extend_from_slice(b"noise\x02$GPGGA,120000,5230.123,N,01322.456,E,1,09,0.9,34.5,M,44.6,M,,\x03\n$IIMWV,225.0,T,12.5,N,A\r\n");
    write(t, "delimited_and_no_checksum", &s);

    // --- modbus_response: mode byte, then one chunk per request (see the target's doc).
    let t = "modbus_response";
    let poll = modbus_poll();
    let mut s = vec![0x00]; // TCP
    s.extend_from_slice(&poll);
    write(t, "tcp_clean_poll", &s);
    let mut s = vec![0x01]; // RTU over TCP
    s.extend_from_slice(&poll);
    write(t, "rtu_clean_poll", &s);
    // TCP, a write command first: point selector 7 (`setpoint`, an integer), value 42; the
    // write's echo, the read back, then a poll.
    let mut s = vec![0x02, 7];
    s.extend_from_slice(&42i64.to_be_bytes());
    s.push(0x00);
    s.extend_from_slice(&ok(&[0, 42]));
    s.extend_from_slice(&poll);
    write(t, "tcp_write_setpoint", &s);
    // RTU, a string written to `tag` (selector 22: point 4, text), then a poll.
    let mut s = vec![0x03, 22, 6];
    s.extend_from_slice(b"PUMP-7\0");
    s.push(0x00);
    s.extend_from_slice(&ok(b"PUMP-7\0\0"));
    s.extend_from_slice(&poll);
    write(t, "rtu_write_tag", &s);
    write(t, "tcp_faults", &[&[0x00][..], &modbus_faults()].concat());
    write(t, "rtu_faults", &[&[0x01][..], &modbus_faults()].concat());
    // Direct decoding: registers of every kind.
    let mut s = vec![0x80];
    for w in [
        0x4049u16, 0x0FDB, 0x0102, 0x0304, 0x0506, 0x0708, 0xFFFF, 0x8000, 0x5055, 0x4D50,
    ] {
        s.extend_from_slice(&w.to_be_bytes());
    }
    write(t, "direct_registers", &s);
    let mut s = vec![0x81];
    s.extend_from_slice(&f64::NAN.to_be_bytes());
    s.extend_from_slice(&f64::INFINITY.to_be_bytes());
    s.extend_from_slice(&u64::MAX.to_be_bytes());
    write(t, "direct_specials", &s);

    // --- config: the example sites, the packaged default, the template.
    let t = "config";
    let repo = Path::new("..");
    let mut sources: Vec<_> = fs::read_dir(repo.join("config"))
        .expect("config/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    sources.sort();
    sources.push(repo.join("deploy/fieldgate.toml"));
    sources.push(repo.join("gateway/src/config/template.toml"));
    for p in sources {
        let text = fs::read(&p).expect("read config");
        let dir = if p.starts_with(repo.join("gateway")) {
            "gateway".to_string()
        } else {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let name = format!("{dir}_{}", p.file_name().expect("name").to_string_lossy());
        println!("{t}/{name}: {} bytes", text.len());
        write(t, &name, &text);
    }
    // With environment overrides after a NUL (one NAME=value a line).
    let minimal = fs::read(repo.join("config/minimal.toml")).expect("minimal.toml");
    let mut s = minimal.clone();
    s.extend_from_slice(
        b"\0FIELDGATE_QUEUE__MAX_BYTES=2GB\nFIELDGATE_LOG__LEVEL=debug\nFIELDGATE_UPLINKS__0__MAX_FILES=3\n",
    );
    write(t, "env_overrides", &s);
    let mut s = minimal;
    s.extend_from_slice(b"\0FIELDGATE_ADAPTERS__7__ID=x\nFIELDGATE_QUEUE__MAX_BYTES=lots\n");
    write(t, "env_overrides_refused", &s);
}

/// A well-formed answer (kind 0) with `data`.
fn ok(data: &[u8]) -> Vec<u8> {
    [&[0x00][..], data].concat()
}

/// Answers to the first poll of the target's two devices, every point with a sensible
/// value, in the order the adapter asks: `meter` coils 0-3, discrete input 10, input
/// registers 0-5, holding registers 0-22; `drive` coils 500 and 509, input registers
/// 200-203, holding registers 100-103, 105 and 109-111.
fn modbus_poll() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(ok(&[0b1001])); // run, trip
    s.extend(ok(&[0b1])); // door
    let mut ir = Vec::new();
    ir.extend_from_slice(&215i16.to_be_bytes()); // t_in 21.5
    ir.extend_from_slice(&123_456u32.to_be_bytes()); // count
    ir.extend_from_slice(&2.5f32.to_be_bytes()); // flow
    s.extend(ok(&ir));
    let mut hr = Vec::new();
    hr.extend_from_slice(&500u16.to_be_bytes()); // setpoint
    let e = (-1_234_567i32).to_be_bytes(); // energy, CDAB
    hr.extend_from_slice(&[e[2], e[3], e[0], e[1]]);
    let t = 0x0102_0304_0506_0708u64.to_be_bytes(); // total, BADC
    hr.extend_from_slice(&[t[1], t[0], t[3], t[2], t[5], t[4], t[7], t[6]]);
    hr.extend_from_slice(&(-42i64).to_le_bytes()); // delta, DCBA
    hr.extend_from_slice(&1.25f64.to_be_bytes()); // level
    hr.extend_from_slice(b"PUMP-7\0\0"); // tag
    hr.extend_from_slice(&0b1000u16.to_be_bytes()); // alarm (bit 3)
    hr.extend_from_slice(&6150u16.to_be_bytes()); // temp 21.5
    hr.extend_from_slice(&36_000u32.to_le_bytes()); // hours 3600.0, DCBA
    assert_eq!(hr.len(), 46);
    s.extend(ok(&hr));
    s.extend(ok(&[1])); // ok
    s.extend(ok(&[0])); // remote
    s.extend(ok(&1234.5f64.to_le_bytes())); // kwh, DCBA
    let f = 50.0f32.to_be_bytes(); // speed, CDAB
    let mut hr = vec![f[2], f[3], f[0], f[1]];
    hr.extend_from_slice(&(-125i16).to_be_bytes()); // amps -1.25
    hr.extend_from_slice(&230u16.to_be_bytes()); // volts
    s.extend(ok(&hr));
    s.extend(ok(&0x8000u16.to_be_bytes())); // fault (bit 15)
    s.extend(ok(b"AB-DC-")); // label, BADC: "BA-CD-"
    s
}

/// A poll that meets every kind of trouble: an illegal-address exception on a merged read
/// (split, then the halves answered), a stray byte, a frame for another transaction or
/// unit, silence, a wrong length, a response written in two pieces, a gateway exception,
/// raw bytes, and finally a closed connection.
fn modbus_faults() -> Vec<u8> {
    let mut s = Vec::new();
    // Coils 0-3: illegal data address, so the read is split into coil 0 and coil 3.
    s.extend([0x01, 0x02]);
    s.extend(ok(&[1]));
    // Coil 3 alone: illegal data address again, so it is read alone from now on.
    s.extend([0x01, 0x02]);
    // Discrete input 10, then a stray byte.
    s.extend([0x10, 0x00, 1, 0xAA]);
    // Input registers: not ours (another transaction id or unit, a desync).
    s.extend([0x08, 0x00]);
    s.extend([0; 12]);
    // The retry: silence (a timeout).
    s.push(0x20);
    // Then a wrong length (TCP) or CRC (RTU).
    s.push(0x40);
    s.extend([0; 12]);
    // Holding registers 0-22, written in two pieces split at byte 9.
    s.push(0x80);
    s.extend([0x11; 46]);
    s.push(9);
    // drive: gateway target device failed to respond.
    s.extend([0x01, 0x0B]);
    // The function code, a byte count of 2 and one register: a short answer (the finding of
    // 26a2b6b), then the retry: a byte count of 7 that the 3 bytes after it do not match.
    s.extend([0x02, 3, 0x02, 0x00, 0x01]);
    s.extend([0x02, 3, 0x07, 0x00, 0x01]);
    // Raw bytes, no framing.
    s.extend([0x03, 5, 0x00, 0x01, 0x00, 0x00, 0x00]);
    // An answer, then the connection closes.
    s.extend([0x04, 0x00, 1]);
    s
}
