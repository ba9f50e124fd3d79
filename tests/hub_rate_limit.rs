//! Per-device rate limiting: the burst passes, the excess is refused (told at most
//! once a second, counted, never delivered), other devices are unaffected, and a
//! device that keeps flooding is disconnected with 1008.

mod common;

use std::time::Duration;

use common::*;
use telehub::proto::{envelope::Body, error::Code};

/// Sends an empty Envelope (answered MALFORMED) as a marker and returns the
/// RATE_LIMITED errors received before its answer: once it arrives, the hub has
/// processed everything sent before it.
async fn rate_errors_until_marker(device: &mut Client) -> Vec<telehub::proto::Error> {
    device
        .try_send_raw(telehub::ws::Message::Binary(Default::default()))
        .await
        .ok();
    let mut errors = Vec::new();
    loop {
        match device.next_event().await {
            Event::Envelope(env) => match env.body {
                Some(Body::Error(e)) if code(&e) == Code::RateLimited => errors.push(e),
                // The empty frame above is answered as malformed: our end-of-stream mark.
                Some(Body::Error(e)) if code(&e) == Code::Malformed => return errors,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn excess_is_refused_and_counted_while_other_devices_flow() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 5;
        c.rate.burst = 10;
        c.rate.abuse_seconds = 30;
    })
    .await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;
    let mut flood = hub.device("flood").await;
    let mut calm = hub.device("calm").await;

    // The burst passes, all of it, in order.
    for _ in 0..10 {
        flood.send_telemetry("x", vec![]).await;
    }
    for seq in 1..=10 {
        let t = d.expect_telemetry().await;
        assert_eq!((t.device_id.as_str(), t.seq), ("flood", seq));
    }

    // Twenty more at once: nearly all over the limit.
    for _ in 0..20 {
        flood.send_telemetry("x", vec![]).await;
    }
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        calm.send_telemetry("y", vec![]).await;
    }
    let mut calm_seen = 0;
    let mut flood_seen = 0;
    while calm_seen < 5 {
        let t = d.expect_telemetry().await;
        match t.device_id.as_str() {
            "calm" => {
                calm_seen += 1;
                assert_eq!(t.seq, calm_seen, "calm's messages in order, none lost");
            }
            _ => flood_seen += 1,
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the other device's messages were delayed by {:?}",
        started.elapsed()
    );

    // Everything flood sent has been processed once its errors are read up to a marker.
    let errors = rate_errors_until_marker(&mut flood).await;
    assert_eq!(
        errors.len(),
        1,
        "one RATE_LIMITED error per second at most: {errors:?}"
    );
    let e = &errors[0];
    assert!(
        e.retry_after_ms > 0 && e.retry_after_ms <= 1000,
        "retry_after_ms = {}",
        e.retry_after_ms
    );
    assert!(e.message.contains("5/s"), "{}", e.message);

    // Refused messages were not delivered: what arrived plus what was refused is
    // what was sent. A marker from calm ends the stream of flood's deliveries.
    calm.send_telemetry("y", vec![]).await;
    loop {
        let t = d.expect_telemetry().await;
        if t.device_id == "calm" {
            assert_eq!(t.seq, 6);
            break;
        }
        flood_seen += 1;
    }
    let refused = hub
        .scrape()
        .await
        .get("telehub_telemetry_rate_limited_total") as u64;
    assert!(refused >= 10, "most of the 20 were refused, got {refused}");
    assert_eq!(
        flood_seen + refused,
        20,
        "delivered {flood_seen} + refused {refused}"
    );

    // A second later the device is told again.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    for _ in 0..15 {
        flood.send_telemetry("x", vec![]).await;
    }
    assert_eq!(rate_errors_until_marker(&mut flood).await.len(), 1);
}

#[tokio::test]
async fn sustained_abuse_is_closed_with_1008() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 5;
        c.rate.burst = 5;
        c.rate.abuse_seconds = 2;
    })
    .await;
    let mut flood = hub.device("flood").await;
    let started = tokio::time::Instant::now();
    let code = loop {
        assert!(started.elapsed() < T, "never disconnected");
        flood.seq += 1;
        let frame = prost::Message::encode_to_vec(&telemetry("x", flood.seq, vec![]));
        if flood
            .try_send_raw(telehub::ws::Message::Binary(frame.into()))
            .await
            .is_err()
        {
            break flood.expect_close().await;
        }
        match flood.next_event_within(Duration::from_millis(20)).await {
            None | Some(Event::Envelope(_)) => {}
            Some(Event::Close(f)) => break f.expect("close code").code,
            Some(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before abuse_seconds elapsed",
        started.elapsed()
    );
}
