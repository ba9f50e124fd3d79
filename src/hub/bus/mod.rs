//! The [`Bus`]: what leaves this node for the other nodes of a cluster, and the
//! [`BusEvents`] the hub answers when something arrives from them.
//!
//! The hub sits above the bus and never knows what carries it (compare
//! centrifuge's `Broker` and `BrokerEventHandler`). Three things cross it:
//! - **publications**: every telemetry message accepted on this node, after auth,
//!   rate limit and validation. A node that receives one records it and fans it
//!   out to its own dashboards exactly as a local one ([`BusEvents::publication`]
//!   takes the same path as `Hub::publish`), and never publishes it again;
//! - **presence**: a device came online on this node while it was offline
//!   everywhere, or went offline here;
//! - **takeover**: a device connected here while it was online (on any node); the
//!   node whose session had it closes that session with 4001.
//!
//! A single node runs on [`Local`], which sends nothing anywhere.
//! [`memory::Network`] joins several hubs in one process (tests, and the reference
//! for what a real implementation must do).
//!
//! What an implementation must provide: every method returns at once and never
//! blocks (they are called on the publish path and under the hub's directory
//! lock): queue, then send from a task of its own, bounded, dropping and counting
//! when the other side cannot keep up (telemetry may be lost across nodes;
//! presence and takeovers should be retried or repaired from ownership records).
//! Events from one node must arrive at each other node in the order they were
//! sent. Incoming events go to the hub given to [`Bus::attach`], never back to
//! the node that sent them.

pub mod memory;

use std::sync::{Arc, Weak};

use super::{history::Kept, DeviceInfo, Filter, NodeId, Pattern, Publication};
use crate::metrics::Metrics;

/// A presence change on one node.
#[derive(Clone, Debug)]
pub struct PresenceChange {
    pub device: Arc<DeviceInfo>,
    pub online: bool,
    /// When it came online or went offline.
    pub at_ms: u64,
}

/// What leaves this node.
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering what other nodes send to `events` (the hub), which
    /// identifies itself on the bus as `node` and counts in `metrics`. Called
    /// once, when the hub is built.
    fn attach(&self, node: NodeId, events: Weak<dyn BusEvents>, metrics: &Arc<Metrics>);

    /// A telemetry message accepted on this node.
    fn publish(&self, publication: &Publication);

    /// A device came online on this node (offline everywhere before) or went
    /// offline here.
    fn presence(&self, change: &PresenceChange);

    /// A device that was online connected to this node at `at_ms`: whichever node
    /// holds its older session closes it.
    fn takeover(&self, device: &Arc<DeviceInfo>, at_ms: u64);

    /// Every `dashboard.fleet_interval`: the statistics of the devices whose
    /// session is on this node (their counts, for the other nodes' `FleetStats`).
    fn counters(&self, _devices: Vec<crate::proto::DeviceStats>) {}

    /// Whether this bus carries device counts ([`Bus::counters`]); when not (a
    /// hub alone), the hub does not gather them.
    fn counts_devices(&self) -> bool {
        false
    }

    /// Another node took over a device whose session was on this node (called
    /// under the directory's lock, in order with this node's own changes).
    fn released(&self, _device: &Arc<DeviceInfo>) {}

    /// The set of patterns this node's dashboards subscribe to changed (read it
    /// with [`BusEvents::patterns`]): a bus that can, receives only publications
    /// that match one of them.
    fn interest_changed(&self) {}

    /// This node committed new notifications to the shared store: the other
    /// nodes read them there and wake their targets.
    fn notifications_created(&self) {}

    /// This node committed a token revocation to the store: the other nodes read
    /// the revocations there and close what they cover.
    fn revocations_changed(&self) {}

    /// Whether this node is joined to the others (`GET /readyz`).
    fn ready(&self) -> bool {
        true
    }

    /// What the other nodes keep of the devices they hold, for a new subscription
    /// to `patterns` with `filter` (its `History`): asked once this node receives
    /// their live telemetry for the subscription, so that each message is either
    /// in an answer or arrives live (or both: the client keeps only what is newer
    /// per series). Resolves within a bounded wait, with what answered.
    fn history(&self, _patterns: &[Pattern], _filter: &Filter) -> BoxFuture<'static, Vec<Kept>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    /// The node is shutting down (its sessions closed): tells the others it left,
    /// after everything queued before. Callers bound the wait.
    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// A boxed future, for the one async method of [`Bus`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the hub does with what arrives from other nodes.
pub trait BusEvents: Send + Sync {
    /// A telemetry message accepted on node `from`: recorded and fanned out here,
    /// never published again.
    fn publication(&self, from: NodeId, publication: Publication);

    fn presence(&self, from: NodeId, change: PresenceChange);

    fn takeover(&self, from: NodeId, device: Arc<DeviceInfo>, at_ms: u64);

    /// What node `from` holds now, all of it (`Some`), or that it is gone (`None`):
    /// its devices not listed go offline here.
    fn node_devices(&self, from: NodeId, devices: Option<Vec<(Arc<DeviceInfo>, u64)>>);

    /// Node `from`'s counts of devices it holds (absolute, see [`Bus::counters`]).
    fn counters(&self, from: NodeId, devices: Vec<crate::proto::DeviceStats>);

    /// Every subscription pattern of this node's dashboards.
    fn patterns(&self) -> Vec<Pattern>;

    /// The devices connected to this node, and since when.
    fn local_devices(&self) -> Vec<(Arc<DeviceInfo>, u64)>;

    /// What this node keeps of the devices connected to it, for another node's
    /// new subscription (see [`Bus::history`]).
    fn kept(&self, patterns: &[Pattern], filter: &Filter) -> Vec<Kept>;

    /// Node `from` committed new notifications to the shared store.
    fn notifications_created(&self, from: NodeId);

    /// Node `from` committed a token revocation to the store.
    fn revocations_changed(&self, from: NodeId);

    /// The link to the other nodes went down (`linked = false`: nothing arrives
    /// from them) or came back; `node` names this node, `message` says why.
    fn link(&self, linked: bool, node: &str, message: &str);
}

/// The bus of a hub that is alone: nothing leaves, nothing arrives.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Bus for Local {
    fn attach(&self, _node: NodeId, _events: Weak<dyn BusEvents>, _metrics: &Arc<Metrics>) {}
    fn publish(&self, _publication: &Publication) {}
    fn presence(&self, _change: &PresenceChange) {}
    fn takeover(&self, _device: &Arc<DeviceInfo>, _at_ms: u64) {}
}
