//! The store-and-forward queue: readings on disk until every uplink has them.
//!
//! [`Queue`] is a single SQLite database in WAL mode holding an append-only `readings` table
//! keyed by a sequence id (`INTEGER PRIMARY KEY`). Sequence ids are assigned by the queue, are
//! never reused (the next id is persisted, not derived from the table), and are what the cloud
//! de-duplicates on after an at-least-once redelivery.
//!
//! * **Append** ([`Queue::append`]) writes a whole batch in one transaction (group commit): one
//!   WAL commit, and with `durability = "power-loss"` one fsync, per batch, not per reading.
//! * **Peek** ([`Queue::peek`]) reads rows after a position without removing them.
//! * **Ack** ([`Queue::ack`]) moves one uplink's watermark forward. Rows at or below *every*
//!   configured uplink's watermark are removed with one range delete.
//! * **Caps**: `max_bytes` (live pages of the database) and `max_age` (time since the batch
//!   was appended), with [`WhenFull`] deciding what gives when the byte cap is reached. Every
//!   dropped reading is counted by reason in the `state` row, which survives restarts.
//!
//! Rows always form one contiguous range of sequence ids (drops and deletes only ever cut the
//! front; a refused batch never gets ids), so depth is `last - first + 1` without a scan.
//!
//! [`QueueHandle`] wraps a queue for async code (blocking calls on the blocking pool) and
//! tells forwarders when new rows are committed. [`Inspector`] opens a queue read-only, safe
//! beside a running gateway, for `fieldgate queue stats|peek`.

mod alert;
mod audit;
mod handle;
mod series;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_adapter::{Quality, Reading, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

pub use alert::{Alert, AlertLevel, AlertState, Severity};
pub use audit::{read_audit, AuditEntry, AuditLog, NewEntry, AUDIT_CAP};
pub use handle::{Batch, QueueHandle};
use series::SeriesCache;
pub use state::SqliteState;

use crate::clock::ClockStamp;
use crate::throttle::Throttle;

/// What a committed reading survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// `synchronous = NORMAL`: a committed batch survives the process being killed (kill -9,
    /// a panic, the OOM killer), but the last batches before a power cut may be lost. The
    /// database is never corrupted either way. The fastest, and the gentlest on SD cards.
    #[default]
    Crash,
    /// `synchronous = FULL`: every commit is fsynced, so a committed batch also survives a
    /// power cut. One fsync per batch, not per reading.
    PowerLoss,
}

/// What the queue does when `max_bytes` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest readings to make room (counted as `dropped_oldest`). Keeps the
    /// freshest data; the default.
    #[default]
    DropOldest,
    /// Refuse the incoming batch (counted as `dropped_newest`). Keeps the oldest data.
    DropNewest,
    /// Accept nothing until uplinks make room: adapters wait (backpressure). Loses nothing
    /// the queue holds, but devices that cannot wait will lose readings at the source.
    Block,
}

/// How a queue is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// What a committed batch survives.
    pub durability: Durability,
    /// Cap on the live size of the database, in bytes; `None` for no cap.
    pub max_bytes: Option<u64>,
    /// Readings queued longer than this are dropped (counted as `dropped_age`).
    pub max_age: Option<Duration>,
    /// What gives when `max_bytes` is reached.
    pub when_full: WhenFull,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            durability: Durability::Crash,
            max_bytes: None,
            max_age: None,
            when_full: WhenFull::DropOldest,
        }
    }
}

/// Errors from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQLite failed (disk full, I/O error, locked beyond the busy timeout).
    #[error("queue database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `when_full = "block"` and the byte cap is reached: retry once uplinks made room.
    #[error("queue is full ({used} of {max} bytes) and when_full = \"block\"")]
    Full {
        /// Live bytes in the database.
        used: u64,
        /// The configured cap.
        max: u64,
    },
    /// The database is not one this version understands.
    #[error("{0}")]
    Incompatible(String),
    /// A blocking task failed to run.
    #[error("queue task failed: {0}")]
    Task(String),
}

impl QueueError {
    /// The disk is full: SQLite's `SQLITE_FULL`, which it reports when a write fails with
    /// `ENOSPC` (and when the database reaches its `max_page_count`).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            QueueError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Size of the reserve file kept beside the queue database (`<queue>.reserve`). On a full
/// disk the queue deletes it, so it can still checkpoint its write-ahead log, delete rows and
/// record acknowledgements (every one of them a write); without it, a disk filled by the WAL
/// would leave the queue unable to free anything. It is written again once the disk has room.
pub const RESERVE_BYTES: u64 = 1024 * 1024;

/// Writes `RESERVE_BYTES` of zeros to `path` and syncs it: real blocks, not a sparse file,
/// so the space is really held.
fn write_reserve(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut left = RESERVE_BYTES;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        f.write_all(&chunk[..n as usize])?;
        left -= n;
    }
    f.sync_all()
}

/// A reading with the sequence id the queue gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Stable, monotonic, never reused.
    pub seq: u64,
    /// The reading as it was appended (or re-stamped once the clock was synchronized).
    pub reading: Reading,
    /// Its timestamp was taken while the system clock was not synchronized and could not be
    /// corrected (yet): payloads flag it.
    pub unsynced: bool,
    /// Sent again by `fieldgate queue requeue` for this uplink only: the others already
    /// have it.
    pub only_for: Option<String>,
    /// This reading is an alert event (raised or cleared by the rules stage); forwarders
    /// send these ahead of everything else.
    pub alert: Option<Alert>,
}

/// What happened to an appended batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence ids given to the batch, `None` if it was refused (`drop_newest`) or empty.
    pub seqs: Option<(u64, u64)>,
    /// Readings deleted from the front to make room (`drop_oldest`).
    pub dropped_oldest: u64,
    /// Readings of this batch refused (`drop_newest`).
    pub dropped_newest: u64,
}

