//! The router: subscriptions, fan-out, presence.
//!
//! Design choice: shared state behind short locks, not a router task. A device
//! session publishes by looking up the subscription [`index::Index`] (read lock) and
//! pushing one `Arc<Encoded>` into each matching dashboard's [`outbox::Outbox`]
//! (a short mutex each). No message crosses a channel to a router task and back, so
//! fan-out costs one pointer copy per subscriber and the two cores both route.
//! Locks are never held across `.await`; the hub does no I/O. Dashboards drain
//! their own outboxes and write to their sockets (see `session::dashboard`).
//!
//! Every message is encoded once ([`Encoded`]): the protobuf bytes and, lazily, the
//! JSON text and the compressed and framed variants inside `ws::SharedMessage`
//! are computed once and shared by every subscriber.

pub mod category;
pub mod fleet;
pub mod index;
pub mod outbox;
pub mod presence;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::{
    metrics::Metrics,
    proto::{envelope::Body, Envelope, Presence},
    ws::SharedMessage,
};

pub use category::Pattern;
pub use fleet::{HistoryLimits, Record};
pub use index::Filter;
pub use outbox::{Drained, Outbox, Pushed};
pub use presence::DeviceInfo;

/// How a dashboard wants its envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// Binary frames, one protobuf `Envelope` each (`telehub.v1`).
    Protobuf,
    /// Text frames, the proto3 JSON mapping (`telehub.v1.json`).
    Json,
}

/// One envelope, encoded at most once per wire format.
pub struct Encoded {
    /// Set at construction, or decoded from `binary` on first use (an envelope
    /// assembled as bytes, see [`Encoded::from_binary`]).
    envelope: OnceLock<Envelope>,
    binary: SharedMessage,
    json: OnceLock<SharedMessage>,
}

impl Encoded {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        let binary = SharedMessage::binary(Bytes::from(prost::Message::encode_to_vec(&envelope)));
        Arc::new(Self {
            envelope: OnceLock::from(envelope),
            binary,
            json: OnceLock::new(),
        })
    }

    /// An envelope the hub encoded itself, as bytes (e.g. a `History` assembled
    /// from kept telemetry without decoding it); decoded only if a JSON client or
    /// [`Encoded::envelope`] needs it.
    pub fn from_binary(bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            envelope: OnceLock::new(),
            binary: SharedMessage::binary(bytes),
            json: OnceLock::new(),
        })
    }

    pub fn envelope(&self) -> &Envelope {
        self.envelope.get_or_init(|| {
            // Only the hub's own encodings get here, so decoding cannot fail; an
            // empty envelope would be the harmless answer if it did.
            prost::Message::decode(self.binary.payload().clone()).unwrap_or_default()
        })
    }

    /// The message for `format`; the JSON text is produced on first use only.
    pub fn message(&self, format: WireFormat) -> &SharedMessage {
        match format {
            WireFormat::Protobuf => &self.binary,
            WireFormat::Json => self
                .json
                .get_or_init(|| SharedMessage::text(to_json(self.envelope()))),
        }
    }
}

