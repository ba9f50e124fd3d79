//! Scoped tokens: a device publishes only to its `publish` patterns; a dashboard
//! subscribes only within its `subscribe` patterns and hears of nothing outside its
//! `device_tags` (telemetry, history, presence, fleet statistics, notification
//! progress, REST reads); a scoped operator notifies only its devices. An
//! unscoped viewer beside it sees everything, so every absence below is the
//! scope's doing.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use telehub::{
    auth::{Role, Scope},
    hub::category::Pattern,
    proto::{envelope::Body, error::Code, Envelope, WatchFleet},
};

fn scoped(hub: &Hub, sub: &str, role: Role, scope: Scope, tags: &[(&str, &str)]) -> String {
    let tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    hub.key
        .issue_scoped(sub, role, tags, scope, Duration::from_secs(600))
}

fn patterns(list: &[&str]) -> Option<Vec<Pattern>> {
    Some(list.iter().map(|p| Pattern::parse(p).unwrap()).collect())
}

fn north() -> Option<telehub::hub::Tags> {
    Some([("fleet".to_string(), "north".to_string())].into())
}

/// Device ids a dashboard heard of, by kind of message, within `d`.
#[derive(Debug, Default)]
struct Heard {
    telemetry: BTreeSet<String>,
    presence: BTreeSet<String>,
    fleet: BTreeSet<String>,
    progress: BTreeSet<String>,
}

