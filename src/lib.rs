//! telehub: an IoT telemetry and notification hub.
//!
//! Devices stream Protocol Buffers telemetry over TLS WebSockets; the hub rate-limits
//! every message per connection and fans it out to dashboards subscribed by
//! category. See `README.md` for the architecture and
//! `proto/telehub/v1/telehub.proto` for the wire contract.
//!
//! Data flows one way: socket → [`ws`] → [`session`] → [`hub`] → sessions → [`ws`]
//! → socket. Nothing below calls back up except through queues.

pub mod app;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod reload;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sim;
pub mod store;
#[cfg(unix)]
pub mod systemd;
pub mod tls;
pub mod ws;
