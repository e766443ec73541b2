//! The queue writer's commit: retries, a full queue, and a full disk.
//!
//! A full disk (`SQLITE_FULL`: `ENOSPC` on the queue's filesystem) is handled by the queue's
//! `when_full` policy, like a full byte cap:
//!
//! * `drop_oldest`: the oldest readings are deleted to make room (counted as
//!   `dropped_oldest`) and the batch is committed into the freed pages;
//! * `drop_newest`: the batch's readings are refused (counted, logged, on the status page);
//!   its alerts are kept in memory and tried again with the next batch;
//! * `block`: the batch waits in memory, and the bounded channel holds the adapters back.
//!
//! Each time, the queue first releases its disk reserve and truncates its WAL, so that its
//! own deletes and acknowledgements can be written (see
//! [`RESERVE_BYTES`](crate::queue::RESERVE_BYTES)). The first failure raises a `queue_disk_full` alert (critical) that travels ahead of the
//! readings once anything can be committed; it clears once commits have worked for
//! [`PipelineOptions::disk_clear_after`](super::PipelineOptions) without the disk filling.
//! SQLite rolls every failed transaction back, so a full disk never corrupts the queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{Reading, Shutdown, Value};
use tokio::time::Instant;

use super::WriterReport;
use crate::backoff::Backoff;
use crate::clock::{Clock, ClockStamp};
use crate::queue::WhenFull;
use crate::queue::{Alert, AlertLevel, AlertState, Batch, QueueError, QueueHandle, Severity};
use crate::status::Board;
use crate::throttle::Throttle;
use crate::uplink::sleep_or_shutdown;
use crate::watchdog::Heartbeat;

/// The adapter name of the gateway's own alerts.
pub const SYSTEM_SOURCE: &str = "fieldgate";
/// The rule name of the disk-full alert.
pub const DISK_FULL_RULE: &str = "queue_disk_full";
/// How much the writer deletes at a time under `drop_oldest` when the disk is full: enough
/// for whole pages to empty (only those take new rows) and for a while of readings to fit.
const DISK_DROP_BYTES: u64 = 256 * 1024;

/// What the writer keeps between commits.
pub(super) struct Committer {
    pub queue: QueueHandle,
    pub abort: Shutdown,
    pub heartbeat: Arc<Heartbeat>,
    pub clock: Arc<dyn Clock>,
    pub board: Arc<Board>,
    pub flush_interval: Duration,
    pub report: WriterReport,
    backoff: Backoff,
    /// A `when_full = "block"` cap is reached and that was logged.
    full_logged: bool,
    refused_log: Throttle,
    disk: DiskFull,
}

/// A full disk as the writer sees it.
struct DiskFull {
    /// When a commit last failed for it; `None` while the disk is fine.
    last: Option<Instant>,
    /// When it filled up (wall clock, for the status page).
    since: SystemTime,
    clear_after: Duration,
    log: Throttle,
}

