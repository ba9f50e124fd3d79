//! Fleet statistics: per-device counters, and the `FleetStats` sent to dashboards
//! that `WatchFleet`.
//!
//! Each remembered device's [`Counters`] are atomics bumped by whoever touches the
//! device (its session, the fan-out that drops its telemetry); they continue across
//! its connections until the directory forgets the device (offline for
//! `forget_after`). Every `fleet_interval` the hub computes each device's
//! statistics, and sends watchers what changed since the last tick plus the
//! devices forgotten. Counters are not durable: they start at zero when the hub
//! starts.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use super::{DashboardHandle, DeviceInfo, Encoded};
use crate::proto::{envelope::Body, DeviceStats, Envelope, FleetStats};

/// One device's counters.
#[derive(Default)]
pub struct Counters {
    /// When its latest telemetry was accepted, or it connected or disconnected.
    last_seen_ms: AtomicU64,
    messages: AtomicU64,
    rate_limited: AtomicU64,
    /// Shared with the device's published messages, which charge their drops to it
    /// (see `Encoded::charge_drops_to`).
    pub(super) dropped: Arc<AtomicU64>,
    /// What the node holding the device reported last (a device of another node
    /// of a cluster): its own counts, added to this node's.
    reported: ReportedCounts,
}

/// Counts another node reported for a device it holds.
#[derive(Default)]
struct ReportedCounts {
    messages: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    categories: Mutex<Vec<String>>,
}

impl Counters {
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// An accepted telemetry message.
    pub fn accepted(&self, now_ms: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.seen(now_ms);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// What the node holding the device counted, as of `s` (its absolute counts).
    pub fn reported(&self, s: &DeviceStats) {
        let r = &self.reported;
        r.messages.store(s.messages, Ordering::Relaxed);
        r.rate_limited.store(s.rate_limited, Ordering::Relaxed);
        r.dropped.store(s.dropped, Ordering::Relaxed);
        *r.categories.lock().unwrap_or_else(|p| p.into_inner()) = s.categories.clone();
        self.last_seen_ms
            .fetch_max(s.last_seen_ms, Ordering::Relaxed);
    }

    /// Messages accepted from the device, here and on the node that holds it.
    fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed) + self.reported.messages.load(Ordering::Relaxed)
    }
}

/// One remembered device, as a tick sees it.
pub struct Device<'a> {
    pub info: &'a DeviceInfo,
    pub online: bool,
    /// Its session is on this node, and its statistics go to the other nodes.
    pub local: bool,
    pub counters: &'a Counters,
    /// Its series with a history window.
    pub categories: Vec<String>,
}

fn stats(d: &Device, rate: f64) -> DeviceStats {
    let c = d.counters;
    let r = &c.reported;
    let mut categories = d.categories.clone();
    for extra in r
        .categories
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        if !categories.contains(extra) {
            categories.push(extra.clone());
        }
    }
    categories.sort();
    DeviceStats {
        device_id: d.info.id.clone(),
        online: d.online,
        tags: d
            .info
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        last_seen_ms: c.last_seen_ms(),
        messages: c.messages(),
        rate,
        rate_limited: c.rate_limited.load(Ordering::Relaxed)
            + r.rate_limited.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed) + r.dropped.load(Ordering::Relaxed),
        categories,
    }
}

