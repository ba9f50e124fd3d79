//! Benchmarks against a running hub (start it with `--plaintext --rate 10000000
//! --burst 10000000` so the per-device limiter never refuses).
//!
//! - `fanout`: P publisher devices, S dashboard subscribers, payloads that carry the
//!   send instant; reports deliveries/s, delivery latency percentiles (hdrhistogram),
//!   the generator's own CPU time and, with `--hub-pid`, the hub's CPU µs per delivery.
//! - `idle`: connects N idle devices and reports the hub's RSS growth per connection.
//!
//! Publishers and subscribers live in this one process, so one monotonic clock
//! (`EPOCH`) timestamps both ends. Subscribers parse only what they measure: the
//! envelope's telemetry, its first reading's raw 8-byte send stamp.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use prost::Message as _;
use serde::Serialize;
use telehub::{
    auth::Role,
    proto::{envelope::Body, reading::Value, Envelope, Reading, Subscribe, Telemetry},
    sim::{
        profile::{Kind, Profile},
        Endpoint, SimStream,
    },
    ws,
};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::cpu;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connection setups.
const CONNECT_PARALLELISM: usize = 64;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Publishers → hub → subscribers throughput and latency.
    Fanout(FanoutArgs),
    /// Hub memory per idle device connection.
    Idle(IdleArgs),
    /// A critical notification to N online devices: time to acknowledgement, store
    /// writes, telemetry latency meanwhile.
    Campaign(crate::campaign::CampaignArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The hub, normally ws://127.0.0.1:PORT (a --plaintext hub).
    #[arg(long)]
    pub(crate) url: String,
    /// CA certificate for wss:// URLs.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// The hub's data dir (tokens are minted with its key).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// The hub's process id: adds its CPU time (fanout, campaign) or RSS (idle) to the
    /// report.
    #[arg(long)]
    pub(crate) hub_pid: Option<u32>,
    /// Offer permessage-deflate on every connection.
    #[arg(long)]
    pub(crate) compression: bool,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,
}

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
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle devices to connect.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Settle time after the last connection before RSS is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Telemetry messages each device sends (simulated readings) before going idle, so
    /// that per-connection compression state, if any, exists when RSS is read. At most
    /// the hub's rate-limit burst.
    #[arg(long, default_value_t = 0)]
    messages: usize,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fanout(a) => fanout(a).await,
        BenchCommand::Idle(a) => idle(a).await,
        BenchCommand::Campaign(a) => crate::campaign::campaign(a).await,
    }
}

/// The shared monotonic clock both ends stamp with.
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) struct Setup {
    pub(crate) endpoint: Endpoint,
    pub(crate) key: telehub::auth::TokenKey,
    compression: bool,
}

impl Setup {
    pub(crate) fn new(c: &Common) -> anyhow::Result<Self> {
        Ok(Setup {
            endpoint: Endpoint::parse(&c.url, c.ca.as_deref())?,
            key: crate::load_key(&c.data_dir)?,
            compression: c.compression,
        })
    }

    pub(crate) fn token(&self, subject: &str, role: Role) -> String {
        self.key
            .issue(subject, role, BTreeMap::new(), Duration::from_secs(3600))
    }

    /// Connects and waits for `Welcome`.
    pub(crate) async fn connect(
        &self,
        path: &str,
        subject: &str,
        role: Role,
    ) -> anyhow::Result<ws::Connection<SimStream>> {
        let token = self.token(subject, role);
        let (mut conn, _) = self
            .endpoint
            .connect(path, &token, self.compression, STEP_TIMEOUT)
            .await
            .with_context(|| format!("connecting {subject} to {path}"))?;
        wait_for(&mut conn, |b| matches!(b, Body::Welcome(_)))
            .await
            .with_context(|| format!("{subject}: no Welcome"))?;
        Ok(conn)
    }
}

/// Reads until an envelope matching `want` arrives (bounded by [`STEP_TIMEOUT`]).
pub(crate) async fn wait_for(
    conn: &mut ws::Connection<SimStream>,
    want: impl Fn(&Body) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match conn.read().await? {
                Some(ws::Message::Binary(b)) => {
                    if let Some(body) = Envelope::decode(b)?.body {
                        if let Body::Error(e) = &body {
                            bail!("hub error {}: {}", e.code, e.message);
                        }
                        if want(&body) {
                            return Ok(());
                        }
                    }
                }
                Some(_) => {}
                None => bail!("connection closed"),
            }
        }
    })
    .await
    .context("timed out")?
}

// ------------------------------------------------------------------ fanout

#[derive(Default)]
pub(crate) struct Counters {
    /// Telemetry published (whole run).
    pub(crate) published: AtomicU64,
    /// `Dropped.count` reported to subscribers (whole run).
    pub(crate) dropped: AtomicU64,
    /// Errors received by publishers (e.g. RATE_LIMITED: the hub limit is too low).
    pub(crate) publisher_errors: AtomicU64,
}

