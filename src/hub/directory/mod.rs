//! The device directory: everything the hub knows per device id, in one place.
//!
//! One [`Entry`] per device id holds its identity (the tags of its connection's
//! token), its registration (the registry row notifications are targeted by: the
//! tags set with `PUT /v1/devices/{id}` merged with its token's, when it registered
//! and last connected), who speaks for it now (a session on this node, with the
//! signals that close it and wake it, or a session on another node of a cluster),
//! and its [`Activity`] (fleet counters and recent telemetry) while it is
//! remembered. Connect, disconnect and takeover each change an entry in one call
//! here, under one lock, so presence, notification wake-ups and the fleet view can
//! never disagree about who owns a device.
//!
//! One connection per device id: a new connection with the same subject takes the
//! device over and the older one is told to close (as MQTT brokers do), so a device
//! that reconnects before its old TCP connection timed out is never shut out. The
//! older connection may be on another node: the hub hears of it through its `Bus`
//! ([`Directory::remote_connected`]).
//!
//! Locking: one `RwLock` over the map, held for single-entry updates or one pass
//! over the entries, never across `.await`. Telemetry never takes it: a session
//! holds its device's [`Activity`] directly. Callers that must announce a change in
//! the same order as it happened pass the announcement in as a closure, which runs
//! under the lock (see `Hub::device_online`).

mod remote;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use tokio::sync::Notify;

use super::{fleet::Counters, history::Series, DeviceInfo, Tags};
use crate::store::DeviceRow;

/// Identifies one hub node of a cluster (random per process).
pub type NodeId = u64;

/// What the hub keeps of a device it has seen lately: fleet counters and the recent
/// window of each of its series. Shared by the device's session (which bumps it
/// without any map lookup) and the directory (which forgets it after
/// `forget_after` offline).
#[derive(Default)]
pub struct Activity {
    pub(super) counters: Counters,
    pub(super) series: Series,
}

impl Activity {
    fn seen_at(last_seen_ms: u64) -> Arc<Self> {
        let a = Self::default();
        a.counters.seen(last_seen_ms);
        Arc::new(a)
    }
}

/// A device's row in the registry (what notifications are targeted by).
#[derive(Clone, Debug)]
struct Registration {
    tags: Tags,
    registered_ms: u64,
    last_seen_ms: Option<u64>,
}

impl Registration {
    fn row(&self, id: &str) -> DeviceRow {
        DeviceRow {
            id: id.to_owned(),
            tags: self.tags.clone(),
            registered_ms: self.registered_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// Who speaks for a device now.
enum Owner {
    /// A session on this node.
    Local {
        session: u64,
        /// Tells the session a newer connection took the device over.
        kick: Arc<Notify>,
        /// Tells the session something was created for its device.
        wake: Arc<Notify>,
        since_ms: u64,
    },
    /// A session on another node (heard through the bus).
    Remote { node: NodeId, since_ms: u64 },
}

impl Owner {
    fn since_ms(&self) -> u64 {
        match self {
            Owner::Local { since_ms, .. } | Owner::Remote { since_ms, .. } => *since_ms,
        }
    }
}

struct Entry {
    /// The latest connection's identity (tags can change between connections).
    info: Arc<DeviceInfo>,
    registration: Option<Registration>,
    owner: Option<Owner>,
    /// Present while the device is remembered by the fleet view and the history.
    activity: Option<Arc<Activity>>,
}

impl Entry {
    fn new(info: Arc<DeviceInfo>) -> Self {
        Self {
            info,
            registration: None,
            owner: None,
            activity: None,
        }
    }

    /// Nothing left to remember: the entry can go.
    fn is_empty(&self) -> bool {
        self.registration.is_none() && self.owner.is_none() && self.activity.is_none()
    }

    fn activity(&mut self, now_ms: u64) -> Arc<Activity> {
        self.activity
            .get_or_insert_with(|| Activity::seen_at(now_ms))
            .clone()
    }

    /// The registration, created as of `now_ms` if the device had none.
    fn registration(&mut self, now_ms: u64) -> &mut Registration {
        self.registration.get_or_insert(Registration {
            tags: Tags::new(),
            registered_ms: now_ms,
            last_seen_ms: None,
        })
    }
}

/// A device connection's handle on its directory entry (see [`Directory::connect`]).
pub struct DeviceSession {
    pub id: u64,
    pub info: Arc<DeviceInfo>,
    /// Notified when a newer connection (on any node) takes this device id over.
    pub kick: Arc<Notify>,
    /// Notified when something is created for this device. Set at connect, so the
    /// session looks at its backlog at once.
    pub wake: Arc<Notify>,
    pub(super) activity: Arc<Activity>,
}

impl DeviceSession {
    /// Counts a telemetry message refused by the rate limiter.
    pub fn rate_limited(&self) {
        self.activity.counters.rate_limited();
    }
}

/// What a connection changed (see [`Directory::connect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The device was offline everywhere.
    CameOnline,
    /// The device was online (here or on another node): its older session closes.
    TookOver,
}

/// What [`Directory::connect`] did besides handing out the session.
pub struct Connected {
    pub session: DeviceSession,
    /// The registry row as it now stands, to be stored.
    pub registration: DeviceRow,
}

/// The registered devices and their registered tags (see [`Directory::with_registry`]).
pub struct Registry<'a>(std::collections::hash_map::Iter<'a, String, Entry>);

impl<'a> Iterator for Registry<'a> {
    type Item = (&'a String, &'a Tags);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (id, entry) = self.0.next()?;
            if let Some(r) = &entry.registration {
                return Some((id, &r.tags));
            }
        }
    }
}

