//! What the hub does for the other nodes of a cluster: the [`BusEvents`] the bus
//! calls when something arrives from them, taking the same paths as what happens
//! on this node (minus the bus: nothing is sent back), and what the bus asks of
//! this node (its patterns, its devices, what it keeps of them).

use std::sync::Arc;

use super::{
    history, read, BusEvents, DeviceInfo, Filter, Hub, NodeId, Pattern, PresenceChange, Publication,
};

/// What arrives from other nodes takes the same paths as what happens here, minus
/// the bus: nothing is sent back.
impl BusEvents for Hub {
    fn publication(&self, from: NodeId, publication: Publication) {
        let _ = from;
        let activity = self
            .directory
            .remote_activity(publication.device(), publication.received_ms());
        self.deliver(&activity, &publication, false);
    }

    fn presence(&self, from: NodeId, change: PresenceChange) {
        self.remote_presence(from, change);
    }

    fn takeover(&self, from: NodeId, device: Arc<DeviceInfo>, at_ms: u64) {
        self.remote_takeover(from, device, at_ms);
    }

    fn node_devices(&self, from: NodeId, devices: Option<Vec<(Arc<DeviceInfo>, u64)>>) {
        self.remote_node(from, devices);
    }

    fn counters(&self, _from: NodeId, devices: Vec<crate::proto::DeviceStats>) {
        for s in devices {
            if let Some(a) = self.directory.activity(&s.device_id) {
                a.counters.reported(&s);
            }
        }
    }

    fn patterns(&self) -> Vec<Pattern> {
        read(&self.index).patterns()
    }

    fn local_devices(&self) -> Vec<(Arc<DeviceInfo>, u64)> {
        self.directory.local_devices()
    }

    fn kept(&self, patterns: &[Pattern], filter: &Filter) -> Vec<history::Kept> {
        let devices = self.directory.local_activity();
        self.history.windows(
            devices.iter().map(|(info, a)| (&**info, &a.series)),
            patterns,
            filter,
            u64::MAX,
        )
    }

    fn notifications_created(&self, _from: NodeId) {
        self.notifications.notify_one();
    }

    fn revocations_changed(&self, _from: NodeId) {
        self.revocations.notify_one();
    }

    fn link(&self, linked: bool, node: &str, message: &str) {
        self.announce_link(linked, node, message);
    }
}
