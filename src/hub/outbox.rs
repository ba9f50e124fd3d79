//! A dashboard's bounded outgoing queue.
//!
//! Producers (device sessions fanning out, the hub announcing presence) push
//! without ever waiting; the dashboard's session drains everything queued in one
//! go and writes it as one batch.
//!
//! Policy when the consumer is slow, by kind of message:
//! - Telemetry is droppable. When `capacity` messages are queued, the *oldest*
//!   queued telemetry is dropped to make room (counted, and reported to the dashboard
//!   as a `Dropped` notice with the next batch).
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
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use super::Encoded;

/// What happened to a pushed telemetry message.
pub enum Pushed {
    Queued,
    /// Queued, and the oldest telemetry (this one) was dropped to make room; or,
    /// when only control messages are queued, the new message itself was dropped.
    DroppedOldest(Arc<Encoded>),
    /// The dashboard is gone; nothing was queued.
    Closed,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the draining session; a permit is stored when it is not waiting, so a
    /// push between its last drain and its next wait is never missed.
    ready: Notify,
    capacity: usize,
    control_headroom: usize,
}

/// One place in the send order.
enum Item {
    /// A message, and whether it may be dropped (telemetry).
    Message(Arc<Encoded>, bool),
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
    pub fn new(capacity: usize, control_headroom: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
            control_headroom,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every operation is a single VecDeque call), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues telemetry, dropping the oldest queued telemetry when full.
    pub fn push_telemetry(&self, msg: Arc<Encoded>) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let mut result = Pushed::Queued;
        if st.messages >= self.capacity {
            // The oldest droppable entry is almost always at the front.
            if let Some(i) = st
                .queue
                .iter()
                .position(|item| matches!(item, Item::Message(_, true)))
            {
                let evicted = st.queue.remove(i);
                st.messages -= 1;
                st.dropped += 1;
                st.dropped_total += 1;
                if let Some(Item::Message(old, _)) = evicted {
                    result = Pushed::DroppedOldest(old);
                }
            } else {
                // Only control messages are queued: drop the new telemetry instead.
                st.dropped += 1;
                st.dropped_total += 1;
                return Pushed::DroppedOldest(msg);
            }
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Item::Message(msg, true));
        st.messages += 1;
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        result
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
        st.queue.push_back(Item::Message(msg, false));
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
            st.queue.insert(at + i, Item::Message(m, false));
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
            ..
        } = &mut *st;
        while let Some(item) = queue.front() {
            if matches!(item, Item::Reserved(_)) {
                break;
            }
            match queue.pop_front() {
                Some(Item::Message(m, _)) => {
                    *messages = messages.saturating_sub(1);
                    out.push(m);
                }
                Some(Item::Latest(key)) => out.extend(latest.remove(&key)),
                _ => {}
            }
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
}