/// One device in a snapshot of the directory (see [`Directory::remembered`]).
pub struct Remembered {
    pub info: Arc<DeviceInfo>,
    pub online: bool,
    /// Its session is on this node.
    pub local: bool,
    pub activity: Arc<Activity>,
}

pub struct Directory {
    /// This node (see [`Directory::remote_connected`]).
    node: NodeId,
    entries: RwLock<HashMap<String, Entry>>,
    next_session: AtomicU64,
}

impl Directory {
    /// A directory holding the registry as stored. Devices seen at or after
    /// `remember_since_ms` are remembered as offline (the fleet view lists them
    /// after a restart; their counters start from zero).
    pub fn new(node: NodeId, registry: Vec<DeviceRow>, remember_since_ms: u64) -> Self {
        let entries = registry
            .into_iter()
            .map(|row| {
                let mut entry = Entry::new(Arc::new(DeviceInfo {
                    id: row.id.clone(),
                    tags: row.tags.clone(),
                    ..Default::default()
                }));
                entry.activity = row
                    .last_seen_ms
                    .filter(|&t| t >= remember_since_ms)
                    .map(Activity::seen_at);
                entry.registration = Some(Registration {
                    tags: row.tags,
                    registered_ms: row.registered_ms,
                    last_seen_ms: row.last_seen_ms,
                });
                (row.id, entry)
            })
            .collect();
        Self {
            node,
            entries: RwLock::new(entries),
            next_session: AtomicU64::new(1),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        // Every update is a single entry change: a poisoned lock is still consistent.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A device connected to this node: it becomes the device's owner, an older
    /// local session is kicked, and the device is registered (its token's tags
    /// override stored ones key by key). `changed` runs under the lock with what
    /// the connection changed for the rest of the hub and the cluster.
    pub fn connect(
        &self,
        info: Arc<DeviceInfo>,
        now_ms: u64,
        changed: impl FnOnce(&Arc<DeviceInfo>, Change),
    ) -> Connected {
        let kick = Arc::new(Notify::new());
        let wake = Arc::new(Notify::new());
        wake.notify_one();
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.write();
        let entry = entries
            .entry(info.id.clone())
            .or_insert_with(|| Entry::new(info.clone()));
        entry.info = info.clone();
        let previous = entry.owner.replace(Owner::Local {
            session,
            kick: kick.clone(),
            wake: wake.clone(),
            since_ms: now_ms,
        });
        match previous {
            Some(Owner::Local { kick, .. }) => {
                kick.notify_one();
                changed(&info, Change::TookOver);
            }
            Some(Owner::Remote { .. }) => changed(&info, Change::TookOver),
            None => changed(&info, Change::CameOnline),
        }
        let registration = entry.registration(now_ms);
        for (k, v) in &info.tags {
            registration.tags.insert(k.clone(), v.clone());
        }
        registration.last_seen_ms = Some(now_ms);
        let registration = registration.row(&info.id);
        let activity = entry.activity(now_ms);
        activity.counters.seen(now_ms);
        Connected {
            session: DeviceSession {
                id: session,
                info,
                kick,
                wake,
                activity,
            },
            registration,
        }
    }

    /// A local session ended. Unless a newer connection (here or on another node)
    /// took the device over, it goes offline: `announce` runs under the lock and
    /// the device's identity is returned.
    pub fn disconnect(
        &self,
        session: &DeviceSession,
        now_ms: u64,
        announce: impl FnOnce(&Arc<DeviceInfo>),
    ) -> Option<Arc<DeviceInfo>> {
        let mut entries = self.write();
        let entry = entries.get_mut(&session.info.id)?;
        if !matches!(entry.owner, Some(Owner::Local { session: s, .. }) if s == session.id) {
            return None;
        }
        entry.owner = None;
        session.activity.counters.seen(now_ms);
        announce(&entry.info);
        Some(entry.info.clone())
    }

    /// Runs `f` over every online device and when it came online, under the read
    /// lock: no presence change can happen until `f` returns.
    pub fn with_online<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = (&Arc<DeviceInfo>, u64)>) -> R,
    ) -> R {
        let entries = self.read();
        let mut online = entries
            .values()
            .filter_map(|e| e.owner.as_ref().map(|o| (&e.info, o.since_ms())));
        f(&mut online)
    }

