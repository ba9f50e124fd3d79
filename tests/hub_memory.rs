//! Memory is bounded in bytes, not only in messages: dashboards that never read
//! cannot make the hub hold more queued telemetry than `dashboard.queue_bytes` each
//! and `dashboard.queued_bytes_max` in all (as accounted, see `hub::outbox`), and a
//! message cannot carry more than `limits.max_readings` readings.
//!
//! One test per file: it reads this process's resident memory.
//!
//! Each dashboard may queue `QUEUE_BYTES`: eight of them 16 MiB. The hub's budget,
//! `QUEUED_MAX`, holds them to twice that (it is fair: see `hub::outbox`).

mod common;

use std::time::Duration;

use common::*;
use telehub::proto::{error::Code, Reading};

const DEVICES: u64 = 8;
const STUCK: usize = 8;
const SIZE: usize = 60 * 1024;
const QUEUE_BYTES: usize = 2 << 20;
const QUEUED_MAX: usize = 4 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_dashboards_and_large_messages_stay_within_the_byte_bounds() {
    let hub = Hub::with(|c| {
        c.dashboard.queue_bytes = QUEUE_BYTES;
        c.dashboard.queued_bytes_max = QUEUED_MAX;
        c.rate.per_second = 100_000;
        c.rate.burst = 100_000;
    })
    .await;

    // A 60 KB message of 30,000 empty readings would cost the hub far more than its
    // bytes: refused.
    let mut dev = hub.device("dev-many").await;
    dev.send_telemetry("env.t", vec![Reading::default(); 30_000])
        .await;
    let e = dev.expect_error().await;
    assert_eq!(code(&e), Code::Malformed);
    assert!(e.message.contains("at most 1024"), "{}", e.message);

    // Dashboards with a tiny receive window and no compression, that stop reading.
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let mut d = hub.slow_dashboard("stuck").await;
        d.subscribe(&["*"]).await;
        stuck.push(d);
    }
    let before = rss_bytes();

    // Devices send 60 KB incompressible messages as fast as they can for 3 s,
    // while /metrics is sampled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut senders = Vec::new();
    for n in 0..DEVICES {
        let mut dev = hub.device(&format!("dev-{n}")).await;
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            while tokio::time::Instant::now() < deadline {
                dev.send_telemetry(
                    "bulk",
                    vec![raw("blob", incompressible(SIZE, n * 1_000_000 + i))],
                )
                .await;
                i += 1;
            }
            (dev, i)
        }));
    }
    // The total stays within twice the budget (fairness: a dashboard under its share
    // may queue whatever the others hold), and concurrent publishers may each pass
    // it by one message. The dashboards' own bounds alone would allow 16 MiB.
    let bound = 2 * QUEUED_MAX + DEVICES as usize * (2 * (SIZE + 64) + 64);
    let mut peak_queued = 0.0f64;
    while tokio::time::Instant::now() < deadline {
        let m = hub.scrape().await;
        peak_queued = peak_queued.max(m.get("telehub_queued_bytes"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sent = 0;
    for s in senders {
        let (_dev, n) = s.await.expect("sender");
        sent += n;
    }
    let m = hub.scrape().await;
    peak_queued = peak_queued.max(m.get("telehub_queued_bytes"));
    let grown = rss_bytes().saturating_sub(before);
    let sent_bytes = sent as usize * SIZE;
    eprintln!(
        "sent {sent} messages ({} MB); peak queued {peak_queued} bytes; dropped {}; RSS grew {} MB",
        sent_bytes >> 20,
        m.get("telehub_telemetry_dropped_total"),
        grown >> 20
    );
    assert!(
        sent_bytes > 2 * QUEUED_MAX,
        "the devices sent more than the bound many times over"
    );
    assert!(
        peak_queued <= bound as f64,
        "queued {peak_queued} bytes, bound {bound}"
    );
    assert!(
        m.get("telehub_telemetry_dropped_total") > 0.0,
        "the bound made the stuck dashboards drop"
    );
    // What the hub holds besides the queues (socket buffers, TLS, allocator slack)
    // is far below what was sent; without the byte bound the queues alone would
    // hold up to 4096 messages, about 240 MB.
    assert!(
        grown < 160 << 20,
        "RSS grew {} MB while {} MB were sent",
        grown >> 20,
        sent_bytes >> 20
    );
    drop(stuck);
}
