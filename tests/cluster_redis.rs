//! Several hubs joined through a real Redis (`serve --cluster`): each hub is a real
//! server with its own `RedisBus`, and Redis is a throwaway `redis-server` (see
//! `common::redis`).
//!
//! - Telemetry from a device on node 1 reaches dashboards on nodes 2 and 3 through
//!   every kind of subscription, exactly once, with the same content and
//!   `received_ms`; filters that do not match receive nothing.
//! - Presence crosses, a late dashboard's snapshot holds remote devices, and a
//!   second connection on another node takes the device over (4001).
//! - A node that leaves (graceful shutdown) has its devices offline at once.
//! - Redis stopped: local fan-out goes on, `/readyz` answers 503, dashboards are
//!   told (`ClusterLink`); Redis back (empty): every node joins again by itself,
//!   dashboards are told, and cross-node fan-out resumes.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use telehub::{
    cluster::RedisBus,
    config,
    hub::Bus as _,
    proto::{envelope::Body, Envelope, WatchFleet},
};

/// Fast heartbeats, so that joins and deaths take a test fraction of a second.
fn settings(redis: &Redis, name: &str) -> config::Cluster {
    config::Cluster {
        url: Some(redis.url()),
        node_id: Some(name.into()),
        heartbeat: Duration::from_millis(100),
        // Long enough that no node is taken for dead while Redis restarts.
        node_timeout: Duration::from_secs(5),
        ..config::Cluster::default()
    }
}

struct Node {
    hub: Hub,
    bus: Arc<RedisBus>,
}

async fn node(redis: &Redis, name: &str) -> Node {
    node_with(redis, name, |_| {}).await
}

/// The database the nodes on `redis` share (one per test: one per Redis).
async fn store_of(redis: &Redis) -> String {
    static STORES: std::sync::Mutex<Vec<(u16, String)>> = std::sync::Mutex::new(Vec::new());
    let known = STORES
        .lock()
        .unwrap()
        .iter()
        .find(|(port, _)| *port == redis.port)
        .map(|(_, url)| url.clone());
    match known {
        Some(url) => url,
        None => {
            let url = Postgres::shared_database().await;
            STORES.lock().unwrap().push((redis.port, url.clone()));
            url
        }
    }
}

async fn node_with(redis: &Redis, name: &str, tweak: impl FnOnce(&mut config::Cluster)) -> Node {
    let mut cluster = settings(redis, name);
    tweak(&mut cluster);
    let store = store_of(redis).await;
    let bus = RedisBus::new(&cluster, "127.0.0.1:0".parse().unwrap()).expect("bus");
    let hub = Hub::with_bus(bus.clone(), |c| {
        c.cluster = cluster;
        c.store.url = Some(store);
        c.dashboard.fleet_interval = Duration::from_millis(100);
    })
    .await;
    Node { hub, bus }
}

/// `n` nodes on one Redis, each joined and seeing all `n`.
async fn cluster(redis: &Redis, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(node(redis, &format!("node-{i}")).await);
    }
    for n_ in &nodes {
        wait_joined(n_, n).await;
    }
    nodes
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_joined(node: &Node, nodes: usize) {
    let m = &node.hub.app().metrics.cluster;
    wait_until("the node to join", || {
        node.bus.ready() && m.nodes.get() == nodes as i64
    })
    .await;
}

/// Waits until `node` subscribes in Redis to what covers `category`.
async fn wait_covers(node: &Node, channel_or_pattern: &str) {
    let want = format!("telehub:{channel_or_pattern}");
    wait_until(&want, || {
        let c = node.bus.subscribed();
        c.channels.contains(&want) || c.patterns.contains(&want)
    })
    .await;
}

