use super::*;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use fieldgate_adapter::{BoxFuture, Value};

use crate::queue::{Inspector, Queued};
use crate::uplink::{settled, Delivery, Filter, Pending, SendError};

fn config(dir: &Path, queue: &str) -> Config {
    let queue = if queue.is_empty() {
        "flush_interval = \"10ms\""
    } else {
        queue
    };
    config_with(dir, queue, "")
}

/// A site with `queue` settings, a placeholder adapter and uplink (tests plug in their own
/// parts), and `extra` top-level sections (`[[rules]]`, `[[alerts]]`).
fn config_with(dir: &Path, queue: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[gateway]
id = "test"
data_dir = "{}"
[queue]
{queue}
[[adapters]]
id = "unused"
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
{extra}
"#,
        dir.display()
    );
    Config::from_toml(&dir.join("site.toml"), &text, &[]).expect("valid test config")
}

fn fast() -> PipelineOptions {
    PipelineOptions {
        restart_min: Duration::from_millis(10),
        restart_max: Duration::from_millis(40),
        ..PipelineOptions::default()
    }
}

/// An adapter made of a closure.
struct FnAdapter<F>(F);

impl<F, Fut> Adapter for FnAdapter<F>
where
    F: FnOnce(AdapterContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), AdapterError>> + Send + 'static,
{
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin((self.0)(ctx))
    }
}

fn reading(source: &str, i: i64) -> Reading {
    Reading::new(source, "d", "p", SystemTime::now(), Value::I64(i))
}

/// Emits `0..n` then waits for shutdown.
fn counter_adapter(source: &'static str, n: i64) -> AdapterFactory {
    Box::new(move || {
        Ok(
            Box::new(FnAdapter(move |mut ctx: AdapterContext| async move {
                for i in 0..n {
                    ctx.readings.send(reading(source, i)).await?;
                }
                ctx.shutdown.fired().await;
                Ok(())
            })) as Box<dyn Adapter>,
        )
    })
}

/// Records what it delivers; follows a script of results first.
#[derive(Clone, Default)]
struct Recorder {
    delivered: Arc<Mutex<Vec<(u64, String, Value)>>>,
    historical: Arc<Mutex<Vec<bool>>>,
    script: Arc<Mutex<VecDeque<Result<(), SendError>>>>,
    calls: Arc<AtomicU32>,
    /// While set, every send fails (a link that is down).
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Everything delivered, as queued.
    items: Arc<Mutex<Vec<Queued>>>,
}

impl Recorder {
    fn with_script(script: Vec<Result<(), SendError>>) -> Self {
        Recorder {
            script: Arc::new(Mutex::new(script.into())),
            ..Recorder::default()
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.delivered
            .lock()
            .expect("lock")
            .iter()
            .map(|d| d.0)
            .collect()
    }
}

impl Uplink for Recorder {
    fn send<'a>(
        &'a mut self,
        batch: &'a [Queued],
        historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>> {
        Box::pin(async move {
            self.historical
                .lock()
                .expect("lock")
                .extend(batch.iter().map(|_| historical));
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(SendError::Retry("link down".into()));
            }
            if let Some(result) = self.script.lock().expect("lock").pop_front() {
                result?;
            }
            self.items
                .lock()
                .expect("lock")
                .extend(batch.iter().cloned());
            let mut d = self.delivered.lock().expect("lock");
            d.extend(
                batch
                    .iter()
                    .map(|q| (q.seq, q.reading.source.to_string(), q.reading.value.clone())),
            );
            Ok(settled(Ok(Delivery::all())))
        })
    }
}

