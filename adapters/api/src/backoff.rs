//! Jittered exponential backoff: uplink retries, adapter restarts, reconnects inside adapters.

use std::time::Duration;

/// Delays that double from `min` up to `max`, each drawn uniformly from its upper half
/// ("equal jitter"), so that many gateways recovering from one outage do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The same with a fixed seed, for reproducible tests.
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            rng: fastrand::Rng::with_seed(seed),
            ..Backoff::new(min, max)
        }
    }

    /// How many failures in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .checked_mul(1u32 << self.attempt.min(30))
            .map_or(self.max, |d| d.min(self.max));
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.f64())
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(1), 7);
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            let d = b.next_delay().as_millis();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d} not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
