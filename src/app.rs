//! The application: everything connections share (configuration, the hub, the
//! notifier, metrics, the token verifier), built from the configuration in one place.
//!
//! [`App::build`] opens the store, gives its registry to the hub's device directory
//! and its open notifications to the notifier, and joins the hub to its bus;
//! [`App::spawn_background`] starts the timers (notification expiry and progress,
//! fleet statistics). The listener (`server`) only accepts, caps, terminates TLS
//! and drains; each session gets its shutdown handle from its connection, so
//! nothing here keeps the server waiting at shutdown.

use std::sync::Arc;

use anyhow::Context as _;

use crate::{
    auth::{self, KeySet, Policy, TokenKey, Verifier},
    config::{self, Config},
    hub::{now_ms, Bus, HistoryLimits, Hub, Options},
    metrics::Metrics,
    notify::Notifier,
    shutdown::{Draining, Trigger},
    store::{self, Store},
    ws,
};

pub struct App {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    /// Checks every token (upgrades and REST).
    pub auth: Arc<Verifier>,
    /// Each device's confirmed telemetry (uplink confirmations).
    pub uplinks: crate::hub::Uplinks,
    /// Whether shutdown started (for `/healthz`; holds nothing open).
    pub draining: Draining,
    /// The listener's TLS configuration (`None` in plaintext mode).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The settings a reload changes for new connections (see `reload`).
    pub(crate) live: std::sync::RwLock<Arc<crate::reload::Live>>,
}

impl App {
    /// Loads the token key, opens the store and builds the hub (joined to the
    /// other nodes through `bus`) and the notifier.
    pub async fn build(
        config: Config,
        bus: Arc<dyn Bus>,
        draining: Draining,
        tls: Option<Arc<crate::tls::ServerTls>>,
    ) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(verifier(&config, &metrics)?);
        let store_stats = store::Stats {
            ops: metrics.store_ops.clone(),
            commits: metrics.store_commits.clone(),
            failures: metrics.store_failures.clone(),
        };
        let url = config.store.url.as_deref();
        let ca = config.store.ca.as_deref();
        let (store, snapshot) = Store::open(url, ca, &config.data_dir, store_stats)
            .await
            .with_context(|| match url {
                None => format!("opening {}", config.data_dir.join(store::FILE).display()),
                Some(url) => format!("opening the store {}", config::redacted(url)),
            })?;
        store.limit_size(config.store.max_bytes);
        let revoked = store
            .revocations(now_ms())
            .await
            .context("reading the token revocations")?;
        auth.set_revocations(&revoked);
        tracing::info!(
            store = store.kind(),
            devices = snapshot.devices.len(),
            revocations = revoked.len(),
            open_notifications = snapshot.campaigns.len(),
            "store opened"
        );
        let d = &config.dashboard;
        let hub = Hub::new(
            metrics.clone(),
            Options {
                history: HistoryLimits {
                    len: d.history_len,
                    replay_max: d.history_replay_max,
                    series_per_device: d.history_series_per_device,
                    max_bytes: d.history_max_bytes,
                },
                registry: snapshot.devices,
                // Devices seen within `forget_after` before this start are listed
                // offline (their counters start from zero) until they reconnect.
                remember_since_ms: now_ms().saturating_sub(d.forget_after.as_millis() as u64),
                bus,
                queue_bytes: d.queue_bytes,
                queued_bytes_max: d.queued_bytes_max,
            },
        );
        let notifier = Notifier::new(
            store,
            snapshot.campaigns,
            hub.clone(),
            metrics.clone(),
            config.notify.clone(),
        );
        Ok(Arc::new(App {
            hub,
            notifier,
            metrics,
            auth,
            uplinks: Default::default(),
            draining,
            tls,
            live: std::sync::RwLock::new(Arc::new(crate::reload::Live::from_config(&config))),
            config: Arc::new(config),
        }))
    }

    /// Starts the timers that run until shutdown: notification expiry, progress
    /// and pruning; fleet statistics; batched and conflated streams.
    pub fn spawn_background(&self, trigger: &Trigger) {
        tokio::spawn(self.notifier.clone().run(trigger.subscribe()));
        tokio::spawn(self.hub.clone().run_fleet_stats(
            self.config.dashboard.fleet_interval,
            self.config.dashboard.forget_after,
            trigger.subscribe(),
        ));
        tokio::spawn(self.hub.clone().run_streams(trigger.subscribe()));
        tokio::spawn(sync_revocations(
            self.auth.clone(),
            self.hub.clone(),
            self.notifier.store().clone(),
            trigger.subscribe(),
        ));
        let a = &self.config.auth;
        if let Some(url) = &a.jwks_url {
            tokio::spawn(auth::keep_fresh(
                self.auth.clone(),
                url.clone(),
                a.jwks_ca.clone(),
                a.jwks_refresh,
                trigger.subscribe(),
            ));
        }
    }

    /// Transport limits for one connection, from the configuration.
    pub fn ws_config(&self) -> ws::Config {
        ws::Config {
            max_frame_size: self.config.limits.max_frame_bytes,
            max_message_size: self.config.limits.max_message_bytes,
            compress_threshold: self.config.compression.threshold,
        }
    }

    /// How upgrades answer permessage-deflate offers: always without server context
    /// takeover (one compressed frame serves every subscriber), the client's window
    /// and context as configured.
    pub fn deflate_policy(&self) -> ws::handshake::ServerDeflatePolicy {
        let c = &self.config.compression;
        ws::handshake::ServerDeflatePolicy {
            enabled: c.enabled,
            server_no_context_takeover: true,
            client_no_context_takeover: c.client_no_context_takeover,
            server_max_window_bits: 15,
            client_max_window_bits: c.client_max_window_bits,
        }
    }
}

/// The hub's secret, the key set file and the token policy, from the configuration.
fn verifier(config: &Config, metrics: &Metrics) -> anyhow::Result<Verifier> {
    let key = TokenKey::load_or_create(&config.data_dir)?;
    let a = &config.auth;
    let file = match &a.jwks_file {
        Some(path) => KeySet::load(path)
            .with_context(|| format!("loading the key set auth.jwks_file {}", path.display()))?,
        None => KeySet::default(),
    };
    if !file.is_empty() {
        tracing::info!(keys = file.len(), "key set loaded");
    }
    let policy = Policy {
        leeway: a.leeway,
        legacy: a.legacy_tokens,
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
    };
    Ok(Verifier::new(key, policy, file, metrics.auth.clone()))
}

/// How often a node of a cluster reads the revocations again, in case it missed
/// another node's `RevocationsChanged` (Redis down, a node joining).
const REVOCATION_SYNC: std::time::Duration = std::time::Duration::from_secs(3);

/// Keeps this node's revocations equal to the store's: at once when another node
/// says it revoked, and every [`REVOCATION_SYNC`] when the store is shared.
async fn sync_revocations(
    auth: Arc<Verifier>,
    hub: Arc<Hub>,
    store: Store,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let shared = store.shared().is_some();
    let mut tick = tokio::time::interval(REVOCATION_SYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.revocations_changed().notified() => {}
            _ = tick.tick(), if shared => {}
            _ = shutdown.recv() => return,
        }
        match store.revocations(now_ms()).await {
            Ok(list) => auth.set_revocations(&list),
            Err(e) => tracing::warn!(error = %e, "reading the token revocations"),
        }
    }
}
