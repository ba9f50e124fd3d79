//! Notifications over the dashboard WebSocket: operators push them and get the
//! request id back, viewers may not, and any dashboard can watch every open
//! notification's delivery progress.

mod common;

use std::time::Duration;

use common::*;
use telehub::{
    auth::Role,
    proto::{
        envelope::Body, error::Code, notification::Severity, Envelope, NotificationRequest, Targets,
    },
    ws::Message,
};

fn request(request_id: &str, devices: &[&str], severity: Severity) -> Envelope {
    Envelope {
        body: Some(Body::NotificationRequest(NotificationRequest {
            request_id: request_id.into(),
            targets: Some(Targets {
                device_ids: devices.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            }),
            severity: severity as i32,
            title: "Pressure high".into(),
            body: "Line 2".into(),
            payload: vec![7, 7],
            ttl_seconds: 120,
        })),
    }
}

async fn operators_push_over_the_dashboard_websocket_and_watchers_see_progress() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Viewer);
    let mut watcher = hub.dashboard().await;
    watcher.watch_notifications(true).await;
    let mut a = hub.device("dev-a").await;
    let mut b = hub.device("dev-b").await;

    let mut operator = hub.operator_dashboard().await;
    operator
        .send(&request("req-1", &["dev-a", "dev-b"], Severity::Critical))
        .await;
    let accepted = operator
        .expect("NotificationAccepted", |b| match b {
            Body::NotificationAccepted(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(accepted.request_id, "req-1");
    assert_eq!(accepted.targets, 2);
    let id = accepted.id.clone();
    let s = api.status(&id, None, None, 10).await.expect("stored");
    assert_eq!(s.summary.created_by, "operator");
    assert_eq!(s.summary.expires_ms, accepted.expires_ms);
    assert_eq!(s.summary.expires_ms - s.summary.created_ms, 120_000);

    // Refusals carry the request id: a viewer may not push; an invalid request.
    let mut viewer = hub.dashboard().await;
    viewer
        .send(&request("req-2", &["dev-a"], Severity::Critical))
        .await;
    let e = viewer.expect_error().await;
    assert_eq!(
        (code(&e), e.request_id.as_str()),
        (Code::Forbidden, "req-2")
    );
    operator
        .send(&request("req-3", &["dev-a"], Severity::Unspecified))
        .await;
    let e = operator.expect_error().await;
    assert_eq!(
        (code(&e), e.request_id.as_str()),
        (Code::Malformed, "req-3")
    );
    operator.send(&request("req-4", &[], Severity::Info)).await;
    let e = operator.expect_error().await;
    assert_eq!(
        (code(&e), e.request_id.as_str()),
        (Code::Malformed, "req-4")
    );

    let na = a.expect_notification().await;
    let nb = b.expect_notification().await;
    for n in [&na, &nb] {
        assert_eq!(n.id, id);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("Pressure high", "Line 2")
        );
        assert_eq!(n.payload, [7, 7]);
    }
    // Both have it; nobody has acknowledged yet.
    let seen = watcher
        .expect_progress(&id, |p| p.delivered == 2 && p.acknowledged == 0)
        .await;
    let p = seen.last().unwrap();
    assert_eq!((p.targets, p.pending, p.complete), (2, 0, false));
    assert_eq!(p.title, "Pressure high");
    assert_eq!(p.severity, Severity::Critical as i32);
    assert_eq!(p.expires_ms, accepted.expires_ms);

    a.ack(&id).await;
    b.ack(&id).await;
    let seen = watcher.expect_progress(&id, |p| p.complete).await;
    let last = seen.last().unwrap();
    assert_eq!(
        (
            last.acknowledged,
            last.delivered,
            last.pending,
            last.expired
        ),
        (2, 0, 0, 0)
    );
    assert!(
        seen.windows(2)
            .all(|w| w[0].acknowledged <= w[1].acknowledged),
        "acknowledged never goes down: {seen:?}"
    );
    let s = wait_status(&api, &id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts.acknowledged, 2);
}

async fn a_json_dashboard_pushes_and_watches_in_the_proto3_json_mapping() {
    let hub = Hub::start().await;
    let token = hub.token("ops-web", Role::Operator, &[]);
    let mut web = hub
        .dashboard_with(&client_config(Some(&token), &[PROTOCOL_JSON]))
        .await;
    assert!(web.json);
    let mut dev = hub.device("dev-1").await;
    web.send_raw(Message::Text(
        r#"{"watchNotifications":{"watch":true}}"#.into(),
    ))
    .await;
    web.send_raw(Message::Text(
        r#"{"notificationRequest":{"requestId":"web-1","targets":{"deviceIds":["dev-1"]},
            "severity":"CRITICAL","title":"From the browser","payload":"AQI=","ttlSeconds":60}}"#
            .into(),
    ))
    .await;
    let accepted = web
        .expect("NotificationAccepted", |b| match b {
            Body::NotificationAccepted(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (accepted.request_id.as_str(), accepted.targets),
        ("web-1", 1)
    );
    let n = dev.expect_notification().await;
    assert_eq!(n.id, accepted.id);
    assert_eq!(n.severity, Severity::Critical as i32);
    assert_eq!(
        (n.title.as_str(), n.payload.as_slice()),
        ("From the browser", &[1u8, 2][..])
    );
    assert_eq!(n.expires_ms - n.created_ms, 60_000);
    dev.ack(&n.id).await;
    let seen = web.expect_progress(&n.id, |p| p.complete).await;
    assert_eq!(seen.last().unwrap().acknowledged, 1);

    web.send_raw(Message::Text(
        r#"{"notificationRequest":{"requestId":"web-2","targets":{"all":true},"severity":"LOUD","title":"x"}}"#.into(),
    ))
    .await;
    match web.next_event().await {
        // Not a valid enum name: the envelope does not decode, but the refusal
        // still names the request.
        Event::Text(t) => {
            let env: telehub::proto::Envelope = serde_json::from_str(&t).unwrap();
            let Some(telehub::proto::envelope::Body::Error(e)) = env.body else {
                panic!("expected an Error, got {t}")
            };
            assert_eq!(
                (code(&e), e.request_id.as_str()),
                (Code::Malformed, "web-2"),
                "{t}"
            );
        }
        other => panic!("expected an Error, got {other:?}"),
    }
}

async fn a_dashboard_that_starts_watching_gets_every_open_notification() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let open = api
        .create(&notification("critical", to_devices(&["away"]), "Open"))
        .await
        .unwrap();
    let mut watcher = hub.dashboard().await;
    watcher.watch_notifications(true).await;
    let seen = watcher.expect_progress(&open.id, |_| true).await;
    let p = &seen[0];
    assert_eq!((p.targets, p.pending, p.complete), (1, 1, false));
    assert_eq!(p.title, "Open");

    // Once it stops watching, changes no longer reach it.
    watcher.watch_notifications(false).await;
    let mut away = hub.device("away").await;
    let n = away.expect_notification().await;
    away.ack(&n.id).await;
    wait_status(&api, &open.id, "complete", |s| s.summary.complete).await;
    // Updates queued before the unwatch may still arrive; none may show the ack.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    while let Some(event) = watcher.next_event_within(left()).await {
        match event {
            Event::Envelope(Envelope {
                body: Some(Body::NotificationProgress(p)),
            }) => assert_eq!(p.acknowledged, 0, "progress after unwatching: {p:?}"),
            Event::Envelope(Envelope {
                body: Some(Body::Presence(_)),
            }) => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

async fn a_watching_dashboard_is_told_when_nobody_acknowledges_before_expiry() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut watcher = hub.dashboard().await;
    watcher.watch_notifications(true).await;
    let mut req = notification("critical", to_devices(&["away"]), "Brief");
    req.ttl = Some("500ms".into());
    let created = api.create(&req).await.unwrap();
    let seen = watcher.expect_progress(&created.id, |p| p.complete).await;
    let p = seen.last().unwrap();
    assert_eq!((p.expired, p.pending, p.acknowledged), (1, 0, 0));
    // No more updates for a complete notification.
    watcher.expect_nothing(Duration::from_millis(300)).await;
}

common::on_both_stores!(
    operators_push_over_the_dashboard_websocket_and_watchers_see_progress,
    a_json_dashboard_pushes_and_watches_in_the_proto3_json_mapping,
    a_dashboard_that_starts_watching_gets_every_open_notification,
    a_watching_dashboard_is_told_when_nobody_acknowledges_before_expiry,
);
