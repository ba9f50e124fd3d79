//! Several hubs in one process joined by the in-memory bus (`hub::bus::memory`):
//! what a cluster's nodes must do for each other, checked through the seam a real
//! bus (Redis) plugs into. Each hub is a real server on its own port, with real
//! TLS clients.
//!
//! - A device on hub A publishes; dashboards on hub B receive the very same
//!   telemetry (content and `received_ms`) through every kind of subscription:
//!   exact pattern, wildcard, tag filter, device filter; filters that do not match
//!   receive nothing; a third hub receives it exactly once (a node never
//!   re-publishes what arrived from the bus).
//! - Presence from A is seen on B.
//! - The same device id connecting to B closes its older connection on A with 4001,
//!   without an offline event anywhere; when it leaves B it goes offline everywhere.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use telehub::hub::bus::memory::Network;

async fn cluster(n: usize) -> (Arc<Network>, Vec<Hub>) {
    let network = Network::new();
    let mut hubs = Vec::new();
    for _ in 0..n {
        hubs.push(Hub::with_bus(network.bus(), |_| {}).await);
    }
    (network, hubs)
}

#[tokio::test]
async fn telemetry_from_one_hub_reaches_every_matching_dashboard_on_the_others() {
    let (network, hubs) = cluster(3).await;
    let (a, b, c) = (&hubs[0], &hubs[1], &hubs[2]);

    let mut local = a.dashboard().await;
    local.subscribe(&["env.temperature"]).await;
    let mut exact = b.dashboard().await;
    exact.subscribe(&["env.temperature"]).await;
    let mut wildcard = b.dashboard().await;
    wildcard.subscribe(&["env.*"]).await;
    let mut by_tag = b.dashboard().await;
    by_tag
        .subscribe_filtered(&["*"], &[], &[("fleet", "north")])
        .await;
    let mut by_device = b.dashboard().await;
    by_device.subscribe_filtered(&["*"], &["dev-1"], &[]).await;
    let mut other_tag = b.dashboard().await;
    other_tag
        .subscribe_filtered(&["*"], &[], &[("fleet", "south")])
        .await;
    let mut other_device = b.dashboard().await;
    other_device
        .subscribe_filtered(&["*"], &["dev-2"], &[])
        .await;
    let mut third = c.dashboard().await;
    third.subscribe(&["*"]).await;

    let mut device = a.device_tagged("dev-1", &[("fleet", "north")]).await;
    let p = exact.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));
    assert_eq!(p.tags.get("fleet").map(String::as_str), Some("north"));

    device
        .send_telemetry(
            "env.temperature",
            vec![number("celsius", 21.5, "Cel"), raw("blob", vec![1, 2, 3])],
        )
        .await;
    let sent = local.expect_telemetry().await;
    assert_eq!(sent.device_id, "dev-1");
    assert!(sent.received_ms > 0);
    for (what, d) in [
        ("exact", &mut exact),
        ("wildcard", &mut wildcard),
        ("tag filter", &mut by_tag),
        ("device filter", &mut by_device),
        ("third hub", &mut third),
    ] {
        assert_eq!(d.expect_telemetry().await, sent, "{what}");
    }
    // Exactly once on the third hub: B did not publish it again.
    third.expect_no_telemetry(Duration::from_millis(300)).await;
    other_tag
        .expect_no_telemetry(Duration::from_millis(100))
        .await;
    other_device
        .expect_no_telemetry(Duration::from_millis(100))
        .await;
    local.expect_no_telemetry(Duration::from_millis(100)).await;
    assert_eq!(network.dropped(), 0);
}

#[tokio::test]
async fn a_second_connection_on_another_hub_takes_the_device_over() {
    let (_network, hubs) = cluster(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let mut on_a = a.dashboard().await;
    let mut on_b = b.dashboard().await;

    let mut old = a.device("dev-1").await;
    assert!(on_a.expect_presence().await.online);
    let p = on_b.expect_presence().await;
    assert_eq!(
        (p.device_id.as_str(), p.online),
        ("dev-1", true),
        "presence from A seen on B"
    );

    // The same device id, connecting to B.
    let mut new = b.device("dev-1").await;
    assert_eq!(
        old.expect_close().await,
        4001,
        "the older connection, on A, is closed"
    );
    // Still online on both hubs: a takeover is not a presence change.
    for d in [&mut on_a, &mut on_b] {
        let next = d.next_event_within(Duration::from_millis(300)).await;
        assert!(next.is_none(), "no presence change, got {next:?}");
    }
    assert_eq!(a.app().hub.online_devices(), 1);
    assert_eq!(b.app().hub.online_devices(), 1);

    // The new connection works, and its telemetry reaches A.
    on_a.subscribe(&["*"]).await;
    new.send_telemetry("env.t", vec![number("v", 1.0, "")])
        .await;
    assert_eq!(on_a.expect_telemetry().await.device_id, "dev-1");

    // Leaving B, the device goes offline everywhere.
    new.close().await;
    for d in [&mut on_a, &mut on_b] {
        let p = d.expect_presence().await;
        assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
    }
    assert_eq!(a.app().hub.online_devices(), 0);
}

#[tokio::test]
async fn a_late_dashboard_on_another_hub_gets_remote_devices_in_its_snapshot() {
    let (_network, hubs) = cluster(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let mut watcher = b.dashboard().await;
    let _device = a.device_tagged("dev-9", &[("site", "x")]).await;
    assert!(watcher.expect_presence().await.online);
    let mut late = b.dashboard().await;
    let p = late.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-9", true));
    assert_eq!(p.tags.get("site").map(String::as_str), Some("x"));
}
