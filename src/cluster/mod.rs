//! The live plane of a cluster: [`RedisBus`], the [`Bus`] that joins this node to
//! the others through one Redis (`serve --cluster redis://...`).
//!
//! What crosses Redis, and how (names in [`keys`], frames in [`wire`]):
//! - **Telemetry**: every publication accepted here goes to its category's
//!   channel. A node subscribes only to the channels that cover its dashboards'
//!   patterns, so Redis sends it only what its dashboards need, and it fans that
//!   out through the hub's own path (encoded once, compressed once). The
//!   publications queued since the last send travel in one frame per category:
//!   one PUBLISH for many, never one per dashboard or per node.
//! - **Presence and takeovers** go to the control channel; each node also keeps
//!   the devices it holds in a hash of its own, which a node (re)joining reads to
//!   learn who is online where.
//! - **Liveness**: every `heartbeat` a node stamps itself in the nodes set and
//!   extends its hash's expiry. A node from which nothing was heard for
//!   `node_timeout` is dead: its devices go offline on every other node.
//!
//! Invariants:
//! - The hub never waits for Redis: [`Bus`] methods only queue. The queue is
//!   bounded in bytes (`cluster.queue_bytes`); a publication that does not fit
//!   is dropped and counted, a presence change that does not fit is repaired by
//!   republishing everything this node holds.
//! - Everything this node sends leaves from one task, in order, over one
//!   connection, so every other node sees it in that order.
//! - While Redis is unreachable the node serves its own devices and dashboards
//!   as if alone; the link reconnects by itself, and on every (re)join the node
//!   rewrites what it holds and reads what the others hold.
//! - Redis credentials are never logged (see `config::redacted`).

mod connection;
mod keys;
mod link;
mod receive;
mod wire;

pub use keys::Cover;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use redis::IntoConnectionInfo as _;
use tokio::sync::{mpsc, Notify};

use crate::{
    config::{self, redacted},
    hub::{
        bus::BoxFuture, history::Kept, Bus, BusEvents, DeviceInfo, Filter, NodeId, Pattern,
        PresenceChange, Publication, WireFormat,
    },
    metrics::Metrics,
    proto::DeviceStats,
};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster URL {url}: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("cluster.heartbeat must be > 0 and cluster.node_timeout at least 3 heartbeats")]
    Timing,
    #[error("reading the cluster's CA certificate {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What waits to be sent, in order.
enum Out {
    Publication(Publication),
    Presence(PresenceChange),
    Takeover(Arc<DeviceInfo>, u64),
    /// Another node took this device over: it is no longer held here.
    Released(String),
    /// This node leaves the cluster: answered once the others were told.
    Leave(tokio::sync::oneshot::Sender<()>),
    /// Asks every node for the History of a new subscription (see `Pending`).
    HistoryRequest {
        id: u64,
        patterns: Vec<Pattern>,
        filter: Filter,
    },
    /// Counts of devices held here that changed.
    Counts(Vec<DeviceStats>),
    /// New notifications in the shared store.
    NotificationsCreated,
    /// A new revocation in the shared store.
    RevocationsChanged,
    /// Answers node `to`'s request `id`.
    HistoryReply {
        to: NodeId,
        id: u64,
        kept: Vec<Kept>,
    },
}

impl Out {
    /// What it holds, as counted against `cluster.queue_bytes`.
    fn bytes(&self) -> usize {
        const OVERHEAD: usize = 128;
        OVERHEAD
            + match self {
                Out::Publication(p) => p.message().message(WireFormat::Protobuf).payload().len(),
                Out::Counts(devices) => devices.len() * 96,
                Out::HistoryReply { kept, .. } => kept
                    .iter()
                    .flat_map(|k| &k.messages)
                    .map(|m| m.len() + 8)
                    .sum(),
                _ => 0,
            }
    }
}