#[tokio::test]
async fn telemetry_from_one_node_reaches_every_matching_dashboard_on_the_others() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut local = a.hub.dashboard().await;
    local.subscribe(&["env.temperature"]).await;
    let mut exact = b.hub.dashboard().await;
    exact.subscribe(&["env.temperature"]).await;
    let mut wildcard = b.hub.dashboard().await;
    wildcard.subscribe(&["env.*"]).await;
    let mut by_tag = c.hub.dashboard().await;
    by_tag
        .subscribe_filtered(&["env.*"], &[], &[("fleet", "north")])
        .await;
    let mut by_device = c.hub.dashboard().await;
    by_device
        .subscribe_filtered(&["env.*"], &["dev-1"], &[])
        .await;
    let mut other_tag = c.hub.dashboard().await;
    other_tag
        .subscribe_filtered(&["env.*"], &[], &[("fleet", "south")])
        .await;
    let mut other_category = c.hub.dashboard().await;
    other_category.subscribe(&["power"]).await;
    wait_covers(b, "t.env.*").await;
    wait_covers(c, "t.env.*").await;
    wait_covers(c, "t.power").await;

    let mut device = a.hub.device_tagged("dev-1", &[("fleet", "north")]).await;
    let p = exact.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));
    assert_eq!(p.tags.get("fleet").map(String::as_str), Some("north"));

    for n in 0..3 {
        device
            .send_telemetry(
                "env.temperature",
                vec![
                    number("celsius", 21.5 + f64::from(n), "Cel"),
                    raw("blob", vec![1, 2, 3]),
                ],
            )
            .await;
    }
    for n in 0..3 {
        let sent = local.expect_telemetry().await;
        assert_eq!(sent.device_id, "dev-1");
        for (what, d) in [
            ("exact", &mut exact),
            ("wildcard", &mut wildcard),
            ("tag filter", &mut by_tag),
            ("device filter", &mut by_device),
        ] {
            assert_eq!(d.expect_telemetry().await, sent, "{what}, message {n}");
        }
    }
    for d in [
        &mut exact,
        &mut wildcard,
        &mut by_tag,
        &mut other_tag,
        &mut other_category,
    ] {
        d.expect_no_telemetry(Duration::from_millis(200)).await;
    }
    let sent = a.hub.app().metrics.cluster.sent.get();
    assert_eq!(
        sent, 3,
        "each publication sent once, whatever the dashboards"
    );
    assert_eq!(b.hub.app().metrics.cluster.received.get(), 3);
    assert_eq!(c.hub.app().metrics.cluster.received.get(), 3);
}

#[tokio::test]
async fn a_node_receives_only_what_its_dashboards_need() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut d = b.hub.dashboard().await;
    d.subscribe(&["env.t"]).await;
    wait_covers(b, "t.env.t").await;
    let mut device = a.hub.device("dev-1").await;
    device
        .send_telemetry("power.v", vec![number("v", 1.0, "")])
        .await;
    device
        .send_telemetry("env.t", vec![number("t", 2.0, "")])
        .await;
    assert_eq!(d.expect_telemetry().await.category, "env.t");
    assert_eq!(
        b.hub.app().metrics.cluster.received.get(),
        1,
        "power.v never reached node 2"
    );
    // Unsubscribed: node 2 drops the channel.
    d.unsubscribe(&["env.t"]).await;
    wait_until("the channel to go", || {
        !b.bus.subscribed().channels.contains("telehub:t.env.t")
    })
    .await;
}

