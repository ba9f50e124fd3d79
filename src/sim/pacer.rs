//! Client-side pacing to the rate limit the hub announces in `Welcome`, so a
//! well-behaved device flushing its backlog after a reconnect stays under the
//! limit instead of having its messages refused.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// Paces below the hub's announced limit: 98 % of its rate and half its burst,
    /// leaving headroom for clock differences between the two buckets.
    pub fn below_limit(rate_per_second: u32, burst: u32, now: Instant) -> Option<Pacer> {
        if rate_per_second == 0 {
            return None;
        }
        let rate = f64::from(rate_per_second) * 0.98;
        let burst = (f64::from(burst) / 2.0).max(1.0);
        Some(Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub fn next_available(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64((missing / self.rate).min(60.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_rate_after_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::below_limit(100, 20, t0).unwrap();
        let burst = (0..100).take_while(|_| p.try_take(t0)).count();
        assert_eq!(burst, 10);
        let next = p.next_available(t0);
        assert!(next > t0 && next <= t0 + Duration::from_millis(11));
        // One simulated second later: ~98 more, capped at the burst of 10.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).take_while(|_| p.try_take(t1)).count(), 10);
        assert!(Pacer::below_limit(0, 0, t0).is_none());
    }
}