impl Committer {
    #[allow(clippy::too_many_arguments)] // the writer's parts, named once here
    pub fn new(
        queue: QueueHandle,
        abort: Shutdown,
        heartbeat: Arc<Heartbeat>,
        clock: Arc<dyn Clock>,
        board: Arc<Board>,
        flush_interval: Duration,
        disk_clear_after: Duration,
    ) -> Self {
        Committer {
            queue,
            abort,
            heartbeat,
            clock,
            board,
            flush_interval,
            report: WriterReport::default(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            full_logged: false,
            refused_log: Throttle::new(Duration::from_secs(10)),
            disk: DiskFull {
                last: None,
                since: SystemTime::UNIX_EPOCH,
                clear_after: disk_clear_after,
                log: Throttle::new(Duration::from_secs(10)),
            },
        }
    }

    /// Commits `batch`, retrying until it works: the readings stay in memory meanwhile, and
    /// the bounded channel holds the adapters back. Returns with `batch` empty, when `abort`
    /// fired, or (disk full, `drop_newest`) with only the batch's alerts left in it, to be
    /// tried again with the next batch.
    pub async fn commit(&mut self, batch: &mut Batch) {
        loop {
            let n = batch.len() as u64;
            let stamp = ClockStamp::now(&*self.clock);
            let (result, back) = self
                .queue
                .append_stamped(std::mem::take(batch), stamp)
                .await;
            *batch = back;
            match result {
                Ok(outcome) => {
                    let report = &mut self.report;
                    if outcome.dropped_newest > 0 {
                        report.refused += outcome.dropped_newest;
                        report.committed += n - outcome.dropped_newest;
                        if let Some(n) = self
                            .refused_log
                            .hit(outcome.dropped_newest, std::time::Instant::now())
                        {
                            tracing::error!(
                                dropped = n,
                                "queue full: refused new readings (when_full = \"drop_newest\")"
                            );
                        }
                    } else {
                        report.committed += n;
                    }
                    if self.full_logged {
                        tracing::info!("queue has room again");
                        self.full_logged = false;
                    }
                    self.backoff.reset();
                    batch.clear();
                    if self.disk_cleared().await {
                        // Sent like any alert; committed right away.
                        let (reading, alert) = disk_alert(AlertState::Cleared, self.clock.wall());
                        batch.insert_alert_first(reading, alert);
                        continue;
                    }
                    return;
                }
                Err(QueueError::Full { used, max }) => {
                    if !self.full_logged {
                        tracing::warn!(used_bytes = used, max_bytes = max, "queue full: holding adapters back until uplinks make room (when_full = \"block\")");
                        self.full_logged = true;
                    }
                    self.heartbeat.writer_beat();
                    if sleep_or_shutdown(self.flush_interval, &mut self.abort).await {
                        return;
                    }
                }
                Err(e) if e.is_disk_full() => {
                    if self.disk_full(batch).await {
                        continue;
                    }
                    if batch.is_empty() || self.queue.when_full() == WhenFull::DropNewest {
                        // `drop_newest`: what is left (alerts) goes with the next batch, and
                        // the writer goes on taking (and refusing) readings meanwhile.
                        return;
                    }
                    let delay = self.backoff.next_delay();
                    self.heartbeat.writer_beat();
                    if sleep_or_shutdown(delay, &mut self.abort).await {
                        return;
                    }
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::error!(error = %e, readings = batch.len(), retry_in = ?delay, "cannot commit readings; holding them in memory");
                    self.heartbeat.writer_beat();
                    if sleep_or_shutdown(delay, &mut self.abort).await {
                        return;
                    }
                }
            }
        }
    }

    /// A commit failed because the disk is full: raises the alert (first time), makes room
    /// and applies `when_full` to `batch`. True to retry at once (room was made).
    async fn disk_full(&mut self, batch: &mut Batch) -> bool {
        let when_full = self.queue.when_full();
        if self.disk.last.is_none() {
            tracing::error!(
                when_full = ?when_full,
                readings = batch.len(),
                "disk full: the queue cannot write; applying when_full until there is room again (free space on the data_dir's filesystem)"
            );
            let (reading, alert) = disk_alert(AlertState::Raised, self.clock.wall());
            batch.insert_alert_first(reading, alert);
            self.disk.since = self.clock.wall();
            self.board.disk_full(Some(self.disk.since), 0);
        }
        self.disk.last = Some(Instant::now());
        self.heartbeat.writer_beat();
        let drop_bytes = if when_full == WhenFull::DropOldest {
            DISK_DROP_BYTES
        } else {
            0
        };
        let dropped = match self.queue.make_room(drop_bytes).await {
            Ok(n) => n,
            Err(e) => {
                if let Some(n) = self.disk.log.hit(1, std::time::Instant::now()) {
                    tracing::error!(error = %e, attempts = n, "disk full: cannot make room in the queue");
                }
                0
            }
        };
        match when_full {
            WhenFull::DropOldest if dropped > 0 => {
                if let Some(n) = self.disk.log.hit(dropped, std::time::Instant::now()) {
                    tracing::error!(
                        dropped = n,
                        "disk full: dropped the oldest readings (when_full = \"drop_oldest\")"
                    );
                }
                return true;
            }
            WhenFull::DropNewest => {
                let refused = batch.keep_only_alerts() as u64;
                if refused > 0 {
                    self.report.refused += refused;
                    self.board.disk_full(Some(self.disk.since), refused);
                    if let Some(n) = self.disk.log.hit(refused, std::time::Instant::now()) {
                        tracing::error!(
                            dropped = n,
                            "disk full: refused new readings (when_full = \"drop_newest\")"
                        );
                    }
                }
            }
            // `block`, or nothing left to drop: the batch waits in memory.
            _ => {}
        }
        false
    }

    /// After a successful commit: true once, when the disk has been fine for long enough
    /// after being full and the reserve could be written again.
    async fn disk_cleared(&mut self) -> bool {
        let due = self
            .disk
            .last
            .is_some_and(|t| t.elapsed() >= self.disk.clear_after);
        if due && self.reserve_back().await {
            self.disk_fine();
            return true;
        }
        false
    }

    /// Writes the disk reserve again; if the disk has no room for it, it is still full.
    async fn reserve_back(&mut self) -> bool {
        let back = self.queue.restore_reserve().await;
        if !back {
            self.disk.last = Some(Instant::now());
        }
        back
    }

    /// Ends a disk-full episode.
    fn disk_fine(&mut self) {
        self.disk.last = None;
        tracing::info!("disk has room again: the queue writes normally");
        self.board.disk_full(None, 0);
    }

    /// When the writer, idle, should see whether a full disk has room again
    /// ([`Committer::try_clear`]).
    pub fn disk_clear_due(&self) -> Option<Instant> {
        self.disk.last.map(|t| t + self.disk.clear_after)
    }

    /// Commits the disk-full alert's clearing on its own, which is also the test that the
    /// disk takes writes again; if it does not, the disk is still full.
    pub async fn try_clear(&mut self) {
        if !self.reserve_back().await {
            return;
        }
        let mut batch = Batch::default();
        let (reading, alert) = disk_alert(AlertState::Cleared, self.clock.wall());
        batch.insert_alert_first(reading, alert);
        let stamp = ClockStamp::now(&*self.clock);
        match self.queue.append_stamped(batch, stamp).await.0 {
            Ok(_) => {
                self.report.committed += 1;
                self.disk_fine();
            }
            Err(e) => {
                if !e.is_disk_full() {
                    tracing::error!(error = %e, "cannot commit the disk-full alert's clearing; trying again");
                }
                self.disk.last = Some(Instant::now());
            }
        }
    }
}

/// The gateway's own alert about its queue's disk, as a reading (`fieldgate`/`queue`/
/// `disk_full`, true while full) with its alert event.
pub fn disk_alert(state: AlertState, now: SystemTime) -> (Reading, Alert) {
    let reading = Reading::new(
        SYSTEM_SOURCE,
        "queue",
        "disk_full",
        now,
        Value::Bool(state == AlertState::Raised),
    );
    let alert = Alert {
        rule: DISK_FULL_RULE.into(),
        state,
        level: AlertLevel::High,
        threshold: 1.0,
        severity: Severity::Critical,
    };
    (reading, alert)
}
