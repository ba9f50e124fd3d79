//! Notifications from the device's side: an operator pushes over REST, devices
//! online or not receive, acknowledge, get CRITICAL ones again until they do, and
//! the status API tells the operator where every device stands.

mod common;

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use common::*;
use telehub::{
    auth::Role,
    http::api::{CountsBody, DeviceBody},
    notify::request::MAX_PAYLOAD,
    proto::notification::Severity,
};
use tokio::time::Instant;

fn counts(pending: u64, delivered: u64, acknowledged: u64, expired: u64) -> CountsBody {
    CountsBody {
        pending,
        delivered,
        acknowledged,
        expired,
        total: pending + delivered + acknowledged + expired,
    }
}

fn severity(n: &telehub::proto::Notification) -> Severity {
    Severity::try_from(n.severity).unwrap_or(Severity::Unspecified)
}

async fn an_online_device_receives_a_critical_notification_and_acks_it() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut dev = hub.device("dev-1").await;

    // The largest payload a notification may carry, which deflate cannot shrink.
    let payload = incompressible(MAX_PAYLOAD, 7);
    let mut req = notification("critical", to_devices(&["dev-1"]), "Door open");
    req.body = "Cabinet 4 has been open for 10 minutes".into();
    req.payload = Some(STANDARD.encode(&payload));
    req.ttl = Some("10m".into());
    let created = api.create(&req).await.expect("POST /v1/notifications");
    assert_eq!(created.targets, 1);
    assert_eq!(created.expires_ms - created.created_ms, 600_000);

    let n = dev.expect_notification().await;
    assert_eq!(n.id, created.id);
    assert_eq!(severity(&n), Severity::Critical);
    assert_eq!(n.title, "Door open");
    assert_eq!(n.body, "Cabinet 4 has been open for 10 minutes");
    assert_eq!(n.payload, payload);
    assert_eq!(
        (n.created_ms, n.expires_ms),
        (created.created_ms, created.expires_ms)
    );
    assert!(!n.redelivery, "a first delivery is not a redelivery");

    // Written but not acknowledged: a CRITICAL notification is not done yet.
    let s = wait_status(&api, &n.id, "delivered to dev-1", |s| {
        row(s, "dev-1").state == "delivered"
    })
    .await;
    assert_eq!(s.summary.counts, counts(0, 1, 0, 0));
    assert!(!s.summary.complete);
    assert_eq!(row(&s, "dev-1").attempts, 1);
    assert_eq!(row(&s, "dev-1").acked_ms, None);

    dev.ack(&n.id).await;
    let s = wait_status(&api, &n.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 0, 1, 0));
    assert_eq!(s.devices.len(), 1);
    let r = row(&s, "dev-1");
    assert_eq!((r.state.as_str(), r.attempts), ("acknowledged", 1));
    let sent = r.last_sent_ms.expect("last_sent_ms");
    let acked = r.acked_ms.expect("acked_ms");
    assert!(created.created_ms <= sent && sent <= acked, "{r:?}");
    assert!(s.summary.completed_ms.is_some_and(|c| c >= acked));
    // The rest of the status is the notification as created.
    assert_eq!(s.summary.severity, "critical");
    assert_eq!(s.summary.title, "Door open");
    assert_eq!(s.summary.body, "Cabinet 4 has been open for 10 minutes");
    assert_eq!(s.summary.created_by, "operator");
    assert_eq!(
        s.summary.targets,
        serde_json::json!({"device_ids": ["dev-1"]})
    );
    assert_eq!(STANDARD.decode(&s.payload).unwrap(), payload);
    assert_eq!(s.next, None);
}

