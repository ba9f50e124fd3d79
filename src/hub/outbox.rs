//! A dashboard's bounded outgoing queue.
//!
//! Producers (device sessions fanning out, the hub announcing presence) push
//! without ever waiting; the dashboard's session drains everything queued in one
//! go and writes it as one batch.
//!
//! Policy when the consumer is slow, by kind of message:
//! - Telemetry is droppable. When `capacity` messages are queued, or the queued
//!   telemetry would pass the outbox's byte bound, or the hub's [`Budget`] for all
//!   queued telemetry, the *oldest* queued telemetry is dropped to make room (charged
//!   to its sender, counted, and reported to the dashboard as a `Dropped` notice with
//!   the next batch); if nothing of this outbox can go, the new message is dropped.
//!   A queued message is accounted at what it will hold by the time it is written:
//!   its bytes and its frame (twice its encoded size) for protobuf dashboards, four
//!   times more for JSON ones (the text and its frame), plus [`ENTRY_COST`].
//! - The hub's budget is fair: an outbox holding less than its share of it (the
//!   budget over the number of outboxes) may queue even when stuck dashboards hold
//!   the rest, so they cannot starve the others; only outboxes above their share
//!   make room from their own oldest telemetry; an outbox holding no telemetry may
//!   always take one message. The total therefore stays within twice the budget
//!   plus one message per outbox (the budget, plus at most a share or one message
//!   for every outbox), and
//!   concurrent publishers may pass it by one message each: it is checked, then
//!   taken, without a lock across outboxes.
//! - *Latest-value* messages (presence per device, progress per notification) are
//!   never dropped but coalesced: at most one is pending per key, and a newer one
//!   replaces it in place, so the dashboard always ends with every key's latest
//!   state. Their number is bounded by the keys (devices, open notifications), so a
//!   whole fleet reconnecting at once, or a snapshot of 50,000 online devices, cannot
//!   overflow a dashboard.
//! - Other control messages are never dropped; they may exceed `capacity` by
//!   `control_headroom`, past which the outbox is marked overflowed and the session
//!   closes the connection (1008) instead of growing.
//! - A *reservation* keeps a place in the send order for messages that are built
//!   outside the hub's locks (a subscription's `History`): nothing queued after it
//!   is drained until it is filled, so what was queued later is sent later.
//!
//! Invariant: the mutex is held only for queue operations, never across `.await`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::Notify;

use super::{Encoded, WireFormat};

/// What a queued message costs besides its bytes (the queue entry, the `Arc`, the
/// message's header), so that a bound of tiny messages is still a real bound.
pub const ENTRY_COST: usize = 64;

/// What happened to a pushed telemetry message.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, after `evicted` older telemetry messages were dropped to make room.
    Queued { evicted: u64 },
    /// Not queued: no room even after `evicted` older ones were dropped (only
    /// control messages are queued, or the hub's budget is held by other outboxes).
    Dropped { evicted: u64 },
    /// The dashboard is gone; nothing was queued.
    Closed,
}

