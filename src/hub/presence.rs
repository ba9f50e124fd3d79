//! Presence: devices going online and offline on this node or another, announced
//! to every dashboard as the latest value per device, and handed to the bus.
//!
//! Every change happens in the device directory, and its announcement runs under
//! the directory's lock (see `Hub::register_dashboard`), so dashboards and other
//! nodes learn of changes in the order they happened.

use std::sync::Arc;

use super::{
    directory, now_ms, read, Connected, DeviceInfo, DeviceSession, Encoded, Hub, NodeId,
    PresenceChange,
};
use crate::proto::{envelope::Body, ClusterLink, Envelope, Presence};

impl Hub {
    /// A device connected to this node: it owns the device id from now on (an
    /// older session here is kicked, one on another node hears of it through the
    /// bus), and the device is registered. Announced if it was offline everywhere.
    pub fn device_online(&self, info: Arc<DeviceInfo>) -> Connected {
        self.device_online_at(info, now_ms())
    }

    pub(super) fn device_online_at(&self, info: Arc<DeviceInfo>, now: u64) -> Connected {
        self.device_sessions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Under the directory lock, like going offline: announcements and bus
        // events leave in the order the changes happened (see `register_dashboard`).
        self.directory
            .connect(info, now, |info, change| match change {
                directory::Change::CameOnline => {
                    self.announce(info, true, now);
                    self.bus.presence(&PresenceChange {
                        device: info.clone(),
                        online: true,
                        at_ms: now,
                    });
                }
                directory::Change::TookOver => self.bus.takeover(info, now),
            })
    }

    /// How the connection holding device `id` authenticated, if it is online
    /// (`Some(true)`: a client certificate), on any node.
    pub fn held_by_certificate(&self, id: &str) -> Option<bool> {
        self.directory.held_by_certificate(id)
    }

    /// The registry's tags of a device (empty when it is not registered).
    pub fn registered_tags(&self, id: &str) -> super::Tags {
        self.directory.registered_tags(id)
    }

    /// A device session on this node ended: the device goes offline unless a newer
    /// connection (on any node) took it over.
    pub fn device_offline(&self, session: &DeviceSession) {
        self.device_sessions
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        let now = now_ms();
        self.directory.disconnect(session, now, |info| {
            self.announce(info, false, now);
            self.bus.presence(&PresenceChange {
                device: info.clone(),
                online: false,
                at_ms: now,
            });
        });
    }

    /// Queues a presence change to every dashboard: the latest value per device.
    pub(super) fn announce(&self, info: &DeviceInfo, online: bool, at_ms: u64) {
        let key = presence_key(&info.id);
        let msg = presence_message(info, online, at_ms);
        for d in read(&self.dashboards).values() {
            if d.sees(&info.tags) {
                d.outbox.push_latest(&key, msg.clone());
            }
        }
    }

    /// Another node reports a presence change (see `BusEvents::presence`).
    pub(super) fn remote_presence(&self, from: NodeId, change: PresenceChange) {
        let announce = |info: &Arc<DeviceInfo>| self.announce(info, change.online, change.at_ms);
        if change.online {
            self.directory.remote_connected(
                change.device.clone(),
                from,
                change.at_ms,
                false,
                |info, _| announce(info),
                |info| self.bus.released(info),
            );
        } else {
            self.directory
                .remote_offline(&change.device.id, from, change.at_ms, announce);
        }
    }

    /// What another node holds now, or that it is gone (see
    /// `BusEvents::node_devices`).
    pub(super) fn remote_node(&self, from: NodeId, devices: Option<Vec<(Arc<DeviceInfo>, u64)>>) {
        self.directory.remote_node(
            from,
            devices,
            now_ms(),
            |info, online, at_ms| self.announce(info, online, at_ms),
            |info| self.bus.released(info),
        );
    }

    /// Another node took a device over (see `BusEvents::takeover`).
    pub(super) fn remote_takeover(&self, from: NodeId, device: Arc<DeviceInfo>, at_ms: u64) {
        self.directory.remote_connected(
            device,
            from,
            at_ms,
            true,
            |info, since_ms| self.announce(info, true, since_ms),
            |info| self.bus.released(info),
        );
    }
}

impl Hub {
    /// Tells every dashboard the cluster link went down or came back (a
    /// latest-value message: a dashboard that did not read the first gets only the
    /// last). Under the dashboards' lock, like a dashboard joining, so none misses
    /// a change.
    pub(super) fn announce_link(&self, linked: bool, node: &str, message: &str) {
        let msg = Encoded::new(Envelope {
            body: Some(Body::ClusterLink(ClusterLink {
                linked,
                node: node.to_owned(),
                message: message.to_owned(),
            })),
        });
        let dashboards = super::write(&self.dashboards);
        *self.link_notice.lock().unwrap_or_else(|p| p.into_inner()) =
            (!linked).then(|| msg.clone());
        for d in dashboards.values() {
            d.outbox.push_latest(LINK_KEY, msg.clone());
        }
    }
}

/// Outbox key of the cluster link notice.
pub(super) const LINK_KEY: &str = "cluster-link";

/// Outbox keys of latest-value messages (see `outbox`).
pub(super) fn presence_key(device_id: &str) -> String {
    format!("presence/{device_id}")
}

pub(super) fn presence_message(info: &DeviceInfo, online: bool, at_ms: u64) -> Arc<Encoded> {
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
