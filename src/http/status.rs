//! The node's own state for orchestrators and Prometheus: `GET /healthz`
//! (liveness), `GET /readyz` (readiness) and `GET /metrics`. None needs a token.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;

/// The media type `/metrics` answers with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /healthz` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// Devices connected to this node.
    pub devices_online: usize,
    /// Dashboards connected to this node.
    pub dashboards: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    /// Draining: the process is stopping.
    ShuttingDown,
}

/// `GET /readyz` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub store: StoreState,
    /// `null` on a node that is not part of a cluster.
    pub cluster: Option<ClusterState>,
}

/// Why a node is, or is not, ready (the first that applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    ShuttingDown,
    StoreUnavailable,
    ClusterLinkDown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoreState {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// Whether the store takes writes now.
    pub writing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterState {
    /// Whether the node's link to Redis is up.
    pub linked: bool,
}

/// Liveness.
///
/// `200` while the process serves, `503` (with the same body) once it drains for a
/// shutdown. No token.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive.", body = Health),
        (status = 503, description = "Shutting down.", body = Health),
    )
)]
pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    let draining = app.draining.is_set();
    let body = Health {
        status: match draining {
            true => HealthStatus::ShuttingDown,
            false => HealthStatus::Ok,
        },
        devices_online: app.hub.online_devices(),
        dashboards: app.hub.dashboards(),
    };
    let status = match draining {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::OK,
    };
    (status, Json(body)).into_response()
}

/// Readiness.
///
/// `503` while the node cannot serve fully (shutting down, its store cannot write,
/// or a cluster node whose link to Redis is down), so a load balancer sends new
/// connections elsewhere; `/healthz` stays liveness. No token.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; `status` says why.", body = Readiness),
    )
)]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let body = readiness(&app);
    let code = match body.status {
        ReadyStatus::Ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(body)).into_response()
}

/// What `/readyz` answers (and `/metrics` exports as `telehub_ready` and
/// `telehub_store_writable`).
fn readiness(app: &App) -> Readiness {
    let draining = app.draining.is_set();
    let linked = app.hub.bus().ready();
    let store = app.notifier.store();
    let stored = store.healthy();
    let status = if draining {
        ReadyStatus::ShuttingDown
    } else if !stored {
        ReadyStatus::StoreUnavailable
    } else if !linked {
        ReadyStatus::ClusterLinkDown
    } else {
        ReadyStatus::Ready
    };
    Readiness {
        status,
        store: StoreState {
            kind: store.kind().to_owned(),
            writing: stored,
        },
        cluster: app
            .config
            .cluster
            .url
            .is_some()
            .then_some(ClusterState { linked }),
    }
}

/// Metrics for Prometheus.
///
/// The OpenMetrics text exposition format (`telehub_*` families, the build and the
/// process). No token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric family.", content_type = OPENMETRICS,
            body = String),
    )
)]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics
        .queued_bytes
        .set(i64::try_from(app.hub.queued_bytes()).unwrap_or(i64::MAX));
    let ready = readiness(&app);
    let m = &app.metrics;
    m.store_writable.set(i64::from(ready.store.writing));
    m.store_kept
        .set(i64::try_from(app.notifier.store().kept()).unwrap_or(i64::MAX));
    m.ready.set(i64::from(ready.status == ReadyStatus::Ready));
    ([(header::CONTENT_TYPE, OPENMETRICS)], app.metrics.encode()).into_response()
}
