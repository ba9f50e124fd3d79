//! SIGHUP on a running `telehub serve`: the server certificate, the device CRL, the
//! JWT key set and the rate limits are taken again from the files; connections
//! already open stay up with what they started with; a file that does not load is
//! refused, logged and counted, and the previous one kept.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::*;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use serde_json::json;
use telehub::{
    auth::{Role, TokenKey},
    client::Api,
    tls::device::{issue, revocation_list, Issued, DEVICE_CA_CERT},
    ws,
};

/// The hub process, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(ok.success());
}

fn config(rate: u32) -> String {
    format!(
        "[rate]\nper_second = {rate}\nburst = {rate}\n\n[auth]\njwks_file = \"jwks.json\"\n\n\
         [tls]\ndevice_ca = \"certs/{DEVICE_CA_CERT}\"\ndevice_crl = [\"devices.crl\"]\n"
    )
}

/// A P-256 key of another issuer, and the JWKS holding its public half.
struct EsKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl EsKey {
    fn new(kid: &str) -> Self {
        EsKey {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        let raw = self.pair.public_key_raw();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])}]})
        .to_string()
    }

    fn token(&self, sub: &str) -> String {
        telehub::auth::crypto::install();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let exp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pair.serialize_der());
        jsonwebtoken::encode(
            &header,
            &json!({"sub": sub, "role": "device", "exp": exp}),
            &key,
        )
        .unwrap()
    }
}

/// The server certificate a new TLS connection sees.
async fn served_certificate(port: u16, ca: &std::path::Path) -> Vec<u8> {
    let tls = tls_to(([127, 0, 0, 1], port).into(), ca).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn file_certificate(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Upgrades to `/v1/device` with a token or a client certificate: the status, and
/// the Welcome's rate when accepted (0 when the TLS handshake failed).
async fn device(
    port: u16,
    ca: &std::path::Path,
    token: Option<&str>,
    cert: Option<&Issued>,
) -> (u16, Option<(u32, Client)>) {
    let cert = cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    let Ok(tls) = tls_presenting(([127, 0, 0, 1], port).into(), ca, cert).await else {
        return (0, None);
    };
    let host = format!("localhost:{port}");
    match Client::upgrade(tls, &host, "/v1/device", &client_config(token, &[PROTOCOL])).await {
        Ok(mut c) => {
            let rate = c.expect_welcome().await.rate_per_second;
            (101, Some((rate, c)))
        }
        Err(ws::Error::HttpStatus(code)) => (code, None),
        Err(_) => (0, None),
    }
}

async fn reloads(api: &Api, result: &str) -> f64 {
    metric(
        api,
        &format!("telehub_reloads_total{{result=\"{result}\"}}"),
    )
    .await
}

async fn wait_reloads(api: &Api, result: &str, n: f64) {
    wait_for("the reload", Duration::from_secs(10), async || {
        reloads(api, result).await == n
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_certificates_keys_and_limits_without_dropping_anyone() {
    let root = temp_dir("reload");
    let certs = root.join("certs");
    telehub::tls::ensure_dev_certificates(&certs).unwrap();
    let ca = certs.join("ca.pem");
    let key = TokenKey::load_or_create(&root.join("data")).unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let sensor = issue(&certs, "sensor-1", now - hour, now + hour).unwrap();
    std::fs::write(
        root.join("devices.crl"),
        revocation_list(&certs, &[], hour).unwrap(),
    )
    .unwrap();
    let (first, second) = (EsKey::new("k1"), EsKey::new("k2"));
    std::fs::write(root.join("jwks.json"), first.jwks()).unwrap();
    std::fs::write(root.join("telehub.toml"), config(5)).unwrap();
    let port = free_port();
    let serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_telehub"))
            .current_dir(&root)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--config",
                "telehub.toml",
                "--data-dir",
                "data",
                "--certs-dir",
                "certs",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("telehub serve"),
    );
    let token = key.issue("ops", Role::Operator, Default::default(), hour);
    let api = Api::new(&format!("https://localhost:{port}"), Some(&ca), token).unwrap();
    wait_for("the hub to listen", Duration::from_secs(20), async || {
        api.readyz().await.is_ok()
    })
    .await;

    // Before: the first certificate, key k1, 5 messages a second, the sensor's
    // certificate accepted.
    let old_cert = file_certificate(&certs.join("server.pem"));
    assert_eq!(served_certificate(port, &ca).await, old_cert);
    let own = key.issue("dev-own", Role::Device, Default::default(), hour);
    let (status, kept) = device(port, &ca, Some(&own), None).await;
    assert_eq!(status, 101);
    let (rate, mut kept) = kept.unwrap();
    assert_eq!(rate, 5);
    assert_eq!(
        device(port, &ca, Some(&first.token("dev-k1")), None)
            .await
            .0,
        101
    );
    assert_eq!(
        device(port, &ca, Some(&second.token("dev-k2")), None)
            .await
            .0,
        401
    );
    let (status, sensor_live) = device(port, &ca, None, Some(&sensor)).await;
    assert_eq!(status, 101);
    let (_, mut sensor_live) = sensor_live.unwrap();

    // New files: a new server certificate (same CA), key k2 instead of k1, the
    // sensor revoked, 7 messages a second.
    std::fs::remove_file(certs.join("server.pem")).unwrap();
    std::fs::remove_file(certs.join("server.key")).unwrap();
    telehub::tls::ensure_dev_certificates(&certs).unwrap();
    let new_cert = file_certificate(&certs.join("server.pem"));
    assert_ne!(new_cert, old_cert);
    std::fs::write(root.join("jwks.json"), second.jwks()).unwrap();
    std::fs::write(
        root.join("devices.crl"),
        revocation_list(&certs, std::slice::from_ref(&sensor.serial), hour).unwrap(),
    )
    .unwrap();
    std::fs::write(root.join("telehub.toml"), config(7)).unwrap();
    hup(&serve.0);
    wait_reloads(&api, "ok", 1.0).await;

    assert_eq!(served_certificate(port, &ca).await, new_cert);
    assert_eq!(
        device(port, &ca, Some(&second.token("dev-k2")), None)
            .await
            .0,
        101
    );
    assert_eq!(
        device(port, &ca, Some(&first.token("dev-k1")), None)
            .await
            .0,
        401
    );
    assert_eq!(
        device(port, &ca, None, Some(&sensor)).await.0,
        0,
        "revoked by the new CRL"
    );
    let (_, fresh) = device(port, &ca, Some(&own), None).await;
    assert_eq!(fresh.unwrap().0, 7, "new connections get the new limit");
    // The connections opened before are still up (the one of `own` was taken over
    // by the fresh one, with 4001: alive until then).
    assert_eq!(kept.expect_close().await, 4001);
    sensor_live
        .send_telemetry("env.t", vec![number("t", 1.0, "")])
        .await;
    sensor_live.expect_nothing(Duration::from_millis(200)).await;

    // A broken certificate file: refused, counted, and the last good one kept.
    std::fs::write(certs.join("server.pem"), "not a certificate").unwrap();
    hup(&serve.0);
    wait_reloads(&api, "error", 1.0).await;
    assert_eq!(served_certificate(port, &ca).await, new_cert);
    assert_eq!(reloads(&api, "ok").await, 1.0);
    // The other parts still reloaded: k1 is back.
    std::fs::write(root.join("jwks.json"), first.jwks()).unwrap();
    hup(&serve.0);
    wait_reloads(&api, "error", 2.0).await;
    assert_eq!(
        device(port, &ca, Some(&first.token("dev-k1b")), None)
            .await
            .0,
        101
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(root);
}