/// The bytes of telemetry queued in all the hub's outboxes, and their bound.
#[derive(Debug)]
pub struct Budget {
    queued: AtomicUsize,
    max: usize,
    /// Outboxes sharing it (for each one's fair share).
    outboxes: AtomicUsize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            queued: AtomicUsize::new(0),
            max,
            outboxes: AtomicUsize::new(0),
        })
    }

    /// What one outbox may hold whatever the others hold.
    fn share(&self) -> usize {
        self.max / self.outboxes.load(Ordering::Relaxed).max(1)
    }

    /// Bytes queued now, as accounted.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn fits(&self, cost: usize) -> bool {
        self.queued().saturating_add(cost) <= self.max
    }

    fn take(&self, cost: usize) {
        self.queued.fetch_add(cost, Ordering::Relaxed);
    }

    fn give(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// An outbox's bounds in bytes (see the module doc).
pub struct ByteLimits {
    /// Accounted bytes of telemetry this outbox may hold.
    pub max_bytes: usize,
    /// The dashboard's wire format (JSON messages are accounted larger).
    pub format: WireFormat,
    /// Shared by every outbox of the hub.
    pub budget: Arc<Budget>,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the draining session; a permit is stored when it is not waiting, so a
    /// push between its last drain and its next wait is never missed.
    ready: Notify,
    capacity: usize,
    control_headroom: usize,
    /// Accounted bytes this outbox's telemetry may hold.
    max_bytes: usize,
    /// Accounted bytes per encoded byte (see the module doc).
    per_byte: usize,
    budget: Option<Arc<Budget>>,
}

/// One place in the send order.
enum Item {
    /// A message, and for telemetry (droppable) its accounted cost.
    Message(Arc<Encoded>, Option<usize>),
    /// The latest message for this key, held in `State::latest`.
    Latest(String),
    /// A place kept by [`Outbox::reserve`], not filled yet.
    Reserved(u64),
}

/// A place in an outbox's send order, to be filled with [`Outbox::fill`].
#[must_use = "an unfilled reservation holds back everything queued after it"]
pub struct Reservation(u64);

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    /// `Item::Message`s in `queue` (what `capacity` and the headroom count).
    messages: usize,
    /// Accounted bytes of the queued telemetry.
    bytes: usize,
    /// The pending message of every `Item::Latest` key in `queue`.
    latest: HashMap<String, Arc<Encoded>>,
    /// Telemetry messages dropped since the last drain.
    dropped: u64,
    dropped_total: u64,
    overflowed: bool,
    closed: bool,
    next_reservation: u64,
}

/// What one [`Outbox::drain`] took.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Telemetry dropped since the previous drain (0: none).
    pub dropped: u64,
    pub dropped_total: u64,
    /// Control messages exceeded their headroom: the consumer must be disconnected.
    pub overflowed: bool,
}

impl Outbox {
    /// An outbox bounded in messages only.
    pub fn new(capacity: usize, control_headroom: usize) -> Self {
        Self::with(capacity, control_headroom, usize::MAX, 2, None)
    }

    /// An outbox bounded in messages and in bytes.
    pub fn bounded(capacity: usize, control_headroom: usize, bytes: ByteLimits) -> Self {
        let per_byte = match bytes.format {
            WireFormat::Protobuf => 2,
            WireFormat::Json => 8,
        };
        Self::with(
            capacity,
            control_headroom,
            bytes.max_bytes,
            per_byte,
            Some(bytes.budget),
        )
    }