/// Counters and gauges of a queue, as `fieldgate queue stats` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The queue database's random id (payloads carry it as `queue_id`).
    pub queue_id: String,
    /// Readings waiting for at least one uplink.
    pub depth: u64,
    /// Sequence id of the oldest queued reading.
    pub first_seq: Option<u64>,
    /// Sequence id of the newest queued reading.
    pub last_seq: Option<u64>,
    /// Time since the oldest queued reading was appended.
    #[serde(with = "opt_secs")]
    pub oldest_age: Option<Duration>,
    /// Bytes of live pages (what `max_bytes` caps).
    pub used_bytes: u64,
    /// Bytes of the database file and its WAL on disk.
    pub file_bytes: u64,
    /// Readings ever appended.
    pub appended: u64,
    /// Readings removed because every uplink acknowledged them.
    pub delivered: u64,
    /// Readings dropped because they were older than `max_age`.
    pub dropped_age: u64,
    /// Readings dropped from the front because the queue was full (`drop_oldest`).
    pub dropped_oldest: u64,
    /// Readings refused because the queue was full (`drop_newest`).
    pub dropped_newest: u64,
    /// Readings an uplink rejected for good, now in the dead-letter table.
    pub dead_letters: u64,
    /// Per-uplink positions.
    pub uplinks: Vec<UplinkPosition>,
}

/// One uplink's position in the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UplinkPosition {
    /// The uplink's id.
    pub uplink: String,
    /// Highest sequence id it acknowledged.
    pub acked: u64,
    /// Queued readings it has not acknowledged yet.
    pub pending: u64,
    /// Readings it has delivered since the queue was created.
    pub delivered: u64,
    /// Time since the oldest reading it has not acknowledged was appended (its lag).
    #[serde(with = "opt_secs")]
    pub oldest_age: Option<Duration>,
}

mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    #[allow(clippy::ref_option)] // serde's `with` passes a reference to the field
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

const SCHEMA_VERSION: i64 = 1;

/// Most dead letters kept; older ones are deleted (and logged).
pub const DEAD_LETTER_CAP: i64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL,
    appended INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    dropped_age INTEGER NOT NULL DEFAULT 0,
    dropped_oldest INTEGER NOT NULL DEFAULT 0,
    dropped_newest INTEGER NOT NULL DEFAULT 0,
    dead_letters INTEGER NOT NULL DEFAULT 0,
    instance TEXT NOT NULL DEFAULT ''
);
INSERT OR IGNORE INTO state (id, next_seq) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (source, device, point, unit)
);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS unsynced (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    boot TEXT NOT NULL,
    offset_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY,
    enq_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    uplink TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    uplink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    value,
    reason TEXT,
    error TEXT NOT NULL,
    failed_ms INTEGER NOT NULL
);
-- Dead letters `fieldgate queue requeue` asked for; the gateway moves them back.
CREATE TABLE IF NOT EXISTS requeue_requests (
    dead_letter INTEGER PRIMARY KEY
);
-- Alert events: the reading with the same seq is the value that raised or cleared it.
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    level TEXT NOT NULL,
    threshold REAL NOT NULL,
    severity TEXT NOT NULL
);
-- Readings meant for one uplink only (requeued dead letters).
CREATE TABLE IF NOT EXISTS targets (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    uplink TEXT NOT NULL
);
";

// `kind` column: value type in the low 3 bits, quality above them.
const K_BOOL: i64 = 0;
const K_INT: i64 = 1;
const K_FLOAT: i64 = 2;
const K_TEXT: i64 = 3;
const K_BYTES: i64 = 4;
const Q_SHIFT: i64 = 3;
const Q_BAD: i64 = 1;
const Q_STALE: i64 = 2;

/// The durable queue. Not `Sync`: share it through [`QueueHandle`].
#[derive(Debug)]
pub struct Queue {
    conn: Connection,
    /// An exclusive lock on `<path>.lock`, held while open: two writers on one queue would
    /// hand out the same sequence ids.
    _lock: std::fs::File,
    drop_log: Throttle,
    instance: String,
    path: PathBuf,
    opts: QueueOptions,
    series: SeriesCache,
    next_seq: u64,
    /// Watermarks of the configured uplinks.
    watermarks: BTreeMap<String, u64>,
}

