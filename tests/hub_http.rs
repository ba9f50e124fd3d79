//! The plain HTTP side of the one TLS listener: `/healthz` for orchestrators,
//! `/metrics` for Prometheus, the dashboard page and its settings, and 404s.

mod common;

use common::*;

#[tokio::test]
async fn healthz_is_json_with_live_counts() {
    let hub = Hub::start().await;
    let v = hub.get_json("/healthz").await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["devices_online"], 0);

    let _dev = hub.device("dev-1").await;
    let _d = hub.dashboard().await;
    let (_, _, body) = hub.get("/healthz").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["devices_online"].as_u64(), v["dashboards"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn metrics_expose_traffic_in_prometheus_text() {
    let hub = Hub::start().await;
    let mut d = hub.dashboard().await;
    d.subscribe(&["*"]).await;
    let mut dev = hub.device("dev-1").await;
    for _ in 0..3 {
        dev.send_telemetry("env.t", vec![number("t", 1.0, "Cel")])
            .await;
        d.expect_telemetry().await;
    }
    dev.send_raw(telehub::ws::Message::Binary(vec![0xff].into()))
        .await;
    dev.expect_error().await;

    let (status, head, body) = hub.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
            || head
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
        "{head}"
    );
    for family in [
        "telehub_connections",
        "telehub_frames_received",
        "telehub_wire_received_bytes",
        "telehub_wire_sent_bytes",
        "telehub_payload_received_bytes",
        "telehub_payload_sent_bytes",
        "telehub_telemetry_rate_limited",
        "telehub_telemetry_dropped",
        "telehub_decode_errors",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
    let m = Metrics::parse(&body);
    // What every Prometheus exporter has: the build and the process.
    let build = format!(
        "telehub_build_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    assert_eq!(m.get(&build), 1.0, "{body}");
    assert!(m.get("process_open_fds") >= 4.0, "{body}");
    assert!(m.get("process_max_fds") >= m.get("process_open_fds"));
    assert!(m.get("process_resident_memory_bytes") > 1e6);
    assert!(m.get("process_cpu_seconds_total") > 0.0);
    assert_eq!(m.get("telehub_connections{role=\"device\"}"), 1.0, "{body}");
    assert_eq!(m.get("telehub_connections{role=\"viewer\"}"), 1.0);
    assert_eq!(m.get("telehub_frames_received_total{role=\"device\"}"), 4.0);
    assert_eq!(m.get("telehub_frames_received_total{role=\"viewer\"}"), 1.0);
    // Every data message sent counts: the device's Welcome and Error; the
    // dashboard's Welcome, Subscribed, the device's presence and 3 telemetry.
    assert_eq!(
        m.get("telehub_frames_sent_total{role=\"device\"}"),
        2.0,
        "{body}"
    );
    assert_eq!(
        m.get("telehub_frames_sent_total{role=\"viewer\"}"),
        6.0,
        "{body}"
    );
    assert_eq!(m.get("telehub_decode_errors_total"), 1.0);
    assert_eq!(m.get("telehub_ready"), 1.0, "{body}");
    assert_eq!(m.get("telehub_store_writable"), 1.0);
    // One observation per write to the dashboard; each wait is under the test's length.
    let writes = m.get("telehub_delivery_delay_seconds_count");
    assert!(writes >= 1.0, "{body}");
    assert!(m.get("telehub_delivery_delay_seconds_sum") < writes * 10.0);
    assert_eq!(m.get("telehub_telemetry_rate_limited_total"), 0.0);
    assert!(m.has("telehub_telemetry_rate_limited_total"));
    assert!(m.has("telehub_telemetry_dropped_total"));
    for dir in ["received", "sent"] {
        for role in ["device", "viewer"] {
            let wire = m.get(&format!(
                "telehub_wire_{dir}_bytes_total{{role=\"{role}\"}}"
            ));
            let payload = m.get(&format!(
                "telehub_payload_{dir}_bytes_total{{role=\"{role}\"}}"
            ));
            assert!(wire > 0.0, "{dir} wire bytes for {role}:\n{body}");
            assert!(payload > 0.0, "{dir} payload bytes for {role}:\n{body}");
        }
    }
    // The dashboard received 3 telemetry messages of the same payload size the device sent.
    assert!(
        m.get("telehub_payload_sent_bytes_total{role=\"viewer\"}")
            >= m.get("telehub_payload_received_bytes_total{role=\"device\"}") - 1.0,
        "{body}"
    );
}

#[tokio::test]
async fn index_page_and_unknown_paths() {
    let hub = Hub::start().await;
    let (status, head, body) = hub.get("/").await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"), "{head}");
    assert!(body.to_ascii_lowercase().contains("<html"), "{body}");
    let (status, _, _) = hub.get("/nope").await;
    assert_eq!(status, 404);
    // A plain GET on a WebSocket endpoint is not an upgrade.
    let (status, _, _) = hub.get("/v1/device").await;
    assert!((400..500).contains(&status), "{status}");
}

#[tokio::test]
async fn dashboard_settings_tell_the_page_how_to_subscribe_without_a_token() {
    let hub = Hub::start().await;
    let v = hub.get_json("/v1/dashboard/settings").await;
    assert_eq!(
        v,
        serde_json::json!({"max_delay_ms": 50, "conflate_ms": 500, "conflate_above": 200})
    );

    let hub = Hub::with(|c| {
        c.dashboard.page_max_delay = std::time::Duration::from_millis(20);
        c.dashboard.page_conflate_interval = std::time::Duration::from_secs(2);
        c.dashboard.page_conflate_above = 3;
    })
    .await;
    let (status, _, body) = hub.get("/v1/dashboard/settings").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        v,
        serde_json::json!({"max_delay_ms": 20, "conflate_ms": 2000, "conflate_above": 3})
    );
}
