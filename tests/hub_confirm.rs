//! Uplink confirmations (`ConfirmTelemetry`): the hub confirms accepted telemetry
//! cumulatively, tells a reconnecting device where to resume, drops resends it
//! already accepted (a dashboard sees every reading once), starts afresh on a new
//! boot id, reports rate-limited messages instead of confirming them, and changes
//! nothing for devices that never ask.

mod common;

use std::time::Duration;

use common::*;
use prost::Message as _;
use telehub::proto::{envelope::Body, error::Code, ConfirmTelemetry, Envelope, TelemetryConfirmed};

fn confirm(boot_id: u64) -> Envelope {
    Envelope {
        body: Some(Body::ConfirmTelemetry(ConfirmTelemetry { boot_id })),
    }
}

async fn expect_confirmed(device: &mut Client) -> TelemetryConfirmed {
    device
        .expect("TelemetryConfirmed", |b| match b {
            Body::TelemetryConfirmed(c) => Some(c.clone()),
            _ => None,
        })
        .await
}

/// Reads confirmations until one covers `seq`; returns every one read.
async fn confirmed_through(device: &mut Client, seq: u64) -> Vec<TelemetryConfirmed> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let c = expect_confirmed(device).await;
        let done = c.through_seq >= seq;
        seen.push(c);
        if done {
            return seen;
        }
    }
    panic!("no confirmation through {seq}: {seen:?}");
}

/// A device that asked for confirmations under `boot`, with the hub's first answer.
async fn confirming_device(hub: &Hub, id: &str, boot: u64) -> (Client, TelemetryConfirmed) {
    let mut device = hub.device(id).await;
    device.send(&confirm(boot)).await;
    let first = expect_confirmed(&mut device).await;
    assert_eq!(first.boot_id, boot);
    (device, first)
}

/// The seqs of `device_id`'s telemetry a dashboard receives until it goes quiet.
async fn seqs_seen(dashboard: &mut Client, device_id: &str, quiet: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(event) = dashboard.next_event_within(quiet).await {
        match event {
            Event::Envelope(Envelope {
                body: Some(Body::Telemetry(t)),
            }) if t.device_id == device_id => seqs.push(t.seq),
            Event::Close(_) | Event::Gone(_) => break,
            _ => {}
        }
    }
    seqs
}

#[tokio::test]
async fn confirmations_are_cumulative_and_come_in_batches_or_after_a_short_delay() {
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, first) = confirming_device(&hub, "c1", 7).await;
    assert_eq!(first.through_seq, 0, "a boot the hub never saw");
    assert!(first.rate_limited.is_empty());

    // 40 at once: one confirmation after the 32nd is due at once, the rest within
    // the delay.
    for _ in 0..40 {
        device
            .send_telemetry("env.t", vec![number("t", 1.0, "Cel")])
            .await;
    }
    let seen = confirmed_through(&mut device, 40).await;
    // One per 32 messages or per 100 ms: a handful, not one per message.
    assert!(seen.len() <= 10, "{seen:?}");
    assert!(seen
        .windows(2)
        .all(|w| w[0].through_seq <= w[1].through_seq));
    assert_eq!(seen.last().map(|c| c.through_seq), Some(40));
    let seqs = seqs_seen(&mut dashboard, "c1", Duration::from_millis(300)).await;
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());

    // A lone message is confirmed within about the delay.
    let started = tokio::time::Instant::now();
    device.send_telemetry("env.t", vec![]).await;
    assert_eq!(expect_confirmed(&mut device).await.through_seq, 41);
    assert!(started.elapsed() < Duration::from_secs(1));
    let m = hub.scrape().await;
    assert!(m.get("telehub_telemetry_confirmations_total") >= 3.0);
}