#[tokio::test]
async fn a_subscription_gets_the_history_of_devices_on_other_nodes() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut device = a.hub.device_tagged("dev-1", &[("fleet", "north")]).await;
    let mut other = c.hub.device_tagged("dev-2", &[("fleet", "south")]).await;
    // Nobody watches yet: node 2 receives none of it.
    for n in 0..3 {
        device
            .send_telemetry("env.t", vec![number("t", f64::from(n), "")])
            .await;
        other
            .send_telemetry("env.t", vec![number("t", f64::from(n), "")])
            .await;
    }
    // Sent is not yet accepted: wait until both nodes have taken all six.
    wait_until("the six readings to be accepted", || {
        a.hub.app().metrics.telemetry_accepted.get() == 3
            && c.hub.app().metrics.telemetry_accepted.get() == 3
    })
    .await;
    // Kept on their own nodes: a dashboard on node 1 replays dev-1's from there
    // and dev-2's from node 3.
    let mut probe = a.hub.dashboard().await;
    probe.subscribe(&["env.t"]).await;
    assert_eq!(probe.expect_history().await.len(), 6);
    assert_eq!(b.hub.app().metrics.cluster.received.get(), 0);

    let mut d = b.hub.dashboard().await;
    d.subscribe(&["env.*"]).await;
    let history = d.expect_history().await;
    let mut got: Vec<(String, u64)> = history
        .iter()
        .map(|t| (t.device_id.clone(), t.seq))
        .collect();
    got.sort();
    let want: Vec<(String, u64)> = ["dev-1", "dev-2"]
        .iter()
        .flat_map(|id| (1..=3).map(move |seq| (id.to_string(), seq)))
        .collect();
    assert_eq!(
        got, want,
        "both remote devices' history, from nodes 1 and 3"
    );
    // Then live, behind it.
    device
        .send_telemetry("env.t", vec![number("t", 9.0, "")])
        .await;
    assert_eq!(d.expect_telemetry().await.seq, 4);

    // Filtered: only what the filter lets through, from whichever node.
    let mut north = b.hub.dashboard().await;
    north
        .subscribe_filtered(&["env.t"], &[], &[("fleet", "north")])
        .await;
    let history = north.expect_history().await;
    assert!(
        history.iter().all(|t| t.device_id == "dev-1"),
        "{history:?}"
    );
    assert_eq!(history.last().map(|t| t.seq), Some(4));
}

#[tokio::test]
async fn fleet_statistics_count_devices_on_other_nodes() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut watcher = b.hub.dashboard().await;
    watcher
        .send(&Envelope {
            body: Some(Body::WatchFleet(WatchFleet { watch: true })),
        })
        .await;
    let mut device = a.hub.device("dev-1").await;
    for n in 0..4 {
        device
            .send_telemetry("env.t", vec![number("t", f64::from(n), "")])
            .await;
    }
    // Node 2 has no subscription: the counts come from node 1 alone.
    let deadline = Instant::now() + T;
    let stats = loop {
        assert!(
            Instant::now() < deadline,
            "node 2 never counted dev-1's 4 messages"
        );
        let f = watcher
            .expect("FleetStats", |b| match b {
                Body::FleetStats(f) => Some(f.clone()),
                _ => None,
            })
            .await;
        if let Some(s) = f
            .devices
            .iter()
            .find(|s| s.device_id == "dev-1" && s.messages == 4)
        {
            break s.clone();
        }
    };
    assert!(stats.online);
    assert_eq!(stats.categories, ["env.t"]);
    assert!(stats.last_seen_ms > 0);
    assert_eq!(b.hub.app().metrics.cluster.received.get(), 0);
}

#[tokio::test]
async fn presence_and_takeover_cross_nodes() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = a.hub.dashboard().await;
    let mut on_b = b.hub.dashboard().await;

    let mut old = a.hub.device_tagged("dev-1", &[("site", "x")]).await;
    assert!(on_a.expect_presence().await.online);
    let p = on_b.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));
    assert_eq!(p.tags.get("site").map(String::as_str), Some("x"));

    // A dashboard that arrives later on B has the remote device in its snapshot.
    let mut late = b.hub.dashboard().await;
    let p = late.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", true));

    // The same device id, connecting to node 2.
    let new = b.hub.device_tagged("dev-1", &[("site", "x")]).await;
    assert_eq!(
        old.expect_close().await,
        4001,
        "the older one, on node 1, closed"
    );
    for d in [&mut on_a, &mut on_b] {
        let next = d.next_event_within(Duration::from_millis(300)).await;
        assert!(next.is_none(), "a takeover is no presence change: {next:?}");
    }
    assert_eq!(a.hub.app().hub.online_devices(), 1);

    new.close().await;
    for d in [&mut on_a, &mut on_b] {
        let p = d.expect_presence().await;
        assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
    }
}

