//! `device-sim bench fanout`: P publisher devices → hub → S dashboard subscribers,
//! live, batched (`--max-delay-ms`) or conflated (`--conflate-ms`); deliveries/s,
//! delivery latency percentiles, bytes per subscriber, the generator's CPU time and,
//! with `--hub-pid`, the hub's CPU µs per delivery.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
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
    proto::{envelope::Body, Envelope, Subscribe},
    ws,
};
use tokio::{sync::Semaphore, task::JoinSet};

use super::{
    common::{round, wait_for, Common, Setup, CONNECT_PARALLELISM},
    traffic::{now_nanos, publisher, subscriber, Counters},
};
use crate::cpu;

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Encoded size of each published envelope, bytes (min 64).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Run before the window; not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Total published messages per second across publishers; default: as fast as
    /// back-pressure allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Spread publishers and subscribers over this many categories (publisher i on
    /// bench.c{i%K}, subscriber j subscribed to bench.c{j%K}); 1 = everyone on "*".
    #[arg(long, default_value_t = 1)]
    categories: usize,
    /// Subscribe batched: `Subscribe.max_delay_ms` (0: live).
    #[arg(long, default_value_t = 0)]
    max_delay_ms: u32,
    /// Subscribe conflated: `Subscribe.conflate_ms` (0: not conflated).
    #[arg(long, default_value_t = 0)]
    conflate_ms: u32,
    /// Also connect this many dashboards that subscribe to "*" and never read: the
    /// hub's memory (peak RSS, with --hub-pid) shows what they make it hold.
    #[arg(long, default_value_t = 0)]
    stuck: usize,
    /// Publishers ask for uplink confirmations (ConfirmTelemetry): the report's
    /// hub CPU per published message shows what confirming costs.
    #[arg(long)]
    confirm: bool,
}

#[derive(Serialize, Debug)]
struct FanoutReport {
    publishers: usize,
    subscribers: usize,
    categories: usize,
    payload_bytes: usize,
    compression: bool,
    /// `live`, `batched` or `conflated`, and the interval.
    delivery: &'static str,
    interval_ms: u32,
    offered_rate: Option<f64>,
    window_s: f64,
    published_per_s: f64,
    deliveries: u64,
    deliveries_per_s: f64,
    /// Message bytes one subscriber received per second, on average.
    bytes_per_subscriber_per_s: f64,
    /// Deliveries the hub's outboxes dropped (slow subscribers), during the window.
    dropped: u64,
    latency_us_p50: f64,
    latency_us_p99: f64,
    latency_us_p999: f64,
    latency_us_max: f64,
    /// Generator (this process) CPU during the window, as a share of one core.
    generator_cpu: f64,
    /// Hub CPU during the window, as a share of one core (with --hub-pid).
    hub_cpu: Option<f64>,
    /// Hub CPU µs per delivery (with --hub-pid).
    hub_cpu_us_per_delivery: Option<f64>,
    /// Hub CPU µs per published message (with --hub-pid).
    hub_cpu_us_per_published: Option<f64>,
    /// Publishers asked for uplink confirmations; what they received (whole run).
    confirm: bool,
    confirmations: u64,
    confirmed: u64,
    publisher_errors: u64,
    stuck_dashboards: usize,
    /// Hub RSS before the publishers start and its peak until the window ends
    /// (sampled every 100 ms, with --hub-pid).
    hub_rss_start_kib: Option<u64>,
    hub_rss_peak_kib: Option<u64>,
    /// CPU of each `--pid` process during the window, as a share of one core...
    other_cpu: BTreeMap<String, f64>,
    /// ...and in µs per published message.
    other_cpu_us_per_published: BTreeMap<String, f64>,
}

