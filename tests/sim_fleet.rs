//! The simulated fleet (`telehub::sim`, behind `device-sim` and `telehub demo`)
//! against a real hub: devices stream, a dashboard sees them, and when the hub
//! restarts they reconnect and deliver what they buffered while it was down.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{temp_dir, Client, Hub};
use telehub::{
    auth::TokenKey,
    hub::now_ms,
    proto::envelope::Body,
    sim::{run_fleet, FleetConfig, FleetStats, TokenSource},
};

/// Telemetry seen by `dash` until every device in `devices` was heard from.
async fn hear_all(dash: &mut Client, devices: usize) -> Vec<telehub::proto::Telemetry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    while seen.len() < devices {
        assert!(Instant::now() < deadline, "heard only {seen:?}");
        if let Some(Body::Telemetry(t)) = dash.next_envelope().await.body {
            seen.insert(t.device_id.clone());
            all.push(t);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_streams_and_resends_its_backlog_after_a_hub_restart() {
    let root = temp_dir("fleet");
    let (data, certs) = (root.join("data"), root.join("certs"));
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
        probe.local_addr().expect("probe addr")
    };
    let same_place = |c: &mut telehub::config::Config| {
        c.listen = addr;
        c.data_dir = data.clone();
        c.certs_dir = certs.clone();
    };

    let hub = Hub::with(same_place).await;
    let mut dash = hub.dashboard().await;
    dash.subscribe(&["*"]).await;

    let key = TokenKey::load_or_create(&data).expect("token key");
    let mut cfg = FleetConfig::new(
        format!("wss://localhost:{}", addr.port()),
        TokenSource::mint(key),
    );
    cfg.ca = Some(certs.join("ca.pem"));
    cfg.devices = 3;
    cfg.rate_hz = 20.0;
    let stats = Arc::new(FleetStats::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(run_fleet(cfg, stats.clone(), async move {
        let _ = stop_rx.await;
    }));

    let first = hear_all(&mut dash, 3).await;
    assert!(first.iter().all(|t| t.device_id.starts_with("sim-")));
    let categories: BTreeSet<&str> = first.iter().map(|t| t.category.as_str()).collect();
    assert!(categories.len() >= 2, "profiles rotate: {categories:?}");

    // Down for a while: devices keep generating into their backlogs.
    hub.stop().await;
    let down_at = now_ms();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let hub = Hub::with(same_place).await;
    let mut dash = hub.dashboard().await;
    dash.subscribe(&["*"]).await;
    let after = hear_all(&mut dash, 3).await;

    // Readings made while the hub was down arrive after it is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffered = after
        .iter()
        .any(|t| t.timestamp_ms > down_at && t.timestamp_ms < down_at + 500);
    while !buffered {
        assert!(
            Instant::now() < deadline,
            "no reading from the outage was delivered"
        );
        if let Some(Body::Telemetry(t)) = dash.next_envelope().await.body {
            buffered = t.timestamp_ms > down_at && t.timestamp_ms < down_at + 500;
        }
    }
    assert!(stats.snapshot(3).reconnects >= 3, "{:?}", stats.snapshot(3));

    let _ = stop_tx.send(());
    let summary = tokio::time::timeout(Duration::from_secs(10), fleet)
        .await
        .expect("fleet stops")
        .expect("fleet task")
        .expect("fleet run");
    assert!(
        summary.sent > 0 && summary.auth_failures == 0,
        "{summary:?}"
    );
    // Uplink confirmations: every message sent is confirmed or counted as not (the
    // stop can cut the last ones off), and most are confirmed.
    assert_eq!(
        summary.confirmed + summary.unconfirmed,
        summary.sent,
        "{summary:?}"
    );
    assert!(summary.confirmed * 10 >= summary.sent * 9, "{summary:?}");
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}
