//! A [`Bus`] joining several hubs in one process.
//!
//! Each node gets a bounded queue and a task that hands what arrives to its hub, so
//! a sender never blocks and never runs another hub's code under its own locks.
//! Events from one node reach every other node in the order they were sent. When
//! a node's queue is full, what does not fit is dropped and counted
//! ([`Network::dropped`]), as a real bus under pressure would.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, OnceLock, Weak,
};

use tokio::sync::mpsc;

use super::{Bus, BusEvents, PresenceChange};
use crate::{
    hub::{DeviceInfo, NodeId, Publication},
    metrics::Metrics,
};

/// Events a node's queue holds before it drops.
const QUEUE: usize = 4096;

enum Event {
    Publication(Publication),
    Presence(PresenceChange),
    Takeover(Arc<DeviceInfo>, u64),
    Counts(Vec<crate::proto::DeviceStats>),
    NotificationsCreated,
    RevocationsChanged,
}

/// A node's queue: events with the node they came from.
type Queue = mpsc::Sender<(NodeId, Event)>;

/// The nodes joined so far.
#[derive(Default)]
pub struct Network {
    nodes: Mutex<Vec<(NodeId, Queue)>>,
    dropped: AtomicU64,
}

impl Network {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A bus for one more node of this network.
    pub fn bus(self: &Arc<Self>) -> Arc<MemoryBus> {
        Arc::new(MemoryBus {
            network: self.clone(),
            node: OnceLock::new(),
        })
    }

    /// Events dropped because a node's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, from: NodeId, event: impl Fn() -> Event) {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for (node, queue) in nodes.iter() {
            // A closed queue is a node that stopped: nothing to count.
            if *node != from
                && matches!(
                    queue.try_send((from, event())),
                    Err(mpsc::error::TrySendError::Full(_))
                )
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One node's side of a [`Network`].
pub struct MemoryBus {
    network: Arc<Network>,
    /// Set by `attach`; nothing is sent before.
    node: OnceLock<NodeId>,
}

impl MemoryBus {
    fn send(&self, event: impl Fn() -> Event) {
        if let Some(&from) = self.node.get() {
            self.network.send(from, event);
        }
    }
}

impl Bus for MemoryBus {
    /// Must be called within a tokio runtime: it spawns the node's delivery task,
    /// which ends when the hub is gone.
    fn attach(&self, node: NodeId, events: Weak<dyn BusEvents>, _metrics: &Arc<Metrics>) {
        if self.node.set(node).is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<(NodeId, Event)>(QUEUE);
        self.network
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((node, tx));
        tokio::spawn(async move {
            while let Some((from, event)) = rx.recv().await {
                let Some(hub) = events.upgrade() else { break };
                match event {
                    Event::Publication(p) => hub.publication(from, p),
                    Event::Presence(c) => hub.presence(from, c),
                    Event::Takeover(d, at_ms) => hub.takeover(from, d, at_ms),
                    Event::Counts(c) => hub.counters(from, c),
                    Event::NotificationsCreated => hub.notifications_created(from),
                    Event::RevocationsChanged => hub.revocations_changed(from),
                }
            }
        });
    }

    fn publish(&self, publication: &Publication) {
        self.send(|| Event::Publication(publication.clone()));
    }

    fn presence(&self, change: &PresenceChange) {
        self.send(|| Event::Presence(change.clone()));
    }

    fn takeover(&self, device: &Arc<DeviceInfo>, at_ms: u64) {
        self.send(|| Event::Takeover(device.clone(), at_ms));
    }

    fn counts_devices(&self) -> bool {
        true
    }

    fn notifications_created(&self) {
        self.send(|| Event::NotificationsCreated);
    }

    fn revocations_changed(&self) {
        self.send(|| Event::RevocationsChanged);
    }

    fn counters(&self, devices: Vec<crate::proto::DeviceStats>) {
        if !devices.is_empty() {
            self.send(|| Event::Counts(devices.clone()));
        }
    }
}
