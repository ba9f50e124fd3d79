//! Batched and conflated subscriptions (`Subscribe.max_delay_ms`,
//! `Subscribe.conflate_ms`) against a real hub over TLS: content, order per
//! device, filters, the JSON mapping, History then batches without a gap, one
//! Batch built for many dashboards, and the limits of a Subscribe.

mod common;

use std::time::Duration;

use common::{client_config, code, number, Client, Event, Hub, PROTOCOL_JSON};
use telehub::{
    auth::Role,
    proto::{envelope::Body, error::Code, Batch, Subscribe, Telemetry},
};

fn batched(patterns: &[&str], max_delay_ms: u32) -> Subscribe {
    Subscribe {
        categories: patterns.iter().map(|p| p.to_string()).collect(),
        max_delay_ms,
        ..Default::default()
    }
}

fn conflated(patterns: &[&str], conflate_ms: u32) -> Subscribe {
    Subscribe {
        categories: patterns.iter().map(|p| p.to_string()).collect(),
        conflate_ms,
        ..Default::default()
    }
}

async fn expect_batch(d: &mut Client) -> Batch {
    d.expect("Batch", |b| match b {
        Body::Batch(b) => Some(b.clone()),
        _ => None,
    })
    .await
}

/// Batches until `n` telemetry messages have arrived.
async fn batches_of(d: &mut Client, n: usize) -> Vec<Batch> {
    let mut got = Vec::new();
    let mut count = 0;
    while count < n {
        let b = expect_batch(d).await;
        count += b.telemetry.len();
        got.push(b);
    }
    assert_eq!(count, n, "more telemetry than sent");
    got
}

fn ids(ts: &[Telemetry]) -> Vec<(String, u64)> {
    ts.iter().map(|t| (t.device_id.clone(), t.seq)).collect()
}

#[tokio::test]
async fn one_batch_per_interval_carries_every_message_in_order_for_every_dashboard() {
    let hub = Hub::start().await;
    let mut dashboards = Vec::new();
    for _ in 0..3 {
        let mut d = hub.dashboard().await;
        assert_eq!(d.subscribe_with(batched(&["env.*"], 100)).await, ["env.*"]);
        dashboards.push(d);
    }
    let mut live = hub.dashboard().await;
    live.subscribe(&["env.*"]).await;
    let (mut a, mut b) = (hub.device("a").await, hub.device("b").await);
    for i in 0..20 {
        a.send_telemetry("env.t", vec![number("t", i as f64, "Cel")])
            .await;
        b.send_telemetry("env.t", vec![number("t", -i as f64, "Cel")])
            .await;
    }

    let mut per_dashboard = Vec::new();
    for d in &mut dashboards {
        let batches = batches_of(d, 40).await;
        assert!(
            batches.len() < 40,
            "40 messages sent at once came in {} batches",
            batches.len()
        );
        let all: Vec<Telemetry> = batches.iter().flat_map(|b| b.telemetry.clone()).collect();
        for dev in ["a", "b"] {
            let seqs: Vec<u64> = all
                .iter()
                .filter(|t| t.device_id == dev)
                .map(|t| t.seq)
                .collect();
            assert_eq!(
                seqs,
                (1..=20).collect::<Vec<_>>(),
                "{dev}: every message, in order"
            );
        }
        assert!(batches
            .iter()
            .all(|b| b.category == "env.t" && !b.conflated));
        assert!(all.iter().all(|t| t.received_ms > 0));
        per_dashboard.push(batches.len());
    }
    // The live subscriber still gets one Telemetry per message.
    for _ in 0..40 {
        live.expect_telemetry().await;
    }

    // Each Batch was built once and queued to the three dashboards.
    let built = per_dashboard[0] as f64;
    assert!(per_dashboard.iter().all(|&n| n == per_dashboard[0]));
    let m = hub.metrics();
    assert_eq!(
        m.get("telehub_batches_built_total{kind=\"batched\"}"),
        built
    );
    assert_eq!(
        m.get("telehub_batches_queued_total{kind=\"batched\"}"),
        3.0 * built
    );
    // Deliveries count telemetry messages, whichever way they went.
    assert_eq!(m.get("telehub_telemetry_delivered_total"), 4.0 * 40.0);
}

