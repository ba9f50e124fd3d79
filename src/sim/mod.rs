//! A simulated device fleet, as a library: used by the `device-sim` tool and by
//! `telehub demo`.
//!
//! ```no_run
//! # async fn demo(key: telehub::auth::TokenKey) -> anyhow::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use telehub::sim::{run_fleet, FleetConfig, FleetStats, TokenSource};
//!
//! let mut cfg = FleetConfig::new("ws://127.0.0.1:8080", TokenSource::mint(key));
//! cfg.devices = 20;
//! cfg.rate_hz = 2.0;
//! cfg.duration = Some(Duration::from_secs(30));
//! let stats = Arc::new(FleetStats::new());
//! let summary = run_fleet(cfg, stats.clone(), std::future::pending()).await?;
//! println!("sent {}", summary.sent);
//! # Ok(()) }
//! ```
//!
//! Each device is one task that owns its connection, sensor state ([`profile`]) and
//! a bounded backlog ([`Backlog`]): it generates a reading batch every `1/rate_hz`
//! seconds whether or not it is connected, sends while connected (paced below the
//! limit the hub announces in `Welcome`, paused for `retry_after_ms` on
//! `RATE_LIMITED`), and on any failure reconnects after an exponential back-off with
//! full jitter ([`Backoff`], capped at 10 s). Refused tokens (HTTP 401/403) are
//! counted as errors and retried like any failure. Stopping (duration or the
//! `shutdown` future) sends Close 1000 from every connected device.
//!
//! Notifications: a device de-duplicates them by id (its application layer, the
//! optional [`FleetConfig::on_notification`] hook, sees each once), and acknowledges
//! every receipt, redeliveries included, after `ack_delay`, except a random
//! `ack_loss` share it withholds to exercise the hub's redelivery.
//!
//! Counters live in [`FleetStats`] (atomics, readable while the fleet runs);
//! [`FleetStats::snapshot`] gives a serializable [`Summary`].

mod backoff;
mod buffer;
mod device;
mod endpoint;
mod inflight;
mod pacer;
pub mod profile;
mod stats;

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{sync::watch, task::JoinSet};

pub use backoff::Backoff;
pub use buffer::Backlog;
pub use endpoint::{Endpoint, SimStream, SUBPROTOCOL};
pub use pacer::Pacer;
pub use stats::{FleetStats, Summary};

use crate::auth::{Role, TokenKey};

/// Most devices one fleet may simulate.
pub const MAX_DEVICES: usize = 100_000;
/// Highest per-device message rate.
pub const MAX_RATE_HZ: f64 = 10_000.0;
/// How long stopping devices get to close before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the devices' tokens come from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Mint one device token per device with the hub's signing key (the data dir's
    /// `token.key`). Subjects are `{id_prefix}{index:05}`; each token carries the
    /// device's profile tags (`fleet`, `model`, `kind`) plus `tags`.
    Mint {
        key: TokenKey,
        tags: BTreeMap<String, String>,
        ttl: Duration,
    },
    /// Ready-made tokens (e.g. the lines of `--token-file`, see
    /// [`TokenSource::from_file`]), one per device: device `i` uses token `i`.
    Files(Vec<String>),
}

impl TokenSource {
    /// Minting with no extra tags and a one-day lifetime.
    pub fn mint(key: TokenKey) -> Self {
        TokenSource::Mint {
            key,
            tags: BTreeMap::new(),
            ttl: Duration::from_secs(86_400),
        }
    }

    /// Reads a token file: one token per line; blank lines and `#` comments skipped.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        let tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if tokens.is_empty() {
            bail!("token file {} holds no tokens", path.display());
        }
        Ok(TokenSource::Files(tokens))
    }
}

/// What to simulate. Build with [`FleetConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The hub: `wss://HOST:PORT` or, for a `--plaintext` hub, `ws://HOST:PORT`;
    /// several for the nodes of a cluster: device `i` starts on `urls[i % n]` and
    /// moves to the next when a connect to its current one fails.
    pub urls: Vec<String>,
    /// CA certificate (PEM) to trust for `wss://`.
    pub ca: Option<PathBuf>,
    pub tokens: TokenSource,
    /// Number of devices, 1..=[`MAX_DEVICES`]. Default 10.
    pub devices: usize,
    /// Telemetry messages per second per device, (0, [`MAX_RATE_HZ`]]. Default 1.
    pub rate_hz: f64,
    /// Stop after this long; `None`: run until `shutdown`.
    pub duration: Option<Duration>,
    /// Prefix of minted device ids. Default `sim-`.
    pub id_prefix: String,
    /// Offer permessage-deflate. Default true.
    pub compression: bool,
    /// Messages each device keeps while it cannot send (oldest dropped). Default 1000.
    pub backlog: usize,
    /// Stay under the rate limit announced in `Welcome`. Default true; turn off to
    /// exercise the hub's rate limiting.
    pub pace_to_limit: bool,
    /// Ask the hub to confirm telemetry (uplink confirmations) and send again what
    /// it did not confirm. Default true.
    pub confirm: bool,
    /// Initial connects are spread uniformly over this window. Default: 1 ms per
    /// device, at most 2 s.
    pub stagger: Option<Duration>,
    /// How long a device waits before acknowledging a notification. Default 0.
    pub ack_delay: Duration,
    /// Probability (0..=1) that a device withholds the ack for a notification it
    /// received, so the hub redelivers it. Default 0.
    pub ack_loss: f64,
    /// Called once per device and distinct notification: the devices' application
    /// layer (redeliveries are filtered out before it).
    pub on_notification: Option<NotificationHook>,
}

