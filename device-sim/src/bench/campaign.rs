//! `device-sim bench campaign`: a CRITICAL notification to N online simulated
//! devices while telemetry flows, measuring
//! - the time from the `POST` until 99 % and 100 % of the devices acknowledged, as
//!   the hub reports it (`NotificationProgress` to a watching dashboard, sent every
//!   `notify.progress_interval`, which bounds the resolution);
//! - when each device received it (p50/p99 from the `POST`), and the hub's own
//!   delivery-to-ack latency (`telehub_notification_ack_seconds`);
//! - the store's writes (ops and group commits per second) during the campaign;
//! - telemetry delivery latency p50/p99 during the campaign, to show whether the
//!   campaign stalls fan-out.
//!
//! The devices are `telehub::sim` devices acknowledging at once; the telemetry
//! publishers and subscribers are the fan-out bench's ([`super::traffic`]).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use prost::Message as _;
use serde::Serialize;
use telehub::{
    auth::Role,
    client::Api,
    http::api::{CreateBody, TargetsBody},
    proto::{envelope::Body, Envelope, Subscribe, WatchNotifications},
    sim::{run_fleet, FleetConfig, FleetStats, NotificationHook, TokenSource},
    ws,
};
use tokio::task::JoinSet;

use super::{
    common::{round, wait_for, Common, Setup},
    traffic::{now_nanos, publisher, subscriber, Counters},
};
use crate::cpu;