#[tokio::test]
async fn a_reconnect_learns_where_to_resume_and_resends_are_published_once() {
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, _) = confirming_device(&hub, "c2", 42).await;
    for _ in 0..10 {
        device.send_telemetry("env.t", vec![]).await;
    }
    confirmed_through(&mut device, 10).await;
    // Five more, then the link drops before any confirmation is read.
    for _ in 0..5 {
        device.send_telemetry("env.t", vec![]).await;
    }
    assert_eq!(
        seqs_seen(&mut dashboard, "c2", Duration::from_millis(300)).await,
        (1..=15).collect::<Vec<_>>()
    );
    drop(device);

    // The new connection is told 15 went through: the unconfirmed tail was accepted.
    let (mut device, first) = confirming_device(&hub, "c2", 42).await;
    assert_eq!(first.through_seq, 15);
    // A device that resends more than it must (say, it lost its confirmations): the
    // hub drops what it accepted already and confirms it again.
    for seq in 8..=17 {
        device
            .send(&telemetry("env.t", seq, vec![number("t", seq as f64, "")]))
            .await;
    }
    let seen = confirmed_through(&mut device, 17).await;
    assert!(seen.iter().all(|c| c.rate_limited.is_empty()));
    assert_eq!(
        seqs_seen(&mut dashboard, "c2", Duration::from_millis(300)).await,
        vec![16, 17],
        "every reading once"
    );
    let m = hub.scrape().await;
    assert_eq!(m.get("telehub_telemetry_duplicates_total"), 8.0);
    assert_eq!(m.get("telehub_telemetry_accepted_total"), 17.0);
}

#[tokio::test]
async fn a_reboot_with_a_new_boot_id_is_not_taken_for_resends() {
    let hub = Hub::start().await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, _) = confirming_device(&hub, "c3", 1).await;
    for _ in 0..5 {
        device.send_telemetry("env.t", vec![]).await;
    }
    confirmed_through(&mut device, 5).await;
    drop(device);

    // Rebooted: seq starts again from 1 under a new boot id.
    let (mut device, first) = confirming_device(&hub, "c3", 2).await;
    assert_eq!(first.through_seq, 0);
    for seq in 1..=3 {
        device.send(&telemetry("env.t", seq, vec![])).await;
    }
    confirmed_through(&mut device, 3).await;
    assert_eq!(
        seqs_seen(&mut dashboard, "c3", Duration::from_millis(300)).await,
        vec![1, 2, 3, 4, 5, 1, 2, 3]
    );
    assert_eq!(
        hub.scrape().await.get("telehub_telemetry_duplicates_total"),
        0.0
    );
}

