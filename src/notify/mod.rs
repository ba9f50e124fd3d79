//! Notifications to devices: campaigns, per-device delivery state, acks, expiry and
//! live progress.
//!
//! The [`Notifier`] keeps every *open* notification (not yet complete) in memory,
//! with each target device's state ([`campaign::Book`]), and the store holds the
//! same durably. Memory answers the hot paths (what to send a device, is this ack
//! valid) without a database read; every change is also queued to the store's
//! group-committing writer, and a new notification is accepted only once it is
//! committed. Targets are resolved against the device registry, which the hub's
//! device directory holds (`hub::directory`).
//!
//! Delivery semantics:
//! - A device session pulls what is open for it, oldest first ([`Notifier::pending`]),
//!   whenever it connects or is woken because something new was created for it
//!   (woken at a paced rate, see [`dispatch`]). There is no per-device queue to
//!   overflow: the open set *is* the queue.
//! - INFO and WARNING: written once to each target that is or comes online before
//!   the notification expires; a write counts as delivered. Acks are accepted.
//! - CRITICAL: open until the device acknowledges or the notification expires; the
//!   session resends it (flagged `redelivery`) when no ack arrives in time, waiting
//!   longer after every write of it ([`campaign::Retry`], counted across reconnects
//!   and restarts), and resends everything still unacknowledged after a reconnect.
//!   Delivery is at least once: devices de-duplicate by id.
//! - An ack for an id that was never addressed to the device is refused; a repeated
//!   or late ack (after expiry) is harmless.
//! - After a crash the store may lack the last few milliseconds of acks; those
//!   notifications are simply delivered again and acknowledged again.
//!
//! The files: [`campaign`] (state and retry decisions), [`ticker`] (expiry,
//! progress, pruning on a timer), [`dispatch`] (paced wake-ups), [`request`]
//! (validating what operators ask for).
//!
//! Locking: one mutex over the [`campaign::Book`], held for map updates only, never
//! across an `.await`; store ops are sent after it is released.

pub mod campaign;
pub mod dispatch;
pub mod request;
mod shared;
pub mod ticker;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{
    config,
    hub::{now_ms, Hub, Tags},
    metrics::{Metrics, SeverityLabel},
    store::{
        DeliveryState, DeviceRow, Done, LoadedCampaign, NewNotification, Op, Shared, Store,
        StoreError,
    },
};

pub use campaign::selector;
pub use campaign::{AckOutcome, Meta, Pending, Retry};
pub use request::{Invalid, Request, Target};

use campaign::{Book, Sent};

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
    /// A scoped operator's targets reach outside its `device_tags`.
    #[error("{0}")]
    Forbidden(String),
}

pub struct Notifier {
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    config: config::Notify,
    retry: Retry,
    book: Mutex<Book>,
    /// With a store shared by several nodes (see [`shared`]).
    shared: Option<Shared>,
}

