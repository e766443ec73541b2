//! The gateway's live status, for people and for monitoring: what the local HTTP endpoint
//! (`[http]`) serves as Prometheus metrics, JSON and a status page, and what
//! `fieldgate status` prints.
//!
//! The pipeline feeds one [`Board`]: each adapter's supervisor says when its adapter starts,
//! fails and stops; the queue writer shows it every reading (one lock per chunk it takes off
//! the channel, before the rules stage, so the page shows what the devices said); each forwarder keeps its uplink's
//! [`UplinkLive`] counters. A request takes a [`Snapshot`] of the board plus the queue's own
//! stats, and renders it as [`metrics`], JSON or [`text`].
//!
//! Memory is bounded: the last value of at most [`MAX_POINTS`] points is kept (past that,
//! readings are counted but their points not listed), and the throughput history holds
//! [`HISTORY`] samples.

pub mod client;
pub mod metrics;
pub mod server;
pub mod text;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{Name, Quality, Reading, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::queue::QueueStats;
use crate::uplink::LinkState;

/// Most points whose last value the board keeps.
pub const MAX_POINTS: usize = 10_000;
/// How often the throughput history takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
pub const HISTORY: usize = 120;

/// The live status of a running gateway, shared by the pipeline and the HTTP endpoint.
#[derive(Debug)]
pub struct Board {
    gateway: String,
    started: SystemTime,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    adapters: BTreeMap<String, AdapterLive>,
    uplinks: BTreeMap<String, Arc<UplinkLive>>,
    /// Readings the writer has seen.
    readings: u64,
    /// Points with a last value.
    points: usize,
    /// Readings of points past [`MAX_POINTS`].
    untracked: u64,
    history: VecDeque<Sample>,
    reload: Option<ReloadStatus>,
    /// Since when the queue's disk has been full, while it is.
    disk_full_since: Option<SystemTime>,
    /// Readings refused because the disk was full (`drop_newest`), since the gateway started.
    disk_refused: u64,
}

#[derive(Debug, Default)]
struct AdapterLive {
    state: AdapterState,
    readings: u64,
    errors: u64,
    restarts: u64,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    devices: BTreeMap<Name, BTreeMap<Name, Last>>,
}

#[derive(Debug, Clone)]
struct Last {
    value: Value,
    unit: Option<Name>,
    quality: Quality,
    ts: SystemTime,
}

/// What an adapter is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterState {
    /// Built, not started yet.
    #[default]
    Starting,
    /// Running.
    Running,
    /// Failed; the supervisor restarts it after a backoff.
    Restarting,
    /// Stopped (shutdown, or removed by a reload).
    Stopped,
}

impl AdapterState {
    /// `starting`, `running`, `restarting` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterState::Starting => "starting",
            AdapterState::Running => "running",
            AdapterState::Restarting => "restarting",
            AdapterState::Stopped => "stopped",
        }
    }
}

/// One uplink's counters, kept by its forwarder.
#[derive(Debug, Default)]
pub struct UplinkLive {
    /// Readings delivered since the gateway started.
    delivered: AtomicU64,
    /// Failed sends (each is retried).
    retries: AtomicU64,
    /// Readings the far side refused for good (dead-lettered).
    rejected: AtomicU64,
    /// Wall-clock milliseconds of the last successful send (0: none yet).
    last_ok_ms: AtomicU64,
    /// The last send failed (and no send has worked since).
    failing: AtomicBool,
    /// At least one send has settled.
    settled: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The connection's own state, for uplinks that keep one (MQTT).
    link: Mutex<Option<watch::Receiver<LinkState>>>,
}

impl UplinkLive {
    /// A send delivered `delivered` readings and the far side refused `rejected`.
    pub fn sent(&self, delivered: u64, rejected: u64, now: SystemTime) {
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.last_ok_ms.store(millis(now), Ordering::Relaxed);
        self.failing.store(false, Ordering::Relaxed);
        self.settled.store(true, Ordering::Relaxed);
    }

    /// A send failed with `why` (it will be retried).
    pub fn failed(&self, why: &str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        self.settled.store(true, Ordering::Relaxed);
        *lock(&self.last_error) = Some(why.to_string());
    }

