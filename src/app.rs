//! What every connection shares: configuration, the hub, metrics, the token key,
//! and the shutdown signal.

use std::sync::Arc;

use crate::{
    auth::TokenKey, config::Config, hub::Hub, metrics::Metrics, notify::Notifier,
    shutdown::Shutdown, ws,
};

pub struct App {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    pub tokens: TokenKey,
    /// Cloned into every session so it can notice shutdown and so the server can
    /// wait for it to finish.
    pub shutdown: Shutdown,
}

impl App {
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