pub async fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    if a.publishers == 0 || a.subscribers == 0 || a.categories == 0 {
        bail!("publishers, subscribers and categories must be at least 1");
    }
    if a.publishers > 10_000 || a.subscribers > 50_000 || a.categories > 1000 {
        bail!("at most 10000 publishers, 50000 subscribers, 1000 categories");
    }
    if !(64..=60_000).contains(&a.payload) {
        bail!("--payload must be 64..=60000 bytes");
    }
    if a.max_delay_ms > 0 && a.conflate_ms > 0 {
        bail!("--max-delay-ms and --conflate-ms: one or the other");
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number");
        }
    }
    let setup = Arc::new(Setup::new(&a.common)?);
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    now_nanos();

    // Subscribers first, so nothing published is missed.
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut subs = JoinSet::new();
    let mut connecting = JoinSet::new();
    for j in 0..a.subscribers {
        let (setup, gate) = (setup.clone(), gate.clone());
        let (max_delay_ms, conflate_ms) = (a.max_delay_ms, a.conflate_ms);
        let pattern = if a.categories == 1 {
            "*".to_owned()
        } else {
            format!("bench.c{}", j % a.categories)
        };
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = setup
                .connect("/v1/dashboard", &format!("bench-sub-{j}"), Role::Viewer)
                .await?;
            let sub = Envelope {
                body: Some(Body::Subscribe(Subscribe {
                    categories: vec![pattern],
                    max_delay_ms,
                    conflate_ms,
                    ..Default::default()
                })),
            };
            conn.send(&ws::Message::Binary(Bytes::from(sub.encode_to_vec())))
                .await?;
            wait_for(&mut conn, |b| matches!(b, Body::Subscribed(_))).await?;
            anyhow::Ok(conn)
        });
    }
    while let Some(r) = connecting.join_next().await {
        let conn = r.context("subscriber setup task")??;
        let (counters, measuring, stop) = (counters.clone(), measuring.clone(), stop.subscribe());
        subs.spawn(subscriber(conn, counters, measuring, stop));
    }
    // Stuck dashboards: subscribed, never read from again.
    let mut stuck = Vec::with_capacity(a.stuck);
    for j in 0..a.stuck {
        let mut conn = setup
            .connect("/v1/dashboard", &format!("bench-stuck-{j}"), Role::Viewer)
            .await?;
        let sub = Envelope {
            body: Some(Body::Subscribe(Subscribe {
                categories: vec!["*".into()],
                max_delay_ms: a.max_delay_ms,
                conflate_ms: a.conflate_ms,
                ..Default::default()
            })),
        };
        conn.send(&ws::Message::Binary(Bytes::from(sub.encode_to_vec())))
            .await?;
        wait_for(&mut conn, |b| matches!(b, Body::Subscribed(_))).await?;
        stuck.push(conn);
    }
    let rss_start = a.common.hub_pid.map(cpu::process_rss_kib).transpose()?;
    let sampler = a.common.hub_pid.map(|pid| {
        let mut stop = stop.subscribe();
        tokio::spawn(async move {
            let mut peak = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|&s| s) => break,
                }
                if let Ok(kib) = cpu::process_rss_kib(pid) {
                    peak = peak.max(kib);
                }
            }
            peak
        })
    });
    let mut pubs = JoinSet::new();
    for i in 0..a.publishers {
        let setup = setup.clone();
        let gate = gate.clone();
        let category = format!("bench.c{}", i % a.categories);
        let per_pub = a.rate.map(|r| r / a.publishers as f64);
        let (counters, stop, payload) = (counters.clone(), stop.subscribe(), a.payload);
        let conn = {
            let _permit = gate.acquire().await?;
            setup
                .connect("/v1/device", &format!("bench-pub-{i}"), Role::Device)
                .await?
        };
        pubs.spawn(publisher(
            conn, category, payload, per_pub, a.confirm, counters, stop,
        ));
    }
    tokio::time::sleep(a.warmup).await;

    // The window.
    let dropped0 = counters.dropped.load(Relaxed);
    let published0 = counters.published.load(Relaxed);
    let hub0 = a.common.hub_pid.map(cpu::process_cpu).transpose()?;
    let others0 = a
        .common
        .pids
        .iter()
        .map(|(_, pid)| cpu::process_cpu(*pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gen0 = cpu::self_cpu();
    let t0 = Instant::now();
    measuring.store(true, Relaxed);
    tokio::time::sleep(a.duration).await;
    measuring.store(false, Relaxed);
    let window = t0.elapsed();
    let gen_cpu = cpu::self_cpu().saturating_sub(gen0);
    let hub_cpu = match (a.common.hub_pid, hub0) {
        (Some(pid), Some(h0)) => Some(cpu::process_cpu(pid)?.saturating_sub(h0)),
        _ => None,
    };
    let mut others = BTreeMap::new();
    for ((name, pid), c0) in a.common.pids.iter().zip(others0) {
        others.insert(name.clone(), cpu::process_cpu(*pid)?.saturating_sub(c0));
    }
    let published = counters.published.load(Relaxed) - published0;
    let dropped = counters.dropped.load(Relaxed) - dropped0;
    let _ = stop.send(true);
    let rss_peak = match sampler {
        Some(task) => task.await.ok(),
        None => None,
    };
    drop(stuck);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
        .context("creating the latency histogram")?;
    let mut deliveries = 0u64;
    let collect = async {
        while let Some(r) = subs.join_next().await {
            if let Ok((n, h)) = r {
                deliveries += n;
                let _ = hist.add(&h);
            }
        }
        while pubs.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .is_err()
    {
        eprintln!("warning: some connections did not close within 10 s");
    }
    let secs = window.as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = FanoutReport {
        publishers: a.publishers,
        subscribers: a.subscribers,
        categories: a.categories,
        payload_bytes: a.payload,
        compression: a.common.compression,
        delivery: match (a.max_delay_ms, a.conflate_ms) {
            (0, 0) => "live",
            (_, 0) => "batched",
            _ => "conflated",
        },
        interval_ms: a.max_delay_ms.max(a.conflate_ms),
        offered_rate: a.rate,
        window_s: round(secs, 3),
        published_per_s: round(published as f64 / secs, 0),
        deliveries,
        deliveries_per_s: round(deliveries as f64 / secs, 0),
        bytes_per_subscriber_per_s: round(
            counters.received_bytes.load(Relaxed) as f64 / secs / a.subscribers as f64,
            0,
        ),
        dropped,
        latency_us_p50: us(0.5),
        latency_us_p99: us(0.99),
        latency_us_p999: us(0.999),
        latency_us_max: hist.max() as f64 / 1000.0,
        generator_cpu: round(gen_cpu.as_secs_f64() / secs, 3),
        hub_cpu: hub_cpu.map(|c| round(c.as_secs_f64() / secs, 3)),
        hub_cpu_us_per_delivery: hub_cpu
            .filter(|_| deliveries > 0)
            .map(|c| round(c.as_secs_f64() * 1e6 / deliveries as f64, 3)),
        hub_cpu_us_per_published: hub_cpu
            .filter(|_| published > 0)
            .map(|c| round(c.as_secs_f64() * 1e6 / published as f64, 3)),
        confirm: a.confirm,
        confirmations: counters.confirmations.load(Relaxed),
        confirmed: counters.confirmed.load(Relaxed),
        publisher_errors: counters.publisher_errors.load(Relaxed),
        stuck_dashboards: a.stuck,
        hub_rss_start_kib: rss_start,
        hub_rss_peak_kib: rss_peak,
        other_cpu: others
            .iter()
            .map(|(n, c)| (n.clone(), round(c.as_secs_f64() / secs, 3)))
            .collect(),
        other_cpu_us_per_published: others
            .iter()
            .filter(|_| published > 0)
            .map(|(n, c)| {
                (
                    n.clone(),
                    round(c.as_secs_f64() * 1e6 / published as f64, 3),
                )
            })
            .collect(),
    };
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}
