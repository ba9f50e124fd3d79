//! Notifications to devices: campaigns, per-device delivery state, acks, expiry and
//! live progress.
//!
//! The [`Notifier`] keeps every *open* notification (not yet complete) in memory,
//! with each target device's state, and the store holds the same durably. Memory
//! answers the hot paths (what to send a device, is this ack valid) without a
//! database read; every change is also queued to the store's group-committing
//! writer, and a new notification is accepted only once it is committed.
//!
//! Delivery semantics:
//! - A device session pulls what is open for it, oldest first ([`Notifier::pending`]),
//!   whenever it connects or is woken because something new was created for it.
//!   There is no per-device queue to overflow: the open set *is* the queue.
//! - INFO and WARNING: written once to each target that is or comes online before
//!   the notification expires; a write counts as delivered. Acks are accepted.
//! - CRITICAL: open until the device acknowledges or the notification expires; the
//!   session resends it (flagged `redelivery`) when no ack arrives within
//!   `notify.ack_timeout`, doubling the wait each time, and resends everything still
//!   unacknowledged after a reconnect. Delivery is at least once: devices
//!   de-duplicate by id.
//! - An ack for an id that was never addressed to the device is refused; a repeated
//!   or late ack (after expiry) is harmless.
//! - After a crash the store may lack the last few milliseconds of acks; those
//!   notifications are simply delivered again and acknowledged again.
//!
//! Locking: one mutex over [`State`], held for map updates only, never across an
//! `.await`; store ops are sent after it is released.

pub mod request;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::Notify;

use crate::{
    config,
    hub::{now_ms, Encoded, Hub},
    metrics::{Metrics, SeverityLabel},
    proto::{envelope::Body, notification::Severity, Envelope, Notification, NotificationProgress},
    shutdown::Shutdown,
    store::{
        Counts, DeliveryState, DeviceRow, Done, NewNotification, Op, Snapshot, Store, StoreError,
    },
    ws::SharedMessage,
};

pub use request::{Invalid, Request, Target};

/// Completed notifications are pruned at least this often (and as often as
/// `notify.retention` when that is shorter), so none outlives its retention by more
/// than this.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A notification's unchanging part, shared by every device it goes to.
pub struct Meta {
    pub seq: i64,
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub targets: u32,
    /// The envelope as first sent, encoded (and compressed, framed) once for all.
    pub first: SharedMessage,
    /// The same with `redelivery` set.
    pub again: SharedMessage,
}

impl Meta {
    pub fn critical(&self) -> bool {
        self.severity == Severity::Critical
    }

    fn new(seq: i64, n: &NewNotification, targets: u32) -> Self {
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
            first: encode(false),
            again: encode(true),
        }
    }
}

