//! The crash test: a CRITICAL notification to 200 devices, half of them offline; the
//! real `telehub` binary is killed with SIGKILL while acks are arriving, restarted
//! on the same data dir, and every device brought online. In the end every device
//! has acknowledged, no ack the hub had reported before the kill is lost or
//! repeated, and each device's application layer saw the notification exactly once
//! (redeliveries are de-duplicated by the simulated devices).

mod common;

use common::{acking_fleet, acknowledged, acks_kept, each_saw_once, rows, until, Seen};
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use telehub::{
    auth::{Role, TokenKey},
    client::Api,
    http::api::{CreateBody, DeviceBody, TargetsBody},
};
use tokio::sync::watch;

const DEVICES: usize = 200;
/// Bound on each phase of the test.
const PHASE: Duration = Duration::from_secs(60);

/// The hub process; killed (SIGKILL) on drop so a failing test leaves nothing behind.
struct HubProcess(Child);

impl HubProcess {
    fn start(dir: &Path, addr: SocketAddr) -> Self {
        let config = dir.join("telehub.toml");
        std::fs::write(
            &config,
            "[notify]\nack_timeout = \"400ms\"\nmax_retry_interval = \"1s\"\n",
        )
        .expect("writing the config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_telehub"));
        cmd.args(["serve", "--config"]).arg(&config);
        if let Some(url) = common::current_store() {
            cmd.args(["--store", &url]);
        }
        let child = cmd
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--certs-dir")
            .arg(dir.join("certs"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting telehub serve");
        HubProcess(child)
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaping the hub");
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr")
}

/// [`until`], bounded by [`PHASE`].
async fn until_phase<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until(what, PHASE, f).await
}

async fn every_ack_survives_a_kill_and_every_device_ends_acknowledged() {
    // Each store's variant runs beside the other: a directory of its own.
    let dir = common::temp_dir("crash");
    let addr = free_port();
    let url = format!("https://localhost:{}", addr.port());
    let ca: PathBuf = dir.join("certs").join("ca.pem");

    let hub = HubProcess::start(&dir, addr);
    let key = until_phase("the signing key", || async {
        dir.join("data/token.key")
            .exists()
            .then(|| TokenKey::load_or_create(&dir.join("data")).expect("key"))
    })
    .await;
    let operator = key.issue(
        "crash-op",
        Role::Operator,
        BTreeMap::new(),
        Duration::from_secs(3600),
    );
    let api = until_phase("the hub to answer", || async {
        let api = Api::new(&url, Some(&ca), operator.clone()).ok()?;
        api.list(1).await.ok().map(|_| api)
    })
    .await;

    // 200 devices known to the registry; only the first half will be online.
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("crash-{i:03}")).collect();
    for id in &ids {
        let tags = [("fleet".to_string(), "crash".to_string())].into();
        api.put_device(id, &DeviceBody { tags })
            .await
            .expect("PUT device");
    }
    let (online, offline) = ids.split_at(DEVICES / 2);
    let seen: Seen = Default::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let first_half = acking_fleet(
        std::slice::from_ref(&url),
        &ca,
        &key,
        online,
        &seen,
        stop_rx.clone(),
    );
    until_phase("the online half to connect", || async {
        let h = api.devices(None, 1000).await.ok()?;
        (h.devices
            .iter()
            .filter(|d| d.last_seen_ms.is_some())
            .count()
            == online.len())
        .then_some(())
    })
    .await;

    let created = api
        .create(&CreateBody {
            targets: TargetsBody {
                tags: [("fleet".to_string(), "crash".to_string())].into(),
                ..Default::default()
            },
            severity: "critical".into(),
            title: "firmware recall".into(),
            body: "stop and acknowledge".into(),
            payload: None,
            ttl: Some("10m".into()),
        })
        .await
        .expect("POST notification");
    assert_eq!(created.targets as usize, DEVICES);

    // Kill the hub while acks are arriving: some in, not all.
    let acked_before = until_phase("the first acks", || async {
        let (s, rows) = rows(&api, &created.id).await?;
        let acked = s.summary.counts.acknowledged as usize;
        (acked >= 10).then_some(rows)
    })
    .await;
    hub.kill();
    let acked_before = acknowledged(acked_before);
    assert!(
        acked_before.len() < DEVICES,
        "the kill came too late to test anything"
    );

    // Restart on the same data dir and port; the online half reconnects by itself,
    // the other half comes online now.
    let _hub = HubProcess::start(&dir, addr);
    until_phase("the restarted hub", || async { api.list(1).await.ok() }).await;
    let second_half = acking_fleet(
        std::slice::from_ref(&url),
        &ca,
        &key,
        offline,
        &seen,
        stop_rx,
    );

    let (status, after) = until_phase("every device to acknowledge", || async {
        let (s, rows) = rows(&api, &created.id).await?;
        (s.summary.counts.acknowledged as usize == DEVICES).then_some((s, rows))
    })
    .await;
    let _ = stop_tx.send(true);
    let (a, b) = (first_half.await.unwrap(), second_half.await.unwrap());

    // The notification accepted before the crash survived it, and completed.
    assert_eq!(status.summary.counts.total as usize, DEVICES);
    assert_eq!(status.summary.counts.expired, 0);
    until_phase("completion", || async {
        let s = api.status(&created.id, None, None, 1).await.ok()?;
        s.summary.complete.then_some(())
    })
    .await;
    // No ack the hub had reported before the kill was lost: those devices are still
    // acknowledged at the same instant (not acknowledged again after a redelivery).
    acks_kept(&acked_before, &after);
    // Each device's application saw the notification exactly once.
    each_saw_once(&seen, &created.id, DEVICES);
    eprintln!(
        "acknowledged before the kill: {}; redeliveries seen by devices: {}; acks withheld: {}",
        acked_before.len(),
        a.duplicates + b.duplicates,
        a.acks_withheld + b.acks_withheld
    );
    assert_eq!(a.notifications + b.notifications, DEVICES as u64);
    assert!(
        a.duplicates + b.duplicates > 0,
        "redeliveries happened and were de-duplicated: {a:?} {b:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

common::on_both_stores!(
    every_ack_survives_a_kill_and_every_device_ends_acknowledged: multi_thread,
);