async fn an_offline_device_receives_it_when_it_connects() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    // dev-gone was online once and left; dev-new has never connected.
    let gone = hub.device("dev-gone").await;
    assert_eq!(gone.close().await, 1000);

    let created = api
        .create(&notification(
            "critical",
            to_devices(&["dev-gone", "dev-new"]),
            "Firmware recall",
        ))
        .await
        .expect("POST");
    assert_eq!(created.targets, 2);
    let s = api.status(&created.id, None, None, 10).await.unwrap();
    assert_eq!(s.summary.counts, counts(2, 0, 0, 0));
    for d in &s.devices {
        assert_eq!((d.state.as_str(), d.attempts), ("pending", 0), "{d:?}");
        assert_eq!(d.last_sent_ms, None);
    }
    // Several progress ticks later nothing has changed: nobody is there to take it.
    tokio::time::sleep(hub.app().config.notify.progress_interval * 3).await;
    let s = api.status(&created.id, None, None, 10).await.unwrap();
    assert_eq!(s.summary.counts, counts(2, 0, 0, 0));
    assert!(!s.summary.complete);

    let mut new = hub.device("dev-new").await;
    let n = new.expect_notification().await;
    assert_eq!((n.id.as_str(), n.redelivery), (created.id.as_str(), false));
    new.ack(&n.id).await;
    let s = wait_status(&api, &n.id, "dev-new acknowledged", |s| {
        row(s, "dev-new").state == "acknowledged"
    })
    .await;
    assert_eq!(s.summary.counts, counts(1, 0, 1, 0));
    assert_eq!(row(&s, "dev-gone").state, "pending");
    assert!(!s.summary.complete);

    let mut back = hub.device("dev-gone").await;
    let n = back.expect_notification().await;
    assert_eq!((n.id.as_str(), n.redelivery), (created.id.as_str(), false));
    back.ack(&n.id).await;
    let s = wait_status(&api, &n.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 0, 2, 0));
}

async fn a_tag_selector_targets_the_registered_devices_carrying_the_tags() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    // Registered through their tokens' tags on an earlier connection.
    for (id, fleet) in [("north-1", "north"), ("south-1", "south")] {
        let d = hub.device_tagged(id, &[("fleet", fleet)]).await;
        d.close().await;
    }
    // Registered ahead of its first connection.
    let tags = tag_map(&[("fleet", "north"), ("site", "x")]);
    let put = api
        .put_device("north-2", &DeviceBody { tags })
        .await
        .expect("PUT /v1/devices/north-2");
    assert_eq!(put.last_seen_ms, None);
    // Online while the notification is created: one of the fleet, two outside it.
    let mut north3 = hub.device_tagged("north-3", &[("fleet", "north")]).await;
    let mut south2 = hub.device_tagged("south-2", &[("fleet", "south")]).await;
    let mut plain = hub.device("plain-1").await;
    for id in ["north-3", "south-2", "plain-1"] {
        wait_registered(&api, id).await;
    }

    let created = api
        .create(&notification(
            "critical",
            to_tags(&[("fleet", "north")]),
            "Storm warning",
        ))
        .await
        .expect("POST");
    assert_eq!(created.targets, 3);
    let s = api.status(&created.id, None, None, 100).await.unwrap();
    let ids: Vec<&str> = s.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["north-1", "north-2", "north-3"]);
    assert_eq!(
        s.summary.targets,
        serde_json::json!({"tags": {"fleet": "north"}})
    );

    let n = north3.expect_notification().await;
    assert_eq!(n.id, created.id);
    north3.ack(&n.id).await;
    south2.expect_nothing(Duration::from_millis(300)).await;
    plain.expect_nothing(Duration::from_millis(300)).await;

    // The others get it when they connect, even with tokens carrying no tags (the
    // registry keeps what it knows); a south device coming back gets nothing.
    let mut south1 = hub.device("south-1").await;
    for id in ["north-1", "north-2"] {
        let mut d = hub.device(id).await;
        let n = d.expect_notification().await;
        assert_eq!(n.id, created.id, "{id}");
        d.ack(&n.id).await;
    }
    south1.expect_nothing(Duration::from_millis(300)).await;
    let s = wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 0, 3, 0));
    let ids: Vec<&str> = s.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["north-1", "north-2", "north-3"]);
}

