//! The device registry: `PUT /v1/devices/{id}` (operators) registers a device ahead
//! of its first connection or replaces its tags; `GET /v1/devices` (viewers and
//! operators) pages through it.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{operator_body, page_limit, readable, unavailable};
use crate::{
    app::App,
    http::{openapi as doc, refuse},
    notify::request,
    store::DeviceRow,
};

// The id's description in `put_device`'s `#[utoipa::path]` says so.
const _: () = assert!(request::MAX_ID == 128, "update the id's description");

/// `PUT /v1/devices/{id}` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// The device's tags (all of them: they replace the stored ones).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One device of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceOut {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub registered_ms: u64,
    /// When it was last connected; `null` if it never was.
    pub last_seen_ms: Option<u64>,
}

impl From<DeviceRow> for DeviceOut {
    fn from(d: DeviceRow) -> Self {
        DeviceOut {
            id: d.id,
            tags: d.tags,
            registered_ms: d.registered_ms,
            last_seen_ms: d.last_seen_ms,
        }
    }
}

/// Register a device, or replace its tags.
///
/// Registers a device ahead of its first connection, so notifications by tag reach
/// it while it is offline; a token's tags override these key by key each time the
/// device connects. Role: operator (a scoped operator only for a device
/// unregistered or within its `device_tags`, with tags within them).
#[utoipa::path(
    put,
    path = "/v1/devices/{id}",
    operation_id = "put_device",
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The device id (1 to 128 bytes).")),
    request_body = DeviceBody,
    responses(
        (status = 200, description = "The device as registered now.", body = DeviceOut),
        (status = 400, description = "The body does not parse, the id is empty or too \
            long, or there are too many tags.", body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = "The token's role is not operator, or the device or \
            tags are outside a scoped operator's `device_tags`.", body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
pub async fn put_device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DeviceBody>, JsonRejection>,
) -> Response {
    let (claims, b) = match operator_body(&app, &headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // A scoped operator registers only its own devices, and keeps them its own.
    if let Some(scope) = &claims.scope.device_tags {
        let before = app.hub.registered_tags(&id);
        let own = |tags: &BTreeMap<String, String>| crate::auth::within(scope, tags);
        if !own(&b.tags) || !(before.is_empty() || own(&before)) {
            return refuse(
                StatusCode::FORBIDDEN,
                "this token registers only devices within its device_tags, with those tags",
            );
        }
    }
    if id.is_empty() || id.len() > request::MAX_ID {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("device ids are 1..={} bytes", request::MAX_ID),
        );
    }
    if b.tags.len() > request::MAX_TAGS {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("at most {} tags", request::MAX_TAGS),
        );
    }
    match app.notifier.put_device(id, b.tags).await {
        Ok(row) => Json(DeviceOut::from(row)).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /v1/devices` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DevicesQuery {
    /// The page starts after this device id (the last one of the previous page).
    #[serde(default)]
    after: Option<String>,
    /// Devices per page: default 100, at most 1000 (larger asks are clamped).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/devices` answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DevicesOut {
    /// Ordered by id; fewer than `limit` on the last page.
    pub devices: Vec<DeviceOut>,
}

/// The device registry.
///
/// Every device that ever connected and every one an operator registered, ordered
/// by id, a page at a time. Role: viewer or operator (a scoped token lists only the
/// devices within its `device_tags`).
#[utoipa::path(
    get,
    path = "/v1/devices",
    operation_id = "list_devices",
    tag = "devices",
    security(("bearer" = [])),
    params(DevicesQuery),
    responses(
        (status = 200, description = "A page of the registry.", body = DevicesOut),
        (status = 400, description = doc::BAD_QUERY, body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = doc::FORBIDDEN_READ, body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
pub async fn devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<DevicesQuery>,
) -> Response {
    let claims = match readable(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let limit = page_limit(q.limit);
    let store = app.notifier.store();
    // A scoped caller's page holds only its devices: read on until it is full.
    let mut out = Vec::new();
    let mut after = q.after;
    loop {
        let rows = match store.devices(after.clone(), limit).await {
            Ok(rows) => rows,
            Err(e) => return unavailable(e),
        };
        let exhausted = rows.len() < limit;
        after = rows.last().map(|r| r.id.clone());
        out.extend(rows.into_iter().filter(|r| claims.scope.sees(&r.tags)));
        if exhausted || out.len() >= limit {
            break;
        }
    }
    out.truncate(limit);
    Json(DevicesOut {
        devices: out.into_iter().map(Into::into).collect(),
    })
    .into_response()
}
