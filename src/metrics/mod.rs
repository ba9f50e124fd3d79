//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! Hot paths never look a labelled series up per message: a session resolves its
//! [`RoleMeters`] once at connect and then only bumps atomics.

mod delay;
mod process;

pub use delay::DelayHistogram;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

use crate::auth::Role;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `batched` or `conflated`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: &'static str,
}

/// Seconds from a notification's first delivery to a device until its ack:
/// buckets from 1 ms to ~9 hours.
#[derive(Clone)]
pub struct AckLatency(pub Histogram);

impl Default for AckLatency {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 25)))
    }
}

/// Every series the hub exports.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<RoleLabel, Gauge>,
    pub connections_accepted: Family<RoleLabel, Counter>,
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Reloads (SIGHUP) by result.
    pub reloads: Family<ResultLabel, Counter>,
    /// Token refusals by reason, and the keys held (see `auth`).
    pub auth: crate::auth::Meters,
    pub frames_in: Family<RoleLabel, Counter>,
    pub frames_out: Family<RoleLabel, Counter>,
    /// WebSocket bytes as the transport read them (after TLS, still compressed).
    pub wire_in: Family<RoleLabel, Counter>,
    /// WebSocket bytes as the transport wrote them (framed, compressed, before TLS).
    pub wire_out: Family<RoleLabel, Counter>,
    /// Message bytes received, after inflation.
    pub payload_in: Family<RoleLabel, Counter>,
    /// Message bytes sent, before compression and framing.
    pub payload_out: Family<RoleLabel, Counter>,
    pub telemetry_accepted: Counter,
    pub rate_limited: Counter,
    /// Resent telemetry already accepted (uplink confirmations), dropped.
    pub telemetry_duplicates: Counter,
    /// TelemetryConfirmed messages sent.
    pub confirmations: Counter,
    pub deliveries: Counter,
    pub dropped_deliveries: Counter,
    /// Seconds from when the hub built a message (accepted telemetry, a notice; a
    /// batch counts from its oldest telemetry) until the write to a dashboard that
    /// carried it ended, for the oldest message of each write: batching delay,
    /// queueing and the socket.
    /// Fed on every dashboard write, so it is lock-free (see `delay`).
    pub delivery_delay: DelayHistogram,
    /// 1 while the store accepts writes; set at scrape time (see `http::status`).
    pub store_writable: Gauge,
    /// 1 while `/readyz` would answer 200; set at scrape time.
    pub ready: Gauge,
    pub batches_built: Family<KindLabel, Counter>,
    pub batches_queued: Family<KindLabel, Counter>,
    pub conflated_away: Counter,
    pub decode_errors: Counter,
    pub closed_slow: Counter,
    /// Read from the transport at scrape time (see `encode`).
    pub inflate_context_bytes: Gauge,
    /// Devices the fleet view remembers (online, or offline within forget_after).
    pub fleet_devices: Gauge,
    /// Bytes the recent-history windows hold (see `hub::history`).
    pub history_bytes: Gauge,
    /// Bytes of telemetry queued for all dashboards, as accounted (see `hub::outbox`).
    pub queued_bytes: Gauge,
    pub notifications_accepted: Family<SeverityLabel, Counter>,
    pub notifications_delivered: Counter,
    pub notifications_redelivered: Counter,
    pub notifications_acked: Counter,
    pub notifications_expired: Counter,
    pub ack_latency: AckLatency,
    pub store_ops: Counter,
    pub store_commits: Counter,
    /// Store transactions that failed (see `store::writer`).
    pub store_failures: Counter,
    /// Applied changes kept for another attempt; set at scrape time.
    pub store_kept: Gauge,
    /// 1 while this node runs the notification sweeps (shared store: the holder of
    /// the lease; alone: always).
    pub sweeper: Gauge,
    pub cluster: ClusterMetrics,
}