async fn an_unacknowledged_critical_notification_is_sent_again_backing_off_until_acked() {
    let hub = Hub::with(|c| c.notify.ack_timeout = Duration::from_millis(300)).await;
    let api = hub.api(Role::Operator);
    let mut dev = hub.device("dev-1").await;
    let created = api
        .create(&notification(
            "critical",
            to_devices(&["dev-1"]),
            "Overheat",
        ))
        .await
        .expect("POST");

    let first = dev.expect_notification().await;
    let t1 = Instant::now();
    assert!(!first.redelivery);
    let second = dev.expect_notification().await;
    let t2 = Instant::now();
    let third = dev.expect_notification().await;
    let t3 = Instant::now();
    for again in [&second, &third] {
        assert_eq!(again.id, created.id);
        assert!(again.redelivery, "a resend is flagged: {again:?}");
        assert_eq!(
            (&again.title, again.expires_ms),
            (&first.title, first.expires_ms)
        );
    }
    // ack_timeout (300 ms ± 10 %), then twice that: more than any single wait.
    let (gap1, gap2) = (t2 - t1, t3 - t2);
    assert!(gap1 >= Duration::from_millis(200), "resent after {gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(400),
        "no back-off: resent after {gap1:?}, then {gap2:?}"
    );

    dev.ack(&created.id).await;
    let s = wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 0, 1, 0));
    // The next resend would have been due ~1.2 s after the third copy.
    dev.expect_nothing(Duration::from_millis(1500)).await;
    let s = api.status(&created.id, None, None, 10).await.unwrap();
    let r = row(&s, "dev-1");
    assert_eq!((r.state.as_str(), r.attempts), ("acknowledged", 3), "{r:?}");

    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_notifications_delivered_total"), 1.0);
    assert_eq!(m.get("telehub_notifications_redelivered_total"), 2.0);
    assert_eq!(m.get("telehub_notifications_acked_total"), 1.0);
}

async fn resends_back_off_no_further_than_max_retry_interval() {
    let hub = Hub::with(|c| {
        c.notify.ack_timeout = Duration::from_millis(200);
        c.notify.max_retry_interval = Duration::from_millis(300);
    })
    .await;
    let api = hub.api(Role::Operator);
    let mut dev = hub.device("dev-1").await;
    let created = api
        .create(&notification("critical", to_devices(&["dev-1"]), "Capped"))
        .await
        .expect("POST");
    let mut times = Vec::new();
    for i in 0..5 {
        let n = dev.expect_notification().await;
        times.push(Instant::now());
        assert_eq!((n.id.as_str(), n.redelivery), (created.id.as_str(), i > 0));
    }
    // Waits of 200, then 300 (not 400), 300 (not 800), 300 ms (not 1.6 s), ± 10 %.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[3] < Duration::from_millis(800),
        "the wait grew past max_retry_interval: {gaps:?}"
    );
    assert!(
        times[4] - times[0] < Duration::from_millis(2000),
        "uncapped, four resends take 3 s: {gaps:?}"
    );
    dev.ack(&created.id).await;
    wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
}

async fn a_device_that_reconnects_without_acking_gets_it_again_as_a_redelivery() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut dev = hub.device("dev-1").await;
    let created = api
        .create(&notification("critical", to_devices(&["dev-1"]), "Reboot"))
        .await
        .expect("POST");
    assert!(!dev.expect_notification().await.redelivery);
    dev.close().await;
    wait_status(&api, &created.id, "delivered", |s| {
        row(s, "dev-1").state == "delivered"
    })
    .await;

    let mut dev = hub.device("dev-1").await;
    let n = dev.expect_notification().await;
    assert_eq!(n.id, created.id);
    assert!(n.redelivery, "written before, on the previous connection");
    dev.ack(&n.id).await;
    let s = wait_status(&api, &n.id, "complete", |s| s.summary.complete).await;
    let r = row(&s, "dev-1");
    assert_eq!((r.state.as_str(), r.attempts), ("acknowledged", 2));
}