#[tokio::test]
async fn rate_limited_messages_are_reported_not_confirmed_and_accepted_when_resent() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 5;
        c.rate.burst = 5;
        c.rate.abuse_seconds = 30;
    })
    .await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, _) = confirming_device(&hub, "c4", 9).await;
    for _ in 0..8 {
        device.send_telemetry("env.t", vec![]).await;
    }
    // The burst of 5 passes; 6, 7 and 8 are refused, reported, and not confirmed.
    let mut refused = Vec::new();
    let mut retry_after = 0;
    let mut through = 0;
    while refused.len() < 3 {
        let env = device.next_envelope().await;
        match env.body {
            Some(Body::TelemetryConfirmed(c)) => {
                refused.extend(c.rate_limited);
                retry_after = retry_after.max(c.retry_after_ms);
                through = c.through_seq;
            }
            Some(Body::Error(e)) => assert_eq!(code(&e), Code::RateLimited),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, [6, 7, 8]);
    assert_eq!(through, 5);
    assert!(retry_after > 0);

    // Resent with the same seqs, once the limiter allows each, they are accepted
    // and the confirmation passes them.
    for seq in 6..=8 {
        tokio::time::sleep(Duration::from_millis(220)).await;
        device.send(&telemetry("env.t", seq, vec![])).await;
    }
    let seen = confirmed_through(&mut device, 8).await;
    assert!(seen.iter().all(|c| c.rate_limited.is_empty()), "{seen:?}");
    assert_eq!(
        seqs_seen(&mut dashboard, "c4", Duration::from_millis(300)).await,
        (1..=8).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn devices_that_do_not_ask_see_no_confirmations() {
    let hub = Hub::start().await;
    let mut device = hub.device("plain").await;
    for _ in 0..40 {
        device.send_telemetry("env.t", vec![]).await;
    }
    // An empty envelope is answered MALFORMED: once it is, everything before it was
    // handled, and nothing but that answer arrived.
    device
        .send_raw(telehub::ws::Message::Binary(Default::default()))
        .await;
    let e = device.expect_error().await;
    assert_eq!(code(&e), Code::Malformed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(device
        .next_event_within(Duration::from_millis(100))
        .await
        .is_none());
    assert_eq!(
        hub.scrape()
            .await
            .get("telehub_telemetry_confirmations_total"),
        0.0
    );
}

#[tokio::test]
async fn confirming_needs_a_boot_id_and_seqs_above_zero() {
    let hub = Hub::start().await;
    let mut device = hub.device("c5").await;
    device.send(&confirm(0)).await;
    assert_eq!(code(&device.expect_error().await), Code::Malformed);
    device.send(&confirm(3)).await;
    assert_eq!(expect_confirmed(&mut device).await.through_seq, 0);
    device.send(&telemetry("env.t", 0, vec![])).await;
    let e = device.expect_error().await;
    assert_eq!(code(&e), Code::Malformed);
    assert!(e.message.contains("seq"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_delivers_to_dashboards_everything_it_confirmed() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 1_000_000;
        c.rate.burst = 1_000_000;
    })
    .await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, _) = confirming_device(&hub, "s1", 5).await;
    // A stream still being read when the hub stops.
    for _ in 0..2000 {
        device
            .send_telemetry("env.t", vec![number("t", 1.0, "")])
            .await;
    }
    let stopping = tokio::spawn(async move { hub.stop().await });

    let mut through = 0;
    while let Some(Event::Envelope(env)) = device.next_event_within(T).await {
        if let Some(Body::TelemetryConfirmed(c)) = env.body {
            through = through.max(c.through_seq);
        }
    }
    let seen = seqs_seen(&mut dashboard, "s1", Duration::from_secs(3)).await;
    stopping.await.expect("the hub stops");
    assert!(through > 0, "something was confirmed before the stop");
    let missing: Vec<u64> = (1..=through).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "confirmed through {through}, but the dashboard never got {} of them (first {:?})",
        missing.len(),
        missing.first()
    );
}

#[tokio::test]
async fn a_reconnecting_device_is_told_which_refused_seqs_the_hub_still_awaits() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 1;
        c.rate.burst = 2;
        c.rate.abuse_seconds = 30;
    })
    .await;
    let (mut device, _) = confirming_device(&hub, "c6", 11).await;
    for _ in 0..4 {
        device.send_telemetry("env.t", vec![]).await;
    }
    let mut refused = Vec::new();
    while refused.len() < 2 {
        if let Some(Body::TelemetryConfirmed(c)) = device.next_envelope().await.body {
            refused.extend(c.rate_limited);
        }
    }
    assert_eq!(refused, [3, 4]);
    drop(device);

    let (_device, first) = confirming_device(&hub, "c6", 11).await;
    assert_eq!(first.through_seq, 2);
    assert_eq!(first.rate_limited, [3, 4], "still awaited, with their seqs");
}

#[tokio::test]
async fn past_256_awaited_refusals_the_connection_closes_and_nothing_unaccepted_is_confirmed() {
    let hub = Hub::with(|c| {
        c.rate.per_second = 1;
        c.rate.burst = 2;
        c.rate.abuse_seconds = 60;
    })
    .await;
    let mut dashboard = hub.dashboard().await;
    dashboard.subscribe(&["env.*"]).await;
    let (mut device, _) = confirming_device(&hub, "c7", 3).await;
    for _ in 0..300 {
        if device
            .try_send_raw(telehub::ws::Message::Binary(
                telemetry("env.t", device.seq + 1, vec![])
                    .encode_to_vec()
                    .into(),
            ))
            .await
            .is_err()
        {
            break;
        }
        device.seq += 1;
    }
    let mut through = 0;
    let mut refused = Vec::new();
    let code = loop {
        match device.next_event().await {
            Event::Envelope(Envelope {
                body: Some(Body::TelemetryConfirmed(c)),
            }) => {
                through = through.max(c.through_seq);
                refused.extend(c.rate_limited);
            }
            Event::Close(frame) => break frame.map_or(0, |f| f.code),
            Event::Gone(e) => panic!("no close frame: {e}"),
            _ => {}
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(through, 2, "the burst, and nothing refused");
    assert_eq!(refused, (3..=258).collect::<Vec<u64>>());
    assert_eq!(
        seqs_seen(&mut dashboard, "c7", Duration::from_millis(300)).await,
        [1, 2]
    );
}
