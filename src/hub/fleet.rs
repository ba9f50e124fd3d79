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
//! Memory is bounded in bytes. A window keeps the telemetry's protobuf encoding only
//! (a `Bytes` handle on the buffer the fan-out already made, not a copy, and not the
//! fan-out's other cached forms), at most `history_len` messages, within an equal
//! share of `history_max_bytes` among all series: a series that grows past its share
//! drops its oldest messages at once, and every window is trimmed to the current share
//! at each statistics tick, so the total exceeds the budget only by what arrives
//! within one tick. A device keeps at most `history_series_per_device` series
//! (further categories are neither kept nor listed), for the devices seen within
//! `forget_after`.
//!
//! Counters are not durable: they start at zero when the hub starts.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::{Bytes, BytesMut};

use super::{DashboardHandle, DeviceInfo, Encoded, Filter, Pattern, WireFormat};
use crate::proto::{envelope::Body, DeviceStats, Envelope, FleetStats};

/// A `History` envelope carries telemetry up to this many protobuf bytes; longer
/// replays go out in several. Under 64 KiB, the message limit of the hub's own
/// client side, so any client that takes the hub's largest telemetry takes these.
pub const HISTORY_CHUNK_BYTES: usize = 60 * 1024;

/// The first byte of an encoded `Envelope{telemetry}` and of a `History.telemetry`
/// element: field 1, length-delimited.
const TELEMETRY_KEY: u8 = 1 << 3 | 2;

/// `Envelope{history: History{telemetry: <elements>, more}}` as bytes.
fn history_envelope(elements: &[u8], more: bool) -> Arc<Encoded> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let history_len = elements.len() + if more { 2 } else { 0 };
    let mut out = BytesMut::with_capacity(history_len + 6);
    encode_key(HISTORY_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(history_len as u64, &mut out);
    out.extend_from_slice(elements);
    if more {
        prost::encoding::bool::encode(2, &true, &mut out);
    }
    Encoded::from_binary(out.freeze())
}

/// `Envelope.history`'s field number (telehub.proto).
const HISTORY_FIELD: u32 = 15;

/// What one kept message costs besides its bytes (the `Bytes` handle and the shared
/// buffer's header), so that a budget of tiny messages is still a real bound.
const ENTRY_OVERHEAD: usize = 64;

/// How much history the hub keeps and replays (from `[dashboard]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Messages kept per series; 0 keeps none.
    pub len: usize,
    /// Messages one Subscribe replays at most.
    pub replay_max: usize,
    /// Series kept per device.
    pub series_per_device: usize,
    /// Bytes kept in all, shared equally by the series.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            len: 120,
            replay_max: 20_000,
            series_per_device: 16,
            max_bytes: 32 << 20,
        }
    }
}

/// One series' recent telemetry: encoded `Envelope{telemetry}`s, oldest first.
#[derive(Default)]
struct Window {
    /// Each with its [`Fleet::cut`] sequence number.
    messages: VecDeque<(u64, Bytes)>,
    /// Accounted size of `messages` (see [`ENTRY_OVERHEAD`]).
    bytes: usize,
    /// When its newest message was accepted.
    last_ms: u64,
}

