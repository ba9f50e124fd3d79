//! The hub's own signing secret, `DATA_DIR/token.key` (32 random bytes, mode 0600,
//! created on first use): it signs the HS256 JWTs `telehub token` mints and checks
//! the HS256 JWTs a customer's backend mints with the same secret.
//!
//! It also checks the deprecated `th1.<claims>.<hmac>` tokens of earlier releases
//! (HMAC-SHA256 of `th1.<claims>` under the same secret), accepted for one more
//! release unless `auth.legacy_tokens = false`.
//!
//! Invariant: whoever holds this secret can mint any token, operators' included;
//! it never leaves the data dir except to other nodes of the same cluster.

use std::{collections::BTreeMap, fmt, fs, path::Path, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use sha2::Sha256;

use super::{unix_now, AuthError, Claims, Payload, Role, Scope};

/// File in the data dir holding the signing secret.
pub const SECRET_FILE: &str = "token.key";
const SECRET_LEN: usize = 32;
/// The prefix of a deprecated (pre-JWT) token.
pub(super) const LEGACY_PREFIX: &str = "th1.";

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

/// Signs and verifies the hub's own tokens with the data dir's secret.
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

    /// Mints an HS256 JWT for `subject` valid for `ttl` from now, with a random
    /// `jti` (so this one token can be revoked alone).
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        tags: BTreeMap<String, String>,
        ttl: Duration,
    ) -> String {
        self.issue_scoped(subject, role, tags, Scope::default(), ttl)
    }

    /// The same, limited to `scope` (see `auth::scope`).
    pub fn issue_scoped(
        &self,
        subject: &str,
        role: Role,
        tags: BTreeMap<String, String>,
        scope: Scope,
        ttl: Duration,
    ) -> String {
        let iat = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            tags,
            iat,
            exp: iat.saturating_add(ttl.as_secs().max(1)),
            jti: Some(format!("{:032x}", rand::random::<u128>())),
            scope,
        };
        self.sign(&claims)
    }

    /// Signs `claims` as they are (tests use it to craft expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        super::crypto::install();
        let header = Header::new(Algorithm::HS256);
        // A non-empty secret is a valid HMAC key, and HS256 over a struct of
        // strings and integers cannot fail.
        EncodingKey::from_secret(&self.secret)
            .and_then(|key| jsonwebtoken::encode(&header, &Payload::from(claims), &key))
            .unwrap_or_default()
    }

    /// The key HS256 tokens are verified with.
    pub(super) fn decoding(&self) -> DecodingKey {
        match DecodingKey::from_secret(&self.secret) {
            Ok(key) => key,
            Err(_) => unreachable!("a {SECRET_LEN}-byte secret is a valid HMAC key"),
        }
    }

    /// Checks a deprecated `th1.` token: the signature (in constant time) before
    /// the claims are parsed, so unsigned input never reaches the JSON parser.
    pub(super) fn verify_legacy(&self, token: &str) -> Result<Claims, AuthError> {
        let (signed, sig) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let claims = signed
            .strip_prefix(LEGACY_PREFIX)
            .ok_or(AuthError::Malformed)?;
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
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        if payload.exp <= unix_now() {
            return Err(AuthError::Expired);
        }
        payload.try_into()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        }
    }

    /// A `th1.` token, as earlier releases minted them (for the tests of the
    /// deprecated format).
    #[doc(hidden)]
    pub fn issue_legacy(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(&Payload::from(claims)).unwrap_or_default();
        let signed = format!("{LEGACY_PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }
}
