//! The recent window per series (`History` on subscribe) and the fleet statistics
//! (`WatchFleet` / `FleetStats`), against a real hub over TLS.

mod common;

use std::time::Duration;

use common::{number, raw, Client, Hub};
use telehub::proto::{
    envelope::Body, error::Code, DeviceStats, Envelope, FleetStats, History, Subscribe, Telemetry,
    WatchFleet,
};

/// Waits until the hub has accepted `n` telemetry messages in all.
async fn accepted(hub: &Hub, n: u64) {
    hub.wait_metrics("accepted telemetry", |m| {
        m.get("telehub_telemetry_accepted_total") >= n as f64
    })
    .await;
}

fn seqs(ts: &[Telemetry]) -> Vec<(String, String, u64)> {
    ts.iter()
        .map(|t| (t.device_id.clone(), t.category.clone(), t.seq))
        .collect()
}

#[tokio::test]
async fn a_subscription_starts_with_the_recent_window_of_each_matching_series() {
    let hub = Hub::start().await;
    let mut d1 = hub.device("d1").await;
    for i in 0..5 {
        d1.send_telemetry("env.temperature", vec![number("t", i as f64, "Cel")])
            .await;
    }
    for _ in 0..3 {
        d1.send_telemetry("power.battery", vec![number("v", 3.7, "V")])
            .await;
    }
    accepted(&hub, 8).await;

    let mut dash = hub.dashboard().await;
    dash.subscribe(&["env.*"]).await;
    let h = dash.expect_history().await;
    let want: Vec<_> = (1..=5)
        .map(|s| ("d1".to_string(), "env.temperature".to_string(), s))
        .collect();
    assert_eq!(seqs(&h), want, "oldest first, only the matching series");
    assert!(h.iter().all(|t| t.received_ms > 0));

    // Live telemetry follows the history.
    d1.send_telemetry("env.temperature", vec![number("t", 9.0, "Cel")])
        .await;
    assert_eq!(dash.expect_telemetry().await.seq, 9);

    // What a device sends after the Subscribed reply arrives live, never in the
    // History (which is gathered after the reply, but only from before it).
    dash.subscribe(&["power.*"]).await;
    d1.send_telemetry("power.battery", vec![]).await;
    let h = dash.expect_history().await;
    assert_eq!(h.iter().map(|t| t.seq).collect::<Vec<_>>(), [6, 7, 8]);
    assert_eq!(dash.expect_telemetry().await.seq, 10);

    // No series matches: no History at all, just Subscribed.
    dash.subscribe(&["gps.*"]).await;
    dash.expect_no_telemetry(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_window_is_bounded_and_the_filter_applies() {
    let hub = Hub::with(|c| {
        c.dashboard.history_len = 3;
        c.dashboard.history_replay_max = 4;
    })
    .await;
    let mut north = hub.device_tagged("north-1", &[("fleet", "north")]).await;
    let mut south = hub.device_tagged("south-1", &[("fleet", "south")]).await;
    for _ in 0..10 {
        north.send_telemetry("env.t", vec![]).await;
        north.send_telemetry("env.h", vec![]).await;
        south.send_telemetry("env.t", vec![]).await;
    }
    accepted(&hub, 30).await;

    // The last 3 of each series, and only north's.
    let mut dash = hub.dashboard().await;
    dash.subscribe_filtered(&["env.t"], &[], &[("fleet", "north")])
        .await;
    let h = dash.expect_history().await;
    let seqs: Vec<u64> = h.iter().map(|t| t.seq).collect();
    assert!(h.iter().all(|t| t.device_id == "north-1"), "{h:?}");
    assert_eq!(seqs, [15, 17, 19], "north's env.t carries odd seqs");

    // Three series, 4 messages at most: one (the newest) per series.
    let mut all = hub.dashboard().await;
    all.subscribe(&["*"]).await;
    let h = all.expect_history().await;
    assert_eq!(
        seqs_of(&h),
        [
            ("north-1", "env.h", 20),
            ("north-1", "env.t", 19),
            ("south-1", "env.t", 10)
        ]
    );

    // A device filter narrows as well.
    let mut one = hub.dashboard().await;
    one.subscribe_filtered(&["env.*"], &["south-1"], &[]).await;
    let h = one.expect_history().await;
    assert_eq!(h.iter().map(|t| t.seq).collect::<Vec<_>>(), [8, 9, 10]);
}

fn seqs_of(ts: &[Telemetry]) -> Vec<(&str, &str, u64)> {
    ts.iter()
        .map(|t| (t.device_id.as_str(), t.category.as_str(), t.seq))
        .collect()
}

#[tokio::test]
async fn a_long_history_arrives_in_chunks() {
    let hub = Hub::with(|c| {
        c.dashboard.history_len = 700;
        c.rate.per_second = 100_000;
        c.rate.burst = 100_000;
    })
    .await;
    // 650 messages of about 1 KiB: a dozen chunks of at most 60 KiB.
    let mut d = hub.device("d").await;
    for _ in 0..650 {
        d.send_telemetry("env.t", vec![raw("blob", vec![7; 1000])])
            .await;
    }
    accepted(&hub, 650).await;
    // A client with the default 64 KiB message limit takes every chunk.
    let mut dash = hub.dashboard().await;
    dash.subscribe(&["env.t"]).await;
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    loop {
        let h: History = dash
            .expect("History", |b| match b {
                Body::History(h) => Some(h.clone()),
                _ => None,
            })
            .await;
        sizes.push(prost::Message::encoded_len(&h));
        all.extend(h.telemetry.iter().map(|t| t.seq));
        if !h.more {
            break;
        }
    }
    assert!(sizes.len() >= 11, "{sizes:?}");
    let chunk = telehub::hub::history::HISTORY_CHUNK_BYTES;
    assert!(sizes.iter().all(|&n| n <= chunk + 64), "{sizes:?}");
    assert_eq!(all, (1..=650).collect::<Vec<_>>());
}

/// While a device publishes as fast as it can, a dashboard subscribes: the history
/// and the live messages together have no gap, and history comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_live_telemetry_join_without_a_gap() {
    let hub = Hub::with(|c| {
        c.dashboard.history_len = 100_000;
        c.dashboard.history_replay_max = 100_000;
        // Nothing may be dropped while this test reads slowly.
        c.dashboard.queue_len = 1_000_000;
        c.rate.per_second = 1_000_000;
        c.rate.burst = 1_000_000;
    })
    .await;
    let mut d = hub.device("d").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    // Publishes until told to stop (bounded by a generous count).
    let publisher = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < 1_000_000 && stopped.try_recv().is_err() {
            sent = d.send_telemetry("env.t", vec![]).await;
        }
        sent
    });
    accepted(&hub, 200).await;
    let mut dash = hub.dashboard().await;
    dash.subscribe(&["env.t"]).await;
    let h = dash.expect_history().await;
    let mut last = h.last().expect("a history").seq;
    assert_eq!(
        h.iter().map(|t| t.seq).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    // Live messages continue from the history: at most an overlap, never a gap.
    let first_live = dash.expect_telemetry().await.seq;
    assert!(
        first_live <= last + 1,
        "gap: history ended at {last}, live began at {first_live}"
    );
    last = first_live;
    for _ in 0..500 {
        let seq = dash.expect_telemetry().await.seq;
        assert_eq!(seq, last + 1);
        last = seq;
    }
    let _ = stop.send(());
    let sent = publisher.await.unwrap();
    assert!(sent > last, "the publisher was still going while we read");
}

