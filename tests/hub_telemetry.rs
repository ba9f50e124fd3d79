//! Telemetry from devices to dashboards: delivery and its content, category and
//! wildcard patterns, device and tag filters, unsubscribing.

mod common;

use common::*;
use telehub::{
    auth::Role,
    proto::{error::Code, Telemetry},
};

/// (device, category) of each message, for comparing what a dashboard saw.
fn seen(ts: &[Telemetry]) -> Vec<(String, String)> {
    ts.iter()
        .map(|t| (t.device_id.clone(), t.category.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(d, c)| (d.to_string(), c.to_string()))
        .collect()
}

#[tokio::test]
async fn device_telemetry_reaches_a_subscribed_dashboard_intact() {
    let hub = Hub::start().await;
    let mut dashboard = hub
        .connect(
            "/v1/dashboard",
            &client_config(Some(&hub.token("alice", Role::Viewer, &[])), &[PROTOCOL]),
        )
        .await
        .expect("dashboard upgrade");
    assert_eq!(dashboard.handshake.protocol.as_deref(), Some(PROTOCOL));
    let welcome = dashboard.expect_welcome().await;
    assert_eq!(
        (welcome.subject.as_str(), welcome.role.as_str()),
        ("alice", "viewer")
    );
    assert!(welcome.max_message_bytes > 0);
    assert_eq!(
        dashboard.subscribe(&["env.temperature"]).await,
        ["env.temperature"]
    );

    let mut device = hub.device("sensor-7").await;
    let before = telehub::hub::now_ms();
    // The frame claims to be another device: the hub must stamp the token's subject.
    let mut env = telemetry(
        "env.temperature",
        42,
        vec![number("t", 21.5, "Cel"), number("rh", 40.0, "%")],
    );
    if let Some(telehub::proto::envelope::Body::Telemetry(t)) = &mut env.body {
        t.device_id = "someone-else".into();
        t.received_ms = 1;
    }
    device.send(&env).await;

    let t = dashboard.expect_telemetry().await;
    assert_eq!(t.device_id, "sensor-7", "device_id comes from the token");
    assert_eq!(t.category, "env.temperature");
    assert_eq!(t.seq, 42);
    assert_eq!(t.timestamp_ms, 1_700_000_000_042, "device clock kept");
    assert_eq!(
        t.readings,
        vec![number("t", 21.5, "Cel"), number("rh", 40.0, "%")]
    );
    let after = telehub::hub::now_ms();
    assert!(
        (before..=after).contains(&t.received_ms),
        "received_ms {} set by the hub within [{before}, {after}]",
        t.received_ms
    );

    // A second message, with the next seq, follows in order.
    let seq = device
        .send_telemetry("env.temperature", vec![number("t", 22.0, "Cel")])
        .await;
    let t = dashboard.expect_telemetry().await;
    assert_eq!((t.seq, t.readings.len()), (seq, 1));
}

#[tokio::test]
async fn categories_wildcards_device_and_tag_filters() {
    let hub = Hub::start().await;
    let mut exact = hub.dashboard().await;
    let mut wild = hub.dashboard().await;
    let mut all = hub.dashboard().await;
    let mut by_device = hub.dashboard().await;
    let mut by_tag = hub.dashboard().await;
    let mut overlap = hub.dashboard().await;
    exact.subscribe(&["env.temperature"]).await;
    wild.subscribe(&["env.*"]).await;
    all.subscribe(&["*"]).await;
    by_device.subscribe_filtered(&["*"], &["dev-b"], &[]).await;
    by_tag
        .subscribe_filtered(&["env.*", "power.battery"], &[], &[("fleet", "north")])
        .await;
    let confirmed = overlap
        .subscribe(&["env.*", "*", "env.temperature", "env.temperature.*"])
        .await;
    assert_eq!(
        confirmed,
        ["*", "env.*", "env.temperature", "env.temperature.*"]
    );

    let mut a = hub
        .device_tagged("dev-a", &[("fleet", "north"), ("site", "x")])
        .await;
    let mut b = hub.device_tagged("dev-b", &[("fleet", "south")]).await;

    let a_cats = ["env", "env.temperature", "environment", "power.battery"];
    for c in a_cats {
        a.send_telemetry(c, vec![number("v", 1.0, "")]).await;
    }
    // Barrier: `all` sees everything, so once it has dev-a's messages every
    // dashboard's queue has them too, and dev-b's come strictly after.
    for c in a_cats {
        assert_eq!(all.expect_telemetry().await.category, c);
    }
    let b_cats = ["env.temperature.max", "env.temperature", "power"];
    for c in b_cats {
        b.send_telemetry(c, vec![number("v", 2.0, "")]).await;
    }
    for c in b_cats {
        assert_eq!(all.expect_telemetry().await.category, c);
    }
    // End marker: a new exact subscription on every dashboard, published last.
    for d in [
        &mut exact,
        &mut wild,
        &mut by_device,
        &mut by_tag,
        &mut overlap,
    ] {
        d.subscribe(&["end"]).await;
    }
    a.send_telemetry("end", vec![]).await;
    assert_eq!(all.expect_telemetry().await.category, "end");

    async fn until_end(d: &mut Client) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let t = d.expect_telemetry().await;
            if t.category == "end" {
                return seen(&got);
            }
            got.push(t);
        }
    }
    assert_eq!(
        until_end(&mut exact).await,
        pairs(&[("dev-a", "env.temperature"), ("dev-b", "env.temperature")])
    );
    assert_eq!(
        until_end(&mut wild).await,
        pairs(&[
            ("dev-a", "env"),
            ("dev-a", "env.temperature"),
            ("dev-b", "env.temperature.max"),
            ("dev-b", "env.temperature"),
        ]),
        "env.* matches env and env.x, never environment"
    );
    assert_eq!(
        until_end(&mut by_device).await,
        pairs(&[
            ("dev-b", "env.temperature.max"),
            ("dev-b", "env.temperature"),
            ("dev-b", "power"),
        ])
    );
    assert_eq!(
        until_end(&mut by_tag).await,
        pairs(&[
            ("dev-a", "env"),
            ("dev-a", "env.temperature"),
            ("dev-a", "power.battery"),
        ])
    );
    assert_eq!(
        until_end(&mut overlap).await,
        pairs(&[
            ("dev-a", "env"),
            ("dev-a", "env.temperature"),
            ("dev-a", "environment"),
            ("dev-a", "power.battery"),
            ("dev-b", "env.temperature.max"),
            ("dev-b", "env.temperature"),
            ("dev-b", "power"),
        ]),
        "overlapping patterns deliver each message once"
    );
}

