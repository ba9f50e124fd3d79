//! Critical notifications across the nodes of a real cluster: `telehub serve
//! --cluster` processes on one throwaway Redis (live plane) and one PostgreSQL
//! (durable plane), a simulated fleet spread over them that acknowledges,
//! withholding some acks so redeliveries happen.
//!
//! - A node is killed with SIGKILL in the middle of a campaign to 300 devices
//!   (100 of them offline): its devices reconnect to the others, and all 300 end
//!   acknowledged, no ack REST had shown is lost, each device's application sees
//!   the notification once, and every node reports the same counts (REST, and a
//!   dashboard watching progress on another node than the one that created it).
//! - PostgreSQL is killed and started again mid-campaign: new notifications get
//!   503 and `/readyz` says why while it is down, acks received meanwhile are kept
//!   and committed once it is back, nothing that got its 201 is lost.
//! - A cluster on the embedded store refuses to start.

mod common;

use std::{process::Command, time::Duration};

use common::{
    acking_fleet, acknowledged, acks_kept, each_saw_once, metric, rows, temp_dir, until, wait_for,
    Node, Planes, Postgres, Redis, Seen,
};
use prost::Message as _;
use telehub::{
    auth::Role,
    client::Api,
    http::api::{CreateBody, DeviceBody, TargetsBody},
    proto::{envelope::Body, Envelope, WatchNotifications},
    sim::{Endpoint, SimStream},
    ws,
};
use tokio::sync::watch;

/// Short retries, so that withheld acks are asked for again within the test.
const CONFIG: &str = "[notify]\nack_timeout = \"400ms\"\nmax_retry_interval = \"1s\"\n";
/// Bound on each phase.
const PHASE: Duration = Duration::from_secs(60);

fn critical_to_fleet(title: &str) -> CreateBody {
    CreateBody {
        targets: TargetsBody {
            tags: [("fleet".to_string(), "north".to_string())].into(),
            ..Default::default()
        },
        severity: "critical".into(),
        title: title.into(),
        body: "stop and acknowledge".into(),
        payload: None,
        ttl: Some("10m".into()),
    }
}

/// Registers `ids` with the tag the campaigns select, through `api`.
async fn register(api: &Api, ids: &[String]) {
    for id in ids {
        let tags = [("fleet".to_string(), "north".to_string())].into();
        api.put_device(id, &DeviceBody { tags })
            .await
            .expect("PUT device");
    }
}

/// Device sessions over every node of `apis` that answers.
async fn devices_connected(apis: &[&Api]) -> f64 {
    let mut n = 0.0;
    for api in apis {
        n += metric(api, "telehub_connections{role=\"device\"}").await;
    }
    n
}

/// The index of the one node of `apis` running the sweeps, once exactly one does.
async fn sweeper(apis: &[Api]) -> usize {
    until("exactly one node running the sweeps", PHASE, || async {
        let mut holders = Vec::new();
        for (i, api) in apis.iter().enumerate() {
            if metric(api, "telehub_notify_sweeper").await == 1.0 {
                holders.push(i);
            }
        }
        (holders.len() == 1).then(|| holders[0])
    })
    .await
}

/// Waits until `api` reports at least `n` acks of notification `id` (a cheap
/// poll: no device rows).
async fn acked_at_least(api: &Api, id: &str, n: u64) {
    until("the first acks", PHASE, || async {
        let s = api.status(id, None, None, 1).await.ok()?;
        (s.summary.counts.acknowledged >= n).then_some(())
    })
    .await
}

/// The counts the triggers kept (`delivery_counts`, what progress is read from)
/// are the deliveries' states counted afresh, after writers on several nodes
/// changed them concurrently and one was killed.
async fn counts_match_deliveries(store: &str) {
    let (client, conn) = tokio_postgres::connect(store, tokio_postgres::NoTls)
        .await
        .expect("a look at the store");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FROM (
                 SELECT notification, state, count(*) AS n FROM deliveries GROUP BY 1, 2
             ) real FULL JOIN (
                 SELECT notification, state, sum(n) AS n FROM delivery_counts GROUP BY 1, 2
             ) kept USING (notification, state)
             WHERE coalesce(real.n, 0) <> coalesce(kept.n, 0)",
            &[],
        )
        .await
        .expect("comparing counts");
    assert_eq!(
        row.get::<_, i64>(0),
        0,
        "delivery_counts differs from the deliveries"
    );
}

