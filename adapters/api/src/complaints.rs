//! [`Complaints`]: garbage from the field logged at most once a minute per kind, with a count
//! of what was not logged, so a chattering line cannot flood the log (or wear the SD card).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Name;

/// How often one kind of complaint is logged at most.
pub const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);

/// Logs each kind of garbage at most once a minute, with how many were not logged.
#[derive(Debug, Default)]
pub struct Complaints {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Complaints {
    /// Logs `message()` at warn level unless a complaint of this `kind` was logged in the
    /// last minute; then only counts it.
    pub fn note(&mut self, adapter: &Name, kind: &'static str, message: impl FnOnce() -> String) {
        let now = Instant::now();
        match self.last.get_mut(kind) {
            Some((at, quiet)) if now.duration_since(*at) < COMPLAINT_INTERVAL => *quiet += 1,
            entry => {
                let quiet = entry.map_or(0, |(_, q)| *q);
                tracing::warn!(adapter = %adapter, kind, similar_since_last_log = quiet, "{}", message());
                self.last.insert(kind, (now, 0));
            }
        }
    }
}
