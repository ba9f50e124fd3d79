//! What a running hub takes again from its files without a restart (SIGHUP):
//! the TLS certificate and key, the device CA and its CRLs, the JWT key set (the
//! file read again, the URL fetched again), and, for connections that start
//! afterwards, the rate limits, the dashboards' allowed origins and the tags of
//! certificate-authenticated devices.
//!
//! Invariants: nothing live is dropped: connections keep the TLS session, rate
//! limits and origin check they started with; a part whose new files do not load
//! keeps what it had (logged as an error and counted), the other parts still
//! reload. Every other setting needs a restart.

use std::sync::Arc;

use crate::{
    app::App,
    auth::KeySet,
    config::{Config, RateLimit},
    hub::Tags,
};

/// The settings a reload changes for new connections.
#[derive(Clone, Debug)]
pub struct Live {
    pub rate: RateLimit,
    pub allowed_origins: Vec<String>,
    pub device_tags: Tags,
}

impl Live {
    pub fn from_config(config: &Config) -> Self {
        Live {
            rate: config.rate.clone(),
            allowed_origins: config.dashboard.allowed_origins.clone(),
            device_tags: config.tls.device_tags.clone(),
        }
    }
}

/// What a reload did: the parts that kept their previous state, and why.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub failed: Vec<(&'static str, String)>,
}

impl App {
    /// The settings in force for a connection starting now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the reloadable parts of `config` (read again from the file, with the
    /// command line's overrides) into the running hub.
    pub fn reload(&self, config: &Config) -> Reloaded {
        let mut done = Reloaded::default();
        if let Err(e) = config.validate() {
            done.failed.push(("configuration", e.to_string()));
            return self.reloaded(done);
        }
        if let Some(tls) = &self.tls {
            if let Err(e) = tls.reload(&config.tls) {
                done.failed.push(("tls", e.to_string()));
            }
        }
        match config.auth.jwks_file.as_deref().map(KeySet::load) {
            None => self.auth.set_file_keys(KeySet::default()),
            Some(Ok(set)) => self.auth.set_file_keys(set),
            Some(Err(e)) => done.failed.push(("auth.jwks_file", e.to_string())),
        }
        // The URL's keys: fetched again at once by their task.
        self.auth.refetch();
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live::from_config(config));
        self.reloaded(done)
    }

    fn reloaded(&self, done: Reloaded) -> Reloaded {
        let result = if done.failed.is_empty() {
            "ok"
        } else {
            "error"
        };
        self.metrics.reloads(result);
        for (part, error) in &done.failed {
            tracing::error!(part, error, "reload: kept what was in force");
        }
        tracing::info!(result, "configuration reloaded");
        done
    }
}