/// One device's delivery of one open notification.
struct Delivery {
    state: DeliveryState,
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

/// A registered device.
struct Registered {
    tags: BTreeMap<String, String>,
    registered_ms: u64,
    last_seen_ms: Option<u64>,
}

/// The device session that currently speaks for a device id.
struct Online {
    session: u64,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    registry: HashMap<String, Registered>,
    /// Open notifications by sequence number (creation order).
    campaigns: BTreeMap<i64, Campaign>,
    by_id: HashMap<String, i64>,
    /// Per device, the open notifications it has yet to receive or acknowledge.
    open: HashMap<String, BTreeMap<i64, Arc<Meta>>>,
    online: HashMap<String, Online>,
    /// Notifications whose counts changed since the last progress update.
    dirty: BTreeSet<i64>,
}

impl State {
    fn close_for(&mut self, device: &str, seq: i64) {
        if let Some(open) = self.open.get_mut(device) {
            open.remove(&seq);
            if open.is_empty() {
                self.open.remove(device);
            }
        }
    }
}

/// Something open for a device, in the order to send it.
pub struct Pending {
    pub meta: Arc<Meta>,
    /// It was written to the device before (a previous connection, or no ack came).
    pub redelivery: bool,
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

/// A stored notification.
#[derive(Clone, Debug)]
pub struct Created {
    pub id: String,
    pub targets: u32,
    pub created_ms: u64,
    pub expires_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("no registered device matches the targets")]
    NoTargets,
    #[error("targets resolve to {0} devices; notify.max_targets is {1}")]
    TooManyTargets(usize, usize),
    #[error("storing the notification failed: {0}")]
    Store(#[from] StoreError),
}

pub struct Notifier {
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    config: config::Notify,
    state: Mutex<State>,
}

impl Notifier {
    /// Rebuilds the open notifications and the registry from the store's snapshot.
    pub fn new(
        store: Store,
        snapshot: Snapshot,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        config: config::Notify,
    ) -> Arc<Self> {
        let mut state = State::default();
        for d in snapshot.devices {
            state.registry.insert(
                d.id,
                Registered {
                    tags: d.tags,
                    registered_ms: d.registered_ms,
                    last_seen_ms: d.last_seen_ms,
                },
            );
        }
        for c in snapshot.campaigns {
            let row = &c.row;
            let meta = Arc::new(Meta::new(
                row.seq,
                &row.notification,
                c.deliveries.len() as u32,
            ));
            let mut campaign = Campaign {
                meta: meta.clone(),
                devices: HashMap::with_capacity(c.deliveries.len()),
                counts: Counts::default(),
            };
            for (device, st, _) in c.deliveries {
                campaign.counts.add(st, 1);
                if campaign.is_open(st) {
                    state
                        .open
                        .entry(device.clone())
                        .or_default()
                        .insert(row.seq, meta.clone());
                }
                campaign.devices.insert(
                    device,
                    Delivery {
                        state: st,
                        first_sent: None,
                    },
                );
            }
            state.by_id.insert(row.notification.id.clone(), row.seq);
            // Evaluated on the first tick: it may have completed just before a crash.
            state.dirty.insert(row.seq);
            state.campaigns.insert(row.seq, campaign);
        }
        Arc::new(Notifier {
            store,
            hub,
            metrics,
            config,
            state: Mutex::new(state),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A device session starts: registers the device (its token's tags override
    /// stored ones key by key), and returns the signal that wakes the session when
    /// something is created for it. The signal is already set, so the session looks
    /// at its backlog at once.
    pub async fn device_connected(
        &self,
        id: &str,
        token_tags: &BTreeMap<String, String>,
        session: u64,
    ) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        wake.notify_one();
        let now = now_ms();
        let op = {
            let mut st = self.lock();
            let entry = st.registry.entry(id.to_owned()).or_insert(Registered {
                tags: BTreeMap::new(),
                registered_ms: now,
                last_seen_ms: None,
            });
            for (k, v) in token_tags {
                entry.tags.insert(k.clone(), v.clone());
            }
            entry.last_seen_ms = Some(now);
            let op = Op::Device {
                id: id.to_owned(),
                tags: entry.tags.clone(),
                registered_ms: entry.registered_ms,
                seen_ms: Some(now),
            };
            st.online.insert(
                id.to_owned(),
                Online {
                    session,
                    wake: wake.clone(),
                },
            );
            op
        };
        self.send(op).await;
        wake
    }

    /// A device session ended (unless a newer one took the device over).
    pub fn device_disconnected(&self, id: &str, session: u64) {
        let mut st = self.lock();
        if st.online.get(id).is_some_and(|o| o.session == session) {
            st.online.remove(id);
        }
    }

    /// What is open for `device`, oldest first, except what `skip` says the session
    /// is already handling.
    pub fn pending(&self, device: &str, skip: impl Fn(i64) -> bool) -> Vec<Pending> {
        let st = self.lock();
        let Some(open) = st.open.get(device) else {
            return Vec::new();
        };
        open.iter()
            .filter(|(seq, _)| !skip(**seq))
            .map(|(seq, meta)| Pending {
                meta: meta.clone(),
                redelivery: st
                    .campaigns
                    .get(seq)
                    .and_then(|c| c.devices.get(device))
                    .is_some_and(|d| d.state == DeliveryState::Delivered),
            })
            .collect()
    }

    /// Whether `device` still owes anything for notification `seq` (it is neither
    /// acknowledged nor expired).
    pub fn is_open(&self, device: &str, seq: i64) -> bool {
        self.lock()
            .open
            .get(device)
            .is_some_and(|o| o.contains_key(&seq))
    }

    /// Records that `meta` was written to `device`.
    pub async fn sent(&self, device: &str, meta: &Meta) {
        {
            let mut st = self.lock();
            let Some(c) = st.campaigns.get_mut(&meta.seq) else {
                return;
            };
            let Some(d) = c.devices.get_mut(device) else {
                return;
            };
            match d.state {
                DeliveryState::Pending => {
                    d.first_sent = Some(Instant::now());
                    self.metrics.notifications_delivered.inc();
                    c.set(device, DeliveryState::Delivered);
                    if !c.meta.critical() {
                        st.close_for(device, meta.seq);
                    }
                    st.dirty.insert(meta.seq);
                }
                DeliveryState::Delivered => {
                    self.metrics.notifications_redelivered.inc();
                }
                DeliveryState::Acknowledged | DeliveryState::Expired => return,
            }
        }
        self.send(Op::Sent {
            seq: meta.seq,
            device: device.to_owned(),
            at_ms: now_ms(),
        })
        .await;
    }

    /// A device acknowledged notification `id`.
    pub async fn ack(&self, device: &str, id: &str) -> AckOutcome {
        let active = {
            let mut st = self.lock();
            st.by_id
                .get(id)
                .copied()
                .map(|seq| self.ack_open(&mut st, device, seq))
        };
        let outcome = match active {
            Some(outcome) => outcome,
            // Not open any more (or never was): the store knows, once everything
            // queued before (a completion's final states) is committed.
            None => match self.store_delivery(id, device).await {
                Ok(Some((seq, _, st))) if st < DeliveryState::Acknowledged => {
                    self.metrics.notifications_acked.inc();
                    AckOutcome::Accepted(seq)
                }
                Ok(Some((seq, _, _))) => AckOutcome::Duplicate(seq),
                Ok(None) => AckOutcome::Unknown,
                Err(e) => {
                    tracing::error!(error = %e, "looking up an ack");
                    AckOutcome::Unknown
                }
            },
        };
        if let AckOutcome::Accepted(seq) = outcome {
            self.send(Op::Acked {
                seq,
                device: device.to_owned(),
                at_ms: now_ms(),
            })
            .await;
        }
        outcome
    }

    async fn store_delivery(
        &self,
        id: &str,
        device: &str,
    ) -> Result<Option<(i64, i32, DeliveryState)>, StoreError> {
        self.store.barrier().await?;
        self.store.delivery(id.to_owned(), device.to_owned()).await
    }

    fn ack_open(&self, st: &mut State, device: &str, seq: i64) -> AckOutcome {
        let Some(c) = st.campaigns.get_mut(&seq) else {
            return AckOutcome::Unknown;
        };
        let Some(d) = c.devices.get(device) else {
            return AckOutcome::Unknown;
        };
        match d.state {
            DeliveryState::Acknowledged | DeliveryState::Expired => AckOutcome::Duplicate(seq),
            DeliveryState::Pending | DeliveryState::Delivered => {
                if let Some(t) = d.first_sent {
                    self.metrics
                        .ack_latency
                        .0
                        .observe(t.elapsed().as_secs_f64());
                }
                self.metrics.notifications_acked.inc();
                c.set(device, DeliveryState::Acknowledged);
                st.close_for(device, seq);
                st.dirty.insert(seq);
                AckOutcome::Accepted(seq)
            }
        }
    }

    /// Stores a new notification, then starts delivering it. Returns once it is
    /// durable.
    pub async fn create(&self, req: Request, created_by: &str) -> Result<Created, CreateError> {
        let devices = {
            let st = self.lock();
            req.resolve(st.registry.iter().map(|(id, r)| (id, &r.tags)))
        };
        if devices.is_empty() {
            return Err(CreateError::NoTargets);
        }
        if devices.len() > self.config.max_targets {
            return Err(CreateError::TooManyTargets(
                devices.len(),
                self.config.max_targets,
            ));
        }
        let created_ms = now_ms();
        let n = NewNotification {
            id: new_id(),
            severity: req.severity as i32,
            title: req.title,
            body: req.body,
            payload: req.payload,
            targets_json: serde_json::to_string(&req.target).unwrap_or_default(),
            created_by: created_by.to_owned(),
            created_ms,
            expires_ms: created_ms.saturating_add(req.ttl.as_millis() as u64),
        };
        let targets = devices.len() as u32;
        let seq = match self
            .store
            .commit(Op::Create {
                notification: n.clone(),
                devices: devices.clone(),
            })
            .await?
        {
            Done::Seq(seq) => seq,
            other => {
                return Err(CreateError::Store(StoreError::CommitFailed(format!(
                    "unexpected answer {other:?}"
                ))))
            }
        };
        let meta = Arc::new(Meta::new(seq, &n, targets));
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            let mut campaign = Campaign {
                meta: meta.clone(),
                devices: HashMap::with_capacity(devices.len()),
                counts: Counts::default(),
            };
            campaign
                .counts
                .add(DeliveryState::Pending, devices.len() as u64);
            for d in devices {
                st.open
                    .entry(d.clone())
                    .or_default()
                    .insert(seq, meta.clone());
                if let Some(o) = st.online.get(&d) {
                    wake.push(o.wake.clone());
                }
                campaign.devices.insert(
                    d,
                    Delivery {
                        state: DeliveryState::Pending,
                        first_sent: None,
                    },
                );
            }
            st.by_id.insert(n.id.clone(), seq);
            st.campaigns.insert(seq, campaign);
            st.dirty.insert(seq);
        }
        tokio::spawn(wake_paced(wake, self.config.dispatch_rate));
        self.metrics
            .notifications_accepted
            .get_or_create(&SeverityLabel {
                severity: request::severity_name(req.severity),
            })
            .inc();
        Ok(Created {
            id: n.id,
            targets,
            created_ms,
            expires_ms: n.expires_ms,
        })
    }

    /// Registers a device ahead of its first connection, or replaces its tags.
    pub async fn put_device(
        &self,
        id: String,
        tags: BTreeMap<String, String>,
    ) -> Result<DeviceRow, StoreError> {
        let row = {
            let mut st = self.lock();
            let entry = st.registry.entry(id.clone()).or_insert(Registered {
                tags: BTreeMap::new(),
                registered_ms: now_ms(),
                last_seen_ms: None,
            });
            entry.tags = tags;
            DeviceRow {
                id,
                tags: entry.tags.clone(),
                registered_ms: entry.registered_ms,
                last_seen_ms: entry.last_seen_ms,
            }
        };
        self.store
            .commit(Op::Device {
                id: row.id.clone(),
                tags: row.tags.clone(),
                registered_ms: row.registered_ms,
                seen_ms: None,
            })
            .await?;
        Ok(row)
    }

    /// Progress of every open notification, by id (for a dashboard that starts
    /// watching).
    pub fn progress_all(&self) -> Vec<(String, Arc<Encoded>)> {
        self.lock()
            .campaigns
            .values()
            .map(|c| (c.meta.id.clone(), c.progress()))
            .collect()
    }

    /// Expires, completes and reports progress on a timer until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.config.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = tick.tick() => {}
            }
            let tick = self.on_tick(now_ms());
            for op in tick.ops {
                self.send(op).await;
            }
            for (id, p) in tick.progress {
                self.hub.announce_progress(&id, p);
            }
            self.retire(&tick.completed);
            let prune_every = PRUNE_EVERY.min(self.config.retention);
            if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                last_prune = Some(Instant::now());
                let retention = self.config.retention.as_millis() as u64;
                self.send(Op::Prune {
                    completed_before_ms: now_ms().saturating_sub(retention),
                })
                .await;
            }
        }
    }