/// The cluster link (see `cluster`): all zero on a node alone.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// 1 while the node is joined to the others through Redis.
    pub link_up: Gauge,
    /// Nodes alive in the cluster, this one included (0 while the link is down).
    pub nodes: Gauge,
    /// Redis channels and patterns this node subscribes to (the cover of its
    /// dashboards' patterns, plus the control channel).
    pub subscriptions: Gauge,
    /// Publications sent to the other nodes.
    pub sent: Counter,
    /// Publications received from other nodes.
    pub received: Counter,
    /// What did not cross, by reason: publications for `queue_full` (Redis too
    /// slow or down for `cluster.queue_bytes`) and `redis_error` (a send failed);
    /// whole frames for `inbound_full` (this node fell behind what arrives) and
    /// `bad_frame` (undecodable, or of another version).
    pub lost: Family<ReasonLabel, Counter>,
    /// Round trip of the heartbeat to Redis.
    pub rtt: Histogram,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            link_up: Gauge::default(),
            nodes: Gauge::default(),
            subscriptions: Gauge::default(),
            sent: Counter::default(),
            received: Counter::default(),
            lost: Family::default(),
            // 50 µs .. ~1.6 s.
            rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl ClusterMetrics {
    pub const LOST_REASONS: [&'static str; 4] =
        ["queue_full", "redis_error", "inbound_full", "bad_frame"];

    pub fn lost(&self, reason: &'static str) -> Counter {
        self.lost.get_or_create(&ReasonLabel { reason }).clone()
    }
}

/// One role's series, resolved once per connection.
#[derive(Clone)]
pub struct RoleMeters {
    pub connections: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub wire_in: Counter,
    pub wire_out: Counter,
    pub payload_in: Counter,
    pub payload_out: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self::default();
        let r = &mut m.registry;
        r.register(
            "telehub_connections",
            "Open WebSocket connections by role",
            m.connections.clone(),
        );
        r.register(
            "telehub_connections_accepted",
            "WebSocket upgrades accepted by role",
            m.connections_accepted.clone(),
        );
        r.register(
            "telehub_connections_refused",
            "Connections or upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabel { result });
        }
        r.register(
            "telehub_reloads",
            "Configuration reloads (SIGHUP) by result (error: a part kept its state)",
            m.reloads.clone(),
        );
        r.register(
            "telehub_tokens_refused",
            "Tokens refused, by reason (the token itself is never logged)",
            m.auth.refused.clone(),
        );
        r.register(
            "telehub_auth_keys_file",
            "Public keys held from auth.jwks_file",
            m.auth.keys_file.clone(),
        );
        r.register(
            "telehub_auth_keys_url",
            "Public keys held from auth.jwks_url (last successful fetch)",
            m.auth.keys_url.clone(),
        );
        r.register(
            "telehub_auth_key_fetch_errors",
            "Fetches of auth.jwks_url that failed (the keys held were kept)",
            m.auth.fetch_errors.clone(),
        );
        r.register(
            "telehub_revocations",
            "Token revocations in force (see auth)",
            m.auth.revocations.clone(),
        );
        r.register(
            "telehub_frames_received",
            "WebSocket data messages received",
            m.frames_in.clone(),
        );
        r.register(
            "telehub_frames_sent",
            "WebSocket data messages sent",
            m.frames_out.clone(),
        );
        // Wire and payload bytes are separate families, not one with a `kind` label:
        // a sum across such a label would add compressed to uncompressed bytes.
        for (name, help, family) in [
            (
                "telehub_wire_received",
                "WebSocket bytes received, as read after TLS (compressed, framed)",
                &m.wire_in,
            ),
            (
                "telehub_wire_sent",
                "WebSocket bytes sent, as written before TLS (compressed, framed)",
                &m.wire_out,
            ),
            (
                "telehub_payload_received",
                "Message bytes received, after inflation",
                &m.payload_in,
            ),
            (
                "telehub_payload_sent",
                "Message bytes sent, before compression and framing",
                &m.payload_out,
            ),
        ] {
            r.register_with_unit(name, help, Unit::Bytes, family.clone());
        }
        r.register(
            "telehub_telemetry_accepted",
            "Telemetry messages accepted for fan-out",
            m.telemetry_accepted.clone(),
        );
        r.register(
            "telehub_telemetry_rate_limited",
            "Telemetry messages refused by a device's rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "telehub_telemetry_duplicates",
            "Resent telemetry messages already accepted, dropped (uplink confirmations)",
            m.telemetry_duplicates.clone(),
        );
        r.register(
            "telehub_telemetry_confirmations",
            "TelemetryConfirmed messages sent to devices",
            m.confirmations.clone(),
        );
        r.register(
            "telehub_telemetry_delivered",
            "Telemetry messages queued to dashboards",
            m.deliveries.clone(),
        );
        r.register(
            "telehub_telemetry_dropped",
            "Telemetry messages dropped from full dashboard queues (oldest first)",
            m.dropped_deliveries.clone(),
        );
        r.register_with_unit(
            "telehub_delivery_delay",
            "Age of the oldest message of each write to a dashboard, from when the hub accepted or built it (a batch: its oldest telemetry) to the end of the write",
            Unit::Seconds,
            m.delivery_delay.clone(),
        );
        r.register(
            "telehub_store_commit_failures",
            "Store transactions that failed: changes already applied are kept and retried, new notifications refused (503)",
            m.store_failures.clone(),
        );
        r.register(
            "telehub_store_kept_ops",
            "Changes applied in memory and kept for another commit attempt while the store cannot write",
            m.store_kept.clone(),
        );
        r.register(
            "telehub_store_writable",
            "1 while the store accepts writes (0: full disk, database unreachable; see /readyz)",
            m.store_writable.clone(),
        );
        r.register(
            "telehub_ready",
            "1 while /readyz answers 200 (not draining, store writable, cluster link up)",
            m.ready.clone(),
        );
        r.register(
            "telehub_batches_built",
            "Batch messages built, each encoded once for every dashboard that gets it, by kind (batched, conflated)",
            m.batches_built.clone(),
        );
        r.register(
            "telehub_batches_queued",
            "Batch messages queued to dashboards (the same built Batch counts once per dashboard), by kind",
            m.batches_queued.clone(),
        );
        r.register(
            "telehub_conflated_away",
            "Telemetry messages a conflated stream did not send: superseded in their interval, or readings unchanged",
            m.conflated_away.clone(),
        );
        r.register(
            "telehub_decode_errors",
            "Messages that were not a valid telehub.v1.Envelope for their endpoint",
            m.decode_errors.clone(),
        );
        r.register(
            "telehub_closed_slow_consumers",
            "Dashboards closed because their control queue overflowed",
            m.closed_slow.clone(),
        );
        r.register(
            "telehub_notifications_accepted",
            "Notifications accepted (durably stored), by severity",
            m.notifications_accepted.clone(),
        );
        r.register(
            "telehub_notifications_delivered",
            "Notifications written to a device for the first time",
            m.notifications_delivered.clone(),
        );
        r.register(
            "telehub_notifications_redelivered",
            "Notifications written to a device again (no ack in time, or after a reconnect)",
            m.notifications_redelivered.clone(),
        );
        r.register(
            "telehub_notifications_acked",
            "Notification acknowledgements accepted (duplicates not counted)",
            m.notifications_acked.clone(),
        );
        r.register(
            "telehub_notifications_expired",
            "Per-device deliveries that expired unacknowledged (critical) or undelivered",
            m.notifications_expired.clone(),
        );
        r.register(
            "telehub_notification_ack_seconds",
            "Time from a notification's first delivery to a device to its ack",
            m.ack_latency.0.clone(),
        );
        r.register(
            "telehub_store_ops",
            "Changes applied by the store's writer",
            m.store_ops.clone(),
        );
        r.register(
            "telehub_store_commits",
            "Store transactions committed (each a group of ops)",
            m.store_commits.clone(),
        );
        r.register(
            "telehub_notify_sweeper",
            "1 while this node runs the notification sweeps (expiry, completion, pruning)",
            m.sweeper.clone(),
        );
        let c = &m.cluster;
        r.register(
            "telehub_cluster_link_up",
            "1 while this node is joined to the cluster through Redis",
            c.link_up.clone(),
        );
        r.register(
            "telehub_cluster_nodes",
            "Nodes alive in the cluster, this one included",
            c.nodes.clone(),
        );
        r.register(
            "telehub_cluster_subscriptions",
            "Redis channels and patterns this node subscribes to",
            c.subscriptions.clone(),
        );
        r.register(
            "telehub_cluster_sent",
            "Publications sent to the other nodes",
            c.sent.clone(),
        );
        r.register(
            "telehub_cluster_received",
            "Publications received from other nodes",
            c.received.clone(),
        );
        for reason in ClusterMetrics::LOST_REASONS {
            c.lost(reason);
        }
        r.register(
            "telehub_cluster_lost",
            "Publications (queue_full, redis_error) or frames (inbound_full, bad_frame) that did not cross the cluster",
            c.lost.clone(),
        );
        r.register_with_unit(
            "telehub_cluster_redis_rtt",
            "Round trip of the heartbeat to Redis",
            Unit::Seconds,
            c.rtt.clone(),
        );
        r.register(
            "telehub_inflate_context_bytes",
            "Memory held for clients that compress with context takeover (their retained deflate windows)",
            m.inflate_context_bytes.clone(),
        );
        r.register(
            "telehub_fleet_devices",
            "Devices the fleet view and history remember (online, or offline within dashboard.forget_after)",
            m.fleet_devices.clone(),
        );
        r.register(
            "telehub_history_bytes",
            "Bytes of telemetry kept for History replays (budget: dashboard.history_max_bytes)",
            m.history_bytes.clone(),
        );
        r.register(
            "telehub_queued_bytes",
            "Bytes of telemetry queued for dashboards, as accounted (bound: dashboard.queued_bytes_max)",
            m.queued_bytes.clone(),
        );
        r.register_collector(Box::new(process::ProcessCollector));
        r.register(
            "telehub_build",
            "The running build: version, target architecture and OS",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("arch", std::env::consts::ARCH),
                ("os", std::env::consts::OS),
            ]),
        );
        m.init_labels();
        m
    }

    /// Why a connection can be refused before its session starts
    /// (`telehub_connections_refused{reason}`).
    pub const REFUSAL_REASONS: [&'static str; 5] = [
        "bad_handshake",
        "conflict",
        "handshake_timeout",
        "origin",
        "tls_handshake",
    ];

    /// Creates every known series at zero, so each family is in `/metrics` from
    /// start: a query such as `rate(...)` then has a series before the first event.
    fn init_labels(&self) {
        for role in [Role::Device, Role::Viewer, Role::Operator] {
            let _ = self.role(role);
            let role = role.as_str();
            let _ = self.connections_accepted.get_or_create(&RoleLabel { role });
        }
        for kind in ["batched", "conflated"] {
            let _ = self.batches(kind);
            let _ = self.batch_deliveries(kind);
        }
        for severity in ["info", "warning", "critical"] {
            let _ = self
                .notifications_accepted
                .get_or_create(&SeverityLabel { severity });
        }
        for reason in Self::REFUSAL_REASONS {
            let _ = self
                .connections_refused
                .get_or_create(&ReasonLabel { reason });
        }
    }

    pub fn role(&self, role: Role) -> RoleMeters {
        let role = role.as_str();
        let of = |f: &Family<RoleLabel, Counter>| f.get_or_create(&RoleLabel { role }).clone();
        RoleMeters {
            connections: self.connections.get_or_create(&RoleLabel { role }).clone(),
            frames_in: of(&self.frames_in),
            frames_out: of(&self.frames_out),
            wire_in: of(&self.wire_in),
            wire_out: of(&self.wire_out),
            payload_in: of(&self.payload_in),
            payload_out: of(&self.payload_out),
        }
    }

    /// Batches built of `kind` (`batched`, `conflated`).
    pub fn batches(&self, kind: &'static str) -> Counter {
        self.batches_built
            .get_or_create(&KindLabel { kind })
            .clone()
    }

    /// Batches queued to dashboards, of `kind`.
    pub fn batch_deliveries(&self, kind: &'static str) -> Counter {
        self.batches_queued
            .get_or_create(&KindLabel { kind })
            .clone()
    }

    /// A reload (SIGHUP) ended: `ok`, or `error` when a part kept its state.
    pub fn reloads(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        self.inflate_context_bytes
            .set(i64::try_from(crate::ws::inflate_context_bytes()).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_from_start_with_its_known_labels() {
        let text = Metrics::new().encode();
        for family in [
            "telehub_connections",
            "telehub_connections_accepted",
            "telehub_connections_refused",
            "telehub_frames_received",
            "telehub_frames_sent",
            "telehub_wire_received_bytes",
            "telehub_wire_sent_bytes",
            "telehub_payload_received_bytes",
            "telehub_payload_sent_bytes",
            "telehub_batches_built",
            "telehub_batches_queued",
            "telehub_notifications_accepted",
            "telehub_delivery_delay_seconds",
            "telehub_store_writable",
            "telehub_store_commit_failures",
            "telehub_store_kept_ops",
            "telehub_ready",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
        }
        for reason in Metrics::REFUSAL_REASONS {
            let series = format!("telehub_connections_refused_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
        assert!(text.contains("telehub_payload_received_bytes_total{role=\"viewer\"} 0"));
        assert!(text.contains("telehub_notifications_accepted_total{severity=\"critical\"} 0"));
    }
}
