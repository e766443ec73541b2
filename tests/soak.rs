//! Soak (issue #10, "Reliability"): the real binary, a steady simulated stream, a real
//! Mosquitto, and faults for a configurable time, then a subscriber's record is compared with
//! what the queue committed.
//!
//! - The gateway runs the simulator: [`DEVICES`] devices of [`POINTS`] counter points each,
//!   every [`INTERVAL_MS`] ms (200 readings/s), into its SQLite queue (`durability =
//!   "crash"`, default batching), drained in fifo order by an MQTT uplink (QoS 1,
//!   `keep_alive = "5s"`) through a TCP proxy this test owns, and by a `file` uplink (the
//!   archive, a cross-check).
//! - A subscriber connects to Mosquitto directly (persistent session, QoS 1, manual acks: a
//!   message is recorded before it is acknowledged) and records every reading.
//! - Faults, on a schedule drawn from a seed: Mosquitto restarted (SIGTERM, persistence on),
//!   the gateway SIGKILLed and restarted on the same config and queue, and network cuts: the
//!   proxy stops forwarding in both directions on the connections it holds (without closing
//!   them, so the gateway must notice by its keep-alive) and accepts new connections without
//!   forwarding them, then drops them all when the cut ends.
//! - Each gateway run starts its counters at `run × 10⁹`, so every value names the run that
//!   made it: per point and run, the values committed must be 0, 1, 2, ... without a hole; what
//!   a run made after its last commit before a SIGKILL is estimated from timestamps and
//!   reported as "in memory at kill", not as lost.
//! - At the end the faults stop, the gateway is stopped with SIGTERM (it must exit cleanly),
//!   restarted with one more reading per point to drain the queue to depth 0, and stopped
//!   again. Then: lost (committed sequence ids 1..=appended the subscriber never got) must be
//!   0; per device the first arrivals' sequence ids must increase (fifo); duplicates are
//!   counted, not refused (at least once); the archive holds every committed id; the queue
//!   file passes `PRAGMA integrity_check`; and the faults really happened.
//!
//! `FIELDGATE_SOAK_SECS` (default 60: the short version that runs with `cargo test`) sets how
//! long the faults go on, `FIELDGATE_SOAK_SEED` replays a schedule, `FIELDGATE_SOAK_KEEP=1`
//! keeps the files (they are kept anyway when the test fails). `deploy/soak.sh` runs the long
//! version; the figures are in docs/reliability.md.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::mqtt::Mosquitto;
use common::{fieldgate_isolated, start_logged, Gateway};

/// Simulated devices, points per device, and the interval of every point.
const DEVICES: usize = 5;
const POINTS: usize = 4;
const INTERVAL_MS: u64 = 100;
/// Counter values of run `r` are `r * RUN_STRIDE + k`, k = 0, 1, 2, ...
const RUN_STRIDE: i64 = 1_000_000_000;

// ---- the fault schedule ----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGTERM Mosquitto, wait `down`, start it again on the same ports and persistence.
    BrokerRestart {
        down: Duration,
    },
    /// SIGKILL the gateway, wait `down`, start it again on the same config and queue.
    Kill {
        down: Duration,
    },
    CutStart,
    CutEnd,
}

/// The faults of one soak, drawn from `seed`, scaled from its length: a broker restart every
/// `secs / 20` s (15 to 30 s), a SIGKILL every `secs / 10` s (25 to 60 s), each ±30 %; one
/// network cut per 5 minutes (at least one) of `secs / 8` to `secs / 4` s (at least 10, at
/// most 120 s), each in its own slot of the middle 80 % of the run. Nothing happens in the
/// last 5 s.
#[derive(Debug)]
struct Plan {
    events: Vec<(Duration, Fault)>,
    broker_period: f64,
    kill_period: f64,
    cuts: Vec<(f64, f64)>,
}