    /// The uplink's connection state, for uplinks that hold a connection.
    pub fn watch_link(&self, link: watch::Receiver<LinkState>) {
        *lock(&self.link) = Some(link);
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn status(&self, id: &str, position: Option<&crate::queue::UplinkPosition>) -> UplinkStatus {
        let link = lock(&self.link).as_ref().map(|l| l.borrow().clone());
        let last_error = lock(&self.last_error).clone();
        // An uplink with a connection says so itself; the others are "connected" when their
        // last send worked, and unknown before the first.
        let (connected, last_error) = match link {
            Some(LinkState::Up) => (Some(true), last_error),
            Some(LinkState::Down(why)) => (Some(false), why.or(last_error)),
            None if self.settled.load(Ordering::Relaxed) => {
                (Some(!self.failing.load(Ordering::Relaxed)), last_error)
            }
            None => (None, last_error),
        };
        let last_ok = self.last_ok_ms.load(Ordering::Relaxed);
        UplinkStatus {
            id: id.to_string(),
            connected,
            delivered: self.delivered(),
            retries: self.retries.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            pending: position.map(|p| p.pending),
            lag_secs: position.map(|p| p.oldest_age.map_or(0.0, |a| a.as_secs_f64())),
            last_delivery: (last_ok > 0).then(|| last_ok as f64 / 1000.0),
            last_error,
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Locks `m`, going on with the data if a panicking thread poisoned it (the board only holds
/// counters and last values; a half-done update is harmless).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Board {
    /// An empty board for gateway `gateway`, started now.
    pub fn new(gateway: &str) -> Arc<Board> {
        Arc::new(Board {
            gateway: gateway.to_string(),
            started: SystemTime::now(),
            inner: Mutex::default(),
        })
    }

    /// Adapter `id` is being started by its supervisor.
    pub fn adapter_started(&self, id: &str) {
        lock(&self.inner)
            .adapters
            .entry(id.to_string())
            .or_default()
            .state = AdapterState::Running;
    }

    /// Adapter `id` failed with `why`; it will be restarted.
    pub fn adapter_failed(&self, id: &str, why: &str) {
        let mut inner = lock(&self.inner);
        let a = inner.adapters.entry(id.to_string()).or_default();
        a.state = AdapterState::Restarting;
        a.restarts += 1;
        a.errors += 1;
        a.last_error = Some(why.to_string());
    }

    /// Adapter `id` stopped for good (shutdown).
    pub fn adapter_stopped(&self, id: &str) {
        if let Some(a) = lock(&self.inner).adapters.get_mut(id) {
            a.state = AdapterState::Stopped;
        }
    }

    /// Adapter `id` was stopped by a reload (removed, or restarted with a new section): it
    /// leaves the board with its points; a restarted one comes back when it starts.
    pub fn adapter_removed(&self, id: &str) {
        let mut inner = lock(&self.inner);
        if let Some(a) = inner.adapters.remove(id) {
            inner.points -= a.devices.values().map(BTreeMap::len).sum::<usize>();
        }
    }

    /// Registers uplink `id`'s counters.
    pub fn add_uplink(&self, id: &str, live: Arc<UplinkLive>) {
        lock(&self.inner).uplinks.insert(id.to_string(), live);
    }

    /// The readings the writer just received (before the rules stage). Readings of adapters
    /// the board does not know (one a reload removed, still in the channel) are ignored.
    pub fn observe(&self, readings: &[Reading], now: SystemTime) {
        if readings.is_empty() {
            return;
        }
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        inner.readings += readings.len() as u64;
        for r in readings {
            let Some(a) = inner.adapters.get_mut(r.source.as_str()) else {
                continue;
            };
            a.readings += 1;
            match &r.quality {
                Quality::Good => a.last_success = Some(now),
                Quality::Bad(why) | Quality::Stale(why) => {
                    a.errors += 1;
                    if a.last_error.as_deref() != Some(why) {
                        a.last_error = Some(why.clone());
                    }
                }
            }
            let last = Last {
                value: r.value.clone(),
                unit: r.unit.clone(),
                quality: r.quality.clone(),
                ts: r.ts,
            };
            if let Some(points) = a.devices.get_mut(r.device.as_str()) {
                if let Some(slot) = points.get_mut(r.point.as_str()) {
                    *slot = last;
                    continue;
                }
            }
            if inner.points >= MAX_POINTS {
                inner.untracked += 1;
                continue;
            }
            inner.points += 1;
            a.devices
                .entry(r.device.clone())
                .or_default()
                .insert(r.point.clone(), last);
        }
    }

    /// The queue's disk filled up (`Some(since)`) or has room again (`None`); `refused` more
    /// readings were refused for it.
    pub fn disk_full(&self, since: Option<SystemTime>, refused: u64) {
        let mut inner = lock(&self.inner);
        inner.disk_full_since = since;
        inner.disk_refused += refused;
    }

    /// Since when the queue's disk has been full, while it is, and how many readings it
    /// refused since the gateway started.
    pub fn disk(&self) -> (Option<SystemTime>, u64) {
        let inner = lock(&self.inner);
        (inner.disk_full_since, inner.disk_refused)
    }

    /// Takes a throughput sample if [`SAMPLE_EVERY`] has passed since the last one (called
    /// every second by the pipeline).
    pub fn sample(&self, now: SystemTime) {
        let mut inner = lock(&self.inner);
        let t = secs(now);
        if inner
            .history
            .back()
            .is_some_and(|s| t - s.t < SAMPLE_EVERY.as_secs_f64() - 0.5)
        {
            return;
        }
        let delivered = inner.uplinks.values().map(|u| u.delivered()).sum();
        let readings = inner.readings;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(Sample {
            t,
            readings,
            delivered,
        });
    }

    /// Records the outcome of a reload.
    pub fn reloaded(&self, ok: bool, message: &str, now: SystemTime) {
        lock(&self.inner).reload = Some(ReloadStatus {
            at: secs(now),
            ok,
            message: message.to_string(),
        });
    }

    /// A snapshot, with the queue's `stats` (or why they could not be read) and whether the
    /// pipeline is alive (`alive`: the writer beats and the queue answers); the devices and
    /// their points' last values only with `points`.
    pub fn snapshot(
        &self,
        stats: Result<&QueueStats, String>,
        max_bytes: Option<u64>,
        alive: bool,
        points: bool,
        now: SystemTime,
    ) -> Snapshot {
        let inner = lock(&self.inner);
        let adapters: Vec<AdapterStatus> = inner
            .adapters
            .iter()
            .map(|(id, a)| AdapterStatus {
                id: id.clone(),
                state: a.state,
                readings: a.readings,
                errors: a.errors,
                restarts: a.restarts,
                last_success: a.last_success.map(secs),
                last_error: a.last_error.clone(),
                devices: a
                    .devices
                    .iter()
                    .filter(|_| points)
                    .map(|(device, points)| DeviceStatus {
                        id: device.as_str().to_string(),
                        points: points
                            .iter()
                            .map(|(point, last)| PointStatus {
                                point: point.as_str().to_string(),
                                value: json_value(&last.value),
                                unit: last.unit.as_ref().map(|u| u.as_str().to_string()),
                                quality: last.quality.as_str().to_string(),
                                reason: last.quality.reason().map(str::to_string),
                                ts: secs(last.ts),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let positions = stats.as_ref().ok().map(|s| &s.uplinks);
        let uplinks = inner
            .uplinks
            .iter()
            .map(|(id, live)| {
                let pos = positions.and_then(|p| p.iter().find(|p| p.uplink == *id));
                live.status(id, pos)
            })
            .collect::<Vec<_>>();
        let (queue, queue_error) = match stats {
            Ok(s) => (Some(QueueStatus::from_stats(s, max_bytes)), None),
            Err(e) => (None, Some(e)),
        };
        let mut problems = Vec::new();
        if !alive {
            problems.push(
                "the pipeline is stalled (the queue writer or the queue does not answer)"
                    .to_string(),
            );
        }
        if let Some(e) = &queue_error {
            problems.push(format!("queue: {e}"));
        }
        if let Some(since) = inner.disk_full_since {
            problems.push(format!(
                "the queue's disk is full (for {}): its when_full policy applies; free space on the data_dir's filesystem",
                text::span(now.duration_since(since).unwrap_or_default().as_secs_f64())
            ));
        }
        for u in &uplinks {
            if u.connected == Some(false) {
                problems.push(format!(
                    "uplink {} is down{}",
                    u.id,
                    u.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        for a in &adapters {
            if a.state == AdapterState::Restarting {
                problems.push(format!(
                    "adapter {} is restarting{}",
                    a.id,
                    a.last_error
                        .as_deref()
                        .map(|e| format!(" after: {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        Snapshot {
            gateway: GatewayStatus {
                id: self.gateway.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started: secs(self.started),
                now: secs(now),
            },
            alive,
            ready: alive
                && queue_error.is_none()
                && uplinks.iter().all(|u| u.connected != Some(false)),
            problems,
            adapters,
            queue,
            queue_error,
            uplinks,
            untracked_points: inner.untracked,
            history: inner.history.iter().cloned().collect(),
            reload: inner.reload.clone(),
            disk_full_since: inner.disk_full_since.map(secs),
            disk_refused: inner.disk_refused,
        }
    }
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(s) => s.clone().into(),
        Value::Bytes(b) => crate::payload::base64(b).into(),
    }
}

/// Everything the status page shows, as the JSON API serves it (`GET /api/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The gateway.
    pub gateway: GatewayStatus,
    /// The pipeline works: the queue writer beats and the queue answers (`/healthz`).
    pub alive: bool,
    /// Alive, the queue readable, and no uplink known to be down (`/readyz`).
    pub ready: bool,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
    /// Adapters by id, with their devices' last values.
    pub adapters: Vec<AdapterStatus>,
    /// The queue, when its stats could be read.
    pub queue: Option<QueueStatus>,
    /// Why the queue's stats could not be read.
    pub queue_error: Option<String>,
    /// Uplinks by id.
    pub uplinks: Vec<UplinkStatus>,
    /// Readings of points beyond the [`MAX_POINTS`] the board lists.
    pub untracked_points: u64,
    /// Throughput samples, oldest first, every [`SAMPLE_EVERY`].
    pub history: Vec<Sample>,
    /// The last reload, if any.
    pub reload: Option<ReloadStatus>,
    /// Since when the queue's disk has been full (Unix seconds), while it is.
    #[serde(default)]
    pub disk_full_since: Option<f64>,
    /// Readings refused because the disk was full, since the gateway started.
    #[serde(default)]
    pub disk_refused: u64,
}

/// Who and since when. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// `[gateway] id`.
    pub id: String,
    /// The fieldgate version.
    pub version: String,
    /// When the gateway started.
    pub started: f64,
    /// When the snapshot was taken.
    pub now: f64,
}

/// One adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterStatus {
    /// Its id.
    pub id: String,
    /// What it is doing.
    pub state: AdapterState,
    /// Readings it produced.
    pub readings: u64,
    /// Bad or stale readings plus adapter failures.
    pub errors: u64,
    /// Times it failed and was restarted.
    pub restarts: u64,
    /// When it last produced a good reading.
    pub last_success: Option<f64>,
    /// Its last error (a failure, or the reason of a bad or stale reading).
    pub last_error: Option<String>,
    /// Its devices.
    pub devices: Vec<DeviceStatus>,
}

/// One device and the last value of each of its points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its id.
    pub id: String,
    /// Its points.
    pub points: Vec<PointStatus>,
}

/// A point's last reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointStatus {
    /// The point.
    pub point: String,
    /// The value, as in payloads (bytes in base64).
    pub value: serde_json::Value,
    /// Its unit.
    pub unit: Option<String>,
    /// `good`, `bad` or `stale`.
    pub quality: String,
    /// Why it is bad or stale.
    pub reason: Option<String>,
    /// When it was measured.
    pub ts: f64,
}

/// The queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Readings waiting for at least one uplink.
    pub depth: u64,
    /// Age of the oldest of them, seconds.
    pub oldest_age_secs: Option<f64>,
    /// Bytes of live pages.
    pub used_bytes: u64,
    /// `[queue] max_bytes`, if set.
    pub max_bytes: Option<u64>,
    /// Bytes of the file and its WAL.
    pub file_bytes: u64,
    /// Readings ever appended.
    pub appended: u64,
    /// Readings every uplink acknowledged.
    pub delivered: u64,
    /// Readings dropped, by reason: `max_age`, `drop_oldest`, `drop_newest`, `rejected`
    /// (dead letters).
    pub dropped: BTreeMap<String, u64>,
}

impl QueueStatus {
    fn from_stats(s: &QueueStats, max_bytes: Option<u64>) -> QueueStatus {
        QueueStatus {
            depth: s.depth,
            oldest_age_secs: s.oldest_age.map(|a| a.as_secs_f64()),
            used_bytes: s.used_bytes,
            max_bytes,
            file_bytes: s.file_bytes,
            appended: s.appended,
            delivered: s.delivered,
            dropped: BTreeMap::from([
                ("max_age".to_string(), s.dropped_age),
                ("drop_oldest".to_string(), s.dropped_oldest),
                ("drop_newest".to_string(), s.dropped_newest),
                ("rejected".to_string(), s.dead_letters),
            ]),
        }
    }
}

/// One uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Its id.
    pub id: String,
    /// Connected (MQTT: the broker's CONNACK; others: the last send worked); unknown
    /// before the first send.
    pub connected: Option<bool>,
    /// Readings delivered since the gateway started.
    pub delivered: u64,
    /// Failed sends since the gateway started (each is retried).
    pub retries: u64,
    /// Readings the far side refused for good since the gateway started.
    pub rejected: u64,
    /// Readings it has not acknowledged yet.
    pub pending: Option<u64>,
    /// Age of the oldest of them, seconds (0 when none is pending).
    pub lag_secs: Option<f64>,
    /// When a send last worked.
    pub last_delivery: Option<f64>,
    /// The last error.
    pub last_error: Option<String>,
}

/// A throughput sample: the counters at time `t` (the page draws their differences).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When.
    pub t: f64,
    /// Readings received from the adapters so far.
    pub readings: u64,
    /// Readings delivered by the uplinks so far (summed over uplinks).
    pub delivered: u64,
}

/// The outcome of the last reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// When.
    pub at: f64,
    /// Whether the new config was applied.
    pub ok: bool,
    /// What changed, or why the config was refused.
    pub message: String,
}

#[cfg(test)]
mod tests;
