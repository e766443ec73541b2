//! One PHYPayload straight into `Network::handle`: raw, and behind the header of an
//! unconfirmed uplink (MHDR 0x40, DevAddr 26011f01 of the configured Cayenne device,
//! FCtrl from the input), so that inputs reach the per-device MIC check and FOpts parsing.

#![no_main]

#[path = "../common/lorawan.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

/// MHDR unconfirmed data up, DevAddr 26011f01 (little-endian on air).
const HEADER: [u8; 5] = [0x40, 0x01, 0x1f, 0x01, 0x26];

fuzz_target!(|data: &[u8]| {
    let mut net = common::network();
    let meta = common::meta();
    let at = common::wall_clock();

    let mut phy = Vec::with_capacity(HEADER.len() + data.len());
    phy.extend_from_slice(&HEADER);
    phy.extend_from_slice(data);
    let out = net.handle(&phy, &meta, 1, at);
    std::hint::black_box(&out);

    let out = net.handle(data, &meta, 1, at);
    std::hint::black_box(&out);
    let _ = net.take_dirty();
});
