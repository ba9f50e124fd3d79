//! Hub configuration: a TOML file (`--config`), overridden by `TELEHUB_*`
//! environment variables and command-line flags (see `main.rs`), with defaults
//! that run a development hub on loopback.
//!
//! Invariant: a [`Config`] that passed [`Config::validate`] has non-zero limits, so
//! the rest of the hub never has to re-check them.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::hub::stream::{MAX_CONFLATE_MS, MAX_DELAY_MS};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one listener (HTTP, REST, WebSockets).
    pub listen: SocketAddr,
    /// Token secret and (later) the embedded store.
    pub data_dir: PathBuf,
    /// `server.pem` + `server.key`; development ones are generated when missing.
    pub certs_dir: PathBuf,
    /// Serve ws:// and http:// without TLS (behind a TLS-terminating proxy, benchmarks).
    pub plaintext: bool,
    pub limits: Limits,
    pub rate: RateLimit,
    pub dashboard: Dashboard,
    pub compression: Compression,
    pub notify: Notify,
    pub cluster: Cluster,
    pub store: StoreSettings,
    pub auth: Auth,
    pub tls: Tls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("data"),
            certs_dir: PathBuf::from("certs"),
            plaintext: false,
            limits: Limits::default(),
            rate: RateLimit::default(),
            dashboard: Dashboard::default(),
            compression: Compression::default(),
            notify: Notify::default(),
            cluster: Cluster::default(),
            store: StoreSettings::default(),
            auth: Auth::default(),
            tls: Tls::default(),
        }
    }
}

/// Connection hygiene and size limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections (all kinds) at once; further TCP connections are closed at accept.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// TLS handshake plus the HTTP request head must complete within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The hub pings every WebSocket this often.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A WebSocket from which nothing (not even a pong) arrives for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest WebSocket message accepted, after inflation (close 1009 above it).
    pub max_message_bytes: usize,
    /// Largest single frame accepted, after inflation.
    pub max_frame_bytes: usize,
    /// Malformed envelopes in a row before the connection is closed with 1007.
    pub max_malformed: u32,
    /// Readings one telemetry message may carry (beyond: `Error{MALFORMED}`). Bounds
    /// what a message costs the hub besides its bytes: a 64 KiB message could
    /// otherwise carry some 30,000 empty readings.
    pub max_readings: usize,
    /// How long the hub remembers a device's confirmed telemetry (uplink
    /// confirmations) after its last connection ended: resends within it are
    /// recognised as duplicates.
    #[serde(with = "humantime_serde")]
    pub confirm_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_ip: 20_000,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            max_malformed: 5,
            max_readings: 1024,
            confirm_window: Duration::from_secs(3600),
        }
    }
}

impl RateLimit {
    /// The token bucket of one device connection.
    pub fn quota(&self) -> governor::Quota {
        // validate() guarantees both are non-zero; fall back to 1 rather than panic.
        let rate = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        governor::Quota::per_second(rate).allow_burst(burst)
    }
}

