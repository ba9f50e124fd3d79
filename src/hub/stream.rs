//! Batched and conflated delivery: telemetry gathered per stream and sent to many
//! dashboards as one shared `Batch` per interval.
//!
//! A [`Stream`] is one (category, delivery, filter). Every group of timed
//! subscriptions (`index::Group`) whose pattern matches a publication's category
//! appends the publication to its stream once, whatever the number of dashboards
//! in the group. The first message of an interval arms the stream's timer; when
//! it fires, at most the interval later, the hub takes the stream's messages,
//! assembles them into `Batch` envelopes without decoding them (each kept
//! encoding `Envelope{telemetry}` is, byte for byte, a `Batch.telemetry` element),
//! and pushes each envelope, encoded once, to every dashboard whose group matches
//! at that moment, as droppable telemetry (see `outbox`). Compression and framing
//! are then shared as for any message (`ws::SharedMessage`).
//!
//! Invariants:
//! - Order per device: a device's publications are appended in the order it
//!   published them, and the one flushing task sends a stream's batches in order.
//! - No gap after `History`: who gets a batch is read from the index when it is
//!   flushed, so a dashboard gets every message appended after it subscribed (and
//!   possibly some from just before, which the History rule lets clients drop).
//! - Conflated: the latest message of each series (device) in the interval, and
//!   only when its readings differ from the last ones the stream sent for that
//!   series (compared by a digest of the encoded readings, not decoded). When a
//!   dashboard joins, the next interval sends every series that spoke, changed or
//!   not ([`Streams::resend_all`]): the joiner's values come from its `History`,
//!   which may be older than what the stream last sent.
//! - Memory: a batched stream holds at most [`EARLY_FLUSH_BYTES`] (past that it is
//!   flushed at once, before its interval ends); a conflated one holds one message
//!   per series that spoke in the interval, and one digest per series that spoke in
//!   the last 10 minutes (`SENT_FORGET`). A stream nobody receives any more is
//!   removed at its next flush, or at the hub's next statistics tick if no message
//!   comes.
//! - No lock is held across `.await`, and a stream's lock only across a push or a
//!   take; the flush assembles and pushes outside it.

use std::{
    cmp::Reverse,
    collections::{hash_map, BinaryHeap, HashMap},
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{Encoded, Filter, WireFormat};

/// Longest `Subscribe.max_delay_ms` and `Subscribe.conflate_ms`.
pub const MAX_DELAY_MS: u32 = 10_000;
pub const MAX_CONFLATE_MS: u32 = 60_000;

/// A `Batch` carries telemetry up to this many protobuf bytes (as a `History`
/// does, and for the same reason: under the hub's own client limit).
pub const BATCH_CHUNK_BYTES: usize = super::history::HISTORY_CHUNK_BYTES;

/// A batched stream holding this many bytes is flushed at once.
pub const EARLY_FLUSH_BYTES: usize = 4 * BATCH_CHUNK_BYTES;

/// `Envelope.batch`'s field number (telehub.proto).
const BATCH_FIELD: u32 = 18;

/// The first byte of an encoded `Envelope{telemetry}` and of a `Batch.telemetry`
/// element: field 1, length-delimited.
const TELEMETRY_KEY: u8 = 1 << 3 | 2;

/// How a subscription's telemetry reaches its dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Each message as it is accepted.
    Live,
    /// Every message, in one `Batch` per category at most every `max_delay_ms`.
    Batched { max_delay_ms: u32 },
    /// The latest changed message per series, at most every `interval_ms`.
    Conflated { interval_ms: u32 },
}

impl Delivery {
    /// How long a stream of this delivery gathers before it is flushed.
    pub fn interval(self) -> Duration {
        match self {
            Delivery::Live => Duration::ZERO,
            Delivery::Batched { max_delay_ms: ms } | Delivery::Conflated { interval_ms: ms } => {
                Duration::from_millis(ms.into())
            }
        }
    }

    /// The metrics label of this delivery.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Live => "live",
            Delivery::Batched { .. } => "batched",
            Delivery::Conflated { .. } => "conflated",
        }
    }
}

/// Identifies a filter in a stream key: its interned `Arc`'s address (0: none).
/// Streams hold their filter, so the address cannot be reused while a stream
/// keyed by it exists.
pub fn filter_id(filter: &Option<Arc<Filter>>) -> usize {
    filter.as_ref().map_or(0, |f| Arc::as_ptr(f) as usize)
}

