//! The REST API: notifications ([`notifications`]), the device registry
//! ([`devices`]) and the dashboard page's settings ([`settings`]); revocations are
//! in `super::revocations`. This module holds what every operation shares: the token
//! check, the store barrier, page sizes and the refusals.
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
//! unknown id, 422 no device matches, 503 store unavailable). Each handler's
//! `#[utoipa::path]` says exactly which it answers (see `super::openapi`).

pub mod devices;
pub mod notifications;
pub mod settings;

use axum::{
    extract::rejection::JsonRejection,
    http::{header, HeaderMap, StatusCode},
    response::Response,
    Json,
};

pub use devices::{DeviceBody, DeviceOut, DevicesOut, DevicesQuery};
pub use notifications::{
    CountsBody, CreateBody, CreatedBody, DeliveryBody, DeliveryStateName, ListBody, ListQuery,
    PageQuery, SeverityName, StatusBody, SummaryBody, TargetsBody, TargetsOut,
};
pub use settings::PageSettingsBody;

use super::refuse;
use crate::{
    app::App,
    auth::{AuthError, Claims, Role},
};

/// Largest page a list may ask for.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
// The `limit` descriptions in the API description spell these out.
const _: () = assert!(
    MAX_PAGE == 1000 && DEFAULT_PAGE == 100,
    "update the `limit` docs"
);

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

pub(super) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "store");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is unavailable: nothing was stored; try again later",
    )
}

fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}
