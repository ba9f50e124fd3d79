//! Public keys of other issuers (an identity provider, a customer's backend), as a
//! JWKS (RFC 7517): from a file read at start, and from a URL the hub fetches at
//! start and then every `auth.jwks_refresh` (sooner when a token names a key id
//! it does not know, at most once per [`MIN_REFETCH`]: keys rotate).
//!
//! Invariants: only public keys for RS256 (RSA of 2048 bits or more), ES256 (P-256)
//! and EdDSA (Ed25519) are kept, each bound to its one algorithm; every key has a
//! unique `kid`; a symmetric (`oct`) key refuses the whole set, since anyone who
//! can read it could mint tokens. A fetch that fails keeps the keys already held.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey,
};

use crate::{shutdown::Shutdown, sim::Endpoint};

use super::Verifier;

/// The soonest a fetch follows the previous one when a token names an unknown key.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest key set accepted from a URL.
const MAX_BYTES: usize = 1 << 20;
/// Bound on one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("not a JWKS (a JSON object with a \"keys\" array): {0}")]
    Json(#[from] serde_json::Error),
    #[error("key {0:?} is a shared secret (kty \"oct\"): a key set holds public keys only")]
    Secret(String),
    #[error("a key has no \"kid\": tokens select their key by kid")]
    NoKeyId,
    #[error("two keys have the kid {0:?}")]
    DuplicateKeyId(String),
    #[error("no usable key (RS256, ES256 or EdDSA public keys with a kid)")]
    Empty,
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// Keys by `kid`, each with the one algorithm it verifies.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl KeySet {
    /// Parses a JWKS. Keys for other algorithms or for encryption are skipped
    /// (identity providers publish those too) with a logged warning.
    pub fn parse(json: &[u8]) -> Result<Self, KeySetError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            keys: Vec<serde_json::Value>,
        }
        let raw: Raw = serde_json::from_slice(json)?;
        let mut keys = HashMap::new();
        for value in raw.keys {
            let kid = value
                .get("kid")
                .and_then(|k| k.as_str())
                .ok_or(KeySetError::NoKeyId)?
                .to_owned();
            if value.get("kty").and_then(|k| k.as_str()) == Some("oct") {
                return Err(KeySetError::Secret(kid));
            }
            let usable = serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(|jwk| usable(&jwk));
            match usable {
                Ok(key) => {
                    if keys.insert(kid.clone(), key).is_some() {
                        return Err(KeySetError::DuplicateKeyId(kid));
                    }
                }
                Err(why) => tracing::warn!(kid, why, "key set: key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        Ok(KeySet { keys })
    }

    /// Reads and parses a JWKS file.
    pub fn load(path: &Path) -> Result<Self, KeySetError> {
        let bytes =
            std::fs::read(path).map_err(|e| KeySetError::Io(path.display().to_string(), e))?;
        Self::parse(&bytes)
    }

    /// Fetches and parses the JWKS at `url` (`https://`, verified against `ca` or
    /// the system's roots; `http://` for a key server on the same host).
    pub async fn fetch(url: &str, ca: Option<&Path>) -> Result<Self, KeySetError> {
        let fail = |reason: String| KeySetError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::parse_trusting(url, ca).map_err(|e| fail(format!("{e:#}")))?;
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            crate::client::get(&endpoint, path_of(url), MAX_BYTES),
        )
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
        Self::parse(&body)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn get(&self, kid: &str) -> Option<&(DecodingKey, Algorithm)> {
        self.keys.get(kid)
    }
}

/// The one algorithm a JWK verifies, and its key; why not otherwise.
fn usable(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use \"enc\")".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                rsa.n.trim_end_matches('='),
            )
            .map_err(|e| format!("bad modulus: {e}"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count();
            if bits < MIN_RSA_BYTES {
                return Err(format!("an RSA key of {} bits (2048 at least)", bits * 8));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Err("not an RSA, P-256 or Ed25519 public key".into()),
    };
    // A key that names its algorithm must name this one.
    if let Some(named) = jwk.common.key_algorithm {
        if named != KeyAlgorithm::from(alg) {
            return Err(format!("alg {named} (accepted: {alg:?} for this key)"));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok((key, alg))
}

/// The path and query of a URL (`/` when it has none).
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

/// Keeps the URL's key set fresh until shutdown: every `every`, sooner when a token
/// names an unknown key; after a failed fetch, again within [`MIN_REFETCH`].
pub async fn keep_fresh(
    verifier: Arc<Verifier>,
    url: String,
    ca: Option<std::path::PathBuf>,
    every: Duration,
    mut shutdown: Shutdown,
) {
    loop {
        let wait = match KeySet::fetch(&url, ca.as_deref()).await {
            Ok(set) => {
                tracing::info!(url, keys = set.len(), "key set fetched");
                verifier.set_fetched(set);
                every
            }
            Err(e) => {
                verifier.fetch_failed();
                tracing::warn!(error = %e, "key set not refreshed; the keys held are kept");
                every.min(MIN_REFETCH)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = async {
                verifier.unknown_key.notified().await;
                tokio::time::sleep(MIN_REFETCH.min(wait)).await;
            } => {}
            _ = verifier.refetch.notified() => {}
            _ = shutdown.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_keeps_public_keys_of_the_three_algorithms() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ed.public_key_raw(),
        );
        let jwks = format!(
            r#"{{"keys":[
                {{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"ed"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"enc","use":"enc"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"named","alg":"ES256"}},
                {{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"small"}}
            ]}}"#
        );
        let set = KeySet::parse(jwks.as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{set:?}");
        assert_eq!(set.get("ed").map(|k| k.1), Some(Algorithm::EdDSA));

        let secret = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(matches!(KeySet::parse(secret), Err(KeySetError::Secret(_))));
        let twice = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a"}},{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a"}}]}}"#
        );
        assert!(matches!(
            KeySet::parse(twice.as_bytes()),
            Err(KeySetError::DuplicateKeyId(_))
        ));
        assert!(matches!(
            KeySet::parse(br#"{"keys":[{"kty":"OKP"}]}"#),
            Err(KeySetError::NoKeyId)
        ));
        assert!(matches!(
            KeySet::parse(br#"{"keys":[]}"#),
            Err(KeySetError::Empty)
        ));
        assert!(matches!(KeySet::parse(b"[]"), Err(KeySetError::Json(_))));
    }

    #[test]
    fn url_paths() {
        assert_eq!(
            path_of("https://idp.example/.well-known/jwks.json"),
            "/.well-known/jwks.json"
        );
        assert_eq!(path_of("http://127.0.0.1:9000"), "/");
        assert_eq!(path_of("http://h/k?x=1"), "/k?x=1");
    }
}