/// One (category, delivery, filter)'s telemetry, gathered for its next flush.
pub struct Stream {
    category: String,
    delivery: Delivery,
    filter: Option<Arc<Filter>>,
    pending: Mutex<Pending>,
    /// Conflated: the digest of the readings last sent per series. Only the
    /// flushing task takes it.
    sent: Mutex<Sent>,
}

#[derive(Default)]
struct Pending {
    /// A timer is set for what is pending.
    armed: bool,
    /// A timer is set to flush now (the stream passed [`EARLY_FLUSH_BYTES`]).
    urgent: bool,
    /// Batched: every message, in the order appended.
    messages: Vec<Arc<Encoded>>,
    /// Protobuf bytes of `messages`.
    bytes: usize,
    /// Conflated: the latest message per device, in the order devices first
    /// spoke in the interval, and where each one is.
    latest: Vec<(String, Arc<Encoded>)>,
    slots: HashMap<String, usize>,
    /// Conflated: messages replaced by a later one of their series.
    superseded: u64,
    /// Conflated: send the next interval's latest messages even if unchanged (a
    /// dashboard joined, see [`Streams::resend_all`]).
    resend: bool,
}

#[derive(Default)]
struct Sent {
    /// Per device: the digest of the readings last sent, and when it last spoke.
    digests: HashMap<String, (u64, Instant)>,
    /// When digests of devices silent for [`SENT_FORGET`] were last dropped.
    pruned: Option<Instant>,
}

/// A device silent this long is forgotten by a conflated stream (its next value is
/// sent even if unchanged): the digests are bounded by the devices that spoke
/// within it, whatever the interval.
const SENT_FORGET: Duration = Duration::from_secs(600);

/// What one flush took from a stream.
pub struct Taken {
    /// The messages to send, in order.
    pub messages: Vec<Arc<Encoded>>,
    /// Conflated: messages superseded in the interval or unchanged, not sent.
    pub conflated_away: u64,
}

impl Stream {
    fn new(category: &str, delivery: Delivery, filter: Option<Arc<Filter>>) -> Self {
        Self {
            category: category.to_owned(),
            delivery,
            filter,
            pending: Mutex::default(),
            sent: Mutex::default(),
        }
    }

