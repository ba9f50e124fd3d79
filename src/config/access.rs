//! `[auth]` and `[tls]`: who may connect: which tokens are accepted besides the
//! hub's own, and devices with client certificates (see `auth` and `tls`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

/// `[auth]`: which tokens are accepted besides the hub's own (see `auth`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Clock skew tolerated on a token's `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Accept the deprecated `th1.` tokens of earlier releases.
    pub legacy_tokens: bool,
    /// A JWKS file of public keys (RS256, ES256, EdDSA) whose tokens are accepted.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (an identity provider's), fetched at start and refreshed.
    pub jwks_url: Option<String>,
    /// For an `https://` `jwks_url`: the CA (PEM) its certificate chains to;
    /// default: the system's trusted roots.
    pub jwks_ca: Option<PathBuf>,
    /// How often `jwks_url` is fetched again (sooner when a token names an
    /// unknown key, at most once per 10 s).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The `iss` tokens of the key set must carry.
    pub issuer: Option<String>,
    /// The `aud` tokens of the key set must include.
    pub audience: Option<String>,
    /// The longest lifetime tokens are given: a revocation that cannot tell when
    /// the tokens it covers expire is kept this long.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(10),
            legacy_tokens: true,
            jwks_file: None,
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            max_token_lifetime: Duration::from_secs(365 * 86_400),
        }
    }
}

/// `[tls]`: devices authenticating with a client certificate (see `tls::server`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// The CA (PEM) device certificates chain to; set, devices may present a
    /// certificate instead of a token. Dashboards and REST never need one.
    pub device_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of the device CA.
    pub device_crl: Vec<PathBuf>,
    /// Where a certificate carries the device id.
    pub device_id: DeviceIdField,
    /// Tags of certificate-authenticated devices (over those of the registry).
    pub device_tags: BTreeMap<String, String>,
}

/// The field of a device certificate that names the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceIdField {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name of the subject alternative names.
    SanDns,
    /// The first URI of the subject alternative names (`urn:telehub:device:` is
    /// taken off if it starts with it).
    SanUri,
}
