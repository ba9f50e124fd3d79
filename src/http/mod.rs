//! HTTP routes on the one listener: the dashboard (see [`assets`]), `/healthz`, `/readyz`, `/metrics`,
//! the two WebSocket endpoints (see [`upgrade`]) and the REST API (see [`api`]).
//!
//! Every refusal is a plain-text body with a status that says what went wrong:
//! 400 malformed upgrade, 401 missing/invalid/expired token, 403 wrong role or
//! origin, 426 unsupported WebSocket version.

pub mod api;
pub mod assets;
pub mod revocations;
pub mod upgrade;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, put},
    Router,
};

use crate::{app::App, shutdown::Shutdown};

/// Request extension the listener attaches to every request of a connection, and
/// carried into the session a WebSocket upgrade starts.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The session's shutdown signal (it keeps the listener's drain waiting while
    /// held).
    pub shutdown: Shutdown,
    /// Whatever holds the connection's place under the listener's caps; released
    /// when the connection and any session upgraded from it are gone.
    _place: Arc<dyn Send + Sync>,
    /// The device a verified client certificate names (or why it names none).
    pub device_cert: Option<Arc<Result<crate::tls::device::DeviceCert, String>>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, shutdown: Shutdown, place: impl Send + Sync + 'static) -> Self {
        Self {
            peer,
            shutdown,
            _place: Arc::new(place),
            device_cert: None,
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/device", get(upgrade::device))
        .route("/v1/dashboard", get(upgrade::dashboard))
        .route("/v1/notifications", get(api::list).post(api::create))
        .route("/v1/notifications/{id}", get(api::status))
        .route("/v1/devices", get(api::devices))
        .route("/v1/devices/{id}", put(api::put_device))
        .route("/v1/dashboard/settings", get(api::page_settings))
        .route(
            "/v1/revocations",
            get(revocations::list).post(revocations::revoke),
        )
        .route("/{*file}", get(assets::serve))
        .with_state(app)
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::json!({
        "status": if app.draining.is_set() { "shutting_down" } else { "ok" },
        "devices_online": app.hub.online_devices(),
        "dashboards": app.hub.dashboards(),
    });
    let status = if app.draining.is_set() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

/// Readiness: 503 while the node cannot serve fully (shutting down, its store
/// cannot write, or a cluster node whose link to Redis is down), so a load balancer sends new connections
/// elsewhere. `/healthz` stays liveness.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let draining = app.draining.is_set();
    let linked = app.hub.bus().ready();
    let stored = app.notifier.store().healthy();
    let clustered = app.config.cluster.url.is_some();
    let status = if draining {
        "shutting_down"
    } else if !stored {
        "store_unavailable"
    } else if !linked {
        "cluster_link_down"
    } else {
        "ready"
    };
    let body = serde_json::json!({
        "status": status,
        "store": { "kind": app.notifier.store().kind(), "writing": stored },
        "cluster": clustered.then(|| serde_json::json!({ "linked": linked })),
    });
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics
        .queued_bytes
        .set(i64::try_from(app.hub.queued_bytes()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// A refusal: status plus a one-line explanation.
pub fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // The message may echo a request path: never let it be sniffed as HTML.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}