async fn listen(c: &mut Client, d: Duration) -> Heard {
    let mut heard = Heard::default();
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = c.next_event_within(left).await else {
            return heard;
        };
        let Event::Envelope(env) = event else {
            panic!("unexpected {event:?}");
        };
        match env.body {
            Some(Body::Telemetry(t)) => {
                heard.telemetry.insert(t.device_id);
            }
            Some(Body::History(h)) => heard
                .telemetry
                .extend(h.telemetry.into_iter().map(|t| t.device_id)),
            Some(Body::Presence(p)) => {
                heard.presence.insert(p.device_id);
            }
            Some(Body::FleetStats(f)) => heard
                .fleet
                .extend(f.devices.into_iter().map(|s| s.device_id)),
            Some(Body::NotificationProgress(p)) => {
                heard.progress.insert(p.id);
            }
            _ => {}
        }
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_device_publishes_only_within_its_scope() {
    let hub = Hub::with(|c| c.limits.max_malformed = 3).await;
    let mut watcher = hub.dashboard().await;
    watcher.subscribe(&["*"]).await;
    let token = scoped(
        &hub,
        "dev-1",
        Role::Device,
        Scope {
            publish: patterns(&["env.*"]),
            ..Default::default()
        },
        &[],
    );
    let mut dev = hub
        .connect("/v1/device", &client_config(Some(&token), &[PROTOCOL]))
        .await
        .unwrap();
    dev.expect_welcome().await;
    dev.send_telemetry("env.t", vec![number("t", 1.0, "")])
        .await;
    assert_eq!(watcher.expect_telemetry().await.category, "env.t");
    for _ in 0..2 {
        dev.send_telemetry("power.v", vec![number("v", 1.0, "")])
            .await;
        assert_eq!(dev.expect_error().await.code, Code::Forbidden as i32);
    }
    watcher
        .expect_no_telemetry(Duration::from_millis(200))
        .await;
    // Strikes, as any refused message: the third in a row closes the connection.
    dev.send_telemetry("power.v", vec![number("v", 1.0, "")])
        .await;
    assert_eq!(dev.expect_close().await, 1008);
}

#[tokio::test]
async fn a_scoped_viewer_hears_of_nothing_outside_its_devices() {
    let hub = Hub::with(|c| c.dashboard.fleet_interval = Duration::from_millis(100)).await;
    let mut n1 = hub.device_tagged("north-1", &[("fleet", "north")]).await;
    let mut s1 = hub.device_tagged("south-1", &[("fleet", "south")]).await;
    n1.send_telemetry("env.t", vec![number("t", 1.0, "")]).await;
    s1.send_telemetry("env.t", vec![number("t", 2.0, "")]).await;
    hub.wait_metrics("both readings", |m| {
        m.get("telehub_telemetry_accepted_total") == 2.0
    })
    .await;

    let token = scoped(
        &hub,
        "ann",
        Role::Viewer,
        Scope {
            subscribe: patterns(&["env.*"]),
            device_tags: north(),
            ..Default::default()
        },
        &[],
    );
    let mut ann = hub
        .dashboard_with(&client_config(Some(&token), &[PROTOCOL]))
        .await;
    let mut all = hub.dashboard().await;
    // Outside the scope: refused, nothing applied.
    for (categories, tags) in [
        (vec!["power.*"], vec![]),
        (vec!["*"], vec![]),
        (vec!["env.*"], vec![("fleet", "south")]),
    ] {
        ann.send(&Envelope {
            body: Some(Body::Subscribe(telehub::proto::Subscribe {
                categories: categories.iter().map(|c| c.to_string()).collect(),
                tags: tags
                    .iter()
                    .map(|(k, v): &(&str, &str)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })),
        })
        .await;
        assert_eq!(
            ann.expect_error().await.code,
            Code::Forbidden as i32,
            "{categories:?}"
        );
    }
    assert!(ann.subscribe(&[]).await.is_empty(), "nothing was applied");
    for d in [&mut ann, &mut all] {
        d.subscribe(&["env.*"]).await;
        d.send(&Envelope {
            body: Some(Body::WatchFleet(WatchFleet { watch: true })),
        })
        .await;
        d.watch_notifications(true).await;
    }
    // Live telemetry and presence changes of both fleets, and a notification to
    // each fleet and one by device id.
    n1.send_telemetry("env.t", vec![number("t", 3.0, "")]).await;
    s1.send_telemetry("env.t", vec![number("t", 4.0, "")]).await;
    drop((n1, s1));
    let _n1 = hub.device_tagged("north-1", &[("fleet", "north")]).await;
    let _s1 = hub.device_tagged("south-1", &[("fleet", "south")]).await;
    let api = hub.api(Role::Operator);
    let mut ids = Vec::new();
    for targets in [
        to_tags(&[("fleet", "north")]),
        to_tags(&[("fleet", "south")]),
        to_devices(&["north-1"]),
    ] {
        ids.push(
            api.create(&notification("info", targets, "t"))
                .await
                .unwrap()
                .id,
        );
    }
    let (ann_heard, all_heard) = tokio::join!(
        listen(&mut ann, Duration::from_millis(1500)),
        listen(&mut all, Duration::from_millis(1500))
    );
    let both = set(&["north-1", "south-1"]);
    assert_eq!(all_heard.telemetry, both);
    assert_eq!(all_heard.presence, both);
    assert_eq!(all_heard.fleet, both);
    assert_eq!(all_heard.progress.len(), 3, "{all_heard:?}");
    let mine = set(&["north-1"]);
    assert_eq!(ann_heard.telemetry, mine, "{ann_heard:?}");
    assert_eq!(ann_heard.presence, mine, "{ann_heard:?}");
    assert_eq!(ann_heard.fleet, mine, "{ann_heard:?}");
    assert_eq!(ann_heard.progress, set(&[&ids[0]]), "{ann_heard:?}");
    // Who is online, as a new scoped dashboard first hears it.
    let mut late = hub
        .dashboard_with(&client_config(Some(&token), &[PROTOCOL]))
        .await;
    assert_eq!(
        listen(&mut late, Duration::from_millis(300)).await.presence,
        mine
    );

    // REST: the same view.
    let viewer =
        telehub::client::Api::new(&hub.url(), Some(&hub.certs_dir.join("ca.pem")), token).unwrap();
    let devices: Vec<String> = viewer
        .devices(None, 100)
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(devices, ["north-1"]);
    let listed: Vec<String> = viewer
        .list(20)
        .await
        .unwrap()
        .notifications
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(listed, [ids[0].clone()]);
    assert!(
        viewer.status(&ids[1], None, None, 10).await.is_err(),
        "404 for the south one"
    );
}

#[tokio::test]
async fn a_scoped_operator_notifies_only_its_devices() {
    let hub = Hub::start().await;
    let _n1 = hub.device_tagged("north-1", &[("fleet", "north")]).await;
    let _n2 = hub
        .device_tagged("north-2", &[("fleet", "north"), ("site", "a")])
        .await;
    let _s1 = hub.device_tagged("south-1", &[("fleet", "south")]).await;
    let token = scoped(
        &hub,
        "nora",
        Role::Operator,
        Scope {
            device_tags: north(),
            ..Default::default()
        },
        &[],
    );
    let api = telehub::client::Api::new(
        &hub.url(),
        Some(&hub.certs_dir.join("ca.pem")),
        token.clone(),
    )
    .unwrap();
    let all = telehub::http::api::TargetsBody {
        all: true,
        ..Default::default()
    };
    assert_eq!(
        api.create(&notification("info", all, "t"))
            .await
            .unwrap()
            .targets,
        2
    );
    let site = api
        .create(&notification("info", to_tags(&[("site", "a")]), "t"))
        .await
        .unwrap();
    assert_eq!(site.targets, 1, "narrowed to north and site a");
    assert_eq!(
        api.create(&notification("info", to_devices(&["north-1"]), "t"))
            .await
            .unwrap()
            .targets,
        1
    );
    for targets in [
        to_tags(&[("fleet", "south")]),
        to_devices(&["south-1"]),
        to_devices(&["nobody"]),
    ] {
        match api
            .create(&notification("info", targets.clone(), "t"))
            .await
        {
            Err(telehub::client::ApiError::Status { status, .. }) => {
                assert_eq!(status, 403, "{targets:?}")
            }
            other => panic!("{targets:?}: {other:?}"),
        }
    }
    // The registry: only its own devices, kept its own.
    let put = |id: &'static str, fleet: &'static str| {
        let api = api.clone();
        async move {
            let tags = [("fleet".to_string(), fleet.to_string())].into();
            api.put_device(id, &telehub::http::api::DeviceBody { tags })
                .await
        }
    };
    assert!(put("north-9", "north").await.is_ok());
    for (id, fleet) in [("south-9", "south"), ("south-1", "north")] {
        match put(id, fleet).await {
            Err(telehub::client::ApiError::Status { status, .. }) => {
                assert_eq!(status, 403, "{id}")
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    // On the dashboard WebSocket too.
    let mut d = hub
        .dashboard_with(&client_config(Some(&token), &[PROTOCOL]))
        .await;
    d.send(&Envelope {
        body: Some(Body::NotificationRequest(
            telehub::proto::NotificationRequest {
                request_id: "r1".into(),
                targets: Some(telehub::proto::Targets {
                    device_ids: vec!["south-1".into()],
                    ..Default::default()
                }),
                severity: telehub::proto::notification::Severity::Info as i32,
                title: "t".into(),
                ..Default::default()
            },
        )),
    })
    .await;
    let e = d.expect_error().await;
    assert_eq!(
        (e.code, e.request_id.as_str()),
        (Code::Forbidden as i32, "r1")
    );
}
