//! [`Verifier`]: the one check every upgrade and REST request passes.
//!
//! The rules, in the order they apply:
//! 1. A token longer than [`MAX_TOKEN_LEN`] is refused unread.
//! 2. `th1.…` is a deprecated token, checked with the hub's secret (refused when
//!    `auth.legacy_tokens = false`).
//! 3. Otherwise it is a JWT, and its header alone picks the key, never the key the
//!    algorithm: `HS256` is verified with the hub's secret only; `RS256`, `ES256`
//!    and `EdDSA` only with the key set's key named by `kid`, and only when that
//!    key is for that algorithm. So an HS256 token "signed" with a public key (the
//!    algorithm-confusion attack) meets the hub's secret and fails, and `alg:
//!    none` or any other algorithm is refused. A header with `crit` is refused
//!    (no extension is understood).
//! 4. The signature is checked before the claims are parsed. Then `exp` (required)
//!    and `nbf` (when present), each with `auth.leeway` of clock skew; for tokens of
//!    the key set, `iss` and `aud` when configured. A token signed with the hub's
//!    own secret can only come from whoever holds that secret, so issuer and
//!    audience are not asked of it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use serde::Deserialize;

use super::{
    key::LEGACY_PREFIX, unix_now, AuthError, Claims, Credential, KeySet, Payload, Revoked, Role,
    TokenKey, MAX_TOKEN_LEN,
};
use crate::{metrics::ReasonLabel, store::Revocation};

/// What tokens are accepted beyond a valid signature.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Whether deprecated `th1.` tokens are still accepted.
    pub legacy: bool,
    /// The `iss` key-set tokens must carry, if any.
    pub issuer: Option<String>,
    /// The `aud` key-set tokens must include, if any.
    pub audience: Option<String>,
}

/// How refusals are counted and logged.
#[derive(Clone, Default)]
pub struct Meters {
    /// Refusals by [`AuthError::reason`].
    pub refused: Family<ReasonLabel, Counter>,
    /// Keys held, from the file and from the URL.
    pub keys_file: Gauge,
    pub keys_url: Gauge,
    /// Fetches of the key set URL that failed (the keys held were kept).
    pub fetch_errors: Counter,
    /// Revocations in force.
    pub revocations: Gauge,
}

