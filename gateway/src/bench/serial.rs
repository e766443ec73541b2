//! `fieldgate bench --serial`: the serial adapter parsing a weather station's NMEA output
//! (7 sentences, 29 readings a cycle; `fieldgate_serial::sim::weather_sentences`).
//!
//! 1. **decode only**: the framer and the NMEA decoder on bytes in memory — the parsing
//!    ceiling, without I/O.
//! 2. **pty at 115200 baud → queue**: the station written into a pseudo-terminal at the
//!    byte rate of a 115200-baud 8N1 line (11,520 bytes/s) for a few seconds, through the
//!    adapter, the queue and a file uplink: lines/s and the CPU share it costs.
//! 3. **pty unthrottled → queue**: the same, written as fast as the pseudo-terminal takes
//!    it, until `n` readings were committed.

use std::path::Path;
use std::time::{Duration, Instant};

use fieldgate_adapter::Adapter;
use fieldgate_serial::fields::Decoder;
use fieldgate_serial::frame::{Event, Framer};
use fieldgate_serial::sim::{weather_sentences, VirtualPort, WEATHER_READINGS_PER_CYCLE};
use fieldgate_serial::{Serial, SerialConfig};

use super::{
    bench_config, bench_dir, file_parts, fresh_db, remove_archive, BenchReport, Phase, Probe,
};
use crate::pipeline::{self, AdapterFactory, PipelineOptions};
use crate::queue::{Durability, QueueError};

/// Sentences per weather cycle.
const LINES_PER_CYCLE: u64 = 7;
/// Bytes per second of a 115200-baud line with 10 bits per byte (8N1).
const BYTES_PER_S_115200: f64 = 11_520.0;
/// How long the paced phase writes.
const PACED_FOR: Duration = Duration::from_secs(4);

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Incompatible(e.to_string())
}

fn config(port: &Path) -> Result<SerialConfig, QueueError> {
    use figment::providers::{Format as _, Toml};
    let text = format!(
        "port = {:?}\nformat = \"nmea\"\nbaud = 115200\nmax_frame = 256",
        port.display().to_string()
    );
    figment::Figment::from(Toml::string(&text))
        .extract()
        .map_err(err)
}

/// `cycles` weather cycles as one byte string, starting at step `from`.
fn cycles(from: u64, cycles: u64) -> Vec<u8> {
    (from..from + cycles)
        .flat_map(weather_sentences)
        .flat_map(String::into_bytes)
        .collect()
}

/// All three phases; `n` readings for the decode-only and unthrottled phases.
pub async fn run(dir: &Path, n: u64, batch: usize) -> Result<BenchReport, QueueError> {
    let dir = bench_dir(dir)?;
    let n_cycles = n.div_ceil(WEATHER_READINGS_PER_CYCLE as u64).max(1);
    let mut report = BenchReport::default();
    report.phases.push(decode_only(n_cycles)?);
    report.phases.push(through_pty(&dir, None, batch).await?);
    report
        .phases
        .push(through_pty(&dir, Some(n_cycles), batch).await?);
    report.set_peak_rss();
    Ok(report)
}

fn lines_per_s(readings: u64, elapsed: Duration) -> f64 {
    (readings / WEATHER_READINGS_PER_CYCLE as u64 * LINES_PER_CYCLE) as f64
        / elapsed.as_secs_f64().max(1e-9)
}

fn decode_only(n_cycles: u64) -> Result<Phase, QueueError> {
    let port = Path::new("/dev/null");
    let cfg = config(port)?;
    let mut decoder = Decoder::new(&cfg).map_err(err)?;
    let mut framer = Framer::lines(b"\n", cfg.max_frame);
    // 100 cycles of input, fed again and again in 4 KB reads like a serial port's.
    let input = cycles(0, 100);
    let mut out = Vec::with_capacity(64);
    let mut readings = 0u64;
    let probe = Probe::now();
    let mut done = 0;
    while done < n_cycles {
        for chunk in input.chunks(4096) {
            framer.push(chunk, |e| {
                if let Event::Frame(f) = e {
                    let text = String::from_utf8_lossy(f);
                    let _ = decoder.decode(&text, &mut out);
                    readings += out.len() as u64;
                    out.clear();
                }
            });
        }
        done += 100;
    }
    let phase = probe.phase(String::new(), readings);
    Ok(Phase {
        name: format!(
            "serial decode only: {:.0} lines/s",
            lines_per_s(readings, phase.elapsed)
        ),
        ..phase
    })
}

/// Through a pseudo-terminal and the whole pipeline: paced at 115200 baud for
/// [`PACED_FOR`] when `n_cycles` is `None`, else `n_cycles` as fast as possible.
async fn through_pty(dir: &Path, n_cycles: Option<u64>, batch: usize) -> Result<Phase, QueueError> {
    let qpath = fresh_db(dir, "bench-serial.db");
    let out = dir.join("bench-serial.jsonl");
    remove_archive(&out);
    let mut port = VirtualPort::new(dir.join("bench-tty")).map_err(err)?;
    let cfg = config(port.path())?;
    let config = bench_config(dir, &qpath, Durability::Crash, batch)?;
    let factory: AdapterFactory =
        Box::new(move || Serial::new(&cfg).map(|s| Box::new(s) as Box<dyn Adapter>));
    let running = pipeline::start_with(
        &config,
        file_parts(factory, &out, batch),
        PipelineOptions::default(),
    )
    .await
    .map_err(err)?;
    let mut committed = running.queue().subscribe();
    // Warm-up: one cycle, so the port is open before the clock starts.
    port.write(&cycles(0, 1)).await.map_err(err)?;
    let per_cycle = WEATHER_READINGS_PER_CYCLE as u64;
    let _ = committed.wait_for(|&last| last >= per_cycle).await;
    let probe = Probe::now();
    let written_cycles = match n_cycles {
        Some(n) => {
            let chunk = cycles(1, 100);
            let mut done = 0;
            while done < n {
                port.write(&chunk).await.map_err(err)?;
                done += 100;
            }
            done
        }
        None => {
            let start = Instant::now();
            let mut sent_bytes = 0usize;
            let mut t = 1;
            while start.elapsed() < PACED_FOR {
                let bytes = cycles(t, 1);
                port.write(&bytes).await.map_err(err)?;
                sent_bytes += bytes.len();
                t += 1;
                let due = Duration::from_secs_f64(sent_bytes as f64 / BYTES_PER_S_115200);
                tokio::time::sleep_until((start + due).into()).await;
            }
            t - 1
        }
    };
    let want = per_cycle * (written_cycles + 1);
    if tokio::time::timeout(
        Duration::from_secs(120),
        committed.wait_for(|&last| last >= want),
    )
    .await
    .is_err()
    {
        return Err(err(format!(
            "only {} of {want} readings reached the queue",
            *committed.borrow()
        )));
    }
    let phase = probe.phase(String::new(), want - per_cycle);
    running.stop().await.map_err(err)?;
    drop(port);
    remove_archive(&out);
    let lines = lines_per_s(phase.readings, phase.elapsed);
    let cpu = 100.0 * phase.cpu.as_secs_f64() / phase.elapsed.as_secs_f64().max(1e-9);
    let name = match n_cycles {
        None => format!("serial pty 115200 baud: {lines:.0} lines/s, {cpu:.0}% CPU"),
        Some(_) => format!("serial pty unthrottled: {lines:.0} lines/s"),
    };
    Ok(Phase { name, ..phase })
}
