//! The router: subscriptions, fan-out, presence, and the device directory.
//!
//! Design choice: shared state behind short locks, not a router task. A device
//! session publishes by looking up the subscription [`index::Index`] (read lock) and
//! pushing one `Arc<Encoded>` into each matching dashboard's [`outbox::Outbox`]
//! (a short mutex each). No message crosses a channel to a router task and back, so
//! fan-out costs one pointer copy per subscriber and the two cores both route.
//! Locks are never held across `.await`; the hub does no I/O. Dashboards drain
//! their own outboxes and write to their sockets (see `session::dashboard`).
//!
//! One publish path: a [`Publication`] enters through [`Hub::publish`] (from a
//! device session on this node) or [`BusEvents::publication`] (from another node,
//! through the [`bus::Bus`] beneath the hub). Both record it (fleet counters, the
//! history window) *before* fanning it out, the order `Hub::subscribe` relies on,
//! and both fan out through the same code; only local publications are handed to
//! the bus. Presence and takeovers cross the bus the same way, and the
//! [`directory::Directory`] is the one owner of who speaks for each device.
//!
//! Every message is encoded once ([`Encoded`]) and shared by every subscriber.
//! Batched and conflated subscriptions go one step further: a publication is
//! appended once to a shared [`stream::Stream`] per (category, delivery, filter),
//! and each interval's `Batch` is built once for all its dashboards
//! ([`Hub::flush_streams`]).

pub mod bus;
pub mod category;
mod dashboards;
pub mod directory;
pub mod encoded;
pub mod fleet;
mod flush;
pub mod history;
pub mod index;
pub mod outbox;
mod peers;
pub mod presence;
pub mod publication;
mod replay;
pub mod stream;
pub mod uplink;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{metrics::Metrics, store::DeviceRow};

pub use bus::{Bus, BusEvents, PresenceChange};
pub use category::Pattern;
pub use dashboards::DashboardHandle;
pub use directory::{Connected, DeviceSession, Directory, NodeId};
pub use encoded::{Encoded, WireFormat};
pub use history::HistoryLimits;
pub use index::Filter;
pub use outbox::{Drained, Outbox, Pushed};
use presence::{presence_key, presence_message, LINK_KEY};
pub use publication::{Publication, Published};
pub use replay::HistoryJob;
pub use stream::Delivery;
pub use uplink::Uplinks;

/// How a hub is built.
pub struct Options {
    pub history: HistoryLimits,
    /// The device registry as stored.
    pub registry: Vec<DeviceRow>,
    /// Registered devices seen since then are listed offline in the fleet view
    /// until they reconnect (after a restart, `now - forget_after`).
    pub remember_since_ms: u64,
    /// What joins this hub to other nodes ([`bus::Local`]: none).
    pub bus: Arc<dyn Bus>,
    /// Accounted bytes of telemetry one dashboard's queue may hold (see `outbox`).
    pub queue_bytes: usize,
    /// Accounted bytes of telemetry all dashboards' queues may hold together.
    pub queued_bytes_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history: HistoryLimits::default(),
            registry: Vec::new(),
            remember_since_ms: u64::MAX,
            bus: Arc::new(bus::Local),
            queue_bytes: usize::MAX,
            queued_bytes_max: usize::MAX,
        }
    }
}

