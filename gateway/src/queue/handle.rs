//! Async access to a [`Queue`] shared by the writer and the forwarders.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fieldgate_adapter::Reading;
use tokio::sync::watch;

use super::{Alert, AppendOutcome, Queue, QueueError, QueueStats, Queued};

/// What the writer commits in one transaction: readings, and for some of them (by index) the
/// alert event they carry.
#[derive(Debug, Default)]
pub struct Batch {
    /// The readings, in order.
    pub readings: Vec<Reading>,
    /// `(index into readings, alert)`, by ascending index.
    pub alerts: Vec<(usize, Alert)>,
}

impl Batch {
    /// Number of readings (alerts included).
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// True without readings.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Puts an alert event first in the batch (an alert is the urgent part).
    pub fn insert_alert_first(&mut self, reading: Reading, alert: Alert) {
        self.readings.insert(0, reading);
        for (i, _) in &mut self.alerts {
            *i += 1;
        }
        self.alerts.insert(0, (0, alert));
    }

    /// Removes the readings that carry no alert, keeping the alerts in order. Returns how
    /// many were removed.
    pub fn keep_only_alerts(&mut self) -> usize {
        let before = self.readings.len();
        let mut kept = Vec::with_capacity(self.alerts.len());
        for (new, (i, _)) in self.alerts.iter_mut().enumerate() {
            kept.push(self.readings[*i].clone());
            *i = new;
        }
        self.readings = kept;
        before - self.readings.len()
    }

    /// Empties it, keeping the buffers.
    pub fn clear(&mut self) {
        self.readings.clear();
        self.alerts.clear();
    }
}

/// A cloneable, async handle to the queue.
///
/// SQLite calls are blocking, so every operation runs on tokio's blocking pool. A `watch`
/// channel carries the last committed sequence id, so forwarders sleep until there is
/// something new instead of polling the database.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    inner: Arc<Mutex<Queue>>,
    committed: watch::Sender<u64>,
    peeks: Arc<std::sync::atomic::AtomicU64>,
    instance: Arc<str>,
    when_full: super::WhenFull,
}

impl QueueHandle {
    /// Wraps an open queue.
    pub fn new(queue: Queue) -> Self {
        let last = queue.next_seq() - 1;
        let instance = Arc::from(queue.instance());
        let (committed, _) = watch::channel(last);
        let when_full = queue.options().when_full;
        QueueHandle {
            when_full,
            inner: Arc::new(Mutex::new(queue)),
            committed,
            peeks: Arc::default(),
            instance,
        }
    }

