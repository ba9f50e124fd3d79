//! Uplink confirmations on one device connection (`ConfirmTelemetry` in the
//! proto): which telemetry the hub accepted, sent back cumulatively.
//!
//! The session asks [`Confirmations::judge`] after the rate limiter (a flood of
//! resends is a flood like any other: refused, and closed past
//! `rate.abuse_seconds`), so a resend of an accepted message costs a rate token but
//! no publication, and records each outcome (accepted, invalid, rate-limited) in
//! the device's shared [`Boot`](crate::hub::uplink::Boot). A `TelemetryConfirmed` goes out when
//! [`BATCH`] messages are unconfirmed or [`DELAY`] after the oldest of them,
//! whichever comes first: one small envelope per 32 messages under load, and a
//! sensor that sends one reading a minute hears back within 100 ms.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::Device;
use crate::{
    hub::uplink::{self, Boot, Refusal, Verdict},
    proto::{envelope::Body, error::Code, ConfirmTelemetry, Envelope, TelemetryConfirmed},
    session::{
        close,
        reply::{self, Reply},
    },
};

/// Unconfirmed messages that make a confirmation due at once.
pub const BATCH: u32 = 32;
/// How long the oldest unconfirmed message waits for its confirmation at most.
pub const DELAY: Duration = Duration::from_millis(100);
/// Rate-limited seqs listed in one confirmation (as the proto promises).
const MAX_LISTED: usize = 256;

/// A confirming connection's state.
pub struct Confirmations {
    boot: Arc<Mutex<Boot>>,
    boot_id: u64,
    /// Messages judged since the last confirmation.
    unsent: u32,
    /// When the next confirmation is due (set while `unsent > 0`).
    due: Option<Instant>,
    rate_limited: Vec<u64>,
    retry_after_ms: u32,
}

impl Confirmations {
    /// What to do with telemetry `seq`.
    pub fn judge(&self, seq: u64) -> Verdict {
        uplink::lock(&self.boot).judge(self.boot_id, seq)
    }

    /// `seq` was accepted, or refused as invalid: either way it is settled.
    pub fn settle(&mut self, seq: u64) {
        {
            let mut boot = uplink::lock(&self.boot);
            if boot.id() == self.boot_id {
                boot.settle(seq);
            }
        }
        self.count();
    }

    /// A duplicate: nothing changes but the device must hear back.
    pub fn duplicate(&mut self) {
        self.count();
    }

    /// The rate limiter refused `seq`: listed in the next confirmation if it is
    /// awaited from now on. [`Refusal::Full`]: the connection must end.
    pub fn rate_limited(&mut self, seq: u64, retry_after_ms: u32) -> Refusal {
        let refusal = uplink::lock(&self.boot).refuse(self.boot_id, seq);
        if refusal == Refusal::Awaited {
            if self.rate_limited.len() < MAX_LISTED {
                self.rate_limited.push(seq);
            }
            self.retry_after_ms = self.retry_after_ms.max(retry_after_ms);
        }
        self.count();
        refusal
    }

    fn count(&mut self) {
        self.unsent += 1;
        if self.due.is_none() {
            self.due = Some(Instant::now() + DELAY);
        }
        if self.unsent >= BATCH || self.rate_limited.len() >= MAX_LISTED {
            self.due = Some(Instant::now());
        }
    }

    /// When the next confirmation is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether a confirmation should go out before the next message is read.
    pub fn due_now(&self) -> bool {
        self.due.is_some_and(|d| d <= Instant::now())
    }

    /// The confirmation to send now; resets the cadence.
    pub fn take(&mut self) -> Envelope {
        self.unsent = 0;
        self.due = None;
        let through_seq = {
            let boot = uplink::lock(&self.boot);
            if boot.id() == self.boot_id {
                boot.through()
            } else {
                0
            }
        };
        Envelope {
            body: Some(Body::TelemetryConfirmed(TelemetryConfirmed {
                boot_id: self.boot_id,
                through_seq,
                rate_limited: std::mem::take(&mut self.rate_limited),
                retry_after_ms: std::mem::take(&mut self.retry_after_ms),
            })),
        }
    }
}

impl Drop for Confirmations {
    fn drop(&mut self) {
        uplink::release(&self.boot);
    }
}

impl Device {
    /// The device asks for confirmations under `boot_id`: answered at once with
    /// what the hub already has of that boot.
    pub(super) fn on_confirm(&mut self, c: ConfirmTelemetry) -> Reply {
        if c.boot_id == 0 {
            return reply::Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "ConfirmTelemetry needs a non-zero boot_id",
            )
            .into();
        }
        // Another boot on a live connection would leave this one's last messages
        // unconfirmed, or turn back a newer session's state: one boot per
        // connection.
        if self
            .confirm
            .as_ref()
            .is_some_and(|k| k.boot_id != c.boot_id)
        {
            return reply::Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "a connection confirms under one boot_id: reconnect to start another",
            )
            .into();
        }
        let window = self.app.config.limits.confirm_window;
        let boot = self
            .app
            .uplinks
            .open(&self.session.info.id, c.boot_id, window);
        // A device that reconnects learns which refused seqs the hub still awaits
        // (confirmations stay below the first of them until it arrives).
        let awaited = uplink::lock(&boot).awaited(MAX_LISTED);
        let mut confirmations = Confirmations {
            boot,
            boot_id: c.boot_id,
            unsent: 0,
            due: None,
            rate_limited: awaited,
            retry_after_ms: 0,
        };
        let reply = confirmations.take();
        self.confirm = Some(Box::new(confirmations));
        self.app.metrics.confirmations.inc();
        Reply::send(reply)
    }
}