impl Queue {
    /// Opens (or creates) the queue at `path` for the given uplinks.
    ///
    /// Uplinks new to this database start at the oldest queued reading, so nothing already
    /// queued is withheld from them; watermarks of uplinks no longer configured are removed,
    /// so they cannot pin the queue forever.
    pub fn open(path: &Path, opts: QueueOptions, uplinks: &[&str]) -> Result<Queue, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                QueueError::Incompatible(format!(
                    "cannot create queue directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let lock = lock_file(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(QueueError::Incompatible(format!(
                "{} was written by a newer fieldgate (schema {version}, this one knows {SCHEMA_VERSION}); upgrade fieldgate or move the file away",
                path.display()
            )));
        }
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::Incompatible(format!(
                "{} cannot use WAL mode (got {mode}); is it on a network filesystem?",
                path.display()
            )));
        }
        let sync = match opts.durability {
            Durability::Crash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // Keep the WAL from growing past a few MB after a checkpoint (SD card space).
        conn.pragma_update(None, "journal_size_limit", 8 * 1024 * 1024)?;
        // The working set is the tail (appends, recent peeks) and the head (deletes): 1 MiB of
        // page cache holds it; SQLite's default of 2 MiB only costs resident memory.
        conn.pragma_update(None, "cache_size", -1024)?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;

        let next_seq: i64 =
            conn.query_row("SELECT next_seq FROM state WHERE id = 1", [], |r| r.get(0))?;
        // A random id of this queue database, stored once: sequence ids restart at 1 in a
        // new database (a new SD card, another data_dir), and (queue_id, seq) stays unique.
        let mut instance: String =
            conn.query_row("SELECT instance FROM state WHERE id = 1", [], |r| r.get(0))?;
        if instance.is_empty() {
            instance = format!("{:016x}", fastrand::u64(..));
            conn.execute("UPDATE state SET instance = ?1 WHERE id = 1", [&instance])?;
        }
        let max_seq: Option<i64> =
            conn.query_row("SELECT max(seq) FROM readings", [], |r| r.get(0))?;
        let next_seq = u64::try_from(next_seq.max(max_seq.unwrap_or(0) + 1)).unwrap_or(1);

        let mut q = Queue {
            conn,
            _lock: lock,
            drop_log: Throttle::new(Duration::from_secs(10)),
            instance,
            path: path.to_path_buf(),
            opts,
            series: SeriesCache::default(),
            next_seq,
            watermarks: BTreeMap::new(),
        };
        q.register_uplinks(uplinks)?;
        q.restore_reserve();
        Ok(q)
    }

    /// The reserve file beside the database (see [`RESERVE_BYTES`]).
    fn reserve_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".reserve");
        PathBuf::from(name)
    }

    /// Writes the reserve file if it is missing. True if it is there afterwards; a disk too
    /// full for it is logged and left for the next try.
    pub fn restore_reserve(&mut self) -> bool {
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return true;
        }
        match write_reserve(&path) {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(path = %path.display(), error = %e, "cannot write the queue's disk reserve; the disk is nearly full");
                false
            }
        }
    }

    fn register_uplinks(&mut self, uplinks: &[&str]) -> Result<(), QueueError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let first: Option<i64> = tx.query_row("SELECT min(seq) FROM readings", [], |r| r.get(0))?;
        let start = first.map_or(self.next_seq, |f| f as u64).saturating_sub(1);
        let existing: Vec<(String, i64)> = tx
            .prepare("SELECT uplink, acked FROM watermarks")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut removed = Vec::new();
        for (name, acked) in &existing {
            if !uplinks.contains(&name.as_str()) {
                tx.execute("DELETE FROM watermarks WHERE uplink = ?1", [name])?;
                removed.push((name.clone(), *acked));
            }
        }
        self.watermarks.clear();
        for name in uplinks {
            let acked = match existing.iter().find(|(n, _)| n == name) {
                Some((_, acked)) => *acked as u64,
                None => {
                    tx.execute(
                        "INSERT INTO watermarks (uplink, acked) VALUES (?1, ?2)",
                        params![name, start as i64],
                    )?;
                    start
                }
            };
            self.watermarks.insert((*name).to_string(), acked);
        }
        if let Some(low) = self.watermarks.values().min().copied() {
            let released = Self::delete_through(&tx, low)?;
            tx.execute(
                "UPDATE state SET delivered = delivered + ?1 WHERE id = 1",
                [released as i64],
            )?;
            for (name, acked) in &removed {
                tracing::warn!(
                    uplink = %name,
                    acked_through = acked,
                    released_readings = released,
                    "uplink removed from the config: its queue position is forgotten, and readings only it still needed are no longer kept"
                );
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The file this queue lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// This queue database's random id (16 hex digits), carried in every payload beside the
    /// sequence ids.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The sequence id the next appended reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a batch in one transaction, applying the byte cap first.
    pub fn append(&mut self, readings: &[Reading]) -> Result<AppendOutcome, QueueError> {
        self.append_at(readings, SystemTime::now())
    }

    /// [`Queue::append`] with the clock state of the commit: readings the `stamp` does not
    /// trust (the clock was not synchronized, or they predate the build) are recorded as
    /// unsynced, with their place on the boot's timeline, for [`Queue::restamp`].
    pub fn append_stamped(
        &mut self,
        readings: &[Reading],
        stamp: &ClockStamp,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_inner(readings, &[], stamp.wall, Some(stamp))
    }

    /// [`Queue::append_stamped`] with alert events: `alerts` holds, for some readings of the
    /// batch, their index and the alert they carry. Under `when_full = "drop_newest"` a full
    /// queue refuses the batch's plain readings but still takes its alerts: an alert is what
    /// someone must see when the site is in trouble.
    pub fn append_alerts(
        &mut self,
        readings: &[Reading],
        alerts: &[(usize, Alert)],
        stamp: Option<&ClockStamp>,
        now: SystemTime,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_inner(readings, alerts, now, stamp)
    }

    /// [`Queue::append`] with an explicit clock, for tests.
    pub fn append_at(
        &mut self,
        readings: &[Reading],
        now: SystemTime,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_inner(readings, &[], now, None)
    }

    fn append_inner(
        &mut self,
        readings: &[Reading],
        alerts: &[(usize, Alert)],
        now: SystemTime,
        stamp: Option<&ClockStamp>,
    ) -> Result<AppendOutcome, QueueError> {
        if readings.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let result = self.append_tx(readings, alerts, now, stamp);
        if result.is_err() {
            // The transaction rolled back; series ids it created are gone too.
            self.series.clear();
        }
        result
    }

    fn append_tx(
        &mut self,
        readings: &[Reading],
        alerts: &[(usize, Alert)],
        now: SystemTime,
        stamp: Option<&ClockStamp>,
    ) -> Result<AppendOutcome, QueueError> {
        let mut outcome = AppendOutcome::default();
        // Only the alerts, when a full queue refuses the rest (`drop_newest`).
        let only_alerts: Vec<Reading>;
        let only_alert_events: Vec<(usize, Alert)>;
        let (mut readings, mut alerts) = (readings, alerts);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(max) = self.opts.max_bytes {
            let used = used_bytes(&tx)?;
            if used >= max {
                match self.opts.when_full {
                    WhenFull::Block => return Err(QueueError::Full { used, max }),
                    WhenFull::DropNewest => {
                        let n = (readings.len() - alerts.len()) as u64;
                        tx.execute(
                            "UPDATE state SET dropped_newest = dropped_newest + ?1 WHERE id = 1",
                            [n as i64],
                        )?;
                        outcome.dropped_newest = n;
                        if alerts.is_empty() {
                            tx.commit()?;
                            return Ok(outcome);
                        }
                        only_alerts = alerts.iter().map(|(i, _)| readings[*i].clone()).collect();
                        only_alert_events = alerts
                            .iter()
                            .enumerate()
                            .map(|(i, (_, a))| (i, a.clone()))
                            .collect();
                        readings = &only_alerts;
                        alerts = &only_alert_events;
                    }
                    WhenFull::DropOldest => {
                        outcome.dropped_oldest =
                            Self::drop_oldest(&tx, used, max, readings.len() as u64)?;
                        if let Some(n) = self
                            .drop_log
                            .hit(outcome.dropped_oldest, std::time::Instant::now())
                        {
                            tracing::error!(dropped = n, max_bytes = max, "queue full: dropped the oldest readings (when_full = \"drop_oldest\")");
                        }
                    }
                }
            }
        }
        let first = self.next_seq;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (seq, series, ts, kind, value, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (seq, r) in (first..).zip(readings) {
                let series = self.series.id_for(&tx, r)?;
                let (kind, value) = encode_value(&r.value);
                let (q, reason) = match &r.quality {
                    Quality::Good => (0, None),
                    Quality::Bad(why) => (Q_BAD, Some(why.as_str())),
                    Quality::Stale(why) => (Q_STALE, Some(why.as_str())),
                };
                insert.execute(params![
                    seq as i64,
                    series,
                    micros(r.ts),
                    kind | (q << Q_SHIFT),
                    value,
                    reason
                ])?;
                if stamp.is_some_and(|s| s.synchronized && !s.trusts(r.ts)) {
                    // A reading stamped before the build date by a synchronized clock (a
                    // device's own clock): flagged alone, with no timeline to correct it.
                    tx.prepare_cached(
                        "INSERT INTO unsynced (first_seq, last_seq, boot, offset_us) VALUES (?1, ?1, '', 0)",
                    )?
                    .execute([seq as i64])?;
                }
            }
        }
        let last = first + readings.len() as u64 - 1;
        if !alerts.is_empty() {
            let mut insert = tx.prepare_cached(
                "INSERT INTO alerts (seq, rule, state, level, threshold, severity) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (i, a) in alerts {
                insert.execute(params![
                    (first + *i as u64) as i64,
                    a.rule.as_str(),
                    a.state.as_str(),
                    a.level.as_str(),
                    a.threshold,
                    a.severity.as_str()
                ])?;
            }
        }
        if let Some(stamp) = stamp.filter(|s| !s.synchronized) {
            // The whole batch is on this boot's timeline: a reading's time since boot is
            // `ts + offset`, one offset for the batch (both clocks were read together).
            tx.prepare_cached("INSERT INTO unsynced (first_seq, last_seq, boot, offset_us) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![first as i64, last as i64, stamp.boot, stamp.offset_us()])?;
        }
        tx.prepare_cached("INSERT INTO segments (first_seq, enq_ms) VALUES (?1, ?2)")?
            .execute(params![first as i64, millis(now)])?;
        tx.prepare_cached("UPDATE state SET next_seq = ?1, appended = appended + ?2 WHERE id = 1")?
            .execute(params![(last + 1) as i64, readings.len() as i64])?;
        tx.commit()?;
        self.next_seq = last + 1;
        outcome.seqs = Some((first, last));
        Ok(outcome)
    }

    /// Makes room on a full disk for `when_full = "drop_oldest"`: deletes the oldest readings
    /// worth at least `at_least` bytes (whole pages must empty before SQLite can reuse them),
    /// counted as `dropped_oldest` whatever the uplinks' positions. Returns how many; 0 when
    /// the queue is empty.
    ///
    /// Freed pages go to the database's free list and take the next appends without the file
    /// growing. The delete itself is a write: see [`Queue::relieve_disk`].
    pub fn drop_oldest_bytes(&mut self, at_least: u64) -> Result<u64, QueueError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let used = used_bytes(&tx)?;
        let dropped = Self::drop_front(&tx, used, |per_row| at_least.div_ceil(per_row))?;
        tx.commit()?;
        Ok(dropped)
    }

    /// Gives a full disk room for the queue's own writes: deletes the reserve file (true if
    /// there was one), then copies the write-ahead log into the database and truncates it.
    /// The checkpoint needs the database file to grow by the pages the WAL changed, which the
    /// reserve's space allows; the truncated WAL frees the rest. Deletes and acknowledgements
    /// (writes too) then go through, and free pages for new readings.
    pub fn relieve_disk(&mut self) -> Result<bool, QueueError> {
        let released = std::fs::remove_file(self.reserve_path()).is_ok();
        if released {
            tracing::warn!(
                bytes = RESERVE_BYTES,
                "disk full: released the queue's disk reserve"
            );
        }
        // From now on, a smaller WAL (256 KiB instead of SQLite's 4 MiB between checkpoints):
        // on this disk, the WAL's growth is what fills it.
        self.conn.pragma_update(None, "wal_autocheckpoint", 64)?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(released)
    }

    /// Caps the database at `pages` pages (SQLite's `max_page_count`, for this connection
    /// only): past it, writes fail with `SQLITE_FULL` as on a full disk. For tests of the
    /// disk-full handling. Returns the cap SQLite set (never below the current size).
    #[doc(hidden)]
    pub fn set_page_limit(&mut self, pages: u64) -> Result<u64, QueueError> {
        let set: i64 =
            self.conn
                .pragma_update_and_check(None, "max_page_count", pages as i64, |r| r.get(0))?;
        Ok(set as u64)
    }

    /// Deletes enough of the oldest rows to bring live bytes under `max` with room for
    /// `incoming` more rows. Returns how many were dropped.
    fn drop_oldest(tx: &Connection, used: u64, max: u64, incoming: u64) -> Result<u64, QueueError> {
        // An empty queue has nothing to drop: the cap is smaller than the fixed overhead.
        Self::drop_front(tx, used, |per_row| (used - max) / per_row + 1 + incoming)
    }

    /// Deletes the `rows(per_row)` oldest readings (at least one, at most all), where
    /// `per_row` is the average live bytes of a row, and counts them as `dropped_oldest`.
    /// Returns how many; 0 when the queue is empty.
    fn drop_front(
        tx: &Connection,
        used: u64,
        rows: impl FnOnce(u64) -> u64,
    ) -> Result<u64, QueueError> {
        let (Some(first), Some(last)) = seq_range(tx)? else {
            return Ok(0);
        };
        let depth = last - first + 1;
        let n = rows((used / depth).max(1)).clamp(1, depth);
        let dropped = Self::delete_through(tx, first + n - 1)?;
        tx.execute(
            "UPDATE state SET dropped_oldest = dropped_oldest + ?1 WHERE id = 1",
            [dropped as i64],
        )?;
        Ok(dropped)
    }

    /// Deletes readings with `seq <= through` and the segments they emptied.
    fn delete_through(tx: &Connection, through: u64) -> Result<u64, QueueError> {
        let n = tx
            .prepare_cached("DELETE FROM readings WHERE seq <= ?1")?
            .execute([through as i64])?;
        tx.prepare_cached(
            "DELETE FROM segments WHERE first_seq < (SELECT max(first_seq) FROM segments WHERE first_seq <= ?1)",
        )?
        .execute([(through + 1) as i64])?;
        tx.prepare_cached("DELETE FROM unsynced WHERE last_seq <= ?1")?
            .execute([through as i64])?;
        tx.prepare_cached("DELETE FROM targets WHERE last_seq <= ?1")?
            .execute([through as i64])?;
        tx.prepare_cached("DELETE FROM alerts WHERE seq <= ?1")?
            .execute([through as i64])?;
        Ok(n as u64)
    }

    /// Re-stamps the unsynced readings of `now`'s boot now that the clock is synchronized:
    /// each gets `now.wall - (now.since_boot - its since_boot)`, exact within one boot.
    /// Returns how many. Readings of other boots stay unsynced.
    pub fn restamp(&mut self, now: &ClockStamp) -> Result<u64, QueueError> {
        if !now.synchronized {
            return Ok(0);
        }
        let any: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM unsynced WHERE boot = ?1)",
            [&now.boot],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(0);
        }
        let now_offset = now.offset_us();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // On the timeline a reading lies at ts + offset; read back with the synchronized
        // clock that is ts + offset - now_offset.
        let n = tx.execute(
            "UPDATE readings SET ts = ts + (SELECT u.offset_us FROM unsynced u
                                            WHERE u.boot = ?2 AND readings.seq BETWEEN u.first_seq AND u.last_seq) - ?1
             WHERE EXISTS (SELECT 1 FROM unsynced u WHERE u.boot = ?2 AND readings.seq BETWEEN u.first_seq AND u.last_seq)",
            params![now_offset, now.boot],
        )?;
        // The batches' enqueue times came from the same wrong clock: correct them too, or
        // `max_age` would expire them at once when the clock jumps forward.
        tx.execute(
            "UPDATE segments SET enq_ms = enq_ms + ((SELECT u.offset_us FROM unsynced u WHERE u.boot = ?2 AND u.first_seq = segments.first_seq) - ?1) / 1000
             WHERE first_seq IN (SELECT first_seq FROM unsynced WHERE boot = ?2)",
            params![now_offset, now.boot],
        )?;
        tx.execute("DELETE FROM unsynced WHERE boot = ?1", [&now.boot])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Drops readings appended longer than `max_age` ago. Returns how many.
    pub fn expire(&mut self, now: SystemTime) -> Result<u64, QueueError> {
        let Some(max_age) = self.opts.max_age else {
            return Ok(0);
        };
        let cutoff = millis(now.checked_sub(max_age).unwrap_or(UNIX_EPOCH));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The first segment young enough to keep; everything before it goes.
        let keep_from: Option<i64> = tx
            .query_row(
                // A batch enqueued by a clock that said "before this binary was built" has no
                // usable age: it is kept (max_bytes still bounds the queue).
                "SELECT min(first_seq) FROM segments WHERE enq_ms >= ?1 OR enq_ms < ?2",
                [cutoff, millis(crate::clock::build_floor())],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let through = match keep_from {
            Some(seq) => (seq as u64).saturating_sub(1),
            None => self.next_seq - 1,
        };
        let dropped = Self::delete_through(&tx, through)?;
        if dropped > 0 {
            tx.execute(
                "UPDATE state SET dropped_age = dropped_age + ?1 WHERE id = 1",
                [dropped as i64],
            )?;
            if let Some(n) = self.drop_log.hit(dropped, std::time::Instant::now()) {
                tracing::error!(dropped = n, max_age = %humantime::format_duration(max_age), "dropped readings older than queue.max_age");
            }
        }
        tx.commit()?;
        Ok(dropped)
    }

    /// Up to `limit` readings with a sequence id above `after`, oldest first.
    pub fn peek(&mut self, after: u64, limit: usize) -> Result<Vec<Queued>, QueueError> {
        peek_rows(&self.conn, &mut self.series, after, limit, true)
    }

    /// Up to `limit` alert events with a sequence id above `after`, oldest first (forwarders
    /// send them ahead of the readings before them).
    pub fn peek_alerts(&mut self, after: u64, limit: usize) -> Result<Vec<Queued>, QueueError> {
        let seqs: Vec<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM alerts WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![after as i64, limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let seq = seq as u64;
            out.extend(
                peek_rows(&self.conn, &mut self.series, seq - 1, 1, true)?
                    .into_iter()
                    .filter(|q| q.seq == seq),
            );
        }
        Ok(out)
    }

    /// The acknowledged watermark of `uplink`.
    pub fn watermark(&self, uplink: &str) -> Option<u64> {
        self.watermarks.get(uplink).copied()
    }

    /// Records that `uplink` has durably delivered everything through `through`
    /// (`delivered` of those rows were meant for it). Rows acknowledged by every uplink are
    /// deleted. Returns the number of rows deleted. A watermark never moves backwards.
    pub fn ack(&mut self, uplink: &str, through: u64, delivered: u64) -> Result<u64, QueueError> {
        let Some(current) = self.watermarks.get(uplink).copied() else {
            return Err(QueueError::Incompatible(format!(
                "uplink `{uplink}` is not registered with the queue"
            )));
        };
        if through <= current {
            return Ok(0);
        }
        let through = through.min(self.next_seq - 1);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "UPDATE watermarks SET acked = ?1, delivered = delivered + ?2 WHERE uplink = ?3",
        )?
        .execute(params![through as i64, delivered as i64, uplink])?;
        let old_low = self.watermarks.values().min().copied().unwrap_or(0);
        let mut new_marks = self.watermarks.clone();
        new_marks.insert(uplink.to_string(), through);
        let new_low = new_marks.values().min().copied().unwrap_or(0);
        let mut removed = 0;
        if new_low > old_low {
            removed = Self::delete_through(&tx, new_low)?;
            tx.prepare_cached("UPDATE state SET delivered = delivered + ?1 WHERE id = 1")?
                .execute([removed as i64])?;
        }
        tx.commit()?;
        self.watermarks = new_marks;
        Ok(removed)
    }

    /// Copies the given rows to the dead-letter table for `uplink`, with the reason it
    /// rejected them. The caller then acks them for that uplink.
    pub fn dead_letter(
        &mut self,
        uplink: &str,
        seqs: &[u64],
        error: &str,
    ) -> Result<(), QueueError> {
        let each: Vec<(u64, &str)> = seqs.iter().map(|&s| (s, error)).collect();
        self.dead_letter_each(uplink, &each)
    }

    /// [`Queue::dead_letter`] with a reason per reading, all in one transaction (a failure
    /// halfway stores none of them). The acknowledgement that follows is a transaction of its
    /// own: if that one fails, the batch is retried and its rejects are stored again.
    pub fn dead_letter_each<S: AsRef<str>>(
        &mut self,
        uplink: &str,
        items: &[(u64, S)],
    ) -> Result<(), QueueError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = millis(SystemTime::now());
        let mut n = 0;
        {
            let mut copy = tx.prepare_cached(
                "INSERT INTO dead_letters (uplink, seq, series, ts, kind, value, reason, error, failed_ms)
                 SELECT ?1, seq, series, ts, kind, value, reason, ?2, ?3 FROM readings WHERE seq = ?4",
            )?;
            for (seq, error) in items {
                n += copy.execute(params![uplink, error.as_ref(), now, *seq as i64])?;
            }
        }
        tx.execute(
            "UPDATE state SET dead_letters = dead_letters + ?1 WHERE id = 1",
            [n as i64],
        )?;
        // Dead letters live in the same file as the queue: keep only the newest ones, so a
        // misconfigured uplink cannot fill `max_bytes` with them.
        let pruned = tx.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?1",
            [DEAD_LETTER_CAP],
        )?;
        tx.commit()?;
        if pruned > 0 {
            tracing::error!(
                pruned,
                kept = DEAD_LETTER_CAP,
                "dead-letter table full: the oldest dead letters were deleted"
            );
        }
        Ok(())
    }

    /// Moves the dead letters `fieldgate queue requeue` asked for back into the queue, as new
    /// readings (new sequence ids, their original timestamps) meant only for the uplink that
    /// rejected them. Dead letters of uplinks no longer configured stay where they are.
    /// Returns how many were requeued; cheap when nothing was asked.
    pub fn requeue_requested(&mut self) -> Result<u64, QueueError> {
        let asked: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM requeue_requests)")?
            .query_row([], |r| r.get(0))?;
        if !asked {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String)> = tx
            .prepare(
                "SELECT d.id, d.uplink FROM dead_letters d JOIN requeue_requests r ON r.dead_letter = d.id
                 ORDER BY d.uplink, d.id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut seq = self.next_seq;
        let mut moved = 0u64;
        let mut orphaned = 0u64;
        let mut group: Option<(String, u64)> = None;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (seq, series, ts, kind, value, reason)
                 SELECT ?1, series, ts, kind, value, reason FROM dead_letters WHERE id = ?2",
            )?;
            let mut target = tx.prepare_cached(
                "INSERT INTO targets (first_seq, last_seq, uplink) VALUES (?1, ?2, ?3)",
            )?;
            let mut remove = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
            for (id, uplink) in rows {
                if !self.watermarks.contains_key(&uplink) {
                    orphaned += 1;
                    continue;
                }
                insert.execute(params![seq as i64, id])?;
                remove.execute([id])?;
                match &group {
                    Some((u, _)) if *u == uplink => {}
                    _ => {
                        if let Some((u, first)) = group.take() {
                            target.execute(params![first as i64, (seq - 1) as i64, u])?;
                        }
                        group = Some((uplink, seq));
                    }
                }
                seq += 1;
                moved += 1;
            }
            if let Some((u, first)) = group {
                target.execute(params![first as i64, (seq - 1) as i64, u])?;
            }
        }
        tx.execute("DELETE FROM requeue_requests", [])?;
        if moved > 0 {
            tx.prepare_cached("INSERT INTO segments (first_seq, enq_ms) VALUES (?1, ?2)")?
                .execute(params![self.next_seq as i64, millis(SystemTime::now())])?;
            tx.prepare_cached("UPDATE state SET next_seq = ?1 WHERE id = 1")?
                .execute([seq as i64])?;
        }
        tx.commit()?;
        self.next_seq = seq;
        if orphaned > 0 {
            tracing::warn!(
                dead_letters = orphaned,
                "cannot requeue dead letters of uplinks no longer configured; they stay in the dead-letter table"
            );
        }
        if moved > 0 {
            tracing::info!(
                readings = moved,
                "dead letters requeued for the uplinks that rejected them"
            );
        }
        Ok(moved)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        stats(&self.conn, &self.path, SystemTime::now())
    }

    /// Checkpoints the WAL into the database and closes it.
    pub fn close(self) -> Result<(), QueueError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.close().map_err(|(_, e)| QueueError::Sqlite(e))
    }
}