/// Subscribes are paced: each replays history, so a client looping on them is
/// refused (nothing applied) instead of making the hub copy history without end.
#[tokio::test]
async fn subscribes_are_paced() {
    let hub = Hub::start().await;
    let mut dash = hub.dashboard().await;
    for _ in 0..100 {
        dash.send(&Envelope {
            body: Some(Body::Subscribe(Subscribe {
                categories: vec!["env.t".into()],
                ..Default::default()
            })),
        })
        .await;
    }
    let (mut applied, mut refused) = (0, 0);
    while applied + refused < 100 {
        match dash.next_envelope().await.body {
            Some(Body::Subscribed(_)) => applied += 1,
            Some(Body::Error(e)) => {
                assert_eq!(e.code(), Code::RateLimited, "{e:?}");
                assert!(e.retry_after_ms > 0);
                refused += 1;
            }
            other => panic!("expected Subscribed or Error, got {other:?}"),
        }
    }
    assert!((64..=70).contains(&applied), "burst 64: {applied} applied");
    assert_eq!(applied + refused, 100);
}

async fn fleet_stats(dash: &mut Client) -> FleetStats {
    dash.expect("FleetStats", |b| match b {
        Body::FleetStats(f) => Some(f.clone()),
        _ => None,
    })
    .await
}