/// The last statistics sent for a device, to send only changes.
struct Reported {
    stats: DeviceStats,
    /// Its tags, for scoped watchers.
    tags: super::Tags,
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

/// The fleet statistics ticker's state.
#[derive(Default)]
pub struct Fleet {
    ticks: Mutex<Ticks>,
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, Ticks> {
        // Every update leaves the maps consistent: poisoning is ignored.
        self.ticks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (with a full snapshot) or stops sending fleet statistics to a
    /// dashboard. Asking again while watching changes nothing.
    pub fn watch(&self, handle: &Arc<DashboardHandle>, on: bool, now: u64) {
        let mut ticks = self.lock();
        if !on {
            ticks.watchers.remove(&handle.id);
            return;
        }
        if ticks.watchers.contains_key(&handle.id) {
            return;
        }
        let mut devices: Vec<DeviceStats> = ticks
            .reported
            .values()
            .filter(|r| handle.sees(&r.tags))
            .map(|r| r.stats.clone())
            .collect();
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
        self.lock().watchers.remove(&dashboard_id);
    }

    /// One statistics interval: recomputes every remembered device's statistics
    /// and sends the changes, and the devices `forgotten` since the last tick, to
    /// watchers. Returns the FleetStats sent (None: nothing changed), and the
    /// statistics of the devices whose session is on this node, changed or not
    /// (for the other nodes of a cluster).
    pub fn tick(
        &self,
        now: u64,
        devices: &[Device],
        mut forgotten: Vec<String>,
    ) -> (Option<Arc<Encoded>>, Vec<DeviceStats>) {
        let mut ticks = self.lock();
        let elapsed_s = now.saturating_sub(ticks.last_tick_ms) as f64 / 1000.0;
        ticks.last_tick_ms = now;
        let mut changed = Vec::new();
        let mut local = Vec::new();
        for d in devices {
            let messages = d.counters.messages();
            let previous = ticks
                .reported
                .get(&d.info.id)
                .map(|r| r.messages)
                .unwrap_or(0);
            let rate = if elapsed_s > 0.0 {
                // One decimal: steady devices do not change every tick by noise.
                (((messages.saturating_sub(previous)) as f64 / elapsed_s) * 10.0).round() / 10.0
            } else {
                0.0
            };
            let stats = stats(d, rate);
            let same = ticks
                .reported
                .get(&d.info.id)
                .is_some_and(|r| r.stats == stats);
            if !same {
                changed.push(stats.clone());
            }
            if d.local {
                local.push(stats.clone());
            }
            let tags = d.info.tags.clone();
            ticks.reported.insert(
                d.info.id.clone(),
                Reported {
                    stats,
                    tags,
                    messages,
                },
            );
        }
        // A device forgotten that reconnected since is in `changed`, not gone.
        forgotten.retain(|id| !changed.iter().any(|s| &s.device_id == id));
        let forgotten: Vec<(String, super::Tags)> = forgotten
            .into_iter()
            .filter_map(|id| ticks.reported.remove(&id).map(|r| (id, r.tags)))
            .collect();
        if changed.is_empty() && forgotten.is_empty() {
            return (None, local);
        }
        changed.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let delta = |sees: &dyn Fn(&super::Tags) -> bool| {
            let tags_of = |id: &str| ticks.reported.get(id).map(|r| &r.tags);
            FleetStats {
                at_ms: now,
                full: false,
                devices: changed
                    .iter()
                    .filter(|s| tags_of(&s.device_id).is_some_and(sees))
                    .cloned()
                    .collect(),
                forgotten: forgotten
                    .iter()
                    .filter(|(_, tags)| sees(tags))
                    .map(|(id, _)| id.clone())
                    .collect(),
            }
        };
        let encode = |f: FleetStats| {
            Encoded::new(Envelope {
                body: Some(Body::FleetStats(f)),
            })
        };
        let msg = encode(delta(&|_| true));
        // Scoped watchers get their own part, encoded once per selector.
        let mut scoped: HashMap<&super::Tags, Option<Arc<Encoded>>> = HashMap::new();
        for w in ticks.watchers.values() {
            let part = match &w.sees {
                None => Some(msg.clone()),
                Some(selector) => scoped
                    .entry(selector)
                    .or_insert_with(|| {
                        let part = delta(&|tags| w.sees(tags));
                        (!part.devices.is_empty() || !part.forgotten.is_empty())
                            .then(|| encode(part))
                    })
                    .clone(),
            };
            if let Some(part) = part {
                w.outbox.push_control(part);
            }
        }
        (Some(msg), local)
    }
}
