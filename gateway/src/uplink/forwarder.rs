//! The forwarder: one per uplink, from the queue to the far side.
//!
//! It peeks batches after the uplink's position, hands them to the uplink, keeps up to
//! [`Uplink::window`] of them in flight, and acknowledges them in the queue in order as they
//! settle. A failure (retry) rewinds to the last acknowledged reading and, after a jittered
//! exponential backoff, sends everything after it again; a reject dead-letters the batch and
//! moves on.
//!
//! With [`Drain::LiveFirst`], whenever there is a backlog (at start, and after every failure)
//! the queue is split at the newest committed reading: readings committed after the split
//! ("live") go out at once, while the backlog drains behind them, flagged historical and
//! optionally capped in bytes per second. The queue's watermark only moves over the backlog
//! (it must stay contiguous); the live readings already delivered are remembered in memory and
//! folded into the watermark when the backlog is done. After a crash in between they are sent
//! again, as backlog: at-least-once, never lost.
//!
//! Alerts go first, whatever the drain order: before every batch the forwarder looks for
//! alert events committed since it last looked that no stream has taken yet, and sends them
//! as a batch of their own. They are remembered as sent (in memory) and skipped when the
//! stream that holds them reaches them; the watermark moves over them then. After a crash in
//! between they are sent again in queue order, with the same sequence ids.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_adapter::Shutdown;
use tokio::time::Instant;

use super::{settled, Delivery, Filter, Pending, SendError, Uplink};
use crate::backoff::Backoff;
use crate::config::UplinkSection;
use crate::queue::{QueueHandle, Queued};
use crate::status::UplinkLive;

/// The order in which a backlog is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Drain {
    /// Strictly in queue order (the default).
    #[default]
    Fifo,
    /// New readings first, the backlog behind them, at most `backlog_rate` bytes per second.
    LiveFirst {
        /// Cap on the backlog's bytes per second (message bodies); `None` for no cap.
        backlog_rate: Option<u64>,
    },
}

/// How a forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// The uplink's id (its watermark's name in the queue).
    pub id: String,
    /// Which readings it carries.
    pub filter: Filter,
    /// Most readings per send.
    pub batch_size: usize,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Backlog order.
    pub drain: Drain,
    /// Its counters for the status page and metrics.
    pub live: Arc<UplinkLive>,
}

