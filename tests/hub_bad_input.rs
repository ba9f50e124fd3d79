//! Bad input is normal input: malformed envelopes get a MALFORMED error naming the
//! problem and, repeated, a 1007 close; text on the binary device endpoint is 1003;
//! oversized messages (raw or after inflation) are 1009. Nothing leaks to others.

mod common;

use common::*;
use telehub::{
    proto::{envelope::Body, error::Code, Envelope, Subscribe},
    ws::Message,
};

fn garbage(n: u8) -> Message {
    // A truncated varint, then a length-delimited field longer than the frame.
    match n % 2 {
        0 => Message::Binary(vec![0xff, 0xff, 0xff].into()),
        _ => Message::Binary(vec![0x0a, 0x05, 0x01].into()),
    }
}

#[tokio::test]
async fn malformed_envelopes_are_answered_then_closed_with_1007() {
    let hub = Hub::with(|c| c.limits.max_malformed = 3).await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;
    let mut dev = hub.device("dev-1").await;

    for n in 0..2 {
        dev.send_raw(garbage(n)).await;
        let e = dev.expect_error().await;
        assert_eq!(code(&e), Code::Malformed);
        assert!(
            e.message.contains("not a telehub.v1.Envelope"),
            "the error names the problem: {}",
            e.message
        );
    }
    // A valid message resets the count.
    dev.send_telemetry("ok", vec![]).await;
    assert_eq!(d.expect_telemetry().await.category, "ok");
    for n in 0..2 {
        dev.send_raw(garbage(n)).await;
        assert_eq!(code(&dev.expect_error().await), Code::Malformed);
    }
    dev.send_raw(garbage(0)).await;
    assert_eq!(dev.expect_close().await, 1007, "third in a row closes");
    assert_eq!(hub.scrape().await.get("telehub_decode_errors_total"), 5.0);

    // Nothing of it reached the dashboard, which keeps working.
    let mut other = hub.device("dev-2").await;
    other.send_telemetry("still", vec![]).await;
    assert_eq!(d.expect_telemetry().await.category, "still");
}

#[tokio::test]
async fn invalid_but_decodable_envelopes_get_specific_errors() {
    let hub = Hub::start().await;
    let mut dev = hub.device("dev-1").await;
    let cases = [
        (Envelope { body: None }, "empty"),
        (
            Envelope {
                body: Some(Body::Subscribe(Subscribe::default())),
            },
            "Telemetry",
        ),
        (telemetry("bad category!", 1, vec![]), "category"),
        (telemetry("", 1, vec![]), "empty"),
    ];
    for (env, needle) in cases {
        dev.send(&env).await;
        let e = dev.expect_error().await;
        assert_eq!(code(&e), Code::Malformed, "{env:?}");
        assert!(e.message.contains(needle), "{needle:?} in {:?}", e.message);
        // Keep the strike count low.
        dev.send_telemetry("ok", vec![]).await;
    }
}

#[tokio::test]
async fn dashboards_get_malformed_for_garbage_then_1007() {
    let hub = Hub::with(|c| c.limits.max_malformed = 3).await;
    let mut d = hub.dashboard().await;
    for i in 0..2 {
        d.send_raw(garbage(i)).await;
        let e = d.expect_error().await;
        assert_eq!(code(&e), Code::Malformed);
        assert!(e.message.contains("Envelope"), "{}", e.message);
    }
    d.send_raw(garbage(2)).await;
    assert_eq!(d.expect_close().await, 1007);
}

