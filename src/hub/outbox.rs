//! A dashboard's bounded outgoing queue.
//!
//! Producers (device sessions fanning out, the hub announcing presence) push
//! without ever waiting; the dashboard's session drains everything queued in one
//! go and writes it as one batch.
//!
//! Policy when the consumer is slow: telemetry is droppable. When `capacity`
//! messages are queued, the *oldest* queued telemetry is dropped to make room
//! (counted, and reported to the dashboard as a `Dropped` notice with the next
//! batch). Control messages (presence, errors, confirmations) are never dropped;
//! they may exceed `capacity` by `control_headroom`, past which the outbox is marked
//! overflowed and the session closes the connection (1008) instead of growing.
//!
//! Invariant: the mutex is held only for queue operations, never across `.await`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use super::Encoded;

/// What happened to a pushed telemetry message.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the oldest telemetry was dropped to make room.
    DroppedOldest,
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

#[derive(Default)]
struct State {
    /// `(message, droppable)` in send order.
    queue: VecDeque<(Arc<Encoded>, bool)>,
    /// Telemetry messages dropped since the last drain.
    dropped: u64,
    dropped_total: u64,
    overflowed: bool,
    closed: bool,
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
        if st.queue.len() >= self.capacity {
            // The oldest droppable entry is almost always at the front.
            if let Some(i) = st.queue.iter().position(|(_, droppable)| *droppable) {
                st.queue.remove(i);
                st.dropped += 1;
                st.dropped_total += 1;
                result = Pushed::DroppedOldest;
            } else {
                // Only control messages are queued: drop the new telemetry instead.
                st.dropped += 1;
                st.dropped_total += 1;
                return Pushed::DroppedOldest;
            }
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back((msg, true));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        result
    }

    /// Queues a control message (never dropped). Returns false when the outbox
    /// overflowed or is closed.
    pub fn push_control(&self, msg: Arc<Encoded>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if st.queue.len() >= self.capacity + self.control_headroom {
            st.overflowed = true;
            drop(st);
            self.ready.notify_one();
            return false;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back((msg, false));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves everything queued into `out` (which is cleared first).
    pub fn drain(&self, out: &mut Vec<Arc<Encoded>>) -> Drained {
        out.clear();
        let mut st = self.lock();
        out.extend(st.queue.drain(..).map(|(m, _)| m));
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
    fn control_overflow_is_reported_not_grown() {
        let ob = Outbox::new(1, 1);
        assert!(ob.push_control(msg(1)));
        assert!(ob.push_control(msg(2)));
        assert!(!ob.push_control(msg(3)));
        let mut out = Vec::new();
        assert!(ob.drain(&mut out).overflowed);
        assert_eq!(out.len(), 2);
        ob.close();
        assert_eq!(ob.push_telemetry(msg(4)), Pushed::Closed);
    }
}