/// A viewer's dashboard on `node`, watching notification progress.
async fn watch_progress(planes: &Planes, node: &Node) -> ws::Connection<SimStream> {
    let token = planes.key.issue(
        "watcher",
        Role::Viewer,
        Default::default(),
        Duration::from_secs(600),
    );
    let endpoint = Endpoint::parse(&node.url(), Some(&planes.ca)).unwrap();
    let (mut conn, _) = endpoint
        .connect("/v1/dashboard", &token, false, Duration::from_secs(10))
        .await
        .expect("dashboard connects");
    let watch = Envelope {
        body: Some(Body::WatchNotifications(WatchNotifications { watch: true })),
    };
    conn.send(&ws::Message::Binary(watch.encode_to_vec().into()))
        .await
        .expect("WatchNotifications");
    conn
}

async fn joined(apis: &[Api], n: usize) {
    for api in apis {
        wait_for("every node to join", Duration::from_secs(20), async || {
            metric(api, "telehub_cluster_nodes").await == n as f64
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_three_nodes_survives_one_killed_mid_way() {
    const DEVICES: usize = 300;
    const OFFLINE: usize = 100;
    let redis = Redis::start();
    let root = temp_dir("cluster-notify");
    let store = Postgres::shared_database().await;
    let planes = Planes::new(&root, redis.url(), store.clone(), CONFIG);
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| planes.start(&format!("node-{i}")))
        .collect();
    let apis: Vec<Api> = nodes.iter().map(|n| planes.operator(n)).collect();
    joined(&apis, 3).await;

    // The registry is shared: devices registered through node 3 are targets of a
    // notification created on node 1.
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("north-{i:03}")).collect();
    register(&apis[2], &ids).await;
    let (online, offline) = ids.split_at(DEVICES - OFFLINE);
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let seen = Seen::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let first = acking_fleet(
        &urls,
        &planes.ca,
        &planes.key,
        online,
        &seen,
        stop_rx.clone(),
    );
    let all: Vec<&Api> = apis.iter().collect();
    wait_for("the online devices to connect", PHASE, async || {
        devices_connected(&all).await == online.len() as f64
    })
    .await;
    for api in &apis {
        let held = metric(api, "telehub_connections{role=\"device\"}").await;
        assert!(held >= 50.0, "the fleet is spread over the nodes: {held}");
    }

    // A dashboard on node 3 watches progress.
    let mut watcher = watch_progress(&planes, &nodes[2]).await;
    let created = apis[0]
        .create(&critical_to_fleet("firmware recall"))
        .await
        .expect("POST on node 1");
    assert_eq!(created.targets as usize, DEVICES);

    // Some acks in, then node 1 (where it was created) dies.
    acked_at_least(&apis[1], &created.id, 20).await;
    let (_, acked_before) = rows(&apis[1], &created.id).await.expect("status");
    drop(nodes.remove(0)); // SIGKILL
    let acked_before = acknowledged(acked_before);
    assert!(
        acked_before.len() < online.len(),
        "the kill came too late to test anything"
    );
    let took_over = sweeper(&apis[1..]).await;
    eprintln!("node {} took the sweeps over", took_over + 2);

    // The offline hundred come online on nodes 2 and 3.
    let second = acking_fleet(&urls[1..], &planes.ca, &planes.key, offline, &seen, stop_rx);
    let after = until("every device to acknowledge", PHASE, || async {
        let (s, rows) = rows(&apis[1], &created.id).await?;
        (s.summary.counts.acknowledged as usize == DEVICES).then_some(rows)
    })
    .await;
    // Every surviving node reports it complete, with the same counts.
    for api in &apis[1..] {
        until("completion on every node", PHASE, || async {
            let s = api.status(&created.id, None, None, 1).await.ok()?;
            (s.summary.complete && s.summary.counts.acknowledged as usize == DEVICES).then_some(())
        })
        .await;
    }
    // No ack REST showed before the kill was lost or recorded again later.
    acks_kept(&acked_before, &after);
    // The dashboard on node 3 saw the campaign end, counted by every node.
    let deadline = tokio::time::Instant::now() + PHASE;
    loop {
        let read = tokio::time::timeout_at(deadline, watcher.read()).await;
        let Ok(Ok(Some(ws::Message::Binary(b)))) = read else {
            assert!(read.is_ok(), "no final NotificationProgress on node 3");
            continue;
        };
        if let Ok(Envelope {
            body: Some(Body::NotificationProgress(p)),
        }) = Envelope::decode(b)
        {
            if p.id == created.id && p.complete {
                assert_eq!(p.acknowledged as usize, DEVICES, "{p:?}");
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    each_saw_once(&seen, &created.id, DEVICES);
    counts_match_deliveries(&store).await;
    assert!(a.reconnects >= 1, "node 1's devices reconnected: {a:?}");
    eprintln!(
        "acknowledged before the kill: {}; redeliveries seen by devices: {}",
        acked_before.len(),
        a.duplicates + b.duplicates
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted_mid_campaign_loses_nothing() {
    const DEVICES: usize = 60;
    let redis = Redis::start();
    let mut pg = Postgres::start();
    let store = pg.database().await;
    let root = temp_dir("cluster-pg-down");
    let planes = Planes::new(&root, redis.url(), store.clone(), CONFIG);
    let nodes: Vec<Node> = (1..=2)
        .map(|i| planes.start(&format!("node-{i}")))
        .collect();
    let apis: Vec<Api> = nodes.iter().map(|n| planes.operator(n)).collect();
    joined(&apis, 2).await;

    let ids: Vec<String> = (0..DEVICES).map(|i| format!("north-{i:03}")).collect();
    register(&apis[0], &ids).await;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let seen = Seen::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let fleet = acking_fleet(&urls, &planes.ca, &planes.key, &ids, &seen, stop_rx);
    let all: Vec<&Api> = apis.iter().collect();
    wait_for("the devices to connect", PHASE, async || {
        devices_connected(&all).await == DEVICES as f64
    })
    .await;

    let created = apis[0]
        .create(&critical_to_fleet("before the outage"))
        .await
        .expect("POST");
    acked_at_least(&apis[1], &created.id, 5).await;
    let (_, acked_before) = rows(&apis[1], &created.id).await.expect("status");
    pg.stop();
    let acked_before = acknowledged(acked_before);

    // While it is down: both nodes say so, new notifications are refused with
    // a reason, and the devices stay connected.
    for api in &apis {
        until("/readyz to say the store is unavailable", PHASE, || async {
            match api.readyz().await {
                Err(telehub::client::ApiError::Status { status, message })
                    if status == 503 && message.contains("store_unavailable") =>
                {
                    Some(())
                }
                _ => None,
            }
        })
        .await;
    }
    match apis[1]
        .create(&critical_to_fleet("during the outage"))
        .await
    {
        Err(telehub::client::ApiError::Status { status, message }) => {
            assert_eq!(status, 503);
            assert!(message.contains("store is unavailable"), "{message}");
        }
        other => panic!("a notification during the outage: {other:?}"),
    }
    // Acks keep arriving meanwhile (those withheld are asked for again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(devices_connected(&all).await, DEVICES as f64);

    pg.resume();
    let after = until("every ack committed once it is back", PHASE, || async {
        let (s, rows) = rows(&apis[0], &created.id).await?;
        (s.summary.counts.acknowledged as usize == DEVICES).then_some(rows)
    })
    .await;
    acks_kept(&acked_before, &after);
    for api in &apis {
        until("/readyz ready again", PHASE, || async {
            api.readyz().await.ok().filter(|b| b.contains("\"ready\""))
        })
        .await;
    }
    // Recovered without a restart: a new notification is accepted and delivered.
    let again = apis[1]
        .create(&critical_to_fleet("after the outage"))
        .await
        .expect("POST after recovery");
    until("the new notification acknowledged", PHASE, || async {
        let s = apis[0].status(&again.id, None, None, 1).await.ok()?;
        (s.summary.counts.acknowledged as usize == DEVICES).then_some(())
    })
    .await;
    let _ = stop_tx.send(true);
    let summary = fleet.await.unwrap();
    assert_eq!(summary.notifications, 2 * DEVICES as u64, "{summary:?}");
    counts_match_deliveries(&store).await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}

/// `--cluster` on the embedded store: refused at start, saying what to add.
#[test]
fn a_cluster_on_the_embedded_store_refuses_to_start() {
    let root = temp_dir("cluster-sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("data"))
        .arg("--certs-dir")
        .arg(root.join("certs"))
        .args(["--cluster", "redis://127.0.0.1:1"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running telehub serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(
        err.contains("a cluster needs a shared store") && err.contains("--store postgres://"),
        "{err}"
    );
    assert!(
        !err.contains("stack backtrace"),
        "a user error, not a crash: {err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A store over TLS: with the CA it is given, a node serves and every one of its
/// connections is encrypted; without it (`sslmode=require` against the system's
/// roots, which do not know a development CA) it refuses to start, saying why.
#[tokio::test]
async fn postgres_over_tls_is_verified_against_the_ca_given() {
    let root = temp_dir("pg-tls");
    let certs = root.join("certs");
    telehub::tls::ensure_dev_certificates(&certs).expect("certificates");
    let pg = Postgres::start_tls(&certs);
    let plain = pg.database().await;
    let url = format!("{plain}?sslmode=require");
    let ca = certs.join("ca.pem");
    let hub = common::Hub::with(|c| {
        c.store.url = Some(plain.clone());
        c.store.ca = Some(ca.clone());
    })
    .await;
    let api = hub.api(telehub::auth::Role::Operator);
    let created = api
        .create(&common::notification(
            "critical",
            common::to_devices(&["tls-1"]),
            "over TLS",
        ))
        .await
        .expect("POST");
    assert_eq!(created.targets, 1);
    let (client, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .expect("a look at the server");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'telehub'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (encrypted, plain_conns): (i64, i64) = (row.get(0), row.get(1));
    assert!(encrypted >= 1, "the node's connections are TLS");
    assert_eq!(plain_conns, 0, "and only TLS");
    hub.stop().await;

    let config = telehub::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: root.join("untrusting"),
        certs_dir: certs.clone(),
        store: telehub::config::StoreSettings {
            url: Some(url),
            ..Default::default()
        },
        ..Default::default()
    };
    let refused = telehub::server::Server::bind(config)
        .await
        .err()
        .expect("a store it cannot verify is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("certificate") && !message.contains("secret"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A device that moves to another node continues its redelivery back-off from
/// the writes stored so far, and gets what is open for it there: two hubs in
/// this process on one database, joined by the in-memory bus.
#[tokio::test]
async fn a_device_that_moves_keeps_its_back_off() {
    let store = Postgres::shared_database().await;
    let network = telehub::hub::bus::memory::Network::new();
    let settings = |c: &mut telehub::config::Config| {
        c.store.url = Some(store.clone());
        c.notify.ack_timeout = Duration::from_millis(300);
        c.notify.max_retry_interval = Duration::from_secs(30);
    };
    let a = common::Hub::with_bus(network.bus(), settings).await;
    // The second node signs and checks tokens with the first one's key.
    let data_b = temp_dir("moved-b");
    std::fs::copy(a.data_dir.join("token.key"), data_b.join("token.key")).expect("token.key");
    let b = common::Hub::with_bus(network.bus(), |c| {
        settings(c);
        c.data_dir = data_b.clone();
    })
    .await;

    let mut dev = a.device("mover").await;
    let created = a
        .api(telehub::auth::Role::Operator)
        .create(&common::notification(
            "critical",
            common::to_devices(&["mover"]),
            "moving",
        ))
        .await
        .expect("POST on node A");
    // Three writes on node A, no ack: 300 ms, then 600 ms between them.
    for _ in 0..3 {
        assert_eq!(dev.expect_notification().await.id, created.id);
    }
    // The third write is stored once node A's writer commits it.
    until("the third write stored", PHASE, || async {
        let s = b
            .api(telehub::auth::Role::Viewer)
            .status(&created.id, None, None, 10)
            .await
            .ok()?;
        (s.devices.first()?.attempts == 3).then_some(())
    })
    .await;
    drop(dev);

    // On node B: written again at once (a redelivery), then not before the
    // fifth write's wait of 8 x 300 ms (± 10 %), instead of starting over.
    let mut dev = b.device("mover").await;
    let fourth = dev.expect_notification().await;
    let at = tokio::time::Instant::now();
    assert!(fourth.redelivery && fourth.id == created.id, "{fourth:?}");
    let fifth = dev.expect_notification().await;
    let waited = at.elapsed();
    assert_eq!(fifth.id, created.id);
    assert!(
        waited >= Duration::from_millis(2100),
        "node B started the back-off over: resent after {waited:?}"
    );
    dev.ack(&created.id).await;
    until("acknowledged, seen from node A", PHASE, || async {
        let s = a
            .api(telehub::auth::Role::Viewer)
            .status(&created.id, None, None, 10)
            .await
            .ok()?;
        let row = s.devices.first()?;
        (row.state == "acknowledged" && row.attempts == 5).then_some(())
    })
    .await;
}
