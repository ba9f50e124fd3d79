//! The hub's unit tests: fan-out, presence and takeover, fleet statistics and the
//! history budget, driven through the hub's own entry points.

use std::sync::Arc;

use super::*;
use crate::proto::{envelope::Body, FleetStats, Telemetry};

fn hub_with(history: HistoryLimits) -> Arc<Hub> {
    Hub::new(
        Arc::new(Metrics::new()),
        Options {
            history,
            ..Options::default()
        },
    )
}

fn hub() -> Arc<Hub> {
    hub_with(HistoryLimits::default())
}

fn info(id: &str, tags: &[(&str, &str)]) -> Arc<DeviceInfo> {
    Arc::new(DeviceInfo {
        id: id.into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn online(hub: &Hub, id: &str, tags: &[(&str, &str)], at: u64) -> DeviceSession {
    hub.device_online_at(info(id, tags), at).session
}

fn publish(hub: &Hub, s: &DeviceSession, category: &str, seq: u64, at: u64) -> Published {
    let t = Telemetry {
        category: category.into(),
        seq,
        ..Default::default()
    };
    hub.publish(s, Publication::new(s.info.clone(), t, at))
}

/// Telemetry messages queued for a dashboard (presence left aside).
fn queued(d: &DashboardHandle) -> usize {
    let mut out = Vec::new();
    d.outbox.drain(&mut out);
    out.iter()
        .filter(|m| matches!(m.envelope().body, Some(Body::Telemetry(_))))
        .count()
}

fn subscribe(hub: &Arc<Hub>, d: &Arc<DashboardHandle>, pattern: &str, filter: Filter) {
    hub.subscribe(
        d,
        &[Pattern::parse(pattern).unwrap()],
        filter,
        Delivery::Live,
    )
    .run(WireFormat::Protobuf, Vec::new());
}

#[test]
fn overlapping_patterns_deliver_once_and_filters_narrow() {
    let hub = hub();
    let a = hub.register_dashboard(16, WireFormat::Protobuf);
    let b = hub.register_dashboard(16, WireFormat::Protobuf);
    for p in ["env.*", "*", "env.temperature"] {
        subscribe(&hub, &a, p, Filter::default());
    }
    let north = Filter {
        tags: [("fleet".to_string(), "north".to_string())].into(),
        ..Default::default()
    };
    subscribe(&hub, &b, "env.*", north);

    let d1 = online(&hub, "d1", &[("fleet", "north")], 1);
    let d2 = online(&hub, "d2", &[("fleet", "south")], 1);
    let out = publish(&hub, &d1, "env.temperature", 1, 2);
    assert_eq!(out.delivered, 2);
    publish(&hub, &d2, "env.temperature", 1, 2);
    publish(&hub, &d1, "power.battery", 2, 2);
    assert_eq!(queued(&a), 3);
    assert_eq!(queued(&b), 1);

    hub.unregister_dashboard(&a, [Pattern::parse("*").unwrap()].iter());
    assert_eq!(publish(&hub, &d2, "power.battery", 2, 3).delivered, 0);
}

#[test]
fn presence_on_transitions_only_and_takeover_kicks() {
    let hub = hub();
    let dash = hub.register_dashboard(16, WireFormat::Protobuf);
    let first = online(&hub, "d1", &[], 1);
    let second = online(&hub, "d1", &[], 2);
    // The takeover stored a permit for the first session's kick.
    assert!(futures_util::FutureExt::now_or_never(first.kick.notified()).is_some());
    hub.device_offline(&first); // stale session: no effect
    assert_eq!(hub.online_devices(), 1);
    let mut out = Vec::new();
    let states = |out: &mut Vec<Arc<Encoded>>| -> Vec<bool> {
        dash.outbox.drain(out);
        out.iter()
            .map(|m| match &m.envelope().body {
                Some(Body::Presence(p)) => p.online,
                _ => unreachable!(),
            })
            .collect()
    };
    assert_eq!(states(&mut out), [true], "one transition, one event");
    hub.device_offline(&second);
    assert_eq!(hub.online_devices(), 0);
    assert_eq!(states(&mut out), [false]);
    // Changes the dashboard has not drained yet coalesce to the latest state.
    let again = online(&hub, "d1", &[], 3);
    hub.device_offline(&again);
    assert_eq!(states(&mut out), [false]);
    // A dashboard connecting while a device is online gets it in its snapshot.
    let _third = online(&hub, "d1", &[], 4);
    let late = hub.register_dashboard(16, WireFormat::Protobuf);
    let mut snapshot = Vec::new();
    late.outbox.drain(&mut snapshot);
    assert_eq!(snapshot.len(), 1);
}

/// What other nodes say arrives out of order across nodes: a snapshot may still
/// list a device under the node it left, after the takeover by a third node.
#[test]
fn a_later_owner_elsewhere_wins_over_a_stale_listing() {
    let hub = hub();
    let (a, b) = (1, 2);
    hub.remote_takeover(a, info("d1", &[]), 200);
    // A snapshot of node b, read after the takeover, still lists d1 since 100.
    hub.remote_node(b, Some(vec![(info("d1", &[]), 100)]));
    assert_eq!(hub.online_devices(), 1);
    // The owner is still a: its offline is obeyed, b's would not be.
    hub.remote_presence(
        b,
        PresenceChange {
            device: info("d1", &[]),
            online: false,
            at_ms: 300,
        },
    );
    assert_eq!(hub.online_devices(), 1, "b no longer owns it");
    hub.remote_presence(
        a,
        PresenceChange {
            device: info("d1", &[]),
            online: false,
            at_ms: 300,
        },
    );
    assert_eq!(hub.online_devices(), 0);
    // A node that is gone takes its devices offline, and only its own.
    hub.remote_node(a, Some(vec![(info("x", &[]), 400)]));
    hub.remote_node(b, Some(vec![(info("y", &[]), 400)]));
    assert_eq!(hub.online_devices(), 2);
    hub.remote_node(a, None);
    assert_eq!(hub.online_devices(), 1);
}

fn stats_of(msg: &Encoded) -> &FleetStats {
    match &msg.envelope().body {
        Some(Body::FleetStats(f)) => f,
        other => panic!("{other:?}"),
    }
}

/// The telemetry a subscription to `pattern` would replay now, every chunk.
fn replayed(hub: &Hub, pattern: &str) -> Vec<Telemetry> {
    hub.gather(
        &[Pattern::parse(pattern).unwrap()],
        &Filter::default(),
        u64::MAX,
    )
    .iter()
    .flat_map(|m| match &m.envelope().body {
        Some(Body::History(h)) => h.telemetry.clone(),
        other => panic!("{other:?}"),
    })
    .collect()
}

/// Every kept message a `*` subscription would replay now.
fn kept(hub: &Hub) -> usize {
    replayed(hub, "*").len()
}

#[test]
fn ticks_report_changes_rates_and_forget_long_offline_devices() {
    let hub = hub_with(HistoryLimits {
        len: 2,
        replay_max: 100,
        series_per_device: 2,
        max_bytes: 1 << 20,
    });
    let d = online(&hub, "d", &[], 1_000);
    assert!(
        hub.tick(1_000, 60_000).is_some(),
        "a new device is a change"
    );
    // A dashboard that holds one message: "b" then "c" evicts "b".
    let slow = hub.register_dashboard(1, WireFormat::Protobuf);
    subscribe(&hub, &slow, "b", Filter::default());
    subscribe(&hub, &slow, "c", Filter::default());
    for seq in 1..=10 {
        publish(&hub, &d, "a", seq, 1_500);
    }
    publish(&hub, &d, "b", 11, 1_500);
    publish(&hub, &d, "c", 12, 1_500);
    d.rate_limited();
    let tick = hub.tick(3_000, 60_000).unwrap();
    let s = &stats_of(&tick).devices[0];
    assert_eq!(s.messages, 12);
    assert_eq!(s.rate, 6.0, "12 messages in 2 s");
    assert_eq!((s.rate_limited, s.dropped), (1, 1));
    assert_eq!(
        s.categories,
        ["a", "b"],
        "series beyond the cap are not kept"
    );
    // Nothing changed but the rate, which fell to 0; then nothing at all.
    assert_eq!(
        stats_of(&hub.tick(4_000, 60_000).unwrap()).devices[0].rate,
        0.0
    );
    assert!(hub.tick(5_000, 60_000).is_none());

    // The window keeps the newest `len` messages per series.
    let seqs: Vec<u64> = replayed(&hub, "a").iter().map(|t| t.seq).collect();
    assert_eq!(seqs, [9, 10]);

    hub.directory.disconnect(&d, 6_000, |_| {});
    assert!(!stats_of(&hub.tick(6_000, 60_000).unwrap()).devices[0].online);
    let gone = hub.tick(66_000, 60_000).unwrap();
    assert_eq!(stats_of(&gone).forgotten, ["d"]);
    assert_eq!(hub.directory.remembered_count(), 0);
    assert_eq!(hub.history.bytes(), 0);
    assert_eq!(kept(&hub), 0);
}

#[test]
fn the_byte_budget_is_shared_by_the_series() {
    // Each test message is 13 bytes encoded, 77 as accounted.
    let size = Publication::new(
        info("d0", &[]),
        Telemetry {
            category: "a".into(),
            seq: 20,
            ..Default::default()
        },
        1,
    )
    .message()
    .message(WireFormat::Protobuf)
    .payload()
    .len()
        + history::ENTRY_OVERHEAD;
    assert_eq!(size, 77);
    let hub = hub_with(HistoryLimits {
        len: 10,
        replay_max: 1000,
        series_per_device: 16,
        max_bytes: 4 * 3 * size + 10,
    });
    let sessions: Vec<DeviceSession> = (0..5)
        .map(|d| online(&hub, &format!("d{d}"), &[], 0))
        .collect();
    for seq in 20..40 {
        publish(&hub, &sessions[0], "a", seq, 1);
    }
    assert_eq!(kept(&hub), 10, "alone, a series keeps history_len");
    // Four series share the budget: 3 messages each, d0 shrinking as it
    // publishes again.
    for seq in 20..40 {
        for s in sessions.iter().take(4) {
            publish(&hub, s, "a", seq, 1);
        }
    }
    assert_eq!(kept(&hub), 12);
    assert_eq!(hub.history.bytes(), 12 * size);
    // A fifth series: the next tick trims the idle ones to the new share (2 each).
    publish(&hub, &sessions[4], "a", 20, 1);
    assert_eq!(kept(&hub), 13);
    hub.tick(2, 60_000);
    assert_eq!(kept(&hub), 9, "4 × 2 + d4's one");
    assert_eq!(hub.history.bytes(), 9 * size);
}

#[test]
fn a_wide_replay_takes_the_latest_of_the_most_recently_active_series() {
    let hub = hub_with(HistoryLimits {
        len: 10,
        replay_max: 2,
        series_per_device: 16,
        max_bytes: 1 << 20,
    });
    for (d, at) in [("d0", 5), ("d1", 9), ("d2", 7)] {
        let s = online(&hub, d, &[], 0);
        for seq in 1..=3 {
            publish(&hub, &s, "a", seq, at);
        }
    }
    let got: Vec<(String, u64)> = replayed(&hub, "*")
        .into_iter()
        .map(|t| (t.device_id, t.seq))
        .collect();
    assert_eq!(got, [("d1".to_string(), 3), ("d2".to_string(), 3)]);
}

#[test]
fn dropped_telemetry_is_counted_against_the_device_that_sent_it() {
    let hub = hub();
    let dash = hub.register_dashboard(2, WireFormat::Protobuf);
    subscribe(&hub, &dash, "*", Filter::default());
    let (fast, slow) = (online(&hub, "fast", &[], 0), online(&hub, "slow", &[], 0));
    // The queue holds 2: fast's two messages fill it, slow's two push them out.
    for seq in 1..=2 {
        publish(&hub, &fast, "a", seq, 1);
    }
    for seq in 1..=2 {
        publish(&hub, &slow, "a", seq, 1);
    }
    hub.tick(1, 60_000);
    let watcher = hub.register_dashboard(16, WireFormat::Protobuf);
    hub.fleet.watch(&watcher, true, 2);
    let mut out = Vec::new();
    watcher.outbox.drain(&mut out);
    let full = out
        .iter()
        .find_map(|m| match &m.envelope().body {
            Some(Body::FleetStats(f)) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert!(full.full);
    let dropped: Vec<(&str, u64)> = full
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.dropped))
        .collect();
    assert_eq!(dropped, [("fast", 2), ("slow", 0)]);
    // Watching again sends no second snapshot.
    hub.fleet.watch(&watcher, true, 3);
    watcher.outbox.drain(&mut out);
    assert!(out.is_empty());
}

#[test]
fn a_remote_connection_takes_over_unless_ours_is_later() {
    let hub = hub();
    let kicked =
        |s: &DeviceSession| futures_util::FutureExt::now_or_never(s.kick.notified()).is_some();
    let other = hub.node().wrapping_add(1);
    // A race (both nodes saw the device offline): the later connection wins.
    let ours = online(&hub, "d1", &[], 100);
    BusEvents::presence(
        &*hub,
        other,
        PresenceChange {
            device: info("d1", &[]),
            online: true,
            at_ms: 99,
        },
    );
    assert!(
        !kicked(&ours),
        "ours is later: the other node closes its own"
    );
    BusEvents::presence(
        &*hub,
        other,
        PresenceChange {
            device: info("d1", &[]),
            online: true,
            at_ms: 101,
        },
    );
    assert!(kicked(&ours), "theirs is later");
    hub.device_offline(&ours);
    assert_eq!(hub.online_devices(), 1, "still online, on the other node");
    // A takeover always wins: that node saw the device online before it connected.
    let ours = online(&hub, "d2", &[], 500);
    BusEvents::takeover(&*hub, other, info("d2", &[]), 500);
    assert!(kicked(&ours));
    // The other node's offline for d2 takes it offline here too.
    BusEvents::presence(
        &*hub,
        other,
        PresenceChange {
            device: info("d2", &[]),
            online: false,
            at_ms: 600,
        },
    );
    assert_eq!(hub.online_devices(), 1, "d1 only");
}
