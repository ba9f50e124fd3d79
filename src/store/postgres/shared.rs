//! What only a store shared by several nodes answers: every node keeps its own
//! copy of the open notifications (the hot paths stay in memory), and these
//! reads bring it back to what all the nodes did together.
//!
//! - [`Shared::open_counts`]: the open notifications and their counts by state,
//!   read every `notify.progress_interval` by each node (from `delivery_counts`,
//!   which triggers keep in the transactions that change deliveries, so the
//!   read costs the same for 10 or 100,000 deliveries);
//! - [`Shared::device_open`]: one device's open deliveries, read when it
//!   connects (it may have been served by another node until now);
//! - [`Shared::resolve`]: the targets of a new notification in the shared
//!   registry (devices first seen on other nodes included);
//! - [`Lease`]: which node runs the sweeps (expiry, completion, pruning): the
//!   one holding a PostgreSQL advisory lock, which the database releases when
//!   that node's session ends, so another takes over at its next tick.

use std::collections::BTreeMap;

use deadpool_postgres::{ClientWrapper, Object};

use super::{state, Db};
use crate::store::{Counts, DeliveryState, LoadedCampaign, StoreError};

/// The advisory lock of the node running the sweeps ("telehub" and 2).
const SWEEP_LOCK: i64 = 0x7465_6c65_6875_6202;

/// Reads of a shared store.
#[derive(Clone)]
pub struct Shared {
    db: Db,
}

/// A target selector, as [`Shared::resolve`] takes it.
pub enum Select<'a> {
    All,
    Tags(&'a BTreeMap<String, String>),
}

impl Shared {
    pub(in crate::store) fn new(db: Db) -> Self {
        Shared { db }
    }

    /// Every open notification and its counts by state, in creation order.
    pub async fn open_counts(&self) -> Result<BTreeMap<i64, Counts>, StoreError> {
        let client = self.db.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT c.notification, c.state, sum(c.n)::bigint FROM notifications n
                 JOIN delivery_counts c ON c.notification = n.seq
                 WHERE n.completed_ms IS NULL GROUP BY c.notification, c.state",
            )
            .await?;
        let mut out: BTreeMap<i64, Counts> = BTreeMap::new();
        for r in client.query(&stmt, &[]).await? {
            out.entry(r.get(0))
                .or_default()
                .add(state(r.get(1))?, r.get::<_, i64>(2).max(0) as u64);
        }
        Ok(out)
    }

    /// The counts of notifications `seqs` (open or not; those pruned are left
    /// out).
    pub async fn counts(&self, seqs: &[i64]) -> Result<BTreeMap<i64, Counts>, StoreError> {
        let client = self.db.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT notification, state, sum(n)::bigint FROM delivery_counts
                 WHERE notification = ANY($1) GROUP BY notification, state",
            )
            .await?;
        let mut out: BTreeMap<i64, Counts> = BTreeMap::new();
        for r in client.query(&stmt, &[&seqs]).await? {
            out.entry(r.get(0))
                .or_default()
                .add(state(r.get(1))?, r.get::<_, i64>(2).max(0) as u64);
        }
        Ok(out)
    }

    /// Notifications `seqs` with every device's delivery.
    pub async fn campaigns(&self, seqs: &[i64]) -> Result<Vec<LoadedCampaign>, StoreError> {
        self.db.campaigns(seqs).await
    }

    /// Where `device` stands with every open notification it is a target of:
    /// (sequence number, state, writes so far), in creation order.
    pub async fn device_open(
        &self,
        device: &str,
    ) -> Result<Vec<(i64, DeliveryState, u32)>, StoreError> {
        let client = self.db.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d.notification, d.state, d.attempts FROM deliveries d
                 JOIN notifications n ON n.seq = d.notification
                 WHERE d.device_id = $1 AND n.completed_ms IS NULL
                 ORDER BY d.notification",
            )
            .await?;
        client
            .query(&stmt, &[&device])
            .await?
            .iter()
            .map(|r| Ok((r.get(0), state(r.get(1))?, r.get::<_, i32>(2) as u32)))
            .collect()
    }

    /// The registered devices `select` matches, by id, at most `limit`.
    pub async fn resolve(
        &self,
        select: Select<'_>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.db.client().await?;
        let limit = limit as i64;
        let rows = match select {
            Select::All => {
                client
                    .query("SELECT id FROM devices ORDER BY id LIMIT $1", &[&limit])
                    .await?
            }
            Select::Tags(tags) => {
                let want = serde_json::to_string(tags)?;
                client
                    .query(
                        "SELECT id FROM devices WHERE tags @> ($1::text)::jsonb
                         ORDER BY id LIMIT $2",
                        &[&want, &limit],
                    )
                    .await?
            }
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A lease on the sweeps, not held yet.
    pub fn lease(&self) -> Lease {
        Lease {
            db: self.db.clone(),
            held: None,
        }
    }
}

/// This node's claim to run the sweeps: a session-level advisory lock on a
/// connection taken out of the pool and kept while the lock is held.
pub struct Lease {
    db: Db,
    held: Option<ClientWrapper>,
}

impl Lease {
    /// Whether this node held the lease at its last [`Lease::hold`].
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Whether this node holds the lease now, taking it if it is free. A node
    /// whose connection broke has lost it (PostgreSQL released the lock when the
    /// session ended) and tries to take it again.
    pub async fn hold(&mut self) -> bool {
        if let Some(c) = &self.held {
            if !c.is_closed() {
                return true;
            }
            tracing::warn!("lost the connection holding the sweep lease; taking it again");
            self.held = None;
        }
        // A pooled connection: back to the pool unless the lock is taken on it.
        let client = match self.db.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot try the sweep lease");
                return false;
            }
        };
        match client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK])
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {
                tracing::info!(
                    "this node runs the notification sweeps (expiry, completion, pruning)"
                );
                self.held = Some(Object::take(client));
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "trying the sweep lease");
                false
            }
        }
    }
}
