//! Connection hygiene: keep-alive pings and the idle timeout, the per-IP cap, and
//! graceful shutdown (in-process and of the real binary on SIGTERM).

mod common;

use std::{
    io::BufRead,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use telehub::auth::{Role, TokenKey};

#[tokio::test]
async fn live_clients_stay_connected_and_silent_ones_time_out() {
    let hub = Hub::with(|c| {
        c.limits.ping_interval = Duration::from_millis(200);
        c.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut live = hub.device("live").await;
    let mut silent = hub.dashboard().await;
    silent.auto_pong = false;

    let started = tokio::time::Instant::now();
    let (live_events, silent_close) = tokio::join!(
        live.next_event_within(Duration::from_millis(1600)),
        silent.expect_close()
    );
    assert_eq!(silent_close, 1001, "idle timeout closes with 1001");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(silent.pings >= 3, "the hub pinged: {}", silent.pings);
    assert!(
        live_events.is_none(),
        "only pings for the live client: {live_events:?}"
    );
    assert!(live.pings >= 5, "pings answered: {}", live.pings);
    // Still connected, well past the idle timeout.
    assert!(started.elapsed() > Duration::from_millis(1500));
    live.send(&telehub::proto::Envelope { body: None }).await;
    assert_eq!(
        code(&live.expect_error().await),
        telehub::proto::error::Code::Malformed
    );
}

#[tokio::test]
async fn the_per_ip_cap_refuses_before_tls_and_frees_places() {
    let hub = Hub::with(|c| c.limits.max_connections_per_ip = 2).await;
    let first = hub.dashboard().await;
    let _second = hub.device("dev-1").await;

    let tcp = hub.tcp(None, None).await;
    assert!(
        hub.tls_on(tcp).await.is_err(),
        "the third connection from 127.0.0.1 is closed before TLS completes"
    );
    hub.wait_metrics("refusal counted", |m| {
        m.get("telehub_connections_refused_total{reason=\"per_ip_cap\"}") == 1.0
    })
    .await;

    // Another address is unaffected.
    let other: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let tcp = hub.tcp(Some(other), None).await;
    let tls = hub.tls_on(tcp).await.expect("127.0.0.2 has its own places");
    let token = hub.token("v", Role::Viewer, &[]);
    let mut d = hub
        .connect_over(
            tls,
            "/v1/dashboard",
            &client_config(Some(&token), &[PROTOCOL]),
        )
        .await
        .expect("upgrade from 127.0.0.2");
    d.expect_welcome().await;

    // A closed session gives its place back.
    first.close().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let tcp = hub.tcp(None, None).await;
        if hub.tls_on(tcp).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until EOF or error; returns how long the hub took to hang up.
async fn hung_up_after(mut io: impl tokio::io::AsyncRead + Unpin) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(T, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the hub never hung up on a silent peer"),
        }
    }
}

#[tokio::test]
async fn silent_peers_are_dropped_after_the_handshake_timeout() {
    let hub = Hub::with(|c| c.limits.handshake_timeout = Duration::from_millis(300)).await;
    let mut busy = hub.device("busy").await;

    // TCP only: no TLS ClientHello ever comes.
    let waited = hung_up_after(hub.tcp(None, None).await).await;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "TLS handshake timeout after {waited:?}"
    );
    hub.wait_metrics("TLS timeout counted", |m| {
        m.get("telehub_connections_refused_total{reason=\"handshake_timeout\"}") == 1.0
    })
    .await;

    // TLS completes, but the HTTP request head never does.
    let mut tls = hub.tls().await;
    tokio::io::AsyncWriteExt::write_all(&mut tls, b"GET /v1/device HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = hung_up_after(tls).await;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "request head timeout after {waited:?}"
    );

    // An established session is not subject to the handshake timeout.
    busy.send(&telehub::proto::Envelope { body: None }).await;
    assert_eq!(
        code(&busy.expect_error().await),
        telehub::proto::error::Code::Malformed
    );
}

#[tokio::test]
async fn in_process_shutdown_closes_sessions_with_1001() {
    let hub = Hub::start().await;
    let mut dev = hub.device("dev-1").await;
    let mut d = hub.dashboard().await;
    let stop = tokio::spawn(async move { hub.stop().await });
    let (a, b) = tokio::join!(dev.expect_close(), d.expect_close());
    assert_eq!((a, b), (1001, 1001));
    tokio::time::timeout(T, stop)
        .await
        .expect("run returned")
        .unwrap();
}

/// Kills the child on drop, so a failing test leaves no hub behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_shuts_down_gracefully_on_sigterm() {
    let root = temp_dir("binary");
    let (data_dir, certs_dir) = (root.join("data"), root.join("certs"));
    let key = TokenKey::load_or_create(&data_dir).unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_telehub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .arg("--certs-dir")
            .arg(&certs_dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning telehub serve"),
    );

    // The bound address appears in the "listening" log line on stderr.
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(T)
            .unwrap_or_else(|_| panic!("no listening line on stderr: {log:#?}"));
        let found = line.contains("listening").then(|| {
            line.split(|c: char| c.is_whitespace() || c == '/')
                .find_map(|w| w.strip_prefix("addr=").unwrap_or(w).parse().ok())
        });
        log.push(line);
        if let Some(Some(addr)) = found {
            break addr;
        }
    };

    let host = format!("localhost:{}", addr.port());
    let ca = certs_dir.join("ca.pem");
    let device_token = key.issue("dev-1", Role::Device, Default::default(), T);
    let viewer_token = key.issue("v", Role::Viewer, Default::default(), T);
    let mut dev = Client::upgrade(
        tls_to(addr, &ca).await,
        &host,
        "/v1/device",
        &client_config(Some(&device_token), &[PROTOCOL]),
    )
    .await
    .expect("device");
    dev.expect_welcome().await;
    let mut d = Client::upgrade(
        tls_to(addr, &ca).await,
        &host,
        "/v1/dashboard",
        &client_config(Some(&viewer_token), &[PROTOCOL]),
    )
    .await
    .expect("dashboard");
    d.expect_welcome().await;

    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let (a, b) = tokio::join!(dev.expect_close(), d.expect_close());
    assert_eq!((a, b), (1001, 1001), "both sessions closed as going away");

    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the hub did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    assert!(status.success(), "exit status {status:?}; log: {log:#?}");
    let _ = std::fs::remove_dir_all(&root);
}