pub struct Hub {
    /// This node on the bus.
    node: NodeId,
    index: RwLock<index::Index>,
    /// Every connected dashboard, for presence announcements.
    dashboards: RwLock<HashMap<u64, Arc<DashboardHandle>>>,
    /// Dashboards watching notification progress.
    watchers: RwLock<HashMap<u64, Arc<DashboardHandle>>>,
    /// Every device this hub knows: identity, registration, owner, activity.
    directory: Directory,
    /// Recent telemetry per series, replayed on Subscribe.
    history: history::History,
    /// Fleet statistics for `WatchFleet`.
    fleet: fleet::Fleet,
    bus: Arc<dyn Bus>,
    /// Accounted bytes one dashboard's queued telemetry may hold.
    queue_bytes: usize,
    /// The bytes of telemetry queued for all dashboards, and their bound.
    queued: Arc<outbox::Budget>,
    /// Batched and conflated streams and their timers.
    streams: stream::Streams,
    /// Every subscription filter in use, so that equal filters share one `Arc`
    /// (and so one stream).
    filters: index::Filters,
    next_dashboard: AtomicU64,
    /// Device sessions on this node between `device_online` and `device_offline`
    /// (see `device_sessions`).
    device_sessions: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
    /// While the cluster link is down: the notice a dashboard gets when it joins.
    link_notice: std::sync::Mutex<Option<Arc<Encoded>>>,
    /// Another node created a notification (the notifier reads the shared store).
    notifications: tokio::sync::Notify,
    /// Another node revoked tokens (the app reads the store's revocations).
    revocations: tokio::sync::Notify,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, options: Options) -> Arc<Self> {
        let node = rand::random();
        let hub = Arc::new(Self {
            node,
            index: RwLock::default(),
            dashboards: RwLock::default(),
            watchers: RwLock::default(),
            directory: Directory::new(node, options.registry, options.remember_since_ms),
            history: history::History::new(options.history),
            fleet: fleet::Fleet::default(),
            bus: options.bus,
            queue_bytes: options.queue_bytes,
            queued: outbox::Budget::new(options.queued_bytes_max),
            streams: stream::Streams::default(),
            filters: index::Filters::default(),
            next_dashboard: AtomicU64::new(1),
            device_sessions: Default::default(),
            metrics,
            link_notice: std::sync::Mutex::default(),
            notifications: tokio::sync::Notify::new(),
            revocations: tokio::sync::Notify::new(),
        });
        let events: std::sync::Weak<dyn BusEvents> = Arc::downgrade(&hub) as _;
        hub.bus.attach(hub.node, events, &hub.metrics);
        hub
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The bus joining this node to the others.
    /// Signalled when another node created notifications (at most one wake-up
    /// is kept while nobody waits).
    pub fn notifications_created(&self) -> &tokio::sync::Notify {
        &self.notifications
    }

    /// Signalled when another node revoked tokens (at most one wake-up is kept
    /// while nobody waits).
    pub fn revocations_changed(&self) -> &tokio::sync::Notify {
        &self.revocations
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Who every device is, who speaks for it, and its registration.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Adds (or replaces the filter and delivery of) `handle`'s subscriptions to
    /// `patterns`, all under one index lock and sharing one filter. Returns the job
    /// that gathers the matching series' recent telemetry (`History`) for the
    /// dashboard.
    ///
    /// No gap, and history first: a place in the dashboard's outbox is reserved
    /// under the index lock, so live telemetry of the new subscriptions queues
    /// behind it; the history is gathered later, off the lock, but only from what
    /// was kept before the subscription ([`history::History::cut`]). Every
    /// publication is kept before it is fanned out (see [`Hub::publish`]), so a
    /// message is either fanned out before the subscription exists (and is in the
    /// history) or queued live behind the reservation (and, if it was kept just
    /// before the cut, in the history too: clients keep only telemetry newer than
    /// what they hold, see `History` in the proto). Batched and conflated
    /// subscriptions keep the rule: their batches are queued when flushed, behind
    /// the reservation, and hold everything appended since the subscription.
    pub fn subscribe(
        self: &Arc<Self>,
        handle: &Arc<DashboardHandle>,
        patterns: &[Pattern],
        filter: Filter,
        delivery: Delivery,
    ) -> HistoryJob {
        let history_filter = filter.clone();
        let filter = (!filter.is_empty()).then(|| self.filters.intern(filter));
        let (reservation, cut) = {
            let mut index = write(&self.index);
            let before = index.pattern_count();
            for p in patterns {
                let added = index.insert(
                    p,
                    index::Entry {
                        dashboard: handle.clone(),
                        filter: filter.clone(),
                    },
                    delivery,
                );
                if added {
                    handle.patterns.fetch_add(1, Ordering::Relaxed);
                }
            }
            if index.pattern_count() != before {
                self.bus.interest_changed();
            }
            if let Delivery::Conflated { .. } = delivery {
                // Under the index lock: nothing is appended meanwhile, so every
                // message a joined stream skips as unchanged from now on was
                // resent once after this point.
                self.streams
                    .resend_all(delivery, stream::filter_id(&filter), |category| {
                        patterns.iter().any(|p| p.matches(category))
                    });
            }
            (handle.outbox.reserve(), self.history.cut())
        };
        HistoryJob {
            hub: self.clone(),
            handle: handle.clone(),
            reservation: Some(reservation),
            cut,
            patterns: patterns.to_vec(),
            filter: history_filter,
        }
    }

    pub fn unsubscribe(&self, handle: &DashboardHandle, patterns: &[Pattern]) {
        let mut index = write(&self.index);
        let before = index.pattern_count();
        for p in patterns {
            if index.remove(p, handle.id) {
                handle.patterns.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if index.pattern_count() != before {
            self.bus.interest_changed();
        }
    }

    /// A telemetry message accepted from a device connected to this node: recorded,
    /// fanned out to this node's dashboards, and handed to the bus for the others.
    /// Never waits: a full dashboard queue drops its oldest telemetry instead.
    pub fn publish(&self, session: &DeviceSession, publication: Publication) -> Published {
        self.metrics.telemetry_accepted.inc();
        let out = self.deliver(&session.activity, &publication, true);
        self.bus.publish(&publication);
        out
    }

    /// Records, then fans out: the one path of every publication, local or remote.
    /// Only the node that accepted it (`accepted`) counts it: the others learn the
    /// device's counts from that node (see `BusEvents::counters`).
    fn deliver(
        &self,
        activity: &directory::Activity,
        p: &Publication,
        accepted: bool,
    ) -> Published {
        let (category, received_ms) = (p.category(), p.received_ms());
        if accepted {
            activity.counters.accepted(received_ms);
        } else {
            activity.counters.seen(received_ms);
        }
        p.message().charge_drops_to(&activity.counters.dropped);
        self.history
            .keep(&activity.series, category, p.message(), received_ms);
        self.fan_out(p)
    }

    fn fan_out(&self, p: &Publication) -> Published {
        let (device, category, msg) = (p.device(), p.category(), p.message());
        let mut out = Published::default();
        // One pass over the index: live subscriptions get the message pushed, each
        // batched or conflated stream gets it appended once (not per dashboard).
        SEEN.with_borrow_mut(|seen| {
            STREAMS_SEEN.with_borrow_mut(|streams_seen| {
                seen.clear();
                streams_seen.clear();
                read(&self.index).for_each_match(
                    category,
                    |entry| {
                        if let Some(f) = &entry.filter {
                            if !f.matches(&device.id, &device.tags) {
                                return;
                            }
                        }
                        let d = &entry.dashboard;
                        // A dashboard with overlapping patterns (`env.*` and `*`) gets
                        // each message once. Only such dashboards are remembered, so
                        // the list stays short whatever the number of subscribers.
                        if d.patterns.load(Ordering::Relaxed) > 1 {
                            if seen.contains(&d.id) {
                                return;
                            }
                            seen.push(d.id);
                        }
                        out.add(d.outbox.push_telemetry(msg.clone()), 1);
                    },
                    |group| {
                        if let Some(f) = &group.filter {
                            if !f.matches(&device.id, &device.tags) {
                                return;
                            }
                        }
                        let key = (group.delivery, stream::filter_id(&group.filter));
                        if streams_seen.contains(&key) {
                            return;
                        }
                        streams_seen.push(key);
                        self.streams.append(
                            category,
                            group.delivery,
                            &group.filter,
                            &device.id,
                            msg,
                        );
                    },
                );
            });
        });
        self.count(&out);
        out
    }

    fn count(&self, out: &Published) {
        self.metrics.deliveries.inc_by(out.delivered);
        if out.dropped > 0 {
            self.metrics.dropped_deliveries.inc_by(out.dropped);
        }
    }

    /// Sends fleet statistics every `interval` until shutdown (see `fleet`).
    pub async fn run_fleet_stats(
        self: Arc<Self>,
        interval: Duration,
        forget_after: Duration,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = tick.tick() => {}
            }
            self.tick(now_ms(), forget_after.as_millis() as u64);
        }
    }

    /// One statistics interval: forgets devices offline for `forget_after_ms`,
    /// trims the history to its budget, and sends fleet statistics to watchers
    /// (what [`Hub::run_fleet_stats`] does every interval). Returns the
    /// `FleetStats` sent, if anything changed.
    pub fn tick(&self, now: u64, forget_after_ms: u64) -> Option<Arc<Encoded>> {
        self.sweep_streams();
        let forgotten = self.directory.forget(now, forget_after_ms);
        for (_, activity) in &forgotten {
            self.history.release(&activity.series);
        }
        let devices = self.directory.remembered();
        self.history
            .trim(devices.iter().map(|d| &d.activity.series));
        let counts = self.bus.counts_devices();
        let views: Vec<fleet::Device> = devices
            .iter()
            .map(|d| fleet::Device {
                info: &d.info,
                online: d.online,
                // Gathered for the other nodes only: a hub alone has none.
                local: d.local && counts,
                counters: &d.activity.counters,
                categories: d.activity.series.categories(),
            })
            .collect();
        let (sent, local) = self.fleet.tick(
            now,
            &views,
            forgotten.into_iter().map(|(id, _)| id).collect(),
        );
        if counts {
            self.bus.counters(local);
        }
        self.metrics.fleet_devices.set(devices.len() as i64);
        self.metrics
            .history_bytes
            .set(i64::try_from(self.history.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .queued_bytes
            .set(i64::try_from(self.queued_bytes()).unwrap_or(i64::MAX));
        sent
    }

    /// The `History` a new subscription to `patterns` with `filter` would get now.
    pub fn recent(&self, patterns: &[Pattern], filter: &Filter) -> Vec<Arc<Encoded>> {
        self.gather(patterns, filter, self.history.cut())
    }

    /// The history of every remembered device, kept before `cut`, for `patterns`
    /// and `filter` (see [`history::History::gather`]).
    fn gather(&self, patterns: &[Pattern], filter: &Filter, cut: u64) -> Vec<Arc<Encoded>> {
        let devices = self.directory.remembered();
        self.history.gather(
            devices.iter().map(|d| (&*d.info, &d.activity.series)),
            patterns,
            filter,
            cut,
        )
    }

    /// Bytes of telemetry queued for all dashboards, as their bound counts them.
    pub fn queued_bytes(&self) -> usize {
        self.queued.queued()
    }

    /// Bytes the history holds, as its budget counts them.
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// Device sessions on this node that may still publish. A session counts from
    /// `device_online` to `device_offline`, which it calls after its last
    /// publication: read 0 (Acquire, paired with the Release there), every
    /// publication of this node's devices is in the outboxes.
    pub fn device_sessions(&self) -> usize {
        self.device_sessions
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn online_devices(&self) -> usize {
        self.directory.online()
    }

    pub fn dashboards(&self) -> usize {
        read(&self.dashboards).len()
    }
}

/// Outbox key of a notification's latest progress (see `outbox`).
pub fn progress_key(notification_id: &str) -> String {
    format!("progress/{notification_id}")
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
    /// The streams (delivery, filter) the publication in progress was appended to.
    static STREAMS_SEEN: std::cell::RefCell<Vec<(Delivery, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
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

/// A device as the hub knows it from its connection's token or certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub tags: Tags,
    /// Authenticated by a client certificate (not a token): a connection
    /// authenticated the other way may not take this one over.
    pub by_certificate: bool,
}

#[cfg(test)]
mod tests;
