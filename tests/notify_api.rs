//! Notifications through the REST API: what it refuses and why, the list of
//! notifications, a notification's status paged by device, the device registry,
//! and the metrics an operator graphs.

mod common;

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD, Engine};
use common::*;
use telehub::{
    auth::Role,
    http::api::{CreateBody, DeviceBody, TargetsBody},
    notify::request::MAX_PAYLOAD,
};

async fn the_rest_api_refuses_what_it_cannot_accept() {
    let hub = Hub::start().await;
    let operator = hub.api(Role::Operator);
    let viewer = hub.api(Role::Viewer);
    let valid =
        serde_json::to_string(&notification("critical", to_devices(&["dev-1"]), "t")).unwrap();

    let (status, _, body) = hub
        .request("POST", "/v1/notifications", None, Some(&valid))
        .await;
    assert_eq!(status, 401, "no token: {body}");
    let device = hub.token("dev-1", Role::Device, &[]);
    let (status, _, body) = hub
        .request("POST", "/v1/notifications", Some(&device), Some(&valid))
        .await;
    assert_eq!(status, 403, "a device token: {body}");
    let req = notification("critical", to_devices(&["dev-1"]), "t");
    assert_eq!(
        status_of(viewer.create(&req).await),
        403,
        "viewers only read"
    );

    let op = hub.token("operator", Role::Operator, &[]);
    for bad in [
        "{not json",
        r#"{"targets":{"all":true},"severity":"info"}"#,
        r#"{"targets":{"all":true},"severity":"info","title":"t","colour":"red"}"#,
    ] {
        let (status, _, body) = hub
            .request("POST", "/v1/notifications", Some(&op), Some(bad))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!body.trim().is_empty(), "a refusal says why");
    }

    let both = CreateBody {
        targets: TargetsBody {
            device_ids: vec!["dev-1".into()],
            all: true,
            ..Default::default()
        },
        ..req.clone()
    };
    let loud = CreateBody {
        severity: "loud".into(),
        ..req.clone()
    };
    let untitled = CreateBody {
        title: String::new(),
        ..req.clone()
    };
    let forever = CreateBody {
        ttl: Some("1000d".into()),
        ..req.clone()
    };
    let not_base64 = CreateBody {
        payload: Some("*not base64*".into()),
        ..req.clone()
    };
    let too_big = CreateBody {
        payload: Some(STANDARD.encode(vec![0u8; MAX_PAYLOAD + 1])),
        ..req.clone()
    };
    let long_id = "x".repeat(129);
    let long_id = notification("critical", to_devices(&[&long_id]), "t");
    let nobody = notification("critical", to_devices(&[]), "t");
    for (what, body) in [
        ("device_ids and all", both),
        ("unknown severity", loud),
        ("empty title", untitled),
        ("ttl over max_ttl", forever),
        ("bad payload", not_base64),
        ("payload over 16 KiB", too_big),
        ("device id over 128 bytes", long_id),
        ("no targets", nobody),
    ] {
        assert_eq!(status_of(operator.create(&body).await), 400, "{what}");
    }
    let nobody_north = notification("critical", to_tags(&[("fleet", "north")]), "t");
    assert_eq!(
        status_of(operator.create(&nobody_north).await),
        422,
        "a tag selector that matches no registered device"
    );

    assert_eq!(
        status_of(operator.status("n-nope", None, None, 10).await),
        404
    );
    let (status, _, _) = hub.request("GET", "/v1/notifications", None, None).await;
    assert_eq!(status, 401, "reading needs a token too");
    let (status, _, _) = hub
        .request("GET", "/v1/notifications", Some(&device), None)
        .await;
    assert_eq!(status, 403, "devices do not read the API");
    let (status, _, _) = hub
        .request("PUT", "/v1/devices/dev-1", Some(&op), Some("{\"tags\":[]}"))
        .await;
    assert_eq!(status, 400, "tags are an object");
    let put = viewer.put_device("dev-1", &DeviceBody::default()).await;
    assert_eq!(status_of(put), 403);
    // Nothing refused was stored.
    assert!(operator.list(10).await.unwrap().notifications.is_empty());
}

