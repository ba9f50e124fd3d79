//! Revoked tokens as the hub holds them: one token by its `jti`, or every token
//! of a subject issued before an instant. The store keeps them (see
//! `store::Revocation`); each node holds them all in memory, so the check on every
//! upgrade and REST call is two hash lookups.
//!
//! Invariant: a subject revocation covers the tokens issued in the same second as
//! its instant too (`iat` has one-second resolution): a replacement token minted
//! right after a revocation must wait for the next second.

use std::collections::HashMap;

use crate::store::{Revocation, RevocationKind};

use super::Claims;

/// What a live connection keeps of its token to be checked again when
/// revocations change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub sub: String,
    pub jti: Option<String>,
    /// Issued at, seconds since the Unix epoch (0 when the token did not say).
    pub iat: u64,
}

impl From<&Claims> for Credential {
    fn from(c: &Claims) -> Self {
        Credential {
            sub: c.sub.clone(),
            jti: c.jti.clone(),
            iat: c.iat,
        }
    }
}

/// The revocations in force, by what they match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    /// `jti` → until when.
    tokens: HashMap<String, u64>,
    /// Subject → tokens issued before this instant (ms) are covered.
    subjects: HashMap<String, u64>,
}

impl Revoked {
    pub fn new(list: &[Revocation]) -> Self {
        let mut r = Revoked::default();
        for rev in list {
            r.add(rev);
        }
        r
    }

    /// Adds one (widening what the same kind and value covered).
    pub fn add(&mut self, rev: &Revocation) {
        match rev.kind {
            RevocationKind::Token => {
                let e = self.tokens.entry(rev.value.clone()).or_insert(0);
                *e = (*e).max(rev.expires_ms);
            }
            RevocationKind::Subject => {
                let e = self.subjects.entry(rev.value.clone()).or_insert(0);
                *e = (*e).max(rev.issued_before_ms);
            }
        }
    }

    pub fn covers(&self, c: &Credential) -> bool {
        if c.jti.as_ref().is_some_and(|j| self.tokens.contains_key(j)) {
            return true;
        }
        // Whole seconds: a token of the revocation's own second is covered.
        self.subjects
            .get(&c.sub)
            .is_some_and(|before_ms| c.iat <= before_ms / 1000)
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: RevocationKind, value: &str, before_ms: u64) -> Revocation {
        Revocation {
            kind,
            value: value.into(),
            issued_before_ms: before_ms,
            expires_ms: 10_000_000,
            created_ms: before_ms,
            created_by: "ops".into(),
        }
    }

    fn cred(sub: &str, jti: Option<&str>, iat: u64) -> Credential {
        Credential {
            sub: sub.into(),
            jti: jti.map(Into::into),
            iat,
        }
    }

    #[test]
    fn tokens_by_jti_and_subjects_by_issue_time() {
        let r = Revoked::new(&[
            rev(RevocationKind::Token, "j1", 0),
            rev(RevocationKind::Subject, "dev-1", 5_500),
        ]);
        assert!(r.covers(&cred("anyone", Some("j1"), 99)));
        assert!(!r.covers(&cred("anyone", Some("j2"), 99)));
        assert!(!r.covers(&cred("anyone", None, 0)));
        assert!(r.covers(&cred("dev-1", None, 4)));
        assert!(r.covers(&cred("dev-1", Some("j9"), 5)), "same second");
        assert!(!r.covers(&cred("dev-1", None, 6)), "issued after");
        assert!(!r.covers(&cred("dev-2", None, 1)));
        // Revoking again widens.
        let mut r = r;
        r.add(&rev(RevocationKind::Subject, "dev-1", 9_000));
        assert!(r.covers(&cred("dev-1", None, 9)));
        r.add(&rev(RevocationKind::Subject, "dev-1", 1_000));
        assert!(r.covers(&cred("dev-1", None, 9)), "never narrowed");
        assert_eq!(r.len(), 2);
    }
}
