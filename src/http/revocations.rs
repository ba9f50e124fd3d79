//! `POST /v1/revocations` and `GET /v1/revocations` (operators): revoking tokens
//! without a restart (see `auth::revocation`).
//!
//! A revocation is answered 201 once it is durable in the store and in force on
//! this node; live connections it covers are closed with 4003 at once, on the
//! other nodes of a cluster within about a second (a `RevocationsChanged` frame
//! makes them read the store; they also read it every few seconds in case the
//! frame was lost). Refusals: 400 (a body that is not exactly one of `jti`,
//! `token`, `subject`, or bad times), 422 (a `token` the hub does not accept, or
//! that has no `jti`), 503 (the store cannot write: nothing was revoked).
//! Each handler's `#[utoipa::path]` says exactly which it answers.

use std::sync::Arc;

use axum::{
    extract::{rejection::JsonRejection, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    api::{authorize, operator_body, unauthorized, unavailable, OPERATORS},
    openapi as doc, refuse,
};
use crate::{
    app::App,
    auth::AuthError,
    hub::now_ms,
    store::{Op, Revocation, RevocationKind},
};

/// Longest `jti` or subject accepted.
const MAX_VALUE: usize = 256;

/// `POST /v1/revocations` body: exactly one of `jti`, `token`, `subject`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// One token, by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// One token, given whole: its `jti` and `exp` are read from it (it must be a
    /// token this hub accepts, not yet expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Every token of this subject issued before `issued_before_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// With `subject`; default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before_ms: Option<u64>,
    /// When the revocation may be forgotten because what it covers has expired;
    /// default: the token's `exp` with `token`, else now + `auth.max_token_lifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// `GET /v1/revocations` answer: those in force, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RevocationsBody {
    #[schema(value_type = Vec<RevocationDoc>)]
    pub revocations: Vec<Revocation>,
}

/// How a `store::Revocation` reads on the wire: its schema in the API description
/// (the store's type stays free of it; a test keeps the two the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Revocation)]
pub struct RevocationDoc {
    pub kind: RevocationKindDoc,
    /// The `jti` (kind `token`) or the subject (kind `subject`).
    pub value: String,
    /// Kind `subject`: tokens issued (`iat`) before this instant are covered; 0 for
    /// kind `token`.
    pub issued_before_ms: u64,
    /// When it may be forgotten: what it covers has expired by then.
    pub expires_ms: u64,
    pub created_ms: u64,
    /// The operator who revoked.
    pub created_by: String,
}

/// What a revocation covers: one token (by `jti`) or every token of a subject
/// issued before an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RevocationKind)]
pub enum RevocationKindDoc {
    Token,
    Subject,
}

impl From<Revocation> for RevocationDoc {
    fn from(r: Revocation) -> Self {
        RevocationDoc {
            kind: match r.kind {
                RevocationKind::Token => RevocationKindDoc::Token,
                RevocationKind::Subject => RevocationKindDoc::Subject,
            },
            value: r.value,
            issued_before_ms: r.issued_before_ms,
            expires_ms: r.expires_ms,
            created_ms: r.created_ms,
            created_by: r.created_by,
        }
    }
}