async fn notifications_are_listed_newest_first_and_device_rows_are_paged() {
    let hub = Hub::start().await;
    let operator = hub.api(Role::Operator);
    let viewer = hub.api(Role::Viewer);
    // The raw answer to a POST: 201, where to find it, and what was stored.
    let op = hub.token("operator", Role::Operator, &[]);
    let body = serde_json::to_string(&notification("info", to_devices(&["d1"]), "raw")).unwrap();
    let (status, head, body) = hub
        .request("POST", "/v1/notifications", Some(&op), Some(&body))
        .await;
    assert_eq!(status, 201, "{body}");
    let raw: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    let raw_id = raw["id"].as_str().expect("an id").to_string();
    assert_eq!(raw["targets"], 1);
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("location: /v1/notifications/{raw_id}")),
        "{head}"
    );
    let devices = ["d1", "d2", "d3", "d4", "d5"];
    let mut ids = Vec::new();
    for title in ["one", "two", "three"] {
        let c = operator
            .create(&notification("warning", to_devices(&devices), title))
            .await
            .expect("POST");
        assert_eq!(c.targets, 5);
        ids.push(c.id);
    }
    let list = viewer.list(10).await.expect("GET /v1/notifications");
    let listed: Vec<(&str, &str)> = list
        .notifications
        .iter()
        .map(|n| (n.id.as_str(), n.title.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (ids[2].as_str(), "three"),
            (ids[1].as_str(), "two"),
            (ids[0].as_str(), "one"),
            (raw_id.as_str(), "raw"),
        ]
    );
    assert_eq!(list.notifications[0].counts.pending, 5);
    assert_eq!(list.notifications[0].severity, "warning");
    let n = &list.notifications[0];
    assert_eq!(n.expires_ms - n.created_ms, 3_600_000, "notify.default_ttl");
    assert_eq!(viewer.list(2).await.unwrap().notifications.len(), 2);

    // Pages of two, ordered by device id, each naming where the next starts.
    let id = &ids[0];
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = viewer
            .status(id, None, after.as_deref(), 2)
            .await
            .expect("a page");
        assert_eq!(page.summary.counts.total, 5, "counts cover every device");
        let names: Vec<String> = page.devices.iter().map(|d| d.device_id.clone()).collect();
        pages.push(names);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [vec!["d1", "d2"], vec!["d3", "d4"], vec!["d5"]]);

    // The state filter: d3 takes the first one, the others are still pending.
    let mut d3 = hub.device("d3").await;
    for want in &ids {
        let n = d3.expect_notification().await;
        assert_eq!(&n.id, want);
    }
    d3.ack(id).await;
    wait_status(&operator, id, "d3 acknowledged", |s| {
        row(s, "d3").state == "acknowledged"
    })
    .await;
    let acked = viewer
        .status(id, Some("acknowledged"), None, 10)
        .await
        .unwrap();
    let names: Vec<&str> = acked.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(names, ["d3"]);
    assert_eq!(
        acked.summary.counts.acknowledged, 1,
        "counts are not filtered"
    );
    let pending = viewer.status(id, Some("pending"), None, 3).await.unwrap();
    let names: Vec<&str> = pending
        .devices
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(names, ["d1", "d2", "d4"]);
    assert_eq!(pending.next.as_deref(), Some("d4"));
    let rest = viewer
        .status(id, Some("pending"), Some("d4"), 3)
        .await
        .unwrap();
    assert_eq!(rest.devices.len(), 1);
    assert_eq!(
        (rest.devices[0].device_id.as_str(), rest.next),
        ("d5", None)
    );
    let expired = viewer.status(id, Some("expired"), None, 3).await.unwrap();
    assert!(expired.devices.is_empty());
    assert_eq!(
        status_of(viewer.status(id, Some("lost"), None, 3).await),
        400
    );
}

