//! Fleet-wide counters, shared by every device task and read by progress displays.
//! Plain relaxed atomics: each is an independent tally, nothing orders them.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use serde::Serialize;

/// Live counters of a running fleet. Cheap to update from many tasks at once.
#[derive(Debug)]
pub struct FleetStats {
    /// When the fleet started (for rates in [`Summary`]).
    started: Instant,
    /// Telemetry messages written to the hub (first sends; resends are `resent`).
    pub sent: AtomicU64,
    /// Of those, confirmed by the hub (uplink confirmations).
    pub confirmed: AtomicU64,
    /// Sent and not confirmed yet (a gauge); after the fleet stopped: never confirmed.
    pub unconfirmed: AtomicU64,
    /// Messages sent again: unconfirmed when a connection ended, or rate-limited.
    pub resent: AtomicU64,
    /// `RATE_LIMITED` errors received (the hub sends at most one per second per device).
    pub rate_limited: AtomicU64,
    /// Connection attempts after a device's first one.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and sessions that ended in an error.
    pub errors: AtomicU64,
    /// Of `errors`: upgrades refused with HTTP 401 or 403 (bad, expired or wrong-role token).
    pub auth_failures: AtomicU64,
    /// `Error` envelopes other than `RATE_LIMITED` received from the hub.
    pub server_errors: AtomicU64,
    /// Messages waiting in device backlogs (a gauge). After the fleet stopped: the
    /// messages generated but never sent.
    pub buffered: AtomicU64,
    /// Messages dropped because a backlog was full (oldest first).
    pub dropped_from_buffer: AtomicU64,
    /// Devices currently connected (welcomed by the hub) (a gauge).
    pub connected: AtomicU64,
    /// Distinct notifications received: what the devices' application layer saw
    /// (each device de-duplicates by id).
    pub notifications: AtomicU64,
    /// Notification messages received, duplicates included.
    pub notifications_received: AtomicU64,
    /// Of those, repeats of an id the device had already seen (redeliveries).
    pub duplicates: AtomicU64,
    /// Acks written.
    pub acks_sent: AtomicU64,
    /// Acks deliberately not sent (`ack_loss`), to make the hub redeliver.
    pub acks_withheld: AtomicU64,
}

impl Default for FleetStats {
    fn default() -> Self {
        FleetStats {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            dropped_from_buffer: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            notifications_received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            acks_sent: AtomicU64::new(0),
            acks_withheld: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of [`FleetStats`], serializable (this is `device-sim --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub devices: usize,
    pub elapsed_s: f64,
    pub sent: u64,
    /// `sent / elapsed_s`.
    pub sent_per_s: f64,
    pub confirmed: u64,
    pub unconfirmed: u64,
    pub resent: u64,
    pub rate_limited: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub auth_failures: u64,
    pub server_errors: u64,
    pub buffered: u64,
    pub dropped_from_buffer: u64,
    pub connected: u64,
    pub notifications: u64,
    pub notifications_received: u64,
    pub duplicates: u64,
    pub acks_sent: u64,
    pub acks_withheld: u64,
}

impl FleetStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every counter (each individually; the set is not one atomic snapshot).
    pub fn snapshot(&self, devices: usize) -> Summary {
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let sent = self.sent.load(Relaxed);
        Summary {
            devices,
            elapsed_s: (elapsed_s * 1000.0).round() / 1000.0,
            sent,
            sent_per_s: if elapsed_s > 0.0 {
                (sent as f64 / elapsed_s * 10.0).round() / 10.0
            } else {
                0.0
            },
            confirmed: self.confirmed.load(Relaxed),
            unconfirmed: self.unconfirmed.load(Relaxed),
            resent: self.resent.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            errors: self.errors.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            server_errors: self.server_errors.load(Relaxed),
            buffered: self.buffered.load(Relaxed),
            dropped_from_buffer: self.dropped_from_buffer.load(Relaxed),
            connected: self.connected.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            notifications_received: self.notifications_received.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            acks_withheld: self.acks_withheld.load(Relaxed),
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }
}