#[derive(Args, Debug)]
pub struct CampaignArgs {
    #[command(flatten)]
    common: Common,
    /// Online devices the notification targets.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Telemetry messages per second (across publishers) flowing meanwhile.
    #[arg(long, default_value_t = 2000.0)]
    telemetry_rate: f64,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Another node of the same cluster (repeatable): the devices spread over
    /// --url and these (device `i` on URL `i mod n`); store writes are summed
    /// over every node. The POST and the watching dashboard stay on --url.
    #[arg(long = "node-url")]
    node_urls: Vec<String>,
    /// Give up waiting for all acks after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Serialize, Debug)]
struct CampaignReport {
    devices: usize,
    compression: bool,
    /// Devices connected, and how long connecting them took.
    connect_s: f64,
    /// The POST until the hub answered 201 (durably stored).
    post_ms: f64,
    /// From the POST: 99 % / 100 % acknowledged (hub's progress events).
    ack_99_ms: Option<f64>,
    ack_100_ms: Option<f64>,
    /// From the POST until each device received the notification.
    received_p50_ms: f64,
    received_p99_ms: f64,
    received_max_ms: f64,
    /// The hub's histogram of first delivery → ack (bucket upper bounds; the
    /// --url node's only).
    hub_ack_latency_p50_ms: Option<f64>,
    hub_ack_latency_p99_ms: Option<f64>,
    /// Nodes the devices were spread over.
    nodes: usize,
    /// Store writer during the campaign (POST to 100 %), every node.
    store_ops: u64,
    store_commits: u64,
    store_ops_per_s: f64,
    /// Telemetry during the campaign.
    telemetry_rate: f64,
    telemetry_deliveries: u64,
    telemetry_p50_us: f64,
    telemetry_p99_us: f64,
    telemetry_max_us: f64,
    /// Hub CPU during the campaign, share of one core (with --hub-pid).
    hub_cpu: Option<f64>,
    /// CPU of each --pid process and its children (other nodes, PostgreSQL and
    /// its backends, Redis), same unit.
    processes_cpu: BTreeMap<String, f64>,
    generator_cpu: f64,
}

pub async fn campaign(a: CampaignArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.devices > telehub::sim::MAX_DEVICES {
        bail!("--devices must be 1..={}", telehub::sim::MAX_DEVICES);
    }
    if a.publishers == 0
        || a.subscribers == 0
        || !(a.telemetry_rate.is_finite() && a.telemetry_rate > 0.0)
    {
        bail!("--publishers, --subscribers and --telemetry-rate must be positive");
    }
    let setup = Arc::new(Setup::new(&a.common)?);
    let operator = setup.token("bench-operator", Role::Operator);
    let api = Api::new(&a.common.url, a.common.ca.as_deref(), operator.clone())?;
    let mut node_apis = vec![api.clone()];
    for url in &a.node_urls {
        node_apis.push(Api::new(url, a.common.ca.as_deref(), operator.clone())?);
    }
    now_nanos();

    // Telemetry: subscribers on "*", publishers at a fixed total rate.
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let mut subs = JoinSet::new();
    for j in 0..a.subscribers {
        let mut conn = setup
            .connect("/v1/dashboard", &format!("bench-sub-{j}"), Role::Viewer)
            .await?;
        let sub = Envelope {
            body: Some(Body::Subscribe(Subscribe {
                categories: vec!["bench.*".into()],
                ..Default::default()
            })),
        };
        conn.send(&ws::Message::Binary(Bytes::from(sub.encode_to_vec())))
            .await?;
        wait_for(&mut conn, |b| matches!(b, Body::Subscribed(_))).await?;
        subs.spawn(subscriber(
            conn,
            counters.clone(),
            measuring.clone(),
            stop.subscribe(),
        ));
    }
    let mut pubs = JoinSet::new();
    for i in 0..a.publishers {
        let conn = setup
            .connect("/v1/device", &format!("bench-pub-{i}"), Role::Device)
            .await?;
        pubs.spawn(publisher(
            conn,
            format!("bench.c{i}"),
            200,
            Some(a.telemetry_rate / a.publishers as f64),
            false,
            counters.clone(),
            stop.subscribe(),
        ));
    }

    // The fleet, recording when each device first sees a notification.
    let received: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let ids: Vec<String> = (0..a.devices).map(|i| format!("camp-{i:05}")).collect();
    let tokens = ids
        .iter()
        .map(|id| {
            setup
                .key
                .issue(id, Role::Device, BTreeMap::new(), Duration::from_secs(3600))
        })
        .collect();
    let mut fleet = FleetConfig::new(a.common.url.clone(), TokenSource::Files(tokens));
    fleet.urls.extend(a.node_urls.iter().cloned());
    fleet.ca = a.common.ca.clone();
    fleet.devices = a.devices;
    fleet.rate_hz = 0.01;
    fleet.compression = a.common.compression;
    fleet.stagger = Some(Duration::from_secs(2));
    let rec = received.clone();
    fleet.on_notification = Some(NotificationHook(Arc::new(move |_, _| {
        if let Ok(mut r) = rec.lock() {
            r.push(Instant::now());
        }
    })));
    let stats = Arc::new(FleetStats::new());
    let (fleet_stop, fleet_stop_rx) = tokio::sync::watch::channel(false);
    let fleet_task = {
        let stats = stats.clone();
        let mut rx = fleet_stop_rx;
        tokio::spawn(run_fleet(fleet, stats, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    let t_connect = Instant::now();
    while (stats.connected.load(Relaxed) as usize) < a.devices {
        if t_connect.elapsed() > a.timeout {
            bail!(
                "only {} of {} devices connected",
                stats.connected.load(Relaxed),
                a.devices
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();

    // A dashboard watching progress.
    let mut watch = setup
        .connect("/v1/dashboard", "bench-watch", Role::Viewer)
        .await?;
    let w = Envelope {
        body: Some(Body::WatchNotifications(WatchNotifications { watch: true })),
    };
    watch
        .send(&ws::Message::Binary(Bytes::from(w.encode_to_vec())))
        .await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics0 = all_metrics(&node_apis).await?;
    let hub0 = a.common.hub_pid.map(cpu::process_cpu).transpose()?;
    let others0 = a
        .common
        .pids
        .iter()
        .map(|(_, pid)| cpu::tree_cpu(*pid))
        .collect::<Result<Vec<_>, _>>()?;
    let gen0 = cpu::self_cpu();
    measuring.store(true, Relaxed);
    let t0 = Instant::now();
    let created = api
        .create(&CreateBody {
            targets: TargetsBody {
                device_ids: ids,
                ..Default::default()
            },
            severity: "critical".into(),
            title: "bench campaign".into(),
            body: "acknowledge".into(),
            payload: None,
            ttl: Some("10m".into()),
        })
        .await
        .context("POST /v1/notifications")?;
    let post_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let (mut ack_99, mut ack_100) = (None, None);
    let target = a.devices as u32;
    let deadline = t0 + a.timeout;
    while ack_100.is_none() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(msg)) = tokio::time::timeout(left, watch.read()).await else {
            break;
        };
        let Some(ws::Message::Binary(b)) = msg else {
            continue;
        };
        if let Ok(Envelope {
            body: Some(Body::NotificationProgress(p)),
        }) = Envelope::decode(b)
        {
            if p.id != created.id {
                continue;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            if ack_99.is_none() && u64::from(p.acknowledged) * 100 >= u64::from(target) * 99 {
                ack_99 = Some(ms);
            }
            if p.acknowledged >= target {
                ack_100 = Some(ms);
            }
        }
    }
    let window = t0.elapsed();
    measuring.store(false, Relaxed);
    let gen_cpu = cpu::self_cpu().saturating_sub(gen0);
    let hub_cpu = match (a.common.hub_pid, hub0) {
        (Some(pid), Some(h0)) => Some(cpu::process_cpu(pid)?.saturating_sub(h0)),
        _ => None,
    };
    let mut processes_cpu = BTreeMap::new();
    for ((name, pid), before) in a.common.pids.iter().zip(others0) {
        let used = cpu::tree_cpu(*pid)?.saturating_sub(before);
        processes_cpu.insert(
            name.clone(),
            round(used.as_secs_f64() / window.as_secs_f64(), 3),
        );
    }
    let metrics1 = all_metrics(&node_apis).await?;
    let _ = stop.send(true);
    let _ = fleet_stop.send(true);

    let mut telemetry =
        Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).context("creating a histogram")?;
    let mut deliveries = 0;
    while let Some(r) = subs.join_next().await {
        if let Ok((n, h)) = r {
            deliveries += n;
            let _ = telemetry.add(&h);
        }
    }
    while pubs.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_secs(15), fleet_task).await;

    let mut got: Vec<f64> = received
        .lock()
        .map(|r| {
            r.iter()
                .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
                .collect()
        })
        .unwrap_or_default();
    got.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let summed = |texts: &[String], name: &str| texts.iter().map(|t| metric(t, name)).sum::<f64>();
    let store_ops = (summed(&metrics1, "telehub_store_ops_total")
        - summed(&metrics0, "telehub_store_ops_total")) as u64;
    let store_commits = (summed(&metrics1, "telehub_store_commits_total")
        - summed(&metrics0, "telehub_store_commits_total")) as u64;
    let secs = window.as_secs_f64();
    let us = |p: f64| telemetry.value_at_quantile(p) as f64 / 1000.0;
    let report = CampaignReport {
        devices: a.devices,
        compression: a.common.compression,
        connect_s: round(connect_s, 2),
        post_ms: round(post_ms, 1),
        ack_99_ms: ack_99.map(|v| round(v, 1)),
        ack_100_ms: ack_100.map(|v| round(v, 1)),
        received_p50_ms: round(q(&got, 0.5), 1),
        received_p99_ms: round(q(&got, 0.99), 1),
        received_max_ms: round(got.last().copied().unwrap_or(0.0), 1),
        hub_ack_latency_p50_ms: histogram_quantile(&metrics1[0], 0.5).map(|s| round(s * 1000.0, 1)),
        hub_ack_latency_p99_ms: histogram_quantile(&metrics1[0], 0.99)
            .map(|s| round(s * 1000.0, 1)),
        nodes: node_apis.len(),
        store_ops,
        store_commits,
        store_ops_per_s: round(store_ops as f64 / secs, 0),
        telemetry_rate: a.telemetry_rate,
        telemetry_deliveries: deliveries,
        telemetry_p50_us: us(0.5),
        telemetry_p99_us: us(0.99),
        telemetry_max_us: telemetry.max() as f64 / 1000.0,
        hub_cpu: hub_cpu.map(|c| round(c.as_secs_f64() / secs, 3)),
        processes_cpu,
        generator_cpu: round(gen_cpu.as_secs_f64() / secs, 3),
    };
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    if ack_100.is_none() {
        bail!("not every device acknowledged within {:?}", a.timeout);
    }
    Ok(())
}

/// The Prometheus text of every node.
async fn all_metrics(apis: &[Api]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(apis.len());
    for api in apis {
        out.push(api.metrics().await?);
    }
    Ok(out)
}

/// A quantile of `telehub_notification_ack_seconds` from the Prometheus text: the
/// upper bound of the first bucket holding it.
fn histogram_quantile(text: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("telehub_notification_ack_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= total * q)
        .map(|(le, _)| *le)
}
