//! Presence: dashboards see devices come and go, late dashboards get a snapshot,
//! and a reconnecting device takes its old session over without flapping.

mod common;

use common::*;

#[tokio::test]
async fn dashboards_see_devices_come_online_and_go_offline() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    let device = hub.device_tagged("dev-1", &[("fleet", "north")]).await;
    let p = d.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));
    assert_eq!(p.tags.get("fleet").map(String::as_str), Some("north"));
    assert!(p.at_ms > 0);

    assert_eq!(device.close().await, 1000, "the hub echoes our close code");
    let p = d.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
}

#[tokio::test]
async fn a_device_that_just_drops_its_connection_goes_offline() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    let device = hub.device("dev-1").await;
    assert!(d.expect_presence().await.online);
    drop(device); // no close frame, just the TCP connection ending
    let p = d.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
}

#[tokio::test]
async fn a_late_dashboard_gets_a_snapshot_of_online_devices() {
    let hub = Hub::start().await;
    let _a = hub.device("dev-a").await;
    let _b = hub.device_tagged("dev-b", &[("site", "x")]).await;
    let c = hub.device("dev-c").await;
    c.close().await;
    // The device sessions register after their Welcome: wait until both count.
    hub.wait_metrics("two devices online", |m| {
        m.get("telehub_connections{role=\"device\"}") == 2.0
    })
    .await;
    let mut d = hub.dashboard().await;
    let mut online = Vec::new();
    for _ in 0..2 {
        let p = d.expect_presence().await;
        assert!(p.online, "{p:?}");
        if p.device_id == "dev-b" {
            assert_eq!(p.tags.get("site").map(String::as_str), Some("x"));
        }
        online.push(p.device_id);
    }
    online.sort();
    assert_eq!(online, ["dev-a", "dev-b"], "dev-c is offline");
    // Nothing else in the snapshot: the next thing is our Subscribed.
    d.send(&telehub::proto::Envelope {
        body: Some(telehub::proto::envelope::Body::Subscribe(
            telehub::proto::Subscribe {
                categories: vec!["*".into()],
                ..Default::default()
            },
        )),
    })
    .await;
    match d.next_envelope().await.body {
        Some(telehub::proto::envelope::Body::Subscribed(_)) => {}
        other => panic!("expected Subscribed after the snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_connection_takes_the_device_over_without_an_offline_event() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;
    let mut old = hub.device("dev-1").await;
    let p = d.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));

    let mut new = hub.device("dev-1").await;
    assert_eq!(
        old.expect_close().await,
        4001,
        "the old connection is closed as taken over"
    );

    // The next thing the dashboard sees is the new session's telemetry: no offline
    // (and no second online) event in between.
    new.send_telemetry("env.t", vec![]).await;
    match d.next_envelope().await.body {
        Some(telehub::proto::envelope::Body::Telemetry(t)) => assert_eq!(t.device_id, "dev-1"),
        other => panic!("expected telemetry, got {other:?}"),
    }
    assert_eq!(hub.app().hub.online_devices(), 1);

    // When the new one leaves, the device goes offline once.
    new.close().await;
    let p = d.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
    assert_eq!(hub.app().hub.online_devices(), 0);
}