/// Reads FleetStats until `device` satisfies `cond`.
async fn device_stats(
    dash: &mut Client,
    device: &str,
    cond: impl Fn(&DeviceStats) -> bool,
) -> DeviceStats {
    for _ in 0..100 {
        let f = fleet_stats(dash).await;
        if let Some(s) = f.devices.iter().find(|s| s.device_id == device) {
            if cond(s) {
                return s.clone();
            }
        }
    }
    panic!("{device}'s statistics never satisfied the condition");
}

#[tokio::test]
async fn fleet_statistics_count_messages_refusals_and_presence() {
    let hub = Hub::with(|c| {
        c.dashboard.fleet_interval = Duration::from_millis(100);
        c.dashboard.forget_after = Duration::from_millis(500);
        c.rate.per_second = 1;
        c.rate.burst = 5;
    })
    .await;
    let mut dash = hub.dashboard().await;
    dash.send(&Envelope {
        body: Some(Body::WatchFleet(WatchFleet { watch: true })),
    })
    .await;
    let full = fleet_stats(&mut dash).await;
    assert!(full.full);
    assert!(full.devices.is_empty());

    let mut d = hub.device_tagged("d1", &[("site", "<b>x</b>")]).await;
    for _ in 0..8 {
        d.send_telemetry("env.t", vec![]).await;
    }
    d.send_telemetry("power.b", vec![]).await;
    let s = device_stats(&mut dash, "d1", |s| s.messages + s.rate_limited == 9).await;
    assert!(s.online);
    assert_eq!(s.tags.get("site").map(String::as_str), Some("<b>x</b>"));
    // Burst 5, then one more per second: at least 5 accepted, some refused.
    assert!(s.messages >= 5 && s.rate_limited >= 1, "{s:?}");
    assert!(s.last_seen_ms > 0);
    assert!(s.categories.contains(&"env.t".to_string()), "{s:?}");

    // A second watcher gets the full picture at once.
    let mut late = hub.dashboard().await;
    late.send(&Envelope {
        body: Some(Body::WatchFleet(WatchFleet { watch: true })),
    })
    .await;
    let full = fleet_stats(&mut late).await;
    assert!(full.full);
    assert_eq!(full.devices.len(), 1);
    assert_eq!(full.devices[0].messages, s.messages);

    // Offline, then forgotten.
    d.close().await;
    device_stats(&mut dash, "d1", |s| !s.online).await;
    let mut forgotten = false;
    for _ in 0..50 {
        if fleet_stats(&mut dash).await.forgotten == ["d1"] {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "d1 was never forgotten");
}

/// After a restart, the fleet view still lists the devices seen within
/// `forget_after` (offline until they reconnect), from the device registry.
#[tokio::test]
async fn a_restarted_hub_lists_recently_seen_devices_offline() {
    let root = common::Dir::new("fleet-restart");
    let dirs = root.hub_dirs();
    let on_dirs = |c: &mut telehub::config::Config| {
        dirs(c);
        c.dashboard.fleet_interval = Duration::from_millis(100);
    };
    let hub = Hub::with(on_dirs).await;
    let mut d = hub.device_tagged("d1", &[("fleet", "north")]).await;
    d.send_telemetry("env.t", vec![]).await;
    accepted(&hub, 1).await;
    hub.stop().await;

    let hub = Hub::with(on_dirs).await;
    let mut dash = hub.dashboard().await;
    dash.send(&Envelope {
        body: Some(Body::WatchFleet(WatchFleet { watch: true })),
    })
    .await;
    let s = device_stats(&mut dash, "d1", |_| true).await;
    assert!(!s.online);
    assert!(s.last_seen_ms > 0);
    assert_eq!(s.tags.get("fleet").map(String::as_str), Some("north"));
    hub.stop().await;
}
