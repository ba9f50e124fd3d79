//! The OpenAPI 3.1 description of everything the HTTP side serves, at
//! `GET /v1/openapi.json`.
//!
//! It is generated from the handlers themselves: each carries a `#[utoipa::path]`
//! (method, path, parameters, bodies, every status it answers, who may call it) and
//! its bodies are the real serde types deriving `ToSchema`. The router in
//! [`super::router`] is built with `utoipa_axum`'s `routes!` from the same handler
//! list, so a described route is a served route by construction; the few routes
//! served but not described are listed in [`super::UNDESCRIBED`] with the reason, and
//! `tests/openapi.rs` checks both directions against a running hub.
//!
//! This module holds what is common to every operation: the document's head (title,
//! version = the crate's, tags), the security schemes, the descriptions of the
//! refusals every protected operation shares, and the document served once
//! serialized.

use std::sync::LazyLock;

use bytes::Bytes;

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::refuse;

/// The name of the `Authorization: Bearer <JWT>` scheme in `security` lists.
pub const BEARER: &str = "bearer";
/// The dashboard WebSocket's `telehub_token` cookie.
pub const COOKIE: &str = "cookie";
/// A device's client certificate, verified against `auth.device_ca`.
pub const MUTUAL_TLS: &str = "mutualTLS";

/// `401` on every protected operation.
pub const UNAUTHORIZED: &str = "No token, or one that is malformed, wrongly signed, expired, \
     revoked or otherwise refused; the one-line text/plain body says which.";
/// `403` on the operations viewers and operators may call.
pub const FORBIDDEN_READ: &str = "The token's role is neither viewer nor operator.";
/// `403` on the operations only operators may call.
pub const FORBIDDEN_WRITE: &str = "The token's role is not operator.";
/// `503` on every operation that reads or writes the store.
pub const UNAVAILABLE: &str = "The store cannot write or does not answer (nothing was \
     changed); try again later.";
/// `400` on the operations that read a query string.
pub const BAD_QUERY: &str = "A query parameter that is unknown or does not parse.";
/// `400` on the operations that read a JSON body.
pub const BAD_BODY: &str = "The body is not JSON of the documented shape (unknown fields \
     are refused), or a value in it is out of range; the body says which.";

/// The document's head; [`super::described`] adds every operation and schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "telehub",
        description = "The HTTP side of a telehub node: the REST API for notifications, \
the device registry and token revocations; the WebSocket upgrades for devices and \
dashboards; health, readiness and metrics for orchestrators and Prometheus.\n\n\
Every endpoint is on the node's one TLS listener. Bodies are JSON unless said \
otherwise; every refusal is its status with a one-line `text/plain` reason. The REST \
API authenticates with `Authorization: Bearer <token>` only (never the cookie the \
dashboard WebSocket accepts, so no other web page can act with an operator's \
browser); tokens are JWTs made by `telehub token` or an identity provider the hub \
trusts, and their role (device, viewer, operator) decides what they may call.",
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "notifications", description = "Notifications pushed to devices and their per-device progress."),
        (name = "devices", description = "The device registry."),
        (name = "revocations", description = "Revoking tokens without a restart."),
        (name = "dashboard", description = "The browser dashboard and its settings."),
        (name = "websocket", description = "The WebSocket endpoints: after the `101` every message is a Protocol Buffers `telehub.v1.Envelope` (`proto/telehub/v1/telehub.proto`)."),
        (name = "operations", description = "Liveness, readiness and metrics."),
        (name = "meta", description = "This description."),
    )
)]
pub struct ApiDoc;

/// Adds the ways a caller authenticates.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from `telehub token --role ...` or a trusted identity \
                         provider; its `role` claim is device, viewer or operator, and \
                         an optional `device_tags` scope narrows what it sees.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            COOKIE,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "telehub_token",
                "The same JWT in a cookie: accepted on the dashboard WebSocket only.",
            ))),
        );
        components.add_security_scheme(
            MUTUAL_TLS,
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate the configured device CA verifies \
                     (`auth.device_ca`): the device it names, on /v1/device only."
                        .to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
    }
}

/// The document as served: serialized once, on the first request.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    serde_json::to_vec(&super::openapi())
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// The OpenAPI document of this API.
///
/// OpenAPI 3.1, generated from the hub's handlers; `info.version` is the hub's
/// version. No token needed.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses(
        (status = 200, description = "This document.", content_type = "application/json",
            body = Object),
        (status = 500, description = "The document could not be serialized (a bug).",
            body = String),
    )
)]
pub async fn serve() -> Response {
    match &*DOCUMENT {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                // Changes only with the hub's version.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            json.clone(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "serializing the OpenAPI document");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the API description is unavailable",
            )
        }
    }
}
