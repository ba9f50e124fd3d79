//! Standard JWTs from other issuers: public keys from a JWKS file or URL, chosen by
//! `kid`; every forgery an attacker would try is refused with 401 and counted by
//! its reason; a backend minting tokens with PyJWT is accepted.

mod common;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use telehub::{auth::TokenKey, ws};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "telehub";

/// A key of another issuer: it signs tokens; its public half goes in a key set.
struct Issuer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Issuer {
    fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // Uncompressed point: 0x04, x, y.
        let raw = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        });
        Issuer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk,
        }
    }

    fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        });
        Issuer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk,
        }
    }

    /// A token with these claims, signed by this key and naming it.
    fn sign(&self, claims: &Value) -> String {
        telehub::auth::crypto::install();
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn key_set(issuers: &[&Issuer]) -> String {
    json!({ "keys": issuers.iter().map(|i| i.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims of a device of the identity provider.
fn device(sub: &str) -> Value {
    json!({
        "sub": sub, "role": "device", "iat": now(), "exp": now() + 600,
        "iss": ISSUER, "aud": AUDIENCE, "jti": format!("{sub}-1"),
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// The status of an upgrade to `/v1/device` with this token (101 when accepted).
async fn upgrade(hub: &Hub, token: &str) -> u16 {
    match hub
        .connect("/v1/device", &client_config(Some(token), &[PROTOCOL]))
        .await
    {
        Ok(mut c) => {
            c.expect_welcome().await;
            101
        }
        Err(ws::Error::HttpStatus(code)) => code,
        Err(e) => panic!("expected an HTTP status, got {e}"),
    }
}

fn refused(m: &Metrics, reason: &str) -> f64 {
    m.get(&format!(
        "telehub_tokens_refused_total{{reason=\"{reason}\"}}"
    ))
}

async fn hub_with_key_set(jwks: &Path) -> Hub {
    let jwks = jwks.to_path_buf();
    Hub::with(move |c| {
        c.auth.jwks_file = Some(jwks);
        c.auth.issuer = Some(ISSUER.into());
        c.auth.audience = Some(AUDIENCE.into());
    })
    .await
}

#[tokio::test]
async fn key_set_tokens_are_accepted_and_every_forgery_is_refused() {
    let es = Issuer::es256("es-1");
    let ed = Issuer::ed25519("ed-1");
    let dir = temp_dir("jwks");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, key_set(&[&es, &ed])).unwrap();
    let hub = hub_with_key_set(&jwks).await;
    assert_eq!(hub.scrape().await.get("telehub_auth_keys_file"), 2.0);

    // Accepted: both algorithms, as a device, a dashboard and on REST.
    assert_eq!(upgrade(&hub, &es.sign(&device("dev-es"))).await, 101);
    assert_eq!(upgrade(&hub, &ed.sign(&device("dev-ed"))).await, 101);
    let viewer = ed.sign(&with(device("ann"), "role", json!("viewer")));
    let mut d = hub
        .dashboard_with(&client_config(Some(&viewer), &[PROTOCOL]))
        .await;
    d.subscribe(&["env.*"]).await;
    let operator = es.sign(&with(device("ops"), "role", json!("operator")));
    let (status, _, body) = hub
        .request("GET", "/v1/notifications", Some(&operator), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // An audience list that includes ours is accepted.
    let listed = with(device("dev-aud"), "aud", json!(["other", AUDIENCE]));
    assert_eq!(upgrade(&hub, &es.sign(&listed)).await, 101);
    // The hub's own HS256 tokens need neither issuer nor audience.
    assert_eq!(
        upgrade(
            &hub,
            &hub.token("dev-own", telehub::auth::Role::Device, &[])
        )
        .await,
        101
    );

    // Refused, each for its reason.
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let payload = b64(&with(device("evil"), "role", json!("operator")));
    let unsigned = format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    // Algorithm confusion: HS256 "signed" with the ES256 key's public JWK.
    let confused = {
        telehub::auth::crypto::install();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("es-1".into());
        let secret = EncodingKey::from_secret(es.jwk.to_string().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &device("evil"), &secret).unwrap()
    };
    // The right kid, the wrong algorithm for that key.
    let mismatched = {
        let other = Issuer::es256("ed-1");
        other.sign(&device("evil"))
    };
    let impostor = Issuer::es256("es-1").sign(&device("evil"));
    let unknown = Issuer::es256("nobody").sign(&device("evil"));
    let big = es.sign(&with(device("big"), "pad", json!("x".repeat(5000))));
    let cases: Vec<(&str, String)> = vec![
        ("algorithm", unsigned),
        ("signature", confused),
        ("algorithm", mismatched),
        ("signature", impostor),
        ("unknown_key", unknown),
        (
            "audience",
            es.sign(&with(device("d"), "aud", json!("someone-else"))),
        ),
        (
            "audience",
            es.sign(&{
                let mut c = device("d");
                c.as_object_mut().unwrap().remove("aud");
                c
            }),
        ),
        (
            "issuer",
            es.sign(&with(device("d"), "iss", json!("https://evil.example"))),
        ),
        (
            "not_yet_valid",
            es.sign(&with(device("d"), "nbf", json!(now() + 3600))),
        ),
        (
            "expired",
            es.sign(&with(device("d"), "exp", json!(now() - 3600))),
        ),
        (
            "malformed",
            es.sign(&with(device("d"), "exp", json!("never"))),
        ),
        ("too_long", big),
    ];
    for (reason, token) in &cases {
        let before = refused(&hub.scrape().await, reason);
        assert_eq!(upgrade(&hub, token).await, 401, "{reason}");
        let after = refused(&hub.scrape().await, reason);
        assert_eq!(after, before + 1.0, "counted as {reason}");
    }
    // On REST too.
    let (status, _, body) = hub
        .request("GET", "/v1/notifications", Some(&cases[1].1), None)
        .await;
    assert_eq!(status, 401, "{body}");
    // Nothing got through as anyone else.
    let m = hub.scrape().await;
    assert_eq!(
        m.get("telehub_connections_accepted_total{role=\"device\"}"),
        4.0
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_key_set_file_stops_the_start_with_its_reason() {
    let dir = temp_dir("bad-jwks");
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#,
    )
    .unwrap();
    let mut config = telehub::config::Config {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.join("data"),
        certs_dir: dir.join("certs"),
        ..Default::default()
    };
    config.auth.jwks_file = Some(jwks);
    let e = match telehub::server::Server::bind(config).await {
        Ok(_) => panic!("the hub started with a shared secret in its key set"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("jwks.json") && e.contains("shared secret"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A key server on 127.0.0.1 serving whatever `jwks` holds, until dropped.
struct KeyServer {
    url: String,
    jwks: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(jwks: String) -> Self {
        let jwks = Arc::new(Mutex::new(jwks));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let served = jwks.clone();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let body = served.lock().unwrap().clone();
                async move { body }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyServer { url, jwks, task }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_key_set_url_is_fetched_and_follows_key_rotation() {
    let first = Issuer::es256("2026-a");
    let second = Issuer::ed25519("2026-b");
    let server = KeyServer::start(key_set(&[&first])).await;
    let url = server.url.clone();
    let hub = Hub::with(move |c| {
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh = Duration::from_secs(3600);
    })
    .await;
    hub.wait_metrics("the key set to be fetched", |m| {
        m.get("telehub_auth_keys_url") == 1.0
    })
    .await;
    // This hub asks for no issuer or audience.
    let claims = |sub: &str| json!({"sub": sub, "role": "device", "exp": now() + 600});
    assert_eq!(upgrade(&hub, &first.sign(&claims("dev-a"))).await, 101);

    // The provider rotates: a token of the new key is refused once (unknown kid),
    // which makes the hub fetch again, within 10 s, and then it is accepted.
    *server.jwks.lock().unwrap() = key_set(&[&second]);
    let rotated = second.sign(&claims("dev-b"));
    assert_eq!(upgrade(&hub, &rotated).await, 401);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while upgrade(&hub, &rotated).await != 101 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never arrived"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The retired key is gone.
    assert_eq!(upgrade(&hub, &first.sign(&claims("dev-a"))).await, 401);

    // The key server goes away: a fetch fails, and the keys held are kept.
    drop(server);
    assert_eq!(
        upgrade(&hub, &Issuer::es256("2027").sign(&claims("x"))).await,
        401
    );
    // The unknown kid asks for a fetch, at most one per 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while hub
        .scrape()
        .await
        .get("telehub_auth_key_fetch_errors_total")
        < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no fetch failed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(upgrade(&hub, &second.sign(&claims("dev-c"))).await, 101);
    assert_eq!(hub.scrape().await.get("telehub_auth_keys_url"), 1.0);
}

#[tokio::test]
async fn tokens_minted_with_pyjwt_are_accepted() {
    let dir = temp_dir("pyjwt");
    let data_dir = dir.join("data");
    TokenKey::load_or_create(&data_dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pyjwt_tokens.py");
    let secret = data_dir.join(telehub::auth::SECRET_FILE);
    let out_dir = dir.clone();
    // Bounded by the script itself: it makes three keys and four tokens.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(interop_python())
            .arg(script)
            .arg(secret)
            .arg(out_dir)
            .args([ISSUER, AUDIENCE])
            .output()
    })
    .await
    .unwrap()
    .expect("running PyJWT");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jwks = dir.join("jwks.json");
    let hub = Hub::with(move |c| {
        c.data_dir = data_dir;
        c.auth.jwks_file = Some(jwks);
        c.auth.issuer = Some(ISSUER.into());
        c.auth.audience = Some(AUDIENCE.into());
    })
    .await;
    for alg in ["HS256", "RS256", "ES256", "EdDSA"] {
        let token = tokens[alg].as_str().unwrap();
        assert_eq!(upgrade(&hub, token).await, 101, "{alg}");
    }
    let m = hub.scrape().await;
    assert_eq!(
        m.get("telehub_connections_accepted_total{role=\"device\"}"),
        4.0
    );
    let _ = std::fs::remove_dir_all(dir);
}