impl Window {
    /// Drops the oldest messages until at most `len` messages and `share` bytes
    /// remain; returns the bytes freed.
    fn trim(&mut self, len: usize, share: usize) -> usize {
        let mut freed = 0;
        while self.messages.len() > len || (self.bytes > share && !self.messages.is_empty()) {
            if let Some((_, m)) = self.messages.pop_front() {
                let size = m.len() + ENTRY_OVERHEAD;
                self.bytes -= size;
                freed += size;
            }
        }
        freed
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
    series: Mutex<BTreeMap<String, Window>>,
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

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
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
    /// Series of every record, for each series' share of `limits.max_bytes`.
    series_total: AtomicUsize,
    /// Accounted bytes of every window.
    kept_bytes: AtomicUsize,
    /// Numbers kept messages in the order they were kept (see [`Fleet::cut`]).
    kept_seq: AtomicU64,
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

    /// Remembers a device from the registry as offline (at startup, so the fleet
    /// view lists the devices seen before a restart), unless already known.
    pub fn remember_offline(&self, info: Arc<DeviceInfo>, last_seen_ms: u64) {
        super::write(&self.records)
            .entry(info.id.clone())
            .or_insert_with(|| Arc::new(Record::new(info, last_seen_ms)));
    }

    pub fn offline(&self, device_id: &str, now: u64) {
        if let Some(r) = super::read(&self.records).get(device_id) {
            r.online.store(false, Ordering::Relaxed);
            r.last_seen_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Devices remembered.
    pub fn devices(&self) -> usize {
        super::read(&self.records).len()
    }

    /// Bytes the history holds (accounted as the budget counts them).
    pub fn history_bytes(&self) -> usize {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    fn share(&self) -> usize {
        self.limits.max_bytes / self.series_total.load(Ordering::Relaxed).max(1)
    }

    /// Counts an accepted telemetry message and keeps it in its series' window.
    pub fn accepted(&self, record: &Record, category: &str, msg: &Encoded, now: u64) {
        record.messages.fetch_add(1, Ordering::Relaxed);
        record.last_seen_ms.store(now, Ordering::Relaxed);
        let mut series = lock(&record.series);
        if !series.contains_key(category) {
            if series.len() >= self.limits.series_per_device {
                return;
            }
            series.insert(category.to_owned(), Window::default());
            self.series_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(window) = series.get_mut(category) else {
            return;
        };
        window.last_ms = now;
        if self.limits.len == 0 {
            return;
        }
        let bytes = msg.message(WireFormat::Protobuf).payload().clone();
        let size = bytes.len() + ENTRY_OVERHEAD;
        // Numbered before the device session publishes it: see `cut`.
        let seq = self.kept_seq.fetch_add(1, Ordering::SeqCst);
        window.messages.push_back((seq, bytes));
        window.bytes += size;
        let freed = window.trim(self.limits.len, self.share());
        // Add before subtracting: the counter never wraps below zero.
        self.kept_bytes.fetch_add(size, Ordering::Relaxed);
        self.kept_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// A slow dashboard's outbox dropped this (older) telemetry message to make room:
    /// counted against the device that sent it.
    pub fn dropped(&self, msg: &Encoded) {
        if let Some(Body::Telemetry(t)) = &msg.envelope().body {
            if let Some(r) = super::read(&self.records).get(&t.device_id) {
                r.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The point that separates a new subscription's history from its live
    /// telemetry. Taken under the index write lock, after the subscription is in the
    /// index: a message kept before it may also have been published live (an
    /// overlap clients drop), a message kept after it is published after the
    /// subscription exists, so it arrives live and is left out of the history. A
    /// client thus never sees history newer than its `Subscribed`.
    pub fn cut(&self) -> u64 {
        self.kept_seq.load(Ordering::SeqCst)
    }

    /// The recent telemetry, kept before `cut`, that a new subscription to
    /// `patterns` with `filter` would have received: per series oldest first, at most `limits.len` per series and
    /// `limits.replay_max` in all (wide subscriptions get fewer per series; past
    /// `replay_max` series, the latest message of the most recently active ones), as
    /// `History` envelopes of about [`HISTORY_CHUNK_BYTES`] each.
    pub fn history(&self, patterns: &[Pattern], filter: &Filter, cut: u64) -> Vec<Arc<Encoded>> {
        if self.limits.len == 0 || self.limits.replay_max == 0 {
            return Vec::new();
        }
        let records: Vec<Arc<Record>> = super::read(&self.records).values().cloned().collect();
        // (device, category, last_ms, messages)
        let mut matched: Vec<(String, String, u64, Vec<Bytes>)> = Vec::new();
        for record in records {
            let info = record.info();
            if !filter.matches(&info.id, &info.tags) {
                continue;
            }
            for (category, window) in lock(&record.series).iter() {
                if !patterns.iter().any(|p| p.matches(category)) {
                    continue;
                }
                let kept: Vec<Bytes> = window
                    .messages
                    .iter()
                    .take_while(|(seq, _)| *seq < cut)
                    .map(|(_, bytes)| bytes.clone())
                    .collect();
                if !kept.is_empty() {
                    matched.push((info.id.clone(), category.clone(), window.last_ms, kept));
                }
            }
        }
        if matched.len() > self.limits.replay_max {
            matched.sort_by_key(|m| std::cmp::Reverse(m.2));
            matched.truncate(self.limits.replay_max);
        }
        matched.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let per_series = (self.limits.replay_max / matched.len().max(1)).max(1);

        // Each kept message is `Envelope{telemetry: T}` = field 1, length, T: the very
        // bytes of one `History.telemetry` element (also field 1). A History is thus
        // the kept bytes back to back, wrapped as Envelope field 15: no decoding,
        // no copies of the telemetry as structs.
        let mut chunks = Vec::new();
        let mut chunk = BytesMut::new();
        for bytes in matched
            .iter()
            .flat_map(|(_, _, _, window)| &window[window.len().saturating_sub(per_series)..])
        {
            if bytes.first() != Some(&TELEMETRY_KEY) {
                continue;
            }
            if chunk.len() + bytes.len() > HISTORY_CHUNK_BYTES && !chunk.is_empty() {
                chunks.push(history_envelope(&chunk, true));
                chunk.clear();
            }
            chunk.extend_from_slice(bytes);
        }
        if !chunk.is_empty() {
            chunks.push(history_envelope(&chunk, false));
        }
        chunks
    }

    /// Starts (with a full snapshot) or stops sending fleet statistics to a
    /// dashboard. Asking again while watching changes nothing.
    pub fn watch(&self, handle: &Arc<DashboardHandle>, on: bool, now: u64) {
        let mut ticks = lock(&self.ticks);
        if !on {
            ticks.watchers.remove(&handle.id);
            return;
        }
        if ticks.watchers.contains_key(&handle.id) {
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
    /// trims every window to its current share of the budget, recomputes every
    /// device's statistics and sends the changes to watchers. Returns the
    /// FleetStats sent (None: nothing changed).
    pub fn tick(&self, now: u64, forget_after_ms: u64) -> Option<Arc<Encoded>> {
        let stale = |r: &Record| {
            !r.online.load(Ordering::Relaxed)
                && now.saturating_sub(r.last_seen_ms.load(Ordering::Relaxed)) >= forget_after_ms
        };
        // The write lock (which device connects wait for) only when there is
        // something to forget.
        let mut forgotten = Vec::new();
        if super::read(&self.records).values().any(|r| stale(r)) {
            let mut records = super::write(&self.records);
            let ids: Vec<String> = records
                .iter()
                .filter(|(_, r)| stale(r))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(r) = records.remove(&id) {
                    let series = lock(&r.series);
                    self.series_total.fetch_sub(series.len(), Ordering::Relaxed);
                    let bytes: usize = series.values().map(|w| w.bytes).sum();
                    self.kept_bytes.fetch_sub(bytes, Ordering::Relaxed);
                }
                forgotten.push(id);
            }
        }
        let records: Vec<(String, Arc<Record>)> = super::read(&self.records)
            .iter()
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();

        let share = self.share();
        for (_, record) in &records {
            let freed: usize = lock(&record.series)
                .values_mut()
                .map(|w| w.trim(self.limits.len, share))
                .sum();
            self.kept_bytes.fetch_sub(freed, Ordering::Relaxed);
        }

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
        // A device forgotten above that reconnected since is in `changed`, not gone.
        forgotten.retain(|id| !changed.iter().any(|s| &s.device_id == id));
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
    use crate::{hub::Hub, metrics::Metrics, proto::Telemetry};

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
            max_bytes: 1 << 20,
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
        fleet.dropped(&telemetry("d", "a", 1));
        let tick = fleet.tick(3_000, 60_000).unwrap();
        let s = &stats_of(&tick).devices[0];
        assert_eq!(s.messages, 12);
        assert_eq!(s.rate, 6.0, "12 messages in 2 s");
        assert_eq!((s.rate_limited, s.dropped), (1, 1));
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
        let h = fleet.history(
            &[Pattern::parse("a").unwrap()],
            &Filter::default(),
            u64::MAX,
        );
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
            .history(
                &[Pattern::parse("*").unwrap()],
                &Filter::default(),
                u64::MAX
            )
            .is_empty());
    }

    #[test]
    fn the_byte_budget_is_shared_by_the_series() {
        // Each test message is 11 bytes encoded, 75 as accounted.
        let size = telemetry("d0", "a", 20)
            .message(WireFormat::Protobuf)
            .payload()
            .len()
            + ENTRY_OVERHEAD;
        assert_eq!(size, 75);
        let limits = HistoryLimits {
            len: 10,
            replay_max: 1000,
            series_per_device: 16,
            max_bytes: 4 * 3 * size + 10,
        };
        let fleet = Fleet::new(limits);
        let kept = |fleet: &Fleet| -> usize {
            fleet
                .history(
                    &[Pattern::parse("*").unwrap()],
                    &Filter::default(),
                    u64::MAX,
                )
                .iter()
                .map(|m| match &m.envelope().body {
                    Some(Body::History(h)) => h.telemetry.len(),
                    _ => 0,
                })
                .sum()
        };
        let mut records = Vec::new();
        for d in 0..5 {
            let info = Arc::new(DeviceInfo {
                id: format!("d{d}"),
                tags: Default::default(),
            });
            records.push(fleet.online(&info, 0));
        }
        for seq in 20..40 {
            fleet.accepted(&records[0], "a", &telemetry("d0", "a", seq), 1);
        }
        assert_eq!(kept(&fleet), 10, "alone, a series keeps history_len");
        // Four series share the budget: 3 messages each, d0 shrinking as it
        // publishes again.
        for seq in 20..40 {
            for (i, r) in records.iter().enumerate().take(4) {
                fleet.accepted(r, "a", &telemetry(&format!("d{i}"), "a", seq), 1);
            }
        }
        assert_eq!(kept(&fleet), 12);
        assert_eq!(fleet.history_bytes(), 12 * size);
        // A fifth series: the next tick trims the idle ones to the new share (2 each).
        fleet.accepted(&records[4], "a", &telemetry("d4", "a", 20), 1);
        assert_eq!(kept(&fleet), 13);
        fleet.tick(2, 60_000);
        assert_eq!(kept(&fleet), 9, "4 × 2 + d4's one");
        assert_eq!(fleet.history_bytes(), 9 * size);
    }

    #[test]
    fn an_assembled_history_is_exactly_what_prost_would_encode() {
        let kept: Vec<Arc<Encoded>> = (1..=3).map(|seq| telemetry("d", "a", seq)).collect();
        let elements: Vec<u8> = kept
            .iter()
            .flat_map(|m| m.message(WireFormat::Protobuf).payload().to_vec())
            .collect();
        for more in [false, true] {
            let want = Envelope {
                body: Some(Body::History(crate::proto::History {
                    telemetry: kept
                        .iter()
                        .map(|m| match &m.envelope().body {
                            Some(Body::Telemetry(t)) => t.clone(),
                            _ => unreachable!(),
                        })
                        .collect(),
                    more,
                })),
            };
            let got = history_envelope(&elements, more);
            assert_eq!(
                got.message(WireFormat::Protobuf).payload().as_ref(),
                prost::Message::encode_to_vec(&want).as_slice()
            );
            assert_eq!(got.envelope(), &want);
        }
    }

    #[test]
    fn a_wide_replay_takes_the_latest_of_the_most_recently_active_series() {
        let limits = HistoryLimits {
            len: 10,
            replay_max: 2,
            series_per_device: 16,
            max_bytes: 1 << 20,
        };
        let fleet = Fleet::new(limits);
        for (d, at) in [("d0", 5), ("d1", 9), ("d2", 7)] {
            let info = Arc::new(DeviceInfo {
                id: d.into(),
                tags: Default::default(),
            });
            let r = fleet.online(&info, 0);
            for seq in 1..=3 {
                fleet.accepted(&r, "a", &telemetry(d, "a", seq), at);
            }
        }
        let h = fleet.history(
            &[Pattern::parse("*").unwrap()],
            &Filter::default(),
            u64::MAX,
        );
        let Some(Body::History(h)) = &h[0].envelope().body else {
            panic!()
        };
        let got: Vec<(&str, u64)> = h
            .telemetry
            .iter()
            .map(|t| (t.device_id.as_str(), t.seq))
            .collect();
        assert_eq!(got, [("d1", 3), ("d2", 3)]);
    }

    #[test]
    fn dropped_telemetry_is_counted_against_the_device_that_sent_it() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let dash = hub.register_dashboard(2);
        hub.subscribe(&dash, &[Pattern::parse("*").unwrap()], Filter::default())
            .run(&hub.fleet, WireFormat::Protobuf);
        let device = |id: &str| {
            Arc::new(DeviceInfo {
                id: id.into(),
                tags: Default::default(),
            })
        };
        let (fast, slow) = (device("fast"), device("slow"));
        let _sessions = (
            hub.device_online(fast.clone()),
            hub.device_online(slow.clone()),
        );
        // The queue holds 2: fast's two messages fill it, slow's two push them out.
        for seq in 1..=2 {
            hub.publish(&fast, "a", &telemetry("fast", "a", seq));
        }
        for seq in 1..=2 {
            hub.publish(&slow, "a", &telemetry("slow", "a", seq));
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
        let dropped: Vec<(&str, u64)> = full
            .devices
            .iter()
            .map(|d| (d.device_id.as_str(), d.dropped))
            .collect();
        assert_eq!(dropped, [("fast", 2), ("slow", 0)]);
        // Watching again sends no second snapshot.
        hub.fleet.watch(&watcher, true, 3);
        watcher.outbox.drain(&mut out);
        assert!(out.is_empty());
    }
}
