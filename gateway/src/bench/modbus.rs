//! `fieldgate bench --modbus`: the Modbus adapter against a loopback Modbus TCP server
//! (tokio-modbus's, in-process) holding `points` contiguous holding registers.
//!
//! 1. **one scan, coalesced**: the requests one full scan takes (the 125-register limit makes
//!    `points / 125` the floor) and how long it takes.
//! 2. **one scan, one request per point**: the same map read the way gateways that do not
//!    coalesce read it.
//! 3. **modbus → queue**: scans back to back through the whole pipeline (channel, writer,
//!    queue, a file uplink) until `n` points were committed: points/s into the queue.

use std::path::Path;
use std::time::Duration;

use fieldgate_adapter::{reading_channel, Adapter, AdapterContext, ShutdownTrigger};
use fieldgate_modbus::config::{Address, DeviceConfig, ModbusConfig, PointConfig, Transport};
use fieldgate_modbus::sim::SimServer;
use fieldgate_modbus::{ByteOrder, Modbus};
use tokio::net::TcpListener;

use super::{
    bench_config, bench_dir, file_parts, fresh_db, remove_archive, BenchReport, Phase, Probe,
};
use crate::pipeline::{self, AdapterFactory, PipelineOptions};
use crate::queue::{Durability, QueueError};

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Incompatible(e.to_string())
}

fn config(addr: &str, points: u16, max_registers: u16, interval: Duration) -> ModbusConfig {
    let point = |i: u16| PointConfig {
        name: format!("hr{i}"),
        address: Address::Offset(i),
        table: Some(fieldgate_modbus::Table::HoldingRegister),
        data_type: None,
        bit: None,
        length: None,
        byte_order: None,
        scale: None,
        offset: None,
        unit: None,
        interval: None,
        deadband: None,
        heartbeat: None,
        writable: false,
        min: None,
        max: None,
    };
    ModbusConfig {
        transport: Transport::Tcp,
        address: Some(addr.to_string()),
        port: None,
        baud: 9600,
        parity: fieldgate_modbus::config::Parity::None,
        data_bits: 8,
        stop_bits: 1,
        timeout: Duration::from_secs(2),
        retries: 1,
        frame_gap: None,
        interval,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        devices: vec![DeviceConfig {
            id: "plc-1".into(),
            unit: 1,
            byte_order: ByteOrder::Abcd,
            interval: None,
            max_gap: if max_registers == 1 { 0 } else { 16 },
            max_registers,
            max_bits: 2000,
            points: (0..points).map(point).collect(),
        }],
    }
}

/// Scans, requests per scan and points/s into the queue, for `points` registers and `n`
/// points through the pipeline.
pub async fn run(dir: &Path, points: u16, n: u64, batch: usize) -> Result<BenchReport, QueueError> {
    let dir = bench_dir(dir)?;
    let server = SimServer::new(&[1]);
    let values: Vec<u16> = (0..points).collect();
    server.set_holding(1, 0, &values);
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let handle = server.serve_tcp(listener);
    let addr = handle
        .addr()
        .ok_or_else(|| err("the bench server has no address"))?
        .to_string();
    let mut report = BenchReport::default();
    for (max_registers, what) in [(125, "coalesced"), (1, "1 per point")] {
        let before = server.requests();
        let cfg = config(&addr, points, max_registers, Duration::from_secs(3600));
        let phase = one_scan(&cfg, points).await?;
        let requests = server.requests() - before;
        report.phases.push(Phase {
            name: format!("modbus scan, {what}: {requests} requests"),
            ..phase
        });
    }
    let cfg = config(&addr, points, 125, Duration::from_millis(1));
    report.phases.push(Phase {
        name: format!("modbus: scans of {points} → queue"),
        ..into_queue(&dir, cfg, u64::from(points), n, batch).await?
    });
    handle.kill();
    report.set_peak_rss();
    Ok(report)
}

/// One full scan through the adapter alone: until every point has produced a reading.
async fn one_scan(cfg: &ModbusConfig, points: u16) -> Result<Phase, QueueError> {
    let adapter = Modbus::new(cfg).map_err(err)?;
    let (tx, mut rx) = reading_channel(usize::from(points));
    let (stop, shutdown) = ShutdownTrigger::new();
    let (_commands, commands) = tokio::sync::mpsc::channel(1);
    let probe = Probe::now();
    let task = tokio::spawn(Box::new(adapter).run(AdapterContext {
        id: "bench".into(),
        readings: tx,
        shutdown,
        commands,
        state: fieldgate_adapter::MemoryState::shared(),
    }));
    let mut got = 0u64;
    while got < u64::from(points) {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(r)) if r.quality == fieldgate_adapter::Quality::Good => got += 1,
            Ok(Some(r)) => return Err(err(format!("bench point not good: {r:?}"))),
            _ => return Err(err("the scan did not finish")),
        }
    }
    let phase = probe.phase(String::new(), got);
    stop.fire();
    let _ = task.await;
    Ok(phase)
}

async fn into_queue(
    dir: &Path,
    cfg: ModbusConfig,
    points: u64,
    n: u64,
    batch: usize,
) -> Result<Phase, QueueError> {
    let qpath = fresh_db(dir, "bench-modbus.db");
    let out = dir.join("bench-modbus.jsonl");
    remove_archive(&out);
    let config = bench_config(dir, &qpath, Durability::Crash, batch)?;
    let factory: AdapterFactory =
        Box::new(move || Modbus::new(&cfg).map(|m| Box::new(m) as Box<dyn Adapter>));
    let parts = file_parts(factory, &out, batch);
    let running = pipeline::start_with(&config, parts, PipelineOptions::default())
        .await
        .map_err(err)?;
    let mut committed = running.queue().subscribe();
    // The first scan (connection, warm-up) is not measured.
    let _ = committed.wait_for(|&last| last >= points).await;
    let start = *committed.borrow();
    let probe = Probe::now();
    let _ = committed.wait_for(|&last| last >= start + n).await;
    let done = *committed.borrow() - start;
    let phase = probe.phase(String::new(), done);
    running.stop().await.map_err(err)?;
    remove_archive(&out);
    Ok(phase)
}