/// Revoke tokens.
///
/// One token (by `jti`, or given whole), or every token of a subject issued before
/// an instant. Answered `201` once durable and in force on this node; live
/// connections it covers are closed with 4003 at once (on the other nodes of a
/// cluster within about a second). Role: operator.
#[utoipa::path(
    post,
    path = "/v1/revocations",
    operation_id = "revoke",
    tag = "revocations",
    security(("bearer" = [])),
    request_body = RevokeBody,
    responses(
        (status = 201, description = "In force.", body = RevocationDoc),
        (status = 400, description = "Not exactly one of `jti`, `token`, `subject`; an \
            empty or over-long value; `issued_before_ms` without `subject`; `expires_ms` \
            in the past; or a body that does not parse.", body = String),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = doc::FORBIDDEN_WRITE, body = String),
        (status = 422, description = "A `token` this hub does not accept (or already \
            expired), or one without a `jti`.", body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
pub async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Response {
    let (claims, b) = match operator_body(&app, &headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let revocation = match revocation(&app, b, claims.sub) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    let store = app.notifier.store();
    if !store.accepting() {
        return unavailable("the store is not accepting writes");
    }
    if let Err(e) = store.commit(Op::Revoke(revocation.clone())).await {
        return unavailable(e);
    }
    app.auth.revoke(&revocation);
    app.hub.bus().revocations_changed();
    tracing::info!(
        kind = revocation.kind.as_str(),
        value = %revocation.value,
        by = %revocation.created_by,
        "tokens revoked"
    );
    (StatusCode::CREATED, Json(revocation)).into_response()
}

/// The revocation a body asks for, or why not.
fn revocation(app: &App, b: RevokeBody, by: String) -> Result<Revocation, (StatusCode, String)> {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned());
    let now = now_ms();
    let default_expiry = now.saturating_add(app.config.auth.max_token_lifetime.as_millis() as u64);
    let (kind, value, issued_before_ms, expires_ms) = match (b.jti, b.token, b.subject) {
        (Some(jti), None, None) => (RevocationKind::Token, jti, 0, default_expiry),
        (None, Some(token), None) => {
            let c = app.auth.verify(&token).map_err(|e| {
                let why = match e {
                    AuthError::Expired => "the token has expired: nothing to revoke".to_owned(),
                    e => format!("not a token this hub accepts: {e}"),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, why)
            })?;
            let jti = c.jti.ok_or((
                StatusCode::UNPROCESSABLE_ENTITY,
                "the token has no jti: revoke its subject instead".to_owned(),
            ))?;
            // Covered until it expires, leeway included.
            let leeway = app.config.auth.leeway.as_millis() as u64;
            let until = c.exp.saturating_mul(1000).saturating_add(leeway);
            (RevocationKind::Token, jti, 0, until)
        }
        (None, None, Some(subject)) => (
            RevocationKind::Subject,
            subject,
            b.issued_before_ms.unwrap_or(now),
            default_expiry,
        ),
        _ => return Err(bad("give exactly one of jti, token, subject")),
    };
    if value.is_empty() || value.len() > MAX_VALUE {
        return Err(bad("the jti or subject must be 1 to 256 bytes"));
    }
    if b.issued_before_ms.is_some() && kind != RevocationKind::Subject {
        return Err(bad("issued_before_ms goes with subject"));
    }
    let expires_ms = b.expires_ms.unwrap_or(expires_ms);
    if expires_ms <= now {
        return Err(bad("expires_ms is in the past: nothing left to revoke"));
    }
    Ok(Revocation {
        kind,
        value,
        issued_before_ms,
        expires_ms,
        created_ms: now,
        created_by: by,
    })
}

/// The revocations in force.
///
/// Oldest first. Role: operator.
#[utoipa::path(
    get,
    path = "/v1/revocations",
    operation_id = "list_revocations",
    tag = "revocations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Those in force.", body = RevocationsBody),
        (status = 401, description = doc::UNAUTHORIZED, body = String),
        (status = 403, description = doc::FORBIDDEN_WRITE, body = String),
        (status = 503, description = doc::UNAVAILABLE, body = String),
    )
)]
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers, OPERATORS) {
        return unauthorized(e);
    }
    match app.notifier.store().revocations(now_ms()).await {
        Ok(revocations) => Json(RevocationsBody { revocations }).into_response(),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented schema is the store's type as it is sent.
    #[test]
    fn revocations_are_sent_as_documented() {
        for kind in [RevocationKind::Token, RevocationKind::Subject] {
            let r = Revocation {
                kind,
                value: "v".into(),
                issued_before_ms: 1,
                expires_ms: 2,
                created_ms: 3,
                created_by: "op".into(),
            };
            assert_eq!(
                serde_json::to_value(&r).unwrap(),
                serde_json::to_value(RevocationDoc::from(r)).unwrap()
            );
        }
    }
}
