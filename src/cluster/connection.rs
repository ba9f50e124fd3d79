//! The connection to Redis, shared by the link's two tasks: one RESP3
//! connection kept by the `redis` crate's connection manager (it reconnects with
//! back-off and subscribes again by itself), whose pushes (pub/sub messages, and
//! the manager's own notice of a lost connection) go through a sink that never
//! waits: bounded in frames and bytes, it drops and counts what does not fit.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use redis::{aio::ConnectionManager, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Out, Shared};
use crate::{
    hub::{BusEvents, NodeId},
    metrics::ClusterMetrics,
};

/// Frames that arrived and wait for the receiving task, and their bytes; beyond
/// either, whole frames are dropped and counted (`inbound_full`).
const INBOUND: usize = 8192;
const INBOUND_BYTES: usize = 64 << 20;

/// What dashboards are told when the link goes down and comes back.
pub(super) const UNLINKED: &str = "the cluster's Redis is unreachable: telemetry and presence of devices on other nodes are interrupted (devices on this node go on)";
pub(super) const LINKED: &str =
    "the other nodes are reachable: telemetry and presence of their devices resume";

pub(super) enum Inbound {
    /// A push, and its bytes as counted against [`INBOUND_BYTES`].
    Push(PushInfo, usize),
    /// Read what every other node holds (after this node joined).
    Snapshot,
}

/// Nodes heard from (a frame, or listed alive by a heartbeat), and when.
pub(super) type Heard = Arc<std::sync::Mutex<HashMap<NodeId, Instant>>>;

pub(super) fn start(
    shared: Arc<Shared>,
    node: NodeId,
    events: Weak<dyn BusEvents>,
    metrics: ClusterMetrics,
    queue: mpsc::UnboundedReceiver<Out>,
) {
    let (inbound, inbound_rx) = mpsc::channel(INBOUND);
    let inbound_bytes = Arc::new(AtomicUsize::new(0));
    let sink = {
        let (push, shared, events, metrics) = (
            inbound.clone(),
            shared.clone(),
            events.clone(),
            metrics.clone(),
        );
        let (queued, lost) = (inbound_bytes.clone(), metrics.lost("inbound_full"));
        // Runs on the connection's own task: it never waits.
        move |info: PushInfo| -> Result<(), ()> {
            if info.kind == PushKind::Disconnection {
                // The manager reconnects and subscribes again by itself; the node
                // joins again at the next heartbeat that goes through (Redis may
                // have restarted empty, and what was sent meanwhile is lost).
                shared.rejoin.store(true, Ordering::Relaxed);
                unlinked(&shared, &events, &metrics, None);
                return Ok(());
            }
            let bytes = push_bytes(&info);
            if queued.fetch_add(bytes, Ordering::Relaxed) + bytes > INBOUND_BYTES {
                queued.fetch_sub(bytes, Ordering::Relaxed);
                lost.inc();
                return Ok(());
            }
            match push.try_send(Inbound::Push(info, bytes)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    queued.fetch_sub(bytes, Ordering::Relaxed);
                    match e {
                        mpsc::error::TrySendError::Full(_) => {
                            lost.inc();
                            Ok(())
                        }
                        mpsc::error::TrySendError::Closed(_) => Err(()),
                    }
                }
            }
        }
    };
    let timeout = shared.heartbeat.max(Duration::from_secs(1)) * 2;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_push_sender(sink)
        .set_automatic_resubscription()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let conn = match ConnectionManager::new_lazy_with_config(shared.client.clone(), config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster link cannot start; this node stays alone");
            return;
        }
    };
    if let Some(hub) = events.upgrade() {
        hub.link(false, &shared.name, "joining the cluster");
    }
    let heard = Heard::default();
    tokio::spawn(super::receive::receive(
        shared.clone(),
        node,
        events.clone(),
        metrics.clone(),
        (inbound_rx, inbound_bytes),
        conn.clone(),
        heard.clone(),
    ));
    super::link::spawn(shared, node, events, metrics, conn, inbound, heard, queue);
}

/// The link is down: said once (log, dashboards), then quietly until it is up.
pub(super) fn unlinked(
    shared: &Shared,
    events: &Weak<dyn BusEvents>,
    metrics: &ClusterMetrics,
    error: Option<&redis::RedisError>,
) {
    if shared.up.swap(false, Ordering::Relaxed) {
        match error {
            Some(e) => {
                tracing::error!(error = %e, "cluster link down: serving this node's devices and dashboards alone until Redis is back")
            }
            None => tracing::error!("cluster link lost: reconnecting"),
        }
        if let Some(hub) = events.upgrade() {
            hub.link(false, &shared.name, UNLINKED);
        }
    } else if let Some(e) = error {
        tracing::debug!(error = %e, "cluster link still down");
    }
    metrics.link_up.set(0);
    metrics.nodes.set(0);
}

/// Redis's clock in Unix milliseconds: every node stamps its heartbeats with it,
/// so the nodes' own clocks need not agree.
pub(super) async fn redis_now(conn: &mut ConnectionManager) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// The bytes a push carries.
fn push_bytes(info: &PushInfo) -> usize {
    info.data
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 16,
        })
        .sum()
}
