//! The sending task of the link: [`Link`] sends publications, presence changes,
//! heartbeats, subscriptions, History requests and answers, and joins (the
//! receiving task is in `receive`, the connection they share in `connection`).
//!
//! The link is *up* once a heartbeat went through; it goes down when a command
//! fails or the connection drops, and every time it comes back up the node joins
//! again (see [`Link::join`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc, Weak},
    time::Instant,
};

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{
    connection::{redis_now, unlinked, Heard, Inbound, LINKED},
    keys::{self, Cover},
    wire::{self, Writer},
    Out, Shared,
};
use crate::{
    hub::{history::Kept, BusEvents, NodeId, Publication},
    metrics::ClusterMetrics,
};

/// Items taken from the queue for one round trip to Redis.
const SEND_BATCH: usize = 2048;

/// A frame of publications is cut at about this size (Redis buffers a slow
/// subscriber's messages up to its `client-output-buffer-limit`).
const FRAME_BYTES: usize = 512 * 1024;

/// Fields per HSET when a node rewrites its hash of held devices.
const HSET_CHUNK: usize = 1000;

/// The sending task, started by `connection::start`.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    shared: Arc<Shared>,
    node: NodeId,
    events: Weak<dyn BusEvents>,
    metrics: ClusterMetrics,
    conn: ConnectionManager,
    inbound: mpsc::Sender<Inbound>,
    heard: Heard,
    queue: mpsc::UnboundedReceiver<Out>,
) {
    let link = Link {
        writer: Writer::new(node, &shared.name),
        shared,
        node,
        events,
        metrics,
        conn,
        inbound,
        heard,
        subscribed: Cover::default(),
        joined_at: None,
    };
    tokio::spawn(link.run(queue));
}

struct Link {
    shared: Arc<Shared>,
    node: NodeId,
    events: Weak<dyn BusEvents>,
    metrics: ClusterMetrics,
    conn: ConnectionManager,
    writer: Writer,
    inbound: mpsc::Sender<Inbound>,
    heard: Heard,
    /// What this node is subscribed to in Redis (the connection manager
    /// subscribes to it again by itself after a reconnect).
    subscribed: Cover,
    /// When this node last joined.
    joined_at: Option<Instant>,
}

