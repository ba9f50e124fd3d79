//! Devices authenticating with an X.509 client certificate (mTLS) instead of a
//! token: verified against the device CA, named by the certificate, refused when
//! from another CA, expired, revoked by the CRL, or when its id is connected with
//! a token; dashboards and REST never need one.

mod common;

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use common::*;
use telehub::{
    auth::Role,
    config::{Config, DeviceIdField},
    http::api::DeviceBody,
    tls::device::{issue, revocation_list, Issued, DEVICE_CA_CERT},
    ws,
};

const HOUR: Duration = Duration::from_secs(3600);

fn valid(certs: &Path, id: &str) -> Issued {
    let now = SystemTime::now();
    issue(certs, id, now - Duration::from_secs(60), now + HOUR).unwrap()
}

/// A TLS connection to the hub presenting `cert` (or none).
async fn tls_with(
    hub: &Hub,
    cert: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let cert = cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    tls_presenting(hub.addr, &hub.certs_dir.join("ca.pem"), cert).await
}

/// Upgrades to `/v1/device` presenting `cert` and, optionally, a token: the
/// HTTP status (101 when accepted, with the Welcome's subject), or 0 when the
/// TLS handshake itself failed.
async fn device(hub: &Hub, cert: Option<&Issued>, token: Option<&str>) -> (u16, Option<Client>) {
    let Ok(tls) = tls_with(hub, cert).await else {
        return (0, None);
    };
    match hub
        .connect_over(tls, "/v1/device", &client_config(token, &[PROTOCOL]))
        .await
    {
        Ok(c) => (101, Some(c)),
        Err(ws::Error::HttpStatus(code)) => (code, None),
        // TLS 1.3: a client certificate the server refuses shows at the first read.
        Err(_) => (0, None),
    }
}

