//! The state of open notifications ("campaigns"): per target device, where its
//! delivery stands, how many times it was written, and when to write it again.
//!
//! [`Book`] holds every open campaign and, per device, what it still owes, so the
//! hot paths (what to send a device, is this ack valid, when to resend) are map
//! lookups. Each change returns what the store must record; the caller
//! ([`super::Notifier`]) queues it after releasing the lock.
//!
//! The retry decision lives here, beside the state it depends on: a CRITICAL
//! delivery is written again [`Retry::wait`] after its latest write, a wait that
//! doubles with every write *of that delivery so far* (the `attempts` the store
//! keeps and gives back after a restart), so a device that keeps missing a
//! notification is retried ever less often, across reconnects and restarts alike.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message as _;

use crate::{
    config,
    hub::Encoded,
    proto::{envelope::Body, notification::Severity, Envelope, Notification, NotificationProgress},
    store::{Counts, DeliveryState, LoadedCampaign, NewNotification},
    ws::SharedMessage,
};

/// A notification's unchanging part, shared by every device it goes to.
pub struct Meta {
    pub seq: i64,
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub targets: u32,
    /// The tags its targets were selected by, if they were (scoped dashboards
    /// hear of it only when these are within their own selector).
    pub selector: Option<Arc<crate::hub::Tags>>,
    /// The envelope as first sent, encoded (and compressed, framed) once for all.
    pub first: SharedMessage,
    /// The same with `redelivery` set.
    pub again: SharedMessage,
}

impl Meta {
    pub fn critical(&self) -> bool {
        self.severity == Severity::Critical
    }

    pub fn new(seq: i64, n: &NewNotification, targets: u32) -> Self {
        let severity = Severity::try_from(n.severity).unwrap_or(Severity::Info);
        let encode = |redelivery| {
            let env = Envelope {
                body: Some(Body::Notification(Notification {
                    id: n.id.clone(),
                    severity: severity as i32,
                    title: n.title.clone(),
                    body: n.body.clone(),
                    payload: n.payload.clone(),
                    created_ms: n.created_ms,
                    expires_ms: n.expires_ms,
                    redelivery,
                })),
            };
            SharedMessage::binary(Bytes::from(env.encode_to_vec()))
        };
        Meta {
            seq,
            id: n.id.clone(),
            severity,
            title: n.title.clone(),
            created_ms: n.created_ms,
            expires_ms: n.expires_ms,
            targets,
            selector: selector(&n.targets_json).map(Arc::new),
            first: encode(false),
            again: encode(true),
        }
    }
}

/// When to write an unacknowledged CRITICAL notification again.
///
/// `notify.ack_timeout` after the first write, then twice as long after each
/// further write, up to `notify.max_retry_interval`, each wait varied by ±10 % so a
/// fleet that missed the same notification does not retry in step.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub ack_timeout: Duration,
    pub max_interval: Duration,
}

impl Retry {
    pub fn new(config: &config::Notify) -> Self {
        Self {
            ack_timeout: config.ack_timeout,
            max_interval: config.max_retry_interval,
        }
    }

    /// The wait after write number `attempts` (1 for the first write).
    pub fn wait(&self, attempts: u32) -> Duration {
        self.base(attempts).mul_f64(rand::random_range(0.9..1.1))
    }

    /// [`Retry::wait`] without the jitter.
    pub fn base(&self, attempts: u32) -> Duration {
        self.ack_timeout
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.max_interval)
    }
}

/// One device's delivery of one open notification.
struct Delivery {
    state: DeliveryState,
    /// Writes so far, in this process and before (the store keeps the count).
    attempts: u32,
    /// First write in this process, for the ack latency histogram.
    first_sent: Option<Instant>,
}

/// An open notification.
struct Campaign {
    meta: Arc<Meta>,
    devices: HashMap<String, Delivery>,
    counts: Counts,
}

impl Campaign {
    /// Whether `state` still needs something to happen for a notification like this.
    fn is_open(&self, state: DeliveryState) -> bool {
        match state {
            DeliveryState::Pending => true,
            DeliveryState::Delivered => self.meta.critical(),
            DeliveryState::Acknowledged | DeliveryState::Expired => false,
        }
    }