/// Checks tokens against the hub's secret and the key set.
pub struct Verifier {
    key: TokenKey,
    hs256: DecodingKey,
    policy: Policy,
    /// Validation of HS256 tokens, and of each key-set algorithm.
    own: Validation,
    others: [(Algorithm, Validation); 3],
    file: RwLock<Arc<KeySet>>,
    fetched: RwLock<Arc<KeySet>>,
    /// Woken by a token naming a key the set lacks (the URL may have rotated).
    pub(super) unknown_key: tokio::sync::Notify,
    /// Woken by a reload: fetch at once.
    pub(super) refetch: tokio::sync::Notify,
    revoked: RwLock<Arc<Revoked>>,
    /// Bumped whenever `revoked` changes: live sessions check themselves again.
    generation: tokio::sync::watch::Sender<u64>,
    meters: Meters,
    log: RefusalLog,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The part of a JWT header read before anything is verified.
#[derive(Deserialize)]
struct Head {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier of the hub's own tokens and of `file`'s keys (more may come from
    /// a URL, see [`set_fetched`](Self::set_fetched)).
    pub fn new(key: TokenKey, policy: Policy, file: KeySet, meters: Meters) -> Self {
        super::crypto::install();
        for reason in AuthError::REASONS {
            let _ = meters.refused.get_or_create(&ReasonLabel { reason });
        }
        meters.keys_file.set(file.len() as i64);
        let validation = |alg, issuer: Option<&String>, audience: Option<&String>| {
            let mut v = Validation::new(alg);
            v.leeway = policy.leeway.as_secs();
            v.validate_nbf = true;
            // Configured, a claim is required: a token without it is refused.
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            match audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            v
        };
        let (iss, aud) = (policy.issuer.as_ref(), policy.audience.as_ref());
        Verifier {
            hs256: key.decoding(),
            key,
            own: validation(Algorithm::HS256, None, None),
            others: [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
                .map(|alg| (alg, validation(alg, iss, aud))),
            policy,
            file: RwLock::new(Arc::new(file)),
            fetched: RwLock::new(Arc::new(KeySet::default())),
            unknown_key: tokio::sync::Notify::new(),
            refetch: tokio::sync::Notify::new(),
            revoked: RwLock::new(Arc::new(Revoked::default())),
            generation: tokio::sync::watch::Sender::new(0),
            meters,
            log: RefusalLog::default(),
        }
    }

    /// The hub's own secret (to mint tokens).
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// Replaces the keys read from the file.
    pub fn set_file_keys(&self, set: KeySet) {
        self.meters.keys_file.set(set.len() as i64);
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Asks the URL's task to fetch the key set again now.
    pub fn refetch(&self) {
        self.refetch.notify_one();
    }

    /// Replaces the keys fetched from the URL.
    pub fn set_fetched(&self, set: KeySet) {
        self.meters.keys_url.set(set.len() as i64);
        *self.fetched.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Replaces the revocations in force (all of them, as the store lists them);
    /// live connections are woken only when that changes something.
    pub fn set_revocations(&self, list: &[Revocation]) {
        let new = Revoked::new(list);
        if **self.revoked.read().unwrap_or_else(|p| p.into_inner()) != new {
            self.replace_revoked(new);
        }
    }

    /// Adds one revocation (just committed by this node).
    pub fn revoke(&self, rev: &Revocation) {
        let mut now = (**self.revoked.read().unwrap_or_else(|p| p.into_inner())).clone();
        now.add(rev);
        self.replace_revoked(now);
    }

    fn replace_revoked(&self, revoked: Revoked) {
        self.meters.revocations.set(revoked.len() as i64);
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Whether a revocation in force covers this token.
    pub fn is_revoked(&self, credential: &Credential) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .covers(credential)
    }

    /// Changes whenever the revocations do: a live connection awaits it and then
    /// checks its own token with [`is_revoked`](Self::is_revoked).
    pub fn revocations_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Counts a failed fetch of the key set URL.
    pub(super) fn fetch_failed(&self) {
        self.meters.fetch_errors.inc();
    }

    /// [`verify`](Self::verify) plus a role check; a refusal is counted and logged.
    pub fn authorize(&self, token: Option<&str>, allowed: &[Role]) -> Result<Claims, AuthError> {
        let checked = token.ok_or(AuthError::Missing).and_then(|t| {
            let claims = self.verify(t)?;
            if self.is_revoked(&Credential::from(&claims)) {
                return Err(AuthError::Revoked);
            }
            if !allowed.contains(&claims.role) {
                return Err(AuthError::WrongRole { got: claims.role });
            }
            Ok(claims)
        });
        if let Err(e) = &checked {
            self.refused(e);
        }
        checked
    }

    /// A device authenticated by a verified client certificate: `named` is the
    /// device it names (or why it names none). Counted and logged as tokens are;
    /// a subject revocation covers certificates issued (`notBefore`) before it.
    pub fn authorize_certificate(
        &self,
        named: &Result<crate::tls::device::DeviceCert, String>,
    ) -> Result<Claims, AuthError> {
        let checked = match named {
            Err(why) => Err(AuthError::Certificate(why.clone())),
            Ok(cert) => {
                let claims = Claims {
                    sub: cert.id.clone(),
                    role: Role::Device,
                    tags: Default::default(),
                    iat: cert.not_before,
                    exp: u64::MAX,
                    jti: None,
                    scope: Default::default(),
                };
                match self.is_revoked(&Credential::from(&claims)) {
                    true => Err(AuthError::Revoked),
                    false => Ok(claims),
                }
            }
        };
        if let Err(e) = &checked {
            self.refused(e);
        }
        checked
    }

    fn refused(&self, e: &AuthError) {
        let reason = e.reason();
        self.meters
            .refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        // A flood of bad tokens must not become a flood of log lines.
        match self.log.admit() {
            Admit::Yes { skipped: 0 } => tracing::info!(reason, detail = %e, "token refused"),
            Admit::Yes { skipped } => {
                tracing::info!(reason, detail = %e, skipped, "token refused (and {skipped} more not logged)")
            }
            Admit::No => {}
        }
    }

    /// Checks signature, algorithm, key and times; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        if token.starts_with(LEGACY_PREFIX) {
            if !self.policy.legacy {
                return Err(AuthError::LegacyDisabled);
            }
            return self.key.verify_legacy(token);
        }
        let head = token.split('.').next().unwrap_or_default();
        let head: Head = URL_SAFE_NO_PAD
            .decode(head)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(AuthError::Malformed)?;
        if head.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let payload = if head.alg == "HS256" {
            decode(token, &self.hs256, &self.own)?
        } else {
            let Some((alg, validation)) = self
                .others
                .iter()
                .find(|(alg, _)| alg_name(*alg) == head.alg)
            else {
                return Err(AuthError::Algorithm(printable(&head.alg)));
            };
            let kid = head.kid.as_deref().ok_or(AuthError::UnknownKey)?;
            let sets = [&self.file, &self.fetched]
                .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).clone());
            let Some((key, key_alg)) = sets.iter().find_map(|s| s.get(kid)) else {
                self.unknown_key.notify_one();
                return Err(AuthError::UnknownKey);
            };
            if key_alg != alg {
                return Err(AuthError::Algorithm(format!(
                    "{} (key {} is for {})",
                    head.alg,
                    printable(kid),
                    alg_name(*key_alg)
                )));
            }
            decode(token, key, validation)?
        };
        payload.try_into()
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Payload, AuthError> {
    jsonwebtoken::decode::<Payload>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
            _ => AuthError::Malformed,
        })
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => "other",
    }
}

/// A peer's string, made safe to echo in an answer or a log line.
fn printable(s: &str) -> String {
    let cut: String = s.chars().take(32).collect();
    format!("{cut:?}")
}

/// At most [`LOG_PER_SECOND`] refusal lines a second; the next line says how many
/// were skipped.
#[derive(Default)]
struct RefusalLog {
    /// The current second (high 32 bits) and lines logged in it (low 32).
    window: AtomicU64,
    skipped: AtomicU64,
}

