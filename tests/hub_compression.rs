//! The hub's permessage-deflate policy, end to end over TLS: what it answers to a
//! device's offer, that compressed telemetry arrives intact and really compressed,
//! and that the memory kept for a device compressing with context takeover is one
//! small window, exported as `telehub_inflate_context_bytes` and given back when the
//! device leaves.
//!
//! One test in its own binary: the context gauge is process-wide, so no other hub may
//! run beside this one.

mod common;

use common::*;

#[tokio::test]
async fn devices_compress_with_a_small_window_that_is_accounted_and_released() {
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;

    // Our client offers `permessage-deflate; client_max_window_bits`, like browsers:
    // the hub keeps its own messages context-free (shared frames for fan-out) and
    // limits the device's window to 2 KiB (config `compression.client_max_window_bits`).
    let mut device = hub.device("dev-z").await;
    let agreed = device.handshake.deflate.expect("deflate negotiated");
    assert!(agreed.server_no_context_takeover);
    assert!(!agreed.client_no_context_takeover);
    assert_eq!(agreed.client_max_window_bits, 11);

    let before = hub.scrape().await;
    assert_eq!(before.get("telehub_inflate_context_bytes"), 0.0);
    let readings = || {
        vec![
            number("temperature", 21.5, "Cel"),
            number("humidity", 40.25, "%"),
            raw("note", b"sensor-ok sensor-ok sensor-ok sensor-ok".to_vec()),
        ]
    };
    for _ in 0..50 {
        device.send_telemetry("env.temperature", readings()).await;
    }
    for seq in 1..=50 {
        let t = dashboard.expect_telemetry().await;
        assert_eq!((t.device_id.as_str(), t.seq), ("dev-z", seq));
        assert_eq!(t.readings, readings());
    }

    let m = hub.scrape().await;
    let wire = m.get("telehub_wire_received_bytes_total{role=\"device\"}")
        - before.get("telehub_wire_received_bytes_total{role=\"device\"}");
    let payload = m.get("telehub_payload_received_bytes_total{role=\"device\"}")
        - before.get("telehub_payload_received_bytes_total{role=\"device\"}");
    // Repeated readings compress well against the previous messages' window.
    assert!(
        wire < payload / 3.0,
        "wire {wire} vs payload {payload}: context takeover not effective"
    );
    assert_eq!(
        m.get("telehub_inflate_context_bytes"),
        2048.0,
        "one 2 KiB window for the one device"
    );

    device.close().await;
    hub.wait_metrics("the window is released with the connection", |m| {
        m.get("telehub_inflate_context_bytes") == 0.0
    })
    .await;
}