/// Per-device telemetry rate limit (a token bucket per connection).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained telemetry messages per second.
    pub per_second: u32,
    /// Messages that may arrive at once above the sustained rate.
    pub burst: u32,
    /// A device refused in this many consecutive seconds is closed with 1008.
    pub abuse_seconds: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 200,
            abuse_seconds: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dashboard {
    /// Telemetry messages queued per dashboard; when full the oldest is dropped.
    pub queue_len: usize,
    /// Bytes of telemetry queued per dashboard, as accounted (a message at twice
    /// its encoded size, eight times for JSON dashboards, plus 64); when full the
    /// oldest is dropped.
    pub queue_bytes: usize,
    /// Bytes of telemetry queued for all dashboards together, accounted the same
    /// way; when reached, the oldest telemetry of the dashboard being pushed to is
    /// dropped.
    pub queued_bytes_max: usize,
    /// Category patterns one dashboard may hold.
    pub max_subscriptions: usize,
    /// Origins allowed on `/v1/dashboard` besides same-origin and localhost
    /// (e.g. "https://ops.example.com"); "*" allows any.
    pub allowed_origins: Vec<String>,
    /// Telemetry messages kept per series (device, category) and sent to a
    /// dashboard when it subscribes, so charts fill at once; 0 keeps none.
    pub history_len: usize,
    /// Most telemetry messages one Subscribe replays (wide subscriptions get
    /// fewer messages per series).
    pub history_replay_max: usize,
    /// Series one device may have in the history; further categories are counted
    /// but not kept.
    pub history_series_per_device: usize,
    /// Bytes of telemetry the history keeps in all, shared equally by the series:
    /// with many series each keeps fewer than `history_len` messages.
    pub history_max_bytes: usize,
    /// Fleet statistics (`WatchFleet`) are sent this often.
    #[serde(with = "humantime_serde")]
    pub fleet_interval: Duration,
    /// A device offline for this long is forgotten: its statistics and history.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// Serve the dashboard from this directory instead of the copy built into the
    /// binary (for working on the dashboard without rebuilding the hub).
    pub assets_dir: Option<PathBuf>,
    /// The browser page subscribes batched (`Subscribe.max_delay_ms`) with this
    /// delay: one redraw per batch instead of one per message, and nothing a person
    /// can see added to the latency.
    #[serde(with = "humantime_serde")]
    pub page_max_delay: Duration,
    /// While the page shows more than `page_conflate_above` series it subscribes
    /// conflated (`Subscribe.conflate_ms`) at this interval: each series' latest
    /// value, not every value, since nobody reads hundreds of charts at 20 Hz.
    #[serde(with = "humantime_serde")]
    pub page_conflate_interval: Duration,
    /// Series the page may show before it switches to conflated delivery (it
    /// switches back below 80 % of this, so it does not flap at the boundary).
    pub page_conflate_above: usize,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            queue_len: 4096,
            queue_bytes: 16 << 20,
            queued_bytes_max: 256 << 20,
            max_subscriptions: 256,
            allowed_origins: Vec::new(),
            history_len: 120,
            history_replay_max: 20_000,
            history_series_per_device: 16,
            history_max_bytes: 32 << 20,
            fleet_interval: Duration::from_secs(1),
            forget_after: Duration::from_secs(3600),
            assets_dir: None,
            page_max_delay: Duration::from_millis(50),
            page_conflate_interval: Duration::from_millis(500),
            page_conflate_above: 200,
        }
    }
}

/// permessage-deflate (RFC 7692).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compression {
    /// Accept clients' permessage-deflate offers.
    pub enabled: bool,
    /// Messages smaller than this are sent uncompressed.
    pub threshold: usize,
    /// The window (8..=15 bits) asked of clients that let the server limit theirs
    /// (`client_max_window_bits` in the offer, as browsers, `websockets`, `ws` and
    /// device-sim send). The hub keeps that many bytes per connection that compresses
    /// with context takeover: 11 (2 KiB) keeps telemetry within ~10 % of the ratio of a
    /// 32 KiB window (BENCHMARKS.md).
    pub client_max_window_bits: u8,
    /// Ask every client to compress each message on its own: no per-connection
    /// memory at all, at a much worse ratio for small telemetry messages.
    pub client_no_context_takeover: bool,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 64,
            client_max_window_bits: 11,
            client_no_context_takeover: false,
        }
    }
}

/// Notifications to devices: expiry, redelivery, retention.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notify {
    /// Lifetime of a notification whose request names none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long a device has to acknowledge a CRITICAL notification before it is
    /// sent again; doubled after each redelivery, up to `max_retry_interval`.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_interval: Duration,
    /// Completed notifications (all acknowledged or expired) are kept this long for
    /// the API, then deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Progress updates to watching dashboards are sent at most this often per
    /// notification.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Most devices one notification may target.
    pub max_targets: usize,
    /// Online devices per second a new notification is dispatched to, so that a
    /// campaign to a large fleet leaves CPU to telemetry fan-out.
    pub dispatch_rate: u32,
}

impl Default for Notify {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            ack_timeout: Duration::from_secs(10),
            max_retry_interval: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
            progress_interval: Duration::from_millis(100),
            max_targets: 100_000,
            dispatch_rate: 20_000,
        }
    }
}

mod access;

pub use access::{Auth, DeviceIdField, Tls};

/// `[store]`: where notifications and the registry are kept.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`: a PostgreSQL database, shared by
    /// every node of a cluster. None: the embedded SQLite database in the data
    /// dir (one node). Never logged with its password.
    pub url: Option<String>,
    /// The CA (PEM) PostgreSQL's certificate must chain to; given, the connection
    /// is TLS only. Without it, `sslmode=require` in `url` checks the system's
    /// trusted roots.
    pub ca: Option<PathBuf>,
    /// Bound on the database file (bytes): past it, writes fail as on a full disk
    /// (see README, "Durability"). None: as large as the disk allows.
    pub max_bytes: Option<u64>,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out (the packaged
        // configuration's test lists keys from this output).
        let Self { url, ca, max_bytes } = self;
        f.debug_struct("StoreSettings")
            .field("url", &url.as_deref().map(redacted))
            .field("ca", ca)
            .field("max_bytes", max_bytes)
            .finish()
    }
}

