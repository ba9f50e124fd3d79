//! The directory's side of a cluster: devices that other nodes hold, what they
//! say of them (connected, offline, everything a node holds), and what this node
//! holds for them to know.

use std::{collections::HashMap, sync::Arc};

use super::{Activity, DeviceInfo, Directory, Entry, NodeId, Owner};

impl Directory {
    /// Another node says a device connected there at `since_ms`: that node owns
    /// it from now on, and a local session of it is kicked. `takeover`: that node
    /// knew the device was online elsewhere, so its connection is the later one.
    /// Otherwise both nodes saw the device offline and took a connection each
    /// (a race): both resolve it the same way, the later connection wins (ties:
    /// the higher node id), so exactly one survives; a third node's owner is
    /// replaced the same way. When the device was offline here, `announce` runs
    /// under the lock; when a local session was replaced, `kicked` does (so the bus
    /// learns it in order with this node's own connects).
    pub fn remote_connected(
        &self,
        info: Arc<DeviceInfo>,
        node: NodeId,
        since_ms: u64,
        takeover: bool,
        announce: impl FnOnce(&Arc<DeviceInfo>, u64),
        kicked: impl FnOnce(&Arc<DeviceInfo>),
    ) {
        let mut entries = self.write();
        let entry = entries
            .entry(info.id.clone())
            .or_insert_with(|| Entry::new(info.clone()));
        match &entry.owner {
            Some(Owner::Local { since_ms: ours, .. })
                if !takeover && (*ours, self.node) > (since_ms, node) =>
            {
                // Ours is the later connection: the other node's session is the
                // one to close, which our own announcement tells it.
                return;
            }
            Some(Owner::Remote {
                node: theirs,
                since_ms: their_since,
            }) if !takeover && *theirs != node && (*their_since, *theirs) > (since_ms, node) => {
                // A third node's later connection holds it (e.g. a takeover seen
                // before a snapshot still listing the older owner).
                return;
            }
            _ => {}
        }
        entry.info = info.clone();
        match entry.owner.replace(Owner::Remote { node, since_ms }) {
            Some(Owner::Local { kick, .. }) => {
                kick.notify_one();
                kicked(&info);
            }
            Some(Owner::Remote { .. }) => {}
            None => {
                entry.activity(since_ms).counters.seen(since_ms);
                announce(&info, since_ms);
            }
        }
    }

    /// Another node says a device it owned went offline. Ignored unless that node
    /// still owns it here (a later takeover wins).
    pub fn remote_offline(
        &self,
        device_id: &str,
        node: NodeId,
        at_ms: u64,
        announce: impl FnOnce(&Arc<DeviceInfo>),
    ) {
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(device_id) else {
            return;
        };
        if !matches!(entry.owner, Some(Owner::Remote { node: n, .. }) if n == node) {
            return;
        }
        entry.owner = None;
        if let Some(a) = &entry.activity {
            a.counters.seen(at_ms);
        }
        announce(&entry.info);
        if entry.is_empty() {
            entries.remove(device_id);
        }
    }

    /// What node `node` holds, all of it (`held`), or that it is gone (`None`):
    /// `kicked` as for [`Directory::remote_connected`];
    /// every device it owned here and does not hold goes offline (`announce(info,
    /// false, now_ms)`), and every device it holds is owned by it as by
    /// [`Directory::remote_connected`] (`announce(info, true, since)` for those
    /// that were offline).
    pub fn remote_node(
        &self,
        node: NodeId,
        held: Option<Vec<(Arc<DeviceInfo>, u64)>>,
        now_ms: u64,
        mut announce: impl FnMut(&Arc<DeviceInfo>, bool, u64),
        mut kicked: impl FnMut(&Arc<DeviceInfo>),
    ) {
        let held: HashMap<String, (Arc<DeviceInfo>, u64)> = held
            .unwrap_or_default()
            .into_iter()
            .map(|(info, since)| (info.id.clone(), (info, since)))
            .collect();
        {
            let mut entries = self.write();
            let gone: Vec<String> = entries
                .iter()
                .filter(|(id, e)| {
                    matches!(e.owner, Some(Owner::Remote { node: n, .. }) if n == node)
                        && !held.contains_key(*id)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                let Some(entry) = entries.get_mut(&id) else {
                    continue;
                };
                entry.owner = None;
                if let Some(a) = &entry.activity {
                    a.counters.seen(now_ms);
                }
                announce(&entry.info, false, now_ms);
                if entry.is_empty() {
                    entries.remove(&id);
                }
            }
        }
        for (info, since) in held.into_values() {
            self.remote_connected(
                info,
                node,
                since,
                false,
                |info, since| announce(info, true, since),
                &mut kicked,
            );
        }
    }

    /// The devices whose session is on this node, and since when.
    pub fn local_devices(&self) -> Vec<(Arc<DeviceInfo>, u64)> {
        self.read()
            .values()
            .filter_map(|e| match &e.owner {
                Some(Owner::Local { since_ms, .. }) => Some((e.info.clone(), *since_ms)),
                _ => None,
            })
            .collect()
    }

    /// The devices whose session is on this node, with their activity.
    pub fn local_activity(&self) -> Vec<(Arc<DeviceInfo>, Arc<Activity>)> {
        self.read()
            .values()
            .filter(|e| matches!(e.owner, Some(Owner::Local { .. })))
            .filter_map(|e| Some((e.info.clone(), e.activity.clone()?)))
            .collect()
    }

    /// The activity of a device whose telemetry arrived from another node
    /// (remembered from now on if it was not).
    pub fn remote_activity(&self, info: &Arc<DeviceInfo>, now_ms: u64) -> Arc<Activity> {
        if let Some(a) = self.read().get(&info.id).and_then(|e| e.activity.clone()) {
            return a;
        }
        self.write()
            .entry(info.id.clone())
            .or_insert_with(|| Entry::new(info.clone()))
            .activity(now_ms)
    }
}
