//! What the hub remembers of every device it has seen: counters for the fleet view
//! (`WatchFleet` / `FleetStats`) and the recent window of each series (device,
//! category) that a `Subscribe` replays as `History`, so charts fill at once.
//!
//! One [`Record`] per device id, kept across its connections (a reconnect continues
//! the same counters) until the device has been offline for `forget_after`.
//! Counters are atomics bumped by the device's own session. The history sits behind
//! the record's own mutex, which only that device's session and subscribing
//! dashboards take, each for a few pointer copies: publishing never contends with
//! other devices, and no lock is held across `.await`.
//!
//! Memory is bounded: at most `history_max_messages` messages in all, shared fairly
//! (a series keeps at most `history_max_messages / series`, and never more than
//! `history_len`, but always its latest message), at most
//! `history_series_per_device` series per device (further categories are neither
//! kept nor listed), for the devices seen within `forget_after`. The messages are
//! the `Arc<Encoded>` fan-out already built, so keeping them copies nothing.
//!
//! Counters are not durable: they start at zero when the hub starts.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use super::{DashboardHandle, DeviceInfo, Encoded, Filter, Pattern};
use crate::proto::{envelope::Body, DeviceStats, Envelope, FleetStats, History, Telemetry};

/// Telemetry messages per `History` envelope: replays go out in chunks of this many.
pub const HISTORY_CHUNK: usize = 500;

/// How much history the hub keeps and replays (from `[dashboard]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Messages kept per series; 0 keeps none.
    pub len: usize,
    /// Messages one Subscribe replays at most.
    pub replay_max: usize,
    /// Series kept per device.
    pub series_per_device: usize,
    /// Messages kept in all, shared by the series.
    pub max_messages: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            len: 120,
            replay_max: 20_000,
            series_per_device: 16,
            max_messages: 100_000,
        }
    }
}

/// One device as the fleet view and the history know it.
pub struct Record {
    /// The device's latest identity (its tags can change between connections).
    info: Mutex<Arc<DeviceInfo>>,
    online: AtomicBool,
    /// When its latest telemetry was accepted, or it connected or disconnected.
    last_seen_ms: AtomicU64,
    messages: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    /// Recent telemetry per category, oldest first.
    series: Mutex<BTreeMap<String, VecDeque<Arc<Encoded>>>>,
}

impl Record {
    fn new(info: Arc<DeviceInfo>, now_ms: u64) -> Self {
        Self {
            info: Mutex::new(info),
            online: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms),
            messages: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            series: Mutex::default(),
        }
    }

    pub fn info(&self) -> Arc<DeviceInfo> {
        lock(&self.info).clone()
    }

    /// Counts an accepted telemetry message and keeps it in its series' window.
    /// `series_total` counts the series of every device (see [`Fleet`]).
    fn accepted(
        &self,
        category: &str,
        msg: &Arc<Encoded>,
        limits: &HistoryLimits,
        series_total: &AtomicUsize,
        now: u64,
    ) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.last_seen_ms.store(now, Ordering::Relaxed);
        let mut series = lock(&self.series);
        if !series.contains_key(category) {
            if series.len() >= limits.series_per_device {
                return;
            }
            series.insert(category.to_owned(), VecDeque::new());
            series_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(window) = series.get_mut(category) else {
            return;
        };
        if limits.len == 0 {
            return;
        }
        // This series' fair share of the budget (at least its latest message).
        let share = limits.max_messages / series_total.load(Ordering::Relaxed).max(1);
        let keep = limits.len.min(share).max(1);
        while window.len() >= keep {
            window.pop_front();
        }
        window.push_back(msg.clone());
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries of this device's telemetry that slow dashboards dropped.
    pub fn dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn stats(&self, rate: f64) -> DeviceStats {
        let info = self.info();
        DeviceStats {
            device_id: info.id.clone(),
            online: self.online.load(Ordering::Relaxed),
            tags: info
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            last_seen_ms: self.last_seen_ms.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            rate,
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            categories: lock(&self.series).keys().cloned().collect(),
        }
    }
}

/// The last statistics sent for a device, to send only changes.
struct Reported {
    stats: DeviceStats,
    /// `messages` at the previous tick, for the rate.
    messages: u64,
}