#[tokio::test]
async fn a_node_joining_late_learns_who_is_online_elsewhere() {
    let redis = Redis::start();
    let a = node(&redis, "node-1").await;
    wait_joined(&a, 1).await;
    let _d1 = a.hub.device("dev-1").await;
    let _d2 = a.hub.device("dev-2").await;
    let b = node(&redis, "node-2").await;
    wait_joined(&b, 2).await;
    wait_until("node 2 to read node 1's devices", || {
        b.hub.app().hub.online_devices() == 2
    })
    .await;
    let mut d = b.hub.dashboard().await;
    let mut seen = [d.expect_presence().await, d.expect_presence().await];
    seen.sort_by(|x, y| x.device_id.cmp(&y.device_id));
    assert_eq!(
        seen.iter()
            .map(|p| (p.device_id.as_str(), p.online))
            .collect::<Vec<_>>(),
        [("dev-1", true), ("dev-2", true)]
    );
}

#[tokio::test]
async fn a_node_that_leaves_takes_its_devices_offline_everywhere() {
    let redis = Redis::start();
    // Far longer than the test: only the node's own goodbye can take its device
    // offline in time.
    let slow = |c: &mut config::Cluster| c.node_timeout = Duration::from_secs(60);
    let a = node_with(&redis, "node-1", slow).await;
    let b = node_with(&redis, "node-2", slow).await;
    wait_joined(&a, 2).await;
    wait_joined(&b, 2).await;
    let held = format!("telehub:node.{:016x}", a.hub.app().hub.node());
    let mut on_b = b.hub.dashboard().await;
    let _device = a.hub.device("dev-1").await;
    assert!(on_b.expect_presence().await.online);
    assert_eq!(query::<i64>(&redis, &["EXISTS", &held]).await, 1);
    drop(a); // graceful shutdown: sessions close, the node says it leaves
    let p = on_b.expect_presence().await;
    assert_eq!((p.device_id.as_str(), p.online), ("dev-1", false));
    wait_until("one node left", || {
        b.hub.app().metrics.cluster.nodes.get() == 1
    })
    .await;
    assert_eq!(
        query::<i64>(&redis, &["EXISTS", &held]).await,
        0,
        "the node removed what it held"
    );
}

/// One command to the test's Redis.
async fn query<T: redis::FromRedisValue>(redis: &Redis, args: &[&str]) -> T {
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.expect("redis command")
}