async fn notifications_nobody_takes_expire_and_late_acks_change_nothing() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut silent = hub.device("dev-silent").await;
    let mut req = notification(
        "critical",
        to_devices(&["dev-silent", "dev-away"]),
        "Short-lived",
    );
    req.ttl = Some("1s".into());
    let critical = api.create(&req).await.expect("POST critical");
    assert_eq!(critical.expires_ms - critical.created_ms, 1000);
    req.severity = "info".into();
    let info = api.create(&req).await.expect("POST info");

    let n = silent.expect_notification().await;
    assert_eq!(n.id, critical.id);
    assert_eq!(silent.expect_notification().await.id, info.id);

    let s = wait_status(&api, &critical.id, "complete", |s| s.summary.complete).await;
    assert!(s.summary.completed_ms.unwrap() >= critical.expires_ms);
    assert_eq!(s.summary.counts, counts(0, 0, 0, 2));
    let r = row(&s, "dev-silent");
    assert_eq!(
        (r.state.as_str(), r.attempts, r.acked_ms),
        ("expired", 1, None)
    );
    let r = row(&s, "dev-away");
    assert_eq!((r.state.as_str(), r.attempts), ("expired", 0));
    // INFO: what was delivered stays delivered; only the undelivered expires.
    let s = wait_status(&api, &info.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 1, 0, 1));
    assert_eq!(row(&s, "dev-silent").state, "delivered");
    assert_eq!(row(&s, "dev-away").state, "expired");

    // A late ack is harmless: no Error, and it changes nothing.
    silent.ack_silently(&n.id).await;
    let s = api.status(&critical.id, None, None, 10).await.unwrap();
    assert_eq!(s.summary.counts, counts(0, 0, 0, 2));
    assert_eq!(row(&s, "dev-silent").acked_ms, None);
    // The device that was away gets nothing when it comes.
    let mut away = hub.device("dev-away").await;
    away.expect_nothing(Duration::from_millis(300)).await;

    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_notifications_expired_total"), 3.0);
    assert_eq!(m.get("telehub_notifications_acked_total"), 0.0);
}

async fn acks_for_notifications_not_addressed_to_the_device_are_refused() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut a = hub.device("dev-a").await;
    let mut b = hub.device("dev-b").await;
    let created = api
        .create(&notification("critical", to_devices(&["dev-b"]), "For b"))
        .await
        .expect("POST");
    let n = b.expect_notification().await;

    // While it is open (answered from memory)...
    let e = a.ack_refused(&n.id).await;
    assert!(e.message.contains(&n.id), "{e:?}");
    a.ack_refused("n-never-created").await;
    // ...its target's ack and a repeated one are answered with nothing.
    b.ack_silently(&n.id).await;
    b.ack_silently(&n.id).await;
    let s = wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 0, 1, 0));
    // ...and once it is complete (answered from the store), the same.
    a.ack_refused(&n.id).await;
    b.ack_silently(&n.id).await;

    let s = api.status(&created.id, None, None, 10).await.unwrap();
    assert_eq!(s.devices.len(), 1, "dev-a is no target: {s:?}");
    assert_eq!(
        hub.scrape().await.get("telehub_notifications_acked_total"),
        1.0
    );

    // Refused acks are strikes: `limits.max_malformed` (5) in a row close the device
    // with 1008, so a device cannot make the hub answer an endless stream of them.
    let mut c = hub.device("dev-c").await;
    for i in 0..4 {
        c.ack_refused(&format!("bogus-{i}")).await;
    }
    c.ack("bogus-4").await;
    assert_eq!(c.expect_close().await, 1008);
}

async fn notifications_created_while_a_device_was_offline_arrive_in_creation_order() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let mut ids = Vec::new();
    for (severity, title) in [
        ("critical", "first"),
        ("info", "second"),
        ("warning", "third"),
    ] {
        let c = api
            .create(&notification(severity, to_devices(&["dev-1"]), title))
            .await
            .expect("POST");
        ids.push(c.id);
    }
    let mut dev = hub.device("dev-1").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let n = dev.expect_notification().await;
        got.push((n.id, n.title));
    }
    let want: Vec<(String, String)> = ids
        .into_iter()
        .zip(["first", "second", "third"].map(String::from))
        .collect();
    assert_eq!(got, want);
}