async fn hub_trusting(certs: &Path, tweak: impl FnOnce(&mut Config)) -> Hub {
    let certs = certs.to_path_buf();
    Hub::with(move |c| {
        c.tls.device_ca = Some(certs.join(DEVICE_CA_CERT));
        c.tls.device_tags = [("auth".to_string(), "certificate".to_string())].into();
        c.certs_dir = certs;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn a_certificate_names_its_device_and_nothing_else_needs_one() {
    let dir = Dir::new("mtls");
    let certs = dir.0.join("certs");
    let sensor = valid(&certs, "sensor-1");
    let hub = hub_trusting(&certs, |_| {}).await;
    let operator = hub.api(Role::Operator);
    operator
        .put_device(
            "sensor-1",
            &DeviceBody {
                tags: [("fleet".to_string(), "north".to_string())].into(),
            },
        )
        .await
        .unwrap();
    // Dashboards and REST without a certificate, as always.
    let mut north = hub.dashboard().await;
    north
        .subscribe_filtered(
            &["env.*"],
            &[],
            &[("fleet", "north"), ("auth", "certificate")],
        )
        .await;

    let (status, dev) = device(&hub, Some(&sensor), None).await;
    assert_eq!(status, 101);
    let mut dev = dev.unwrap();
    assert_eq!(dev.expect_welcome().await.subject, "sensor-1");
    dev.send_telemetry("env.t", vec![number("t", 21.5, "C")])
        .await;
    let t = north.expect_telemetry().await;
    assert_eq!(
        t.device_id, "sensor-1",
        "registry and configured tags both apply"
    );

    // Both kinds on one hub: a token device still connects; a device that sends a
    // token with its certificate is the token's.
    hub.device("token-dev").await;
    let token = hub.token("other-id", Role::Device, &[]);
    let second = valid(&certs, "sensor-2");
    let (status, dev2) = device(&hub, Some(&second), Some(&token)).await;
    assert_eq!(status, 101);
    assert_eq!(dev2.unwrap().expect_welcome().await.subject, "other-id");
    // Without a certificate or a token: 401, as before.
    assert_eq!(device(&hub, None, None).await.0, 401);
    hub.stop().await;
}

#[tokio::test]
async fn certificates_from_another_ca_expired_or_revoked_are_refused() {
    let dir = Dir::new("mtls-refused");
    let certs = dir.0.join("certs");
    let good = valid(&certs, "good");
    let revoked = valid(&certs, "stolen");
    let now = SystemTime::now();
    let expired = issue(&certs, "old", now - 2 * HOUR, now - HOUR).unwrap();
    let crl = dir.0.join("devices.crl");
    std::fs::write(
        &crl,
        revocation_list(&certs, std::slice::from_ref(&revoked.serial), HOUR).unwrap(),
    )
    .unwrap();
    let elsewhere = valid(&dir.0.join("other-ca"), "good");
    let crl_path = crl.clone();
    let hub = hub_trusting(&certs, move |c| c.tls.device_crl = vec![crl_path]).await;

    assert_eq!(device(&hub, Some(&good), None).await.0, 101);
    for (what, cert) in [
        ("another CA", &elsewhere),
        ("expired", &expired),
        ("revoked", &revoked),
    ] {
        let before = hub
            .scrape()
            .await
            .get("telehub_connections_refused_total{reason=\"tls_handshake\"}");
        assert_eq!(device(&hub, Some(cert), None).await.0, 0, "{what}");
        let m = hub.scrape().await;
        assert_eq!(
            m.get("telehub_connections_refused_total{reason=\"tls_handshake\"}"),
            before + 1.0,
            "{what}"
        );
    }
    assert_eq!(
        hub.scrape()
            .await
            .get("telehub_connections_accepted_total{role=\"device\"}"),
        1.0
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_certificate_cannot_take_over_a_token_device_nor_the_reverse() {
    let dir = Dir::new("mtls-collide");
    let certs = dir.0.join("certs");
    let cert = valid(&certs, "dev-1");
    let hub = hub_trusting(&certs, |_| {}).await;

    let token_dev = hub.device("dev-1").await;
    assert_eq!(device(&hub, Some(&cert), None).await.0, 409);
    drop(token_dev);
    // Once the token device is gone, the certificate connects.
    let deadline = tokio::time::Instant::now() + T;
    let mut cert_dev = loop {
        match device(&hub, Some(&cert), None).await {
            (101, Some(c)) => break c,
            (409, _) => {}
            other => panic!("unexpected {}", other.0),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token device never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cert_dev.expect_welcome().await;
    let token = hub.token("dev-1", Role::Device, &[]);
    assert_eq!(device(&hub, None, Some(&token)).await.0, 409);
    // A second connection with the certificate takes over, as any reconnect does.
    let (status, _again) = device(&hub, Some(&cert), None).await;
    assert_eq!(status, 101);
    assert_eq!(cert_dev.expect_close().await, 4001);
    assert!(
        hub.scrape()
            .await
            .get("telehub_connections_refused_total{reason=\"conflict\"}")
            == 2.0
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_certificate_without_the_configured_field_or_of_a_revoked_subject_is_refused() {
    let dir = Dir::new("mtls-field");
    let certs = dir.0.join("certs");
    let no_dns = valid(&certs, "dev_1");
    let named = valid(&certs, "dev-2");
    let hub = hub_trusting(&certs, |c| c.tls.device_id = DeviceIdField::SanDns).await;
    assert_eq!(device(&hub, Some(&no_dns), None).await.0, 401);
    assert_eq!(
        hub.scrape()
            .await
            .get("telehub_tokens_refused_total{reason=\"certificate\"}"),
        1.0
    );
    // Revoking the subject closes the live certificate device and refuses its
    // certificate (issued before the revocation) from then on.
    let (status, dev) = device(&hub, Some(&named), None).await;
    assert_eq!(status, 101);
    let mut dev = dev.unwrap();
    dev.expect_welcome().await;
    hub.api(Role::Operator)
        .revoke(&telehub::http::revocations::RevokeBody {
            subject: Some("dev-2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dev.expect_close().await, 4003);
    assert_eq!(device(&hub, Some(&named), None).await.0, 401);
    hub.stop().await;
}
