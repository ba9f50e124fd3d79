//! The receiving side of the link: what arrives from the other nodes, handed to
//! the hub in the order it arrived, and the snapshot of what they hold that a
//! node reads each time it joins (see `link`).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Instant,
};

use bytes::Bytes;
use redis::{aio::ConnectionManager, AsyncCommands as _, PushKind, Value};
use tokio::sync::mpsc;

use super::{
    connection::{redis_now, Heard, Inbound},
    keys,
    wire::{Reader, Said},
    Out, Shared,
};
use crate::{
    hub::{BusEvents, NodeId},
    metrics::ClusterMetrics,
};

/// Hands what arrives to the hub, in the order it arrived.
pub(super) async fn receive(
    shared: Arc<Shared>,
    node: NodeId,
    events: Weak<dyn BusEvents>,
    metrics: ClusterMetrics,
    (mut inbound, queued): (mpsc::Receiver<Inbound>, Arc<AtomicUsize>),
    mut conn: ConnectionManager,
    heard: Heard,
) {
    let mut reader = Reader::default();
    let bad = metrics.lost("bad_frame");
    while let Some(msg) = inbound.recv().await {
        let Some(hub) = events.upgrade() else { break };
        let (info, bytes) = match msg {
            Inbound::Snapshot => {
                if let Err(e) = snapshot(&shared, node, &*hub, &mut conn, &mut reader, &heard).await
                {
                    tracing::warn!(error = %e, "reading what the other nodes hold failed; retrying at the next heartbeat");
                    shared.rejoin.store(true, Ordering::Relaxed);
                }
                continue;
            }
            Inbound::Push(info, bytes) => (info, bytes),
        };
        queued.fetch_sub(bytes, Ordering::Relaxed);
        let payload = match info.kind {
            PushKind::Message | PushKind::PMessage => match info.data.into_iter().last() {
                Some(Value::BulkString(b)) => Bytes::from(b),
                _ => continue,
            },
            _ => continue,
        };
        let received = match reader.read(payload) {
            Ok(r) => r,
            Err(e) => {
                bad.inc();
                tracing::debug!(error = %e, "refused a cluster frame");
                continue;
            }
        };
        let from = received.node;
        if from == node {
            // Redis sends this node's own publications back to it.
            continue;
        }
        heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from, Instant::now());
        match received.said {
            Said::Publications(list) => {
                metrics.received.inc_by(list.len() as u64);
                for p in list {
                    hub.publication(from, p);
                }
            }
            Said::Presence(change) => hub.presence(from, change),
            Said::Takeover(device, at_ms) => hub.takeover(from, device, at_ms),
            Said::Owned(devices) => {
                tracing::info!(node = %received.node_name, devices = devices.len(), "cluster node joined");
                // The newcomer knows none of this node's devices' counts.
                shared.count_all.store(true, Ordering::Relaxed);
                hub.node_devices(from, Some(devices));
            }
            Said::HistoryRequest {
                id,
                patterns,
                filter,
            } => {
                // Scanning this node's devices takes milliseconds on a large
                // fleet: off this task, which must keep handing over what arrives.
                let (hub, shared) = (hub.clone(), shared.clone());
                tokio::task::spawn_blocking(move || {
                    let kept = hub.kept(&patterns, &filter);
                    shared.enqueue(Out::HistoryReply { to: from, id, kept });
                });
            }
            Said::Counts(devices) => hub.counters(from, devices),
            Said::NotificationsCreated => hub.notifications_created(from),
            Said::RevocationsChanged => hub.revocations_changed(from),
            Said::HistoryReply { id, series, last } => {
                shared.answered(id, Some(from), series, last, None);
            }
            Said::Leaving => {
                tracing::info!(node = %received.node_name, "cluster node left");
                heard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&from);
                hub.node_devices(from, None);
            }
        }
    }
}

/// Reads what every other live node holds and gives it to the hub.
async fn snapshot(
    shared: &Shared,
    node: NodeId,
    hub: &dyn BusEvents,
    conn: &mut ConnectionManager,
    reader: &mut Reader,
    heard: &Heard,
) -> redis::RedisResult<()> {
    let now = redis_now(conn).await?;
    let since = now.saturating_sub(shared.node_timeout.as_millis() as u64);
    let alive: Vec<String> = conn
        .zrangebyscore(shared.keys.nodes(), since, "+inf")
        .await?;
    let alive: HashSet<NodeId> = alive.iter().filter_map(|n| keys::parse_node(n)).collect();
    for &other in alive.iter().filter(|n| **n != node) {
        let fields: Vec<(String, Vec<u8>)> = conn.hgetall(shared.keys.held(other)).await?;
        let mut devices = Vec::with_capacity(fields.len());
        for (_, value) in fields {
            match reader.held(Bytes::from(value)) {
                Ok(d) => devices.push(d),
                Err(e) => tracing::warn!(error = %e, "refused a held device"),
            }
        }
        heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(other, Instant::now());
        hub.node_devices(other, Some(devices));
    }
    Ok(())
}
