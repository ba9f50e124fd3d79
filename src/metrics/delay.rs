//! A histogram of delays that a hot path can feed without a lock.
//!
//! prometheus-client's `Histogram` takes a mutex on every observation: fine for
//! acks and heartbeats, not for every write to every dashboard, where sessions on
//! all worker threads would queue on one lock. Here an observation is two relaxed
//! atomic adds (its bucket and the sum), and the bucket is found by arithmetic:
//! the bounds double from `base`, so the index is a bit length, not a search.
//!
//! Invariant: a scrape reads each counter once and derives `count` from the
//! buckets it read, so `_count` always equals the `+Inf` bucket; `_sum` may be a
//! few observations ahead of or behind them (it is read separately).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Finite buckets: `base`, `2 base`, ... `2^(BUCKETS-1) base`, then `+Inf`.
const BUCKETS: usize = 18;

#[derive(Clone, Debug)]
pub struct DelayHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    base_ns: u64,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl DelayHistogram {
    /// Buckets from `base` (at least 1 ns), doubling, 18 of them: from 50 µs that
    /// reaches ~6.5 s.
    pub fn new(base: Duration) -> Self {
        let base_ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self(Arc::new(Inner {
            base_ns,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let inner = &self.0;
        inner.counts[bucket(ns, inner.base_ns)].fetch_add(1, Relaxed);
        inner.sum_ns.fetch_add(ns, Relaxed);
    }
}

/// The first bucket whose bound (`base << i`) is at least `ns`; `BUCKETS` for `+Inf`.
fn bucket(ns: u64, base_ns: u64) -> usize {
    if ns <= base_ns {
        return 0;
    }
    // ns in (base << (i-1), base << i] exactly when (ns - 1) / base has i bits.
    let bits = (u64::BITS - ((ns - 1) / base_ns).leading_zeros()) as usize;
    bits.min(BUCKETS)
}

/// From 50 µs to ~6.5 s: a dashboard write's delay, from a local socket write to
/// a dashboard stalled for seconds.
impl Default for DelayHistogram {
    fn default() -> Self {
        Self::new(Duration::from_micros(50))
    }
}

impl TypedMetric for DelayHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DelayHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = inner
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = c.load(Relaxed);
                count += n;
                let bound = match i {
                    BUCKETS => f64::INFINITY,
                    i => inner.base_ns.saturating_mul(1 << i) as f64 / 1e9,
                };
                (bound, n)
            })
            .collect();
        let sum = inner.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, registry::Registry};

    #[test]
    fn bounds_double_from_base_and_each_value_lands_in_its_bucket() {
        let base = 50_000;
        assert_eq!(bucket(0, base), 0);
        assert_eq!(bucket(50_000, base), 0);
        assert_eq!(bucket(50_001, base), 1);
        assert_eq!(bucket(100_000, base), 1);
        assert_eq!(bucket(100_001, base), 2);
        assert_eq!(bucket(200_000, base), 2);
        assert_eq!(bucket(200_001, base), 3);
        assert_eq!(bucket(base << 17, base), 17);
        assert_eq!(bucket((base << 17) + 1, base), BUCKETS);
        assert_eq!(bucket(u64::MAX, base), BUCKETS);
        for ns in [1, 49_999, 77_777, 1_000_000, 3_000_000_000] {
            let i = bucket(ns, base);
            assert!(ns <= base << i, "{ns} above bucket {i}");
            assert!(
                i == 0 || ns > base << (i - 1),
                "{ns} belongs below bucket {i}"
            );
        }
    }

    #[test]
    fn encodes_as_a_prometheus_histogram() {
        let h = DelayHistogram::new(Duration::from_micros(50));
        let mut registry = Registry::default();
        registry.register_with_unit(
            "x_delay",
            "test",
            prometheus_client::registry::Unit::Seconds,
            h.clone(),
        );
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(60));
        h.observe(Duration::from_secs(3600));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE x_delay_seconds histogram"), "{text}");
        assert!(text.contains("x_delay_seconds_count 3"), "{text}");
        assert!(
            text.contains("x_delay_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_delay_seconds_bucket{le=\"0.0001\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_delay_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("x_delay_seconds_sum 3600.00007"), "{text}");
    }
}