#[derive(Serialize, Debug)]
struct FanoutReport {
    publishers: usize,
    subscribers: usize,
    categories: usize,
    payload_bytes: usize,
    compression: bool,
    offered_rate: Option<f64>,
    window_s: f64,
    published_per_s: f64,
    deliveries: u64,
    deliveries_per_s: f64,
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
    publisher_errors: u64,
}

async fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    if a.publishers == 0 || a.subscribers == 0 || a.categories == 0 {
        bail!("publishers, subscribers and categories must be at least 1");
    }
    if a.publishers > 10_000 || a.subscribers > 50_000 || a.categories > 1000 {
        bail!("at most 10000 publishers, 50000 subscribers, 1000 categories");
    }
    if !(64..=60_000).contains(&a.payload) {
        bail!("--payload must be 64..=60000 bytes");
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
        pubs.spawn(publisher(conn, category, payload, per_pub, counters, stop));
    }
    tokio::time::sleep(a.warmup).await;

    // The window.
    let dropped0 = counters.dropped.load(Relaxed);
    let published0 = counters.published.load(Relaxed);
    let hub0 = a.common.hub_pid.map(cpu::process_cpu).transpose()?;
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
    let published = counters.published.load(Relaxed) - published0;
    let dropped = counters.dropped.load(Relaxed) - dropped0;
    let _ = stop.send(true);

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
        offered_rate: a.rate,
        window_s: round(secs, 3),
        published_per_s: round(published as f64 / secs, 0),
        deliveries,
        deliveries_per_s: round(deliveries as f64 / secs, 0),
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
        publisher_errors: counters.publisher_errors.load(Relaxed),
    };
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// A telemetry envelope of `size` encoded bytes whose first reading is the raw
/// 8-byte little-endian send stamp.
fn bench_envelope(category: &str, seq: u64, size: usize, filler: &[u8]) -> Telemetry {
    let mut t = Telemetry {
        device_id: String::new(),
        category: category.to_owned(),
        timestamp_ms: telehub::sim::profile::now_ms(),
        seq,
        readings: vec![
            Reading {
                name: "t".into(),
                value: Some(Value::Raw(vec![0; 8])),
                unit: String::new(),
            },
            Reading {
                name: "p".into(),
                value: Some(Value::Raw(Vec::new())),
                unit: String::new(),
            },
        ],
        received_ms: 0,
    };
    // The smallest filler that reaches the size (varint lengths make the relation
    // non-linear). Runs once per publisher.
    let base = encoded_len(&t);
    let start = size
        .saturating_sub(base)
        .saturating_sub(4)
        .min(filler.len());
    for n in start..=filler.len() {
        t.readings[1].value = Some(Value::Raw(filler[..n].to_vec()));
        if encoded_len(&t) >= size {
            break;
        }
    }
    t
}

fn encoded_len(t: &Telemetry) -> usize {
    prost::encoding::message::encoded_len(1u32, t)
}

/// Text-like filler (compressible roughly like JSON sensor data is).
fn filler(len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 8] = [
        b"temperature",
        b"humidity",
        b"voltage",
        b"sensor",
        b"0.123",
        b"42",
        b"ok",
        b"\"unit\":",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(WORDS[(x % 8) as usize]);
        out.push(b' ');
    }
    out.truncate(len);
    out
}

