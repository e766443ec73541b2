//! `fieldgate bench`: the queue and the pipeline at full rate, beside a bare rusqlite loop.
//!
//! Three phases run in one process, on the same disk, with the same SQLite settings:
//!
//! 1. **bare loop**: plain rusqlite, no fieldgate code: insert 5,000-row batches (one
//!    transaction each), read them back, range-delete them. This is the ceiling; fieldgate's
//!    figures are reported as a ratio to it, so the overhead of the design is measured.
//! 2. **queue**: [`Queue::append`] 5,000 readings, [`Queue::peek`] them, [`Queue::ack`].
//! 3. **pipeline**: the simulator at full rate → bounded channel → writer → queue →
//!    forwarder → file uplink (JSON Lines, fsync per batch).
//!
//! For each phase: readings/s, CPU seconds (`/proc/self/stat`), and bytes written to storage
//! per reading (`/proc/self/io` `write_bytes`, which counts what reaches the block layer — the
//! figure that wears an SD card). Peak RSS (`VmHWM`) is for the whole run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fieldgate_adapter::{Adapter, Reading, Value};
use rusqlite::{params, Connection};

use crate::config::Config;
use crate::pipeline::{self, AdapterFactory, Parts, PipelineOptions};
use crate::queue::{Durability, Queue, QueueError, QueueOptions};
use crate::uplink::{FileUplink, Filter, ForwarderOptions, Uplink};

mod https;
mod lorawan;
mod modbus;
mod mqtt;
mod serial;
pub use https::run as run_https;
pub use lorawan::run as run_lorawan;
pub use modbus::run as run_modbus;
pub use mqtt::run as run_mqtt;
pub use serial::run as run_serial;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Readings per phase.
    pub readings: u64,
    /// Durability modes to measure.
    pub durabilities: Vec<Durability>,
    /// Where the databases go (a directory on the disk you care about).
    pub dir: PathBuf,
    /// Readings per batch (transaction).
    pub batch: usize,
    /// Skip the pipeline phase.
    pub skip_pipeline: bool,
}

/// One measured phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What ran.
    pub name: String,
    /// How many readings.
    pub readings: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// User + system CPU time of the whole process.
    pub cpu: Duration,
    /// Bytes written to storage per reading.
    pub write_bytes_per_reading: f64,
    /// Peak resident memory during the phase, in bytes.
    pub peak_rss: u64,
}

impl Phase {
    /// Readings per second.
    pub fn rate(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Phases in the order they ran.
    pub phases: Vec<Phase>,
    /// Peak resident memory of the process, in bytes.
    pub peak_rss: u64,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    cpu: Duration,
    written: u64,
}

impl Probe {
    fn now() -> Probe {
        // Reset the peak-RSS watermark (VmHWM) so each phase reports its own peak.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Probe {
            at: Instant::now(),
            cpu: cpu_time(),
            written: write_bytes(),
        }
    }

    fn phase(self, name: String, readings: u64) -> Phase {
        let end = Probe::now();
        Phase {
            name,
            readings,
            elapsed: end.at - self.at,
            cpu: end.cpu.saturating_sub(self.cpu),
            write_bytes_per_reading: end.written.saturating_sub(self.written) as f64
                / readings.max(1) as f64,
            peak_rss: peak_rss(),
        }
    }
}

/// Runs every phase and returns the figures.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, QueueError> {
    let opts = &BenchOptions {
        dir: bench_dir(&opts.dir)?,
        ..opts.clone()
    };
    let mut report = BenchReport::default();
    for &durability in &opts.durabilities {
        let mode = match durability {
            Durability::Crash => "crash",
            Durability::PowerLoss => "power-loss",
        };
        let (n, batch, dir) = (opts.readings, opts.batch, opts.dir.clone());
        let bare = tokio::task::spawn_blocking(move || bare_loop(&dir, durability, n, batch))
            .await
            .map_err(|e| QueueError::Task(e.to_string()))??;
        report.phases.push(Phase {
            name: format!("bare rusqlite loop ({mode})"),
            ..bare
        });
        let dir = opts.dir.clone();
        let queue = tokio::task::spawn_blocking(move || queue_loop(&dir, durability, n, batch))
            .await
            .map_err(|e| QueueError::Task(e.to_string()))??;
        report.phases.push(Phase {
            name: format!("queue append+peek+ack ({mode})"),
            ..queue
        });
        if !opts.skip_pipeline {
            let p = pipeline_run(&opts.dir, durability, n, batch).await?;
            report.phases.push(Phase {
                name: format!("pipeline sim→queue→file ({mode})"),
                ..p
            });
        }
    }
    report.set_peak_rss();
    Ok(report)
}

