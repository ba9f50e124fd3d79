//! Tokens and roles.
//!
//! A token is `th1.<claims>.<signature>`: `claims` is the base64url (no padding)
//! JSON of [`Claims`], `signature` the base64url HMAC-SHA256 of `th1.<claims>` under
//! a 32-byte secret kept in `DATA_DIR/token.key` (mode 0600, created on first use).
//! Tokens carry subject, role, tags and expiry; the hub keeps no session state for
//! them, so revocation is by rotating the secret (delete `token.key`).
//!
//! Invariants: the signature is checked (in constant time) before the claims are
//! parsed, so unsigned input never reaches the JSON parser; every refusal is an
//! [`AuthError`] that maps to 401 (who are you?) or 403 (not allowed).

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "th1";
/// File in the data dir holding the signing secret.
pub const SECRET_FILE: &str = "token.key";
const SECRET_LEN: usize = 32;
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

/// The signed content of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Device id for devices, user name for people.
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("role {got} may not use this endpoint")]
    WrongRole { got: Role },
}

impl AuthError {
    /// 401 when the caller is unknown, 403 when known but not allowed.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::WrongRole { .. } => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: expected {SECRET_LEN} bytes, found {found}")]
    BadLength { path: String, found: usize },
}

/// Signs and verifies tokens with the data dir's secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Loads `DATA_DIR/token.key`, creating the directory and a random secret when missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(SECRET_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; SECRET_LEN] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyError::BadLength {
                            path: path.display().to_string(),
                            found: bytes.len(),
                        })?;
                Ok(Self { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io)?;
                let secret: [u8; SECRET_LEN] = rand::random();
                match crate::tls::write_private(&path, &secret) {
                    Ok(()) => Ok(Self { secret }),
                    // Another process created it first: use theirs.
                    Err(_) if path.exists() => Self::load_or_create(data_dir),
                    Err(e) => Err(io(std::io::Error::other(e.to_string()))),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    #[cfg(test)]
    pub(crate) fn from_secret(secret: [u8; SECRET_LEN]) -> Self {
        Self { secret }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        }
    }

    /// Mints a token for `subject` valid for `ttl` from now.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        tags: BTreeMap<String, String>,
        ttl: Duration,
    ) -> String {
        let iat = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            tags,
            iat,
            exp: iat.saturating_add(ttl.as_secs().max(1)),
        };
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// Checks signature and expiry and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (prefix, claims) = signed.split_once('.').ok_or(AuthError::Malformed)?;
        if prefix != PREFIX {
            return Err(AuthError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        if claims.exp <= unix_now() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// [`verify`](Self::verify) plus a role check.
    pub fn authorize(&self, token: Option<&str>, allowed: &[Role]) -> Result<Claims, AuthError> {
        let claims = self.verify(token.ok_or(AuthError::Missing)?)?;
        if !allowed.contains(&claims.role) {
            return Err(AuthError::WrongRole { got: claims.role });
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret([7; SECRET_LEN])
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = key();
        let mut tags = BTreeMap::new();
        tags.insert("fleet".into(), "north".into());
        let t = k.issue("dev-1", Role::Device, tags.clone(), Duration::from_secs(60));
        let c = k.authorize(Some(&t), &[Role::Device]).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.role, c.tags),
            ("dev-1", Role::Device, tags)
        );

        assert_eq!(
            k.authorize(Some(&t), &[Role::Viewer]),
            Err(AuthError::WrongRole { got: Role::Device })
        );
        assert_eq!(k.authorize(None, &[Role::Device]), Err(AuthError::Missing));
        assert_eq!(k.verify("garbage"), Err(AuthError::Malformed));
        let other = TokenKey::from_secret([8; SECRET_LEN]);
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
        // Tampering with the claims breaks the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"x","role":"operator","iat":0,"exp":99999999999}"#);
        parts[1] = &forged;
        assert_eq!(k.verify(&parts.join(".")), Err(AuthError::BadSignature));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = key();
        let claims = Claims {
            sub: "d".into(),
            role: Role::Device,
            tags: BTreeMap::new(),
            iat: 1,
            exp: 2,
        };
        let signed = format!(
            "{PREFIX}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        let mut mac = k.mac();
        mac.update(signed.as_bytes());
        let t = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(k.verify(&t), Err(AuthError::Expired));
    }

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
