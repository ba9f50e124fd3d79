//! What checking one credential costs the hub, per kind: the deprecated `th1.`
//! token, HS256, ES256, EdDSA and RS256 JWTs (`Verifier::authorize`, as every
//! upgrade runs it), and naming the device of a client certificate
//! (`tls::device::identify`; the certificate's signature is checked by rustls in
//! the handshake, which `device-sim bench reconnect --auth certificate` measures).
//!
//! `cargo bench --bench token_verify` prints one line per kind: the median of 5
//! runs of 20,000 checks, in microseconds per check, on one core.
//!
//! `fixtures/rsa2048.*` is a key made for this benchmark only.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use telehub::{
    auth::{Claims, KeySet, Meters, Policy, Role, TokenKey, Verifier},
    config::DeviceIdField,
};

const RUNS: usize = 5;
const CHECKS: usize = 20_000;

fn main() {
    telehub::auth::crypto::install();
    let dir = std::env::temp_dir().join(format!("telehub-bench-verify-{}", std::process::id()));
    let key = TokenKey::load_or_create(&dir).expect("token key");
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let raw = es.public_key_raw();
    let rsa_jwk: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/rsa2048.jwk.json")).expect("RSA JWK");
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(&raw[1..33]), "y": b64(&raw[33..])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key_raw())},
        rsa_jwk,
    ]});
    let keys = KeySet::parse(jwks.to_string().as_bytes()).expect("key set");
    let policy = Policy {
        leeway: Duration::from_secs(10),
        legacy: true,
        issuer: None,
        audience: None,
    };
    let verifier = Verifier::new(key.clone(), policy, keys, Meters::default());

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"sub": "dev-00042", "role": "device", "iat": now, "exp": now + 3600,
        "jti": "0123456789abcdef0123456789abcdef"});
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).expect("signing")
    };
    let legacy = key.issue_legacy(&Claims {
        sub: "dev-00042".into(),
        role: Role::Device,
        tags: BTreeMap::new(),
        iat: now,
        exp: now + 3600,
        jti: None,
        scope: Default::default(),
    });
    let tokens = [
        ("th1 (deprecated)", legacy),
        (
            "HS256",
            key.issue(
                "dev-00042",
                Role::Device,
                BTreeMap::new(),
                Duration::from_secs(3600),
            ),
        ),
        (
            "ES256",
            sign(
                Algorithm::ES256,
                "es",
                &EncodingKey::from_ec_der(&es.serialize_der()),
            ),
        ),
        (
            "EdDSA",
            sign(
                Algorithm::EdDSA,
                "ed",
                &EncodingKey::from_ed_der(&ed.serialize_der()),
            ),
        ),
        (
            "RS256 (2048)",
            sign(
                Algorithm::RS256,
                "bench-rs256",
                &EncodingKey::from_rsa_der(include_bytes!("fixtures/rsa2048.pk1.der")),
            ),
        ),
    ];
    println!("credential check, µs each (median of {RUNS} runs of {CHECKS})");
    for (name, token) in &tokens {
        let us = median(|| {
            verifier
                .authorize(Some(token), &[Role::Device])
                .expect("accepted");
        });
        println!("{name:<18} {us:>8.2}");
    }
    let t = SystemTime::now();
    let cert = telehub::tls::device::issue(&dir, "dev-00042", t, t + Duration::from_secs(3600))
        .expect("device certificate");
    let der = rustls_pki_types::CertificateDer::from(
        rustls_pki_types::pem::PemObject::from_pem_slice(cert.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'_>| c.to_vec())
            .expect("PEM"),
    );
    let us = median(|| {
        let named = telehub::tls::device::identify(&der, DeviceIdField::Cn).expect("named");
        verifier
            .authorize_certificate(&Ok(named))
            .expect("accepted");
    });
    println!("{:<18} {us:>8.2}", "certificate (name)");
    let _ = std::fs::remove_dir_all(dir);
}

/// The median over [`RUNS`] of the mean time of one `check`, in microseconds.
fn median(mut check: impl FnMut()) -> f64 {
    for _ in 0..CHECKS / 10 {
        check();
    }
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..CHECKS {
                check();
            }
            t0.elapsed().as_secs_f64() * 1e6 / CHECKS as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}