#[derive(Default)]
struct Ticks {
    reported: HashMap<String, Reported>,
    /// Dashboards receiving FleetStats. Changed only under this same lock, so a
    /// new watcher's full snapshot and the next delta can never overlap or gap.
    watchers: HashMap<u64, Arc<DashboardHandle>>,
    last_tick_ms: u64,
}

/// Every device record, and the fleet statistics ticker's state.
#[derive(Default)]
pub struct Fleet {
    records: std::sync::RwLock<HashMap<String, Arc<Record>>>,
    /// Series of every record, for each series' share of `limits.max_messages`.
    series_total: AtomicUsize,
    ticks: Mutex<Ticks>,
    pub limits: HistoryLimits,
}

impl Fleet {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The record for a device that just connected (created on first sight).
    /// Under the records write lock, so the ticker cannot forget it meanwhile.
    pub fn online(&self, info: &Arc<DeviceInfo>, now: u64) -> Arc<Record> {
        let mut records = super::write(&self.records);
        let record = records
            .entry(info.id.clone())
            .or_insert_with(|| Arc::new(Record::new(info.clone(), now)))
            .clone();
        *lock(&record.info) = info.clone();
        record.online.store(true, Ordering::Relaxed);
        record.last_seen_ms.store(now, Ordering::Relaxed);
        record
    }

    /// Counts an accepted telemetry message and keeps it in the device's history.
    pub fn accepted(&self, record: &Record, category: &str, msg: &Arc<Encoded>, now: u64) {
        record.accepted(category, msg, &self.limits, &self.series_total, now);
    }

    pub fn offline(&self, device_id: &str, now: u64) {
        if let Some(r) = super::read(&self.records).get(device_id) {
            r.online.store(false, Ordering::Relaxed);
            r.last_seen_ms.store(now, Ordering::Relaxed);
        }
    }

    pub fn devices(&self) -> usize {
        super::read(&self.records).len()
    }