impl BenchReport {
    /// The run's peak: the highest of the phases' (each reset its own) and of now.
    fn set_peak_rss(&mut self) {
        self.peak_rss = self
            .phases
            .iter()
            .map(|p| p.peak_rss)
            .max()
            .unwrap_or(0)
            .max(peak_rss());
    }
}

/// Creates the bench directory and returns it absolute: the pipeline phases resolve paths
/// against their config's directory.
fn bench_dir(dir: &Path) -> Result<PathBuf, QueueError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::canonicalize(dir))
        .map_err(|e| QueueError::Incompatible(format!("bench directory {}: {e}", dir.display())))
}

fn fresh_db(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    path
}

/// Steady state: the first batches (WAL and table growth) are not measured.
const WARMUP_BATCHES: u64 = 10;

fn bare_loop(
    dir: &Path,
    durability: Durability,
    n: u64,
    batch: usize,
) -> Result<Phase, QueueError> {
    let path = fresh_db(dir, "bench-bare.db");
    let mut conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if durability == Durability::Crash {
            "NORMAL"
        } else {
            "FULL"
        },
    )?;
    conn.execute_batch(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY, series INTEGER NOT NULL, ts INTEGER NOT NULL, kind INTEGER NOT NULL, value, reason TEXT)",
    )?;
    let batch = batch as u64;
    let mut seq = 0u64;
    let mut probe = Probe::now();
    let mut checksum = 0f64;
    let total = n + WARMUP_BATCHES * batch;
    while seq < total {
        if seq == WARMUP_BATCHES * batch {
            probe = Probe::now();
        }
        let first = seq + 1;
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO t (seq, series, ts, kind, value, reason) VALUES (?1, ?2, ?3, ?4, ?5, NULL)")?;
            for i in 0..batch {
                seq += 1;
                ins.execute(params![
                    seq as i64,
                    1,
                    1_763_704_800_000_000i64 + i as i64,
                    2,
                    seq as f64
                ])?;
            }
        }
        tx.commit()?;
        {
            let mut sel = conn.prepare_cached("SELECT seq, series, ts, kind, value, reason FROM t WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
            let mut rows = sel.query(params![first as i64, batch as i64])?;
            while let Some(r) = rows.next()? {
                checksum += r.get::<_, f64>(4)?;
            }
        }
        conn.prepare_cached("DELETE FROM t WHERE seq <= ?1")?
            .execute([seq as i64])?;
    }
    std::hint::black_box(checksum);
    let phase = probe.phase(String::new(), n);
    drop(conn);
    Ok(phase)
}

/// [`sample_batch`] as queued readings with sequence ids from 1, for the uplink benches.
fn sample_queued(batch: usize) -> Vec<crate::queue::Queued> {
    sample_batch(batch)
        .into_iter()
        .zip(1..)
        .map(|(reading, seq)| crate::queue::Queued {
            seq,
            reading,
            unsynced: false,
            only_for: None,
            alert: None,
        })
        .collect()
}

/// Readings as an adapter makes them: the names are shared, not allocated per reading.
fn sample_batch(batch: usize) -> Vec<Reading> {
    let now = SystemTime::now();
    let template = Reading::new("bench", "device-1", "value", now, Value::F64(0.0)).with_unit("kW");
    (0..batch)
        .map(|i| Reading {
            value: Value::F64(i as f64 * 0.5),
            ..template.clone()
        })
        .collect()
}

