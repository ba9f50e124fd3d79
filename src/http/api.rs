//! The REST API: notifications and the device registry.
//!
//! | route | role | what |
//! |---|---|---|
//! | `POST /v1/notifications` | operator | create; 201 once durably stored |
//! | `GET /v1/notifications?limit=N` | viewer, operator | recent ones with counts |
//! | `GET /v1/notifications/{id}?state=S&after=DEV&limit=N` | viewer, operator | counts and a page of per-device rows |
//! | `PUT /v1/devices/{id}` | operator | register a device or replace its tags |
//! | `GET /v1/devices?after=DEV&limit=N` | viewer, operator | the registry, paged |
//! | `GET /v1/dashboard/settings` | anyone | how the browser page subscribes |
//! | `POST /v1/revocations`, `GET /v1/revocations` | operator | revoke tokens, list revocations (`revocations`) |
//!
//! Only `Authorization: Bearer <token>` authenticates here, never the cookie the
//! dashboard WebSocket accepts: a cookie would let any web page a logged-in
//! operator visits push notifications (CSRF). The page settings need no token: they
//! are configuration the page itself would show, and it reads them before it has
//! connected (or been given a token). Bodies are JSON; every refusal is a
//! status with a one-line plain-text reason (400 invalid body, 401/403 token, 404
//! unknown id, 422 no device matches, 503 store unavailable).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

use super::refuse;
use crate::{
    app::App,
    auth::{AuthError, Claims, Role},
    notify::{request, CreateError, Request},
    proto::Targets,
    store::{CampaignRow, Counts, DeliveryRow, DeliveryState, DeviceRow},
};

/// Largest page a list may ask for.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

const READERS: &[Role] = &[Role::Viewer, Role::Operator];
pub(super) const OPERATORS: &[Role] = &[Role::Operator];

pub(super) fn authorize(
    app: &App,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<Claims, AuthError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    app.auth.authorize(bearer, roles)
}

/// What every operator's write does first: checks the token, then reads the JSON
/// body (400 with its reason when it does not parse). The error is the answer
/// itself, returned at once: its size does not matter.
#[allow(clippy::result_large_err)]
pub(super) fn operator_body<T>(
    app: &App,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<(Claims, T), Response> {
    let claims = authorize(app, headers, OPERATORS).map_err(unauthorized)?;
    match body {
        Ok(Json(b)) => Ok((claims, b)),
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, e.body_text())),
    }
}

pub(super) fn unauthorized(e: AuthError) -> Response {
    refuse(e.status(), e)
}

/// What every read does first: checks the token is a viewer's or an operator's,
/// and waits until everything the hub did before this request is in the store.
/// Returns the caller's claims: a scoped token reads only what concerns its
/// devices.
async fn readable(app: &App, headers: &HeaderMap) -> Result<Claims, Response> {
    let claims = authorize(app, headers, READERS).map_err(unauthorized)?;
    app.notifier.store().barrier().await.map_err(unavailable)?;
    Ok(claims)
}

/// Whether a scoped caller may read about a notification with these targets.
fn sees_notification(claims: &Claims, targets_json: &str) -> bool {
    match &claims.scope.device_tags {
        None => true,
        Some(want) => crate::notify::selector(targets_json)
            .is_some_and(|targets| crate::auth::within(want, &targets)),
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "store");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is unavailable: nothing was stored; try again later",
    )
}

/// `POST /v1/notifications` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub targets: TargetsBody,
    /// "info", "warning" or "critical".
    pub severity: String,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// Base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// A duration such as "90s", "15m", "2h"; default `notify.default_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Exactly one of the three.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsBody {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// `201 Created` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatedBody {
    pub id: String,
    pub targets: u32,
    pub created_ms: u64,
    pub expires_ms: u64,
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Response {
    let (claims, b) = match operator_body(&app, &headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(severity) = request::parse_severity(&b.severity) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "severity: one of info, warning, critical",
        );
    };
    let payload = match b.payload.as_deref().map(|p| STANDARD.decode(p)) {
        None => Vec::new(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            return refuse(StatusCode::BAD_REQUEST, format!("payload: not base64: {e}"))
        }
    };
    let ttl: Option<Duration> = match b.ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    let targets = Targets {
        device_ids: b.targets.device_ids,
        tags: b.targets.tags.into_iter().collect(),
        all: b.targets.all,
    };
    let req = match Request::new(
        targets,
        severity,
        b.title,
        b.body,
        payload,
        ttl,
        &app.config.notify,
    ) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let scope = claims.scope.device_tags.as_ref();
    match app.notifier.create(req, &claims.sub, scope).await {
        Ok(c) => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/v1/notifications/{}", c.id))],
            Json(CreatedBody {
                id: c.id,
                targets: c.targets,
                created_ms: c.created_ms,
                expires_ms: c.expires_ms,
            }),
        )
            .into_response(),
        Err(CreateError::Store(e)) => unavailable(e),
        Err(e @ (CreateError::NoTargets | CreateError::TooManyTargets(..))) => {
            refuse(StatusCode::UNPROCESSABLE_ENTITY, e)
        }
        Err(e @ CreateError::Invalid(_)) => refuse(StatusCode::BAD_REQUEST, e),
        Err(e @ CreateError::Forbidden(_)) => refuse(StatusCode::FORBIDDEN, e),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsBody {
    pub pending: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub expired: u64,
    pub total: u64,
}

