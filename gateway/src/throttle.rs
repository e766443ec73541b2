//! Rate-limited logging of repeated events (drops, refusals), so that a full queue logs a
//! line every few seconds with a count, not one per batch.

use std::time::{Duration, Instant};

/// Accumulates counts and says when to log them.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl Throttle {
    /// At most one log line per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            pending: 0,
        }
    }

    /// Records `n` more events at `now`; returns the count to log if a line is due.
    pub fn hit(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.pending += n;
        match self.last {
            Some(last) if now.duration_since(last) < self.every => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_event_then_sums_until_the_interval_passed() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(5, t0), Some(5));
        assert_eq!(t.hit(3, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit(2, t0 + Duration::from_secs(9)), None);
        assert_eq!(t.hit(1, t0 + Duration::from_secs(10)), Some(6));
    }
}