/// See [`FleetConfig::on_notification`]: called with (device id, notification).
#[derive(Clone)]
pub struct NotificationHook(pub Arc<NotificationFn>);

/// The application layer's handler: (device id, notification).
pub type NotificationFn = dyn Fn(&str, &crate::proto::Notification) + Send + Sync;

impl std::fmt::Debug for NotificationHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotificationHook")
    }
}

impl FleetConfig {
    /// Defaults for everything but the hub and the tokens.
    pub fn new(url: impl Into<String>, tokens: TokenSource) -> Self {
        FleetConfig {
            urls: vec![url.into()],
            ca: None,
            tokens,
            devices: 10,
            rate_hz: 1.0,
            duration: None,
            id_prefix: "sim-".into(),
            compression: true,
            backlog: 1000,
            pace_to_limit: true,
            confirm: true,
            stagger: None,
            ack_delay: Duration::ZERO,
            ack_loss: 0.0,
            on_notification: None,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            bail!("at least one hub URL is needed");
        }
        if self.devices == 0 || self.devices > MAX_DEVICES {
            bail!("devices must be 1..={MAX_DEVICES}, not {}", self.devices);
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= MAX_RATE_HZ) {
            bail!(
                "rate must be in (0, {MAX_RATE_HZ}] messages/s per device, not {}",
                self.rate_hz
            );
        }
        if self.backlog == 0 {
            bail!("backlog must hold at least one message");
        }
        if !(0.0..=1.0).contains(&self.ack_loss) {
            bail!(
                "ack loss must be a probability in 0..=1, not {}",
                self.ack_loss
            );
        }
        if !self
            .id_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            || self.id_prefix.len() > 64
        {
            bail!(
                "id prefix {:?} may hold at most 64 of [A-Za-z0-9-_.:]",
                self.id_prefix
            );
        }
        if let TokenSource::Files(t) = &self.tokens {
            if t.len() < self.devices {
                bail!(
                    "{} tokens for {} devices: each device needs its own token \
                     (devices sharing a subject take each other over)",
                    t.len(),
                    self.devices
                );
            }
        }
        Ok(())
    }

    /// The token of every device, in device order.
    fn device_tokens(&self) -> Vec<String> {
        match &self.tokens {
            TokenSource::Files(t) => t.iter().take(self.devices).cloned().collect(),
            TokenSource::Mint { key, tags, ttl } => (0..self.devices)
                .map(|i| {
                    let mut all = profile::tags_for(i);
                    all.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                    key.issue(&device_id(&self.id_prefix, i), Role::Device, all, *ttl)
                })
                .collect(),
        }
    }
}

/// The id of minted device `index`.
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:05}")
}

/// Runs the fleet until `cfg.duration` elapses or `shutdown` completes, whichever is
/// first, then closes every connection (Close 1000) and returns the final counters.
///
/// `stats` is updated live, so callers can show progress while this runs. Errors are
/// returned only for an unusable configuration (bad URL, CA file, token count);
/// connection failures are counted and retried, never returned.
pub async fn run_fleet(
    cfg: FleetConfig,
    stats: Arc<FleetStats>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    cfg.validate()?;
    let endpoints = cfg
        .urls
        .iter()
        .map(|url| Endpoint::parse(url, cfg.ca.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokens = cfg.device_tokens();
    let shared = Arc::new(device::Shared {
        endpoints,
        stats: stats.clone(),
        rate_hz: cfg.rate_hz,
        compression: cfg.compression,
        backlog: cfg.backlog,
        pace_to_limit: cfg.pace_to_limit,
        confirm: cfg.confirm,
        stagger: cfg.stagger.unwrap_or_else(|| {
            Duration::from_millis(cfg.devices as u64).min(Duration::from_secs(2))
        }),
        ack_delay: cfg.ack_delay,
        ack_loss: cfg.ack_loss,
        on_notification: cfg.on_notification.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (index, token) in tokens.into_iter().enumerate() {
        let (device, signals) = device::Device::new(shared.clone(), index, token, stop_rx.clone());
        tasks.spawn(device.run(signals));
    }
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = deadline => {}
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "devices did not close in time; aborting them"
        );
        tasks.shutdown().await;
    }
    Ok(stats.snapshot(cfg.devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let ok = FleetConfig::new("ws://127.0.0.1:1", TokenSource::Files(vec!["a".into(); 10]));
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.devices = 11;
        assert!(c.validate().is_err(), "too few tokens");
        let mut c = ok.clone();
        c.rate_hz = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.devices = 0;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.id_prefix = "a b".into();
        assert!(c.validate().is_err());
    }

    /// Nothing listens: every attempt fails, is counted, and the fleet still stops on
    /// time.
    #[tokio::test]
    async fn unreachable_hub_is_counted_not_fatal() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut cfg = FleetConfig::new(
            format!("ws://127.0.0.1:{port}"),
            TokenSource::Files(vec!["t".into(); 3]),
        );
        cfg.devices = 3;
        cfg.rate_hz = 50.0;
        cfg.backlog = 5;
        cfg.duration = Some(Duration::from_millis(600));
        let stats = Arc::new(FleetStats::new());
        let s = run_fleet(cfg, stats, std::future::pending()).await.unwrap();
        assert!(s.errors >= 3, "{s:?}");
        assert_eq!(s.sent, 0);
        assert_eq!(s.connected, 0);
        assert_eq!(s.buffered, 15, "full backlogs, left unsent, are reported");
        assert!(s.dropped_from_buffer > 0, "{s:?}");
    }
}
