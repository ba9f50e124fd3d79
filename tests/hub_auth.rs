//! Who may connect: every refusal happens before the upgrade with a status the
//! client sees (401 unknown caller, 403 known but not allowed), and the token
//! sources browsers need (subprotocol entry, cookie) work on the dashboard.

mod common;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::*;
use hmac::{Hmac, Mac};
use telehub::{
    auth::{Claims, Role, TokenKey},
    ws::{self, client::ClientConfig},
};

fn status(r: Result<Client, ws::Error>) -> u16 {
    match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(ws::Error::HttpStatus(code)) => code,
        Err(e) => panic!("expected an HTTP status, got {e}"),
    }
}

fn with_headers(protocols: &[&str], headers: &[(&str, String)]) -> ClientConfig {
    ClientConfig {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..client_config(None, protocols)
    }
}

/// A correctly signed token of the deprecated format, whose expiry is in the
/// past (signed here, independently of the hub's code).
fn expired_legacy_token(hub: &Hub) -> String {
    let claims = serde_json::json!({
        "sub": "dev-1", "role": "device", "iat": 1_000_000_000u64, "exp": 1_000_000_060u64,
    });
    let signed = format!(
        "th1.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret(&hub.data_dir)).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
async fn refusals_before_the_upgrade() {
    let hub = Hub::start().await;
    let device_cfg = |token: &str| client_config(Some(token), &[PROTOCOL]);

    // Missing token.
    assert_eq!(
        status(
            hub.connect("/v1/device", &client_config(None, &[PROTOCOL]))
                .await
        ),
        401
    );
    // Malformed tokens.
    for bad in ["garbage", "th1.x.y", "th1..", "a.b.c.d"] {
        assert_eq!(
            status(hub.connect("/v1/device", &device_cfg(bad)).await),
            401,
            "{bad}"
        );
    }
    // Not a bearer scheme.
    let token = hub.token("dev-1", Role::Device, &[]);
    assert_eq!(
        status(
            hub.connect(
                "/v1/device",
                &with_headers(&[PROTOCOL], &[("Authorization", format!("Basic {token}"))])
            )
            .await
        ),
        401
    );
    // Signed by another hub's key.
    let other_dir = temp_dir("other-key");
    let other = TokenKey::load_or_create(&other_dir).unwrap().issue(
        "dev-1",
        Role::Device,
        Default::default(),
        std::time::Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&other_dir);
    assert_eq!(
        status(hub.connect("/v1/device", &device_cfg(&other)).await),
        401
    );
    // Expired (correctly signed), as a JWT and in the deprecated format.
    let expired = hub.key.sign(&Claims {
        sub: "dev-1".into(),
        role: Role::Device,
        tags: Default::default(),
        iat: 1_000_000_000,
        exp: 1_000_000_060,
        jti: None,
        scope: Default::default(),
    });
    for token in [expired, expired_legacy_token(&hub)] {
        assert_eq!(
            status(hub.connect("/v1/device", &device_cfg(&token)).await),
            401
        );
    }
    // Wrong roles.
    for (path, role) in [
        ("/v1/device", Role::Viewer),
        ("/v1/device", Role::Operator),
        ("/v1/dashboard", Role::Device),
    ] {
        let t = hub.token("someone", role, &[]);
        assert_eq!(
            status(hub.connect(path, &device_cfg(&t)).await),
            403,
            "{role} on {path}"
        );
    }
    // Every refusal was counted, and nothing got through.
    let m = hub.scrape().await;
    assert!(
        m.get("telehub_connections_refused_total{reason=\"unauthorized\"}") >= 8.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get("telehub_connections_refused_total{reason=\"forbidden\"}"),
        3.0
    );
    assert_eq!(
        m.get("telehub_connections_accepted_total{role=\"device\"}"),
        0.0
    );
    // By reason, too.
    for (reason, n) in [
        ("missing", 2.0), // none, and a Basic scheme
        ("malformed", 3.0),
        ("signature", 2.0), // another hub's, and "th1.." (empty)
        ("expired", 2.0),
        ("role", 3.0),
    ] {
        let series = format!("telehub_tokens_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(m.get(&series), n, "{series}\n{}", m.text);
    }

    // And the right token still works.
    hub.device("dev-1").await;
}

#[tokio::test]
async fn browser_token_sources_and_origin_policy_on_the_dashboard() {
    let hub = Hub::with(|c| {
        c.dashboard.allowed_origins = vec!["https://ops.example.com".into()];
    })
    .await;
    let viewer = hub.token("alice", Role::Viewer, &[]);
    let operator = hub.token("olga", Role::Operator, &[]);

    // `Sec-WebSocket-Protocol: telehub.v1, bearer.<token>`: the hub picks telehub.v1.
    let bearer = format!("bearer.{viewer}");
    let mut d = hub
        .connect("/v1/dashboard", &client_config(None, &[PROTOCOL, &bearer]))
        .await
        .expect("token in the subprotocol list");
    assert_eq!(d.handshake.protocol.as_deref(), Some(PROTOCOL));
    assert_eq!(d.expect_welcome().await.subject, "alice");

    // Cookie.
    let mut d = hub
        .connect(
            "/v1/dashboard",
            &with_headers(
                &[PROTOCOL],
                &[("Cookie", format!("theme=dark; telehub_token={operator}"))],
            ),
        )
        .await
        .expect("token in a cookie");
    let w = d.expect_welcome().await;
    assert_eq!((w.subject.as_str(), w.role.as_str()), ("olga", "operator"));

    // Origins: same-origin, localhost and the allow-list pass; others are 403.
    let auth = ("Authorization", format!("Bearer {viewer}"));
    for ok in [
        format!("https://{}", hub.host()),
        "http://localhost:3000".to_string(),
        "https://ops.example.com".to_string(),
    ] {
        let cfg = with_headers(&[PROTOCOL], &[auth.clone(), ("Origin", ok.clone())]);
        hub.dashboard_with(&cfg).await;
    }
    for bad in [
        "https://evil.example",
        "null",
        "https://ops.example.com.evil.io",
    ] {
        let cfg = with_headers(&[PROTOCOL], &[auth.clone(), ("Origin", bad.to_string())]);
        assert_eq!(
            status(hub.connect("/v1/dashboard", &cfg).await),
            403,
            "{bad}"
        );
    }
    assert_eq!(
        hub.scrape()
            .await
            .get("telehub_connections_refused_total{reason=\"origin\"}"),
        3.0
    );
}

#[tokio::test]
async fn a_token_that_expires_is_refused() {
    // No clock-skew leeway, so expiry is exact.
    let hub = Hub::with(|c| c.auth.leeway = std::time::Duration::ZERO).await;
    // Two seconds: expiry has one-second resolution, so a one-second token
    // issued late in a second may be expired before a busy machine connects.
    let token = hub.key.issue(
        "dev-1",
        Role::Device,
        Default::default(),
        std::time::Duration::from_secs(2),
    );
    let cfg = client_config(Some(&token), &[PROTOCOL]);
    let mut first = hub.connect("/v1/device", &cfg).await.expect("still valid");
    first.expect_welcome().await;
    // Expiry has one-second resolution: wait until it has certainly passed.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match hub.connect("/v1/device", &cfg).await {
            Err(ws::Error::HttpStatus(401)) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "token never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unsupported_subprotocol_is_refused() {
    let hub = Hub::start().await;
    let t = hub.token("dev-1", Role::Device, &[]);
    assert_eq!(
        status(
            hub.connect("/v1/device", &client_config(Some(&t), &["mqtt"]))
                .await
        ),
        400
    );
    // JSON is for dashboards only.
    assert_eq!(
        status(
            hub.connect("/v1/device", &client_config(Some(&t), &[PROTOCOL_JSON]))
                .await
        ),
        400
    );
}