    fn complete(&self) -> bool {
        self.counts.pending == 0 && (!self.meta.critical() || self.counts.delivered == 0)
    }

    fn set(&mut self, device: &str, state: DeliveryState) {
        if let Some(d) = self.devices.get_mut(device) {
            self.counts.remove(d.state);
            self.counts.add(state, 1);
            d.state = state;
        }
    }

    fn progress(&self) -> Arc<Encoded> {
        let m = &self.meta;
        Encoded::new(Envelope {
            body: Some(Body::NotificationProgress(NotificationProgress {
                id: m.id.clone(),
                severity: m.severity as i32,
                title: m.title.clone(),
                targets: m.targets,
                pending: self.counts.pending as u32,
                delivered: self.counts.delivered as u32,
                acknowledged: self.counts.acknowledged as u32,
                expired: self.counts.expired as u32,
                created_ms: m.created_ms,
                expires_ms: m.expires_ms,
                complete: self.complete(),
            })),
        })
    }
}

/// Something open for a device, in the order to send it.
pub struct Pending {
    pub meta: Arc<Meta>,
    /// It was written to the device before (a previous connection, or no ack came).
    pub redelivery: bool,
}

/// What [`Book::sent`] recorded.
pub enum Sent {
    /// The first write of this delivery: to be stored.
    First,
    /// A further write of a delivery still awaiting its ack: to be stored.
    Again,
    /// Acknowledged, expired or no longer open: nothing to record.
    Closed,
}

/// What an ack did.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Recorded; the notification's sequence number.
    Accepted(i64),
    /// Already acknowledged, or arrived after expiry: nothing to do.
    Duplicate(i64),
    /// No such notification was ever addressed to this device.
    Unknown,
}

/// The tags a notification's targets were selected by (from its stored targets
/// JSON), if they were selected by tags.
pub fn selector(targets_json: &str) -> Option<crate::hub::Tags> {
    let v: serde_json::Value = serde_json::from_str(targets_json).ok()?;
    serde_json::from_value(v.get("tags")?.clone()).ok()
}

/// A notification's id, its progress message, and the tags its targets were
/// selected by (see [`Meta::selector`]).
pub type Progress = (String, Arc<Encoded>, Option<Arc<crate::hub::Tags>>);

/// What one [`Book::expire_and_report`] found.
pub struct Reported {
    /// (sequence, critical, devices expired) of every campaign that expired.
    pub expired: Vec<(i64, bool, usize)>,
    /// Progress of every campaign that changed.
    pub progress: Vec<Progress>,
    /// Campaigns that completed: to be [`Book::retire`]d once their final states
    /// are queued to the store.
    pub completed: Vec<i64>,
}

/// Every open campaign.
#[derive(Default)]
pub struct Book {
    /// Open notifications by sequence number (creation order).
    campaigns: BTreeMap<i64, Campaign>,
    by_id: HashMap<String, i64>,
    /// Per device, the open notifications it has yet to receive or acknowledge.
    open: HashMap<String, BTreeMap<i64, Arc<Meta>>>,
    /// Notifications whose counts changed since the last progress report.
    dirty: BTreeSet<i64>,
}

impl Book {
    /// Rebuilds the open campaigns from what the store loaded.
    pub fn load(campaigns: Vec<LoadedCampaign>) -> Self {
        let mut book = Book::default();
        for c in campaigns {
            let row = &c.row;
            let meta = Arc::new(Meta::new(
                row.seq,
                &row.notification,
                c.deliveries.len() as u32,
            ));
            book.insert(meta, c.deliveries);
        }
        // Evaluated on the first tick: one may have completed just before a crash.
        book.dirty = book.campaigns.keys().copied().collect();
        book
    }

    /// Opens a campaign with each device's state and writes so far; false (and
    /// nothing changes) if it is open already.
    pub fn insert(
        &mut self,
        meta: Arc<Meta>,
        devices: impl IntoIterator<Item = (String, DeliveryState, u32)>,
    ) -> bool {
        let seq = meta.seq;
        if self.campaigns.contains_key(&seq) {
            return false;
        }
        let mut campaign = Campaign {
            meta: meta.clone(),
            devices: HashMap::new(),
            counts: Counts::default(),
        };
        for (device, state, attempts) in devices {
            campaign.counts.add(state, 1);
            if campaign.is_open(state) {
                self.open
                    .entry(device.clone())
                    .or_default()
                    .insert(seq, meta.clone());
            }
            campaign.devices.insert(
                device,
                Delivery {
                    state,
                    attempts,
                    first_sent: None,
                },
            );
        }
        self.by_id.insert(meta.id.clone(), seq);
        self.dirty.insert(seq);
        self.campaigns.insert(seq, campaign);
        true
    }