    /// One tick: expires what is due and reports changed progress. Returns the store
    /// ops and progress messages to send, and the notifications that completed: they
    /// are [`retire`](Self::retire)d once their ops are queued, so that an ack racing
    /// with completion is answered from memory until the store has the final states.
    fn on_tick(&self, now: u64) -> Tick {
        let mut ops = Vec::new();
        let mut progress = Vec::new();
        let mut completed = Vec::new();
        let mut st = self.lock();
        let due: Vec<i64> = st
            .campaigns
            .values()
            .filter(|c| c.meta.expires_ms <= now && !c.complete())
            .map(|c| c.meta.seq)
            .collect();
        for seq in due {
            let Some(c) = st.campaigns.get_mut(&seq) else {
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
            let critical = c.meta.critical();
            self.metrics
                .notifications_expired
                .inc_by(expiring.len() as u64);
            for device in &expiring {
                st.close_for(device, seq);
            }
            ops.push(Op::Expire { seq, critical });
            st.dirty.insert(seq);
        }
        let dirty = std::mem::take(&mut st.dirty);
        for seq in dirty {
            let Some(c) = st.campaigns.get(&seq) else {
                continue;
            };
            progress.push((c.meta.id.clone(), c.progress()));
            if c.complete() {
                ops.push(Op::Complete { seq, at_ms: now });
                completed.push(seq);
            }
        }
        Tick {
            ops,
            progress,
            completed,
        }
    }

    /// Forgets completed notifications; the store answers for them from now on.
    fn retire(&self, seqs: &[i64]) {
        let mut st = self.lock();
        for seq in seqs {
            if let Some(c) = st.campaigns.remove(seq) {
                st.by_id.remove(&c.meta.id);
            }
        }
    }

    /// Queues a store op; failures are logged (the store is gone only at shutdown).
    async fn send(&self, op: Op) {
        if let Err(e) = self.store.send(op).await {
            tracing::error!(error = %e, "store unavailable");
        }
    }
}

/// Device sessions woken together when a notification is created.
const WAKE_BATCH: usize = 64;

/// Wakes the online targets' sessions at most `per_second` a second, in small
/// batches. Each woken session costs the hub ~25 µs (write, ack, store op), so
/// waking 10,000 at once would saturate a core for a quarter second and queue every
/// telemetry task behind them; paced, fan-out keeps its share of the CPU and the
/// campaign takes `targets / per_second` seconds.
async fn wake_paced(sessions: Vec<Arc<Notify>>, per_second: u32) {
    let period = Duration::from_secs_f64(WAKE_BATCH as f64 / f64::from(per_second.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for batch in sessions.chunks(WAKE_BATCH) {
        tick.tick().await;
        for s in batch {
            s.notify_one();
        }
    }
}

/// What one tick of [`Notifier::run`] has to do outside the lock.
struct Tick {
    ops: Vec<Op>,
    /// (notification id, progress)
    progress: Vec<(String, Arc<Encoded>)>,
    completed: Vec<i64>,
}

/// A new notification id: 16 random hex digits.
fn new_id() -> String {
    format!("n{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Targets;

    fn notifier(dir: &std::path::Path) -> Arc<Notifier> {
        let metrics = Arc::new(Metrics::new());
        let (store, snapshot) = Store::open(dir, Default::default()).unwrap();
        Notifier::new(
            store,
            snapshot,
            Hub::new(metrics.clone()),
            metrics,
            config::Notify::default(),
        )
    }

    fn request(ids: &[&str], severity: Severity) -> Request {
        Request::new(
            Targets {
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            severity,
            "t".into(),
            String::new(),
            Vec::new(),
            Some(Duration::from_secs(60)),
            &config::Notify::default(),
        )
        .unwrap()
    }

    fn counts(n: &Notifier, id: &str) -> Option<Counts> {
        let st = n.lock();
        st.by_id.get(id).map(|seq| st.campaigns[seq].counts)
    }

    #[tokio::test]
    async fn lifecycle_of_a_critical_campaign() {
        let dir = std::env::temp_dir().join(format!("telehub-notify-{}", rand::random::<u64>()));
        let n = notifier(&dir);
        let created = n
            .create(request(&["a", "b", "c"], Severity::Critical), "op")
            .await
            .unwrap();
        assert_eq!(created.targets, 3);
        let meta = n.pending("a", |_| false).pop().unwrap().meta;
        assert!(n.pending("zzz", |_| false).is_empty());

        // a: delivered then acknowledged; b: delivered twice, never acks; c: offline.
        n.sent("a", &meta).await;
        n.sent("b", &meta).await;
        assert!(
            n.pending("b", |_| false)[0].redelivery,
            "written once already"
        );
        n.sent("b", &meta).await;
        assert_eq!(
            n.ack("a", &created.id).await,
            AckOutcome::Accepted(meta.seq)
        );
        assert_eq!(
            n.ack("a", &created.id).await,
            AckOutcome::Duplicate(meta.seq)
        );
        assert_eq!(n.ack("zzz", &created.id).await, AckOutcome::Unknown);
        assert_eq!(n.ack("a", "nothing").await, AckOutcome::Unknown);
        assert!(!n.is_open("a", meta.seq) && n.is_open("b", meta.seq));
        assert_eq!(
            counts(&n, &created.id),
            Some(Counts {
                pending: 1,
                delivered: 1,
                acknowledged: 1,
                expired: 0
            })
        );

        // A tick before expiry reports progress and keeps it open.
        let tick = n.on_tick(now_ms());
        assert_eq!(tick.progress.len(), 1);
        assert!(tick.completed.is_empty());

        // At expiry, b and c expire and the campaign completes.
        let tick = n.on_tick(created.expires_ms);
        let ops = tick.ops;
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::Expire { critical: true, .. })));
        assert!(ops.iter().any(|o| matches!(o, Op::Complete { .. })));
        let Some(Body::NotificationProgress(p)) = tick.progress[0].1.envelope().body.clone() else {
            panic!("progress")
        };
        assert_eq!((p.acknowledged, p.expired, p.complete), (1, 2, true));
        // Until retired, acks are answered from memory.
        assert_eq!(
            n.ack("c", &created.id).await,
            AckOutcome::Duplicate(meta.seq)
        );
        for op in ops {
            n.send(op).await;
        }
        n.retire(&tick.completed);
        assert_eq!(counts(&n, &created.id), None);
        // A late ack is harmless; the store answers for campaigns no longer open.
        assert_eq!(
            n.ack("b", &created.id).await,
            AckOutcome::Duplicate(meta.seq)
        );
        let s = n
            .store
            .status(created.id.clone(), None, None, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s.counts.acknowledged, s.counts.expired), (1, 2));
        assert!(s.campaign.completed_ms.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn info_is_done_once_written_and_state_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("telehub-notify-{}", rand::random::<u64>()));
        let n = notifier(&dir);
        let info = n
            .create(request(&["a", "b"], Severity::Info), "op")
            .await
            .unwrap();
        let crit = n
            .create(request(&["a", "b"], Severity::Critical), "op")
            .await
            .unwrap();
        let order: Vec<String> = n
            .pending("a", |_| false)
            .iter()
            .map(|p| p.meta.id.clone())
            .collect();
        assert_eq!(order, [info.id.clone(), crit.id.clone()], "creation order");
        let meta = n.pending("a", |_| false)[0].meta.clone();
        n.sent("a", &meta).await;
        assert_eq!(
            n.pending("a", |_| false).len(),
            1,
            "INFO is done once written"
        );
        let tick = n.on_tick(now_ms());
        assert!(tick.ops.is_empty(), "b has not received the INFO yet");
        n.sent("b", &meta).await;
        let tick = n.on_tick(now_ms());
        assert!(matches!(tick.ops[..], [Op::Complete { .. }]));
        for op in tick.ops {
            n.send(op).await;
        }
        n.retire(&tick.completed);
        n.store.barrier().await.unwrap();
        drop(n);

        // What is open comes back from the store.
        let n = notifier(&dir);
        let open: Vec<String> = n
            .pending("b", |_| false)
            .iter()
            .map(|p| p.meta.id.clone())
            .collect();
        assert_eq!(open, [crit.id]);
        // An INFO notification delivered and completed still takes an ack.
        assert!(matches!(
            n.ack("b", &info.id).await,
            AckOutcome::Accepted(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