/// `[cluster]`: one node of several behind one name, joined through Redis (the
/// live plane). Off unless `url` is set.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://[user:password@]HOST:PORT[/DB]`, or `rediss://` for TLS. Never
    /// logged with its password.
    pub url: Option<String>,
    /// For `rediss://`: the CA certificate (PEM) Redis's certificate must chain to;
    /// default: the system's trusted roots.
    pub ca: Option<PathBuf>,
    /// This node's name in logs, metrics and `/readyz`; default: the host name and
    /// the listener's port (`HOST:PORT`), unique among the nodes of one host.
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel, so several clusters can share one
    /// Redis: `[A-Za-z0-9_:.-]`, at most 64 bytes.
    pub prefix: String,
    /// How often the node tells Redis it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A node silent this long is dead: its devices go offline on every node.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// Bytes of publications and presence changes waiting for Redis (while it is
    /// slow or unreachable); what does not fit is dropped and counted.
    pub queue_bytes: usize,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            url: None,
            ca: None,
            node_id: None,
            prefix: "telehub:".into(),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
            queue_bytes: 64 << 20,
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, as StoreSettings' is.
        let Self {
            url,
            ca,
            node_id,
            prefix,
            heartbeat,
            node_timeout,
            queue_bytes,
        } = self;
        f.debug_struct("Cluster")
            .field("url", &url.as_deref().map(redacted))
            .field("ca", ca)
            .field("node_id", node_id)
            .field("prefix", prefix)
            .field("heartbeat", heartbeat)
            .field("node_timeout", node_timeout)
            .field("queue_bytes", queue_bytes)
            .finish()
    }
}