    /// The open campaigns' sequence numbers.
    pub fn seqs(&self) -> Vec<i64> {
        self.campaigns.keys().copied().collect()
    }

    /// Replaces a campaign's counts with what the shared store counted (every
    /// node's changes); reported at the next [`Book::report`] if they changed.
    pub fn set_counts(&mut self, seq: i64, counts: Counts) {
        if let Some(c) = self.campaigns.get_mut(&seq) {
            if c.counts != counts {
                c.counts = counts;
                self.dirty.insert(seq);
            }
        }
    }

    /// Replaces what this node knew of `device`'s deliveries with what the shared
    /// store holds (`rows`: sequence number, state, writes so far, for every open
    /// notification it is a target of), e.g. when it connects after being served
    /// by another node.
    pub fn refresh_device(&mut self, device: &str, rows: &[(i64, DeliveryState, u32)]) {
        self.open.remove(device);
        for &(seq, state, attempts) in rows {
            let Some(c) = self.campaigns.get_mut(&seq) else {
                continue;
            };
            let Some(d) = c.devices.get_mut(device) else {
                continue;
            };
            d.attempts = d.attempts.max(attempts);
            // Keep the furthest state: a change of this node's may not be
            // committed yet.
            if state > d.state {
                c.set(device, state);
            }
            let now = c.devices.get(device).map_or(state, |d| d.state);
            if c.is_open(now) {
                self.open
                    .entry(device.to_owned())
                    .or_default()
                    .insert(seq, c.meta.clone());
            }
        }
    }

    fn close_for(&mut self, device: &str, seq: i64) {
        if let Some(open) = self.open.get_mut(device) {
            open.remove(&seq);
            if open.is_empty() {
                self.open.remove(device);
            }
        }
    }

    /// What is open for `device`, oldest first, except what `skip` says the session
    /// is already handling.
    pub fn pending(&self, device: &str, skip: impl Fn(i64) -> bool) -> Vec<Pending> {
        let Some(open) = self.open.get(device) else {
            return Vec::new();
        };
        open.iter()
            .filter(|(seq, _)| !skip(**seq))
            .map(|(seq, meta)| Pending {
                meta: meta.clone(),
                redelivery: self
                    .campaigns
                    .get(seq)
                    .and_then(|c| c.devices.get(device))
                    .is_some_and(|d| d.state == DeliveryState::Delivered),
            })
            .collect()
    }

    /// Whether `device` still owes anything for notification `seq`.
    pub fn is_open(&self, device: &str, seq: i64) -> bool {
        self.open.get(device).is_some_and(|o| o.contains_key(&seq))
    }

    /// Writes of `device`'s delivery of `seq` so far (0 if it is not open).
    pub fn attempts(&self, device: &str, seq: i64) -> u32 {
        self.campaigns
            .get(&seq)
            .and_then(|c| c.devices.get(device))
            .map_or(0, |d| d.attempts)
    }

    /// Records a write of `seq` to `device`.
    pub fn sent(&mut self, device: &str, seq: i64) -> Sent {
        let Some(c) = self.campaigns.get_mut(&seq) else {
            return Sent::Closed;
        };
        let Some(d) = c.devices.get_mut(device) else {
            return Sent::Closed;
        };
        match d.state {
            DeliveryState::Pending => {
                d.first_sent = Some(Instant::now());
                d.attempts += 1;
                c.set(device, DeliveryState::Delivered);
                if !c.meta.critical() {
                    self.close_for(device, seq);
                }
                self.dirty.insert(seq);
                Sent::First
            }
            DeliveryState::Delivered => {
                d.attempts += 1;
                Sent::Again
            }
            DeliveryState::Acknowledged | DeliveryState::Expired => Sent::Closed,
        }
    }