/// A read-only view of a queue, safe to open beside a running gateway (WAL readers never
/// block the writer).
#[derive(Debug)]
pub struct Inspector {
    conn: Connection,
    path: PathBuf,
    series: SeriesCache,
    /// The database has the tables of requeue (`targets`, `requeue_requests`): one written by
    /// an older gateway, not yet opened by this version's, lacks them.
    requeue_tables: bool,
}

impl Inspector {
    /// Opens the queue at `path` read-only. Fails if it does not exist.
    pub fn open(path: &Path) -> Result<Inspector, QueueError> {
        if !path.exists() {
            return Err(QueueError::Incompatible(format!(
                "no queue at {} (has the gateway run with this config?)",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let requeue_tables = conn.query_row(
            "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN ('targets', 'requeue_requests')",
            [],
            |r| r.get(0),
        )?;
        Ok(Inspector {
            conn,
            path: path.to_path_buf(),
            series: SeriesCache::default(),
            requeue_tables,
        })
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        stats(&self.conn, &self.path, SystemTime::now())
    }

    /// Up to `limit` readings after `after`.
    pub fn peek(&mut self, after: u64, limit: usize) -> Result<Vec<Queued>, QueueError> {
        peek_rows(
            &self.conn,
            &mut self.series,
            after,
            limit,
            self.requeue_tables,
        )
    }

    /// Up to `limit` dead letters, oldest first, of `uplink` (or every uplink).
    pub fn dead_letters(
        &mut self,
        uplink: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let asked = if self.requeue_tables {
            "EXISTS (SELECT 1 FROM requeue_requests r WHERE r.dead_letter = d.id)"
        } else {
            "0"
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT d.id, d.uplink, d.seq, d.series, d.ts, d.kind, d.value, d.reason, d.error, d.failed_ms, {asked}
             FROM dead_letters d WHERE ?1 IS NULL OR d.uplink = ?1 ORDER BY d.id LIMIT ?2",
        ))?;
        let mut rows = stmt.query(params![uplink, limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let key = self.series.key_for(&self.conn, row.get(3)?)?;
            out.push(DeadLetter {
                id: row.get::<_, i64>(0)? as u64,
                uplink: row.get(1)?,
                queued: queued_from(row, row.get::<_, i64>(2)? as u64, key, 4)?,
                error: row.get(8)?,
                failed: from_micros(row.get::<_, i64>(9)? * 1000),
                requeue_asked: row.get(10)?,
            });
        }
        Ok(out)
    }
}

/// A reading an uplink rejected for good, kept in the dead-letter table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id in the dead-letter table (what `fieldgate queue requeue --id` takes).
    pub id: u64,
    /// The uplink that rejected it.
    pub uplink: String,
    /// The reading, with the sequence id it had when it was rejected.
    pub queued: Queued,
    /// Why it was rejected (the far side's answer).
    pub error: String,
    /// When.
    pub failed: SystemTime,
    /// `fieldgate queue requeue` asked for it; the gateway has not moved it back yet.
    pub requeue_asked: bool,
}

/// Which dead letters to requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueSelection {
    /// Every dead letter (of one uplink, if given).
    All(Option<String>),
    /// These ids.
    Ids(Vec<u64>),
}

/// Asks for dead letters to be sent again: they are marked in the queue database, and the
/// gateway moves them back into the queue (within a second while it runs, or when it next
/// starts), for the uplink that rejected them only. Safe beside a running gateway (a short
/// write transaction; SQLite serializes it with the gateway's). Returns how many were marked.
pub fn request_requeue(path: &Path, which: &RequeueSelection) -> Result<u64, QueueError> {
    if !path.exists() {
        return Err(QueueError::Incompatible(format!(
            "no queue at {} (has the gateway run with this config?)",
            path.display()
        )));
    }
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // A database from before requeue existed: its gateway adds this table at start anyway.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS requeue_requests (dead_letter INTEGER PRIMARY KEY)",
        [],
    )?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = match which {
        RequeueSelection::All(uplink) => tx.execute(
            "INSERT OR IGNORE INTO requeue_requests (dead_letter)
             SELECT id FROM dead_letters WHERE ?1 IS NULL OR uplink = ?1",
            [uplink],
        )?,
        RequeueSelection::Ids(ids) => {
            let mut n = 0;
            let mut mark = tx.prepare(
                "INSERT OR IGNORE INTO requeue_requests (dead_letter) SELECT id FROM dead_letters WHERE id = ?1",
            )?;
            for id in ids {
                n += mark.execute([*id as i64])?;
            }
            n
        }
    };
    tx.commit()?;
    Ok(n as u64)
}

fn peek_rows(
    conn: &Connection,
    series: &mut SeriesCache,
    after: u64,
    limit: usize,
    targets: bool,
) -> Result<Vec<Queued>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, series, ts, kind, value, reason FROM readings WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after as i64, limit as i64])?;
    let mut out = Vec::with_capacity(limit.min(65_536));
    let mut last_series: Option<(i64, series::SeriesKey)> = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let sid: i64 = row.get(1)?;
        let key = match &last_series {
            Some((id, key)) if *id == sid => key.clone(),
            _ => {
                let key = series.key_for(conn, sid)?;
                last_series = Some((sid, key.clone()));
                key
            }
        };
        out.push(queued_from(row, seq as u64, key, 2)?);
    }
    if let (Some(first), Some(last)) = (out.first().map(|q| q.seq), out.last().map(|q| q.seq)) {
        // Readings meant for one uplink only.
        if targets {
            mark_targets(conn, &mut out, first, last)?;
        }
        mark_alerts(conn, &mut out, first, last)?;
        // Readings whose clock could not be trusted: flagged, and never before the build date.
        let mut flagged = conn.prepare_cached(
            "SELECT first_seq, last_seq FROM unsynced WHERE last_seq >= ?1 AND first_seq <= ?2",
        )?;
        let ranges: Vec<(i64, i64)> = flagged
            .query_map(params![first as i64, last as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        if !ranges.is_empty() {
            let floor = crate::clock::build_floor();
            for q in &mut out {
                let seq = q.seq as i64;
                if ranges.iter().any(|(a, b)| (*a..=*b).contains(&seq)) {
                    q.unsynced = true;
                    q.reading.ts = q.reading.ts.max(floor);
                }
            }
        }
    }
    Ok(out)
}

/// Attaches their alert events to the readings of `out` (sequence ids `first..=last`).
fn mark_alerts(
    conn: &Connection,
    out: &mut [Queued],
    first: u64,
    last: u64,
) -> Result<(), QueueError> {
    // Older databases (opened read-only by `fieldgate queue`) may not have the table.
    let mut stmt = match conn.prepare_cached(
        "SELECT seq, rule, state, level, threshold, severity FROM alerts WHERE seq BETWEEN ?1 AND ?2",
    ) {
        Ok(s) => s,
        Err(_) => return Ok(()),
    };
    let rows = stmt
        .query_map(params![first as i64, last as i64], |r| {
            let seq: i64 = r.get(0)?;
            let rule: String = r.get(1)?;
            let state: String = r.get(2)?;
            let level: String = r.get(3)?;
            let threshold: f64 = r.get(4)?;
            let severity: String = r.get(5)?;
            Ok((
                seq as u64,
                Alert {
                    rule: rule.into(),
                    state: if state == "cleared" {
                        AlertState::Cleared
                    } else {
                        AlertState::Raised
                    },
                    level: if level == "low" {
                        AlertLevel::Low
                    } else {
                        AlertLevel::High
                    },
                    threshold,
                    severity: match severity.as_str() {
                        "info" => Severity::Info,
                        "critical" => Severity::Critical,
                        _ => Severity::Warning,
                    },
                },
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (seq, alert) in rows {
        if let Ok(i) = out.binary_search_by_key(&seq, |q| q.seq) {
            out[i].alert = Some(alert);
        }
    }
    Ok(())
}

/// Marks the readings of `out` (sequence ids `first..=last`) meant for one uplink only.
fn mark_targets(
    conn: &Connection,
    out: &mut [Queued],
    first: u64,
    last: u64,
) -> Result<(), QueueError> {
    let mut targeted = conn.prepare_cached(
        "SELECT first_seq, last_seq, uplink FROM targets WHERE last_seq >= ?1 AND first_seq <= ?2",
    )?;
    let ranges: Vec<(u64, u64, String)> = targeted
        .query_map(params![first as i64, last as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (a, b, uplink) in &ranges {
        for q in out.iter_mut().filter(|q| (*a..=*b).contains(&q.seq)) {
            q.only_for = Some(uplink.clone());
        }
    }
    Ok(())
}

fn seq_range(conn: &Connection) -> rusqlite::Result<(Option<u64>, Option<u64>)> {
    // Two subqueries: SQLite answers a lone min() or max() of the rowid from the b-tree's
    // edge, but `SELECT min(seq), max(seq)` together would scan the whole table.
    conn.query_row(
        "SELECT (SELECT min(seq) FROM readings), (SELECT max(seq) FROM readings)",
        [],
        |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
            ))
        },
    )
}

fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

fn stats(conn: &Connection, path: &Path, now: SystemTime) -> Result<QueueStats, QueueError> {
    let (first_seq, last_seq) = seq_range(conn)?;
    let depth = match (first_seq, last_seq) {
        (Some(f), Some(l)) => l - f + 1,
        _ => 0,
    };
    // When the reading `seq` was appended, as an age.
    let age_of = |seq: u64| -> Result<Option<Duration>, QueueError> {
        Ok(conn
            .query_row(
                "SELECT enq_ms FROM segments WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1",
                [seq as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|enq| Duration::from_millis((millis(now) - enq).max(0) as u64)))
    };
    let oldest_age = match first_seq {
        Some(first) => age_of(first)?,
        None => None,
    };
    let mut s = conn.query_row(
        "SELECT appended, delivered, dropped_age, dropped_oldest, dropped_newest, dead_letters, instance FROM state WHERE id = 1",
        [],
        |r| {
            Ok(QueueStats {
                appended: r.get::<_, i64>(0)? as u64,
                delivered: r.get::<_, i64>(1)? as u64,
                dropped_age: r.get::<_, i64>(2)? as u64,
                dropped_oldest: r.get::<_, i64>(3)? as u64,
                dropped_newest: r.get::<_, i64>(4)? as u64,
                dead_letters: r.get::<_, i64>(5)? as u64,
                queue_id: r.get(6)?,
                ..QueueStats::default()
            })
        },
    )?;
    s.depth = depth;
    s.first_seq = first_seq;
    s.last_seq = last_seq;
    s.oldest_age = oldest_age;
    s.used_bytes = used_bytes(conn)?;
    s.file_bytes = file_bytes(path);
    let last = last_seq.unwrap_or(0);
    s.uplinks = conn
        .prepare("SELECT uplink, acked, delivered FROM watermarks ORDER BY uplink")?
        .query_map([], |r| {
            let acked = r.get::<_, i64>(1)? as u64;
            Ok(UplinkPosition {
                uplink: r.get(0)?,
                acked,
                pending: last.saturating_sub(acked).min(depth),
                delivered: r.get::<_, i64>(2)? as u64,
                oldest_age: None,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for u in &mut s.uplinks {
        if let (Some(first), true) = (first_seq, u.pending > 0) {
            u.oldest_age = age_of((u.acked + 1).max(first))?;
        }
    }
    Ok(s)
}

/// Takes an exclusive lock on `<path>.lock`, or says who holds it.
fn lock_file(path: &Path) -> Result<std::fs::File, QueueError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            QueueError::Incompatible(format!(
                "cannot open lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(QueueError::Incompatible(format!(
            "queue {} is in use by another fieldgate process (it holds {}); two gateways must not share a queue",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(QueueError::Incompatible(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Bytes of the database, its WAL and shared-memory index.
fn file_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum()
}

fn encode_value(v: &Value) -> (i64, ToSqlOutput<'_>) {
    match v {
        Value::Bool(b) => (
            K_BOOL,
            ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        ),
        Value::I64(i) => (K_INT, ToSqlOutput::Borrowed(ValueRef::Integer(*i))),
        // SQLite stores NaN as NULL; decode_value turns a NULL float back into NaN.
        Value::F64(f) => (K_FLOAT, ToSqlOutput::Borrowed(ValueRef::Real(*f))),
        Value::Text(s) => (K_TEXT, ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))),
        Value::Bytes(b) => (K_BYTES, ToSqlOutput::Borrowed(ValueRef::Blob(b))),
    }
}

/// A reading from a row holding `ts, kind, value, reason` from column `at` on.
fn queued_from(
    row: &rusqlite::Row<'_>,
    seq: u64,
    key: series::SeriesKey,
    at: usize,
) -> rusqlite::Result<Queued> {
    let kind: i64 = row.get(at + 1)?;
    Ok(Queued {
        seq,
        unsynced: false,
        only_for: None,
        alert: None,
        reading: Reading {
            source: key.source,
            device: key.device,
            point: key.point,
            ts: from_micros(row.get(at)?),
            value: decode_value(kind & 0b111, row.get_ref(at + 2)?),
            unit: key.unit,
            quality: decode_quality(kind, row.get(at + 3)?),
        },
    })
}

fn decode_quality(kind: i64, reason: Option<String>) -> Quality {
    match kind >> Q_SHIFT {
        Q_BAD => Quality::Bad(reason.unwrap_or_default()),
        Q_STALE => Quality::Stale(reason.unwrap_or_default()),
        _ => Quality::Good,
    }
}

fn decode_value(kind: i64, v: ValueRef<'_>) -> Value {
    match (kind, v) {
        (K_BOOL, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (K_INT, ValueRef::Integer(i)) => Value::I64(i),
        (K_FLOAT, ValueRef::Real(f)) => Value::F64(f),
        #[allow(clippy::cast_precision_loss)]
        (K_FLOAT, ValueRef::Integer(i)) => Value::F64(i as f64),
        (K_FLOAT, ValueRef::Null) => Value::F64(f64::NAN),
        (K_TEXT, ValueRef::Text(t)) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        (K_BYTES, ValueRef::Blob(b)) => Value::Bytes(b.to_vec()),
        (K_BYTES, ValueRef::Null) => Value::Bytes(Vec::new()),
        (_, other) => Value::Text(format!("<undecodable {:?}>", other.data_type())),
    }
}

/// Microseconds since the Unix epoch (negative before it).
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

fn millis(t: SystemTime) -> i64 {
    micros(t) / 1000
}

#[cfg(test)]
mod tests;