    pub(crate) async fn with<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic inside an earlier call rolled its transaction back; the queue is
            // consistent, so carry on rather than fail every later call.
            let mut q = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut q)
        })
        .await
        .map_err(|e| QueueError::Task(e.to_string()))?
    }

    /// Appends a batch (one transaction) and wakes the forwarders. The readings come back
    /// with the result, so a failed batch can be retried and a buffer reused.
    pub async fn append(
        &self,
        readings: Vec<Reading>,
    ) -> (Result<AppendOutcome, QueueError>, Vec<Reading>) {
        let batch = Batch {
            readings,
            alerts: Vec::new(),
        };
        let (result, batch) = self.append_with(batch, None).await;
        (result, batch.readings)
    }

    async fn append_with(
        &self,
        batch: Batch,
        stamp: Option<crate::clock::ClockStamp>,
    ) -> (Result<AppendOutcome, QueueError>, Batch) {
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let mut q = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = stamp.as_ref().map_or_else(SystemTime::now, |s| s.wall);
            let result = q.append_alerts(&batch.readings, &batch.alerts, stamp.as_ref(), now);
            drop(q);
            (result, batch)
        })
        .await;
        match joined {
            Ok((result, readings)) => {
                if let Ok(AppendOutcome {
                    seqs: Some((_, last)),
                    ..
                }) = &result
                {
                    self.committed_through(*last);
                }
                (result, readings)
            }
            Err(e) => {
                tracing::error!(error = %e, "the queue writer task failed; the readings of this batch are lost");
                (Err(QueueError::Task(e.to_string())), Batch::default())
            }
        }
    }

    /// Publishes that everything through `last` is committed. The writer and the upkeep task
    /// both commit and report after releasing the queue, so reports can arrive out of order:
    /// the value only ever grows, or a forwarder could wait for rows it already missed.
    fn committed_through(&self, last: u64) {
        self.committed.send_if_modified(|v| {
            let grew = last > *v;
            *v = (*v).max(last);
            grew
        });
    }

    /// The queue database's id (see [`Queue::instance`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Up to `limit` readings after `after`.
    pub async fn peek(&self, after: u64, limit: usize) -> Result<Vec<Queued>, QueueError> {
        self.peeks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with(move |q| q.peek(after, limit)).await
    }

    /// How many peeks were made through this queue (all handles): forwarders that wait
    /// properly keep this flat while idle.
    pub fn peek_count(&self) -> u64 {
        self.peeks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Acknowledges everything through `through` for `uplink`.
    pub async fn ack(&self, uplink: &str, through: u64, delivered: u64) -> Result<u64, QueueError> {
        let uplink = uplink.to_string();
        self.with(move |q| q.ack(&uplink, through, delivered)).await
    }

    /// Moves rejected rows to the dead-letter table for `uplink`.
    pub async fn dead_letter(
        &self,
        uplink: &str,
        seqs: Vec<u64>,
        error: String,
    ) -> Result<(), QueueError> {
        let uplink = uplink.to_string();
        self.with(move |q| q.dead_letter(&uplink, &seqs, &error))
            .await
    }

    /// Dead-letters readings with a reason each, in one transaction.
    pub async fn dead_letter_each(
        &self,
        uplink: &str,
        items: Vec<(u64, String)>,
    ) -> Result<(), QueueError> {
        let uplink = uplink.to_string();
        self.with(move |q| q.dead_letter_each(&uplink, &items))
            .await
    }

    /// Moves requeue-requested dead letters back into the queue and wakes the forwarders.
    pub async fn requeue_requested(&self) -> Result<u64, QueueError> {
        let (n, last) = self
            .with(|q| Ok((q.requeue_requested()?, q.next_seq() - 1)))
            .await?;
        if n > 0 {
            self.committed_through(last);
        }
        Ok(n)
    }

    /// Appends a batch with its alerts and the clock state of the commit (see
    /// [`Queue::append_stamped`] and [`Queue::append_alerts`]). The batch comes back with the
    /// result, so a failed one can be retried and its buffers reused.
    pub async fn append_stamped(
        &self,
        batch: Batch,
        stamp: crate::clock::ClockStamp,
    ) -> (Result<AppendOutcome, QueueError>, Batch) {
        self.append_with(batch, Some(stamp)).await
    }

    /// Up to `limit` alert events after `after` (see [`Queue::peek_alerts`]).
    pub async fn peek_alerts(&self, after: u64, limit: usize) -> Result<Vec<Queued>, QueueError> {
        self.with(move |q| q.peek_alerts(after, limit)).await
    }

    /// Re-stamps this boot's unsynced readings (see [`Queue::restamp`]).
    pub async fn restamp(&self, now: crate::clock::ClockStamp) -> Result<u64, QueueError> {
        self.with(move |q| q.restamp(&now)).await
    }

    /// What the queue does when it is full (its `when_full`).
    pub fn when_full(&self) -> super::WhenFull {
        self.when_full
    }

    /// On a full disk: releases the reserve and truncates the WAL (see
    /// [`Queue::relieve_disk`]), then, if `drop_bytes` is not 0, drops the oldest readings
    /// worth that many bytes (see [`Queue::drop_oldest_bytes`]). Returns how many readings
    /// were dropped.
    pub async fn make_room(&self, drop_bytes: u64) -> Result<u64, QueueError> {
        self.with(move |q| {
            // A checkpoint that cannot finish (readers, or the disk) is not an error here:
            // the delete below is what must work.
            if let Err(e) = q.relieve_disk() {
                tracing::debug!(error = %e, "disk full: checkpoint failed");
            }
            if drop_bytes == 0 {
                return Ok(0);
            }
            q.drop_oldest_bytes(drop_bytes)
        })
        .await
    }

    /// Writes the disk reserve again (see [`Queue::restore_reserve`]).
    pub async fn restore_reserve(&self) -> bool {
        self.with(|q| Ok(q.restore_reserve()))
            .await
            .unwrap_or(false)
    }

    /// Drops readings older than `max_age`.
    pub async fn expire(&self) -> Result<u64, QueueError> {
        self.with(|q| q.expire(SystemTime::now())).await
    }

    /// The watermark of `uplink`.
    pub async fn watermark(&self, uplink: &str) -> Result<Option<u64>, QueueError> {
        let uplink = uplink.to_string();
        self.with(move |q| Ok(q.watermark(&uplink))).await
    }

    /// Counters and gauges.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.with(|q| q.stats()).await
    }

    /// Watches the last committed sequence id.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Closes the queue (checkpointing the WAL) if this is the last handle; otherwise does
    /// nothing and the last holder closes it on drop.
    pub async fn close(self) -> Result<(), QueueError> {
        let QueueHandle { inner, .. } = self;
        match Arc::try_unwrap(inner) {
            Ok(mutex) => {
                let queue = mutex
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tokio::task::spawn_blocking(move || queue.close())
                    .await
                    .map_err(|e| QueueError::Task(e.to_string()))?
            }
            Err(_) => Ok(()),
        }
    }
}
