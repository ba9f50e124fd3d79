//! `telehub demo`, the README's run command: the real binary starts a hub and a
//! simulated fleet, prints a dashboard URL with an operator token, and a dashboard
//! using that token sees the fleet's presence and telemetry. Ctrl-C ends it cleanly.

mod common;

use std::{
    io::BufRead,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{client_config, temp_dir, tls_to, Client, PROTOCOL, T};
use telehub::proto::envelope::Body;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_runs_a_fleet_that_a_dashboard_can_watch() {
    demo(&[]).await;
}

/// `demo --cluster`: the devices on one node, the dashboard on another, joined
/// through a real Redis.
#[tokio::test]
async fn demo_with_a_cluster_serves_the_dashboard_from_the_second_node() {
    let redis = common::Redis::start();
    let store = common::Postgres::shared_database().await;
    let lines = demo(&["--cluster", &redis.url(), "--store", &store]).await;
    let cluster = lines
        .iter()
        .find(|l| l.trim().starts_with("cluster:"))
        .expect("the demo says where the devices and the dashboard are");
    assert!(
        cluster.contains("demo-1") && cluster.contains("demo-2"),
        "{cluster}"
    );
}

/// Runs `telehub demo` with `extra` arguments until a dashboard opened with the
/// printed URL sees every device online and streaming, then stops it with
/// SIGINT; returns what it printed before the URL.
async fn demo(extra: &[&str]) -> Vec<String> {
    let root = temp_dir("demo");
    let (data_dir, certs_dir) = (root.join("data"), root.join("certs"));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_telehub"))
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--devices",
                "3",
                "--rate",
                "20",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--certs-dir")
            .arg(&certs_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning telehub demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // "  dashboard:      https://127.0.0.1:PORT/#token=TOKEN&subscribe=*"
    let mut printed = Vec::new();
    let url = loop {
        let line = rx.recv_timeout(T).expect("demo printed no dashboard URL");
        if let Some(url) = line.trim().strip_prefix("dashboard:") {
            break url.trim().to_string();
        }
        printed.push(line);
    };
    let rest = url.strip_prefix("https://").expect("https URL");
    let (authority, fragment) = rest.split_once("/#token=").expect("URL carries the token");
    // "TOKEN&subscribe=*": the page subscribes a fresh tab to everything.
    let (token, subscribe) = fragment.split_once('&').expect("URL subscribes");
    assert_eq!(subscribe, "subscribe=*");
    let addr: SocketAddr = authority.parse().expect("URL host is an address");

    let ca = certs_dir.join("ca.pem");
    let mut dash = Client::upgrade(
        tls_to(addr, &ca).await,
        &format!("localhost:{}", addr.port()),
        "/v1/dashboard",
        &client_config(Some(token), &[PROTOCOL]),
    )
    .await
    .expect("the printed token opens the dashboard");
    let welcome = dash.expect_welcome().await;
    assert_eq!(welcome.role, "operator");
    dash.subscribe(&["*"]).await;

    // Every simulated device shows up online and streams telemetry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut online = std::collections::BTreeSet::new();
    let mut streaming = std::collections::BTreeSet::new();
    while online.len() < 3 || streaming.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "online {online:?}, streaming {streaming:?}"
        );
        match dash.next_envelope().await.body {
            Some(Body::Presence(p)) if p.online => {
                online.insert(p.device_id);
            }
            Some(Body::Telemetry(t)) => {
                assert!(t.device_id.starts_with("demo-"), "{}", t.device_id);
                assert!(!t.readings.is_empty());
                streaming.insert(t.device_id);
            }
            _ => {}
        }
    }

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT")
        .success());
    assert_eq!(dash.expect_close().await, 1001);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&root);
    printed
}