pub(crate) async fn publisher(
    conn: ws::Connection<SimStream>,
    category: String,
    size: usize,
    rate: Option<f64>,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = conn.split();
    // Drain what the hub sends (errors, pings) so its writes never block.
    let drain = {
        let counters = counters.clone();
        tokio::spawn(async move {
            while let Ok(m) = reader.next().await {
                match m {
                    ws::Incoming::Message(ws::Message::Binary(b)) => {
                        if let Ok(Envelope {
                            body: Some(Body::Error(_)),
                        }) = Envelope::decode(b)
                        {
                            counters.publisher_errors.fetch_add(1, Relaxed);
                        }
                    }
                    ws::Incoming::Close(_) => break,
                    _ => {}
                }
            }
        })
    };
    let fill = filler(size);
    let mut template = bench_envelope(&category, 0, size, &fill);
    let mut buf = Vec::with_capacity(size + 16);
    let mut seq = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: loop {
        // How many to send now: one (as fast as possible) or what the schedule owes.
        let due = match rate {
            None => {
                if *stop.borrow() {
                    break;
                }
                1
            }
            Some(r) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|&s| s) => break,
                }
                let owed = (start.elapsed().as_secs_f64() * r) as u64;
                owed.saturating_sub(seq).min(10_000)
            }
        };
        for _ in 0..due {
            template.seq = seq;
            template.readings[0].value = Some(Value::Raw(now_nanos().to_le_bytes().to_vec()));
            buf.clear();
            prost::encoding::message::encode(1u32, &template, &mut buf);
            let msg = ws::Message::Binary(Bytes::copy_from_slice(&buf));
            tokio::select! {
                r = writer.send(&msg) => if r.is_err() { break 'run; },
                _ = stop.wait_for(|&s| s) => break 'run,
            }
            seq += 1;
            counters.published.fetch_add(1, Relaxed);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.close(1000, "bench done")).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

pub(crate) async fn subscriber(
    conn: ws::Connection<SimStream>,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, Histogram<u64>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let mut count = 0u64;
    let (mut reader, mut writer) = conn.split();
    loop {
        let incoming = tokio::select! {
            m = reader.next() => m,
            _ = stop.wait_for(|&s| s) => break,
        };
        match incoming {
            Ok(ws::Incoming::Message(ws::Message::Binary(b))) => match telemetry_stamp(&b) {
                Some(stamp) => {
                    if measuring.load(Relaxed) {
                        count += 1;
                        if let Some(sent) = stamp {
                            let _ = hist.record(now_nanos().saturating_sub(sent).max(1));
                        }
                    }
                }
                None => {
                    if let Ok(Envelope {
                        body: Some(Body::Dropped(d)),
                    }) = Envelope::decode(b)
                    {
                        counters.dropped.fetch_add(d.count, Relaxed);
                    }
                }
            },
            Ok(ws::Incoming::Ping(p)) => {
                if writer.pong(&p).await.is_err() {
                    break;
                }
            }
            Ok(ws::Incoming::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.close(1000, "bench done")).await;
    (count, hist)
}

/// Minimal decode of an `Envelope`: `None` unless it holds `telemetry` (field 1);
/// then the first reading's raw 8-byte stamp, if present.
fn telemetry_stamp(envelope: &[u8]) -> Option<Option<u64>> {
    let telemetry = field(envelope, 1)?;
    let stamp = field(telemetry, 5)
        .and_then(|reading| field(reading, 6))
        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        .map(u64::from_le_bytes);
    Some(stamp)
}

/// The first length-delimited field `number` of a protobuf message, skipping others.
fn field(mut buf: &[u8], number: u32) -> Option<&[u8]> {
    use prost::encoding::{decode_varint, WireType};
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let wire = WireType::try_from(key & 7).ok()?;
        let n = (key >> 3) as u32;
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
            }
            WireType::SixtyFourBit => buf = buf.get(8..)?,
            WireType::ThirtyTwoBit => buf = buf.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let value = buf.get(..len)?;
                if n == number {
                    return Some(value);
                }
                buf = &buf[len..];
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    None
}

// ------------------------------------------------------------------ idle

#[derive(Serialize, Debug)]
struct IdleReport {
    devices: usize,
    compression: bool,
    messages_per_device: usize,
    hub_rss_before_kib: Option<u64>,
    hub_rss_after_kib: Option<u64>,
    hub_kib_per_connection: Option<f64>,
    connect_s: f64,
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    if a.devices == 0 || a.devices > 50_000 {
        bail!("--devices must be 1..=50000");
    }
    let setup = Arc::new(Setup::new(&a.common)?);
    let before = a.common.hub_pid.map(cpu::process_rss_kib).transpose()?;
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..a.devices {
        let (setup, gate, messages) = (setup.clone(), gate.clone(), a.messages);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = setup
                .connect("/v1/device", &format!("idle-{i:05}"), Role::Device)
                .await?;
            let batch: Vec<Bytes> = {
                let mut rng = rand::rng();
                let mut profile = Profile::new(Kind::for_index(i), &mut rng);
                (0..messages)
                    .map(|_| {
                        let body = Body::Telemetry(profile.next(1.0, &mut rng));
                        Bytes::from(Envelope { body: Some(body) }.encode_to_vec())
                    })
                    .collect()
            };
            for payload in batch {
                conn.send(&ws::Message::Binary(payload)).await?;
            }
            anyhow::Ok(conn)
        });
    }
    let mut conns = Vec::with_capacity(a.devices);
    while let Some(r) = tasks.join_next().await {
        conns.push(r.context("connect task")??);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let after = a.common.hub_pid.map(cpu::process_rss_kib).transpose()?;
    let report = IdleReport {
        devices: a.devices,
        compression: a.common.compression,
        messages_per_device: a.messages,
        hub_rss_before_kib: before,
        hub_rss_after_kib: after,
        hub_kib_per_connection: before
            .zip(after)
            .map(|(b, x)| round((x as f64 - b as f64) / a.devices as f64, 2)),
        connect_s: round(connect_s, 3),
    };
    for mut c in conns {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.close(1000, "bench done")).await;
    }
    if a.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_requested_size_and_stamp() {
        let fill = filler(1000);
        for size in [64, 100, 200, 500] {
            let mut t = bench_envelope("bench.c0", 7, size, &fill);
            assert!((size..size + 3).contains(&encoded_len(&t)), "{size}");
            t.readings[0].value = Some(Value::Raw(12345u64.to_le_bytes().to_vec()));
            let mut buf = Vec::new();
            prost::encoding::message::encode(1u32, &t, &mut buf);
            assert_eq!(telemetry_stamp(&buf), Some(Some(12345)));
        }
        let other = Envelope {
            body: Some(Body::Dropped(telehub::proto::Dropped {
                count: 1,
                total: 2,
            })),
        };
        assert_eq!(telemetry_stamp(&other.encode_to_vec()), None);
        assert_eq!(telemetry_stamp(&[0xff, 0xff]), None);
    }
}