#[tokio::test]
async fn resubscribing_a_pattern_replaces_its_filter() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.subscribe_filtered(&["env.*"], &["dev-a"], &[]).await;
    d.subscribe_filtered(&["env.*"], &["dev-b"], &[]).await;
    let mut a = hub.device("dev-a").await;
    let mut b = hub.device("dev-b").await;
    a.send_telemetry("env.t", vec![]).await;
    b.send_telemetry("env.t", vec![]).await;
    let t = d.expect_telemetry().await;
    assert_eq!(
        t.device_id, "dev-b",
        "the second Subscribe replaced the filter"
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_subscribed_lists_what_remains() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    let mut dev = hub.device("dev-1").await;
    assert_eq!(
        d.subscribe(&["power.battery", "env.*"]).await,
        ["env.*", "power.battery"]
    );
    dev.send_telemetry("env.t", vec![]).await;
    assert_eq!(d.expect_telemetry().await.category, "env.t");

    assert_eq!(d.unsubscribe(&["env.*"]).await, ["power.battery"]);
    // Unknown names are ignored.
    assert_eq!(d.unsubscribe(&["nope"]).await, ["power.battery"]);
    dev.send_telemetry("env.t", vec![]).await;
    dev.send_telemetry("power.battery", vec![]).await;
    let t = d.expect_telemetry().await;
    assert_eq!(
        t.category, "power.battery",
        "env.t must not arrive after unsubscribing"
    );

    assert!(d.unsubscribe(&[]).await.is_empty(), "empty: drop all");
    dev.send_telemetry("power.battery", vec![]).await;
    dev.send_telemetry("env.t", vec![]).await;
    // Marker: subscribe anew and publish after the unwanted messages.
    d.subscribe(&["marker"]).await;
    dev.send_telemetry("marker", vec![]).await;
    assert_eq!(
        d.expect_telemetry().await.category,
        "marker",
        "nothing arrives after unsubscribing from everything"
    );
}

#[tokio::test]
async fn invalid_patterns_are_refused_with_invalid_subscription() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["ok"]).await;
    for bad in ["env.*.x", "", "a..b", "**", "a b", "env.", ".env"] {
        d.send(&telehub::proto::Envelope {
            body: Some(telehub::proto::envelope::Body::Subscribe(
                telehub::proto::Subscribe {
                    categories: vec!["fine".into(), bad.into()],
                    ..Default::default()
                },
            )),
        })
        .await;
        let e = d.expect_error().await;
        assert_eq!(code(&e), Code::InvalidSubscription, "{bad:?}: {e:?}");
        assert!(!e.message.is_empty());
        // A valid Subscribe resets the strike count, and shows that nothing of the
        // refused one (not even its valid pattern) was applied.
        assert_eq!(d.subscribe(&["ok"]).await, ["ok"], "after {bad:?}");
    }
    // The connection survived all of it.
    let mut dev = hub.device("dev-1").await;
    dev.send_telemetry("ok", vec![]).await;
    assert_eq!(d.expect_telemetry().await.category, "ok");
}