    fn with(
        capacity: usize,
        control_headroom: usize,
        max_bytes: usize,
        per_byte: usize,
        budget: Option<Arc<Budget>>,
    ) -> Self {
        if let Some(b) = &budget {
            b.outboxes.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
            control_headroom,
            max_bytes,
            per_byte,
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every operation is a single VecDeque call), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a telemetry message is accounted at in this outbox.
    fn cost(&self, msg: &Encoded) -> usize {
        msg.message(WireFormat::Protobuf)
            .payload()
            .len()
            .saturating_mul(self.per_byte)
            .saturating_add(ENTRY_COST)
    }

    /// Whether `cost` more bytes fit this outbox's bounds.
    fn fits(&self, st: &State, cost: usize) -> bool {
        let bytes = st.bytes.saturating_add(cost);
        // An outbox holding no telemetry may always take one message within its
        // own bound, however many outboxes share the budget: a batch (up to 60 KiB,
        // accounted at 2 or 8 times that) can be larger than a share when there are
        // thousands of dashboards, and a healthy one must not be starved by stuck
        // ones.
        st.messages < self.capacity
            && bytes <= self.max_bytes
            && self
                .budget
                .as_ref()
                .is_none_or(|b| st.bytes == 0 || bytes <= b.share() || b.fits(cost))
    }

    /// Queues telemetry, dropping the oldest queued telemetry while it does not
    /// fit (see the module doc).
    pub fn push_telemetry(&self, msg: Arc<Encoded>) -> Pushed {
        let cost = self.cost(&msg);
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let mut evicted = 0;
        while !self.fits(&st, cost) {
            // The oldest droppable entry is almost always at the front.
            let Some(i) = st
                .queue
                .iter()
                .position(|item| matches!(item, Item::Message(_, Some(_))))
            else {
                break;
            };
            if let Some(Item::Message(old, Some(old_cost))) = st.queue.remove(i) {
                st.messages -= 1;
                st.bytes -= old_cost;
                if let Some(b) = &self.budget {
                    b.give(old_cost);
                }
                evicted += old.dropped();
            }
        }
        st.dropped += evicted;
        st.dropped_total += evicted;
        if !self.fits(&st, cost) {
            let n = msg.dropped();
            st.dropped += n;
            st.dropped_total += n;
            return Pushed::Dropped { evicted };
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Item::Message(msg, Some(cost)));
        st.messages += 1;
        st.bytes += cost;
        if let Some(b) = &self.budget {
            b.take(cost);
        }
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued { evicted }
    }

    /// Queues the latest state for `key` (never dropped): replaces a message for the
    /// same key that is still queued, keeping its place. Returns false when closed.
    pub fn push_latest(&self, key: &str, msg: Arc<Encoded>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if let Some(pending) = st.latest.get_mut(key) {
            *pending = msg;
            return true;
        }
        let was_empty = st.queue.is_empty();
        st.latest.insert(key.to_owned(), msg);
        st.queue.push_back(Item::Latest(key.to_owned()));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Queues a control message (never dropped). Returns false when the outbox
    /// overflowed or is closed.
    pub fn push_control(&self, msg: Arc<Encoded>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if st.messages >= self.capacity + self.control_headroom {
            st.overflowed = true;
            drop(st);
            self.ready.notify_one();
            return false;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Item::Message(msg, None));
        st.messages += 1;
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Keeps the current end of the queue for messages that are not built yet.
    pub fn reserve(&self) -> Reservation {
        let mut st = self.lock();
        st.next_reservation += 1;
        let id = st.next_reservation;
        if !st.closed {
            st.queue.push_back(Item::Reserved(id));
        }
        Reservation(id)
    }

    /// Puts `msgs` (control messages, never dropped) in the reserved place and
    /// releases what was queued after it.
    pub fn fill(&self, reservation: Reservation, msgs: Vec<Arc<Encoded>>) {
        let mut st = self.lock();
        let Some(at) = st
            .queue
            .iter()
            .position(|item| matches!(item, Item::Reserved(id) if *id == reservation.0))
        else {
            return; // closed meanwhile
        };
        st.messages += msgs.len();
        st.queue.remove(at);
        for (i, m) in msgs.into_iter().enumerate() {
            st.queue.insert(at + i, Item::Message(m, None));
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Moves everything queued, up to the first unfilled reservation, into `out`
    /// (which is cleared first).
    pub fn drain(&self, out: &mut Vec<Arc<Encoded>>) -> Drained {
        out.clear();
        let mut st = self.lock();
        let State {
            queue,
            latest,
            messages,
            bytes,
            ..
        } = &mut *st;
        let before = *bytes;
        while let Some(item) = queue.front() {
            if matches!(item, Item::Reserved(_)) {
                break;
            }
            match queue.pop_front() {
                Some(Item::Message(m, cost)) => {
                    *messages = messages.saturating_sub(1);
                    *bytes -= cost.unwrap_or(0);
                    out.push(m);
                }
                Some(Item::Latest(key)) => out.extend(latest.remove(&key)),
                _ => {}
            }
        }
        if let Some(b) = &self.budget {
            b.give(before - st.bytes);
        }
        Drained {
            dropped: std::mem::take(&mut st.dropped),
            dropped_total: st.dropped_total,
            overflowed: st.overflowed,
        }
    }

    /// Resolves when something may be queued. Cancel-safe.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Refuses further pushes and frees what is queued.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.queue.clear();
        st.latest.clear();
        st.messages = 0;
        if let Some(b) = &self.budget {
            b.give(std::mem::take(&mut st.bytes));
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // `close` gives the bytes back; an outbox dropped without it does here.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &self.budget {
            b.give(std::mem::take(&mut st.bytes));
            b.outboxes.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{envelope::Body, Dropped, Envelope};

    fn msg(n: u64) -> Arc<Encoded> {
        Encoded::new(Envelope {
            body: Some(Body::Dropped(Dropped { count: n, total: n })),
        })
    }

    fn count_of(m: &Encoded) -> u64 {
        match &m.envelope().body {
            Some(Body::Dropped(d)) => d.count,
            _ => unreachable!(),
        }
    }

    #[test]
    fn drops_oldest_telemetry_and_keeps_control() {
        let ob = Outbox::new(3, 2);
        assert!(ob.push_control(msg(100)));
        for n in 0..5 {
            ob.push_telemetry(msg(n));
        }
        let mut out = Vec::new();
        let d = ob.drain(&mut out);
        assert_eq!(d.dropped, 3);
        let got: Vec<u64> = out.iter().map(|m| count_of(m)).collect();
        assert_eq!(got, [100, 3, 4]);
        assert_eq!(ob.drain(&mut out).dropped, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn latest_values_coalesce_in_place_and_never_overflow() {
        let ob = Outbox::new(2, 1);
        assert!(ob.push_latest("dev-a", msg(1)));
        ob.push_telemetry(msg(10));
        assert!(ob.push_latest("dev-b", msg(2)));
        assert!(
            ob.push_latest("dev-a", msg(3)),
            "replaces dev-a's pending state"
        );
        // Far more keys than capacity + headroom: all kept, none overflows.
        for n in 0..100 {
            assert!(ob.push_latest(&format!("k{n}"), msg(100 + n)));
        }
        assert!(ob.push_control(msg(7)));
        let mut out = Vec::new();
        let d = ob.drain(&mut out);
        assert!(!d.overflowed);
        let got: Vec<u64> = out.iter().map(|m| count_of(m)).collect();
        assert_eq!(&got[..3], [3, 10, 2], "dev-a's latest, in dev-a's place");
        assert_eq!(got.len(), 3 + 100 + 1);
        // After a drain a key queues afresh.
        assert!(ob.push_latest("dev-a", msg(4)));
        ob.drain(&mut out);
        assert_eq!(out.len(), 1);
        ob.close();
        assert!(!ob.push_latest("dev-a", msg(5)));
    }

    #[test]
    fn a_reservation_holds_back_what_was_queued_after_it() {
        let ob = Outbox::new(4, 4);
        ob.push_telemetry(msg(1));
        let r = ob.reserve();
        ob.push_telemetry(msg(3));
        assert!(ob.push_latest("k", msg(4)));
        let mut out = Vec::new();
        ob.drain(&mut out);
        let got: Vec<u64> = out.iter().map(|m| count_of(m)).collect();
        assert_eq!(got, [1], "nothing after the reservation yet");
        ob.fill(r, vec![msg(2), msg(21)]);
        ob.drain(&mut out);
        let got: Vec<u64> = out.iter().map(|m| count_of(m)).collect();
        assert_eq!(got, [2, 21, 3, 4]);
        // A reservation on a closed outbox is simply forgotten.
        ob.close();
        let r = ob.reserve();
        ob.fill(r, vec![msg(5)]);
        ob.drain(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn control_overflow_is_reported_not_grown() {
        let ob = Outbox::new(1, 1);
        assert!(ob.push_control(msg(1)));
        assert!(ob.push_control(msg(2)));
        assert!(!ob.push_control(msg(3)));
        let mut out = Vec::new();
        assert!(ob.drain(&mut out).overflowed);
        assert_eq!(out.len(), 2);
        ob.close();
        assert!(matches!(ob.push_telemetry(msg(4)), Pushed::Closed));
    }

    /// A telemetry-sized message: `Dropped` with an `n`-byte-ish count, so its
    /// encoded size is fixed per test.
    fn sized(n: u64) -> (Arc<Encoded>, usize) {
        let m = msg(n);
        let len = m.message(WireFormat::Protobuf).payload().len();
        (m, len)
    }

    fn bounded(max_bytes: usize, format: WireFormat, budget: &Arc<Budget>) -> Outbox {
        Outbox::bounded(
            100,
            10,
            ByteLimits {
                max_bytes,
                format,
                budget: budget.clone(),
            },
        )
    }

    #[test]
    fn telemetry_is_bounded_in_bytes_and_drops_are_charged_to_the_sender() {
        let (_, len) = sized(1);
        let cost = 2 * len + ENTRY_COST;
        let budget = Budget::new(usize::MAX);
        let ob = bounded(2 * cost, WireFormat::Protobuf, &budget);
        let sender = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let msgs: Vec<Arc<Encoded>> = (1..=3).map(|n| sized(n).0).collect();
        for m in &msgs {
            m.charge_drops_to(&sender);
        }
        assert_eq!(
            ob.push_telemetry(msgs[0].clone()),
            Pushed::Queued { evicted: 0 }
        );
        assert_eq!(
            ob.push_telemetry(msgs[1].clone()),
            Pushed::Queued { evicted: 0 }
        );
        assert_eq!(budget.queued(), 2 * cost);
        assert_eq!(
            ob.push_telemetry(msgs[2].clone()),
            Pushed::Queued { evicted: 1 }
        );
        assert_eq!(sender.load(Ordering::Relaxed), 1, "charged to its sender");
        assert_eq!(budget.queued(), 2 * cost);
        let mut out = Vec::new();
        let d = ob.drain(&mut out);
        assert_eq!(d.dropped, 1);
        assert_eq!(out.iter().map(|m| count_of(m)).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(budget.queued(), 0, "drained bytes are given back");

        // A JSON dashboard's messages are accounted four times larger: one fits.
        let json = bounded(2 * cost, WireFormat::Json, &budget);
        assert_eq!(json.push_telemetry(msg(1)), Pushed::Queued { evicted: 0 });
        assert_eq!(json.push_telemetry(msg(2)), Pushed::Queued { evicted: 1 });
        assert_eq!(budget.queued(), 8 * len + ENTRY_COST);
        drop(json);
        assert_eq!(budget.queued(), 0, "a dropped outbox gives its bytes back");
    }

    #[test]
    fn the_hubs_budget_bounds_every_outbox_together_and_fairly() {
        let (_, len) = sized(1);
        let cost = 2 * len + ENTRY_COST;
        // Two outboxes: a share of 2 messages each, a budget of 4.
        let budget = Budget::new(4 * cost);
        let stuck = bounded(usize::MAX, WireFormat::Protobuf, &budget);
        let other = bounded(usize::MAX, WireFormat::Protobuf, &budget);
        for n in 1..=4 {
            assert_eq!(stuck.push_telemetry(msg(n)), Pushed::Queued { evicted: 0 });
        }
        assert_eq!(budget.queued(), 4 * cost, "the budget is spent");
        // Above its share, the stuck outbox makes room from its own oldest.
        assert_eq!(stuck.push_telemetry(msg(5)), Pushed::Queued { evicted: 1 });
        // Below its share, the other still queues: the stuck one cannot starve it.
        for n in 11..=12 {
            assert_eq!(other.push_telemetry(msg(n)), Pushed::Queued { evicted: 0 });
        }
        assert_eq!(budget.queued(), 6 * cost, "within twice the budget");
        // Past its share with the budget spent, it makes room from its own.
        assert_eq!(other.push_telemetry(msg(13)), Pushed::Queued { evicted: 1 });
        // The stuck one, far above its share, gives back until the budget fits.
        assert_eq!(stuck.push_telemetry(msg(6)), Pushed::Queued { evicted: 3 });
        assert_eq!(budget.queued(), 4 * cost);
        // A message larger than a share (a batch among thousands of dashboards)
        // still reaches an outbox holding no telemetry while the budget is spent.
        let third = bounded(usize::MAX, WireFormat::Protobuf, &budget);
        let big = Encoded::new(Envelope {
            body: Some(Body::Dropped(Dropped {
                count: u64::MAX,
                total: u64::MAX,
            })),
        });
        let share = 4 * cost / 3;
        assert!(2 * big.message(WireFormat::Protobuf).payload().len() + ENTRY_COST > share);
        assert!(!budget.fits(cost), "the budget is spent");
        assert_eq!(
            third.push_telemetry(big.clone()),
            Pushed::Queued { evicted: 0 }
        );
        assert_eq!(
            third.push_telemetry(big),
            Pushed::Queued { evicted: 1 },
            "one at a time: the newer replaces it"
        );
        drop(third);
        stuck.close();
        let mut out = Vec::new();
        assert_eq!(other.drain(&mut out).dropped, 1);
        let got: Vec<u64> = out.iter().map(|m| count_of(m)).collect();
        assert_eq!(got, [12, 13]);
        assert_eq!(budget.queued(), 0);
    }
}