/// The proto3 JSON mapping of an envelope.
///
/// pbjson writes doubles as JSON numbers, so a NaN or infinite reading (a failed
/// sensor reports NaN) would come out as `null`; proto3 JSON spells them as the
/// strings "NaN", "Infinity" and "-Infinity", which this patches in. Only telemetry
/// (or history) carrying such a reading takes the slower path.
fn to_json(envelope: &Envelope) -> String {
    use crate::proto::reading::Value as Reading;
    let patch_of = |prefix: String, t: &crate::proto::Telemetry| {
        t.readings
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| match r.value {
                Some(Reading::Number(n)) if !n.is_finite() => {
                    Some((format!("{prefix}/readings/{i}/number"), n))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let patch: Vec<(String, f64)> = match &envelope.body {
        Some(Body::Telemetry(t)) => patch_of("/telemetry".into(), t),
        Some(Body::History(h)) => h
            .telemetry
            .iter()
            .enumerate()
            .flat_map(|(j, t)| patch_of(format!("/history/telemetry/{j}"), t))
            .collect(),
        _ => Vec::new(),
    };
    // Generated serde impls of plain data cannot fail to serialize.
    if patch.is_empty() {
        return serde_json::to_string(envelope).unwrap_or_default();
    }
    let mut value = serde_json::to_value(envelope).unwrap_or_default();
    for (pointer, n) in patch {
        let spelled = if n.is_nan() {
            "NaN"
        } else if n > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        if let Some(slot) = value.pointer_mut(&pointer) {
            *slot = serde_json::Value::String(spelled.into());
        }
    }
    value.to_string()
}

/// The hub's side of one dashboard connection.
pub struct DashboardHandle {
    id: u64,
    pub outbox: Outbox,
    /// How many patterns this dashboard holds in the index (changed under the index
    /// write lock). Only dashboards with more than one can match a message twice,
    /// so only they pay for de-duplication in [`Hub::publish`].
    patterns: AtomicUsize,
}

impl DashboardHandle {
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A subscription's `History`, still to be gathered (see [`Hub::subscribe`]).
/// Gathering a large replay takes milliseconds of CPU, so sessions run it off the
/// async workers (`spawn_blocking`). Dropped without running, it releases the
/// reserved place empty: the dashboard then simply gets no history.
#[must_use = "until it runs or is dropped, the dashboard's later messages are held back"]
pub struct HistoryJob {
    handle: Arc<DashboardHandle>,
    reservation: Option<outbox::Reservation>,
    /// Messages kept from here on arrive live (see `fleet::Fleet::cut`).
    cut: u64,
    patterns: Vec<Pattern>,
    filter: Filter,
}

impl HistoryJob {
    /// Gathers the history into the reserved place, encoded for `format` here so
    /// that the dashboard's session only writes it.
    pub fn run(mut self, fleet: &fleet::Fleet, format: WireFormat) {
        let history = fleet.history(&self.patterns, &self.filter, self.cut);
        for m in &history {
            m.message(format);
        }
        if let Some(r) = self.reservation.take() {
            self.handle.outbox.fill(r, history);
        }
    }
}

impl Drop for HistoryJob {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.handle.outbox.fill(r, Vec::new());
        }
    }
}

/// What one [`Hub::publish`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub delivered: u64,
    pub dropped: u64,
}

/// The device-side handle returned by [`Hub::device_online`].
pub struct DeviceSession {
    pub id: u64,
    /// Notified when a newer connection takes this device id over.
    pub kick: Arc<Notify>,
    /// The device's counters and history.
    pub record: Arc<Record>,
}

pub struct Hub {
    index: RwLock<index::Index>,
    /// Every connected dashboard, for presence announcements.
    dashboards: RwLock<HashMap<u64, Arc<DashboardHandle>>>,
    /// Dashboards watching notification progress.
    watchers: RwLock<HashMap<u64, Arc<DashboardHandle>>>,
    devices: Mutex<presence::Registry>,
    /// Every device seen lately: statistics and recent telemetry.
    pub fleet: fleet::Fleet,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_history(metrics, HistoryLimits::default())
    }

    pub fn with_history(metrics: Arc<Metrics>, history: HistoryLimits) -> Arc<Self> {
        Arc::new(Self {
            index: RwLock::default(),
            dashboards: RwLock::default(),
            watchers: RwLock::default(),
            devices: Mutex::default(),
            fleet: fleet::Fleet::new(history),
            next_id: AtomicU64::new(1),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn devices(&self) -> MutexGuard<'_, presence::Registry> {
        // Registry operations are single map calls; a poisoned lock is still consistent.
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a dashboard and queues a presence snapshot of every online device.
    ///
    /// Lock order everywhere: `devices`, then `dashboards`. Holding `devices` while
    /// the dashboard joins means no presence change can fall between its snapshot
    /// and its registration, and announcements reach every dashboard in the order
    /// the changes happened.
    pub fn register_dashboard(&self, queue_len: usize) -> Arc<DashboardHandle> {
        let handle = Arc::new(DashboardHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            outbox: Outbox::new(queue_len, queue_len.max(1024)),
            patterns: AtomicUsize::new(0),
        });
        let devices = self.devices();
        for o in devices.online.values() {
            handle.outbox.push_latest(
                &presence_key(&o.info.id),
                presence_message(&o.info, true, o.since_ms),
            );
        }
        write(&self.dashboards).insert(handle.id, handle.clone());
        drop(devices);
        handle
    }

    /// Forgets a dashboard and every subscription it held.
    pub fn unregister_dashboard<'a>(
        &self,
        handle: &DashboardHandle,
        patterns: impl IntoIterator<Item = &'a Pattern>,
    ) {
        {
            let mut index = write(&self.index);
            for p in patterns {
                index.remove(p, handle.id);
            }
            handle.patterns.store(0, Ordering::Relaxed);
        }
        write(&self.dashboards).remove(&handle.id);
        write(&self.watchers).remove(&handle.id);
        self.fleet.unwatch(handle.id);
        handle.outbox.close();
    }

    /// Starts or stops sending notification progress to a dashboard.
    pub fn watch_notifications(&self, handle: &Arc<DashboardHandle>, on: bool) {
        let mut watchers = write(&self.watchers);
        if on {
            watchers.insert(handle.id, handle.clone());
        } else {
            watchers.remove(&handle.id);
        }
    }

    /// Queues a notification progress update to every watching dashboard: the
    /// latest value per notification, never dropped (see `outbox`).
    pub fn announce_progress(&self, notification_id: &str, msg: Arc<Encoded>) {
        let key = progress_key(notification_id);
        for d in read(&self.watchers).values() {
            d.outbox.push_latest(&key, msg.clone());
        }
    }

    /// Adds (or replaces the filter of) `handle`'s subscriptions to `patterns`, all
    /// under one index lock and sharing one filter. Returns the job that gathers
    /// the matching series' recent telemetry (`History`) for the dashboard.
    ///
    /// No gap, and history first: a place in the dashboard's outbox is reserved
    /// under the index lock, so live telemetry of the new subscriptions queues
    /// behind it; the history is gathered later, off the lock, but only from what
    /// was kept before the subscription (`fleet::Fleet::cut`). A device session
    /// keeps a message before publishing it, so a message is either published
    /// before the subscription exists (and is in the history) or queued live
    /// behind the reservation (and, if it was kept just before the cut, in the
    /// history too: clients keep only telemetry newer than what they hold, see
    /// `History` in the proto).
    pub fn subscribe(
        &self,
        handle: &Arc<DashboardHandle>,
        patterns: &[Pattern],
        filter: Filter,
    ) -> HistoryJob {
        let history_filter = filter.clone();
        let filter = (!filter.is_empty()).then(|| Arc::new(filter));
        let (reservation, cut) = {
            let mut index = write(&self.index);
            for p in patterns {
                let added = index.insert(
                    p,
                    index::Entry {
                        dashboard: handle.clone(),
                        filter: filter.clone(),
                    },
                );
                if added {
                    handle.patterns.fetch_add(1, Ordering::Relaxed);
                }
            }
            (handle.outbox.reserve(), self.fleet.cut())
        };
        HistoryJob {
            handle: handle.clone(),
            reservation: Some(reservation),
            cut,
            patterns: patterns.to_vec(),
            filter: history_filter,
        }
    }

    pub fn unsubscribe(&self, handle: &DashboardHandle, patterns: &[Pattern]) {
        let mut index = write(&self.index);
        for p in patterns {
            if index.remove(p, handle.id) {
                handle.patterns.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Fans `msg` out to every dashboard subscribed to `category`. Never waits:
    /// a full dashboard queue drops its oldest telemetry instead.
    pub fn publish(&self, device: &DeviceInfo, category: &str, msg: &Arc<Encoded>) -> Published {
        let mut out = Published::default();
        SEEN.with_borrow_mut(|seen| {
            seen.clear();
            read(&self.index).for_each_match(category, |entry| {
                if let Some(f) = &entry.filter {
                    if !f.matches(&device.id, &device.tags) {
                        return;
                    }
                }
                let d = &entry.dashboard;
                // A dashboard with overlapping patterns (`env.*` and `*`) gets each
                // message once. Only such dashboards are remembered, so the list
                // stays short whatever the number of subscribers.
                if d.patterns.load(Ordering::Relaxed) > 1 {
                    if seen.contains(&d.id) {
                        return;
                    }
                    seen.push(d.id);
                }
                match d.outbox.push_telemetry(msg.clone()) {
                    Pushed::Queued => out.delivered += 1,
                    Pushed::DroppedOldest(evicted) => {
                        out.delivered += 1;
                        out.dropped += 1;
                        // Counted against the device whose message was lost.
                        self.fleet.dropped(&evicted);
                    }
                    Pushed::Closed => {}
                }
            });
        });
        self.metrics.deliveries.inc_by(out.delivered);
        if out.dropped > 0 {
            self.metrics.dropped_deliveries.inc_by(out.dropped);
        }
        out
    }

    /// Marks a device online (announcing it if it was offline) and takes over any
    /// older connection of the same device.
    pub fn device_online(&self, info: Arc<DeviceInfo>) -> DeviceSession {
        let since_ms = now_ms();
        let mut devices = self.devices();
        // Under the devices lock, like going offline: the record's online flag
        // follows the registry's order of connects and disconnects.
        let session = DeviceSession {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kick: Arc::new(Notify::new()),
            record: self.fleet.online(&info, since_ms),
        };
        let connected = devices.connect(presence::Online {
            info: info.clone(),
            session: session.id,
            kick: session.kick.clone(),
            since_ms,
        });
        if connected.came_online {
            // Announced under the devices lock: see `register_dashboard`.
            self.announce(&info.id, presence_message(&info, true, since_ms));
        }
        session
    }

    /// Marks a device offline unless a newer connection took it over.
    pub fn device_offline(&self, device_id: &str, session: &DeviceSession) {
        let mut devices = self.devices();
        if let Some(info) = devices.disconnect(device_id, session.id) {
            let now = now_ms();
            self.fleet.offline(device_id, now);
            self.announce(&info.id, presence_message(&info, false, now));
        }
    }

    /// Sends fleet statistics every `interval` until shutdown (see `fleet`).
    pub async fn run_fleet_stats(
        self: Arc<Self>,
        interval: std::time::Duration,
        forget_after: std::time::Duration,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = tick.tick() => {}
            }
            self.fleet.tick(now_ms(), forget_after.as_millis() as u64);
            self.metrics.fleet_devices.set(self.fleet.devices() as i64);
            self.metrics
                .history_bytes
                .set(i64::try_from(self.fleet.history_bytes()).unwrap_or(i64::MAX));
        }
    }

    pub fn online_devices(&self) -> usize {
        self.devices().online.len()
    }

    pub fn dashboards(&self) -> usize {
        read(&self.dashboards).len()
    }

    /// Queues a presence change to every dashboard: the latest value per device.
    fn announce(&self, device_id: &str, msg: Arc<Encoded>) {
        let key = presence_key(device_id);
        for d in read(&self.dashboards).values() {
            d.outbox.push_latest(&key, msg.clone());
        }
    }
}

/// Outbox keys of latest-value messages (see `outbox`).
fn presence_key(device_id: &str) -> String {
    format!("presence/{device_id}")
}

pub fn progress_key(notification_id: &str) -> String {
    format!("progress/{notification_id}")
}

fn presence_message(info: &DeviceInfo, online: bool, at_ms: u64) -> Arc<Encoded> {
    Encoded::new(Envelope {
        body: Some(Body::Presence(Presence {
            device_id: info.id.clone(),
            online,
            at_ms,
            tags: info
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })),
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

thread_local! {
    /// Dashboards with overlapping patterns already served by the publication in
    /// progress on this thread (reused, so publishing allocates nothing).
    static SEEN: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

// Index and dashboard-map operations are single map calls that leave the maps
// consistent even if a holder panicked, so poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Tags as the hub keeps them.
pub type Tags = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Telemetry;

    fn telemetry(device: &str, category: &str) -> Arc<Encoded> {
        Encoded::new(Envelope {
            body: Some(Body::Telemetry(Telemetry {
                device_id: device.into(),
                category: category.into(),
                ..Default::default()
            })),
        })
    }

    fn device(id: &str, tags: &[(&str, &str)]) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn json_spells_non_finite_readings_as_proto3_does() {
        use crate::proto::{reading::Value, Reading};
        let reading = |name: &str, n: f64| Reading {
            name: name.into(),
            value: Some(Value::Number(n)),
            unit: String::new(),
        };
        let e = Encoded::new(Envelope {
            body: Some(Body::Telemetry(Telemetry {
                device_id: "d".into(),
                category: "env.t".into(),
                readings: vec![
                    reading("ok", 1.5),
                    reading("nan", f64::NAN),
                    reading("up", f64::INFINITY),
                    reading("down", f64::NEG_INFINITY),
                ],
                ..Default::default()
            })),
        });
        let text = String::from_utf8(e.message(WireFormat::Json).payload().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let numbers: Vec<serde_json::Value> = (0..4)
            .map(|i| v["telemetry"]["readings"][i]["number"].clone())
            .collect();
        assert_eq!(
            numbers,
            [
                serde_json::json!(1.5),
                serde_json::json!("NaN"),
                serde_json::json!("Infinity"),
                serde_json::json!("-Infinity")
            ]
        );
        // And it parses back into the same message (pbjson reads the strings).
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let Some(Body::Telemetry(t)) = back.body else {
            panic!("{text}")
        };
        assert!(matches!(t.readings[1].value, Some(Value::Number(n)) if n.is_nan()));
        assert_eq!(t.readings[3].value, Some(Value::Number(f64::NEG_INFINITY)));

        // The same readings replayed in a History, second of two.
        let history = Encoded::new(Envelope {
            body: Some(Body::History(crate::proto::History {
                telemetry: vec![Telemetry::default(), t.clone()],
                more: false,
            })),
        });
        let text = String::from_utf8(history.message(WireFormat::Json).payload().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["history"]["telemetry"][1]["readings"][2]["number"],
            serde_json::json!("Infinity"),
            "{text}"
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        let Some(Body::History(h)) = back.body else {
            panic!("{text}")
        };
        assert!(matches!(h.telemetry[1].readings[1].value, Some(Value::Number(n)) if n.is_nan()));
    }

    fn queued(d: &DashboardHandle) -> usize {
        let mut out = Vec::new();
        d.outbox.drain(&mut out);
        out.len()
    }

    #[test]
    fn overlapping_patterns_deliver_once_and_filters_narrow() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let a = hub.register_dashboard(16);
        let b = hub.register_dashboard(16);
        for p in ["env.*", "*", "env.temperature"] {
            hub.subscribe(&a, &[Pattern::parse(p).unwrap()], Filter::default())
                .run(&hub.fleet, WireFormat::Protobuf);
        }
        let north = Filter {
            tags: [("fleet".to_string(), "north".to_string())].into(),
            ..Default::default()
        };
        hub.subscribe(&b, &[Pattern::parse("env.*").unwrap()], north)
            .run(&hub.fleet, WireFormat::Protobuf);

        let d1 = device("d1", &[("fleet", "north")]);
        let d2 = device("d2", &[("fleet", "south")]);
        let out = hub.publish(&d1, "env.temperature", &telemetry("d1", "env.temperature"));
        assert_eq!(out.delivered, 2);
        hub.publish(&d2, "env.temperature", &telemetry("d2", "env.temperature"));
        hub.publish(&d1, "power.battery", &telemetry("d1", "power.battery"));
        assert_eq!(queued(&a), 3);
        assert_eq!(queued(&b), 1);

        hub.unregister_dashboard(&a, [Pattern::parse("*").unwrap()].iter());
        assert_eq!(
            hub.publish(&d2, "power.battery", &telemetry("d2", "power.battery"))
                .delivered,
            0
        );
    }

    #[test]
    fn presence_on_transitions_only_and_takeover_kicks() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let dash = hub.register_dashboard(16);
        let info = Arc::new(device("d1", &[]));
        let first = hub.device_online(info.clone());
        let second = hub.device_online(info.clone());
        // The takeover stored a permit for the first session's kick.
        assert!(futures_util::FutureExt::now_or_never(first.kick.notified()).is_some());
        hub.device_offline("d1", &first); // stale session: no effect
        assert_eq!(hub.online_devices(), 1);
        let mut out = Vec::new();
        let states = |out: &mut Vec<Arc<Encoded>>| -> Vec<bool> {
            dash.outbox.drain(out);
            out.iter()
                .map(|m| match &m.envelope().body {
                    Some(Body::Presence(p)) => p.online,
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(states(&mut out), [true], "one transition, one event");
        hub.device_offline("d1", &second);
        assert_eq!(hub.online_devices(), 0);
        assert_eq!(states(&mut out), [false]);
        // Changes the dashboard has not drained yet coalesce to the latest state.
        let again = hub.device_online(info.clone());
        hub.device_offline("d1", &again);
        assert_eq!(states(&mut out), [false]);
        // A dashboard connecting while a device is online gets it in its snapshot.
        let _third = hub.device_online(info);
        let late = hub.register_dashboard(16);
        assert_eq!(queued(&late), 1);
    }
}
