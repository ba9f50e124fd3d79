//! What a `Subscribe` costs the hub in history: the time to gather and encode the
//! replay (`Hub::recent`, what `HistoryJob` gathers), which runs on the subscribing dashboard's task.
//!
//! `cargo bench --bench history_replay` (no criterion: a plain timing loop, the
//! median of 21 runs per shape). Results are recorded in BENCHMARKS.md.

use std::{sync::Arc, time::Instant};

use telehub::{
    hub::{DeviceInfo, Filter, Hub, Options, Pattern, Publication, WireFormat},
    metrics::Metrics,
    proto::{envelope::Body, reading::Value, Reading, Telemetry},
};

/// A ~200-byte telemetry envelope, like the fan-out benchmark's.
fn telemetry(device: &Arc<DeviceInfo>, category: &str, seq: u64) -> Publication {
    let reading = |name: &str, v: f64| Reading {
        name: name.into(),
        value: Some(Value::Number(v)),
        unit: "Cel".into(),
    };
    let t = Telemetry {
        category: category.into(),
        timestamp_ms: 1_800_000_000_000 + seq,
        seq,
        readings: (0..8)
            .map(|i| reading(&format!("r{i}"), i as f64))
            .collect(),
        ..Default::default()
    };
    Publication::new(device.clone(), t, 1_800_000_000_000 + seq)
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    for (devices, per_series) in [(20, 120), (1_000, 120), (10_000, 120)] {
        let hub = Hub::new(Arc::new(Metrics::new()), Options::default());
        let mut sessions = Vec::new();
        for d in 0..devices {
            let info = Arc::new(DeviceInfo {
                id: format!("dev-{d:05}"),
                tags: Default::default(),
                by_certificate: false,
            });
            let session = hub.device_online(info.clone()).session;
            for seq in 0..per_series {
                hub.publish(&session, telemetry(&info, "env.temperature", seq));
            }
            sessions.push(session);
        }
        hub.tick(telehub::hub::now_ms(), u64::MAX);
        let all = [Pattern::parse("*").unwrap_or(Pattern::All)];
        let n: usize = hub
            .recent(&all, &Filter::default())
            .iter()
            .map(|m| match &m.envelope().body {
                Some(Body::History(h)) => h.telemetry.len(),
                _ => 0,
            })
            .sum();
        let protobuf_ms = median_ms(|| {
            std::hint::black_box(hub.recent(&all, &Filter::default()));
        });
        let json_ms = median_ms(|| {
            for c in &hub.recent(&all, &Filter::default()) {
                std::hint::black_box(c.message(WireFormat::Json));
            }
        });
        println!(
            "{devices} devices, history {:.1} MiB: replay of {n} messages: {protobuf_ms:.2} ms (protobuf), {json_ms:.2} ms (JSON)",
            hub.history_bytes() as f64 / (1 << 20) as f64
        );
    }
}