impl Plan {
    fn new(secs: u64, seed: u64) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let d = secs as f64;
        let end = d - 5.0;
        let broker_period = (d / 20.0).clamp(15.0, 30.0);
        let kill_period = (d / 10.0).clamp(25.0, 60.0);
        let mut events = Vec::new();
        let secs_f = |s: f64| Duration::from_secs_f64(s);
        let mut t = broker_period * (0.7 + 0.6 * rng.f64());
        while t < end {
            let down = 0.5 + 2.5 * rng.f64();
            events.push((secs_f(t), Fault::BrokerRestart { down: secs_f(down) }));
            t += broker_period * (0.7 + 0.6 * rng.f64());
        }
        let mut t = kill_period * (0.7 + 0.6 * rng.f64());
        while t < end {
            let down = 0.2 + 1.8 * rng.f64();
            events.push((secs_f(t), Fault::Kill { down: secs_f(down) }));
            t += kill_period * (0.7 + 0.6 * rng.f64());
        }
        let n_cuts = ((d / 300.0).round() as usize).max(1);
        let cut_max = (d / 4.0).clamp(15.0, 120.0);
        let cut_min = (cut_max / 2.0).max(10.0);
        let slot = 0.8 * d / n_cuts as f64;
        let mut cuts = Vec::new();
        for i in 0..n_cuts {
            let slot_start = 0.1 * d + i as f64 * slot;
            let len = cut_min + (cut_max.min(slot - 1.0) - cut_min).max(0.0) * rng.f64();
            let start = slot_start + (slot - len).max(0.0) * rng.f64();
            let stop = (start + len).min(end);
            events.push((secs_f(start), Fault::CutStart));
            events.push((secs_f(stop), Fault::CutEnd));
            cuts.push((start, stop - start));
        }
        events.sort_by_key(|(at, _)| *at);
        Plan {
            events,
            broker_period,
            kill_period,
            cuts,
        }
    }

    fn count(&self, f: impl Fn(&Fault) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }

    fn describe(&self) -> String {
        let cuts: Vec<String> = self
            .cuts
            .iter()
            .map(|(at, len)| format!("{len:.0} s at {at:.0} s"))
            .collect();
        format!(
            "{} broker restarts (every ~{:.0} s), {} gateway SIGKILLs (every ~{:.0} s), {} network cuts ({})",
            self.count(|e| matches!(e, Fault::BrokerRestart { .. })),
            self.broker_period,
            self.count(|e| matches!(e, Fault::Kill { .. })),
            self.kill_period,
            self.cuts.len(),
            cuts.join(", ")
        )
    }
}

// ---- the proxy that cuts the network ----------------------------------------------------

#[derive(Debug, Default)]
struct ProxyStats {
    /// Connections accepted.
    accepted: AtomicU64,
    /// Connections forwarded to the broker.
    forwarded: AtomicU64,
    /// Accepted while the broker was down: closed at once.
    refused: AtomicU64,
    /// Accepted during a cut: held open, never forwarded, closed when the cut ended.
    held: AtomicU64,
    /// Forwarding when a cut began: frozen (nothing passes either way), closed when it ended.
    frozen: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 (port 0) to the broker's port, with a switch that cuts it.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    stats: Arc<ProxyStats>,
    /// Runs the relays; dropping it ends them.
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, rx) = tokio::sync::watch::channel(false);
        let stats = Arc::new(ProxyStats::default());
        let s = Arc::clone(&stats);
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(sock, upstream, rx.clone(), Arc::clone(&s)));
            }
        });
        Proxy {
            port,
            cut,
            stats,
            _rt: rt,
        }
    }

    fn set_cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Ends held and frozen connections; the runtime then cancels the rest.
        self.set_cut(false);
    }
}