fn queue_loop(
    dir: &Path,
    durability: Durability,
    n: u64,
    batch: usize,
) -> Result<Phase, QueueError> {
    let path = fresh_db(dir, "bench-queue.db");
    let opts = QueueOptions {
        durability,
        ..QueueOptions::default()
    };
    let mut q = Queue::open(&path, opts, &["bench"])?;
    let readings = sample_batch(batch);
    let total = n + WARMUP_BATCHES * batch as u64;
    let mut done = 0u64;
    let mut probe = Probe::now();
    while done < total {
        if done == WARMUP_BATCHES * batch as u64 {
            probe = Probe::now();
        }
        cycle(&mut q, &readings)?;
        done += batch as u64;
    }
    let phase = probe.phase(String::new(), n);
    q.close()?;
    Ok(phase)
}

/// One store-and-forward cycle of the uplink `bench`: append `readings`, peek them back,
/// acknowledge them (which deletes them).
fn cycle(q: &mut Queue, readings: &[Reading]) -> Result<(), QueueError> {
    let wm = q.watermark("bench").unwrap_or(0);
    q.append(readings)?;
    let got = q.peek(wm, readings.len())?;
    let last = got.last().map_or(wm, |g| g.seq);
    q.ack("bench", last, got.len() as u64)?;
    Ok(())
}

async fn pipeline_run(
    dir: &Path,
    durability: Durability,
    n: u64,
    batch: usize,
) -> Result<Phase, QueueError> {
    let qpath = fresh_db(dir, "bench-pipeline.db");
    let out = dir.join("bench-pipeline.jsonl");
    remove_archive(&out);
    let config = bench_config(dir, &qpath, durability, batch)?;
    let factory: AdapterFactory = Box::new(move || {
        Ok(Box::new(fieldgate_simulator::Simulator::full_rate(
            "device-1",
            "value",
            Some(n),
        )) as Box<dyn Adapter>)
    });
    let parts = file_parts(factory, &out, batch);
    let phase = measure_delivery(&config, parts, n).await?;
    remove_archive(&out);
    Ok(phase)
}

