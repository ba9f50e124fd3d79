//! A node of a real cluster dies: three `telehub serve --cluster` processes on one
//! throwaway Redis, `device-sim`'s fleet spread over all three URLs, a dashboard on
//! node 2. Node 1 is killed with SIGKILL: its devices reconnect to nodes 2 and 3, a
//! device that can reach only node 1 is shown offline within 15 s (the default
//! `node_timeout` of 10 s, plus a heartbeat), and telemetry of every fleet device
//! reaches the dashboard again.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{metric, temp_dir, wait_for, Node, Planes, Postgres, Redis};
use prost::Message as _;
use telehub::{
    auth::Role,
    client::Api,
    proto::{envelope::Body, Envelope, Subscribe},
    sim::{run_fleet, Endpoint, FleetConfig, FleetStats, TokenSource},
    ws,
};

/// A dashboard on `endpoint` subscribed to everything: who is online, and who was
/// heard from, as it reads.
struct Watcher {
    conn: ws::Connection<telehub::sim::SimStream>,
    online: HashMap<String, bool>,
    heard: BTreeSet<String>,
}

impl Watcher {
    async fn open(endpoint: &Endpoint, token: &str) -> Self {
        let (mut conn, _) = endpoint
            .connect("/v1/dashboard", token, false, Duration::from_secs(10))
            .await
            .expect("dashboard connects");
        let subscribe = Envelope {
            body: Some(Body::Subscribe(Subscribe {
                categories: vec!["*".into()],
                ..Default::default()
            })),
        };
        conn.send(&ws::Message::Binary(subscribe.encode_to_vec().into()))
            .await
            .expect("subscribe");
        Watcher {
            conn,
            online: HashMap::new(),
            heard: BTreeSet::new(),
        }
    }

    /// Reads until `done` holds (checked after each message) or `limit` passes.
    async fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.conn.next())
                .await
                .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"));
            // Pings are not answered: the hub pings every 20 s and waits 60 s, and
            // this test ends sooner.
            let ws::Incoming::Message(ws::Message::Binary(b)) = next.expect("dashboard connection")
            else {
                continue;
            };
            match Envelope::decode(b).expect("an Envelope").body {
                Some(Body::Presence(p)) => {
                    self.online.insert(p.device_id, p.online);
                }
                Some(Body::Telemetry(t)) => {
                    self.heard.insert(t.device_id);
                }
                Some(Body::History(h)) => {
                    self.heard
                        .extend(h.telemetry.into_iter().map(|t| t.device_id));
                }
                _ => {}
            }
        }
    }

    fn online(&self) -> BTreeSet<String> {
        self.online
            .iter()
            .filter(|(_, on)| **on)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[tokio::test]
async fn a_killed_node_s_devices_fail_over_and_its_stranded_ones_go_offline() {
    let redis = Redis::start();
    let root = temp_dir("failover");
    let planes = Planes::new(&root, redis.url(), Postgres::shared_database().await, "");
    let (key, ca) = (planes.key.clone(), planes.ca.clone());
    let nodes: Vec<Node> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| planes.start(n))
        .collect();
    let apis: Vec<Api> = nodes.iter().map(|n| planes.operator(n)).collect();
    for api in &apis {
        wait_for("every node to join", Duration::from_secs(20), async || {
            metric(api, "telehub_cluster_nodes").await == 3.0
        })
        .await;
    }

    // The fleet, over all three nodes; and one device that knows only node 1.
    let mut cfg = FleetConfig::new(nodes[0].url(), TokenSource::mint(key.clone()));
    cfg.urls.extend([nodes[1].url(), nodes[2].url()]);
    cfg.ca = Some(ca.clone());
    cfg.devices = 9;
    cfg.rate_hz = 5.0;
    let stats = Arc::new(FleetStats::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(run_fleet(cfg, stats, async {
        let _ = stopped.await;
    }));
    let mut stranded_cfg = FleetConfig::new(nodes[0].url(), TokenSource::mint(key.clone()));
    stranded_cfg.ca = Some(ca.clone());
    stranded_cfg.devices = 1;
    stranded_cfg.id_prefix = "stranded-".into();
    let (stop_stranded, stranded_stopped) = tokio::sync::oneshot::channel::<()>();
    let stranded = tokio::spawn(run_fleet(
        stranded_cfg,
        Arc::new(FleetStats::new()),
        async {
            let _ = stranded_stopped.await;
        },
    ));

    let viewer = key.issue(
        "viewer",
        Role::Viewer,
        Default::default(),
        Duration::from_secs(600),
    );
    let on_node_2 = Endpoint::parse(&nodes[1].url(), Some(&ca)).unwrap();
    let mut watcher = Watcher::open(&on_node_2, &viewer).await;
    let fleet_ids: BTreeSet<String> = (0..9).map(|i| telehub::sim::device_id("sim-", i)).collect();
    let mut everyone = fleet_ids.clone();
    everyone.insert("stranded-00000".into());
    watcher
        .until(
            "every device online and heard on node 2",
            Duration::from_secs(20),
            |w| w.online() == everyone && w.heard == everyone,
        )
        .await;
    let on_node_1 = metric(&apis[0], "telehub_connections{role=\"device\"}").await;
    assert!(
        on_node_1 >= 2.0,
        "node 1 holds the stranded device and some of the fleet"
    );

    let mut nodes = nodes;
    let killed = nodes.remove(0);
    let killed_at = Instant::now();
    drop(killed); // SIGKILL
    watcher.heard.clear();
    watcher
        .until(
            "the stranded device offline on node 2",
            Duration::from_secs(15),
            |w| w.online.get("stranded-00000") == Some(&false),
        )
        .await;
    let offline_after = killed_at.elapsed();
    watcher
        .until(
            "the whole fleet online and heard again",
            Duration::from_secs(15),
            |w| fleet_ids.is_subset(&w.online()) && fleet_ids.is_subset(&w.heard),
        )
        .await;
    let survivors: f64 = {
        let mut n = 0.0;
        for api in &apis[1..] {
            n += metric(api, "telehub_connections{role=\"device\"}").await;
        }
        n
    };
    assert_eq!(survivors, 9.0, "the fleet reconnected to nodes 2 and 3");
    wait_for("two nodes alive", Duration::from_secs(5), async || {
        metric(&apis[1], "telehub_cluster_nodes").await == 2.0
    })
    .await;
    eprintln!("stranded device offline {offline_after:?} after the kill");

    let _ = stop.send(());
    let _ = stop_stranded.send(());
    let summary = fleet.await.unwrap().expect("the fleet ran");
    assert!(summary.reconnects >= 1, "{summary:?}");
    let _ = stranded.await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}