/// TLS session resumption: a device that reconnects with the ticket of its previous
/// connection skips the full handshake (`device-sim` devices keep their own ticket
/// cache); a different device's first connection is a full handshake.
#[tokio::test]
async fn a_reconnecting_device_resumes_its_tls_session() {
    let hub = Hub::start().await;
    let shared = telehub::sim::Endpoint::parse(
        &format!("wss://{}", hub.host()),
        Some(&hub.certs_dir.join("ca.pem")),
    )
    .expect("endpoint");
    let token = hub.token("resumer", Role::Device, &[]);
    let device = shared.with_own_sessions();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (mut conn, _) = device
            .connect("/v1/device", &token, false, Duration::from_secs(10))
            .await
            .expect("connect");
        kinds.push(conn.get_ref().resumed());
        // Read the Welcome: the session ticket arrives before it.
        let _ = conn.next().await.expect("welcome");
        let _ = conn.close(1000, "bye").await;
    }
    assert_eq!(kinds, [false, true, true], "full, then resumed each time");

    let other = shared.with_own_sessions();
    let (conn, _) = other
        .connect("/v1/device", &token, false, Duration::from_secs(10))
        .await
        .expect("connect");
    assert!(
        !conn.get_ref().resumed(),
        "another device's cache is its own"
    );
}

/// `Endpoint::with_source` (how `device-sim bench reconnect` spreads a storm over
/// loopback addresses) connects from the address asked for, TLS and all, and says
/// clearly when the hub has no address of that family.
#[tokio::test]
async fn a_device_connects_from_the_source_address_it_asks_for() {
    let hub = Hub::start().await;
    let endpoint = telehub::sim::Endpoint::parse(
        &format!("wss://{}", hub.host()),
        Some(&hub.certs_dir.join("ca.pem")),
    )
    .expect("endpoint");
    let token = hub.token("sourced", Role::Device, &[]);
    let source: std::net::IpAddr = "127.0.0.7".parse().unwrap();
    for _ in 0..2 {
        // Twice: the second binds while the first connection may linger.
        let (mut conn, _) = endpoint
            .with_source(source)
            .connect("/v1/device", &token, false, Duration::from_secs(10))
            .await
            .expect("connect from 127.0.0.7");
        assert_eq!(conn.get_ref().local_addr().unwrap().ip(), source);
        let _ = conn.next().await.expect("welcome");
        let _ = conn.close(1000, "bye").await;
    }
    let Err(err) = endpoint
        .with_source("::1".parse().unwrap())
        .connect("/v1/device", &token, false, Duration::from_secs(10))
        .await
    else {
        panic!("connected to an IPv4 hub from an IPv6 source");
    };
    assert!(
        err.to_string().contains("no address of the family"),
        "{err}"
    );
}
