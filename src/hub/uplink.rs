//! What the hub remembers of each device's confirmed telemetry (uplink
//! confirmations, see `ConfirmTelemetry` in the proto), so that resent messages are
//! recognised and published once.
//!
//! One [`Boot`] per device: the latest boot id it confirmed under, the highest seq
//! accepted from it, and the seqs the rate limiter refused below that, which the
//! device will resend. Sessions of the same device share it (an `Arc`), so a
//! takeover that overlaps the old connection for a moment still de-duplicates.
//!
//! Invariants:
//! - `through()` never passes a refused seq: a confirmation covers only messages
//!   that were accepted or can never be (invalid ones).
//! - A seq at or below `high` that is not a pending refusal is a duplicate.
//! - Seqs arrive in increasing order within a boot, except resends of refusals: a
//!   seq at or below `high` that is not awaited is a duplicate.
//! - At most [`MAX_REFUSED`] refusals are awaited per device: a refusal that would
//!   make one more is not recorded, and the session closes the connection (1008)
//!   instead, so nothing is ever confirmed that was not accepted, and a device
//!   that never resends cannot grow the state.
//! - Entries live while a session holds them and for `limits.confirm_window` after
//!   the last one let go; the table is swept at most once a minute, on an open.
//!
//! The table is memory only: a restart or another node forgets it (the proto says
//! what that means for devices).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// Refused seqs awaited per device, at most.
pub const MAX_REFUSED: usize = 256;

/// How often the table is swept of expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One device's confirmation state, for its latest boot.
#[derive(Debug)]
pub struct Boot {
    id: u64,
    /// Highest seq accepted (or settled as invalid) in this boot.
    high: u64,
    /// Seqs the rate limiter refused, at or below `high`, not yet accepted.
    refused: BTreeSet<u64>,
    /// When a session last let go of it (or opened it).
    touched: Instant,
}

/// What [`Boot::refuse`] did with a rate-limited seq.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Awaited from now on (or already was): list it for the device.
    Awaited,
    /// Accepted meanwhile (by another session of the device): nothing to await.
    Accepted,
    /// [`MAX_REFUSED`] are awaited already: not recorded; the connection must end.
    Full,
    /// The device's boot changed under this session: nothing recorded.
    Stale,
}

/// What to do with a message of a confirming session.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: check it, publish it and record the outcome.
    New,
    /// Already accepted: drop it and confirm it again.
    Duplicate,
    /// The device's boot changed under this session (a newer connection started a
    /// new boot): nothing can be told apart, so the message is treated as new and
    /// not recorded.
    Stale,
}

