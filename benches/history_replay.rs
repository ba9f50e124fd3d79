//! What a `Subscribe` costs the hub in history: the time to gather and encode the
//! replay (`Fleet::history`), which runs on the subscribing dashboard's task.
//!
//! `cargo bench --bench history_replay` (no criterion: a plain timing loop, the
//! median of 21 runs per shape). Results are recorded in BENCHMARKS.md.

use std::{sync::Arc, time::Instant};

use telehub::{
    hub::{fleet::Fleet, DeviceInfo, Encoded, Filter, HistoryLimits, Pattern, WireFormat},
    proto::{envelope::Body, reading::Value, Envelope, Reading, Telemetry},
};

/// A ~200-byte telemetry envelope, like the fan-out benchmark's.
fn telemetry(device: &str, category: &str, seq: u64) -> Arc<Encoded> {
    let reading = |name: &str, v: f64| Reading {
        name: name.into(),
        value: Some(Value::Number(v)),
        unit: "Cel".into(),
    };
    Encoded::new(Envelope {
        body: Some(Body::Telemetry(Telemetry {
            device_id: device.into(),
            category: category.into(),
            timestamp_ms: 1_800_000_000_000 + seq,
            seq,
            readings: (0..8)
                .map(|i| reading(&format!("r{i}"), i as f64))
                .collect(),
            received_ms: 1_800_000_000_000 + seq,
        })),
    })
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
        let fleet = Fleet::new(HistoryLimits::default());
        for d in 0..devices {
            let id = format!("dev-{d:05}");
            let info = Arc::new(DeviceInfo {
                id: id.clone(),
                tags: Default::default(),
            });
            let record = fleet.online(&info, 0);
            for seq in 0..per_series {
                fleet.accepted(
                    &record,
                    "env.temperature",
                    &telemetry(&id, "env.temperature", seq),
                    1,
                );
            }
        }
        fleet.tick(1, u64::MAX);
        let all = [Pattern::parse("*").unwrap_or(Pattern::All)];
        let n: usize = fleet
            .history(&all, &Filter::default(), u64::MAX)
            .iter()
            .map(|m| match &m.envelope().body {
                Some(Body::History(h)) => h.telemetry.len(),
                _ => 0,
            })
            .sum();
        let protobuf_ms = median_ms(|| {
            std::hint::black_box(fleet.history(&all, &Filter::default(), u64::MAX));
        });
        let json_ms = median_ms(|| {
            for c in &fleet.history(&all, &Filter::default(), u64::MAX) {
                std::hint::black_box(c.message(WireFormat::Json));
            }
        });
        println!(
            "{devices} devices, history {:.1} MiB: replay of {n} messages: {protobuf_ms:.2} ms (protobuf), {json_ms:.2} ms (JSON)",
            fleet.history_bytes() as f64 / (1 << 20) as f64
        );
    }
}