async fn relay(
    down: tokio::net::TcpStream,
    upstream: u16,
    mut cut: tokio::sync::watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if *cut.borrow() {
        // The network is cut: the SYN got through to a listener that never answers.
        stats.held.fetch_add(1, Ordering::Relaxed);
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let up = match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", upstream)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let mut b1 = vec![0u8; 64 * 1024];
    let mut b2 = vec![0u8; 64 * 1024];
    let mut watch = cut.clone();
    enum Step {
        Cut,
        Down(usize),
        Up(usize),
    }
    loop {
        // The select's outputs (a watch guard among them) are gone before anything awaits.
        let step = tokio::select! {
            biased;
            r = watch.wait_for(|c| *c) => if r.is_ok() { Step::Cut } else { return },
            r = dr.read(&mut b1) => Step::Down(r.unwrap_or(0)),
            r = ur.read(&mut b2) => Step::Up(r.unwrap_or(0)),
        };
        let ok = match step {
            Step::Cut => {
                // Silence both ways, connections left open: the peers must find out by
                // themselves (keep-alive, timeouts). Dropped when the cut ends.
                stats.frozen.fetch_add(1, Ordering::Relaxed);
                let _ = cut.wait_for(|c| !*c).await;
                false
            }
            Step::Down(0) | Step::Up(0) => false,
            Step::Down(n) => uw.write_all(&b1[..n]).await.is_ok(),
            Step::Up(n) => dw.write_all(&b2[..n]).await.is_ok(),
        };
        if !ok {
            return;
        }
    }
}

// ---- the subscriber ---------------------------------------------------------------------

/// One reading as the subscriber received it.
#[derive(Debug, Clone, Copy)]
struct Rec {
    seq: u64,
    device: usize,
    point: usize,
    value: i64,
    /// The reading's timestamp and its arrival, µs since 1970.
    ts_us: i64,
    arrived_us: i64,
    /// The message had the DUP flag: Mosquitto sent it to the subscriber again.
    dup: bool,
}

#[derive(Debug, Default)]
struct Record {
    recs: Vec<Rec>,
    seen: HashSet<u64>,
    queue_ids: HashSet<String>,
    /// Retained "online" messages (one per connect of the gateway, while the subscriber was
    /// connected or queued for it).
    births: u64,
    historical: u64,
    /// Reconnects that found no session on the broker (its persistence failed).
    sessions_lost: u64,
    reconnects: u64,
    bad: Vec<String>,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Record {
    fn add(&mut self, topic: &str, body: &[u8], dup: bool) {
        if topic.ends_with("/status") {
            if body == b"online" {
                self.births += 1;
            }
            return;
        }
        let arrived_us = micros(SystemTime::now());
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                self.bad.push(format!("{topic}: {e}"));
                return;
            }
        };
        let parse_name = |s: &str, prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        };
        let device = parse_name(v["device"].as_str().unwrap_or(""), "dev-");
        if let Some(q) = v["queue_id"].as_str() {
            if !self.queue_ids.contains(q) {
                self.queue_ids.insert(q.to_string());
            }
        }
        if v["historical"] == true {
            self.historical += 1;
        }
        let Some(readings) = v["readings"].as_array() else {
            self.bad.push(format!("{topic}: no readings"));
            return;
        };
        for r in readings {
            let (Some(seq), Some(value), Some(ts)) =
                (r["seq"].as_u64(), r["value"].as_i64(), r["ts"].as_str())
            else {
                self.bad.push(format!("{topic}: {r}"));
                continue;
            };
            let ts_us = humantime::parse_rfc3339(ts).map_or(0, micros);
            self.seen.insert(seq);
            self.recs.push(Rec {
                seq,
                device,
                point: parse_name(r["point"].as_str().unwrap_or(""), "p"),
                value,
                ts_us,
                arrived_us,
                dup,
            });
        }
    }
}

