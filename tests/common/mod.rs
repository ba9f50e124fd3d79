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
//! - [`redis`]: a throwaway `redis-server` for the cluster tests;
//! - [`postgres`]: a throwaway PostgreSQL, and [`on_both_stores!`], which runs
//!   each notification test on the embedded store and on PostgreSQL;
//! - [`prometheus`]: a throwaway Prometheus and its HTTP API, for the dashboard test.
//!
//! Everything is re-exported here: test files use `common::...` as before.

// Each test binary compiles this harness and uses only part of it (this also covers
// the submodules).
#![allow(dead_code)]

use std::time::Duration;

mod campaign;
mod client;
mod envelopes;
mod http;
mod hub;
mod nodes;
mod notify;
mod postgres;
mod process;
mod prometheus;
mod redis;

// Test files name everything through these re-exports, each only what it uses.
#[allow(unused_imports)]
pub use self::{
    campaign::{acking_fleet, acknowledged, acks_kept, each_saw_once, rows, until, Seen},
    client::{client_config, tls_presenting, tls_to, Client, Event},
    envelopes::{code, incompressible, number, raw, telemetry},
    http::{parse_http_response, Metrics},
    hub::{secret, temp_dir, Dir, Hub},
    nodes::{free_port, metric, wait_for, Node, Planes},
    notify::{
        notification, row, status_of, tag_map, to_devices, to_tags, wait_registered, wait_status,
    },
    postgres::Postgres,
    process::{drain, interop_python},
    prometheus::Prometheus,
    redis::Redis,
};

tokio::task_local! {
    /// The store the hubs a test starts use (`None`: the embedded one).
    static STORE: Option<String>;
}

/// Which store [`on_store`] runs a test on.
#[derive(Clone, Copy, Debug)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Runs `test` with every hub it starts ([`Hub::with_bus`]) on `kind` of store:
/// for PostgreSQL, a new database on the binary's shared instance, the same for
/// every hub of the test (a restarted hub finds what the first one stored).
pub async fn on_store<F: std::future::Future>(kind: StoreKind, test: F) -> F::Output {
    let url = match kind {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => Some(Postgres::shared_database().await),
    };
    STORE.scope(url, test).await
}

/// The store of the test running ([`on_store`]); `None` for the embedded one.
pub fn current_store() -> Option<String> {
    STORE.try_with(|s| s.clone()).ok().flatten()
}

/// Defines each named `async fn` test twice, `sqlite::NAME` and `postgres::NAME`,
/// running on each store ([`on_store`]). A name may be followed by
/// `: multi_thread` for a test that needs worker threads.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($name:ident $(: $flavor:ident)?),* $(,)?) => {
        mod sqlite {
            $( $crate::common::on_both_stores!(@test Sqlite $($flavor)? $name); )*
        }
        mod postgres {
            $( $crate::common::on_both_stores!(@test Postgres $($flavor)? $name); )*
        }
    };
    (@test $kind:ident $name:ident) => {
        #[tokio::test]
        async fn $name() {
            $crate::common::on_store($crate::common::StoreKind::$kind, super::$name()).await
        }
    };
    (@test $kind:ident multi_thread $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::common::on_store($crate::common::StoreKind::$kind, super::$name()).await
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_stores;

/// The bound on every single wait in these tests.
pub const T: Duration = Duration::from_secs(5);

pub const PROTOCOL: &str = "telehub.v1";
pub const PROTOCOL_JSON: &str = "telehub.v1.json";
