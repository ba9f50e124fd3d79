//! Revoking tokens without a restart: one token by its `jti` (or given whole), or
//! every token of a subject issued before now. Live connections it covers close
//! with 4003 at once, the next upgrade is refused with 401, nothing else is
//! touched, and the revocation survives a restart. On both stores.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use telehub::{
    auth::{Claims, Role},
    http::revocations::RevokeBody,
    ws,
};

fn refused(m: &Metrics) -> f64 {
    m.get("telehub_tokens_refused_total{reason=\"revoked\"}")
}

async fn status_of(hub: &Hub, path: &str, token: &str) -> u16 {
    match hub
        .connect(path, &client_config(Some(token), &[PROTOCOL]))
        .await
    {
        Ok(_) => 101,
        Err(ws::Error::HttpStatus(code)) => code,
        Err(e) => panic!("expected an HTTP status, got {e}"),
    }
}

async fn a_revoked_token_is_closed_live_refused_next_and_kept_across_a_restart() {
    let dir = Dir::new("revoke");
    let on_dirs = dir.hub_dirs();
    let hub = Hub::with(on_dirs).await;
    let api = hub.api(Role::Operator);
    let leaked = hub.token("dev-1", Role::Device, &[]);
    let mut dev1 = hub
        .connect("/v1/device", &client_config(Some(&leaked), &[PROTOCOL]))
        .await
        .unwrap();
    dev1.expect_welcome().await;
    let mut dev2 = hub.device("dev-2").await;
    let ann = hub.token("ann", Role::Viewer, &[]);
    let mut viewer = hub
        .dashboard_with(&client_config(Some(&ann), &[PROTOCOL]))
        .await;

    // One token, given whole: its connection closes within a second, with 4003.
    let started = Instant::now();
    let r = api
        .revoke(&RevokeBody {
            token: Some(leaked.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.kind, telehub::store::RevocationKind::Token);
    assert_eq!(dev1.expect_close().await, 4003);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status_of(&hub, "/v1/device", &leaked).await, 401);
    assert_eq!(refused(&hub.scrape().await), 1.0);
    // A new token for the same device works; dev-2 never noticed.
    let dev1 = hub.device("dev-1").await;
    dev2.send_telemetry("env.t", vec![number("t", 1.0, "")])
        .await;
    dev2.expect_nothing(Duration::from_millis(100)).await;

    // Every token of a subject issued until now: the viewer is closed too.
    api.revoke(&RevokeBody {
        subject: Some("ann".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(viewer.expect_close().await, 4003);
    assert_eq!(status_of(&hub, "/v1/dashboard", &ann).await, 401);
    // Tokens of the revocation's second are covered; a later one is not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = hub.token("ann", Role::Viewer, &[]);
    assert_eq!(status_of(&hub, "/v1/dashboard", &fresh).await, 101);

    let list = api.revocations().await.unwrap().revocations;
    let listed: Vec<(&str, &str)> = list
        .iter()
        .map(|r| (r.kind.as_str(), r.value.as_str()))
        .collect();
    let jti = r.value.clone();
    assert_eq!(listed, [("token", jti.as_str()), ("subject", "ann")]);
    // The token's own expiry bounds its revocation (plus the leeway).
    assert!(
        list[0].expires_ms <= (now_s() + 3600 + 10) * 1000,
        "{list:?}"
    );

    // Durable: after a restart, both still hold.
    drop((dev1, dev2));
    hub.stop().await;
    let hub = Hub::with(on_dirs).await;
    assert_eq!(status_of(&hub, "/v1/device", &leaked).await, 401);
    assert_eq!(status_of(&hub, "/v1/dashboard", &ann).await, 401);
    assert_eq!(status_of(&hub, "/v1/dashboard", &fresh).await, 101);
    assert_eq!(hub.scrape().await.get("telehub_revocations"), 2.0);
    hub.stop().await;
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn bad_revocations_are_refused_with_their_reason() {
    let hub = Hub::start().await;
    let operator = hub.token("ops", Role::Operator, &[]);
    let post = |body: serde_json::Value| {
        let hub = &hub;
        let operator = operator.clone();
        async move {
            let (status, _, text) = hub
                .request(
                    "POST",
                    "/v1/revocations",
                    Some(&operator),
                    Some(&body.to_string()),
                )
                .await;
            (status, text)
        }
    };
    for body in [
        json!({}),
        json!({"jti": "a", "subject": "b"}),
        json!({"jti": ""}),
        json!({"jti": "a", "issued_before_ms": 1}),
        json!({"jti": "a", "expires_ms": 1}),
        json!({"jti": "a", "extra": true}),
    ] {
        let (status, text) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let expired = hub.key.sign(&Claims {
        sub: "d".into(),
        role: Role::Device,
        tags: Default::default(),
        iat: 1,
        exp: 2,
        jti: Some("old".into()),
        scope: Default::default(),
    });
    let no_jti = hub.key.sign(&Claims {
        sub: "d".into(),
        role: Role::Device,
        tags: Default::default(),
        iat: now_s(),
        exp: now_s() + 60,
        jti: None,
        scope: Default::default(),
    });
    for (token, why) in [
        ("garbage".to_string(), "not a token"),
        (expired, "expired"),
        (no_jti, "no jti"),
    ] {
        let (status, text) = post(json!({ "token": token })).await;
        assert_eq!(status, 422, "{text}");
        assert!(text.contains(why), "{text}");
    }
    // Only operators.
    let viewer = hub.token("ann", Role::Viewer, &[]);
    let (status, _, _) = hub
        .request(
            "POST",
            "/v1/revocations",
            Some(&viewer),
            Some(r#"{"jti":"x"}"#),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = hub
        .request("GET", "/v1/revocations", Some(&viewer), None)
        .await;
    assert_eq!(status, 403);
    // A jti alone is kept for auth.max_token_lifetime; revoking it again is one row.
    for _ in 0..2 {
        let (status, text) = post(json!({"jti": "j-1"})).await;
        assert_eq!(status, 201, "{text}");
    }
    let (status, _, text) = hub
        .request("GET", "/v1/revocations", Some(&operator), None)
        .await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        list["revocations"].as_array().map(Vec::len),
        Some(1),
        "{text}"
    );
    hub.stop().await;
}

common::on_both_stores!(
    a_revoked_token_is_closed_live_refused_next_and_kept_across_a_restart,
    bad_revocations_are_refused_with_their_reason,
);
