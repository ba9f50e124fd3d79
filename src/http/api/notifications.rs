//! `POST /v1/notifications` (operators), `GET /v1/notifications` and
//! `GET /v1/notifications/{id}` (viewers and operators): pushing notifications to
//! devices and following their per-device progress.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{operator_body, page_limit, readable, unavailable};
use crate::{
    app::App,
    auth::Claims,
    http::{openapi as doc, refuse},
    notify::{request, CreateError, Request},
    proto::Targets,
    store::{CampaignRow, Counts, DeliveryRow, DeliveryState},
};

/// Whether a scoped caller may read about a notification with these targets.
fn sees_notification(claims: &Claims, targets_json: &str) -> bool {
    match &claims.scope.device_tags {
        None => true,
        Some(want) => crate::notify::selector(targets_json)
            .is_some_and(|targets| crate::auth::within(want, &targets)),
    }
}

/// `POST /v1/notifications` body.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub targets: TargetsBody,
    #[schema(value_type = SeverityName)]
    pub severity: String,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// Bytes for the device, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64")]
    pub payload: Option<String>,
    /// A duration such as "90s", "15m", "2h"; default `notify.default_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "15m")]
    pub ttl: Option<String>,
}

/// Who a notification is for: exactly one of the three.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct TargetsBody {
    /// These devices, registered or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    /// Registered devices carrying every one of these tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Every registered device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// A notification's severity, as the REST API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeverityName {
    Info,
    Warning,
    /// Delivered at least once until each device acknowledges it or it expires.
    Critical,
}

/// A notification's targets in answers: those of the request, as resolved
/// (`notify::Target`): `{"device_ids": [...]}`, `{"tags": {...}}` or `"all"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetsOut {
    DeviceIds(Vec<String>),
    Tags(BTreeMap<String, String>),
    All,
}

/// `201 Created` answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedBody {
    pub id: String,
    /// How many devices it targets.
    pub targets: u32,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Push a notification to devices.
///
/// Targets are resolved against the device registry when it is created; it is
/// answered `201` only once durably stored. CRITICAL ones are delivered until each
/// device acknowledges them or they expire. Role: operator (a scoped operator's
/// targets stay within its `device_tags`).
#[utoipa::path(
    post,
    path = "/v1/notifications",
    operation_id = "create_notification",
    tag = "notifications",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Stored; `Location` names its status.", body = CreatedBody,
            headers(("Location" = String, description = "/v1/notifications/{id}"))),
        (status = 400, description = doc::BAD_BODY, body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = "The token's role is not operator, or the targets \
            reach outside a scoped operator's `device_tags`.", body = String),
        (status = 422, description = "No device matches the targets, or too many do \
            (`notify.max_targets`).", body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
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

/// How many target devices are in each state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SummaryBody {
    pub id: String,
    /// info, warning or critical ("unspecified" for a stored value this version
    /// does not name).
    #[schema(example = "critical")]
    pub severity: String,
    pub title: String,
    pub body: String,
    /// The request's targets as given.
    #[schema(value_type = TargetsOut)]
    pub targets: serde_json::Value,
    /// The subject of the token that created it.
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

/// A delivery's state, as the REST API names it (`store::DeliveryState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStateName {
    /// Not yet written to the device.
    Pending,
    /// Written; for CRITICAL, awaiting the device's ack.
    Delivered,
    Acknowledged,
    Expired,
}

/// One target device's delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryBody {
    pub device_id: String,
    #[schema(value_type = DeliveryStateName)]
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
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    #[serde(flatten)]
    pub summary: SummaryBody,
    /// Base64.
    #[schema(content_encoding = "base64")]
    pub payload: String,
    /// A page of the target devices, ordered by id.
    pub devices: Vec<DeliveryBody>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/notifications/{id}` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Only the devices in this state.
    #[serde(default)]
    #[param(value_type = Option<DeliveryStateName>, inline)]
    state: Option<String>,
    /// The page starts after this device id (the previous page's `next`).
    #[serde(default)]
    after: Option<String>,
    /// Devices per page: default 100, at most 1000 (larger asks are clamped).
    #[serde(default)]
    limit: Option<usize>,
}

/// One notification's progress.
///
/// Its counts by state and a page of its target devices, ordered by id. Role:
/// viewer or operator (a scoped token sees only notifications targeting a tag
/// selector within its `device_tags`).
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    operation_id = "notification_status",
    tag = "notifications",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The notification's id."), PageQuery),
    responses(
        (status = 200, description = "The notification.", body = StatusBody),
        (status = 400, description = "`state` is not a delivery state, or another \
            query parameter is unknown or does not parse.", body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = doc::FORBIDDEN_READ, body = String),
        (status = 404, description = "No such notification (or none this scoped token \
            may see).", body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
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

/// `GET /v1/notifications` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many: default 100, at most 1000 (larger asks are clamped).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/notifications` answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ListBody {
    /// Newest first.
    pub notifications: Vec<SummaryBody>,
}

/// Recent notifications.
///
/// Newest first, each with its counts by state. Role: viewer or operator (a scoped
/// token sees only notifications targeting a tag selector within its
/// `device_tags`).
#[utoipa::path(
    get,
    path = "/v1/notifications",
    operation_id = "list_notifications",
    tag = "notifications",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Recent notifications.", body = ListBody),
        (status = 400, description = doc::BAD_QUERY, body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = doc::FORBIDDEN_READ, body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::request::Target;

    /// The schema-only names serialize exactly as the values the hub sends.
    #[test]
    fn documented_names_are_the_sent_ones() {
        for (state, name) in [
            (DeliveryState::Pending, DeliveryStateName::Pending),
            (DeliveryState::Delivered, DeliveryStateName::Delivered),
            (DeliveryState::Acknowledged, DeliveryStateName::Acknowledged),
            (DeliveryState::Expired, DeliveryStateName::Expired),
        ] {
            assert_eq!(serde_json::json!(state.as_str()), serde_json::json!(name));
        }
        for name in [
            SeverityName::Info,
            SeverityName::Warning,
            SeverityName::Critical,
        ] {
            let text = serde_json::to_value(name).unwrap();
            assert!(request::parse_severity(text.as_str().unwrap()).is_some());
        }
        let tags = BTreeMap::from([("fleet".to_owned(), "north".to_owned())]);
        for (target, out) in [
            (Target::All, TargetsOut::All),
            (Target::Tags(tags.clone()), TargetsOut::Tags(tags)),
            (
                Target::DeviceIds(["a".to_owned()].into()),
                TargetsOut::DeviceIds(vec!["a".to_owned()]),
            ),
        ] {
            assert_eq!(
                serde_json::to_value(target).unwrap(),
                serde_json::json!(out)
            );
        }
    }
}
