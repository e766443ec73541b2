//! The kernel's clocks: synchronization state (adjtimex), time since boot, boot id.
#![allow(unsafe_code)]

use std::time::Duration;

/// Whether the kernel considers the system clock synchronized (what `timedatectl` shows as
/// "System clock synchronized"): adjtimex(2) reports `STA_UNSYNC` clear and a non-error state.
pub fn synchronized() -> bool {
    // SAFETY: `timex` is plain old data for which all-zero bytes are a valid value, and with
    // `modes = 0` adjtimex(2) only reads the kernel's state into the struct we own; it keeps no
    // pointer to it after returning.
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        tx.modes = 0;
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// Time since boot, including suspend (CLOCK_BOOTTIME): monotonic within one boot, and the
/// same for every process of that boot.
pub fn since_boot() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The kernel's random id of this boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".to_string())
}

/// CLOCK_MONOTONIC in microseconds (what systemd's `MONOTONIC_USEC=` wants).
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000
}
