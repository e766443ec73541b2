//! One UDP datagram to readings: the input as a raw datagram from a packet forwarder, and
//! again as the PHYPayload of an `rxpk` inside a well-formed PUSH_DATA (heard by two
//! gateways, so the de-duplication window merges the copies), so that every input also
//! reaches the LoRaWAN frame parser, MIC check, decryption, codecs, joins and downlinks.

#![no_main]

#[path = "../common/lorawan.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fieldgate_lorawan::{semtech, sim, Effects};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut server = common::server();
    let from = SocketAddr::from(([127, 0, 0, 1], 41_700));
    let now = Instant::now();
    let at = common::wall_clock();
    let mut fx = Effects::default();

    // PULL_DATA first: the gateway has a downlink route, so joins and confirmed uplinks
    // produce PULL_RESP datagrams.
    let mut pull = vec![2, 0x12, 0x34, semtech::PULL_DATA];
    pull.extend_from_slice(&common::GATEWAY.to_be_bytes());
    server.datagram(from, &pull, now, at, &mut fx);

    // The input as a datagram.
    server.datagram(from, data, now, at, &mut fx);

    // The input as a frame inside a valid PUSH_DATA, from two gateways.
    let frame = [data.to_vec()];
    let push = sim::push_data(0x5678, common::GATEWAY, &frame, 1_000_000, -71.0, 7.5);
    server.datagram(from, &push, now, at, &mut fx);
    let other = SocketAddr::from(([127, 0, 0, 2], 41_700));
    let push2 = sim::push_data(0x5679, common::GATEWAY + 1, &frame, 1_000_400, -64.0, 9.0);
    server.datagram(other, &push2, now, at, &mut fx);

    // Frames leave the window; then everything (and the in-flight downlinks) is flushed.
    server.flush(now + Duration::from_millis(250), false, &mut fx);
    server.flush(now + Duration::from_secs(10), true, &mut fx);
    let _ = server.network().take_dirty();
    std::hint::black_box(&fx);
});
