//! Tokens, roles and who may do what.
//!
//! A token is a JWT (RFC 7519) carrying `sub` (device id, or user name), `role`
//! (`device`, `viewer` or `operator`), optional `tags`, `exp`, and usually `iat`,
//! `nbf` and `jti`. It is signed either with HS256 under the hub's own secret
//! (`key`: what `telehub token` mints and existing deployments use), or with
//! RS256, ES256 or EdDSA by another issuer whose public keys the hub holds in a
//! key set (`keyset`: a JWKS file or URL), chosen by the token's `kid`. The
//! deprecated `th1.` tokens of earlier releases are still accepted.
//! [`Verifier`] checks all of them (see `verifier` for the rules).
//!
//! Invariants: nothing of a token is trusted before its signature verifies; every
//! refusal is an [`AuthError`] that maps to 401 (who are you?) or 403 (not
//! allowed), is counted by reason and logged by reason, never with the token.

pub mod crypto;
mod key;
mod keyset;
mod revocation;
mod scope;
mod verifier;

use std::{
    collections::BTreeMap,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use key::{KeyError, TokenKey, SECRET_FILE};
pub use keyset::{keep_fresh, KeySet, KeySetError, MIN_REFETCH};
pub use revocation::{Credential, Revoked};
pub use scope::{narrow, within, Scope};
pub use verifier::{Meters, Policy, Verifier};

/// Longest token accepted; anything longer is refused before any work.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes telemetry as its own subject, receives and acks notifications.
    Device,
    /// Watches telemetry and presence.
    Viewer,
    /// Everything a viewer does, plus pushing notifications.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the hub knows of a caller once its token verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Device id for devices, user name for people.
    pub sub: String,
    pub role: Role,
    pub tags: BTreeMap<String, String>,
    /// Issued at, seconds since the Unix epoch (0 when the token does not say).
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// The token's own id, when it has one (revocation of one token names it).
    pub jti: Option<String>,
    /// What it may publish, subscribe to and see (see `scope`).
    pub scope: Scope,
}

/// The JSON of a token's claims, as signed (unknown claims are ignored).
#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    role: Role,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(flatten)]
    scope: scope::ScopeClaims,
}

impl From<&Claims> for Payload {
    fn from(c: &Claims) -> Self {
        Payload {
            sub: c.sub.clone(),
            role: c.role,
            tags: c.tags.clone(),
            iat: Some(c.iat),
            exp: c.exp,
            jti: c.jti.clone(),
            scope: c.scope.claims(),
        }
    }
}

impl TryFrom<Payload> for Claims {
    type Error = AuthError;

    /// Fails on a scope pattern that does not parse.
    fn try_from(p: Payload) -> Result<Self, AuthError> {
        Ok(Claims {
            sub: p.sub,
            role: p.role,
            tags: p.tags,
            iat: p.iat.unwrap_or(0),
            exp: p.exp,
            jti: p.jti,
            scope: Scope::parse(p.scope).map_err(|_| AuthError::Malformed)?,
        })
    }
}

/// Why a token was refused. The message is the HTTP answer's; [`reason`] is the
/// label of `telehub_tokens_refused` and of the log line.
///
/// [`reason`]: AuthError::reason
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token key id (kid) missing or unknown")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer (iss) not accepted")]
    Issuer,
    #[error("token audience (aud) not accepted")]
    Audience,
    #[error("th1 tokens are no longer accepted here: mint a JWT (`telehub token`)")]
    LegacyDisabled,
    #[error("token revoked")]
    Revoked,
    #[error("client certificate refused: {0}")]
    Certificate(String),
    #[error("role {got} may not use this endpoint")]
    WrongRole { got: Role },
}

impl AuthError {
    /// Every reason, for metrics initialised at zero.
    pub const REASONS: &[&str] = &[
        "missing",
        "too_long",
        "malformed",
        "algorithm",
        "unknown_key",
        "signature",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "legacy_disabled",
        "revoked",
        "certificate",
        "role",
    ];

    /// A short, stable name for the refusal (metrics label, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLong => "too_long",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::LegacyDisabled => "legacy_disabled",
            AuthError::Revoked => "revoked",
            AuthError::Certificate(_) => "certificate",
            AuthError::WrongRole { .. } => "role",
        }
    }

    /// 401 when the caller is unknown, 403 when known but not allowed.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::WrongRole { .. } => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// Where a token may come from on an HTTP request, in order of precedence:
/// `Authorization: Bearer <token>`; a `Sec-WebSocket-Protocol` entry
/// `bearer.<token>` (browsers cannot set headers on a WebSocket); a
/// `telehub_token` cookie.
pub fn token_from_headers(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    let from_protocol = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."));
    if from_protocol.is_some() {
        return from_protocol;
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("telehub_token="))
}

/// Parses `K=V` tag arguments.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("tag `{s}` is not K=V"))?;
    if k.is_empty() {
        return Err(format!("tag `{s}` has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            "telehub.v1, bearer.abc".parse().unwrap(),
        );
        h.insert("cookie", "a=b; telehub_token=def".parse().unwrap());
        assert_eq!(token_from_headers(&h), Some("abc"));
        h.remove("sec-websocket-protocol");
        assert_eq!(token_from_headers(&h), Some("def"));
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(token_from_headers(&h), Some("xyz"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(token_from_headers(&h), None);
    }
}