impl ForwarderOptions {
    /// The options a config section describes.
    pub fn from_section(s: &UplinkSection) -> Self {
        ForwarderOptions {
            id: s.id.clone(),
            filter: s.filter.clone(),
            batch_size: s.batch_size,
            retry_min: s.retry_min,
            retry_max: s.retry_max,
            drain: s.drain,
            live: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Queue order (fifo, or live_first with no backlog).
    Main,
    /// Behind the split, historical.
    Backlog,
    /// After the split.
    Live,
    /// Alert events ahead of their place in the queue.
    Alert,
}

/// A batch handed to the uplink and not settled yet.
struct InFlight {
    stream: Stream,
    /// The highest sequence id the batch covers (including readings filtered out).
    last: u64,
    /// The sequence ids it carries.
    seqs: Vec<u64>,
    delivery: Pending,
}

/// The queue split at `at` while a backlog drains behind live readings.
#[derive(Debug)]
struct Split {
    /// Readings up to here are backlog.
    at: u64,
    /// Where the next backlog batch is peeked from.
    backlog_next: u64,
    /// Where the next live batch is peeked from.
    live_next: u64,
    /// Live readings settled through here (in order).
    live_acked: u64,
    /// Readings delivered in those live batches, recorded when they are folded in.
    live_delivered: u64,
    /// Not before this instant may the next backlog batch go (`backlog_rate`).
    backlog_ready_at: Instant,
}

struct Forwarder {
    queue: QueueHandle,
    opts: ForwarderOptions,
    /// Everything up to here is acknowledged in the queue.
    cursor: u64,
    /// Where the next batch is peeked from when there is no split.
    next: u64,
    split: Option<Split>,
    inflight: VecDeque<InFlight>,
    backoff: Backoff,
    /// The stream of the last batch handed to the uplink.
    last_sent: Option<Stream>,
    /// After a failure: where the batches that were in flight ended, oldest first. They are
    /// sent again with exactly these ranges (and so the same idempotency keys), even if more
    /// readings were committed meanwhile.
    replay: VecDeque<u64>,
    /// The far side's `Retry-After`, for the next backoff.
    retry_after: Option<Duration>,
    /// Alert events with ids up to here have been looked for.
    alerts_seen: u64,
    /// Alert events sent ahead of their place, settled or in flight; skipped by the
    /// streams when they reach them.
    alerts_taken: BTreeSet<u64>,
    /// Readings delivered by alert batches, not yet recorded with an acknowledgement.
    alerts_delivered: u64,
}

impl Forwarder {
    fn id(&self) -> &str {
        &self.opts.id
    }

    /// Starts over from the watermark: splits if live_first and there is a backlog.
    fn rewind(&mut self, newest: u64) {
        // Alerts that were in flight are sent again; settled ones stay taken.
        for f in self.inflight.iter().filter(|f| f.stream == Stream::Alert) {
            for seq in &f.seqs {
                self.alerts_taken.remove(seq);
            }
        }
        self.alerts_seen = self.cursor;
        self.inflight.clear();
        self.next = self.cursor;
        self.split = match self.opts.drain {
            Drain::LiveFirst { .. } if newest > self.cursor => {
                tracing::info!(uplink = %self.opts.id, backlog = newest - self.cursor, "sending new readings first; the backlog drains behind them");
                Some(Split {
                    at: newest,
                    backlog_next: self.cursor,
                    live_next: newest,
                    live_acked: newest,
                    live_delivered: 0,
                    backlog_ready_at: Instant::now(),
                })
            }
            _ => None,
        };
    }

    fn filter(&self, mut items: Vec<Queued>) -> Vec<Queued> {
        items.retain(|q| {
            !self.alerts_taken.contains(&q.seq) && self.opts.filter.carries(&self.opts.id, q)
        });
        items
    }

    /// True if a stream already took `seq` (sent or in flight).
    fn streamed(&self, seq: u64) -> bool {
        match &self.split {
            None => seq <= self.next,
            Some(sp) => seq <= sp.backlog_next || (seq > sp.at && seq <= sp.live_next),
        }
    }

    /// The alert events committed through `newest` that no stream has taken yet, as one
    /// batch (`Ok(None)`: none).
    async fn take_alerts(
        &mut self,
        newest: u64,
    ) -> Result<Option<(u64, Vec<Queued>)>, crate::queue::QueueError> {
        // Page on while whole pages are alerts already taken or not carried, so none waits
        // behind a stream batch.
        let mut batch: Vec<Queued> = Vec::new();
        while batch.is_empty() && newest > self.alerts_seen {
            let found = self
                .queue
                .peek_alerts(self.alerts_seen, self.opts.batch_size)
                .await?;
            // Looked through `newest` (or further: an alert committed since is sent too),
            // unless the page was full.
            self.alerts_seen = match found.last() {
                Some(q) if found.len() >= self.opts.batch_size => q.seq,
                Some(q) => q.seq.max(newest),
                None => newest,
            };
            batch = found
                .into_iter()
                .filter(|q| !self.streamed(q.seq) && !self.alerts_taken.contains(&q.seq))
                .filter(|q| self.opts.filter.carries(&self.opts.id, q))
                .collect();
        }
        let Some(last) = batch.last().map(|q| q.seq) else {
            return Ok(None);
        };
        self.alerts_taken.extend(batch.iter().map(|q| q.seq));
        Ok(Some((last, batch)))
    }

    /// Before a rewind after a failure: remembers the ranges of the batches that were in
    /// flight (`failed_last` ended the one that failed), so they are sent again as they were.
    fn remember_ranges(&mut self, stream: Stream, failed_last: u64) {
        if matches!(self.opts.drain, Drain::LiveFirst { .. })
            || matches!(stream, Stream::Backlog | Stream::Live)
        {
            self.replay.clear();
            return;
        }
        // Ranges still to be replayed from an earlier failure (the window was not refilled
        // up to them) stay, after the ones in flight now.
        let earlier = std::mem::take(&mut self.replay);
        if stream == Stream::Main {
            self.replay.push_back(failed_last);
        }
        self.replay.extend(
            self.inflight
                .iter()
                .filter(|f| f.stream == Stream::Main)
                .map(|f| f.last),
        );
        let sent_through = self.replay.back().copied().unwrap_or(0);
        self.replay
            .extend(earlier.into_iter().filter(|&end| end > sent_through));
    }

    /// Peeks the next batch of `stream`. `Ok(None)`: nothing there now.
    async fn peek(
        &mut self,
        stream: Stream,
    ) -> Result<Option<(u64, Vec<Queued>)>, crate::queue::QueueError> {
        while self.replay.front().is_some_and(|&end| end <= self.next) {
            self.replay.pop_front();
        }
        let replay = match stream {
            Stream::Main => self.replay.front().copied(),
            _ => None,
        };
        let (from, until) = match (stream, &self.split) {
            (Stream::Main, _) => (self.next, replay.unwrap_or(u64::MAX)),
            (Stream::Backlog, Some(sp)) => (sp.backlog_next, sp.at),
            (Stream::Live, Some(sp)) => (sp.live_next, u64::MAX),
            (Stream::Alert, _) | (_, None) => return Ok(None),
        };
        if from >= until {
            return Ok(None);
        }
        let mut items = self.queue.peek(from, self.opts.batch_size).await?;
        items.retain(|q| q.seq <= until);
        let last = match (items.last(), replay) {
            // A batch sent again ends where it ended the first time, even if some of its
            // readings expired meanwhile.
            (last, Some(end))
                if items.len() < self.opts.batch_size || last.is_some_and(|q| q.seq == end) =>
            {
                self.replay.pop_front();
                end
            }
            (Some(q), _) => q.seq,
            // Rows of the backlog may have expired under it: it is done.
            (None, _) if stream == Stream::Backlog => until,
            (None, _) => return Ok(None),
        };
        match (stream, self.split.as_mut()) {
            (Stream::Main, _) => self.next = last,
            (Stream::Backlog, Some(sp)) => sp.backlog_next = last,
            (Stream::Live, Some(sp)) => sp.live_next = last,
            (Stream::Alert, _) | (_, None) => {}
        }
        Ok(Some((last, self.filter(items))))
    }

    /// Which stream gets the next window slot, if any. Live readings go first; while they
    /// keep coming, live and backlog batches alternate (one backlog batch in flight at a
    /// time), so new readings wait at most one backlog batch and the backlog still moves.
    fn next_stream(&self, live_seen_empty: bool) -> Option<Stream> {
        let Some(sp) = &self.split else {
            return Some(Stream::Main);
        };
        let backlog_allowed = sp.backlog_next < sp.at && Instant::now() >= sp.backlog_ready_at;
        let backlog_flying = self.inflight.iter().any(|f| f.stream == Stream::Backlog);
        match (!live_seen_empty, backlog_allowed && !backlog_flying) {
            (true, true) if self.last_sent == Some(Stream::Live) => Some(Stream::Backlog),
            (true, _) => Some(Stream::Live),
            (false, _) => backlog_allowed.then_some(Stream::Backlog),
        }
    }

    /// Folds the live readings into the watermark once the backlog is all acknowledged.
    async fn merge_if_done(&mut self) -> Result<(), crate::queue::QueueError> {
        let done = match &self.split {
            Some(sp) => {
                self.cursor >= sp.at && !self.inflight.iter().any(|f| f.stream == Stream::Backlog)
            }
            None => false,
        };
        if !done {
            return Ok(());
        }
        let Some(sp) = self.split.take() else {
            return Ok(());
        };
        if sp.live_acked > self.cursor {
            self.queue
                .ack(&self.opts.id, sp.live_acked, sp.live_delivered)
                .await?;
            self.cursor = sp.live_acked;
        }
        self.next = sp.live_next;
        tracing::info!(uplink = %self.opts.id, through_seq = self.cursor, "backlog drained; back to queue order");
        Ok(())
    }

    /// Records a settled batch. False if it must be sent again.
    async fn settle(
        &mut self,
        stream: Stream,
        last: u64,
        seqs: &[u64],
        result: Result<Delivery, SendError>,
    ) -> bool {
        let id = self.opts.id.clone();
        let (delivered, bytes) = match result {
            Ok(delivery) => {
                let rejected: Vec<(u64, String)> = delivery
                    .rejected
                    .into_iter()
                    .filter(|(seq, _)| seqs.contains(seq))
                    .collect();
                if !rejected.is_empty() && !dead_letter_some(&self.queue, &id, &rejected).await {
                    return false;
                }
                self.opts.live.sent(
                    seqs.len().saturating_sub(rejected.len()) as u64,
                    rejected.len() as u64,
                    std::time::SystemTime::now(),
                );
                (
                    seqs.len().saturating_sub(rejected.len()) as u64,
                    delivery.bytes,
                )
            }
            Err(e @ (SendError::Retry(_) | SendError::RetryAfter(..))) => {
                if let SendError::RetryAfter(_, after) = &e {
                    self.retry_after = Some(*after);
                }
                tracing::warn!(uplink = %id, error = %e, attempt = self.backoff.attempts() + 1, "delivery failed; will retry");
                self.opts.live.failed(&e.to_string());
                return false;
            }
            Err(SendError::Reject(why)) => {
                tracing::error!(uplink = %id, error = %why, readings = seqs.len(), first_seq = seqs.first(), "uplink rejected a batch; moved to dead letters");
                if let Err(e) = self.queue.dead_letter(&id, seqs.to_vec(), why).await {
                    tracing::error!(uplink = %id, error = %e, "could not store dead letters; will retry the batch");
                    return false;
                }
                self.opts
                    .live
                    .sent(0, seqs.len() as u64, std::time::SystemTime::now());
                (0, 0)
            }
        };
        if stream == Stream::Alert {
            // Skipped by the streams from now on; recorded with their next acknowledgement.
            self.alerts_delivered += delivered;
        } else if stream == Stream::Live {
            if let Some(sp) = self.split.as_mut() {
                sp.live_acked = last;
                sp.live_delivered += delivered;
            }
        } else {
            let delivered = delivered + self.alerts_delivered;
            if let Err(e) = self.queue.ack(&id, last, delivered).await {
                // Not acknowledged: the batch will be sent again (at-least-once).
                tracing::error!(uplink = %id, error = %e, "delivered but could not record it; it will be sent again");
                return false;
            }
            self.alerts_delivered = 0;
            self.cursor = last;
            self.alerts_taken = self.alerts_taken.split_off(&(last + 1));
            if stream == Stream::Backlog {
                if let (
                    Some(sp),
                    Drain::LiveFirst {
                        backlog_rate: Some(rate),
                    },
                ) = (self.split.as_mut(), self.opts.drain)
                {
                    #[allow(clippy::cast_precision_loss)] // a wait time; precision is irrelevant
                    let wait = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
                    sp.backlog_ready_at = sp.backlog_ready_at.max(Instant::now()) + wait;
                }
            }
        }
        if self.backoff.attempts() > 0 {
            tracing::info!(uplink = %id, after_failures = self.backoff.attempts(), "uplink recovered");
        }
        self.backoff.reset();
        tracing::debug!(uplink = %id, readings = delivered, through_seq = last, "delivered");
        true
    }
}

/// Drains the queue into `uplink` until `shutdown` fires. After `shutdown` no new batch is
/// sent; the ones in flight are settled first, so a delivered batch is always acknowledged.
pub async fn forwarder(
    queue: QueueHandle,
    mut uplink: Box<dyn Uplink>,
    opts: ForwarderOptions,
    mut shutdown: Shutdown,
) {
    let id = opts.id.clone();
    let mut committed = queue.subscribe();
    let cursor = match queue.watermark(&id).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            tracing::error!(uplink = %id, "uplink is not registered with the queue; not forwarding");
            return;
        }
        Err(e) => {
            tracing::error!(uplink = %id, error = %e, "cannot read the uplink's queue position; not forwarding");
            return;
        }
    };
    uplink.set_queue_id(queue.instance());
    if let Some(link) = uplink.link() {
        opts.live.watch_link(link);
    }
    tracing::info!(uplink = %id, from_seq = cursor + 1, "forwarder started");
    let window = uplink.window().max(1);
    let mut f = Forwarder {
        backoff: Backoff::new(opts.retry_min, opts.retry_max),
        queue,
        opts,
        cursor,
        next: cursor,
        split: None,
        inflight: VecDeque::with_capacity(window),
        last_sent: None,
        replay: VecDeque::new(),
        retry_after: None,
        alerts_seen: cursor,
        alerts_taken: BTreeSet::new(),
        alerts_delivered: 0,
    };
    f.rewind(*committed.borrow_and_update());
    loop {
        // Fill the window. `seen` is the newest committed id before the peeks: an empty peek
        // means everything up to it is sent or gone (expired rows leave no trace), so the
        // forwarder then sleeps until something newer is committed.
        let mut seen = 0;
        let mut live_empty = false;
        while f.inflight.len() < window && !shutdown.is_fired() {
            seen = seen.max(*committed.borrow_and_update());
            let alerts = match f.take_alerts(seen).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(uplink = %f.id(), error = %e, "cannot read alerts from the queue");
                    None
                }
            };
            let (stream, peeked) = match alerts {
                Some(batch) => (Stream::Alert, Ok(Some(batch))),
                None => {
                    let Some(stream) = f.next_stream(live_empty) else {
                        break;
                    };
                    (stream, f.peek(stream).await)
                }
            };
            let (last, batch) = match peeked {
                Ok(Some(b)) => b,
                Ok(None) => {
                    if stream == Stream::Live {
                        live_empty = true;
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    let delay = f.backoff.next_delay();
                    tracing::error!(uplink = %f.id(), error = %e, retry_in = ?delay, "cannot read the queue");
                    if f.inflight.is_empty() {
                        let _ = sleep_or_shutdown(delay, &mut shutdown).await;
                    }
                    break;
                }
            };
            let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
            let (delivery, not_taken) = if batch.is_empty() {
                (settled(Ok(Delivery::all())), false)
            } else {
                // Never cancelled: a file uplink's hand-over is the durable write itself, and
                // cutting it short would deliver the batch without acknowledging it.
                match uplink.send(&batch, stream == Stream::Backlog).await {
                    Ok(d) => (d, false),
                    Err(e) => (settled(Err(e)), true),
                }
            };
            f.inflight.push_back(InFlight {
                stream,
                last,
                seqs,
                delivery,
            });
            f.last_sent = Some(stream);
            if not_taken {
                break;
            }
        }
        let Some(front) = f.inflight.pop_front() else {
            if let Err(e) = f.merge_if_done().await {
                tracing::error!(uplink = %f.id(), error = %e, "could not record delivered readings; they will be sent again");
                f.rewind(*committed.borrow());
            }
            if shutdown.is_fired() {
                break;
            }
            // Nothing in flight and nothing to send now: sleep until a commit, the next slot of
            // a rate-capped backlog, or shutdown.
            let backlog_wait = f
                .split
                .as_ref()
                .filter(|sp| sp.backlog_next < sp.at)
                .map(|sp| sp.backlog_ready_at);
            let watch_from = seen
                .max(f.next)
                .max(f.split.as_ref().map_or(0, |sp| sp.live_next));
            tokio::select! {
                () = shutdown.fired() => break,
                () = sleep_until_opt(backlog_wait) => {}
                changed = committed.wait_for(|&last| last > watch_from) => {
                    if changed.is_err() { break; }
                }
            }
            continue;
        };
        let InFlight {
            stream,
            last,
            seqs,
            delivery,
        } = front;
        let result = delivery.await;
        let ok = f.settle(stream, last, &seqs, result).await;
        let ok = ok && f.merge_if_done().await.is_ok();
        if !ok {
            if stream == Stream::Alert {
                // Not delivered: sent again ahead of the rest after the rewind.
                for seq in &seqs {
                    f.alerts_taken.remove(seq);
                }
            }
            // Everything after the last acknowledged reading is sent again, after a backoff
            // (no shorter than the far side asked for).
            let delay = f
                .backoff
                .next_delay()
                .max(f.retry_after.take().unwrap_or_default());
            f.remember_ranges(stream, last);
            f.rewind(*committed.borrow());
            tracing::debug!(uplink = %f.id(), retry_in = ?delay, from_seq = f.cursor + 1, "rewinding");
            if shutdown.is_fired() {
                break;
            }
            let _ = sleep_or_shutdown(delay, &mut shutdown).await;
        }
    }
    tracing::info!(uplink = %f.opts.id, through_seq = f.cursor, "forwarder stopped");
}

/// Dead-letters the readings an uplink refused (one transaction); false if that failed.
async fn dead_letter_some(queue: &QueueHandle, id: &str, rejected: &[(u64, String)]) -> bool {
    if let Err(e) = queue.dead_letter_each(id, rejected.to_vec()).await {
        tracing::error!(uplink = %id, error = %e, "could not store dead letters; will retry the batch");
        return false;
    }
    for (seq, why) in rejected {
        tracing::error!(uplink = %id, seq, error = %why, "uplink refused a reading; moved to dead letters");
    }
    true
}

/// Sleeps until `at`, or forever without one.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sleeps for `delay`; true if `shutdown` fired first (or meanwhile).
pub(crate) async fn sleep_or_shutdown(delay: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        () = shutdown.fired() => true,
        () = tokio::time::sleep(delay) => shutdown.is_fired(),
    }
}