/// Shared by the bus and its tasks.
struct Shared {
    /// This node's name (`cluster.node_id`).
    name: String,
    keys: keys::Keys,
    heartbeat: Duration,
    node_timeout: Duration,
    client: redis::Client,
    queue: mpsc::UnboundedSender<Out>,
    /// Taken by the link task when the bus is attached.
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
    queued_bytes: AtomicUsize,
    queue_bytes: usize,
    /// The dashboards' patterns changed.
    interest: Notify,
    /// Joined: the last heartbeat went through and nothing since says otherwise.
    up: AtomicBool,
    /// Rewrite and republish what this node holds at the next heartbeat (a
    /// presence change was dropped, or the connection to Redis was replaced).
    rejoin: AtomicBool,
    /// The node left the cluster (shutting down): no more heartbeats.
    left: AtomicBool,
    /// What the node is subscribed to in Redis, as last applied.
    subscribed: Mutex<keys::Cover>,
    /// History requests of this node waiting for the others' answers.
    pending: Mutex<HashMap<u64, Pending>>,
    /// The counts last sent per device held here.
    counted: Mutex<HashMap<String, DeviceStats>>,
    /// A node joined (or this one did): send every device's counts next time.
    count_all: AtomicBool,
}

/// One History request of this node: what answered so far, and who has not.
struct Pending {
    /// The nodes that have not finished answering; `None` until the request is
    /// sent (the nodes alive then).
    waiting: Option<HashSet<NodeId>>,
    got: Vec<Kept>,
    done: Option<tokio::sync::oneshot::Sender<Vec<Kept>>>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records part of an answer (or, with `from == None`, who must answer);
    /// completes the request when nobody is left.
    fn answered(
        &self,
        id: u64,
        from: Option<NodeId>,
        kept: Vec<Kept>,
        last: bool,
        waiting: Option<HashSet<NodeId>>,
    ) {
        let mut pending = self.pending();
        let Some(p) = pending.get_mut(&id) else {
            return;
        };
        if let Some(w) = waiting {
            p.waiting = Some(w);
        }
        p.got.extend(kept);
        if let (Some(w), Some(from), true) = (&mut p.waiting, from, last) {
            w.remove(&from);
        }
        if p.waiting.as_ref().is_some_and(HashSet::is_empty) {
            if let Some(p) = pending.remove(&id) {
                if let Some(done) = p.done {
                    let _ = done.send(p.got);
                }
            }
        }
    }
}

/// How long a new subscription waits for the other nodes' History.
const HISTORY_WAIT: Duration = Duration::from_secs(1);

/// A [`Bus`] over Redis. Build it with [`RedisBus::new`]; the hub attaches it.
pub struct RedisBus {
    shared: Arc<Shared>,
    metrics: std::sync::OnceLock<crate::metrics::ClusterMetrics>,
}