/// `url` with the password of its user info, if any, replaced by `***`. The
/// user info ends at the last `@` (a password may hold `/` or `@`), with or
/// without a scheme, so even a URL that does not parse shows no password.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if self.rate.per_second == 0 || self.rate.burst == 0 {
            return bad("rate.per_second and rate.burst must be > 0");
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_ip == 0 {
            return bad("limits.max_connections and max_connections_per_ip must be > 0");
        }
        if self.limits.max_message_bytes < 1024 || self.limits.max_frame_bytes < 1024 {
            return bad("limits.max_message_bytes and max_frame_bytes must be >= 1024");
        }
        if self.dashboard.queue_len == 0 || self.dashboard.max_subscriptions == 0 {
            return bad("dashboard.queue_len and max_subscriptions must be > 0");
        }
        let d = &self.dashboard;
        // One JSON message of the largest size must fit a dashboard's queue: the
        // largest telemetry, plus what the hub adds (device id, received_ms) or a
        // Batch wraps around it (key, length, category), under 256 bytes.
        let largest = self
            .limits
            .max_message_bytes
            .saturating_add(256)
            .saturating_mul(8)
            + 64;
        if d.queue_bytes < largest || d.queued_bytes_max < d.queue_bytes {
            return Err(ConfigError::Invalid(format!(
                "dashboard.queue_bytes must be >= {largest} (8 x (limits.max_message_bytes + 256) + 64) and <= dashboard.queued_bytes_max"
            )));
        }
        if d.fleet_interval.is_zero() || d.forget_after.is_zero() {
            return bad("dashboard.fleet_interval and forget_after must be > 0");
        }
        // The page sends these as whole milliseconds in a Subscribe, which the hub
        // accepts only within these bounds.
        let within = |t: Duration, max_ms: u32| (1..=u128::from(max_ms)).contains(&t.as_millis());
        if !within(d.page_max_delay, MAX_DELAY_MS)
            || !within(d.page_conflate_interval, MAX_CONFLATE_MS)
        {
            return Err(ConfigError::Invalid(format!(
                "dashboard.page_max_delay must be 1ms..={MAX_DELAY_MS}ms and page_conflate_interval 1ms..={MAX_CONFLATE_MS}ms"
            )));
        }
        if self.limits.ping_interval.is_zero() || self.limits.idle_timeout.is_zero() {
            return bad("limits.ping_interval and idle_timeout must be > 0");
        }
        let n = &self.notify;
        if n.default_ttl.is_zero()
            || n.default_ttl > n.max_ttl
            || n.ack_timeout.is_zero()
            || n.max_retry_interval < n.ack_timeout
            || n.progress_interval.is_zero()
            || n.max_targets == 0
            || n.dispatch_rate == 0
        {
            return bad("notify: ttls, ack_timeout, progress_interval, max_targets and dispatch_rate must be > 0, default_ttl <= max_ttl, ack_timeout <= max_retry_interval");
        }
        if !(8..=15).contains(&self.compression.client_max_window_bits) {
            return bad("compression.client_max_window_bits must be 8..=15");
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(format!(
                    "store.url {:?} must start with postgres:// (leave it out for the embedded SQLite store)",
                    redacted(url)
                )));
            }
        }
        let a = &self.auth;
        if a.leeway > Duration::from_secs(300) {
            return bad("auth.leeway must be at most 5m");
        }
        if a.jwks_refresh < Duration::from_secs(1) {
            return bad("auth.jwks_refresh must be at least 1s");
        }
        if let Some(url) = &a.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return bad("auth.jwks_url must start with https:// (or http:// on the same host)");
            }
        }
        if a.jwks_ca.is_some() && a.jwks_url.is_none() {
            return bad("auth.jwks_ca is for an https:// auth.jwks_url");
        }
        if !self.tls.device_crl.is_empty() && self.tls.device_ca.is_none() {
            return bad("tls.device_crl goes with tls.device_ca");
        }
        if self.tls.device_ca.is_some() && self.plaintext {
            return bad("tls.device_ca needs TLS: it cannot be used with plaintext");
        }
        if self.store.ca.is_some() && self.store.url.is_none() {
            return bad("store.ca is for a PostgreSQL store.url");
        }
        if self.store.max_bytes.is_some() && self.store.url.is_some() {
            return bad("store.max_bytes bounds the embedded SQLite file; a PostgreSQL database's size is bounded in PostgreSQL");
        }
        let c = &self.cluster;
        if c.url.is_some() && self.store.url.is_none() {
            return bad("a cluster needs a shared store: notifications, their acks and the device registry must be the same on every node, and the embedded SQLite store belongs to one node. Give every node the same PostgreSQL database: --store postgres://USER:PASSWORD@HOST:PORT/DB (store.url, TELEHUB_STORE)");
        }
        if let Some(url) = &c.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.url {:?} must start with redis:// or rediss://",
                    redacted(url)
                )));
            }
        }
        if c.ca.is_some() && !c.url.as_deref().is_some_and(|u| u.starts_with("rediss://")) {
            return bad("cluster.ca is for a rediss:// cluster.url");
        }
        if c.prefix.len() > 64
            || !c
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
        {
            return bad("cluster.prefix must be at most 64 bytes of [A-Za-z0-9_:.-]");
        }
        if c.heartbeat.is_zero() || c.node_timeout < c.heartbeat * 3 {
            return bad(
                "cluster.heartbeat must be > 0 and cluster.node_timeout at least 3 heartbeats",
            );
        }
        if c.queue_bytes < 1 << 20 {
            return bad("cluster.queue_bytes must be at least 1 MiB");
        }
        if c.node_id
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 128)
        {
            return bad("cluster.node_id must be 1..=128 bytes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The configuration file the package installs (`deploy/telehub.toml`).
    const PACKAGED: &str = include_str!("../../deploy/telehub.toml");

    /// `(section, key) -> value` of a config's pretty `Debug`: top-level keys under
    /// section "", a nested struct's keys under its field name. A value spanning
    /// lines (a non-empty list or map) is its first line; no default is one today.
    fn debug_fields(c: &Config) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        let mut section = String::new();
        for line in format!("{c:#?}").lines() {
            let indent = line.len() - line.trim_start().len();
            let Some((key, value)) = line.trim().split_once(": ") else {
                continue;
            };
            let value = value.trim_end_matches(',').to_owned();
            match indent {
                4 if value.ends_with(" {") && !value.starts_with('{') => section = key.into(),
                4 => drop(out.insert((String::new(), key.into()), value)),
                8 => drop(out.insert((section.clone(), key.into()), value)),
                _ => {}
            }
        }
        out
    }

    /// `(section, key)` of every setting in a TOML text.
    fn toml_keys(text: &str) -> Vec<(String, String)> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut keys = Vec::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(t) => {
                    keys.extend(t.keys().map(|k| (key.clone(), k.clone())));
                }
                _ => keys.push((String::new(), key.clone())),
            }
        }
        keys
    }

    /// The packaged file documents every key, each commented-out value is the real
    /// default (or, for keys without one, an example of the right type), and the
    /// file as shipped is a valid configuration.
    #[test]
    fn the_packaged_config_has_every_key_with_its_default() {
        let shipped: Config = toml::from_str(PACKAGED).unwrap();
        shipped.validate().unwrap();
        assert_eq!(shipped.data_dir, PathBuf::from("/var/lib/telehub"));
        // `#key = value` is a setting at its default; `# text` is prose.
        let uncommented: String = PACKAGED
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        // Parsed, not validated: the examples together are not one valid setup (a
        // PostgreSQL url beside SQLite's max_bytes), but each has the right type.
        let all: Config = toml::from_str(&uncommented).unwrap();

        let defaults = debug_fields(&Config::default());
        let documented: Vec<_> = toml_keys(&uncommented);
        let missing: Vec<_> = defaults
            .keys()
            .filter(|k| !documented.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "keys not in deploy/telehub.toml: {missing:?}"
        );
        assert_eq!(documented.len(), defaults.len(), "{documented:?}");

        let active = toml_keys(PACKAGED);
        let examples = debug_fields(&all);
        for (key, default) in &defaults {
            let is_example = default == "None" || default == "[]" || default == "{}";
            if is_example || active.contains(key) {
                continue;
            }
            assert_eq!(
                &examples[key], default,
                "{key:?}: the file's value is not the default"
            );
        }
    }

    #[test]
    fn cluster_urls_are_checked_and_never_shown_with_their_password() {
        assert_eq!(
            redacted("redis://app:s3cret@redis.lan:6379/2"),
            "redis://app:***@redis.lan:6379/2"
        );
        assert_eq!(redacted("rediss://:s3cret@r:6380"), "rediss://:***@r:6380");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("redis://u:a/b@c@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redacted("u:pw@h:1"), "u:***@h:1");
        let cfg: Config = toml::from_str(
            "[cluster]\nurl = \"redis://u:pw@h:1\"\nnode_id = \"a\"\n\
             [store]\nurl = \"postgres://t:pg@db:5432/hub\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("pw@") && shown.contains("u:***@h:1"),
            "{shown}"
        );
        assert!(
            !shown.contains("pg@") && shown.contains("t:***@db:5432/hub"),
            "{shown}"
        );
        // A cluster without a shared store is refused, saying what to add.
        let mut alone = cfg.clone();
        alone.store.url = None;
        let e = alone.validate().unwrap_err().to_string();
        assert!(e.contains("--store postgres://"), "{e}");
        let mut bad = cfg.clone();
        bad.store.url = Some("mysql://t:pg@db/hub".into());
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("postgres://") && !e.contains("pg@"), "{e}");
        let mut bad = cfg.clone();
        bad.cluster.url = Some("http://u:pw@h".into());
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("redis://") && !e.contains("pw"), "{e}");
        let mut bad = cfg.clone();
        bad.cluster.prefix = "a*".into();
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.cluster.node_timeout = bad.cluster.heartbeat * 2;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_are_errors() {
        let cfg: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\n[rate]\nper_second = 5\n[limits]\nidle_timeout = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.rate.per_second, 5);
        assert_eq!(cfg.rate.burst, RateLimit::default().burst);
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(120));
        cfg.validate().unwrap();
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let mut zero = Config::default();
        zero.rate.burst = 0;
        assert!(zero.validate().is_err());
    }

    #[test]
    fn page_delivery_keys_default_parse_and_stay_within_what_a_subscribe_accepts() {
        let d = Config::default().dashboard;
        assert_eq!(
            (
                d.page_max_delay,
                d.page_conflate_interval,
                d.page_conflate_above
            ),
            (Duration::from_millis(50), Duration::from_millis(500), 200)
        );
        let cfg: Config = toml::from_str(
            "[dashboard]\npage_max_delay = \"20ms\"\npage_conflate_interval = \"2s\"\npage_conflate_above = 3\n",
        )
        .unwrap();
        let d = &cfg.dashboard;
        assert_eq!(
            (
                d.page_max_delay,
                d.page_conflate_interval,
                d.page_conflate_above
            ),
            (Duration::from_millis(20), Duration::from_secs(2), 3)
        );
        cfg.validate().unwrap();
        // 0 and sub-millisecond values would be sent as 0 (live), the others refused.
        let ms = Duration::from_millis;
        for (delay, interval) in [
            (ms(0), ms(500)),
            (Duration::from_micros(500), ms(500)),
            (ms(10_001), ms(500)),
            (ms(50), ms(0)),
            (ms(50), ms(60_001)),
        ] {
            let mut c = Config::default();
            c.dashboard.page_max_delay = delay;
            c.dashboard.page_conflate_interval = interval;
            assert!(c.validate().is_err(), "{delay:?} / {interval:?} accepted");
        }
    }
}