    /// The sequence number of open notification `id`, if it is open.
    pub fn seq_of(&self, id: &str) -> Option<i64> {
        self.by_id.get(id).copied()
    }

    /// `device` acknowledged open notification `seq`. On acceptance, the time since
    /// the first write in this process (for the latency histogram), if any.
    pub fn ack(&mut self, device: &str, seq: i64) -> (AckOutcome, Option<Duration>) {
        let Some(c) = self.campaigns.get_mut(&seq) else {
            return (AckOutcome::Unknown, None);
        };
        let Some(d) = c.devices.get(device) else {
            return (AckOutcome::Unknown, None);
        };
        match d.state {
            DeliveryState::Acknowledged | DeliveryState::Expired => {
                (AckOutcome::Duplicate(seq), None)
            }
            DeliveryState::Pending | DeliveryState::Delivered => {
                let latency = d.first_sent.map(|t| t.elapsed());
                c.set(device, DeliveryState::Acknowledged);
                self.close_for(device, seq);
                self.dirty.insert(seq);
                (AckOutcome::Accepted(seq), latency)
            }
        }
    }

    /// Expires every campaign due at `now` and reports those that changed.
    pub fn expire_and_report(&mut self, now: u64) -> Reported {
        let expired = self.expire(now);
        let (progress, completed) = self.report();
        Reported {
            expired,
            progress,
            completed,
        }
    }

    /// Expires the open deliveries of every campaign due at `now`: (sequence,
    /// critical, devices expired) of each.
    pub fn expire(&mut self, now: u64) -> Vec<(i64, bool, usize)> {
        let mut expired = Vec::new();
        let due: Vec<i64> = self
            .campaigns
            .values()
            .filter(|c| c.meta.expires_ms <= now && !c.complete())
            .map(|c| c.meta.seq)
            .collect();
        for seq in due {
            let Some(c) = self.campaigns.get_mut(&seq) else {
                continue;
            };
            let expiring: Vec<String> = c
                .devices
                .iter()
                .filter(|(_, d)| c.is_open(d.state))
                .map(|(id, _)| id.clone())
                .collect();
            for device in &expiring {
                c.set(device, DeliveryState::Expired);
            }
            expired.push((seq, c.meta.critical(), expiring.len()));
            for device in &expiring {
                self.close_for(device, seq);
            }
            self.dirty.insert(seq);
        }
        expired
    }

    /// The progress of every campaign that changed since the last report, and
    /// those of them that are complete.
    pub fn report(&mut self) -> (Vec<Progress>, Vec<i64>) {
        let mut progress = Vec::new();
        let mut completed = Vec::new();
        for seq in std::mem::take(&mut self.dirty) {
            let Some(c) = self.campaigns.get(&seq) else {
                continue;
            };
            progress.push((c.meta.id.clone(), c.progress(), c.meta.selector.clone()));
            if c.complete() {
                completed.push(seq);
            }
        }
        (progress, completed)
    }

    /// Forgets completed notifications; the store answers for them from now on.
    pub fn retire(&mut self, seqs: &[i64]) {
        for seq in seqs {
            if let Some(c) = self.campaigns.remove(seq) {
                self.by_id.remove(&c.meta.id);
                // With a shared store, another node may have closed deliveries
                // this one still lists as open.
                for device in c.devices.keys() {
                    self.close_for(device, *seq);
                }
            }
        }
    }

    /// Progress of every open notification, by id.
    pub fn progress_all(&self) -> Vec<Progress> {
        self.campaigns
            .values()
            .map(|c| (c.meta.id.clone(), c.progress(), c.meta.selector.clone()))
            .collect()
    }

    /// The counts of open notification `id`.
    #[cfg(test)]
    pub fn counts(&self, id: &str) -> Option<Counts> {
        self.by_id.get(id).map(|seq| self.campaigns[seq].counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_per_write_up_to_the_cap() {
        let r = Retry {
            ack_timeout: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
        };
        let secs: Vec<u64> = (1..=6).map(|a| r.base(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(r.base(u32::MAX), Duration::from_secs(10), "no overflow");
        for a in 1..=6 {
            let w = r.wait(a).as_secs_f64() / r.base(a).as_secs_f64();
            assert!((0.9..1.1).contains(&w), "jitter within ±10 %: {w}");
        }
    }
}
