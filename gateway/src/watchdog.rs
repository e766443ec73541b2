//! systemd readiness and watchdog notifications (`sd_notify`), driven by the pipeline's own
//! heartbeat.
//!
//! Under systemd with `Type=notify`, the gateway sends `READY=1` once the pipeline runs, and
//! with `WatchdogSec=` it sends `WATCHDOG=1` every half period — but only while the pipeline is
//! alive: the queue writer has beaten recently (it beats after every commit and on a timer of
//! its own loop, so a writer stuck in SQLite stops beating) and a probe through the queue
//! (its lock and the blocking pool) answers in time. A stuck gateway therefore stops pinging
//! and systemd restarts it. Not under systemd (no `NOTIFY_SOCKET`), nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldgate_adapter::Shutdown;
use tokio::time::Instant;

use crate::queue::QueueHandle;

/// Where and how often to notify systemd, from the environment systemd sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdNotify {
    /// `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    pub socket: String,
    /// `WATCHDOG_USEC`, when the watchdog is on (and meant for this process).
    pub watchdog: Option<Duration>,
}

impl SystemdNotify {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `env` (passed in by
    /// `main`). `None` when not started by systemd.
    pub fn from_env(env: &[(String, String)], pid: u32) -> Option<SystemdNotify> {
        let get = |k: &str| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        let socket = get("NOTIFY_SOCKET").filter(|s| !s.is_empty())?.to_string();
        let for_us = get("WATCHDOG_PID").is_none_or(|p| p.parse::<u32>().ok() == Some(pid));
        let watchdog = get("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Some(SystemdNotify { socket, watchdog })
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
    pub fn notify(&self, message: &str) -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = self.socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        } else {
            sock.send_to(message.as_bytes(), PathBuf::from(&self.socket))?;
        }
        Ok(())
    }
}

/// Beats of the pipeline's parts, read by the watchdog.
#[derive(Debug)]
pub struct Heartbeat {
    base: Instant,
    writer_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            base: Instant::now(),
            writer_ms: AtomicU64::new(0),
        })
    }

    /// The queue writer is alive.
    pub fn writer_beat(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.writer_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the writer last beat.
    pub fn writer_age(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_millis(
            self.writer_ms.load(Ordering::Relaxed),
        ))
    }
}

/// How often the writer beats when it has nothing to do.
pub const WRITER_BEAT: Duration = Duration::from_millis(500);

/// Pings the watchdog every half `period` while the pipeline is alive, until shutdown.
pub async fn run(
    notify: SystemdNotify,
    period: Duration,
    heartbeat: Arc<Heartbeat>,
    queue: QueueHandle,
    mut shutdown: Shutdown,
) {
    let every = (period / 2).max(Duration::from_millis(10));
    let mut stalled = false;
    loop {
        tokio::select! {
            () = shutdown.fired() => return,
            () = tokio::time::sleep(every) => {}
        }
        let writer_ok = heartbeat.writer_age() < period;
        let queue_ok = tokio::time::timeout(every, queue.stats())
            .await
            .is_ok_and(|r| r.is_ok());
        if writer_ok && queue_ok {
            if stalled {
                tracing::info!("pipeline responsive again; pinging the watchdog");
                stalled = false;
            }
            if let Err(e) = notify.notify("WATCHDOG=1") {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
        } else if !stalled {
            tracing::error!(writer_ok, queue_ok, "pipeline stalled: not pinging the watchdog (systemd will restart fieldgate if this lasts)");
            stalled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_systemds_environment() {
        let env = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(SystemdNotify::from_env(&env(&[]), 7), None);
        assert_eq!(
            SystemdNotify::from_env(
                &env(&[
                    ("NOTIFY_SOCKET", "/run/n"),
                    ("WATCHDOG_USEC", "30000000"),
                    ("WATCHDOG_PID", "7")
                ]),
                7
            ),
            Some(SystemdNotify {
                socket: "/run/n".into(),
                watchdog: Some(Duration::from_secs(30))
            })
        );
        let other_pid = SystemdNotify::from_env(
            &env(&[
                ("NOTIFY_SOCKET", "@n"),
                ("WATCHDOG_USEC", "1000"),
                ("WATCHDOG_PID", "8"),
            ]),
            7,
        );
        assert_eq!(
            other_pid.map(|n| n.watchdog),
            Some(None),
            "a watchdog meant for another process is ignored"
        );
    }
}