    pub fn category(&self) -> &str {
        &self.category
    }

    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    pub fn filter_id(&self) -> usize {
        filter_id(&self.filter)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every operation leaves the lists consistent: poisoning is ignored.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a message from `device`; returns when to flush if no timer is set
    /// for it yet.
    fn push(&self, device: &str, msg: &Arc<Encoded>) -> Option<Instant> {
        let mut st = self.lock();
        match self.delivery {
            Delivery::Conflated { .. } => match st.slots.get(device) {
                Some(&i) => {
                    st.latest[i].1 = msg.clone();
                    st.superseded += 1;
                }
                None => {
                    let i = st.latest.len();
                    st.slots.insert(device.to_owned(), i);
                    st.latest.push((device.to_owned(), msg.clone()));
                }
            },
            _ => {
                st.bytes += msg.message(WireFormat::Protobuf).payload().len();
                st.messages.push(msg.clone());
                if st.bytes >= EARLY_FLUSH_BYTES && !st.urgent {
                    st.urgent = true;
                    st.armed = true;
                    return Some(Instant::now());
                }
            }
        }
        if std::mem::replace(&mut st.armed, true) {
            return None;
        }
        Some(Instant::now() + self.delivery.interval())
    }

    /// Nothing pending and no timer set: the stream may be removed.
    fn idle(&self) -> bool {
        let st = self.lock();
        !st.armed && st.messages.is_empty() && st.latest.is_empty()
    }

    /// Takes what is pending at `now` (for a conflated stream: what changed, or
    /// comes from a device silent for [`SENT_FORGET`]).
    pub fn take(&self, now: Instant) -> Taken {
        let mut st = self.lock();
        st.armed = false;
        st.urgent = false;
        st.bytes = 0;
        if !matches!(self.delivery, Delivery::Conflated { .. }) {
            return Taken {
                messages: std::mem::take(&mut st.messages),
                conflated_away: 0,
            };
        }
        let latest = std::mem::take(&mut st.latest);
        let superseded = std::mem::take(&mut st.superseded);
        let resend = std::mem::take(&mut st.resend);
        st.slots.clear();
        drop(st);

        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let mut messages = Vec::with_capacity(latest.len());
        let mut unchanged = 0;
        for (device, msg) in latest {
            let digest = readings_digest(msg.message(WireFormat::Protobuf).payload());
            match sent.digests.entry(device) {
                hash_map::Entry::Occupied(mut e)
                    if !resend
                        && Some(e.get().0) == digest
                        && now.duration_since(e.get().1) < SENT_FORGET =>
                {
                    e.get_mut().1 = now;
                    unchanged += 1;
                }
                e => {
                    let digest = digest.unwrap_or_else(rand::random);
                    match e {
                        hash_map::Entry::Occupied(mut e) => *e.get_mut() = (digest, now),
                        hash_map::Entry::Vacant(e) => {
                            e.insert((digest, now));
                        }
                    }
                    messages.push(msg);
                }
            }
        }
        let pruned = *sent.pruned.get_or_insert(now);
        if now.duration_since(pruned) >= SENT_FORGET / 2 {
            sent.digests
                .retain(|_, (_, at)| now.duration_since(*at) < SENT_FORGET);
            sent.pruned = Some(now);
        }
        Taken {
            messages,
            conflated_away: superseded + unchanged,
        }
    }

    /// `messages` as `Batch` envelopes of about [`BATCH_CHUNK_BYTES`] each, their
    /// drops charged to their senders.
    pub fn batches(&self, messages: &[Arc<Encoded>]) -> Vec<Arc<Encoded>> {
        let mut trailer = Vec::with_capacity(self.category.len() + 4);
        prost::encoding::string::encode(2, &self.category, &mut trailer);
        if matches!(self.delivery, Delivery::Conflated { .. }) {
            prost::encoding::bool::encode(3, &true, &mut trailer);
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut size = 0;
        let mut parts: Vec<&[u8]> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let bytes = m.message(WireFormat::Protobuf).payload();
            if bytes.first() != Some(&TELEMETRY_KEY) {
                continue;
            }
            if size + bytes.len() > BATCH_CHUNK_BYTES && !parts.is_empty() {
                parts.push(&trailer);
                out.push(assemble(&parts, &messages[start..i]));
                parts.clear();
                start = i;
                size = 0;
            }
            size += bytes.len();
            parts.push(bytes);
        }
        if !parts.is_empty() {
            parts.push(&trailer);
            out.push(assemble(&parts, &messages[start..]));
        }
        out
    }
}

fn assemble(parts: &[&[u8]], messages: &[Arc<Encoded>]) -> Arc<Encoded> {
    Encoded::assemble(
        BATCH_FIELD,
        parts,
        messages.len() as u64,
        messages.iter().map(|m| &**m),
    )
}

/// A digest of the readings of an encoded `Envelope{telemetry}` (field 5 of the
/// telemetry, as encoded), or `None` if it is not one.
fn readings_digest(envelope: &[u8]) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut outer = envelope;
    let (field, telemetry) = next_field(&mut outer)?;
    if field != 1 {
        return None;
    }
    let mut rest = telemetry?;
    while !rest.is_empty() {
        let (field, body) = next_field(&mut rest)?;
        if field == 5 {
            body?.hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Reads one field off `buf`: its number, and its body if length-delimited.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u32, Option<&'a [u8]>)> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let (field, wire) = decode_key(buf).ok()?;
    let skip = |buf: &mut &'a [u8], n: usize| -> Option<&'a [u8]> {
        let body = buf.get(..n)?;
        *buf = &buf[n..];
        Some(body)
    };
    match wire {
        WireType::Varint => {
            decode_varint(buf).ok()?;
            Some((field, None))
        }
        WireType::SixtyFourBit => skip(buf, 8).map(|_| (field, None)),
        WireType::ThirtyTwoBit => skip(buf, 4).map(|_| (field, None)),
        WireType::LengthDelimited => {
            let n = usize::try_from(decode_varint(buf).ok()?).ok()?;
            skip(buf, n).map(|b| (field, Some(b)))
        }
        _ => None,
    }
}

/// A stream's timer.
struct Timer {
    at: Instant,
    seq: u64,
    stream: Arc<Stream>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

type StreamMap = HashMap<(Delivery, usize), HashMap<String, Arc<Stream>>>;

/// Every stream of the hub and their timers.
#[derive(Default)]
pub struct Streams {
    /// By (delivery, filter id), then category: looked up with a borrowed
    /// category, no allocation per publication.
    map: RwLock<StreamMap>,
    timers: Mutex<BinaryHeap<Reverse<Timer>>>,
    /// Wakes the flushing task when a timer earlier than all others is set.
    wake: Notify,
    seq: AtomicU64,
}

impl Streams {
    /// Appends a publication from `device` to the (category, delivery, filter)
    /// stream, made if needed, and sets its timer if none is set.
    pub fn append(
        &self,
        category: &str,
        delivery: Delivery,
        filter: &Option<Arc<Filter>>,
        device: &str,
        msg: &Arc<Encoded>,
    ) {
        let key = (delivery, filter_id(filter));
        // Pushed under the map's lock (read, or write when the stream is new): a
        // stream being pushed to is never idle, so `remove_if_idle`, which takes the
        // write lock, cannot remove it between its lookup and the push.
        let armed = {
            let map = read(&self.map);
            map.get(&key)
                .and_then(|m| m.get(category))
                .map(|s| (s.push(device, msg), s.clone()))
        };
        let (at, stream) = match armed {
            Some(found) => found,
            None => {
                let mut map = write(&self.map);
                let s = map
                    .entry(key)
                    .or_default()
                    .entry(category.to_owned())
                    .or_insert_with(|| Arc::new(Stream::new(category, delivery, filter.clone())));
                (s.push(device, msg), s.clone())
            }
        };
        if let Some(at) = at {
            self.arm(stream, at);
        }
    }

    /// The next flush of every conflated stream of (delivery, filter) whose category
    /// `matches` sends the latest message of each series even if unchanged: a
    /// dashboard joining it holds values from its `History`, which may be older than
    /// what the stream last sent.
    pub fn resend_all(&self, delivery: Delivery, filter: usize, matches: impl Fn(&str) -> bool) {
        if let Some(streams) = read(&self.map).get(&(delivery, filter)) {
            for s in streams.values().filter(|s| matches(&s.category)) {
                s.lock().resend = true;
            }
        }
    }

    fn arm(&self, stream: Arc<Stream>, at: Instant) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        timers.push(Reverse(Timer { at, seq, stream }));
        let first = timers.peek().is_some_and(|t| t.0.seq == seq);
        drop(timers);
        if first {
            self.wake.notify_one();
        }
    }

    /// Takes the streams due at `now`; returns them and when the next one is due.
    pub fn due(&self, now: Instant) -> (Vec<Arc<Stream>>, Option<Instant>) {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        while timers.peek().is_some_and(|t| t.0.at <= now) {
            if let Some(Reverse(t)) = timers.pop() {
                due.push(t.stream);
            }
        }
        (due, timers.peek().map(|t| t.0.at))
    }

    /// Resolves when a timer earlier than every other one was set. Cancel-safe.
    pub async fn rearmed(&self) {
        self.wake.notified().await
    }

    /// Removes `stream` if nothing is pending in it (nobody receives it any more).
    pub fn remove_if_idle(&self, stream: &Arc<Stream>) {
        let key = (stream.delivery, stream.filter_id());
        let mut map = write(&self.map);
        let Some(by_category) = map.get_mut(&key) else {
            return;
        };
        let ours = by_category
            .get(&stream.category)
            .is_some_and(|s| Arc::ptr_eq(s, stream));
        if ours && stream.idle() {
            by_category.remove(&stream.category);
            if by_category.is_empty() {
                map.remove(&key);
            }
        }
    }

    /// Every stream, to check which are still received (see [`Streams::remove_if_idle`]).
    pub fn all(&self) -> Vec<Arc<Stream>> {
        read(&self.map)
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Streams in existence.
    pub fn len(&self) -> usize {
        read(&self.map).values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// Single map operations leave the map consistent: poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{DeviceInfo, Publication};
    use crate::proto::{envelope::Body, reading::Value, Envelope, Reading, Telemetry};

    fn publication(device: &str, seq: u64, value: f64) -> Publication {
        Publication::new(
            Arc::new(DeviceInfo {
                id: device.into(),
                tags: Default::default(),
                ..Default::default()
            }),
            Telemetry {
                category: "env.t".into(),
                seq,
                readings: vec![Reading {
                    name: "t".into(),
                    value: Some(Value::Number(value)),
                    unit: String::new(),
                }],
                ..Default::default()
            },
            1000 + seq,
        )
    }

    fn decoded(batch: &Encoded) -> crate::proto::Batch {
        let e: Envelope =
            prost::Message::decode(batch.message(WireFormat::Protobuf).payload().clone()).unwrap();
        match e.body {
            Some(Body::Batch(b)) => b,
            other => panic!("not a batch: {other:?}"),
        }
    }

    #[test]
    fn a_batch_is_the_messages_back_to_back_as_prost_would_encode_it() {
        let s = Stream::new("env.t", Delivery::Batched { max_delay_ms: 20 }, None);
        let msgs: Vec<Arc<Encoded>> = (1..=3)
            .map(|n| publication("d", n, n as f64).message().clone())
            .collect();
        for m in &msgs {
            s.push("d", m);
        }
        let taken = s.take(Instant::now());
        let batches = s.batches(&taken.messages);
        assert_eq!(batches.len(), 1);
        let b = decoded(&batches[0]);
        assert_eq!(b.category, "env.t");
        assert!(!b.conflated);
        assert_eq!(
            b.telemetry.iter().map(|t| t.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(batches[0].carries(), 3);
        let expected = Envelope {
            body: Some(Body::Batch(b)),
        };
        assert_eq!(
            batches[0].message(WireFormat::Protobuf).payload().as_ref(),
            prost::Message::encode_to_vec(&expected)
        );
        assert!(s.take(Instant::now()).messages.is_empty(), "taken once");
    }

    #[test]
    fn a_busy_interval_is_chunked_and_each_drop_is_charged_per_sender() {
        let s = Stream::new("env.t", Delivery::Batched { max_delay_ms: 20 }, None);
        let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut msgs = Vec::new();
        for n in 0..4000 {
            let m = publication(if n % 2 == 0 { "a" } else { "b" }, n, 1.0)
                .message()
                .clone();
            m.charge_drops_to(if n % 2 == 0 { &a } else { &b });
            msgs.push(m);
        }
        let batches = s.batches(&msgs);
        assert!(batches.len() > 1);
        let mut seqs = Vec::new();
        for batch in &batches {
            assert!(batch.message(WireFormat::Protobuf).payload().len() <= BATCH_CHUNK_BYTES + 64);
            seqs.extend(decoded(batch).telemetry.iter().map(|t| t.seq));
        }
        assert_eq!(seqs, (0..4000).collect::<Vec<_>>());
        assert_eq!(batches[0].dropped(), batches[0].carries());
        let n = batches[0].carries();
        assert_eq!(a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed), n);
        assert_eq!(a.load(Ordering::Relaxed), n.div_ceil(2));
    }

    #[test]
    fn conflation_keeps_the_latest_per_series_and_skips_unchanged_readings() {
        let s = Stream::new("env.t", Delivery::Conflated { interval_ms: 500 }, None);
        assert!(s.push("a", publication("a", 1, 1.0).message()).is_some());
        assert!(s.push("b", publication("b", 2, 5.0).message()).is_none());
        s.push("a", publication("a", 3, 2.0).message());
        let taken = s.take(Instant::now());
        let b = decoded(&s.batches(&taken.messages)[0]);
        assert!(b.conflated);
        let got: Vec<(String, u64)> = b
            .telemetry
            .iter()
            .map(|t| (t.device_id.clone(), t.seq))
            .collect();
        assert_eq!(
            got,
            [("a".into(), 3), ("b".into(), 2)],
            "latest, first-spoke order"
        );
        assert_eq!(taken.conflated_away, 1, "a's first value was superseded");

        // a: same readings, new seq: not re-sent; b: changed.
        s.push("a", publication("a", 4, 2.0).message());
        s.push("b", publication("b", 5, 6.0).message());
        let taken = s.take(Instant::now());
        let got: Vec<u64> = taken
            .messages
            .iter()
            .flat_map(|m| match &m.envelope().body {
                Some(Body::Telemetry(t)) => Some(t.seq),
                _ => None,
            })
            .collect();
        assert_eq!(got, [5]);
        assert_eq!(taken.conflated_away, 1);

        // After a dashboard joins, one interval sends unchanged values too.
        s.lock().resend = true;
        s.push("a", publication("a", 6, 2.0).message());
        assert_eq!(s.take(Instant::now()).messages.len(), 1, "resent once");
        s.push("a", publication("a", 7, 2.0).message());
        assert!(
            s.take(Instant::now()).messages.is_empty(),
            "then unchanged again"
        );
        assert!(s.take(Instant::now()).messages.is_empty());
        assert!(s.idle());
    }

    #[test]
    fn conflation_forgets_devices_silent_for_ten_minutes() {
        let s = Stream::new("env.t", Delivery::Conflated { interval_ms: 500 }, None);
        let t0 = Instant::now();
        s.push("a", publication("a", 1, 1.0).message());
        s.push("b", publication("b", 2, 1.0).message());
        assert_eq!(s.take(t0).messages.len(), 2);
        // `b` keeps speaking, unchanged; `a` goes silent.
        for minute in 1..=6 {
            s.push("b", publication("b", 2 + minute, 1.0).message());
            assert!(s
                .take(t0 + Duration::from_secs(minute * 60))
                .messages
                .is_empty());
        }
        // Half the forget time has passed since the first flush: devices silent for
        // SENT_FORGET are dropped at the next flush after that, `a` is not yet.
        assert_eq!(s.sent.lock().unwrap().digests.len(), 2);
        s.push("b", publication("b", 20, 1.0).message());
        assert!(s
            .take(t0 + SENT_FORGET + Duration::from_secs(1))
            .messages
            .is_empty());
        let digests = &s.sent.lock().unwrap().digests;
        assert!(
            digests.contains_key("b") && !digests.contains_key("a"),
            "a forgotten"
        );

        // A device back after a silence longer than SENT_FORGET is sent even if
        // unchanged, whether or not its digest was pruned yet.
        let s = Stream::new("env.t", Delivery::Conflated { interval_ms: 500 }, None);
        s.push("a", publication("a", 1, 1.0).message());
        assert_eq!(s.take(t0).messages.len(), 1);
        s.push("a", publication("a", 2, 1.0).message());
        assert!(s.take(t0 + Duration::from_secs(60)).messages.is_empty());
        s.push("a", publication("a", 3, 1.0).message());
        let back = t0 + Duration::from_secs(60) + SENT_FORGET;
        assert_eq!(s.take(back).messages.len(), 1, "silent 10 min: resent");
    }

    #[test]
    fn streams_arm_once_per_interval_and_early_when_large() {
        let streams = Streams::default();
        let delivery = Delivery::Batched { max_delay_ms: 1000 };
        let start = Instant::now();
        for n in 0..3 {
            streams.append(
                "env.t",
                delivery,
                &None,
                "d",
                publication("d", n, 1.0).message(),
            );
        }
        let (due, next) = streams.due(start);
        assert!(due.is_empty());
        let next = next.expect("armed");
        assert!(next >= start + Duration::from_millis(1000));
        let (due, _) = streams.due(next);
        assert_eq!(due.len(), 1, "one timer for the interval");
        assert_eq!(due[0].take(Instant::now()).messages.len(), 3);

        // Past EARLY_FLUSH_BYTES a stream is due at once.
        let big = "x".repeat(60_000);
        for n in 0..5 {
            let p = Publication::new(
                Arc::new(DeviceInfo {
                    id: "d".into(),
                    tags: Default::default(),
                    ..Default::default()
                }),
                Telemetry {
                    category: "env.t".into(),
                    seq: n,
                    readings: vec![Reading {
                        name: big.clone(),
                        value: None,
                        unit: String::new(),
                    }],
                    ..Default::default()
                },
                1,
            );
            streams.append("env.t", delivery, &None, "d", p.message());
        }
        let (due, _) = streams.due(Instant::now());
        assert_eq!(due.len(), 1, "flushed before its interval ends");
        assert_eq!(due[0].take(Instant::now()).messages.len(), 5);
        assert_eq!(streams.len(), 1);
        streams.remove_if_idle(&due[0]);
        assert!(streams.is_empty(), "nothing pending: removed");
        // The interval's own timer still fires, on an empty stream.
        let (due, next) = streams.due(Instant::now() + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert!(due[0].take(Instant::now()).messages.is_empty());
        assert!(next.is_none());
    }
}
