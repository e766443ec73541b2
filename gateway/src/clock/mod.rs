//! Trustworthy timestamps on a box without a real-time clock.
//!
//! A Raspberry Pi boots with a wrong wall clock (1970, or the last saved time) until NTP
//! reaches it. Readings stamped in that window would carry wrong times. So:
//!
//! * the queue writer asks the [`Clock`] at every commit whether the system clock is
//!   synchronized; readings committed while it is not (and any reading stamped before the
//!   binary was built) are stored as *unsynced*, with the boot id and their time since boot;
//! * the [`monitor`] task notices when the clock becomes synchronized and re-stamps the
//!   unsynced readings of this boot from their time since boot — exact, since both clocks are
//!   read together — before they are sent; it also logs wall-clock jumps;
//! * readings that cannot be re-stamped (from a boot that never synchronized) go out flagged
//!   `"clock":"unsynced"`, with a timestamp no earlier than the build date — never silently
//!   with a wrong time.
//!
//! [`Clock`] is injectable: tests drive a [`FakeClock`].

pub mod sys;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_adapter::Shutdown;

use crate::queue::QueueHandle;

/// When this binary was built; no reading carries an earlier timestamp.
pub fn build_floor() -> SystemTime {
    let secs: u64 = env!("FG_BUILD_UNIX_SECS").parse().unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The clocks the gateway reads.
pub trait Clock: Send + Sync + Debug {
    /// The wall clock.
    fn wall(&self) -> SystemTime;
    /// Time since boot (monotonic within a boot, shared by its processes).
    fn since_boot(&self) -> Duration;
    /// Whether the wall clock is synchronized (NTP or similar).
    fn synchronized(&self) -> bool;
    /// An id of the current boot.
    fn boot_id(&self) -> String;
}

/// The real clocks: `SystemTime`, CLOCK_BOOTTIME, adjtimex(2), the kernel's boot id.
#[derive(Debug)]
pub struct SystemClock {
    boot_id: String,
}

impl SystemClock {
    /// The system's clocks.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock {
            boot_id: sys::boot_id(),
        })
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn since_boot(&self) -> Duration {
        sys::since_boot()
    }
    fn synchronized(&self) -> bool {
        sys::synchronized()
    }
    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }
}

/// A clock for tests: set its readings by hand.
#[derive(Debug)]
pub struct FakeClock {
    state: Mutex<(SystemTime, Duration, bool, String)>,
}

impl FakeClock {
    /// A clock at `wall`, `since_boot` after boot `boot`, synchronized or not.
    pub fn new(
        wall: SystemTime,
        since_boot: Duration,
        synchronized: bool,
        boot: &str,
    ) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            state: Mutex::new((wall, since_boot, synchronized, boot.to_string())),
        })
    }

    /// Sets every reading.
    pub fn set(&self, wall: SystemTime, since_boot: Duration, synchronized: bool, boot: &str) {
        if let Ok(mut s) = self.state.lock() {
            *s = (wall, since_boot, synchronized, boot.to_string());
        }
    }

    /// Moves both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.0 += d;
            s.1 += d;
        }
    }

    fn get(&self) -> (SystemTime, Duration, bool, String) {
        self.state.lock().map(|s| s.clone()).unwrap_or((
            UNIX_EPOCH,
            Duration::ZERO,
            false,
            String::new(),
        ))
    }
}

impl Clock for FakeClock {
    fn wall(&self) -> SystemTime {
        self.get().0
    }
    fn since_boot(&self) -> Duration {
        self.get().1
    }
    fn synchronized(&self) -> bool {
        self.get().2
    }
    fn boot_id(&self) -> String {
        self.get().3
    }
}

/// The clocks read together at one commit, to place readings on the boot's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockStamp {
    /// The boot.
    pub boot: String,
    /// The wall clock at the commit.
    pub wall: SystemTime,
    /// Time since boot at the commit.
    pub since_boot: Duration,
    /// Whether the wall clock was synchronized.
    pub synchronized: bool,
}

impl ClockStamp {
    /// Reads `clock`.
    pub fn now(clock: &dyn Clock) -> ClockStamp {
        ClockStamp {
            boot: clock.boot_id(),
            wall: clock.wall(),
            since_boot: clock.since_boot(),
            synchronized: clock.synchronized(),
        }
    }

    /// Whether a reading stamped `ts` can be trusted.
    pub fn trusts(&self, ts: SystemTime) -> bool {
        self.synchronized && ts >= build_floor()
    }

    /// Time since boot minus wall time, in microseconds: a reading stamped `ts` by this wall
    /// clock lies at `ts + offset` on the boot's timeline, and a point of the timeline maps to
    /// `point - offset` on this wall clock.
    pub fn offset_us(&self) -> i64 {
        i64::try_from(self.since_boot.as_micros()).unwrap_or(i64::MAX)
            - crate::queue::micros(self.wall)
    }
}

/// Watches the clock every second: logs wall-clock jumps, and once the clock is synchronized
/// re-stamps this boot's unsynced readings in the queue.
pub async fn monitor(clock: Arc<dyn Clock>, queue: QueueHandle, mut shutdown: Shutdown) {
    let mut last = ClockStamp::now(&*clock);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if !last.synchronized {
        tracing::warn!("the system clock is not synchronized: readings are queued with their time since boot and re-stamped once it is");
    }
    loop {
        tokio::select! {
            () = shutdown.fired() => return,
            _ = tick.tick() => {}
        }
        let now = ClockStamp::now(&*clock);
        if now.boot == last.boot {
            let mono = now.since_boot.saturating_sub(last.since_boot).as_secs_f64();
            let wall = match now.wall.duration_since(last.wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            if (wall - mono).abs() > 1.0 {
                tracing::warn!(
                    jump_seconds = wall - mono,
                    synchronized = now.synchronized,
                    "the wall clock jumped"
                );
            }
        }
        if now.synchronized {
            match queue.restamp(now.clone()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    readings = n,
                    "clock synchronized: re-stamped readings taken before"
                ),
                Err(e) => tracing::error!(error = %e, "cannot re-stamp unsynced readings"),
            }
            if !last.synchronized {
                tracing::info!("the system clock is synchronized");
            }
        }
        last = now;
    }
}
