//! Timestamped telemetry, shared by the `fanout` and `campaign` benches: [`publisher`]
//! devices send envelopes of a given size carrying their send instant, [`subscriber`]
//! dashboards record each delivery's latency (live `Telemetry`, or each message of
//! a `Batch`), and [`Counters`] add up the run.
//!
//! Publishers and subscribers live in this one process, so one monotonic clock
//! (`EPOCH`) timestamps both ends. Subscribers parse only what they measure: the
//! envelope's telemetry, its first reading's raw 8-byte send stamp.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use prost::Message as _;
use telehub::{
    proto::{envelope::Body, reading::Value, ConfirmTelemetry, Envelope, Reading, Telemetry},
    sim::SimStream,
    ws,
};

/// The shared monotonic clock both ends stamp with.
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Telemetry published (whole run).
    pub(crate) published: AtomicU64,
    /// `Dropped.count` reported to subscribers (whole run).
    pub(crate) dropped: AtomicU64,
    /// Errors received by publishers (e.g. RATE_LIMITED: the hub limit is too low).
    pub(crate) publisher_errors: AtomicU64,
    /// Message bytes (after inflation) subscribers received in the window.
    pub(crate) received_bytes: AtomicU64,
    /// `TelemetryConfirmed` envelopes publishers received (whole run)...
    pub(crate) confirmations: AtomicU64,
    /// ...and the messages they confirmed.
    pub(crate) confirmed: AtomicU64,
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

/// Publishes `size`-byte telemetry on `category` until `stop`; with `confirm`,
/// asks for uplink confirmations first and counts them (nothing is resent: the
/// bench measures what confirming costs the hub).
pub(crate) async fn publisher(
    conn: ws::Connection<SimStream>,
    category: String,
    size: usize,
    rate: Option<f64>,
    confirm: bool,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = conn.split();
    if confirm {
        let ask = Envelope {
            body: Some(Body::ConfirmTelemetry(ConfirmTelemetry {
                boot_id: rand::random::<u64>().max(1),
            })),
        };
        let msg = ws::Message::Binary(Bytes::from(ask.encode_to_vec()));
        if writer.send(&msg).await.is_err() {
            return;
        }
    }
    // Drain what the hub sends (errors, confirmations, pings) so its writes never block.
    let drain = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut through = 0;
            while let Ok(m) = reader.next().await {
                match m {
                    ws::Incoming::Message(ws::Message::Binary(b)) => match Envelope::decode(b) {
                        Ok(Envelope {
                            body: Some(Body::Error(_)),
                        }) => {
                            counters.publisher_errors.fetch_add(1, Relaxed);
                        }
                        Ok(Envelope {
                            body: Some(Body::TelemetryConfirmed(c)),
                        }) => {
                            counters.confirmations.fetch_add(1, Relaxed);
                            counters
                                .confirmed
                                .fetch_add(c.through_seq.saturating_sub(through), Relaxed);
                            through = through.max(c.through_seq);
                        }
                        _ => {}
                    },
                    ws::Incoming::Close(_) => break,
                    _ => {}
                }
            }
        })
    };
    let fill = filler(size);
    let mut template = bench_envelope(&category, 0, size, &fill);
    let mut buf = Vec::with_capacity(size + 16);
    // Confirmations need seqs from 1.
    let mut seq = u64::from(confirm);
    let first = seq;
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
                owed.saturating_sub(seq - first).min(10_000)
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
    let (mut count, mut bytes) = (0u64, 0u64);
    let (mut reader, mut writer) = conn.split();
    loop {
        let incoming = tokio::select! {
            m = reader.next() => m,
            _ = stop.wait_for(|&s| s) => break,
        };
        match incoming {
            Ok(ws::Incoming::Message(ws::Message::Binary(b))) => {
                let measured = measuring.load(Relaxed);
                let now = now_nanos();
                let telemetry = each_stamp(&b, |stamp| {
                    if measured {
                        count += 1;
                        if let Some(sent) = stamp {
                            let _ = hist.record(now.saturating_sub(sent).max(1));
                        }
                    }
                });
                if measured {
                    bytes += b.len() as u64;
                }
                if !telemetry {
                    if let Ok(Envelope {
                        body: Some(Body::Dropped(d)),
                    }) = Envelope::decode(b)
                    {
                        counters.dropped.fetch_add(d.count, Relaxed);
                    }
                }
            }
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
    counters.received_bytes.fetch_add(bytes, Relaxed);
    (count, hist)
}

/// Minimal decode of an `Envelope`: calls `each` with the first reading's raw
/// 8-byte send stamp (if present) of every telemetry message it holds: one for a
/// `Telemetry` (field 1), every element of a `Batch` (field 18). False if it holds
/// neither.
fn each_stamp(envelope: &[u8], mut each: impl FnMut(Option<u64>)) -> bool {
    let stamp = |telemetry: &[u8]| {
        field(telemetry, 5)
            .and_then(|reading| field(reading, 6))
            .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
            .map(u64::from_le_bytes)
    };
    let mut found = false;
    for (n, body) in fields(envelope) {
        match n {
            1 => each(stamp(body)),
            18 => fields(body)
                .filter(|(n, _)| *n == 1)
                .for_each(|(_, t)| each(stamp(t))),
            _ => continue,
        }
        found = true;
    }
    found
}

/// The first length-delimited field `number` of a protobuf message, skipping others.
fn field(buf: &[u8], number: u32) -> Option<&[u8]> {
    fields(buf).find(|(n, _)| *n == number).map(|(_, v)| v)
}

/// The length-delimited fields of a protobuf message, in order (others skipped;
/// stops at the first malformed byte).
fn fields(mut buf: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    use prost::encoding::{decode_varint, WireType};
    std::iter::from_fn(move || {
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
                    buf = &buf[len..];
                    return Some((n, value));
                }
                WireType::StartGroup | WireType::EndGroup => return None,
            }
        }
        None
    })
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
            assert_eq!(stamps(&buf), Some(vec![Some(12345)]));
        }
        // A Batch of two: both stamps, in order.
        let mut t = bench_envelope("bench.c0", 7, 100, &fill);
        let batch = telehub::proto::Batch {
            telemetry: [1u64, 2]
                .map(|n| {
                    t.readings[0].value = Some(Value::Raw(n.to_le_bytes().to_vec()));
                    t.clone()
                })
                .to_vec(),
            category: "bench.c0".into(),
            conflated: false,
        };
        let env = Envelope {
            body: Some(Body::Batch(batch)),
        };
        assert_eq!(stamps(&env.encode_to_vec()), Some(vec![Some(1), Some(2)]));
        let other = Envelope {
            body: Some(Body::Dropped(telehub::proto::Dropped {
                count: 1,
                total: 2,
            })),
        };
        assert_eq!(stamps(&other.encode_to_vec()), None);
        assert_eq!(stamps(&[0xff, 0xff]), None);
    }

    fn stamps(envelope: &[u8]) -> Option<Vec<Option<u64>>> {
        let mut out = Vec::new();
        each_stamp(envelope, |s| out.push(s)).then_some(out)
    }
}
