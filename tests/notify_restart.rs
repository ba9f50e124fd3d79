//! A hub stopped and started again on the same data dir delivers everything it had
//! accepted and forgets no acknowledgement it had reported.

mod common;

use std::time::Duration;

use common::*;
use telehub::{auth::Role, http::api::DeviceBody};

/// What a hub accepted is delivered by the next one on the same directory.
async fn a_restarted_hub_delivers_what_was_accepted_before() {
    let dir = Dir::new("restart");
    let on_dirs = dir.hub_dirs();

    let hub = Hub::with(on_dirs).await;
    let api = hub.api(Role::Operator);
    let tagged = DeviceBody {
        tags: tag_map(&[("fleet", "x")]),
    };
    api.put_device("dev-tagged", &tagged).await.expect("PUT");
    let mut watcher = hub.dashboard().await;
    watcher.watch_notifications(true).await;
    // dev-acked acknowledges; dev-seen receives but does not; dev-later is away.
    let mut acked = hub.device("dev-acked").await;
    let mut seen = hub.device("dev-seen").await;
    let created = api
        .create(&notification(
            "critical",
            to_devices(&["dev-acked", "dev-later", "dev-seen"]),
            "Survives restarts",
        ))
        .await
        .unwrap();
    assert!(!seen.expect_notification().await.redelivery);
    let n = acked.expect_notification().await;
    acked.ack(&n.id).await;
    // The hub has reported the ack to the operator: from now on it must not be lost.
    watcher
        .expect_progress(&created.id, |p| p.acknowledged == 1 && p.delivered == 1)
        .await;
    let (_, a, s, w) = tokio::join!(
        hub.stop(),
        acked.expect_close(),
        seen.expect_close(),
        watcher.expect_close()
    );
    assert_eq!((a, s, w), (1001, 1001, 1001), "the hub is going away");

    let hub = Hub::with(on_dirs).await;
    let api = hub.api(Role::Operator);
    let s = api.status(&created.id, None, None, 10).await.unwrap();
    let states: Vec<(&str, &str)> = s
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("dev-acked", "acknowledged"),
            ("dev-later", "pending"),
            ("dev-seen", "delivered")
        ]
    );
    assert!(!s.summary.complete);
    let mut acked = hub.device("dev-acked").await;
    let mut later = hub.device("dev-later").await;
    let n = later.expect_notification().await;
    assert_eq!(
        (n.id.as_str(), n.title.as_str()),
        (created.id.as_str(), "Survives restarts")
    );
    assert!(!n.redelivery, "dev-later never had it");
    later.ack(&n.id).await;
    let mut seen = hub.device("dev-seen").await;
    let n = seen.expect_notification().await;
    assert_eq!(n.id, created.id);
    assert!(n.redelivery, "dev-seen had it before the restart");
    seen.ack(&n.id).await;
    let s = wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts.acknowledged, 3);
    assert_eq!(row(&s, "dev-seen").attempts, 2);
    assert_eq!(row(&s, "dev-acked").attempts, 1);
    acked.expect_nothing(Duration::from_millis(200)).await;
    // The registry survived too: a tag selector still finds the device put before.
    let tagged = api
        .create(&notification("info", to_tags(&[("fleet", "x")]), "t"))
        .await
        .expect("the registered device is still known");
    assert_eq!(tagged.targets, 1);
    // Let the hub finish before the directory goes.
    drop((acked, later, seen));
    hub.stop().await;
}

common::on_both_stores!(a_restarted_hub_delivers_what_was_accepted_before,);