#[tokio::test]
async fn redis_going_away_and_coming_back_empty() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut local = a.hub.dashboard().await;
    local.subscribe(&["*"]).await;
    let mut remote = b.hub.dashboard().await;
    remote.subscribe(&["*"]).await;
    wait_covers(b, "t.*").await;
    let mut device = a.hub.device("dev-1").await;
    assert!(remote.expect_presence().await.online);
    device
        .send_telemetry("env.t", vec![number("t", 1.0, "")])
        .await;
    local.expect_telemetry().await;
    remote.expect_telemetry().await;
    let (status, _, _) = a.hub.get("/readyz").await;
    assert_eq!(status, 200);

    redis.stop();
    wait_until("node 1 to see the link down", || !a.bus.ready()).await;
    // Each dashboard is told once, on either node.
    for d in [&mut local, &mut remote] {
        let notice = d.expect_cluster_link().await;
        assert!(!notice.linked, "{notice:?}");
        assert!(notice.message.contains("interrupted"), "{notice:?}");
    }
    let node_name = a.bus.node_name().to_owned();
    let (status, _, body) = a.hub.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster_link_down"), "{body}");
    let (status, _, _) = a.hub.get("/healthz").await;
    assert_eq!(status, 200, "still alive");
    // Local fan-out never stops.
    for n in 0..5 {
        device
            .send_telemetry("env.t", vec![number("t", f64::from(n), "")])
            .await;
        assert_eq!(local.expect_telemetry().await.device_id, "dev-1");
    }

    // Started again off the runtime: the hubs run on this thread.
    let redis = tokio::task::spawn_blocking(move || {
        redis.resume();
        redis
    })
    .await
    .unwrap();
    wait_joined(a, 2).await;
    wait_joined(b, 2).await;
    // Both subscribed again, in the new (empty) Redis.
    let deadline = Instant::now() + T;
    loop {
        let (_, ctl): (String, i64) = query(&redis, &["PUBSUB", "NUMSUB", "telehub:ctl"]).await;
        let patterns: i64 = query(&redis, &["PUBSUB", "NUMPAT"]).await;
        if ctl == 2 && patterns == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not subscribed again: {ctl} {patterns}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = a.hub.get("/readyz").await;
    assert_eq!(status, 200);
    // A dashboard connecting now that the link is back gets no notice.
    let mut fresh = a.hub.dashboard().await;
    fresh.expect_nothing(Duration::from_millis(100)).await;
    // The local dashboard hears that the link is back.
    let notice = local.expect_cluster_link().await;
    assert!(notice.linked && notice.node == node_name, "{notice:?}");
    // What was queued while Redis was away may arrive now, then the live flow and
    // the notice, in some order.
    device
        .send_telemetry("env.after", vec![number("t", 9.0, "")])
        .await;
    let (mut resumed, mut relinked) = (false, false);
    while !(resumed && relinked) {
        match remote.next_envelope().await.body {
            Some(Body::Telemetry(t)) => resumed |= t.category == "env.after",
            Some(Body::ClusterLink(c)) => relinked |= c.linked,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Redis came back empty: the device is still known online on node 2, and node
    // 1 wrote again what it holds, so a node joining now learns it too.
    assert_eq!(b.hub.app().hub.online_devices(), 1);
    let c = node(&redis, "node-3").await;
    wait_joined(&c, 3).await;
    wait_until("node 3 to learn dev-1", || {
        c.hub.app().hub.online_devices() == 1
    })
    .await;
}

/// `rediss://`: the link runs over TLS, verified against the CA given in
/// `cluster.ca`; without it (the system's roots), the node never joins.
#[tokio::test]
async fn nodes_join_over_tls_with_the_ca_they_are_given() {
    let certs = temp_dir("redis-tls");
    telehub::tls::ensure_dev_certificates(&certs).expect("certificates");
    let redis = Redis::start_tls(&certs);
    let ca = |c: &mut config::Cluster| c.ca = Some(certs.join("ca.pem"));
    let a = node_with(&redis, "node-1", ca).await;
    let b = node_with(&redis, "node-2", ca).await;
    wait_joined(&a, 2).await;
    wait_joined(&b, 2).await;
    let mut d = b.hub.dashboard().await;
    d.subscribe(&["*"]).await;
    wait_covers(&b, "t.*").await;
    let mut device = a.hub.device("dev-1").await;
    device
        .send_telemetry("env.t", vec![number("t", 1.0, "")])
        .await;
    assert_eq!(d.expect_telemetry().await.device_id, "dev-1");

    // Redis's certificate does not chain to the system's roots.
    let untrusting = node(&redis, "node-3").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!untrusting.bus.ready(), "joined without verifying Redis");
    let (status, _, _) = untrusting.hub.get("/readyz").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_revocation_on_one_node_closes_connections_on_the_others() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let operator = a.hub.api(telehub::auth::Role::Operator);
    let revoke = |subject: &str| telehub::http::revocations::RevokeBody {
        subject: Some(subject.into()),
        ..Default::default()
    };
    // Through Redis: node 2 hears of it at once.
    let mut device = b.hub.device("dev-b").await;
    let started = Instant::now();
    operator.revoke(&revoke("dev-b")).await.expect("revoke");
    assert_eq!(device.expect_close().await, 4003);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );

    // Without Redis the frame is lost: node 2 still reads the store within
    // seconds.
    let mut other = b.hub.device("dev-c").await;
    redis.stop();
    operator.revoke(&revoke("dev-c")).await.expect("revoke");
    assert_eq!(other.expect_close().await, 4003);
}
