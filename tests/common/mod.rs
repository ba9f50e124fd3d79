//! The harness for the hub's integration tests: a real hub started in-process on
//! 127.0.0.1:0 with its own temporary data and certificate directories, real TLS
//! clients speaking `telehub.v1` through the project's own WebSocket client, and
//! helpers that read like the README: a device connects and sends, a dashboard
//! subscribes and receives.
//!
//! Every wait is bounded ([`T`]); a wait that runs out fails the test with a message
//! saying what was awaited.
//!
//! - [`hub`]: the in-process [`Hub`], its temp dirs and signing secret;
//! - [`client`]: the TLS WebSocket [`Client`], its configuration and the events it reads;
//! - [`envelopes`]: telemetry, reading and error-code helpers;
//! - [`http`]: `/metrics` parsing and raw HTTP responses;
//! - [`notify`]: notification REST bodies, targets and polls;
//! - [`redis`]: a throwaway `redis-server` for the cluster tests.
//!
//! Everything is re-exported here: test files use `common::...` as before.

// Each test binary compiles this harness and uses only part of it (this also covers
// the submodules).
#![allow(dead_code)]

use std::time::Duration;

mod client;
mod envelopes;
mod http;
mod hub;
mod notify;
mod redis;

// Test files name everything through these re-exports, each only what it uses.
#[allow(unused_imports)]
pub use self::{
    client::{client_config, tls_to, Client, Event},
    envelopes::{code, incompressible, number, raw, telemetry},
    http::{parse_http_response, Metrics},
    hub::{secret, temp_dir, Hub},
    notify::{
        notification, row, status_of, tag_map, to_devices, to_tags, wait_registered, wait_status,
    },
    redis::Redis,
};

/// The bound on every single wait in these tests.
pub const T: Duration = Duration::from_secs(5);

pub const PROTOCOL: &str = "telehub.v1";
pub const PROTOCOL_JSON: &str = "telehub.v1.json";