fn uplink_opts(id: &str) -> ForwarderOptions {
    ForwarderOptions {
        id: id.into(),
        filter: Filter::default(),
        batch_size: 100,
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        drain: crate::uplink::Drain::Fifo,
        live: Default::default(),
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn boom(_ctx: AdapterContext) -> Result<(), AdapterError> {
    panic!("driver bug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_adapter_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let attempts = Arc::new(AtomicU32::new(0));
    let a = Arc::clone(&attempts);
    let factory: AdapterFactory = Box::new(move || {
        let n = a.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => Err(AdapterError::Config("port not there yet".into())),
            1 => Ok(Box::new(FnAdapter(boom)) as Box<dyn Adapter>),
            2 => Ok(Box::new(FnAdapter(|_ctx: AdapterContext| async {
                Err(AdapterError::Other("link lost".into()))
            }))),
            _ => counter_adapter("flaky", 3)(),
        }
    });
    let rec = Recorder::default();
    let parts = Parts {
        commands: None,
        adapters: vec![("flaky".into(), factory)],
        uplinks: vec![(uplink_opts("rec"), Box::new(rec.clone()))],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    wait_until("3 readings after 3 failures", || rec.seqs().len() == 3).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    assert!(
        running.commands("flaky").is_some(),
        "a running adapter has a command route"
    );
    running.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_commits_what_is_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long flush interval and a big batch: without a clean stop nothing would be committed.
    let cfg = config(dir.path(), "flush_interval = \"60s\"\nbatch_size = 100000");
    let parts = Parts {
        commands: None,
        adapters: vec![("a".into(), counter_adapter("a", 5000))],
        // An uplink that never succeeds, so everything stays in the queue.
        uplinks: vec![(
            uplink_opts("down"),
            Box::new(Recorder::with_script(vec![
                Err(SendError::Retry(
                    "down".into()
                ));
                1000
            ])),
        )],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = running.stop().await.expect("stops");
    assert_eq!(
        report,
        WriterReport {
            committed: 5000,
            refused: 0,
            lost: 0
        }
    );
    let mut ins = Inspector::open(&cfg.queue_path()).expect("queue");
    let all = ins.peek(0, 10_000).expect("peek");
    let values: Vec<_> = all.iter().map(|q| q.reading.value.clone()).collect();
    assert_eq!(values, (0..5000).map(Value::I64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_delivers_and_dead_letters_rejects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let flaky = Recorder::with_script(vec![
        Err(SendError::Retry("timeout".into())),
        Err(SendError::Retry("timeout".into())),
    ]);
    let picky = Recorder::with_script(vec![Err(SendError::Reject("HTTP 400".into()))]);
    let mut only_b = uplink_opts("only-b");
    only_b.filter.adapters = vec!["b".to_string()];
    let filtered = Recorder::default();
    let parts = Parts {
        commands: None,
        adapters: vec![
            ("a".into(), counter_adapter("a", 50)),
            ("b".into(), counter_adapter("b", 50)),
        ],
        uplinks: vec![
            (uplink_opts("flaky"), Box::new(flaky.clone())),
            (uplink_opts("picky"), Box::new(picky.clone())),
            (only_b, Box::new(filtered.clone())),
        ],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    let queue = running.queue().clone();
    wait_until("flaky delivers all", || flaky.seqs().len() == 100).await;
    wait_until("only-b delivers b", || filtered.seqs().len() == 50).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.stats().await.expect("stats").depth > 0 {
        assert!(Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        flaky.calls.load(Ordering::SeqCst) >= 3,
        "two retries before success"
    );
    let mut seqs = flaky.seqs();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=100).collect::<Vec<_>>(),
        "each reading exactly once"
    );
    assert!(filtered
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .all(|d| d.1 == "b"));
    let s = queue.stats().await.expect("stats");
    let rejected = 100 - picky.seqs().len() as u64;
    assert!(rejected > 0);
    assert_eq!(
        s.dead_letters, rejected,
        "the rejected batch is kept, not dropped"
    );
    running.stop().await.expect("stops");
}

/// Regression: after `max_age` deleted the rows ahead of a forwarder, an empty peek was
/// followed by another at once (the committed id was already past the cursor): a spinning core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_forwarder_does_not_spin_after_rows_expired() {
    use crate::queue::{Queue, QueueHandle, QueueOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        max_age: Some(Duration::from_secs(60)),
        ..QueueOptions::default()
    };
    let mut q = Queue::open(&dir.path().join("q.db"), opts, &["up"]).expect("open");
    // Queued "at the build date" (the earliest age max_age trusts), expired an hour later.
    let old = crate::clock::build_floor();
    q.append_at(&[reading("a", 1), reading("a", 2)], old)
        .expect("append");
    assert_eq!(
        q.expire(old + Duration::from_secs(3600)).expect("expire"),
        2
    );
    let queue = QueueHandle::new(q);
    let (trigger, shutdown) = fieldgate_adapter::ShutdownTrigger::new();
    let fwd = tokio::spawn(crate::uplink::forwarder(
        queue.clone(),
        Box::new(Recorder::default()),
        uplink_opts("up"),
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peeks = queue.peek_count();
    assert!(
        peeks <= 3,
        "an idle forwarder peeked {peeks} times in 300 ms"
    );
    trigger.fire();
    fwd.await.expect("forwarder ends");
}

/// Regression: an adapter that ignores shutdown kept its reading sender alive in a detached
/// task, so the writer never saw the channel close and stop() never returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_even_if_an_adapter_ignores_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let stubborn: AdapterFactory = Box::new(|| {
        Ok(Box::new(FnAdapter(|ctx: AdapterContext| async move {
            ctx.readings.send(reading("s", 1)).await?;
            std::future::pending::<()>().await;
            Ok(())
        })) as Box<dyn Adapter>)
    });
    let parts = Parts {
        commands: None,
        adapters: vec![("s".into(), stubborn)],
        uplinks: vec![(uplink_opts("rec"), Box::new(Recorder::default()))],
    };
    let opts = PipelineOptions {
        adapter_grace: Duration::from_millis(100),
        writer_grace: Duration::from_millis(100),
        forwarder_grace: Duration::from_millis(100),
        ..fast()
    };
    let running = start_with(&cfg, parts, opts).await.expect("starts");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("stop() returns")
        .expect("stops");
    assert_eq!(
        report.committed, 1,
        "the reading sent before shutdown is committed"
    );
}

/// Fills the queue with `n` readings of adapter "old" before any pipeline runs.
fn backlog(dir: &Path, cfg: &Config, n: i64) {
    let _ = dir;
    let mut q =
        crate::queue::Queue::open(&cfg.queue_path(), cfg.queue_options(), &["rec"]).expect("open");
    let batch: Vec<_> = (0..n).map(|i| reading("old", i)).collect();
    q.append(&batch).expect("append");
    q.close().expect("close");
}

/// Emits `n` readings of adapter `source`, one per millisecond.
fn trickle(source: &'static str, n: i64) -> AdapterFactory {
    Box::new(move || {
        Ok(
            Box::new(FnAdapter(move |mut ctx: AdapterContext| async move {
                for i in 0..n {
                    ctx.readings.send(reading(source, i)).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                ctx.shutdown.fired().await;
                Ok(())
            })) as Box<dyn Adapter>,
        )
    })
}

async fn drain_run(drain: crate::uplink::Drain) -> (Vec<(u64, String)>, Vec<bool>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "flush_interval = \"5ms\"");
    backlog(dir.path(), &cfg, 3000);
    let rec = Recorder::default();
    let mut opts = uplink_opts("rec");
    opts.drain = drain;
    let parts = Parts {
        commands: None,
        adapters: vec![("new".into(), trickle("new", 200))],
        uplinks: vec![(opts, Box::new(rec.clone()))],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    wait_until("everything delivered", || rec.seqs().len() >= 3200).await;
    let queue = running.queue().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.stats().await.expect("stats").depth > 0 {
        assert!(
            Instant::now() < deadline,
            "the queue drains once the backlog is done"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await.expect("stops");
    let delivered = rec
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .map(|d| (d.0, d.1.clone()))
        .collect();
    let historical = rec.historical.lock().expect("lock").clone();
    (delivered, historical)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_sends_in_queue_order() {
    let (delivered, historical) = drain_run(crate::uplink::Drain::Fifo).await;
    let seqs: Vec<u64> = delivered.iter().map(|d| d.0).collect();
    assert_eq!(
        seqs,
        (1..=3200).collect::<Vec<_>>(),
        "strict order, each once"
    );
    assert!(historical.iter().all(|h| !h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_sends_new_readings_while_the_backlog_drains() {
    let (delivered, historical) =
        drain_run(crate::uplink::Drain::LiveFirst { backlog_rate: None }).await;
    let mut seqs: Vec<u64> = delivered.iter().map(|d| d.0).collect();
    let first_new = delivered
        .iter()
        .position(|d| d.1 == "new")
        .expect("new readings arrive");
    let last_old = delivered
        .iter()
        .rposition(|d| d.1 == "old")
        .expect("old readings arrive");
    assert!(
        first_new < last_old,
        "a new reading went out before the backlog was done"
    );
    for (d, h) in delivered.iter().zip(&historical) {
        assert_eq!(
            *h,
            d.1 == "old",
            "backlog is flagged historical, live is not: {d:?}"
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=3200).collect::<Vec<_>>(), "each reading once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_caps_the_backlog_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    backlog(dir.path(), &cfg, 500);
    // The file uplink reports bytes; ~200 bytes per reading, 100 per batch: ~20 KB a batch.
    let out = dir.path().join("out.jsonl");
    let mut opts = uplink_opts("rec");
    opts.drain = crate::uplink::Drain::LiveFirst {
        backlog_rate: Some(40_000),
    };
    let parts = Parts {
        commands: None,
        adapters: vec![],
        uplinks: vec![(
            opts,
            Box::new(crate::uplink::FileUplink::new(
                out.clone(),
                1 << 30,
                1,
                "gw".into(),
            )),
        )],
    };
    let started = Instant::now();
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    let queue = running.queue().clone();
    while queue.stats().await.expect("stats").depth > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the backlog drains"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let bytes = std::fs::metadata(&out).expect("out").len();
    running.stop().await.expect("stops");
    // All but the last batch wait their share of 40 KB/s.
    let floor = Duration::from_secs_f64((bytes as f64 - 25_000.0).max(0.0) / 40_000.0);
    assert!(
        took >= floor,
        "{bytes} bytes in {took:?}, faster than 40 KB/s allows ({floor:?})"
    );
}

/// The watchdog is pinged while the pipeline works, and not while it is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_only_while_the_pipeline_is_alive() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let parts = Parts {
        commands: None,
        adapters: vec![("a".into(), counter_adapter("a", 10))],
        uplinks: vec![(uplink_opts("rec"), Box::new(Recorder::default()))],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    let notify = crate::watchdog::SystemdNotify {
        socket: socket_path.display().to_string(),
        watchdog: Some(Duration::from_millis(200)),
    };
    let (stop, shutdown) = fieldgate_adapter::ShutdownTrigger::new();
    tokio::spawn(crate::watchdog::run(
        notify,
        Duration::from_millis(200),
        running.heartbeat(),
        running.queue().clone(),
        shutdown,
    ));
    // Counts the pings arriving during `d`.
    let count = |d: Duration| {
        let mut n = 0;
        let mut buf = [0u8; 64];
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if let Ok(len) = socket.recv(&mut buf) {
                assert_eq!(&buf[..len], b"WATCHDOG=1");
                n += 1;
            }
        }
        n
    };
    assert!(
        count(Duration::from_millis(600)) >= 3,
        "pinged every 100 ms while alive"
    );
    // Stall the pipeline on purpose: hold the queue's lock for a second.
    let queue = running.queue().clone();
    let stall = tokio::spawn(async move {
        queue
            .with(|_| {
                std::thread::sleep(Duration::from_millis(1200));
                Ok(())
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = count(Duration::from_millis(150)); // a ping already under way
    assert_eq!(
        count(Duration::from_millis(600)),
        0,
        "no pings while the queue is stuck"
    );
    stall.await.expect("stall ends").expect("ok");
    assert!(count(Duration::from_millis(800)) >= 2, "pings resume");
    stop.fire();
    running.stop().await.expect("stops");
}

/// The pipeline end to end with an injected clock: readings taken while the clock is wrong
/// are delivered with exact times once it synchronizes, or flagged after a reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_from_before_a_clock_sync_are_delivered_with_corrected_times() {
    use crate::clock::{build_floor, FakeClock};
    for reboot in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), "flush_interval = \"5ms\"");
        // 100 s after boot, a Pi without a real-time clock thinks it is 1970 + 100 s.
        let clock = FakeClock::new(
            UNIX_EPOCH + Duration::from_secs(100),
            Duration::from_secs(100),
            false,
            "boot-a",
        );
        let stamper = Arc::clone(&clock);
        let factory: AdapterFactory = Box::new(move || {
            let clock = Arc::clone(&stamper);
            Ok(
                Box::new(FnAdapter(move |mut ctx: AdapterContext| async move {
                    for i in 0..3 {
                        let ts = crate::clock::Clock::wall(&*clock);
                        ctx.readings
                            .send(Reading::new("a", "d", "p", ts, Value::I64(i)))
                            .await?;
                    }
                    ctx.shutdown.fired().await;
                    Ok(())
                })) as Box<dyn Adapter>,
            )
        });
        let rec = Recorder::default();
        rec.down.store(true, Ordering::SeqCst);
        let opts = PipelineOptions {
            clock: clock.clone(),
            ..fast()
        };
        let parts = Parts {
            commands: None,
            adapters: vec![("a".into(), factory)],
            uplinks: vec![(uplink_opts("rec"), Box::new(rec.clone()))],
        };
        let running = start_with(&cfg, parts, opts).await.expect("starts");
        let queue = running.queue().clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue.stats().await.expect("stats").appended < 3 {
            assert!(Instant::now() < deadline, "readings committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 60 s later NTP sets the clock to T (or, with `reboot`, a new boot syncs instead).
        let t = build_floor() + Duration::from_secs(86_400);
        clock.set(
            t,
            Duration::from_secs(160),
            true,
            if reboot { "boot-b" } else { "boot-a" },
        );
        tokio::time::sleep(Duration::from_millis(1500)).await; // the monitor ticks every second
        rec.down.store(false, Ordering::SeqCst);
        wait_until("delivery", || rec.items.lock().expect("lock").len() == 3).await;
        let items = rec.items.lock().expect("lock").clone();
        for q in &items {
            if reboot {
                assert!(q.unsynced, "flagged: its boot never synchronized");
                assert_eq!(
                    q.reading.ts,
                    build_floor(),
                    "and never before the build date"
                );
            } else {
                assert!(!q.unsynced);
                assert_eq!(
                    q.reading.ts,
                    t - Duration::from_secs(60),
                    "taken 60 s before the sync"
                );
            }
        }
        running.stop().await.expect("stops");
    }
}

/// A site whose `[[alerts]]` raise `hot` when `boiler/temp` goes above 50.
fn alert_config(dir: &Path) -> Config {
    config_with(
        dir,
        "flush_interval = \"5ms\"",
        "[[alerts]]\nname = \"hot\"\ndevice = \"boiler\"\npoint = \"temp\"\nhigh = 50.0\nseverity = \"critical\"",
    )
}

/// Sends one boiler reading of `temp`, then waits for shutdown.
fn boiler(temp: f64) -> AdapterFactory {
    Box::new(move || {
        Ok(
            Box::new(FnAdapter(move |mut ctx: AdapterContext| async move {
                let r = Reading::new(
                    "plant",
                    "boiler",
                    "temp",
                    SystemTime::now(),
                    Value::F64(temp),
                );
                ctx.readings.send(r).await?;
                ctx.shutdown.fired().await;
                Ok(())
            })) as Box<dyn Adapter>,
        )
    })
}

async fn alert_overtakes_backlog(drain: crate::uplink::Drain) {
    const BACKLOG: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = alert_config(dir.path());
    backlog(dir.path(), &cfg, BACKLOG as i64);
    let rec = Recorder::default();
    // The link is down while the alert is raised: 100,000 readings wait before it.
    rec.down.store(true, Ordering::SeqCst);
    let mut opts = uplink_opts("rec");
    opts.drain = drain;
    opts.batch_size = 1000;
    let parts = Parts {
        commands: None,
        adapters: vec![("plant".into(), boiler(72.5))],
        uplinks: vec![(opts, Box::new(rec.clone()))],
    };
    let running = start_with(&cfg, parts, fast()).await.expect("starts");
    let committed = running.queue().subscribe();
    wait_until("the alert and its reading are committed", || {
        *committed.borrow() >= BACKLOG + 2
    })
    .await;
    rec.down.store(false, Ordering::SeqCst);
    wait_until("everything delivered", || {
        rec.items.lock().expect("lock").len() as u64 >= BACKLOG + 2
    })
    .await;
    running.stop().await.expect("stops");
    let items = rec.items.lock().expect("lock").clone();
    // The first thing delivered is the alert, with the reading that raised it.
    let first = &items[0];
    let alert = first
        .alert
        .as_ref()
        .expect("the first delivery is the alert");
    assert_eq!(alert.rule.as_str(), "hot");
    assert_eq!(alert.state, crate::queue::AlertState::Raised);
    assert_eq!(alert.level, crate::queue::AlertLevel::High);
    assert_eq!(alert.threshold, 50.0);
    assert_eq!(alert.severity, crate::queue::Severity::Critical);
    assert_eq!(first.reading.device.as_str(), "boiler");
    assert_eq!(first.reading.value, Value::F64(72.5));
    assert_eq!(first.seq, BACKLOG + 1, "queued after the backlog");
    // Everything else arrives too, each reading once: the alert is not sent again when
    // the queue order reaches it.
    let mut seqs: Vec<u64> = items.iter().map(|q| q.seq).collect();
    assert_eq!(items.iter().filter(|q| q.alert.is_some()).count(), 1);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=BACKLOG + 2).collect::<Vec<_>>());
    let stats = Inspector::open(&cfg.queue_path())
        .expect("inspect")
        .stats()
        .expect("stats");
    assert_eq!(stats.depth, 0, "every reading acknowledged");
    assert_eq!(
        stats.uplinks[0].delivered,
        BACKLOG + 2,
        "the alert is counted as delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_behind_a_100k_backlog_is_delivered_first() {
    alert_overtakes_backlog(crate::uplink::Drain::Fifo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_overtakes_the_backlog_under_live_first_too() {
    alert_overtakes_backlog(crate::uplink::Drain::LiveFirst { backlog_rate: None }).await;
}

/// A wall clock that follows tokio's (paused) time from `base`.
#[derive(Debug)]
struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl crate::clock::Clock for TokioClock {
    fn wall(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
    fn since_boot(&self) -> Duration {
        Duration::from_secs(1000) + self.start.elapsed()
    }
    fn synchronized(&self) -> bool {
        true
    }
    fn boot_id(&self) -> String {
        "paused".into()
    }
}

#[tokio::test(start_paused = true)]
async fn rules_run_through_the_writer_on_paused_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = r#"
[[rules]]
device = "meter"
point = "flow"
aggregate = { window = "1m", functions = ["min", "max", "mean", "count"] }
[[rules]]
device = "tank"
point = "level"
deadband = 0.5
heartbeat = "5m"
"#;
    let cfg = config_with(dir.path(), "flush_interval = \"10ms\"", rules);
    // A whole minute, so the one-minute windows start at `base`.
    let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Arc::new(TokioClock {
        base,
        start: tokio::time::Instant::now(),
    });
    let at = |s: u64| base + Duration::from_secs(s);
    let adapter_clock = Arc::clone(&clock);
    let factory: AdapterFactory = Box::new(move || {
        let clock = Arc::clone(&adapter_clock);
        Ok(
            Box::new(FnAdapter(move |mut ctx: AdapterContext| async move {
                let flow = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 100.0, 200.0];
                let level = [1.0, 1.2, 1.6, 1.4, 2.2, 2.2, 2.2, 2.2, 2.2, 2.2];
                let start = tokio::time::Instant::now();
                for s in (0..=540u64).step_by(10) {
                    tokio::time::sleep_until(start + Duration::from_secs(s)).await;
                    let now = crate::clock::Clock::wall(&*clock);
                    if let Some(v) = flow.get((s / 10) as usize) {
                        ctx.readings
                            .send(Reading::new("site", "meter", "flow", now, Value::F64(*v)))
                            .await?;
                    }
                    if s % 60 == 0 {
                        let v = level[(s / 60) as usize];
                        ctx.readings
                            .send(Reading::new("site", "tank", "level", now, Value::F64(v)))
                            .await?;
                    }
                }
                ctx.shutdown.fired().await;
                Ok(())
            })) as Box<dyn Adapter>,
        )
    });
    let rec = Recorder::default();
    let parts = Parts {
        commands: None,
        adapters: vec![("site".into(), factory)],
        uplinks: vec![(uplink_opts("rec"), Box::new(rec.clone()))],
    };
    let opts = PipelineOptions {
        clock: clock.clone(),
        ..fast()
    };
    let running = start_with(&cfg, parts, opts).await.expect("starts");
    tokio::time::sleep(Duration::from_secs(600)).await;
    running.stop().await.expect("stops");
    let got: Vec<(SystemTime, String, Value)> = rec
        .items
        .lock()
        .expect("lock")
        .iter()
        .map(|q| {
            (
                q.reading.ts,
                format!("{}/{}", q.reading.device, q.reading.point),
                q.reading.value.clone(),
            )
        })
        .collect();
    let mut flow: Vec<_> = got
        .iter()
        .filter(|g| g.1.starts_with("meter/"))
        .cloned()
        .collect();
    flow.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let f = |s, p: &str, v| (at(s), format!("meter/{p}"), v);
    assert_eq!(
        flow,
        vec![
            f(0, "flow_count", Value::I64(6)),
            f(0, "flow_max", Value::F64(60.0)),
            f(0, "flow_mean", Value::F64(35.0)),
            f(0, "flow_min", Value::F64(10.0)),
            f(60, "flow_count", Value::I64(2)),
            f(60, "flow_max", Value::F64(200.0)),
            f(60, "flow_mean", Value::F64(150.0)),
            f(60, "flow_min", Value::F64(100.0)),
        ],
        "one aggregate per function per minute, stamped with the window's start; no raw flow"
    );
    let level: Vec<_> = got
        .iter()
        .filter(|g| g.1 == "tank/level")
        .map(|g| (g.0, g.2.clone()))
        .collect();
    assert_eq!(
        level,
        vec![
            (at(0), Value::F64(1.0)),   // the first always passes
            (at(120), Value::F64(1.6)), // moved 0.6 > 0.5 (1.2 at 60 s did not)
            (at(240), Value::F64(2.2)), // moved 0.6 (1.4 at 180 s did not)
            (at(540), Value::F64(2.2)), // unchanged, but 5 minutes since the last one
        ],
        "deadband and heartbeat"
    );
}

/// A run into a queue whose disk fills up (SQLite's `max_page_count` a few pages above the
/// database's size: writes then fail with `SQLITE_FULL`, as on `ENOSPC`), then gets room
/// again. The uplink is down while the disk is full, then delivers everything.
async fn disk_full_run(when_full: &str) -> (WriterReport, Vec<Queued>, crate::queue::QueueStats) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!("flush_interval = \"10ms\"\nbatch_size = 50\nwhen_full = \"{when_full}\""),
    );
    let rec = Recorder::default();
    rec.down.store(true, Ordering::SeqCst);
    let parts = Parts {
        commands: None,
        adapters: vec![("a".into(), counter_adapter("a", 20_000))],
        uplinks: vec![(uplink_opts("rec"), Box::new(rec.clone()))],
    };
    let opts = PipelineOptions {
        disk_clear_after: Duration::from_millis(300),
        ..fast()
    };
    let running = start_with(&cfg, parts, opts).await.expect("starts");
    // Both in one call: the writer cannot commit between them (a cap at the current size
    // would be a full disk too soon).
    let (size, cap) = running
        .queue
        .with(|q| {
            let size = q.set_page_limit(1)?;
            Ok((size, q.set_page_limit(size + 24)?))
        })
        .await
        .expect("cap");
    assert_eq!(cap, size + 24);
    let board = running.board();
    wait_until("the writer sees the disk full", || board.disk().0.is_some()).await;
    let path = cfg.queue_path();
    let stats = || {
        Inspector::open(&path)
            .expect("inspect")
            .stats()
            .expect("stats")
    };
    match when_full {
        "drop_oldest" => wait_until("oldest dropped for room", || stats().dropped_oldest > 0).await,
        "drop_newest" => wait_until("newest refused", || board.disk().1 > 0).await,
        _ => {
            let before = stats().appended;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                stats().appended,
                before,
                "block: nothing is appended while full"
            );
        }
    }
    assert!(
        board
            .snapshot(Ok(&stats()), None, true, false, SystemTime::now())
            .problems
            .iter()
            .any(|p| p.contains("disk is full")),
        "the status page says so"
    );
    // Space comes back (an operator deleted a file); the link comes back.
    running
        .queue
        .with(|q| q.set_page_limit(1 << 30))
        .await
        .expect("uncap");
    rec.down.store(false, Ordering::SeqCst);
    let items = Arc::clone(&rec.items);
    let cleared = move || {
        items.lock().expect("lock").iter().any(|q| {
            q.alert
                .as_ref()
                .is_some_and(|a| a.state == crate::queue::AlertState::Cleared)
        })
    };
    wait_until("the disk-full alert clears", cleared).await;
    wait_until("every reading delivered, dropped or refused", || {
        let delivered = rec
            .items
            .lock()
            .expect("lock")
            .iter()
            .filter(|q| q.alert.is_none())
            .count();
        delivered as u64 + stats().dropped_oldest + board.disk().1 >= 20_000
    })
    .await;
    assert!(board.disk().0.is_none(), "the page no longer shows it");
    let report = running.stop().await.expect("stops");
    let stats = stats();
    let conn = rusqlite::Connection::open(&path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "a full disk never corrupts the queue");
    let items = rec.items.lock().expect("lock").clone();
    (report, items, stats)
}

/// The disk-full alerts delivered, in order: (state, value).
fn disk_alerts(items: &[Queued]) -> Vec<(crate::queue::AlertState, Value)> {
    items
        .iter()
        .filter_map(|q| {
            let a = q.alert.as_ref()?;
            assert_eq!(a.rule.as_str(), "queue_disk_full");
            assert_eq!(a.severity, crate::queue::Severity::Critical);
            assert_eq!(q.reading.source.as_str(), "fieldgate");
            Some((a.state, q.reading.value.clone()))
        })
        .collect()
}

fn raised_then_cleared() -> Vec<(crate::queue::AlertState, Value)> {
    use crate::queue::AlertState::{Cleared, Raised};
    vec![(Raised, Value::Bool(true)), (Cleared, Value::Bool(false))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_the_oldest_raises_an_alert_and_recovers() {
    let (report, items, stats) = disk_full_run("drop_oldest").await;
    assert_eq!(disk_alerts(&items), raised_then_cleared());
    assert!(stats.dropped_oldest > 0);
    assert_eq!(report.refused, 0);
    assert_eq!(
        report.committed,
        20_000 + 2,
        "every reading and both alerts were committed (the oldest later dropped)"
    );
    let readings: Vec<u64> = items
        .iter()
        .filter(|q| q.alert.is_none())
        .map(|q| q.seq)
        .collect();
    assert_eq!(
        readings.len() as u64 + stats.dropped_oldest,
        20_000,
        "what was not dropped was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_newest_but_keeps_the_alert() {
    let (report, items, stats) = disk_full_run("drop_newest").await;
    assert_eq!(disk_alerts(&items), raised_then_cleared());
    assert!(report.refused > 0);
    assert_eq!(stats.dropped_oldest, 0);
    let readings = items.iter().filter(|q| q.alert.is_none()).count() as u64;
    assert_eq!(
        readings + report.refused,
        20_000,
        "refused or delivered, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_blocks_and_loses_nothing() {
    let (report, items, stats) = disk_full_run("block").await;
    assert_eq!(disk_alerts(&items), raised_then_cleared());
    assert_eq!((report.refused, stats.dropped_oldest), (0, 0));
    let values: Vec<Value> = items
        .iter()
        .filter(|q| q.alert.is_none())
        .map(|q| q.reading.value.clone())
        .collect();
    let want: Vec<Value> = (0..20_000).map(Value::I64).collect();
    assert_eq!(values, want, "every reading, in order");
}