impl RedisBus {
    /// A bus for the cluster `config.url` (which must be set). Nothing connects
    /// before the hub attaches it; a Redis that cannot be reached then is retried
    /// with back-off while the node serves alone (`/readyz` says 503).
    pub fn new(config: &config::Cluster, listen: SocketAddr) -> Result<Arc<Self>, ClusterError> {
        if config.heartbeat.is_zero() || config.node_timeout < config.heartbeat * 3 {
            return Err(ClusterError::Timing);
        }
        let url = config.url.clone().unwrap_or_default();
        let bad = |source| ClusterError::Url {
            url: redacted(&url),
            source,
        };
        let info = url.as_str().into_connection_info().map_err(bad)?;
        // RESP3: subscriptions and commands share one connection.
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client = match &config.ca {
            // Redis's certificate chains to a private CA.
            Some(ca) => {
                let root = std::fs::read(ca).map_err(|source| ClusterError::Ca {
                    path: ca.clone(),
                    source,
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(info, certs).map_err(bad)?
            }
            None => redis::Client::open(info).map_err(bad)?,
        };
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let name = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), listen.port()));
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                name,
                keys: keys::Keys::new(&config.prefix),
                heartbeat: config.heartbeat,
                node_timeout: config.node_timeout,
                client,
                queue,
                queue_rx: Mutex::new(Some(queue_rx)),
                queued_bytes: AtomicUsize::new(0),
                queue_bytes: config.queue_bytes,
                interest: Notify::new(),
                up: AtomicBool::new(false),
                rejoin: AtomicBool::new(true),
                left: AtomicBool::new(false),
                subscribed: Mutex::default(),
                pending: Mutex::default(),
                counted: Mutex::default(),
                count_all: AtomicBool::new(true),
            }),
            metrics: std::sync::OnceLock::new(),
        }))
    }

    /// This node's name in the cluster.
    pub fn node_name(&self) -> &str {
        &self.shared.name
    }

    /// The Redis channels and patterns this node subscribes to, as last applied
    /// (they follow its dashboards' patterns a round trip behind).
    pub fn subscribed(&self) -> Cover {
        self.shared
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, out: Out) {
        let publication = matches!(out, Out::Publication(_));
        if self.shared.enqueue(out) {
            return;
        }
        if publication {
            if let Some(m) = self.metrics.get() {
                m.lost("queue_full").inc();
            }
        } else {
            // Repaired from what the node holds when Redis takes sends again.
            self.shared.rejoin.store(true, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Queues `out` if it fits `queue_bytes` (a departure always does); false if
    /// it was dropped.
    fn enqueue(&self, out: Out) -> bool {
        let bytes = out.bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued.saturating_add(bytes) > self.queue_bytes && !matches!(out, Out::Leave(_)) {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        if self.queue.send(out).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        true
    }
}

impl Bus for RedisBus {
    /// Must be called within a tokio runtime: it starts the link's tasks, which
    /// end when the hub is gone.
    fn attach(&self, node: NodeId, events: Weak<dyn BusEvents>, metrics: &Arc<Metrics>) {
        let rx = self
            .shared
            .queue_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(rx) = rx else { return };
        let _ = self.metrics.set(metrics.cluster.clone());
        tracing::info!(node = %self.shared.name, id = %keys::node_name(node), "joining the cluster");
        connection::start(
            self.shared.clone(),
            node,
            events,
            metrics.cluster.clone(),
            rx,
        );
    }

    fn publish(&self, publication: &Publication) {
        self.send(Out::Publication(publication.clone()));
    }

    fn presence(&self, change: &PresenceChange) {
        self.send(Out::Presence(change.clone()));
    }

    fn takeover(&self, device: &Arc<DeviceInfo>, at_ms: u64) {
        self.send(Out::Takeover(device.clone(), at_ms));
    }

    fn counts_devices(&self) -> bool {
        true
    }

    fn counters(&self, devices: Vec<DeviceStats>) {
        if !self.ready() {
            return;
        }
        let all = self.shared.count_all.swap(false, Ordering::Relaxed);
        let changed: Vec<DeviceStats> = {
            let mut counted = self
                .shared
                .counted
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let changed = devices
                .iter()
                .filter(|d| all || counted.get(&d.device_id) != Some(*d))
                .cloned()
                .collect();
            // Only the devices held now are remembered.
            *counted = devices
                .into_iter()
                .map(|d| (d.device_id.clone(), d))
                .collect();
            changed
        };
        if !changed.is_empty() && !self.shared.enqueue(Out::Counts(changed)) {
            self.shared.count_all.store(true, Ordering::Relaxed);
        }
    }

    fn released(&self, device: &Arc<DeviceInfo>) {
        self.send(Out::Released(device.id.clone()));
    }

    fn interest_changed(&self) {
        self.shared.interest.notify_one();
    }

    fn ready(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed) && !self.shared.left.load(Ordering::Relaxed)
    }

    fn history(&self, patterns: &[Pattern], filter: &Filter) -> BoxFuture<'static, Vec<Kept>> {
        if !self.ready() {
            return Box::pin(std::future::ready(Vec::new()));
        }
        let id: u64 = rand::random();
        let (done, answered) = tokio::sync::oneshot::channel();
        let shared = self.shared.clone();
        shared.pending().insert(
            id,
            Pending {
                waiting: None,
                got: Vec::new(),
                done: Some(done),
            },
        );
        let queued = shared.enqueue(Out::HistoryRequest {
            id,
            patterns: patterns.to_vec(),
            filter: filter.clone(),
        });
        Box::pin(async move {
            if queued {
                if let Ok(Ok(got)) = tokio::time::timeout(HISTORY_WAIT, answered).await {
                    return got;
                }
            }
            // Whatever answered in time.
            shared
                .pending()
                .remove(&id)
                .map(|p| p.got)
                .unwrap_or_default()
        })
    }

    fn notifications_created(&self) {
        self.send(Out::NotificationsCreated);
    }

    fn revocations_changed(&self) {
        self.send(Out::RevocationsChanged);
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        let (done, left) = tokio::sync::oneshot::channel();
        let sent = self.shared.enqueue(Out::Leave(done));
        Box::pin(async move {
            if sent {
                let _ = left.await;
            }
        })
    }
}

/// The host's name, for the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}