#[tokio::test]
async fn filters_narrow_batches_and_json_dashboards_get_the_proto3_mapping() {
    let hub = Hub::start().await;
    let token = hub.token("browser", Role::Viewer, &[]);
    let mut json = hub
        .connect(
            "/v1/dashboard",
            &client_config(Some(&token), &[PROTOCOL_JSON]),
        )
        .await
        .expect("JSON dashboard");
    json.send_raw(telehub::ws::Message::Text(
        r#"{"subscribe":{"categories":["env.*"],"tags":{"site":"north"},"maxDelayMs":50}}"#.into(),
    ))
    .await;
    assert_eq!(json.expect_subscribed().await, ["env.*"]);
    let mut filtered = hub.dashboard().await;
    filtered
        .subscribe_with(Subscribe {
            device_ids: vec!["s1".into()],
            ..batched(&["*"], 50)
        })
        .await;

    let mut north = hub.device_tagged("n1", &[("site", "north")]).await;
    let mut south = hub.device_tagged("s1", &[("site", "south")]).await;
    south
        .send_telemetry("env.t", vec![number("t", 1.0, "Cel")])
        .await;
    north
        .send_telemetry("env.t", vec![number("t", f64::NAN, "Cel")])
        .await;
    south.send_telemetry("power.v", vec![]).await;

    // JSON: the batch of north's telemetry only, NaN spelled as proto3 does.
    let v = loop {
        match json.next_event().await {
            Event::Text(s) => {
                let v: serde_json::Value = serde_json::from_str(&s).expect("JSON");
                if v.get("batch").is_some() {
                    break v;
                }
                assert!(v.get("presence").is_some(), "unexpected {v}");
            }
            other => panic!("expected text, got {other:?}"),
        }
    };
    let t = &v["batch"]["telemetry"];
    assert_eq!(t.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(t[0]["deviceId"], "n1");
    assert_eq!(t[0]["seq"], "1");
    assert_eq!(t[0]["readings"][0]["number"], "NaN");
    assert_eq!(v["batch"]["category"], "env.t");
    json.expect_no_telemetry(Duration::from_millis(300)).await;

    // Device filter over "*": s1's batches, one per category, nothing of n1.
    let mut got = Vec::new();
    for _ in 0..2 {
        let b = expect_batch(&mut filtered).await;
        assert!(b.telemetry.iter().all(|t| t.device_id == "s1"));
        got.push(b.category);
    }
    got.sort();
    assert_eq!(got, ["env.t", "power.v"]);
}

#[tokio::test]
async fn history_then_batches_without_a_gap_while_a_device_keeps_sending() {
    let hub = Hub::with(|c| c.rate.burst = 100_000).await;
    let mut dev = hub.device("d").await;
    for i in 0..10 {
        dev.send_telemetry("env.t", vec![number("t", i as f64, "")])
            .await;
    }
    let sender = tokio::spawn(async move {
        for i in 10..300 {
            dev.send_telemetry("env.t", vec![number("t", i as f64, "")])
                .await;
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        dev
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut d = hub.dashboard().await;
    d.subscribe_with(batched(&["env.t"], 20)).await;
    let history = d.expect_history().await;
    assert!(!history.is_empty());
    // Clients keep, per series, only what is newer than what they hold.
    let mut kept: Vec<u64> = history.iter().map(|t| t.seq).collect();
    while kept.last() != Some(&300) {
        let b = expect_batch(&mut d).await;
        for t in b.telemetry {
            if kept.last().is_none_or(|&last| t.seq > last) {
                kept.push(t.seq);
            }
        }
    }
    let first = kept[0];
    assert_eq!(kept, (first..=300).collect::<Vec<_>>(), "no gap, in order");
    let _ = sender.await;
}

#[tokio::test]
async fn conflation_sends_the_latest_changed_value_per_series_once_per_interval() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.subscribe_with(conflated(&["env.*"], 400)).await;
    let mut other = hub.dashboard().await;
    other.subscribe_with(conflated(&["env.t"], 400)).await;
    let (mut a, mut b) = (hub.device("a").await, hub.device("b").await);
    for v in [1.0, 2.0, 3.0] {
        a.send_telemetry("env.t", vec![number("t", v, "")]).await;
    }
    b.send_telemetry("env.t", vec![number("t", 5.0, "")]).await;

    let batch = expect_batch(&mut d).await;
    assert!(batch.conflated);
    assert_eq!(batch.category, "env.t");
    assert_eq!(
        ids(&batch.telemetry),
        [("a".to_string(), 3), ("b".to_string(), 1)],
        "the latest of each series, in the order they first spoke"
    );
    assert_eq!(
        expect_batch(&mut other).await,
        batch,
        "the same batch for both"
    );

    // a repeats its value (a new seq, same readings): not re-sent. b changed.
    a.send_telemetry("env.t", vec![number("t", 3.0, "")]).await;
    b.send_telemetry("env.t", vec![number("t", 6.0, "")]).await;
    let batch = expect_batch(&mut d).await;
    assert_eq!(ids(&batch.telemetry), [("b".to_string(), 2)]);
    d.expect_no_telemetry(Duration::from_millis(600)).await;

    let m = hub.metrics();
    assert_eq!(
        m.get("telehub_batches_built_total{kind=\"conflated\"}"),
        2.0
    );
    assert_eq!(
        m.get("telehub_batches_queued_total{kind=\"conflated\"}"),
        4.0
    );
    assert_eq!(
        m.get("telehub_conflated_away_total"),
        3.0,
        "a:1, a:2, a:3 again"
    );
}

#[tokio::test]
async fn a_subscription_changes_delivery_when_resubscribed_and_bad_intervals_are_refused() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    for bad in [
        Subscribe {
            max_delay_ms: 50,
            conflate_ms: 50,
            ..batched(&["env.t"], 0)
        },
        batched(&["env.t"], 10_001),
        conflated(&["env.t"], 60_001),
    ] {
        d.send(&telehub::proto::Envelope {
            body: Some(Body::Subscribe(bad)),
        })
        .await;
        let e = d.expect_error().await;
        assert_eq!(code(&e), Code::InvalidSubscription, "{e:?}");
    }
    assert_eq!(d.subscribe(&["other"]).await, ["other"], "nothing applied");

    // Batched, then the same pattern re-subscribed live: single Telemetry again.
    d.subscribe_with(batched(&["env.t"], 50)).await;
    let mut dev = hub.device("x").await;
    dev.send_telemetry("env.t", vec![]).await;
    assert_eq!(expect_batch(&mut d).await.telemetry.len(), 1);
    d.subscribe(&["env.t"]).await;
    dev.send_telemetry("env.t", vec![]).await;
    assert_eq!(d.expect_telemetry().await.seq, 2);
    d.expect_no_telemetry(Duration::from_millis(200)).await;

    // Streams nobody receives any more are removed (at the next statistics tick).
    d.subscribe_with(batched(&["env.t"], 20)).await;
    d.unsubscribe(&["env.t"]).await;
    dev.send_telemetry("env.t", vec![]).await;
    let app = hub.app().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.hub.streams() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "stream not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dashboard_joining_a_conflated_stream_gets_the_current_value_even_if_unchanged() {
    let hub = Hub::start().await;
    let mut first = hub.dashboard().await;
    first.subscribe_with(conflated(&["env.t"], 1000)).await;
    let mut x = hub.device("x").await;
    x.send_telemetry("env.t", vec![number("t", 1.0, "")]).await;
    assert_eq!(
        ids(&expect_batch(&mut first).await.telemetry),
        [("x".to_string(), 1)]
    );

    // x moves to 2, a second dashboard joins (its History ends with 2), and x goes
    // back to 1 within the same interval: 1 is what the stream last sent, but the
    // joiner holds 2, so the stream sends it again.
    x.send_telemetry("env.t", vec![number("t", 2.0, "")]).await;
    let mut joiner = hub.dashboard().await;
    joiner.subscribe_with(conflated(&["env.t"], 1000)).await;
    let history = joiner.expect_history().await;
    assert_eq!(history.last().map(|t| t.seq), Some(2));
    x.send_telemetry("env.t", vec![number("t", 1.0, "")]).await;
    assert_eq!(
        ids(&expect_batch(&mut joiner).await.telemetry),
        [("x".to_string(), 3)]
    );
    assert_eq!(
        ids(&expect_batch(&mut first).await.telemetry),
        [("x".to_string(), 3)]
    );
}

/// `telehub_delivery_delay_seconds` counts a batch from its oldest telemetry, so a
/// batched subscription's delay shows in it (and a live one's does not).
#[tokio::test]
async fn delivery_delay_includes_the_batching_delay() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    assert_eq!(d.subscribe_with(batched(&["env.*"], 300)).await, ["env.*"]);
    let mut dev = hub.device("a").await;
    let above_102ms = |m: &common::Metrics| {
        m.get("telehub_delivery_delay_seconds_count")
            - m.get("telehub_delivery_delay_seconds_bucket{le=\"0.1024\"}")
    };
    assert_eq!(above_102ms(&hub.metrics()), 0.0);
    dev.send_telemetry("env.t", vec![number("t", 1.0, "Cel")])
        .await;
    let batch = expect_batch(&mut d).await;
    assert_eq!(batch.telemetry.len(), 1);
    // The write that carried the batch waited for the batch's delay (300 ms, from
    // the telemetry's arrival), which is above the 102.4 ms bucket. It is observed
    // just after the write ends, so possibly just after the batch arrived here.
    let mut m = hub.metrics();
    for _ in 0..50 {
        if above_102ms(&m) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = hub.metrics();
    }
    assert!(above_102ms(&m) >= 1.0, "{}", m.text);
}