/// Starts a pipeline of `parts` and measures it until `n` readings were delivered (every
/// uplink acknowledged them), then stops it.
async fn measure_delivery(config: &Config, parts: Parts, n: u64) -> Result<Phase, QueueError> {
    let probe = Probe::now();
    let running = pipeline::start_with(config, parts, PipelineOptions::default())
        .await
        .map_err(|e| QueueError::Incompatible(e.to_string()))?;
    let mut committed = running.queue().subscribe();
    let _ = committed.wait_for(|&last| last >= n).await;
    loop {
        let s = running.queue().stats().await?;
        if s.delivered >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let phase = probe.phase(String::new(), n);
    running
        .stop()
        .await
        .map_err(|e| QueueError::Incompatible(e.to_string()))?;
    Ok(phase)
}

/// The single uplink of a bench pipeline, in fifo order.
fn one_uplink(
    id: &str,
    batch: usize,
    retry_min: Duration,
    uplink: Box<dyn Uplink>,
) -> Vec<(ForwarderOptions, Box<dyn Uplink>)> {
    vec![(
        ForwarderOptions {
            id: id.into(),
            filter: Filter::default(),
            batch_size: batch,
            retry_min,
            retry_max: Duration::from_secs(1),
            drain: crate::uplink::Drain::Fifo,
            live: Default::default(),
        },
        uplink,
    )]
}

/// One adapter, `bench`, and one file uplink writing to `out`: the pipeline phases' parts.
fn file_parts(factory: AdapterFactory, out: &Path, batch: usize) -> Parts {
    // Rotate at 256 MB and keep one old file: the bench must not fill the disk.
    let file = FileUplink::new(out.to_path_buf(), 256 << 20, 1, "bench".into());
    Parts {
        commands: None,
        adapters: vec![("bench".into(), factory)],
        uplinks: one_uplink("file", batch, Duration::from_millis(10), Box::new(file)),
    }
}

/// Removes the file uplink's archive and its rotated predecessor.
fn remove_archive(out: &Path) {
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(out.with_extension("jsonl.1"));
}

/// A config with the bench's queue settings; the pipeline's parts are supplied by hand.
fn bench_config(
    dir: &Path,
    qpath: &Path,
    durability: Durability,
    batch: usize,
) -> Result<Config, QueueError> {
    let text = format!(
        r#"
[gateway]
id = "bench"
data_dir = "{dir}"
[queue]
path = "{qpath}"
durability = "{mode}"
batch_size = {batch}
max_bytes = "8GB"
channel_capacity = {batch}
[[adapters]]
id = "bench"
type = "simulator"
[[adapters.devices]]
id = "d"
[[adapters.devices.points]]
name = "p"
waveform = "counter"
interval = "1s"
[[uplinks]]
id = "unused"
type = "console"
"#,
        dir = dir.display(),
        qpath = qpath.display(),
        mode = if durability == Durability::Crash {
            "crash"
        } else {
            "power-loss"
        },
    );
    Config::from_toml(&dir.join("bench.toml"), &text, &[])
        .map_err(|e| QueueError::Incompatible(e.to_string()))
}

/// Formats the report as the table `fieldgate bench` prints.
pub fn render(report: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<44} {:>12} {:>14} {:>9} {:>9} {:>11} {:>10}",
        "phase", "readings", "readings/s", "vs bare", "CPU s", "bytes/rdg", "peak RSS"
    );
    let mut bare_rate = None;
    for p in &report.phases {
        if p.name.starts_with("bare") {
            bare_rate = Some(p.rate());
        }
        let ratio = match bare_rate {
            Some(b) if !p.name.starts_with("bare") => format!("{:.2}x", b / p.rate()),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<44} {:>12} {:>14.0} {:>9} {:>9.2} {:>11.1} {:>7.1} MB",
            p.name,
            p.readings,
            p.rate(),
            ratio,
            p.cpu.as_secs_f64(),
            p.write_bytes_per_reading,
            p.peak_rss as f64 / 1e6
        );
    }
    let _ = writeln!(
        s,
        "peak RSS of the run: {:.1} MB",
        report.peak_rss as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "(\"vs bare\" = how many times slower than the bare loop above it; peak RSS is per phase)"
    );
    s
}

/// User + system CPU time of this process (clock ticks of 1/100 s, Linux's `USER_HZ`).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn write_bytes() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

fn peak_rss() -> u64 {
    proc_field("/proc/self/status", "VmHWM:") * 1024
}

fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l[key.len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// A pipeline with one uplink (`make_uplink`, id "up") delivering `n` readings: a backlog
/// queued first, outside the measurement, or (`live`) the simulator at full rate.
async fn drain_phase(
    dir: &Path,
    db: &str,
    n: u64,
    batch: usize,
    live: bool,
    make_uplink: impl FnOnce() -> Box<dyn Uplink>,
) -> Result<Phase, QueueError> {
    let qpath = fresh_db(dir, db);
    if !live {
        let path = qpath.clone();
        tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let mut q = Queue::open(&path, QueueOptions::default(), &["up"])?;
            let readings = sample_batch(batch);
            let mut left = n;
            while left > 0 {
                let k = usize::try_from(left.min(batch as u64)).unwrap_or(batch);
                q.append(&readings[..k])?;
                left -= k as u64;
            }
            q.close()
        })
        .await
        .map_err(|e| QueueError::Incompatible(e.to_string()))??;
    }
    let config = bench_config(dir, &qpath, Durability::Crash, batch)?;
    let adapters: Vec<(String, AdapterFactory)> = if live {
        let factory: AdapterFactory = Box::new(move || {
            Ok(Box::new(fieldgate_simulator::Simulator::full_rate(
                "device-1",
                "value",
                Some(n),
            )) as Box<dyn Adapter>)
        });
        vec![("bench".into(), factory)]
    } else {
        Vec::new()
    };
    let parts = Parts {
        commands: None,
        adapters,
        uplinks: one_uplink("up", batch, Duration::from_millis(100), make_uplink()),
    };
    measure_delivery(&config, parts, n).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_bench_measures_every_phase() {
        // Under target/, not /tmp: a tmpfs would write nothing to a block device.
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(target).expect("target dir");
        let dir = tempfile::tempdir_in(target).expect("tempdir");
        let opts = BenchOptions {
            readings: 20_000,
            durabilities: vec![Durability::Crash],
            dir: dir.path().to_path_buf(),
            batch: 1000,
            skip_pipeline: false,
        };
        let report = run(&opts).await.expect("bench runs");
        let names: Vec<_> = report.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bare rusqlite loop (crash)",
                "queue append+peek+ack (crash)",
                "pipeline sim→queue→file (crash)"
            ]
        );
        // The probes must measure something: the queue phase writes to disk and uses CPU.
        let queue = &report.phases[1];
        assert!(
            queue.write_bytes_per_reading > 1.0,
            "write_bytes from /proc/self/io: {queue:?}"
        );
        assert!(
            queue.cpu > Duration::ZERO && queue.elapsed > Duration::ZERO,
            "{queue:?}"
        );
        assert!(report.peak_rss > 1_000_000, "VmHWM from /proc/self/status");
        let table = render(&report);
        assert!(
            table.contains("vs bare") && table.contains("peak RSS of the run"),
            "{table}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_modbus_bench_counts_requests_per_scan() {
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(target).expect("target dir");
        let dir = tempfile::tempdir_in(target).expect("tempdir");
        let report = run_modbus(dir.path(), 1000, 5000, 1000)
            .await
            .expect("bench runs");
        let names: Vec<_> = report.phases.iter().map(|p| p.name.as_str()).collect();
        // 1000 contiguous registers: 8 reads of at most 125 coalesced, 1000 without.
        assert_eq!(
            names,
            [
                "modbus scan, coalesced: 8 requests",
                "modbus scan, 1 per point: 1000 requests",
                "modbus: scans of 1000 → queue"
            ]
        );
        assert!(report.phases[2].readings >= 5000, "{:?}", report.phases[2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lorawan_bench_delivers_every_uplink() {
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(target).expect("target dir");
        let dir = tempfile::tempdir_in(target).expect("tempdir");
        let report = run_lorawan(dir.path(), 1000, 500)
            .await
            .expect("bench runs");
        let names: Vec<_> = report.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].starts_with("lorawan verify+decrypt+decode: "),
            "{names:?}"
        );
        // Every uplink verified and decoded: five Cayenne values and eight metadata
        // readings each, then five without metadata.
        assert_eq!(report.phases[0].readings, 13 * 1000);
        assert_eq!(report.phases[1].readings, 13 * 1000);
        assert_eq!(report.phases[2].readings, 5 * 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_serial_bench_counts_every_reading_of_every_line() {
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(target).expect("target dir");
        let dir = tempfile::tempdir_in(target).expect("tempdir");
        let report = run_serial(dir.path(), 29 * 300, 1000)
            .await
            .expect("bench runs");
        let names: Vec<_> = report.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].starts_with("serial decode only: "), "{names:?}");
        assert!(
            names[1].starts_with("serial pty 115200 baud: "),
            "{names:?}"
        );
        assert!(
            names[2].starts_with("serial pty unthrottled: "),
            "{names:?}"
        );
        // Whole cycles of 29 readings: 300 decoded in memory, 300 through the pty.
        assert_eq!(report.phases[0].readings, 29 * 300);
        assert_eq!(report.phases[2].readings, 29 * 300);
        // 4 s at 11,520 bytes/s is about 780 lines of ~59 bytes: 110 cycles, 3,190 readings.
        let paced = report.phases[1].readings;
        assert!(
            (2000..=4000).contains(&paced),
            "{paced} readings at 115200 baud"
        );
    }
}