async fn the_device_registry_lists_registered_devices_with_their_tags() {
    let hub = Hub::start().await;
    let operator = hub.api(Role::Operator);
    let viewer = hub.api(Role::Viewer);
    let put = operator
        .put_device(
            "pump-2",
            &DeviceBody {
                tags: tag_map(&[("site", "x")]),
            },
        )
        .await
        .expect("PUT");
    assert_eq!((put.id.as_str(), put.last_seen_ms), ("pump-2", None));
    assert_eq!(put.tags, tag_map(&[("site", "x")]));
    let _online = hub.device_tagged("pump-1", &[("fleet", "north")]).await;
    wait_registered(&viewer, "pump-1").await;
    // A token's tags are merged into the stored ones, key by key.
    let dev = hub.device_tagged("pump-2", &[("fleet", "south")]).await;
    dev.close().await;
    // Replacing the tags of a device replaces all of them.
    operator
        .put_device(
            "pump-3",
            &DeviceBody {
                tags: tag_map(&[("a", "1")]),
            },
        )
        .await
        .unwrap();
    let put = operator
        .put_device(
            "pump-3",
            &DeviceBody {
                tags: tag_map(&[("b", "2")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(put.tags, tag_map(&[("b", "2")]));

    let all = viewer.devices(None, 100).await.expect("GET /v1/devices");
    let got: Vec<(&str, &BTreeMap<String, String>, bool)> = all
        .devices
        .iter()
        .map(|d| (d.id.as_str(), &d.tags, d.last_seen_ms.is_some()))
        .collect();
    assert_eq!(
        got,
        [
            ("pump-1", &tag_map(&[("fleet", "north")]), true),
            (
                "pump-2",
                &tag_map(&[("fleet", "south"), ("site", "x")]),
                true
            ),
            ("pump-3", &tag_map(&[("b", "2")]), false),
        ]
    );
    let page = viewer.devices(Some("pump-1"), 1).await.unwrap();
    assert_eq!(page.devices.len(), 1);
    assert_eq!(page.devices[0].id, "pump-2");

    // `all` is every registered device; explicit ids are taken as given, once each.
    let all = TargetsBody {
        all: true,
        ..Default::default()
    };
    let c = operator
        .create(&notification("info", all, "everyone"))
        .await
        .unwrap();
    assert_eq!(c.targets, 3);
    let s = viewer.status(&c.id, None, None, 10).await.unwrap();
    let ids: Vec<&str> = s.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["pump-1", "pump-2", "pump-3"]);
    assert_eq!(s.summary.targets, serde_json::json!("all"));
    let c = operator
        .create(&notification(
            "info",
            to_devices(&["pump-9", "pump-1", "pump-9"]),
            "twice",
        ))
        .await
        .unwrap();
    assert_eq!(c.targets, 2, "unregistered ids count; repeated ones once");
}

async fn metrics_count_accepted_delivered_and_acknowledged_notifications() {
    let hub = Hub::start().await;
    let api = hub.api(Role::Operator);
    let before = hub.scrape().await;
    assert_eq!(before.get("telehub_notifications_acked_total"), 0.0);
    let mut dev = hub.device("dev-1").await;
    let critical = api
        .create(&notification("critical", to_devices(&["dev-1"]), "c"))
        .await
        .unwrap();
    let n = dev.expect_notification().await;
    dev.ack(&n.id).await;
    api.create(&notification("info", to_devices(&["dev-1", "dev-2"]), "i"))
        .await
        .unwrap();
    dev.expect_notification().await;
    wait_status(&api, &critical.id, "complete", |s| s.summary.complete).await;

    let m = hub.scrape().await;
    let get = |s: &str| m.get(s);
    assert_eq!(
        get("telehub_notifications_accepted_total{severity=\"critical\"}"),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        get("telehub_notifications_accepted_total{severity=\"info\"}"),
        1.0
    );
    assert_eq!(
        get("telehub_notifications_accepted_total{severity=\"warning\"}"),
        0.0
    );
    assert_eq!(
        get("telehub_notifications_delivered_total"),
        2.0,
        "one each"
    );
    assert_eq!(get("telehub_notifications_redelivered_total"), 0.0);
    assert_eq!(get("telehub_notifications_acked_total"), 1.0);
    assert_eq!(get("telehub_notifications_expired_total"), 0.0);
    assert_eq!(get("telehub_notification_ack_seconds_count"), 1.0);
    let sum = get("telehub_notification_ack_seconds_sum");
    assert!(sum > 0.0 && sum < T.as_secs_f64(), "ack latency {sum}");
}

/// A completed notification stays queryable for `notify.retention`, then is pruned:
/// its status is 404 and it leaves the list.
async fn completed_notifications_are_pruned_after_their_retention() {
    let hub = Hub::with(|c| c.notify.retention = std::time::Duration::from_millis(300)).await;
    let api = hub.api(Role::Operator);
    let mut dev = hub.device("dev-1").await;
    let created = api
        .create(&notification(
            "critical",
            to_devices(&["dev-1"]),
            "short-lived",
        ))
        .await
        .unwrap();
    let n = dev.expect_notification().await;
    dev.ack(&n.id).await;
    let done = wait_status(&api, &created.id, "complete", |s| s.summary.complete).await;
    assert_eq!(done.summary.counts.acknowledged, 1);
    // Pruned within about retention + a tick; bounded wait.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match api.status(&created.id, None, None, 10).await {
            Ok(_) => {}
            Err(telehub::client::ApiError::Status { status, .. }) if status == 404 => break,
            Err(e) => panic!("GET status: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} was not pruned within 10 s",
            created.id
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let list = api.list(100).await.unwrap();
    assert!(
        list.notifications.iter().all(|s| s.id != created.id),
        "{list:?}"
    );
}

common::on_both_stores!(
    the_rest_api_refuses_what_it_cannot_accept,
    notifications_are_listed_newest_first_and_device_rows_are_paged,
    the_device_registry_lists_registered_devices_with_their_tags,
    metrics_count_accepted_delivered_and_acknowledged_notifications,
    completed_notifications_are_pruned_after_their_retention,
);