impl Notifier {
    /// Rebuilds the open notifications from the store's snapshot (its registry
    /// part goes to the hub's directory).
    pub fn new(
        store: Store,
        campaigns: Vec<LoadedCampaign>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        config: config::Notify,
    ) -> Arc<Self> {
        Arc::new(Notifier {
            shared: store.shared(),
            store,
            hub,
            metrics,
            retry: Retry::new(&config),
            config,
            book: Mutex::new(Book::load(campaigns)),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every update leaves the maps consistent before it can panic.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a device's registration as the directory now holds it (on connect,
    /// with the time it was seen).
    pub async fn registered(&self, row: DeviceRow) {
        self.send(Op::Device {
            id: row.id,
            tags: row.tags,
            registered_ms: row.registered_ms,
            seen_ms: row.last_seen_ms,
        })
        .await;
    }

    /// What is open for `device`, oldest first, except what `skip` says the session
    /// is already handling.
    pub fn pending(&self, device: &str, skip: impl Fn(i64) -> bool) -> Vec<Pending> {
        self.lock().pending(device, skip)
    }

    /// Whether `device` still owes anything for notification `seq` (it is neither
    /// acknowledged nor expired).
    pub fn is_open(&self, device: &str, seq: i64) -> bool {
        self.lock().is_open(device, seq)
    }

    /// Records that `meta` was written to `device`. For a CRITICAL notification
    /// still awaiting the device's ack, returns how long to wait for it before
    /// writing it again (longer after every write, see [`Retry`]).
    pub async fn sent(&self, device: &str, meta: &Meta) -> Option<Duration> {
        let (sent, attempts) = {
            let mut book = self.lock();
            let sent = book.sent(device, meta.seq);
            (sent, book.attempts(device, meta.seq))
        };
        match sent {
            Sent::First => {
                self.metrics.notifications_delivered.inc();
            }
            Sent::Again => {
                self.metrics.notifications_redelivered.inc();
            }
            Sent::Closed => return None,
        }
        self.send(Op::Sent {
            seq: meta.seq,
            device: device.to_owned(),
            at_ms: now_ms(),
        })
        .await;
        meta.critical().then(|| self.retry.wait(attempts))
    }

    /// A device acknowledged notification `id`.
    pub async fn ack(&self, device: &str, id: &str) -> AckOutcome {
        let active = {
            let mut book = self.lock();
            book.seq_of(id).map(|seq| book.ack(device, seq))
        };
        let outcome = match active {
            Some((outcome, latency)) => {
                if let AckOutcome::Accepted(_) = outcome {
                    if let Some(t) = latency {
                        self.metrics.ack_latency.0.observe(t.as_secs_f64());
                    }
                    self.metrics.notifications_acked.inc();
                }
                outcome
            }
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

    /// Stores a new notification, then starts delivering it. Returns once it is
    /// durable.
    /// `scope`: a scoped operator's `device_tags`: the targets are narrowed to
    /// them (tags and `all`), or must lie within them (device ids, which must then
    /// be registered with those tags).
    pub async fn create(
        &self,
        mut req: Request,
        created_by: &str,
        scope: Option<&Tags>,
    ) -> Result<Created, CreateError> {
        if let Some(scope) = scope {
            req = self.within(req, scope).await?;
        }
        let devices = self.resolve(&req).await?;
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
        if !self.store.accepting() {
            return Err(CreateError::Store(StoreError::CommitFailed(
                "the store cannot write and holds as many kept changes as it may".into(),
            )));
        }
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
        self.lock().insert(
            Arc::new(Meta::new(seq, &n, targets)),
            devices
                .iter()
                .map(|d| (d.clone(), DeliveryState::Pending, 0)),
        );
        // After the campaign is open: a device that connects from here on finds it
        // when its session first looks, one connected before is woken.
        let wake = self.hub.directory().wakes(&devices);
        tokio::spawn(dispatch::wake_paced(wake, self.config.dispatch_rate));
        if self.shared.is_some() {
            // The other nodes read it from the store and wake their targets.
            self.hub.bus().notifications_created();
        }
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
    pub async fn put_device(&self, id: String, tags: Tags) -> Result<DeviceRow, StoreError> {
        let row = self.hub.directory().register(id, tags, now_ms());
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
    /// `req` with its targets inside `scope`, or why they cannot be.
    async fn within(&self, mut req: Request, scope: &Tags) -> Result<Request, CreateError> {
        let outside = |what: String| {
            let scope: Vec<String> = scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
            CreateError::Forbidden(format!(
                "this token notifies only devices with {}: {what}",
                scope.join(", ")
            ))
        };
        let target = std::mem::replace(&mut req.target, Target::All);
        req.target = match target {
            Target::All => Target::Tags(scope.clone()),
            Target::Tags(tags) => Target::Tags(
                crate::auth::narrow(&tags, Some(scope))
                    .map_err(|k| outside(format!("the targets ask for another {k}")))?,
            ),
            Target::DeviceIds(ids) => {
                let mine = Request {
                    target: Target::Tags(scope.clone()),
                    ..req.clone()
                };
                let allowed: std::collections::HashSet<String> =
                    self.resolve(&mine).await?.into_iter().collect();
                if let Some(id) = ids.iter().find(|id| !allowed.contains(*id)) {
                    return Err(outside(format!("{id:?} is not one of them")));
                }
                Target::DeviceIds(ids)
            }
        };
        Ok(req)
    }

    pub fn progress_all(&self) -> Vec<campaign::Progress> {
        self.lock().progress_all()
    }

    /// Queues a store op; failures are logged (the store is gone only at shutdown).
    async fn send(&self, op: Op) {
        if let Err(e) = self.store.send(op).await {
            tracing::error!(error = %e, "store unavailable");
        }
    }
}

/// A new notification id: 16 random hex digits.
fn new_id() -> String {
    format!("n{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hub::Options,
        proto::{envelope::Body, notification::Severity, Targets},
        store::Counts,
    };

    async fn notifier(dir: &std::path::Path) -> Arc<Notifier> {
        notifier_with(dir, config::Notify::default()).await
    }

    async fn notifier_with(dir: &std::path::Path, config: config::Notify) -> Arc<Notifier> {
        let metrics = Arc::new(Metrics::new());
        let (store, snapshot) = Store::open(None, None, dir, Default::default())
            .await
            .unwrap();
        let hub = Hub::new(
            metrics.clone(),
            Options {
                registry: snapshot.devices,
                ..Options::default()
            },
        );
        Notifier::new(store, snapshot.campaigns, hub, metrics, config)
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
        n.lock().counts(id)
    }

    #[tokio::test]
    async fn lifecycle_of_a_critical_campaign() {
        let dir = std::env::temp_dir().join(format!("telehub-notify-{}", rand::random::<u64>()));
        let n = notifier(&dir).await;
        let created = n
            .create(request(&["a", "b", "c"], Severity::Critical), "op", None)
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
        let n = notifier(&dir).await;
        let info = n
            .create(request(&["a", "b"], Severity::Info), "op", None)
            .await
            .unwrap();
        let crit = n
            .create(request(&["a", "b"], Severity::Critical), "op", None)
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
        let n = notifier(&dir).await;
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

    /// The stored write count drives the back-off: after a restart, the next wait
    /// continues from where the device's retries stood, instead of starting over
    /// at `ack_timeout`.
    #[tokio::test]
    async fn stored_attempts_drive_the_back_off_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("telehub-notify-{}", rand::random::<u64>()));
        let config = config::Notify {
            ack_timeout: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(600),
            ..config::Notify::default()
        };
        let within = |wait: Option<Duration>, secs: f64| {
            let w = wait
                .expect("a CRITICAL delivery awaiting its ack")
                .as_secs_f64();
            assert!(
                (secs * 0.9..=secs * 1.1).contains(&w),
                "waited {w} s, expected {secs} s ± 10 %"
            );
        };
        let n = notifier_with(&dir, config.clone()).await;
        let created = n
            .create(request(&["a"], Severity::Critical), "op", None)
            .await
            .unwrap();
        let meta = n.pending("a", |_| false).pop().unwrap().meta;
        // Three writes, no ack: 1 s, 2 s, 4 s.
        for secs in [1.0, 2.0, 4.0] {
            within(n.sent("a", &meta).await, secs);
        }
        n.store.barrier().await.unwrap();
        drop(n);

        let n = notifier_with(&dir, config).await;
        let pending = n.pending("a", |_| false);
        assert!(pending[0].redelivery, "written before the restart");
        // The fourth write waits 8 s, not `ack_timeout` again.
        within(n.sent("a", &pending[0].meta).await, 8.0);
        // Acknowledged: no more waiting, and writing it again records nothing.
        assert!(matches!(
            n.ack("a", &created.id).await,
            AckOutcome::Accepted(_)
        ));
        assert_eq!(n.sent("a", &pending[0].meta).await, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn info_writes_need_no_retry() {
        let dir = std::env::temp_dir().join(format!("telehub-notify-{}", rand::random::<u64>()));
        let n = notifier(&dir).await;
        n.create(request(&["a"], Severity::Info), "op", None)
            .await
            .unwrap();
        let meta = n.pending("a", |_| false).pop().unwrap().meta;
        assert_eq!(n.sent("a", &meta).await, None);
        assert!(n.pending("a", |_| false).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