impl Boot {
    fn new(id: u64) -> Self {
        Self {
            id,
            high: 0,
            refused: BTreeSet::new(),
            touched: Instant::now(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Every seq at or below this was accepted or can never be.
    pub fn through(&self) -> u64 {
        match self.refused.first() {
            Some(&first) => first - 1,
            None => self.high,
        }
    }

    /// Whether `seq` of boot `boot` is new.
    pub fn judge(&self, boot: u64, seq: u64) -> Verdict {
        if boot != self.id {
            Verdict::Stale
        } else if seq <= self.high && !self.refused.contains(&seq) {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// `seq` was accepted and published, or refused as invalid (it never will be
    /// accepted, so confirmations pass over it).
    pub fn settle(&mut self, seq: u64) {
        self.refused.remove(&seq);
        self.high = self.high.max(seq);
    }

    /// The refused seqs still waited for, oldest first (at most `n`).
    pub fn awaited(&self, n: usize) -> Vec<u64> {
        self.refused.iter().take(n).copied().collect()
    }

    /// The rate limiter refused `seq` of boot `boot`: confirmations stop below it
    /// until it is resent and accepted.
    pub fn refuse(&mut self, boot: u64, seq: u64) -> Refusal {
        match self.judge(boot, seq) {
            Verdict::Stale => Refusal::Stale,
            Verdict::Duplicate => Refusal::Accepted,
            Verdict::New if self.refused.contains(&seq) => Refusal::Awaited,
            Verdict::New if self.refused.len() >= MAX_REFUSED => Refusal::Full,
            Verdict::New => {
                self.high = self.high.max(seq);
                self.refused.insert(seq);
                Refusal::Awaited
            }
        }
    }
}

/// Every device's [`Boot`].
#[derive(Default)]
pub struct Uplinks {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    boots: HashMap<Box<str>, Arc<Mutex<Boot>>>,
    last_sweep: Option<Instant>,
}

impl Uplinks {
    /// The state of `device`, now on boot `boot`: the device's known one if the id
    /// matches, else a fresh one that replaces it (a reboot restarts seq).
    pub fn open(&self, device: &str, boot: u64, window: Duration) -> Arc<Mutex<Boot>> {
        let mut table = lock(&self.table);
        let now = Instant::now();
        if table
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            table.last_sweep = Some(now);
            // Held by a session (a second reference), or let go within the window.
            table.boots.retain(|_, b| {
                Arc::strong_count(b) > 1 || now.duration_since(lock(b).touched) < window
            });
        }
        let entry = table
            .boots
            .entry(device.into())
            .or_insert_with(|| Arc::new(Mutex::new(Boot::new(boot))))
            .clone();
        drop(table);
        let mut state = lock(&entry);
        if state.id != boot {
            *state = Boot::new(boot);
        }
        state.touched = now;
        drop(state);
        entry
    }

    /// Devices remembered.
    pub fn len(&self) -> usize {
        lock(&self.table).boots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session lets go of its device's state: the window starts now.
pub fn release(boot: &Mutex<Boot>) {
    lock(boot).touched = Instant::now();
}

/// Locks `m`; the state stays consistent through a panic elsewhere (every update
/// is a few plain assignments), so a poisoned lock is used as is.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_stop_below_a_refusal_until_its_resend_is_accepted() {
        let mut b = Boot::new(7);
        for seq in 1..=3 {
            assert_eq!(b.judge(7, seq), Verdict::New);
            b.settle(seq);
        }
        assert_eq!(b.refuse(7, 4), Refusal::Awaited);
        b.settle(5);
        assert_eq!(b.through(), 3, "4 was refused: not confirmed");
        assert_eq!(b.judge(7, 5), Verdict::Duplicate);
        assert_eq!(
            b.judge(7, 4),
            Verdict::New,
            "the resend of a refusal is new"
        );
        b.settle(4);
        assert_eq!(b.through(), 5);
        assert_eq!(b.judge(7, 4), Verdict::Duplicate);
        assert_eq!(b.judge(7, 6), Verdict::New);
        assert_eq!(b.judge(8, 1), Verdict::Stale);
        assert_eq!(
            b.refuse(7, 4),
            Refusal::Accepted,
            "accepted by another session"
        );
        assert_eq!(b.through(), 5, "and not awaited again");
    }

    #[test]
    fn invalid_messages_are_passed_over_and_refusals_are_bounded() {
        let mut b = Boot::new(1);
        b.settle(1);
        b.settle(2); // say, refused as MALFORMED
        assert_eq!(b.through(), 2);
        let last = 2 + MAX_REFUSED as u64;
        for s in 3..=last {
            assert_eq!(b.refuse(1, s), Refusal::Awaited);
        }
        assert_eq!(b.refuse(1, last + 1), Refusal::Full);
        assert_eq!(b.refuse(1, 3), Refusal::Awaited, "awaited already");
        assert_eq!(b.through(), 2, "nothing given up");
        assert_eq!(
            b.judge(1, last + 1),
            Verdict::New,
            "not recorded: still new"
        );
        assert_eq!(b.awaited(2), [3, 4]);
    }

    #[test]
    fn a_new_boot_id_starts_afresh_and_the_same_one_resumes() {
        let u = Uplinks::default();
        let w = Duration::from_secs(3600);
        let a = u.open("d1", 10, w);
        lock(&a).settle(5);
        assert_eq!(lock(&u.open("d1", 10, w)).through(), 5);
        let b = u.open("d1", 11, w);
        assert!(Arc::ptr_eq(&a, &b), "one state per device, shared");
        assert_eq!(lock(&b).through(), 0);
        assert_eq!(lock(&a).judge(10, 6), Verdict::Stale);
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn entries_outlive_their_sessions_by_the_window_only() {
        let u = Uplinks::default();
        drop(u.open("gone", 1, Duration::ZERO));
        let held = u.open("held", 1, Duration::ZERO);
        lock(&u.table).last_sweep = None;
        drop(u.open("new", 1, Duration::ZERO));
        let mut left: Vec<_> = lock(&u.table).boots.keys().map(|k| k.to_string()).collect();
        left.sort();
        assert_eq!(left, ["held", "new"]);
        drop(held);
    }
}