async fn info_and_warning_are_delivered_once_and_acks_are_accepted() {
    let hub = Hub::with(|c| c.notify.ack_timeout = Duration::from_millis(300)).await;
    let api = hub.api(Role::Operator);
    let mut on = hub.device("dev-on").await;
    let info = api
        .create(&notification(
            "info",
            to_devices(&["dev-on", "dev-off"]),
            "Maintenance tonight",
        ))
        .await
        .expect("POST info");
    let n = on.expect_notification().await;
    assert_eq!(
        (n.id.as_str(), severity(&n), n.redelivery),
        (info.id.as_str(), Severity::Info, false)
    );
    let s = wait_status(&api, &info.id, "delivered to dev-on", |s| {
        row(s, "dev-on").state == "delivered"
    })
    .await;
    assert_eq!(s.summary.counts, counts(1, 1, 0, 0));
    assert!(!s.summary.complete, "dev-off has not got it");
    // Never resent, though never acknowledged (ack_timeout is 300 ms), not even
    // after a reconnect.
    on.expect_nothing(Duration::from_millis(800)).await;
    on.close().await;
    let mut on = hub.device("dev-on").await;
    on.expect_nothing(Duration::from_millis(300)).await;

    // Kept for the offline target until it connects; then every target has it.
    let mut off = hub.device("dev-off").await;
    assert_eq!(off.expect_notification().await.id, info.id);
    let s = wait_status(&api, &info.id, "complete", |s| s.summary.complete).await;
    assert_eq!(s.summary.counts, counts(0, 2, 0, 0));
    assert_eq!(row(&s, "dev-on").attempts, 1);
    // An ack is still accepted (from the store: the notification is complete).
    off.ack_silently(&info.id).await;
    let s = wait_status(&api, &info.id, "dev-off acknowledged", |s| {
        row(s, "dev-off").state == "acknowledged"
    })
    .await;
    assert_eq!(s.summary.counts, counts(0, 1, 1, 0));
    assert!(row(&s, "dev-off").acked_ms.is_some());

    // WARNING, acknowledged while still open (another target is pending).
    let warning = api
        .create(&notification(
            "warning",
            to_devices(&["dev-on", "dev-later"]),
            "Low battery",
        ))
        .await
        .expect("POST warning");
    let n = on.expect_notification().await;
    assert_eq!(
        (n.id.as_str(), severity(&n)),
        (warning.id.as_str(), Severity::Warning)
    );
    on.ack_silently(&n.id).await;
    let s = wait_status(&api, &warning.id, "dev-on acknowledged", |s| {
        row(s, "dev-on").state == "acknowledged"
    })
    .await;
    assert_eq!(s.summary.counts, counts(1, 0, 1, 0));
    assert!(!s.summary.complete);

    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_notifications_acked_total"), 2.0);
    assert_eq!(m.get("telehub_notifications_redelivered_total"), 0.0);
}

common::on_both_stores!(
    an_online_device_receives_a_critical_notification_and_acks_it,
    an_offline_device_receives_it_when_it_connects,
    a_tag_selector_targets_the_registered_devices_carrying_the_tags,
    an_unacknowledged_critical_notification_is_sent_again_backing_off_until_acked,
    resends_back_off_no_further_than_max_retry_interval,
    a_device_that_reconnects_without_acking_gets_it_again_as_a_redelivery,
    notifications_nobody_takes_expire_and_late_acks_change_nothing,
    acks_for_notifications_not_addressed_to_the_device_are_refused,
    notifications_created_while_a_device_was_offline_arrive_in_creation_order,
    info_and_warning_are_delivered_once_and_acks_are_accepted,
);
