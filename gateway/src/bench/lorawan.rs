//! `fieldgate bench --lorawan`: LoRaWAN uplinks of 100 smart poles (Cayenne LPP, five
//! values each; `fieldgate_lorawan::sim`) through the adapter's network core.
//!
//! 1. **verify + decrypt + decode**: `Network::handle` on frames built beforehand (MIC with
//!    the NwkSKey and the 32-bit counter, replay check, AES-CTR decryption with the AppSKey,
//!    Cayenne decoding, radio metadata): the ceiling without I/O.
//! 2. **→ queue**: the same, with every reading appended to a queue (`crash` durability) in
//!    batches, peeked and acknowledged, as the pipeline's writer and forwarder do; with the
//!    radio metadata readings (13 readings per uplink) and without them (5).

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fieldgate_adapter::{Reading, StateStore};
use fieldgate_lorawan::network::to_hex;
use fieldgate_lorawan::semtech::DataRate;
use fieldgate_lorawan::sim::{smart_pole_payload, SimDevice};
use fieldgate_lorawan::{LorawanConfig, LorawanStats, Network, RxMeta};

use super::{bench_dir, cycle, fresh_db, BenchReport, Phase, Probe};
use crate::queue::{Durability, Queue, QueueError, QueueOptions, SqliteState};

/// Devices in the bench network.
const DEVICES: u32 = 100;

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Incompatible(e.to_string())
}

fn device(i: u32) -> SimDevice {
    let b = i.to_be_bytes();
    SimDevice {
        dev_addr: 0x2600_0000 | i,
        nwk_skey: [
            b[3], 0x11, b[2], 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
            0xdd, 0xee,
        ],
        app_skey: [
            0x01, b[3], 0x02, b[2], 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
            0x0d, 0x0e,
        ],
        fcnt: 0,
    }
}

fn network(metadata: bool) -> Result<Network, QueueError> {
    use figment::providers::{Format as _, Toml};
    use std::fmt::Write;
    let mut text = format!("metadata = {metadata}\n");
    for i in 0..DEVICES {
        let d = device(i);
        let _ = write!(
            text,
            "[[devices]]\nname = \"pole-{i}\"\ndev_eui = \"{:016x}\"\nactivation = \"abp\"\ndev_addr = \"{:08x}\"\nnwk_skey = \"{}\"\napp_skey = \"{}\"\ncodec = \"cayenne\"\n",
            0x70b3_d57e_d000_0000u64 + u64::from(i),
            d.dev_addr,
            to_hex(&d.nwk_skey),
            to_hex(&d.app_skey)
        );
    }
    let cfg: LorawanConfig = figment::Figment::from(Toml::string(&text))
        .extract()
        .map_err(err)?;
    Ok(Network::new(
        "bench".into(),
        &cfg,
        Arc::new(LorawanStats::default()),
    ))
}

/// `n` uplinks, round-robin over the devices, each device counting up from 0.
fn frames(n: u64) -> Vec<Vec<u8>> {
    let mut devices: Vec<SimDevice> = (0..DEVICES).map(device).collect();
    (0..n)
        .map(|k| {
            let i = (k % u64::from(DEVICES)) as usize;
            let payload = smart_pole_payload(i as u32, k / u64::from(DEVICES));
            devices[i].uplink(2, &payload, false)
        })
        .collect()
}

fn meta() -> RxMeta {
    RxMeta {
        gateway: 0x00AA_BBFF_FE00_0001,
        tmst: 0,
        freq: 868.1,
        chan: 0,
        rfch: 0,
        datr: DataRate::Lora("SF7BW125".into()),
        codr: "4/5".into(),
        rssi: Some(-80.0),
        snr: Some(7.0),
    }
}

/// All phases, over `n_uplinks` uplinks each.
pub async fn run(dir: &Path, n_uplinks: u64, batch: usize) -> Result<BenchReport, QueueError> {
    let dir = bench_dir(dir)?;
    let input = frames(n_uplinks.max(u64::from(DEVICES)));
    let mut report = BenchReport::default();
    report.phases.push(core_only(&input)?);
    for metadata in [true, false] {
        report
            .phases
            .push(into_queue(&dir, &input, batch, metadata)?);
    }
    report.set_peak_rss();
    Ok(report)
}

fn name(what: &str, uplinks: usize, phase: &Phase) -> String {
    let per_s = uplinks as f64 / phase.elapsed.as_secs_f64().max(1e-9);
    format!(
        "lorawan {what}: {per_s:.0} uplinks/s, {:.2} µs each",
        1e6 / per_s.max(1e-9)
    )
}

fn core_only(input: &[Vec<u8>]) -> Result<Phase, QueueError> {
    let mut net = network(true)?;
    let m = meta();
    let at = SystemTime::now();
    let probe = Probe::now();
    let mut readings = 0u64;
    for f in input {
        let out = net.handle(f, &m, 1, at);
        if out.rejected.is_some() {
            return Err(err(format!("bench frame rejected: {:?}", out.rejected)));
        }
        readings += out.readings.len() as u64;
    }
    let phase = probe.phase(String::new(), readings);
    Ok(Phase {
        name: name("verify+decrypt+decode", input.len(), &phase),
        ..phase
    })
}

fn into_queue(
    dir: &Path,
    input: &[Vec<u8>],
    batch: usize,
    metadata: bool,
) -> Result<Phase, QueueError> {
    let path = fresh_db(dir, "bench-lorawan.db");
    let opts = QueueOptions {
        durability: Durability::Crash,
        ..QueueOptions::default()
    };
    let mut q = Queue::open(&path, opts, &["bench"])?;
    let state = SqliteState::open(&path)?;
    let mut net = network(metadata)?;
    let m = meta();
    let at = SystemTime::now();
    let mut pending: Vec<Reading> = Vec::with_capacity(batch + 16);
    let mut readings = 0u64;
    // As the adapter does: the counters behind a batch are stored before its readings go.
    let flush =
        |q: &mut Queue, net: &mut Network, pending: &mut Vec<Reading>| -> Result<(), QueueError> {
            state.save("bench", &net.take_dirty()).map_err(err)?;
            cycle(q, pending)?;
            pending.clear();
            Ok(())
        };
    let probe = Probe::now();
    for f in input {
        let out = net.handle(f, &m, 1, at);
        readings += out.readings.len() as u64;
        pending.extend(out.readings);
        if pending.len() >= batch {
            flush(&mut q, &mut net, &mut pending)?;
        }
    }
    if !pending.is_empty() {
        flush(&mut q, &mut net, &mut pending)?;
    }
    let phase = probe.phase(String::new(), readings);
    q.close()?;
    let what = if metadata {
        "→ queue (13 readings/uplink)"
    } else {
        "→ queue (5 readings/uplink, metadata off)"
    };
    Ok(Phase {
        name: name(what, input.len(), &phase),
        ..phase
    })
}
