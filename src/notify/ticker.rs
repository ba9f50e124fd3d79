//! The notifier's timer: every `notify.progress_interval` it expires what is due,
//! reports changed progress to watching dashboards, completes and retires
//! finished campaigns, and prunes completed ones older than `notify.retention`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{shared::Sweeper, Notifier};
use crate::{hub::now_ms, shutdown::Shutdown, store::Op};

/// Completed notifications are pruned at least this often (and as often as
/// `notify.retention` when that is shorter), so none outlives its retention by more
/// than this.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What one tick has to do outside the lock.
pub(super) struct Tick {
    pub ops: Vec<Op>,
    pub progress: Vec<super::campaign::Progress>,
    pub completed: Vec<i64>,
}

impl Notifier {
    /// Expires, completes and reports progress on a timer until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.config.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune: Option<Instant> = None;
        let mut sweeper = self.shared.as_ref().map(Sweeper::new);
        // A node alone runs its own sweeps.
        self.metrics.sweeper.set(i64::from(sweeper.is_none()));
        loop {
            let created_elsewhere = tokio::select! {
                _ = shutdown.recv() => break,
                _ = tick.tick() => false,
                _ = self.hub.notifications_created().notified() => true,
            };
            let prune_every = PRUNE_EVERY.min(self.config.retention);
            let prune = last_prune.is_none_or(|t| t.elapsed() >= prune_every);
            let retention = self.config.retention.as_millis() as u64;
            let prune_before = now_ms().saturating_sub(retention);
            match (&self.shared, &mut sweeper) {
                (Some(shared), Some(sweeper)) => {
                    if !created_elsewhere {
                        self.lock().expire(now_ms());
                        let holds = sweeper.holds().await;
                        self.metrics.sweeper.set(i64::from(holds));
                        if holds {
                            if prune {
                                last_prune = Some(Instant::now());
                            }
                            self.sweep(now_ms(), prune.then_some(prune_before)).await;
                        }
                    }
                    let synced = self.sync(shared).await;
                    if let Err(e) = &synced {
                        tracing::debug!(error = %e, "reading the shared store's notifications");
                    }
                    self.store.reached(synced.is_ok());
                }
                _ => {
                    let tick = self.on_tick(now_ms());
                    for op in tick.ops {
                        self.send(op).await;
                    }
                    for (id, p, selector) in tick.progress {
                        self.hub.announce_progress(&id, p, selector.as_deref());
                    }
                    self.retire(&tick.completed);
                    if prune {
                        last_prune = Some(Instant::now());
                        self.send(Op::Prune {
                            completed_before_ms: prune_before,
                        })
                        .await;
                        // Revocations whose tokens have all expired, with them.
                        self.send(Op::PruneRevocations { now_ms: now_ms() }).await;
                    }
                }
            }
        }
    }

    /// One tick: expires what is due and reports changed progress. Returns the store
    /// ops and progress messages to send, and the notifications that completed: they
    /// are [`retire`](Self::retire)d once their ops are queued, so that an ack racing
    /// with completion is answered from memory until the store has the final states.
    pub(super) fn on_tick(&self, now: u64) -> Tick {
        let reported = self.lock().expire_and_report(now);
        let mut ops = Vec::new();
        for (seq, critical, devices) in reported.expired {
            self.metrics.notifications_expired.inc_by(devices as u64);
            ops.push(Op::Expire { seq, critical });
        }
        for &seq in &reported.completed {
            ops.push(Op::Complete { seq, at_ms: now });
        }
        Tick {
            ops,
            progress: reported.progress,
            completed: reported.completed,
        }
    }

    /// Forgets completed notifications; the store answers for them from now on.
    pub(super) fn retire(&self, seqs: &[i64]) {
        self.lock().retire(seqs);
    }
}