impl From<Counts> for CountsBody {
    fn from(c: Counts) -> Self {
        CountsBody {
            pending: c.pending,
            delivered: c.delivered,
            acknowledged: c.acknowledged,
            expired: c.expired,
            total: c.total(),
        }
    }
}

/// One notification in `GET /v1/notifications` (and the head of the status answer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SummaryBody {
    pub id: String,
    pub severity: String,
    pub title: String,
    pub body: String,
    /// The request's targets as given.
    pub targets: serde_json::Value,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub completed_ms: Option<u64>,
    /// No delivery will change any more.
    pub complete: bool,
    pub counts: CountsBody,
}

impl SummaryBody {
    fn new(row: CampaignRow, counts: Counts) -> Self {
        let n = row.notification;
        let severity = crate::proto::notification::Severity::try_from(n.severity)
            .map(request::severity_name)
            .unwrap_or("unspecified")
            .to_owned();
        SummaryBody {
            id: n.id,
            severity,
            title: n.title,
            body: n.body,
            targets: serde_json::from_str(&n.targets_json).unwrap_or_default(),
            created_by: n.created_by,
            created_ms: n.created_ms,
            expires_ms: n.expires_ms,
            completed_ms: row.completed_ms,
            complete: row.completed_ms.is_some(),
            counts: counts.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryBody {
    pub device_id: String,
    /// pending, delivered, acknowledged or expired.
    pub state: String,
    /// Writes to the device so far (redeliveries included).
    pub attempts: u32,
    pub last_sent_ms: Option<u64>,
    pub acked_ms: Option<u64>,
}

impl From<DeliveryRow> for DeliveryBody {
    fn from(d: DeliveryRow) -> Self {
        DeliveryBody {
            device_id: d.device_id,
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            last_sent_ms: d.last_sent_ms,
            acked_ms: d.acked_ms,
        }
    }
}

/// `GET /v1/notifications/{id}` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusBody {
    #[serde(flatten)]
    pub summary: SummaryBody,
    /// Base64.
    pub payload: String,
    pub devices: Vec<DeliveryBody>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

pub async fn status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let state = match q.state.as_deref().map(DeliveryState::parse) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "state: one of pending, delivered, acknowledged, expired",
            )
        }
    };
    let claims = match readable(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match app
        .notifier
        .store()
        .status(id.clone(), state, q.after, page_limit(q.limit))
        .await
    {
        Ok(Some(s)) if sees_notification(&claims, &s.campaign.notification.targets_json) => {
            Json(StatusBody {
                payload: STANDARD.encode(&s.campaign.notification.payload),
                summary: SummaryBody::new(s.campaign, s.counts),
                devices: s.devices.into_iter().map(Into::into).collect(),
                next: s.next,
            })
            .into_response()
        }
        Ok(_) => refuse(StatusCode::NOT_FOUND, format!("no notification {id:?}")),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListBody {
    pub notifications: Vec<SummaryBody>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let claims = match readable(&app, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match app.notifier.store().recent(page_limit(q.limit)).await {
        Ok(rows) => Json(ListBody {
            notifications: rows
                .into_iter()
                .filter(|s| sees_notification(&claims, &s.campaign.notification.targets_json))
                .map(|s| SummaryBody::new(s.campaign, s.counts))
                .collect(),
        })
        .into_response(),
        Err(e) => unavailable(e),
    }
}

/// `PUT /v1/devices/{id}` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOut {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub registered_ms: u64,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevicesOut {
    pub devices: Vec<DeviceOut>,
}

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

/// `GET /v1/dashboard/settings` answer: how the browser page subscribes, from the
/// `dashboard.page_*` configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSettingsBody {
    /// `Subscribe.max_delay_ms` of the page's (default) batched subscriptions.
    pub max_delay_ms: u32,
    /// `Subscribe.conflate_ms` while it shows more than `conflate_above` series.
    pub conflate_ms: u32,
    pub conflate_above: usize,
}

pub async fn page_settings(State(app): State<Arc<App>>) -> Response {
    let d = &app.config.dashboard;
    // validate() keeps both within what a Subscribe accepts (at most 60,000 ms).
    let ms = |t: Duration| u32::try_from(t.as_millis()).unwrap_or(u32::MAX);
    (
        // A hub restarted with other settings must not be hidden by a cached copy.
        [(header::CACHE_CONTROL, "no-cache")],
        Json(PageSettingsBody {
            max_delay_ms: ms(d.page_max_delay),
            conflate_ms: ms(d.page_conflate_interval),
            conflate_above: d.page_conflate_above,
        }),
    )
        .into_response()
}
