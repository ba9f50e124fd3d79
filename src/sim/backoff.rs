//! Reconnect back-off: exponential growth with "full jitter" (the delay is drawn
//! uniformly from zero up to the exponential bound), capped, so a fleet that lost
//! its hub at the same instant does not come back at the same instant.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with full jitter.
///
/// The bound for attempt `n` (0-based) is `min(cap, base * 2^n)`; [`Backoff::next_delay`]
/// draws uniformly from `[0, bound]`. [`Backoff::reset`] starts over after a healthy
/// connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failed attempts since the last reset; saturates, so the bound stays at `cap`.
    attempt: u32,
}

impl Backoff {
    /// A back-off starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The largest delay the next attempt may draw.
    pub fn bound(&self) -> Duration {
        // 2^20 * base is far beyond any sensible cap; stop doubling there.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Draws the delay before the next attempt and advances the exponent.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `base`: call after a connection proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn bound_doubles_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut rng = StdRng::seed_from_u64(7);
        let mut bounds = Vec::new();
        for _ in 0..10 {
            bounds.push(b.bound().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            bounds,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn delays_are_jittered_within_bound() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let bound = b.bound();
            let d = b.next_delay(&mut rng);
            assert!(d <= bound, "{d:?} > {bound:?}");
            assert!(d <= Duration::from_secs(10));
            seen.insert(d.as_millis());
        }
        // Full jitter: the draws are spread out, not pinned to the bound.
        assert!(seen.len() > 50, "only {} distinct delays", seen.len());
    }

    #[test]
    fn never_overflows_and_resets() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        for _ in 0..10_000 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(10));
        }
        assert_eq!(b.attempts(), 10_000);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.bound(), Duration::from_secs(1));
    }

    #[test]
    fn cap_below_base_is_raised_to_base() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.bound(), Duration::from_secs(2));
    }
}
