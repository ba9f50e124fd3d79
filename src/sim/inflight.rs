//! Telemetry a simulated device sent and the hub has not confirmed yet (uplink
//! confirmations, `ConfirmTelemetry` in the proto), kept to be sent again.
//!
//! A message leaves the backlog when first sent and waits here, in seq order,
//! until a `TelemetryConfirmed` covers it. After a reconnect the hub's first
//! confirmation says where to resume: what it covers is dropped and the rest is
//! sent again, oldest first, before anything new. Seqs the rate limiter refused
//! are sent again once `retry_after_ms` has passed. Bounded: while `cap` messages
//! wait, nothing new is sent.

use std::collections::{BTreeSet, VecDeque};

use tokio::time::{Duration, Instant};

use crate::proto::Telemetry;

pub(crate) struct Inflight {
    /// Sent and unconfirmed, by increasing seq.
    sent: VecDeque<Telemetry>,
    /// Index in `sent` of the next message to send again after a reconnect.
    resend_from: usize,
    /// Seqs refused by the rate limiter, to send again at `retry_at`.
    refused: BTreeSet<u64>,
    retry_at: Option<Instant>,
    cap: usize,
}

/// What to send next, and whether it is a resend.
pub(crate) enum Next<'a> {
    Resend(&'a Telemetry),
    /// Nothing to send again now; new messages may go if there is room.
    New,
    /// Wait: too many unconfirmed, or refusals not yet due (until then).
    Wait(Option<Instant>),
}

impl Inflight {
    pub fn new(cap: usize) -> Self {
        Self {
            sent: VecDeque::new(),
            resend_from: 0,
            refused: BTreeSet::new(),
            retry_at: None,
            cap: cap.max(1),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// A new connection: everything unconfirmed will be sent again once the hub's
    /// first confirmation (see [`confirm`](Self::confirm)) dropped what it has.
    pub fn reconnected(&mut self) {
        self.resend_from = 0;
        self.refused.clear();
        self.retry_at = None;
    }

    /// A first send of `t`.
    pub fn push(&mut self, t: Telemetry) {
        self.sent.push_back(t);
        self.resend_from = self.sent.len();
    }

    /// Drops everything through `seq`; returns how many.
    pub fn confirm(&mut self, through: u64) -> usize {
        let n = self.sent.iter().take_while(|t| t.seq <= through).count();
        self.sent.drain(..n);
        self.resend_from = self.resend_from.saturating_sub(n);
        self.refused.retain(|&s| s > through);
        n
    }

    /// The hub refused `seqs` and will accept them after `retry_after`. Only those
    /// still held and already sent since the reconnect count: the unsent tail goes
    /// out anyway, and a seq no longer held cannot be sent again.
    pub fn rate_limited(&mut self, seqs: &[u64], retry_after: Duration, now: Instant) {
        let sent = &self.sent;
        let resend_from = self.resend_from;
        self.refused.extend(seqs.iter().filter(|&&s| {
            sent.binary_search_by_key(&s, |t| t.seq)
                .is_ok_and(|i| i < resend_from)
        }));
        let at = now + retry_after;
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.max(at)));
    }

    /// What to send next.
    pub fn next(&self, now: Instant) -> Next<'_> {
        if let Some(t) = self.sent.get(self.resend_from) {
            return Next::Resend(t);
        }
        if let Some(&seq) = self.refused.first() {
            if self.retry_at.is_none_or(|at| at <= now) {
                if let Ok(i) = self.sent.binary_search_by_key(&seq, |t| t.seq) {
                    return Next::Resend(&self.sent[i]);
                }
            } else {
                return Next::Wait(self.retry_at);
            }
        }
        if self.sent.len() >= self.cap {
            Next::Wait(None)
        } else {
            Next::New
        }
    }

    /// The resend [`next`](Self::next) returned went out.
    pub fn resent(&mut self, seq: u64) {
        if self
            .sent
            .get(self.resend_from)
            .is_some_and(|t| t.seq == seq)
        {
            self.resend_from += 1;
        } else {
            self.refused.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seq: u64) -> Telemetry {
        Telemetry {
            seq,
            ..Default::default()
        }
    }

    fn next_seq(i: &Inflight, now: Instant) -> Option<u64> {
        match i.next(now) {
            Next::Resend(t) => Some(t.seq),
            _ => None,
        }
    }

    #[test]
    fn a_reconnect_resends_exactly_the_unconfirmed_tail() {
        let now = Instant::now();
        let mut i = Inflight::new(100);
        for s in 1..=5 {
            assert!(matches!(i.next(now), Next::New));
            i.push(t(s));
        }
        assert_eq!(i.confirm(2), 2);
        i.reconnected();
        assert_eq!(i.confirm(3), 1, "the hub had 3");
        // Listed as awaited, but still in the unsent tail: sent once, with the tail.
        i.rate_limited(&[4], Duration::ZERO, now);
        for s in 4..=5 {
            assert_eq!(next_seq(&i, now), Some(s));
            i.resent(s);
        }
        assert!(matches!(i.next(now), Next::New));
        assert_eq!(i.len(), 2);
        assert_eq!(i.confirm(u64::MAX), 2, "a hub's largest seq");
    }

    #[test]
    fn refusals_wait_for_their_retry_and_a_full_window_stops_new_sends() {
        let now = Instant::now();
        let mut i = Inflight::new(3);
        for s in 1..=3 {
            i.push(t(s));
        }
        assert!(matches!(i.next(now), Next::Wait(None)), "full");
        i.rate_limited(&[2, 3, 9], Duration::from_millis(100), now);
        assert!(matches!(i.next(now), Next::Wait(Some(_))));
        let later = now + Duration::from_millis(100);
        assert_eq!(next_seq(&i, later), Some(2));
        i.resent(2);
        assert_eq!(next_seq(&i, later), Some(3));
        i.resent(3);
        assert!(
            matches!(i.next(later), Next::Wait(None)),
            "9 was never held"
        );
        assert_eq!(i.confirm(3), 3);
        assert!(matches!(i.next(later), Next::New));
    }
}