/// A subscriber on Mosquitto's own port (not through the proxy): persistent session, QoS 1,
/// and manual acknowledgements, sent only once a message is recorded.
struct SoakSubscriber {
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SoakSubscriber {
    fn start(port: u16, filter: &str) -> SoakSubscriber {
        use rumqttc::{Event, Packet, QoS};
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (rec, st, filter) = (Arc::clone(&record), Arc::clone(&stop), filter.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut opts =
                    rumqttc::MqttOptions::new(format!("soak-checker-{port}"), "127.0.0.1", port);
                opts.set_clean_session(false);
                opts.set_keep_alive(Duration::from_secs(5));
                opts.set_max_packet_size(1 << 20, 1 << 20);
                opts.set_manual_acks(true);
                let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
                let mut subscribed = false;
                while !st.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                            if subscribed {
                                rec.lock().expect("lock").reconnects += 1;
                            }
                            if !ack.session_present {
                                if subscribed {
                                    rec.lock().expect("lock").sessions_lost += 1;
                                }
                                client
                                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                                    .await
                                    .expect("subscribe");
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if !subscribed => {
                            subscribed = true;
                            let _ = ready_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            rec.lock().expect("lock").add(&p.topic, &p.payload, p.dup);
                            let _ = client.ack(&p).await;
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscriber connected and subscribed");
        SoakSubscriber {
            record,
            stop,
            thread: Some(thread),
        }
    }

    fn unique(&self) -> usize {
        self.record.lock().expect("lock").seen.len()
    }

    /// Sequence ids in 1..=last not received yet.
    fn missing(&self, last: u64) -> Vec<u64> {
        let r = self.record.lock().expect("lock");
        (1..=last).filter(|s| !r.seen.contains(s)).collect()
    }

    fn finish(mut self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.record.lock().expect("lock"))
    }
}

impl Drop for SoakSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the gateway ------------------------------------------------------------------------

/// The site config of gateway run `run`: counters starting at `run × 10⁹`; with `drain`, one
/// reading per point only.
fn write_config(dir: &Path, proxy_port: u16, run: i64, drain: bool) -> PathBuf {
    let mut adapters = String::from("[[adapters]]\nid = \"sim\"\ntype = \"simulator\"\n");
    for d in 0..DEVICES {
        let _ = writeln!(adapters, "[[adapters.devices]]\nid = \"dev-{d}\"");
        for p in 0..POINTS {
            let _ = writeln!(
                adapters,
                "[[adapters.devices.points]]\nname = \"p{p}\"\nwaveform = \"counter\"\ninterval = \"{INTERVAL_MS}ms\"\nstart = {}{}",
                run * RUN_STRIDE,
                if drain { "\ncount = 1" } else { "" }
            );
        }
    }
    let text = format!(
        r#"
[gateway]
id = "soak"
data_dir = "{dir}"

[log]
level = "info"

[queue]
durability = "crash"

{adapters}

[[uplinks]]
id = "cloud"
type = "mqtt"
url = "mqtt://127.0.0.1:{proxy_port}"
drain = "fifo"
keep_alive = "5s"
connect_timeout = "5s"
ack_timeout = "10s"
retry_min = "200ms"
retry_max = "5s"

[[uplinks]]
id = "archive"
type = "file"
path = "archive.jsonl"
max_file_size = "1GB"
max_files = 10
"#,
        dir = dir.display()
    );
    common::write(dir, "site.toml", &text)
}

/// One gateway process of the soak.
#[derive(Debug)]
struct Run {
    log: PathBuf,
    started: SystemTime,
    /// When it was SIGKILLed, if it was.
    killed: Option<SystemTime>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Keeps the soak's files when the test fails (or when asked), removes them otherwise.
struct Files(Option<tempfile::TempDir>);

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            if std::thread::panicking() || std::env::var_os("FIELDGATE_SOAK_KEEP").is_some() {
                let kept = d.keep();
                eprintln!("soak: files kept in {}", kept.display());
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number"))
    })
}

/// `fieldgate queue stats --json` (beside a running gateway too), or null.
fn try_queue_stats(cfg: &Path) -> serde_json::Value {
    fieldgate_isolated()
        .args([
            "queue",
            "stats",
            "--json",
            "-c",
            cfg.to_str().expect("utf-8"),
        ])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn stat(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The value at quantile `q` of sorted `v`.
fn quantile(v: &[i64], q: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn secs(us: i64) -> String {
    format!("{:.2} s", us as f64 / 1e6)
}

#[test]
fn soak() {
    let secs_total = env_u64("FIELDGATE_SOAK_SECS").unwrap_or(60);
    assert!(secs_total >= 20, "FIELDGATE_SOAK_SECS must be at least 20");
    let seed = env_u64("FIELDGATE_SOAK_SEED").unwrap_or_else(|| fastrand::u64(..1_000_000));
    let plan = Plan::new(secs_total, seed);
    eprintln!(
        "soak: {secs_total} s, seed {seed} (replay with FIELDGATE_SOAK_SEED={seed}): {}",
        plan.describe()
    );

    let files = Files(Some(
        tempfile::Builder::new()
            .prefix("fieldgate-soak-")
            .tempdir()
            .expect("tempdir"),
    ));
    let root = files.0.as_ref().expect("dir").path().to_path_buf();
    let broker_dir = root.join("broker");
    let gw_dir = root.join("gateway");
    std::fs::create_dir_all(&broker_dir).expect("mkdir");
    std::fs::create_dir_all(&gw_dir).expect("mkdir");
    eprintln!("soak: files in {}", root.display());

    // No cap on what Mosquitto queues for the subscriber (the default, 1000 messages, would
    // drop QoS 1 messages during a backlog burst and blame the gateway).
    let broker_log = broker_dir.join("mosquitto.log");
    let mut broker = Mosquitto::start_with(
        &broker_dir,
        None,
        &format!(
            "max_queued_messages 0\nmax_queued_bytes 0\nlog_dest file {}\nlog_type warning\nlog_type notice\nlog_type information\n",
            broker_log.display()
        ),
    );
    let sub = SoakSubscriber::start(broker.plain_port, "fieldgate/soak/#");
    let proxy = Proxy::start(broker.port);

    let mut runs: Vec<Run> = Vec::new();
    let start_run = |runs: &mut Vec<Run>, drain: bool| -> (PathBuf, Gateway) {
        let n = runs.len();
        let cfg = write_config(&gw_dir, proxy.port, n as i64, drain);
        let log = gw_dir.join(format!("run-{n:02}.log"));
        runs.push(Run {
            log: log.clone(),
            started: SystemTime::now(),
            killed: None,
        });
        let gw = start_logged(&cfg, &log);
        (cfg, gw)
    };
    let (cfg, mut gw) = start_run(&mut runs, false);

    let t0 = Instant::now();
    let elapsed = |t0: Instant| t0.elapsed().as_secs_f64();
    let mut counts = BTreeMap::<&str, usize>::new();
    let mut cut_on: Option<Instant> = None;
    let progress_every = Duration::from_secs((secs_total / 20).max(10));
    let mut next_progress = t0 + progress_every;
    // Sleeps until `until`, checking that the gateway is alive and printing progress.
    let mut wait_until = |until: Instant, gw: &mut Gateway, runs: &[Run]| loop {
        if let Some(status) = gw.try_exit() {
            let run = runs.last().expect("a run");
            panic!(
                "the gateway exited by itself ({status}) at {:.1} s; its log ends:\n{}",
                elapsed(t0),
                tail(&run.log, 40)
            );
        }
        let now = Instant::now();
        if now >= next_progress {
            next_progress += progress_every;
            let s = try_queue_stats(&cfg);
            eprintln!(
                "[{:6.1} s] progress: committed {} depth {} received {}",
                elapsed(t0),
                stat(&s, "appended"),
                stat(&s, "depth"),
                sub.unique()
            );
        }
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    };

    for (at, fault) in &plan.events {
        wait_until(t0 + *at, &mut gw, &runs);
        match *fault {
            Fault::BrokerRestart { down } => {
                eprintln!(
                    "[{:6.1} s] broker restart (down {:.1} s); received {}",
                    elapsed(t0),
                    down.as_secs_f64(),
                    sub.unique()
                );
                broker.restart(down);
                *counts.entry("broker restarts").or_default() += 1;
            }
            Fault::Kill { down } => {
                eprintln!(
                    "[{:6.1} s] SIGKILL the gateway (restart after {:.1} s); received {}",
                    elapsed(t0),
                    down.as_secs_f64(),
                    sub.unique()
                );
                runs.last_mut().expect("a run").killed = Some(SystemTime::now());
                drop(gw); // SIGKILL, and reaped
                std::thread::sleep(down);
                let (_, g) = start_run(&mut runs, false);
                gw = g;
                *counts.entry("gateway kills").or_default() += 1;
            }
            Fault::CutStart => {
                eprintln!("[{:6.1} s] network cut begins", elapsed(t0));
                proxy.set_cut(true);
                cut_on = Some(Instant::now());
            }
            Fault::CutEnd => {
                proxy.set_cut(false);
                let len = cut_on.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
                eprintln!(
                    "[{:6.1} s] network cut ends after {len:.1} s; received {}",
                    elapsed(t0),
                    sub.unique()
                );
                *counts.entry("network cuts").or_default() += 1;
            }
        }
    }
    wait_until(t0 + Duration::from_secs(secs_total), &mut gw, &runs);
    proxy.set_cut(false);
    let faults_end = Instant::now();

    // A clean stop under load: the gateway commits what it holds and exits 0.
    eprintln!("[{:6.1} s] faults over; SIGTERM the gateway", elapsed(t0));
    let last_log = runs.last().expect("a run").log.clone();
    let status = gw
        .terminate(60)
        .unwrap_or_else(|| panic!("no exit 60 s after SIGTERM; log:\n{}", tail(&last_log, 40)));
    assert!(
        status.success(),
        "the gateway exited with {status} after SIGTERM; log:\n{}",
        tail(&last_log, 40)
    );
    let before = try_queue_stats(&cfg);
    // The drain run: one more reading per point, then the backlog goes out.
    let (_, gw) = start_run(&mut runs, true);
    let expected = stat(&before, "appended") + (DEVICES * POINTS) as u64;
    let drain_secs = 120.max(secs_total / 2);
    let drain_deadline = Instant::now() + Duration::from_secs(drain_secs);
    let mut after;
    loop {
        after = try_queue_stats(&cfg);
        if stat(&after, "appended") >= expected && after["depth"] == 0 {
            break;
        }
        assert!(
            Instant::now() < drain_deadline,
            "the queue did not drain within {drain_secs} s: {after}; log:\n{}",
            tail(&runs.last().expect("a run").log, 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let committed = stat(&after, "appended");
    let drained_in = faults_end.elapsed();
    eprintln!(
        "[{:6.1} s] queue drained: {committed} committed, depth 0",
        elapsed(t0)
    );
    // Everything the broker acknowledged reaches the subscriber (it is connected).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sub.missing(committed).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_log = runs.last().expect("a run").log.clone();
    let status = gw.terminate(30).expect("the drain run stops on SIGTERM");
    assert!(status.success(), "drain run exit {status}");
    let final_stats = try_queue_stats(&cfg);
    let rec = sub.finish();
    broker.stop();
    let total_secs = elapsed(t0);

    // ---- compare ------------------------------------------------------------------------
    let mut problems: Vec<String> = Vec::new();
    let queue_id = final_stats["queue_id"].as_str().unwrap_or("").to_string();
    assert_eq!(
        stat(&final_stats, "appended"),
        committed,
        "nothing committed after the drain run"
    );
    for key in [
        "dropped_age",
        "dropped_oldest",
        "dropped_newest",
        "dead_letters",
    ] {
        if stat(&final_stats, key) != 0 {
            problems.push(format!("queue {key} = {}", final_stats[key]));
        }
    }
    if final_stats["depth"] != 0 {
        problems.push(format!("queue depth {} at the end", final_stats["depth"]));
    }
    let foreign: Vec<&String> = rec.queue_ids.iter().filter(|q| **q != queue_id).collect();
    if !foreign.is_empty() {
        problems.push(format!(
            "messages from other queues {foreign:?} (ours is {queue_id})"
        ));
    }
    if !rec.bad.is_empty() {
        problems.push(format!(
            "{} unreadable messages, first: {}",
            rec.bad.len(),
            rec.bad[0]
        ));
    }
    if rec.sessions_lost > 0 {
        problems.push(format!(
            "the subscriber's session was lost {} times (Mosquitto persistence): the comparison is void",
            rec.sessions_lost
        ));
    }
    if rec.historical > 0 {
        problems.push(format!(
            "{} messages flagged historical in fifo mode",
            rec.historical
        ));
    }

    // Lost: committed, never received.
    let lost: Vec<u64> = (1..=committed).filter(|s| !rec.seen.contains(s)).collect();
    let beyond = rec
        .seen
        .iter()
        .filter(|s| **s > committed || **s == 0)
        .count();
    if !lost.is_empty() {
        problems.push(format!(
            "LOST {} committed readings, first seqs {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
    if beyond > 0 {
        problems.push(format!("{beyond} received seqs were never committed"));
    }

    // First arrivals, duplicates, lag, fifo per device.
    let mut first: HashMap<u64, Rec> = HashMap::new();
    let mut dup_flagged = 0u64;
    let mut duplicates = 0u64;
    let mut last_seq_of_device: HashMap<usize, u64> = HashMap::new();
    let mut misordered: Vec<String> = Vec::new();
    let mut lags: Vec<i64> = Vec::with_capacity(rec.recs.len());
    for r in &rec.recs {
        if first.contains_key(&r.seq) {
            duplicates += 1;
            if r.dup {
                dup_flagged += 1;
            }
            continue;
        }
        first.insert(r.seq, *r);
        lags.push(r.arrived_us - r.ts_us);
        let prev = last_seq_of_device.insert(r.device, r.seq).unwrap_or(0);
        if r.seq <= prev {
            misordered.push(format!(
                "dev-{}: seq {} arrived after {prev}",
                r.device, r.seq
            ));
        }
    }
    if !misordered.is_empty() {
        problems.push(format!(
            "{} per-device order violations, first: {:?}",
            misordered.len(),
            &misordered[..misordered.len().min(10)]
        ));
    }
    lags.sort_unstable();

    // Per point: within each run the counter values committed are 0, 1, 2, ... in seq order.
    let mut by_point: BTreeMap<(usize, usize), Vec<Rec>> = BTreeMap::new();
    for r in first.values() {
        by_point.entry((r.device, r.point)).or_default().push(*r);
    }
    // (run, device, point) -> (readings, timestamp of the last one)
    let mut per_run: HashMap<(usize, usize, usize), (i64, i64)> = HashMap::new();
    let mut holes: Vec<String> = Vec::new();
    for ((d, p), recs) in &mut by_point {
        recs.sort_by_key(|r| r.seq);
        let mut cur: Option<(i64, i64)> = None; // (run, k)
        for r in recs.iter() {
            let (run, k) = (r.value / RUN_STRIDE, r.value % RUN_STRIDE);
            let ok = match cur {
                Some((cr, ck)) if cr == run => k == ck + 1,
                Some((cr, _)) => run > cr && k == 0,
                None => k == 0,
            };
            if !ok {
                holes.push(format!(
                    "dev-{d}/p{p}: value {} (seq {}) after {cur:?}",
                    r.value, r.seq
                ));
            }
            cur = Some((run, k));
            let e = per_run.entry((run as usize, *d, *p)).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(r.ts_us);
        }
    }
    if !holes.is_empty() {
        problems.push(format!(
            "{} holes in the simulated counters (a reading made and lost while the gateway ran), first: {:?}",
            holes.len(),
            &holes[..holes.len().min(10)]
        ));
    }
    // What each SIGKILLed run had made after its last commit (estimated from timestamps).
    let interval_us = (INTERVAL_MS * 1000) as i64;
    let mut in_memory = 0i64;
    for (i, run) in runs.iter().enumerate() {
        let Some(killed) = run.killed else { continue };
        let killed_us = micros(killed);
        for d in 0..DEVICES {
            for p in 0..POINTS {
                in_memory += match per_run.get(&(i, d, p)) {
                    Some(&(_, last_ts)) => ((killed_us - last_ts) / interval_us).max(0),
                    None => ((killed_us - micros(run.started)) / interval_us + 1).max(0),
                };
            }
        }
    }
    let runs_seen = per_run
        .keys()
        .map(|(r, _, _)| *r)
        .collect::<HashSet<_>>()
        .len();

    // The archive (file uplink) holds every committed reading; all of them reached the
    // subscriber.
    let mut archive: HashSet<u64> = HashSet::new();
    let mut torn = 0usize;
    let mut archive_lines = 0usize;
    for entry in std::fs::read_dir(&gw_dir).expect("read dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("archive.jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read archive");
        for line in text.lines() {
            archive_lines += 1;
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => {
                    if v["queue_id"] != queue_id.as_str() {
                        problems.push(format!("archive line of another queue: {line}"));
                    }
                    if let Some(s) = v["seq"].as_u64() {
                        archive.insert(s);
                    }
                }
                Err(_) => torn += 1,
            }
        }
    }
    let archive_missing = (1..=committed).filter(|s| !archive.contains(s)).count();
    let archive_not_at_sub = archive.iter().filter(|s| !rec.seen.contains(s)).count();
    if torn > 0 {
        problems.push(format!("{torn} torn (unparsable) lines in the archive"));
    }
    if archive_missing > 0 {
        problems.push(format!(
            "{archive_missing} committed readings missing from the archive"
        ));
    }
    if archive_not_at_sub > 0 {
        problems.push(format!(
            "{archive_not_at_sub} archived readings never reached the subscriber"
        ));
    }

    // The queue file is intact.
    let db = gw_dir.join("queue.db");
    let integrity: String = rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
        .unwrap_or_else(|e| format!("cannot check: {e}"));
    if integrity != "ok" {
        problems.push(format!("queue.db integrity_check: {integrity}"));
    }

    // What the logs say: connects, lost connections, errors, panics.
    let (mut connects, mut losses, mut warns, mut panics) = (0usize, 0usize, 0usize, 0usize);
    let mut by_keepalive = 0usize;
    let mut errors: Vec<String> = Vec::new();
    for run in &runs {
        let text = std::fs::read_to_string(&run.log).unwrap_or_default();
        for line in text.lines() {
            connects += usize::from(line.contains("connected to the MQTT broker"));
            losses += usize::from(line.contains("lost the MQTT connection"));
            by_keepalive +=
                usize::from(line.contains("lost the MQTT connection") && line.contains("pingreq"));
            warns += usize::from(line.contains(" WARN "));
            panics += usize::from(line.contains("panicked"));
            if line.contains(" ERROR ") {
                errors.push(line.to_string());
            }
        }
    }
    if panics > 0 {
        problems.push(format!("{panics} panics in the gateway's logs"));
    }

    // The faults happened, and the gateway felt them.
    let performed = |k: &str| counts.get(k).copied().unwrap_or(0);
    let planned_restarts = plan.count(|e| matches!(e, Fault::BrokerRestart { .. }));
    let planned_kills = plan.count(|e| matches!(e, Fault::Kill { .. }));
    if performed("broker restarts") != planned_restarts || planned_restarts == 0 {
        problems.push(format!(
            "{} broker restarts of {planned_restarts} planned",
            performed("broker restarts")
        ));
    }
    if performed("gateway kills") != planned_kills || planned_kills < 1 {
        problems.push(format!(
            "{} gateway kills of {planned_kills} planned",
            performed("gateway kills")
        ));
    }
    if performed("network cuts") != plan.cuts.len() || plan.cuts.is_empty() {
        problems.push(format!(
            "{} network cuts of {} planned",
            performed("network cuts"),
            plan.cuts.len()
        ));
    }
    let frozen = proxy.stats.frozen.load(Ordering::Relaxed);
    let held = proxy.stats.held.load(Ordering::Relaxed);
    if frozen + held == 0 {
        problems.push("no connection was caught by a network cut".into());
    }
    // (A run started in a cut and killed in it never connects: no count per run.)
    if losses == 0 || connects < 2 {
        problems.push(format!(
            "{connects} MQTT connects and {losses} lost connections in the logs of {} runs",
            runs.len()
        ));
    }

    let total_received = rec.recs.len() as u64;
    let unique = first.len() as u64;
    let mut summary = String::new();
    let _ = writeln!(summary, "==== fieldgate soak summary ====");
    let _ = writeln!(
        summary,
        "faults for         {secs_total} s (then stop, drain and compare: {:.1} s; {:.1} s in all), seed {seed}",
        drained_in.as_secs_f64(),
        total_secs
    );
    let _ = writeln!(
        summary,
        "machine            {} cores",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let _ = writeln!(
        summary,
        "stream             simulator, {DEVICES} devices x {POINTS} counter points every {INTERVAL_MS} ms = {} readings/s; MQTT QoS 1 fifo via a cuttable proxy + file archive",
        (DEVICES * POINTS) as u64 * 1000 / INTERVAL_MS
    );
    let _ = writeln!(
        summary,
        "faults performed   {} broker restarts, {} gateway SIGKILLs, {} network cuts ({})",
        performed("broker restarts"),
        performed("gateway kills"),
        performed("network cuts"),
        plan.cuts
            .iter()
            .map(|(_, l)| format!("{l:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        summary,
        "gateway            {} runs ({runs_seen} with readings); {connects} MQTT connects, {losses} lost connections ({by_keepalive} noticed by keep-alive), {warns} WARN and {} ERROR log lines, {panics} panics",
        runs.len(),
        errors.len()
    );
    let _ = writeln!(
        summary,
        "proxy              {} connections: {} forwarded, {} refused (broker down), {} held in a cut, {} frozen by a cut",
        proxy.stats.accepted.load(Ordering::Relaxed),
        proxy.stats.forwarded.load(Ordering::Relaxed),
        proxy.stats.refused.load(Ordering::Relaxed),
        held,
        frozen
    );
    let _ = writeln!(
        summary,
        "subscriber         {} reconnects, {} sessions lost, {} births seen",
        rec.reconnects, rec.sessions_lost, rec.births
    );
    let _ = writeln!(
        summary,
        "committed          {committed} readings (seq 1..={committed}; dropped {}, dead letters {})",
        stat(&final_stats, "dropped_age")
            + stat(&final_stats, "dropped_oldest")
            + stat(&final_stats, "dropped_newest"),
        stat(&final_stats, "dead_letters")
    );
    let _ = writeln!(summary, "received unique    {unique}");
    let _ = writeln!(summary, "lost               {}", lost.len());
    let _ = writeln!(
        summary,
        "duplicates         {duplicates} ({:.2} %; {} resent by the gateway, {dup_flagged} redelivered by Mosquitto with DUP); {total_received} deliveries",
        duplicates as f64 * 100.0 / unique.max(1) as f64,
        duplicates - dup_flagged
    );
    let _ = writeln!(
        summary,
        "fifo               {} per-device order violations ({DEVICES} devices); {} counter holes",
        misordered.len(),
        holes.len()
    );
    let _ = writeln!(
        summary,
        "in memory at kill  ~{in_memory} readings made but not committed when SIGKILL hit ({} kills; estimated from timestamps, not counted as lost)",
        performed("gateway kills")
    );
    let _ = writeln!(
        summary,
        "archive (file)     {} unique seqs in {archive_lines} lines, {archive_missing} committed missing, {archive_not_at_sub} not at the subscriber, {torn} torn lines",
        archive.len()
    );
    let _ = writeln!(
        summary,
        "delivery lag       p50 {}, p99 {}, max {} (reading timestamp to first arrival)",
        secs(quantile(&lags, 0.5)),
        secs(quantile(&lags, 0.99)),
        secs(lags.last().copied().unwrap_or(0))
    );
    let _ = writeln!(summary, "queue file         integrity_check {integrity}");
    let _ = write!(
        summary,
        "result             {}",
        if problems.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", problems.join("; "))
        }
    );
    eprintln!("\n{summary}\n");
    if !errors.is_empty() {
        eprintln!(
            "ERROR lines in the gateway's logs (first 10):\n{}",
            errors[..errors.len().min(10)].join("\n")
        );
    }
    assert!(
        problems.is_empty(),
        "soak failed (seed {seed}): {}\ndrain run log:\n{}",
        problems.join("\n"),
        tail(&drain_log, 30)
    );
    drop(files);
}