const LOG_PER_SECOND: u64 = 10;

enum Admit {
    Yes { skipped: u64 },
    No,
}

impl RefusalLog {
    fn admit(&self) -> Admit {
        let now = unix_now() & 0xffff_ffff;
        let prev = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let (second, n) = (w >> 32, w & 0xffff_ffff);
                Some(if second == now {
                    (second << 32) | (n + 1).min(0xffff_ffff)
                } else {
                    (now << 32) | 1
                })
            })
            .unwrap_or(0);
        let n = if prev >> 32 == now {
            (prev & 0xffff_ffff) + 1
        } else {
            1
        };
        if n > LOG_PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Admit::No;
        }
        Admit::Yes {
            skipped: self.skipped.swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn policy() -> Policy {
        Policy {
            leeway: Duration::from_secs(5),
            legacy: true,
            issuer: Some("https://idp.example".into()),
            audience: Some("telehub".into()),
        }
    }

    fn verifier(policy: Policy) -> Verifier {
        Verifier::new(
            TokenKey::from_secret([7; 32]),
            policy,
            KeySet::default(),
            Meters::default(),
        )
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "dev-1".into(),
            role: Role::Device,
            tags: BTreeMap::from([("fleet".into(), "north".into())]),
            iat: unix_now(),
            exp,
            jti: Some("j1".into()),
            scope: Default::default(),
        }
    }

    #[test]
    fn the_hubs_own_tokens_round_trip_and_refusals() {
        let v = verifier(policy());
        let t = v.key().issue(
            "dev-1",
            Role::Device,
            BTreeMap::new(),
            Duration::from_secs(60),
        );
        let c = v.authorize(Some(&t), &[Role::Device]).unwrap();
        assert_eq!((c.sub.as_str(), c.role), ("dev-1", Role::Device));
        assert_eq!(c.jti.as_deref().map(str::len), Some(32));
        assert_eq!(
            v.authorize(Some(&t), &[Role::Viewer]),
            Err(AuthError::WrongRole { got: Role::Device })
        );
        assert_eq!(v.authorize(None, &[Role::Device]), Err(AuthError::Missing));
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(v.verify(&"a".repeat(5000)), Err(AuthError::TooLong));
        let other = verifier(policy());
        let other = Verifier::new(
            TokenKey::from_secret([8; 32]),
            other.policy.clone(),
            KeySet::default(),
            Meters::default(),
        );
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
        // Past the leeway: expired; within it: still accepted.
        let old = v.key().sign(&claims(unix_now() - 10));
        assert_eq!(v.verify(&old), Err(AuthError::Expired));
        let late = v.key().sign(&claims(unix_now() - 2));
        assert!(v.verify(&late).is_ok());
        // Neither issuer nor audience is asked of the hub's own tokens.
        assert_eq!(
            v.verify(&v.key().sign(&claims(unix_now() + 60)))
                .unwrap()
                .tags["fleet"],
            "north"
        );
    }

    #[test]
    fn algorithms_other_than_the_four_are_refused() {
        let v = verifier(policy());
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let body = b64(r#"{"sub":"x","role":"operator","exp":99999999999}"#);
        let none = format!("{}.{body}.", b64(r#"{"alg":"none"}"#));
        assert_eq!(
            v.verify(&none),
            Err(AuthError::Algorithm("\"none\"".into()))
        );
        let hs384 = format!("{}.{body}.c2ln", b64(r#"{"alg":"HS384"}"#));
        assert!(matches!(v.verify(&hs384), Err(AuthError::Algorithm(_))));
        let no_kid = format!("{}.{body}.c2ln", b64(r#"{"alg":"ES256"}"#));
        assert_eq!(v.verify(&no_kid), Err(AuthError::UnknownKey));
        let crit = format!("{}.{body}.c2ln", b64(r#"{"alg":"HS256","crit":["x"]}"#));
        assert_eq!(v.verify(&crit), Err(AuthError::Malformed));
    }

    #[test]
    fn legacy_tokens_until_switched_off() {
        let v = verifier(policy());
        let t = v.key().issue_legacy(&claims(unix_now() + 60));
        assert!(t.starts_with("th1."));
        assert_eq!(v.verify(&t).unwrap().sub, "dev-1");
        assert_eq!(
            v.verify(&v.key().issue_legacy(&claims(unix_now() - 1))),
            Err(AuthError::Expired)
        );
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"x","role":"operator","iat":0,"exp":99999999999}"#);
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join(".")), Err(AuthError::BadSignature));
        let off = verifier(Policy {
            legacy: false,
            ..policy()
        });
        assert_eq!(off.verify(&t), Err(AuthError::LegacyDisabled));
    }

    #[test]
    fn refusal_lines_are_bounded() {
        let log = RefusalLog::default();
        let admitted = (0..100)
            .filter(|_| matches!(log.admit(), Admit::Yes { .. }))
            .count();
        // Two windows at most in a fast loop.
        assert!(admitted as u64 <= 2 * LOG_PER_SECOND, "{admitted}");
    }
}