impl Link {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Out>) {
        let mut beat = tokio::time::interval(self.shared.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(SEND_BATCH);
        loop {
            let up = self.shared.up.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = beat.tick() => {
                    if self.events.strong_count() == 0 || self.shared.left.load(Ordering::Relaxed) {
                        break;
                    }
                    self.beat(&mut queue).await;
                }
                _ = self.shared.interest.notified(), if up => {
                    if let Err(e) = self.subscribe().await {
                        self.down(&e);
                    }
                }
                n = queue.recv_many(&mut batch, SEND_BATCH), if up => {
                    if n == 0 {
                        break;
                    }
                    self.send(&mut batch).await;
                }
            }
        }
    }

    /// Joins when the link comes (back) up, stamps this node alive, and finds the
    /// dead.
    async fn beat(&mut self, queue: &mut mpsc::UnboundedReceiver<Out>) {
        let timeout = self.shared.node_timeout;
        let up = self.shared.up.load(Ordering::Relaxed);
        // A rejoin asked for because a presence change was dropped (the queue was
        // full) rewrites everything this node holds: at most twice a node_timeout.
        let may_rejoin = self.joined_at.is_none_or(|t| t.elapsed() >= timeout / 2);
        if !up || (may_rejoin && self.shared.rejoin.load(Ordering::Relaxed)) {
            self.shared.rejoin.store(false, Ordering::Relaxed);
            if let Err(e) = self.join(queue).await {
                self.shared.rejoin.store(true, Ordering::Relaxed);
                self.down(&e);
                return;
            }
            if self.shared.left.load(Ordering::Relaxed) {
                return;
            }
        }
        let started = Instant::now();
        let keys = &self.shared.keys;
        let result: redis::RedisResult<(i64, Vec<String>)> = async {
            let now = redis_now(&mut self.conn).await?;
            let since = now.saturating_sub(timeout.as_millis() as u64);
            redis::pipe()
                .zadd(keys.nodes(), keys::node_name(self.node), now)
                .pexpire(keys.held(self.node), timeout.as_millis() as i64)
                .ignore()
                .zrembyscore(keys.nodes(), "-inf", since)
                .ignore()
                .zrangebyscore(keys.nodes(), since, "+inf")
                .query_async(&mut self.conn)
                .await
        }
        .await;
        let (added, alive) = match result {
            Ok(r) => r,
            Err(e) => {
                self.down(&e);
                return;
            }
        };
        self.metrics.rtt.observe(started.elapsed().as_secs_f64());
        self.metrics.nodes.set(alive.len() as i64);
        if added == 1 {
            // This node was not listed: it missed heartbeats for node_timeout (a
            // stall) and the others took it for dead, or Redis lost its data.
            tracing::warn!(node = %self.shared.name, "this node was dropped from the cluster's nodes: joining again");
            self.joined_at = None;
            self.shared.rejoin.store(true, Ordering::Relaxed);
        }
        // Nodes that were alive before an outage of Redis need a node_timeout to
        // join again: until then, missing is not dead.
        let settled = self.joined_at.is_some_and(|t| t.elapsed() >= timeout);
        self.bury(alive.iter().filter_map(|n| keys::parse_node(n)), settled);
    }

    /// Nodes known here (heard from, or listed alive before) that the nodes set no
    /// longer lists are dead (their last heartbeat is older than `node_timeout`):
    /// their devices go offline here. A node is listed before it sends anything
    /// (see `join`), so a node heard from and not listed is not a newcomer.
    fn bury(&self, alive: impl Iterator<Item = NodeId>, settled: bool) {
        let dead: Vec<NodeId> = {
            let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            let alive: HashSet<NodeId> = alive.collect();
            for n in &alive {
                heard.insert(*n, Instant::now());
            }
            if !settled {
                return;
            }
            let dead: Vec<NodeId> = heard
                .keys()
                .filter(|n| **n != self.node && !alive.contains(n))
                .copied()
                .collect();
            for n in &dead {
                heard.remove(n);
            }
            dead
        };
        if dead.is_empty() {
            return;
        }
        let Some(hub) = self.events.upgrade() else {
            return;
        };
        for n in dead {
            tracing::warn!(node = %keys::node_name(n), "cluster node silent for node_timeout: its devices are offline");
            hub.node_devices(n, None);
        }
    }

    /// (Re)joins: subscribes, sends what waited, rewrites what this node holds
    /// and tells the others, then reads what they hold.
    async fn join(&mut self, queue: &mut mpsc::UnboundedReceiver<Out>) -> redis::RedisResult<()> {
        self.subscribe().await?;
        // What waited is older than what this node holds now: it goes first. Only
        // what is queued now: under load the queue never empties.
        let mut left = queue.len();
        let mut batch = Vec::with_capacity(SEND_BATCH);
        while left > 0 {
            left -= queue.recv_many(&mut batch, left.min(SEND_BATCH)).await;
            self.send_all(&mut batch).await?;
        }
        if self.shared.left.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(hub) = self.events.upgrade() else {
            return Ok(());
        };
        let held = hub.local_devices();
        drop(hub);
        let now = redis_now(&mut self.conn).await?;
        let key = self.shared.keys.held(self.node);
        let mut pipe = redis::pipe();
        pipe.del(&key).ignore();
        for chunk in held.chunks(HSET_CHUNK) {
            let fields: Vec<(&str, Vec<u8>)> = chunk
                .iter()
                .map(|(d, since)| (d.id.as_str(), wire::held_value(d, *since)))
                .collect();
            pipe.hset_multiple(&key, &fields).ignore();
        }
        // Listed alive only once its hash is whole: a node reading it then (see
        // `snapshot`) never takes a half-written hash for what this node holds.
        pipe.pexpire(&key, self.shared.node_timeout.as_millis() as i64)
            .ignore()
            .zadd(self.shared.keys.nodes(), keys::node_name(self.node), now)
            .ignore()
            .publish(self.shared.keys.control(), self.writer.owned(&held))
            .ignore();
        pipe.query_async::<()>(&mut self.conn).await?;
        // After what arrived before it; never waiting on a receiver that lags.
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            let _ = inbound.send(Inbound::Snapshot).await;
        });
        self.joined_at = Some(Instant::now());
        self.shared.count_all.store(true, Ordering::Relaxed);
        if !self.shared.up.swap(true, Ordering::Relaxed) {
            tracing::info!(node = %self.shared.name, devices = held.len(), "cluster link up");
            if let Some(hub) = self.events.upgrade() {
                hub.link(true, &self.shared.name, LINKED);
            }
        }
        self.metrics.link_up.set(1);
        Ok(())
    }

    /// Brings the Redis subscriptions to the cover of the dashboards' patterns:
    /// new ones first, so that nothing is missed while they are refined.
    async fn subscribe(&mut self) -> redis::RedisResult<()> {
        let Some(hub) = self.events.upgrade() else {
            return Ok(());
        };
        let mut want = self.shared.keys.cover(&hub.patterns());
        drop(hub);
        want.channels.insert(self.shared.keys.inbox(self.node));
        let have = &self.subscribed;
        let diff = |a: &std::collections::BTreeSet<String>, b| -> Vec<String> {
            a.difference(b).cloned().collect()
        };
        let (add, padd) = (
            diff(&want.channels, &have.channels),
            diff(&want.patterns, &have.patterns),
        );
        let (remove, premove) = (
            diff(&have.channels, &want.channels),
            diff(&have.patterns, &want.patterns),
        );
        if !add.is_empty() {
            self.conn.subscribe(add).await?;
        }
        if !padd.is_empty() {
            self.conn.psubscribe(padd).await?;
        }
        if !remove.is_empty() {
            self.conn.unsubscribe(remove).await?;
        }
        if !premove.is_empty() {
            self.conn.punsubscribe(premove).await?;
        }
        self.metrics
            .subscriptions
            .set((want.channels.len() + want.patterns.len()) as i64);
        *self
            .shared
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = want.clone();
        self.subscribed = want;
        Ok(())
    }

    /// Sends a batch taken from the queue; a failure takes the link down and
    /// counts the batch's publications as lost.
    async fn send(&mut self, batch: &mut Vec<Out>) {
        // A History request goes out once this node receives the subscription's
        // live telemetry (see `Bus::history`).
        let asks = batch
            .iter()
            .any(|o| matches!(o, Out::HistoryRequest { .. }));
        let sent = match asks {
            true => match self.subscribe().await {
                Ok(()) => self.send_all(batch).await,
                Err(e) => Err(e),
            },
            false => self.send_all(batch).await,
        };
        if let Err(e) = sent {
            batch.clear();
            self.down(&e);
        }
    }

    async fn send_all(&mut self, batch: &mut Vec<Out>) -> redis::RedisResult<()> {
        let bytes: usize = batch.iter().map(Out::bytes).sum();
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let mut pipe = redis::pipe();
        let mut groups: Vec<(String, Vec<Publication>)> = Vec::new();
        // Where each category's group is in `groups` (many categories per batch).
        let mut group_of: HashMap<String, usize> = HashMap::new();
        let mut publications = 0u64;
        let mut control = false;
        let held = self.shared.keys.held(self.node);
        let mut leaving = None;
        for out in batch.drain(..) {
            match out {
                Out::Publication(p) => {
                    publications += 1;
                    match group_of.get(p.category()) {
                        Some(&i) => groups[i].1.push(p),
                        None => {
                            group_of.insert(p.category().to_owned(), groups.len());
                            groups.push((p.category().to_owned(), vec![p]));
                        }
                    }
                }
                other => {
                    // Publications queued before a presence change leave before it.
                    self.publish_groups(&mut pipe, &mut groups);
                    group_of.clear();
                    control = true;
                    match other {
                        Out::Presence(c) => {
                            if c.online {
                                pipe.hset(
                                    &held,
                                    &c.device.id,
                                    wire::held_value(&c.device, c.at_ms),
                                );
                            } else {
                                pipe.hdel(&held, &c.device.id);
                            }
                            pipe.ignore()
                                .publish(self.shared.keys.control(), self.writer.presence(&c))
                                .ignore();
                        }
                        Out::Takeover(d, at_ms) => {
                            pipe.hset(&held, &d.id, wire::held_value(&d, at_ms))
                                .ignore()
                                .publish(
                                    self.shared.keys.control(),
                                    self.writer.takeover(&d, at_ms),
                                )
                                .ignore();
                        }
                        Out::Released(id) => {
                            pipe.hdel(&held, id).ignore();
                        }
                        Out::NotificationsCreated => {
                            pipe.publish(
                                self.shared.keys.control(),
                                self.writer.notifications_created(),
                            )
                            .ignore();
                        }
                        Out::RevocationsChanged => {
                            pipe.publish(
                                self.shared.keys.control(),
                                self.writer.revocations_changed(),
                            )
                            .ignore();
                        }
                        Out::Leave(done) => {
                            pipe.zrem(self.shared.keys.nodes(), keys::node_name(self.node))
                                .ignore()
                                .del(&held)
                                .ignore()
                                .publish(self.shared.keys.control(), self.writer.leaving())
                                .ignore();
                            leaving = Some(done);
                        }
                        Out::HistoryRequest {
                            id,
                            patterns,
                            filter,
                        } => {
                            let others: HashSet<NodeId> = self
                                .heard
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .keys()
                                .filter(|n| **n != self.node)
                                .copied()
                                .collect();
                            self.shared
                                .answered(id, None, Vec::new(), false, Some(others));
                            pipe.publish(
                                self.shared.keys.control(),
                                self.writer.history_request(id, &patterns, &filter),
                            )
                            .ignore();
                        }
                        Out::Counts(devices) => {
                            pipe.publish(self.shared.keys.control(), self.writer.counts(&devices))
                                .ignore();
                        }
                        Out::HistoryReply { to, id, kept } => {
                            self.reply(&mut pipe, to, id, &kept);
                        }
                        Out::Publication(_) => {}
                    }
                }
            }
        }
        self.publish_groups(&mut pipe, &mut groups);
        if control && leaving.is_none() {
            // A hash created by this batch expires like the node.
            pipe.pexpire(&held, self.shared.node_timeout.as_millis() as i64)
                .ignore();
        }
        match pipe.query_async::<()>(&mut self.conn).await {
            Ok(()) => {
                self.metrics.sent.inc_by(publications);
                if let Some(done) = leaving {
                    self.shared.left.store(true, Ordering::Relaxed);
                    self.shared.up.store(false, Ordering::Relaxed);
                    self.metrics.link_up.set(0);
                    let _ = done.send(());
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.lost("redis_error").inc_by(publications);
                if control {
                    self.shared.rejoin.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// One PUBLISH per category (per [`FRAME_BYTES`]) for the publications grouped
    /// so far.
    fn publish_groups(
        &self,
        pipe: &mut redis::Pipeline,
        groups: &mut Vec<(String, Vec<Publication>)>,
    ) {
        for (category, items) in groups.drain(..) {
            let channel = self.shared.keys.category(&category);
            let mut start = 0;
            let mut size = 0;
            for (i, p) in items.iter().enumerate() {
                size += p
                    .message()
                    .message(crate::hub::WireFormat::Protobuf)
                    .payload()
                    .len()
                    + 64;
                if size >= FRAME_BYTES || i + 1 == items.len() {
                    pipe.publish(&channel, self.writer.publications(items[start..=i].iter()))
                        .ignore();
                    start = i + 1;
                    size = 0;
                }
            }
        }
    }

    /// An answer to node `to`'s History request, in frames of about
    /// [`FRAME_BYTES`]; the last says so.
    fn reply(&self, pipe: &mut redis::Pipeline, to: NodeId, id: u64, kept: &[Kept]) {
        let channel = self.shared.keys.inbox(to);
        let mut start = 0;
        let mut size = 0;
        for (i, k) in kept.iter().enumerate() {
            size += k.messages.iter().map(|m| m.len() + 8).sum::<usize>() + 64;
            if size >= FRAME_BYTES && i + 1 < kept.len() {
                pipe.publish(
                    &channel,
                    self.writer.history_reply(id, &kept[start..=i], false),
                )
                .ignore();
                start = i + 1;
                size = 0;
            }
        }
        pipe.publish(
            &channel,
            self.writer.history_reply(id, &kept[start..], true),
        )
        .ignore();
    }

    fn down(&self, e: &redis::RedisError) {
        unlinked(&self.shared, &self.events, &self.metrics, Some(e));
    }
}
