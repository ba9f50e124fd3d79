//! A CRITICAL campaign seen from outside, for the tests that kill things in the
//! middle of one: a simulated fleet that acknowledges (withholding some acks, so
//! redeliveries happen) and records what its application layer saw, every
//! device's row of a notification's status, and a bounded poll.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use telehub::{
    auth::{Role, TokenKey},
    client::Api,
    http::api::StatusBody,
    sim::{run_fleet, FleetConfig, FleetStats, NotificationHook, Summary, TokenSource},
};
use tokio::{sync::watch, task::JoinHandle};

/// What each device's application saw: notification ids, in the order received
/// (redeliveries de-duplicated by the simulated device).
pub type Seen = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Polls `f` until it returns `Some`, failing after `limit`.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every device's row of notification `id` (all pages): state and ack time;
/// `None` when the hub does not answer (it may be down, or its store).
pub async fn rows(
    api: &Api,
    id: &str,
) -> Option<(StatusBody, BTreeMap<String, (String, Option<u64>)>)> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    let first = loop {
        let page = api.status(id, None, after.as_deref(), 1000).await.ok()?;
        for d in &page.devices {
            out.insert(d.device_id.clone(), (d.state.clone(), d.acked_ms));
        }
        if page.next.is_none() {
            break page;
        }
        after = page.next.clone();
    };
    Some((first, out))
}

/// The rows of `rows` that are acknowledged, with their ack time.
pub fn acknowledged(
    rows: BTreeMap<String, (String, Option<u64>)>,
) -> BTreeMap<String, Option<u64>> {
    rows.into_iter()
        .filter(|(_, (state, _))| state == "acknowledged")
        .map(|(id, (_, at))| (id, at))
        .collect()
}

/// A simulated fleet of devices `ids` on `urls` (device `i` starts on
/// `urls[i % n]` and fails over to the next), acknowledging after 150 ms and
/// withholding 30 % of acks (so redeliveries happen), recording in `seen` what its
/// application layer sees. Runs until `stop` turns true.
pub fn acking_fleet(
    urls: &[String],
    ca: &Path,
    key: &TokenKey,
    ids: &[String],
    seen: &Seen,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Summary> {
    let tokens = ids
        .iter()
        .map(|id| key.issue(id, Role::Device, BTreeMap::new(), Duration::from_secs(3600)))
        .collect();
    let mut cfg = FleetConfig::new(urls[0].clone(), TokenSource::Files(tokens));
    cfg.urls = urls.to_vec();
    cfg.ca = Some(ca.to_path_buf());
    cfg.devices = ids.len();
    cfg.rate_hz = 0.5;
    cfg.ack_delay = Duration::from_millis(150);
    cfg.ack_loss = 0.3;
    cfg.stagger = Some(Duration::from_millis(200));
    let seen = seen.clone();
    cfg.on_notification = Some(NotificationHook(Arc::new(move |device, n| {
        seen.lock()
            .unwrap()
            .entry(device.to_owned())
            .or_default()
            .push(n.id.clone());
    })));
    let stats = Arc::new(FleetStats::new());
    tokio::spawn(async move {
        let mut stop = stop;
        run_fleet(cfg, stats, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .expect("fleet config")
    })
}

/// Asserts that every ack in `before` (device → ack time, as REST showed it
/// before something was killed) is still there in `after`, at the same instant:
/// not lost, and not recorded again after a redelivery.
pub fn acks_kept(
    before: &BTreeMap<String, Option<u64>>,
    after: &BTreeMap<String, (String, Option<u64>)>,
) {
    for (device, at) in before {
        assert_eq!(
            after.get(device),
            Some(&("acknowledged".to_string(), *at)),
            "{device}'s ack, shown before the failure"
        );
    }
}

/// Asserts that each device of `seen` saw exactly notification `id`, once.
pub fn each_saw_once(seen: &Seen, id: &str, devices: usize) {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), devices, "every device received it");
    for (device, got) in seen.iter() {
        assert_eq!(got, &vec![id.to_string()], "{device} saw it once");
    }
}
