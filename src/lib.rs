//! telehub: an IoT telemetry and notification hub.
//!
//! Devices stream Protocol Buffers telemetry over TLS WebSockets; the hub rate-limits
//! every frame per connection and fans it out to dashboards subscribed by category.
//! See `README.md` for the architecture and `proto/telehub/v1/telehub.proto` for the
//! wire contract.

pub mod proto;
pub mod ws;