    /// How the connection holding `id` now authenticated (`Some(true)`: by a
    /// client certificate), on any node; `None` while it is offline.
    pub fn held_by_certificate(&self, id: &str) -> Option<bool> {
        let entries = self.read();
        let entry = entries.get(id)?;
        entry.owner.as_ref().map(|_| entry.info.by_certificate)
    }

    /// The registry's tags of `id` (empty when it is not registered).
    pub fn registered_tags(&self, id: &str) -> Tags {
        self.read()
            .get(id)
            .and_then(|e| e.registration.as_ref())
            .map(|r| r.tags.clone())
            .unwrap_or_default()
    }

    /// Devices online on any node.
    pub fn online(&self) -> usize {
        self.read().values().filter(|e| e.owner.is_some()).count()
    }

    /// Registers a device ahead of its first connection, or replaces its
    /// registered tags. Returns the row to store.
    pub fn register(&self, id: String, tags: Tags, now_ms: u64) -> DeviceRow {
        let mut entries = self.write();
        let entry = entries.entry(id.clone()).or_insert_with(|| {
            Entry::new(Arc::new(DeviceInfo {
                id: id.clone(),
                tags: Tags::new(),
                ..Default::default()
            }))
        });
        let registration = entry.registration(now_ms);
        registration.tags = tags;
        registration.row(&id)
    }

    /// Runs `f` over every registered device and its registered tags (to resolve a
    /// notification's targets), under the read lock.
    pub fn with_registry<R>(&self, f: impl FnOnce(Registry<'_>) -> R) -> R {
        let entries = self.read();
        f(Registry(entries.iter()))
    }

    /// The wake signals of those of `ids` whose session is on this node.
    pub fn wakes<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<Arc<Notify>> {
        let entries = self.read();
        ids.into_iter()
            .filter_map(|id| match entries.get(id).and_then(|e| e.owner.as_ref()) {
                Some(Owner::Local { wake, .. }) => Some(wake.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every remembered device, with its identity and whether it is online.
    pub fn remembered(&self) -> Vec<Remembered> {
        self.read()
            .values()
            .filter_map(|e| {
                e.activity.as_ref().map(|a| Remembered {
                    info: e.info.clone(),
                    online: e.owner.is_some(),
                    local: matches!(e.owner, Some(Owner::Local { .. })),
                    activity: a.clone(),
                })
            })
            .collect()
    }

    /// How many devices are remembered.
    #[cfg(test)]
    pub fn remembered_count(&self) -> usize {
        self.read()
            .values()
            .filter(|e| e.activity.is_some())
            .count()
    }

    /// The activity of a remembered device.
    pub fn activity(&self, device_id: &str) -> Option<Arc<Activity>> {
        self.read().get(device_id).and_then(|e| e.activity.clone())
    }

    /// Forgets the activity of devices offline for at least `forget_after_ms`;
    /// returns their ids and what they held.
    pub fn forget(&self, now_ms: u64, forget_after_ms: u64) -> Vec<(String, Arc<Activity>)> {
        let stale = |e: &Entry| {
            e.owner.is_none()
                && e.activity.as_ref().is_some_and(|a| {
                    now_ms.saturating_sub(a.counters.last_seen_ms()) >= forget_after_ms
                })
        };
        // The write lock (which connects wait for) only when there is something to forget.
        if !self.read().values().any(stale) {
            return Vec::new();
        }
        let mut entries = self.write();
        let ids: Vec<String> = entries
            .iter()
            .filter(|(_, e)| stale(e))
            .map(|(id, _)| id.clone())
            .collect();
        let mut forgotten = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            if let Some(a) = entry.activity.take() {
                forgotten.push((id.clone(), a));
            }
            if entry.is_empty() {
                entries.remove(&id);
            }
        }
        forgotten
    }
}