    /// The recent telemetry a new subscription to `patterns` with `filter` would
    /// have received: per series oldest first, at most `limits.len` per series and
    /// `limits.replay_max` in all (wide subscriptions get fewer per series), as
    /// `History` envelopes of at most [`HISTORY_CHUNK`] messages.
    pub fn history(&self, patterns: &[Pattern], filter: &Filter) -> Vec<Arc<Encoded>> {
        if self.limits.len == 0 {
            return Vec::new();
        }
        let records: Vec<Arc<Record>> = super::read(&self.records).values().cloned().collect();
        let mut matched: Vec<(String, String, Vec<Arc<Encoded>>)> = Vec::new();
        for record in records {
            let info = record.info();
            if !filter.matches(&info.id, &info.tags) {
                continue;
            }
            for (category, window) in lock(&record.series).iter() {
                if !window.is_empty() && patterns.iter().any(|p| p.matches(category)) {
                    matched.push((
                        info.id.clone(),
                        category.clone(),
                        window.iter().cloned().collect(),
                    ));
                }
            }
        }
        if matched.is_empty() {
            return Vec::new();
        }
        matched.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let per_series = (self.limits.replay_max / matched.len()).max(1);
        let telemetry: Vec<Telemetry> = matched
            .iter()
            .flat_map(|(_, _, window)| window[window.len().saturating_sub(per_series)..].iter())
            .filter_map(|m| match &m.envelope().body {
                Some(Body::Telemetry(t)) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let chunks = telemetry.len().div_ceil(HISTORY_CHUNK);
        telemetry
            .chunks(HISTORY_CHUNK)
            .enumerate()
            .map(|(i, chunk)| {
                Encoded::new(Envelope {
                    body: Some(Body::History(History {
                        telemetry: chunk.to_vec(),
                        more: i + 1 < chunks,
                    })),
                })
            })
            .collect()
    }

    /// Starts (with a full snapshot) or stops sending fleet statistics to a dashboard.
    pub fn watch(&self, handle: &Arc<DashboardHandle>, on: bool, now: u64) {
        let mut ticks = lock(&self.ticks);
        if !on {
            ticks.watchers.remove(&handle.id);
            return;
        }
        let mut devices: Vec<DeviceStats> =
            ticks.reported.values().map(|r| r.stats.clone()).collect();
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        handle.outbox.push_control(Encoded::new(Envelope {
            body: Some(Body::FleetStats(FleetStats {
                at_ms: now,
                full: true,
                devices,
                forgotten: Vec::new(),
            })),
        }));
        ticks.watchers.insert(handle.id, handle.clone());
    }

    pub fn unwatch(&self, dashboard_id: u64) {
        lock(&self.ticks).watchers.remove(&dashboard_id);
    }

    /// One statistics interval: forgets devices offline for `forget_after_ms`,
    /// recomputes every device's statistics and sends the changes to watchers.
    /// Returns the FleetStats sent (None: nothing changed).
    pub fn tick(&self, now: u64, forget_after_ms: u64) -> Option<Arc<Encoded>> {
        let forgotten: Vec<String> = {
            let mut records = super::write(&self.records);
            let stale: Vec<String> = records
                .iter()
                .filter(|(_, r)| {
                    !r.online.load(Ordering::Relaxed)
                        && now.saturating_sub(r.last_seen_ms.load(Ordering::Relaxed))
                            >= forget_after_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &stale {
                if let Some(r) = records.remove(id) {
                    let series = lock(&r.series).len();
                    self.series_total.fetch_sub(series, Ordering::Relaxed);
                }
            }
            stale
        };
        let records: Vec<(String, Arc<Record>)> = super::read(&self.records)
            .iter()
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();

        let mut ticks = lock(&self.ticks);
        let elapsed_s = now.saturating_sub(ticks.last_tick_ms) as f64 / 1000.0;
        ticks.last_tick_ms = now;
        let mut changed = Vec::new();
        for (id, record) in records {
            let messages = record.messages.load(Ordering::Relaxed);
            let previous = ticks.reported.get(&id).map(|r| r.messages).unwrap_or(0);
            let rate = if elapsed_s > 0.0 {
                // One decimal: steady devices do not change every tick by noise.
                (((messages.saturating_sub(previous)) as f64 / elapsed_s) * 10.0).round() / 10.0
            } else {
                0.0
            };
            let stats = record.stats(rate);
            let same = ticks.reported.get(&id).is_some_and(|r| r.stats == stats);
            if !same {
                changed.push(stats.clone());
            }
            ticks.reported.insert(id, Reported { stats, messages });
        }
        let forgotten: Vec<String> = forgotten
            .into_iter()
            .filter(|id| ticks.reported.remove(id).is_some())
            .collect();
        if changed.is_empty() && forgotten.is_empty() {
            return None;
        }
        changed.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let msg = Encoded::new(Envelope {
            body: Some(Body::FleetStats(FleetStats {
                at_ms: now,
                full: false,
                devices: changed,
                forgotten,
            })),
        });
        for w in ticks.watchers.values() {
            w.outbox.push_control(msg.clone());
        }
        Some(msg)
    }
}

// Every guarded value here is consistent after any single operation, so a panic
// elsewhere (poisoning) leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hub::Hub, metrics::Metrics};

    fn telemetry(device: &str, category: &str, seq: u64) -> Arc<Encoded> {
        Encoded::new(Envelope {
            body: Some(Body::Telemetry(Telemetry {
                device_id: device.into(),
                category: category.into(),
                seq,
                ..Default::default()
            })),
        })
    }

    fn stats_of(msg: &Encoded) -> &FleetStats {
        match &msg.envelope().body {
            Some(Body::FleetStats(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ticks_report_changes_rates_and_forget_long_offline_devices() {
        let limits = HistoryLimits {
            len: 2,
            replay_max: 100,
            series_per_device: 2,
            max_messages: 100,
        };
        let fleet = Fleet::new(limits);
        let info = Arc::new(DeviceInfo {
            id: "d".into(),
            tags: Default::default(),
        });
        let record = fleet.online(&info, 1_000);
        assert!(
            fleet.tick(1_000, 60_000).is_some(),
            "a new device is a change"
        );
        for seq in 1..=10 {
            fleet.accepted(&record, "a", &telemetry("d", "a", seq), 1_500);
        }
        fleet.accepted(&record, "b", &telemetry("d", "b", 11), 1_500);
        fleet.accepted(&record, "c", &telemetry("d", "c", 12), 1_500);
        record.rate_limited();
        record.dropped(3);
        let tick = fleet.tick(3_000, 60_000).unwrap();
        let s = &stats_of(&tick).devices[0];
        assert_eq!(s.messages, 12);
        assert_eq!(s.rate, 6.0, "12 messages in 2 s");
        assert_eq!((s.rate_limited, s.dropped), (1, 3));
        assert_eq!(
            s.categories,
            ["a", "b"],
            "series beyond the cap are not kept"
        );
        // Nothing changed but the rate, which fell to 0; then nothing at all.
        assert_eq!(
            stats_of(&fleet.tick(4_000, 60_000).unwrap()).devices[0].rate,
            0.0
        );
        assert!(fleet.tick(5_000, 60_000).is_none());

        // The window keeps the newest `len` messages per series.
        let h = fleet.history(&[Pattern::parse("a").unwrap()], &Filter::default());
        let Some(Body::History(h)) = &h[0].envelope().body else {
            panic!()
        };
        assert_eq!(
            h.telemetry.iter().map(|t| t.seq).collect::<Vec<_>>(),
            [9, 10]
        );

        fleet.offline("d", 6_000);
        assert!(!stats_of(&fleet.tick(6_000, 60_000).unwrap()).devices[0].online);
        let gone = fleet.tick(66_000, 60_000).unwrap();
        assert_eq!(stats_of(&gone).forgotten, ["d"]);
        assert_eq!(fleet.devices(), 0);
        assert_eq!(fleet.series_total.load(Ordering::Relaxed), 0);
        assert!(fleet
            .history(&[Pattern::parse("*").unwrap()], &Filter::default())
            .is_empty());
    }

    #[test]
    fn the_message_budget_is_shared_by_the_series() {
        let limits = HistoryLimits {
            len: 10,
            replay_max: 1000,
            series_per_device: 16,
            max_messages: 12,
        };
        let fleet = Fleet::new(limits);
        let kept = |fleet: &Fleet, p: &str| -> usize {
            fleet
                .history(&[Pattern::parse(p).unwrap()], &Filter::default())
                .iter()
                .map(|m| match &m.envelope().body {
                    Some(Body::History(h)) => h.telemetry.len(),
                    _ => 0,
                })
                .sum()
        };
        let mut records = Vec::new();
        for d in 0..4 {
            let info = Arc::new(DeviceInfo {
                id: format!("d{d}"),
                tags: Default::default(),
            });
            records.push(fleet.online(&info, 0));
        }
        for seq in 0..20 {
            fleet.accepted(&records[0], "a", &telemetry("d0", "a", seq), 1);
        }
        assert_eq!(kept(&fleet, "*"), 10, "alone, a series keeps history_len");
        // Four series share 12: each keeps 3, d0 shrinking as it publishes again.
        for seq in 20..40 {
            for (i, r) in records.iter().enumerate() {
                fleet.accepted(r, "a", &telemetry(&format!("d{i}"), "a", seq), 1);
            }
        }
        assert_eq!(kept(&fleet, "*"), 12);
    }

    #[test]
    fn publishing_counts_what_slow_dashboards_dropped() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let dash = hub.register_dashboard(1);
        hub.subscribe(&dash, &[Pattern::parse("*").unwrap()], Filter::default());
        let info = Arc::new(DeviceInfo {
            id: "d".into(),
            tags: Default::default(),
        });
        let session = hub.device_online(info.clone());
        for seq in 1..=3 {
            let out = hub.publish(&info, "a", &telemetry("d", "a", seq));
            session.record.dropped(out.dropped);
        }
        hub.fleet.tick(1, 60_000);
        let watcher = hub.register_dashboard(16);
        hub.fleet.watch(&watcher, true, 2);
        let mut out = Vec::new();
        watcher.outbox.drain(&mut out);
        let full = out
            .iter()
            .find_map(|m| match &m.envelope().body {
                Some(Body::FleetStats(f)) => Some(f.clone()),
                _ => None,
            })
            .unwrap();
        assert!(full.full);
        assert_eq!(
            full.devices[0].dropped, 2,
            "queue of 1: two of three dropped"
        );
    }
}
