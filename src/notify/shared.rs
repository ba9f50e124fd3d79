//! Notifications with a store shared by several nodes (PostgreSQL).
//!
//! Each node keeps its own [`Book`](super::campaign::Book) of the open
//! notifications, so the hot paths (what to send a device, is this ack valid,
//! when to resend) stay in memory; the shared store is the truth they come back
//! to:
//! - **every tick** ([`Notifier::sync`]) a node reads the open notifications and
//!   their counts: those created on other nodes are loaded and their targets
//!   connected here are woken (paced); those completed are retired, their last
//!   progress announced; the counts (every node's acks) replace its own, so every
//!   node's dashboards see the same progress within a tick;
//! - **when another node creates one**, the bus says so at once
//!   (`NotificationsCreated`, through Redis) and the node syncs without waiting
//!   for its tick. Losing that message only costs a tick;
//! - **when a device connects** ([`Notifier::device_connected`]), its open
//!   deliveries are read from the store, with their states and write counts: it
//!   may have been served by another node until now, and its redelivery back-off
//!   continues from there;
//! - **expiry, completion and pruning** run in SQL on one node at a time, the
//!   holder of the sweep [`Lease`] (a PostgreSQL advisory lock): the others only
//!   expire their copies in memory, so their sessions stop resending.
//!
//! Acks are recorded by the node the device is connected to, once (`state < 2`
//! in SQL); a device is connected to one node at a time (takeover).

use std::{collections::BTreeSet, sync::Arc};

use super::{campaign::Meta, dispatch, Notifier};
use crate::{
    notify::Target,
    store::{Done, Lease, Op, Select, Shared, StoreError},
};

impl Notifier {
    /// Shared store: brings this node's copy in line with the store (see the
    /// module doc). Returns whether it succeeded.
    pub(super) async fn sync(&self, shared: &Shared) -> Result<(), StoreError> {
        // What this node knew before reading: a notification it creates meanwhile
        // is committed before it is known here, so it cannot look completed.
        let known: BTreeSet<i64> = self.lock().seqs().into_iter().collect();
        let open = shared.open_counts().await?;
        let new: Vec<i64> = open
            .keys()
            .filter(|s| !known.contains(s))
            .copied()
            .collect();
        let gone: Vec<i64> = known
            .iter()
            .filter(|s| !open.contains_key(s))
            .copied()
            .collect();
        let loaded = shared.campaigns(&new).await?;
        let last = if gone.is_empty() {
            Default::default()
        } else {
            shared.counts(&gone).await?
        };
        let mut targets = Vec::new();
        let (progress, _) = {
            let mut book = self.lock();
            for c in loaded {
                let ids: Vec<String> = c.deliveries.iter().map(|d| d.0.clone()).collect();
                let meta = Meta::new(c.row.seq, &c.row.notification, ids.len() as u32);
                if book.insert(Arc::new(meta), c.deliveries) {
                    targets.extend(ids);
                }
            }
            for (seq, counts) in open.into_iter().chain(last) {
                book.set_counts(seq, counts);
            }
            book.report()
        };
        for (id, p, selector) in progress {
            self.hub.announce_progress(&id, p, selector.as_deref());
        }
        self.retire(&gone);
        if !targets.is_empty() {
            let wake = self.hub.directory().wakes(&targets);
            tokio::spawn(dispatch::wake_paced(wake, self.config.dispatch_rate));
        }
        Ok(())
    }

    /// Shared store, on the lease holder: expires what is due and completes what
    /// is done, for every node, in SQL; prunes when `prune_before` says so.
    pub(super) async fn sweep(&self, now: u64, prune_before: Option<u64>) {
        match self.store.commit(Op::ExpireDue { now_ms: now }).await {
            Ok(Done::Rows(n)) => {
                self.metrics.notifications_expired.inc_by(n as u64);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "expiring notifications"),
        }
        self.send(Op::CompleteDone { now_ms: now }).await;
        if let Some(before) = prune_before {
            self.send(Op::Prune {
                completed_before_ms: before,
            })
            .await;
            self.send(Op::PruneRevocations { now_ms: now }).await;
        }
        // The sync that follows reads what the sweep did.
        let _ = self.store.barrier().await;
    }

    /// A device connected to this node: with a shared store, what it has open
    /// is read from there first (it may have been served by another node until
    /// now). Without one, this node knows already.
    pub async fn device_connected(&self, device: &str) {
        let Some(shared) = &self.shared else { return };
        let refreshed = async {
            let rows = shared.device_open(device).await?;
            let unknown: Vec<i64> = {
                let book = self.lock();
                let known: BTreeSet<i64> = book.seqs().into_iter().collect();
                rows.iter()
                    .map(|r| r.0)
                    .filter(|s| !known.contains(s))
                    .collect()
            };
            let loaded = shared.campaigns(&unknown).await?;
            let mut book = self.lock();
            for c in loaded {
                let n = c.deliveries.len() as u32;
                book.insert(
                    Arc::new(Meta::new(c.row.seq, &c.row.notification, n)),
                    c.deliveries,
                );
            }
            book.refresh_device(device, &rows);
            Ok::<_, StoreError>(())
        };
        if let Err(e) = refreshed.await {
            tracing::warn!(device, error = %e, "reading the device's open notifications from the store failed: serving what this node knows");
        }
    }

    /// The devices a new notification targets: in the shared registry when there
    /// is one (devices first seen on other nodes included), else in this node's.
    pub(super) async fn resolve(&self, req: &super::Request) -> Result<Vec<String>, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(self
                .hub
                .directory()
                .with_registry(|registry| req.resolve(registry)));
        };
        // One more than allowed, so that too many is told apart from the limit.
        let limit = self.config.max_targets.saturating_add(1);
        match &req.target {
            Target::DeviceIds(ids) => Ok(ids.iter().cloned().collect()),
            Target::Tags(tags) => {
                // This node's own registrations first.
                self.store.barrier().await?;
                shared.resolve(Select::Tags(tags), limit).await
            }
            Target::All => {
                self.store.barrier().await?;
                shared.resolve(Select::All, limit).await
            }
        }
    }
}

/// Runs the sweeps on whichever node holds the lease; tries to take it at most
/// every [`LEASE_RETRY`] when another node has it.
pub(super) struct Sweeper {
    lease: Lease,
    tried: Option<std::time::Instant>,
}

const LEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Sweeper {
    pub fn new(shared: &Shared) -> Self {
        Sweeper {
            lease: shared.lease(),
            tried: None,
        }
    }

    /// Whether this node runs the sweeps now.
    pub async fn holds(&mut self) -> bool {
        if self.lease.is_held() {
            return self.lease.hold().await;
        }
        if self.tried.is_some_and(|t| t.elapsed() < LEASE_RETRY) {
            return false;
        }
        self.tried = Some(std::time::Instant::now());
        self.lease.hold().await
    }
}