/// Only what does not decode is a decode error; a valid envelope a dashboard may not
/// send (or an empty one) is refused as MALFORMED without counting as one, and
/// closes with 1008, not 1007.
#[tokio::test]
async fn dashboards_decode_errors_count_only_what_does_not_decode() {
    let hub = Hub::with(|c| c.limits.max_malformed = 3).await;
    let mut d = hub.dashboard().await;
    d.send_raw(garbage(0)).await;
    assert_eq!(code(&d.expect_error().await), Code::Malformed);
    d.send(&Envelope { body: None }).await;
    assert_eq!(code(&d.expect_error().await), Code::Malformed);
    d.send(&telemetry("env.t", 1, vec![])).await;
    assert_eq!(
        d.expect_close().await,
        1008,
        "the third strike in a row, a policy refusal"
    );
    assert_eq!(hub.scrape().await.get("telehub_decode_errors_total"), 1.0);
}

#[tokio::test]
async fn the_wrong_frame_type_on_a_dashboard_is_closed_with_1003() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.send_raw(Message::Text("{\"subscribe\":{}}".into())).await;
    assert_eq!(d.expect_close().await, 1003);
}

#[tokio::test]
async fn a_text_frame_on_the_device_endpoint_is_closed_with_1003() {
    let hub = Hub::start().await;
    let mut dev = hub.device("dev-1").await;
    dev.send_raw(Message::Text("{\"telemetry\":{}}".into()))
        .await;
    assert_eq!(dev.expect_close().await, 1003);
}

#[tokio::test]
async fn oversized_messages_are_closed_with_1009() {
    let hub = Hub::with(|c| {
        c.limits.max_message_bytes = 2048;
        c.limits.max_frame_bytes = 2048;
    })
    .await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;

    // Just under the limit passes (and is delivered).
    let mut dev = hub.device("dev-1").await;
    dev.send_telemetry("big", vec![raw("blob", incompressible(1900, 1))])
        .await;
    assert_eq!(d.expect_telemetry().await.readings[0].name, "blob");

    // Over it, uncompressed.
    dev.send_telemetry("big", vec![raw("blob", incompressible(3000, 2))])
        .await;
    assert_eq!(dev.expect_close().await, 1009);

    // Over it only after inflation: 64 KiB of zeros deflate to a few hundred bytes.
    let mut dev = hub.device("dev-2").await;
    assert!(
        dev.handshake.deflate.is_some(),
        "the hub accepts permessage-deflate"
    );
    dev.send_telemetry("big", vec![raw("zeros", vec![0; 64 * 1024])])
        .await;
    assert_eq!(dev.expect_close().await, 1009);

    // The dashboard saw neither.
    let mut dev = hub.device("dev-3").await;
    dev.send_telemetry("small", vec![]).await;
    assert_eq!(d.expect_telemetry().await.category, "small");
}

#[tokio::test]
async fn an_oversized_subscription_filter_is_refused() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    let ids: Vec<String> = (0..2000).map(|i| format!("d{i}")).collect();
    d.send(&Envelope {
        body: Some(Body::Subscribe(Subscribe {
            categories: vec!["*".into()],
            device_ids: ids,
            tags: Default::default(),
            ..Default::default()
        })),
    })
    .await;
    let e = d.expect_error().await;
    assert_eq!(code(&e), Code::InvalidSubscription);
    assert!(e.message.contains("at most"), "{}", e.message);
    // Nothing was subscribed.
    assert!(d.subscribe(&["env.*"]).await == ["env.*"]);
}

#[tokio::test]
async fn telemetry_with_too_many_readings_is_refused() {
    let hub = Hub::with(|c| c.limits.max_readings = 3).await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;
    let mut dev = hub.device("dev-1").await;
    let readings = |n: usize| (0..n).map(|i| number(&format!("r{i}"), 1.0, "")).collect();
    dev.send_telemetry("env.t", readings(4)).await;
    let e = dev.expect_error().await;
    assert_eq!(code(&e), Code::Malformed);
    assert!(e.message.contains("at most 3"), "{}", e.message);
    d.expect_no_telemetry(std::time::Duration::from_millis(200))
        .await;
    // Up to the limit is fine.
    dev.send_telemetry("env.t", readings(3)).await;
    assert_eq!(d.expect_telemetry().await.readings.len(), 3);
}
