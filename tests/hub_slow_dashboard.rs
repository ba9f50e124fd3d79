//! A dashboard that stops reading must not stall the device or other dashboards:
//! its queue drops the oldest telemetry, it is told how much with a `Dropped`
//! notice once it reads again, and the drops are counted.

mod common;

use std::time::Duration;

use common::*;
use telehub::proto::envelope::Body;

const MESSAGES: u64 = 1200;
const SIZE: usize = 8 * 1024;

// Two workers, like the hub in production: the device, the fast dashboard and the
// test's own clients must not have to take turns on one thread to keep up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dashboard_does_not_stall_others_and_is_told_what_it_missed() {
    let hub = Hub::with(|c| {
        // Room for scheduling jitter: the fast dashboard must never drop, and the
        // slow one still overflows it many times over.
        c.dashboard.queue_len = 256;
        c.rate.per_second = 100_000;
        c.rate.burst = 100_000;
    })
    .await;

    // The slow dashboard: a tiny receive window and no compression, so the hub
    // fills its socket quickly; then it stops reading.
    let mut slow = hub.slow_dashboard("slow").await;
    slow.subscribe(&["*"]).await;

    let mut fast = hub.dashboard().await;
    fast.subscribe(&["*"]).await;
    let mut dev = hub.device("dev-1").await;

    // 8 KiB of incompressible readings each: ~10 MB in all, more than the socket
    // buffers between the hub and the slow dashboard hold (the kernel grows the
    // hub's send buffer up to tcp_wmem's maximum, 4 MB by default).
    let started = tokio::time::Instant::now();
    let publisher = async {
        for i in 0..MESSAGES {
            dev.send_telemetry("bulk", vec![raw("blob", incompressible(SIZE, i))])
                .await;
        }
    };
    // The fast dashboard reads in its own task, as a real one would.
    let receiver = tokio::spawn(async move {
        for seq in 1..=MESSAGES {
            let t = fast.expect_telemetry().await;
            assert_eq!(
                t.seq, seq,
                "the fast dashboard gets every message, in order"
            );
        }
    });
    publisher.await;
    tokio::time::timeout(T, receiver)
        .await
        .expect("the fast dashboard was stalled")
        .expect("fast dashboard task");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fan-out was stalled: {:?}",
        started.elapsed()
    );

    let m = hub.scrape().await;
    let dropped = m.get("telehub_telemetry_dropped_total");
    assert!(
        dropped > 0.0,
        "the slow dashboard's queue dropped telemetry"
    );

    // The slow dashboard reads again: telemetry (with gaps), and a Dropped notice
    // whose counts add up to the hub's.
    let mut notices = 0;
    let mut last_total = 0;
    let mut received = 0;
    let mut last_seq = 0;
    while last_seq < MESSAGES {
        match slow.next_envelope().await.body {
            Some(Body::Telemetry(t)) => {
                assert!(t.seq > last_seq, "in order: {} after {last_seq}", t.seq);
                received += 1;
                last_seq = t.seq;
            }
            Some(Body::Dropped(n)) => {
                assert!(n.count > 0 && n.total >= n.count, "{n:?}");
                assert!(n.total > last_total, "total only grows: {n:?}");
                notices += 1;
                last_total = n.total;
            }
            Some(Body::Presence(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(notices > 0, "a Dropped notice was sent");
    assert_eq!(
        received + last_total,
        MESSAGES,
        "every message was either delivered or reported dropped"
    );
    assert_eq!(
        last_total as f64, dropped,
        "only the slow dashboard dropped"
    );
    // It is still connected and served.
    assert!(slow
        .subscribe(&["other"])
        .await
        .contains(&"other".to_string()));
}
