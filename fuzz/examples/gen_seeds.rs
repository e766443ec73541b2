//! Writes the committed seed inputs under `seeds/<target>/` and checks that the LoRaWAN
//! ones do what their names say (readings, a join, a forwarded frame). Run from `fuzz/`:
//! `cargo run --example gen_seeds`.

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
        &[pole_phy.clone()],
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
}
