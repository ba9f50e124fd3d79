//! A device session's side of notification delivery: writing what the notifier
//! has open for the device, oldest first, and resending CRITICAL notifications
//! that were not acknowledged in time.
//!
//! The redelivery schedule: `notify.ack_timeout` after the first write, then twice
//! as long after each resend, up to `notify.max_retry_interval`, each wait varied
//! by ±10 % so a fleet that missed the same notification does not retry in step.
//! Only this session's writes are tracked; a reconnecting device gets everything
//! still open from the notifier again.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{io::AsyncWrite, time::Instant};

use super::timed;
use crate::{
    config,
    metrics::RoleMeters,
    notify::{AckOutcome, Meta, Notifier},
    ws,
};

struct Inflight {
    meta: Arc<Meta>,
    /// Writes so far in this session.
    attempts: u32,
    /// When to write it again if no ack came.
    due: Instant,
}

pub struct Deliveries {
    notifier: Arc<Notifier>,
    device: String,
    ack_timeout: Duration,
    max_interval: Duration,
    /// CRITICAL notifications written and not yet acknowledged, by sequence number.
    inflight: BTreeMap<i64, Inflight>,
}

impl Deliveries {
    pub fn new(notifier: Arc<Notifier>, device: String, config: &config::Notify) -> Self {
        Deliveries {
            notifier,
            device,
            ack_timeout: config.ack_timeout,
            max_interval: config.max_retry_interval,
            inflight: BTreeMap::new(),
        }
    }

    /// The next resend, if anything is in flight.
    pub fn next_due(&self) -> Option<Instant> {
        self.inflight.values().map(|i| i.due).min()
    }

    /// Writes everything open for the device that is not in flight, oldest first.
    pub async fn send_new<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
        meters: &RoleMeters,
    ) -> Result<(), ws::Error> {
        let pending = self
            .notifier
            .pending(&self.device, |seq| self.inflight.contains_key(&seq));
        for p in pending {
            let msg = if p.redelivery {
                &p.meta.again
            } else {
                &p.meta.first
            };
            write(writer, msg, meters).await?;
            self.notifier.sent(&self.device, &p.meta).await;
            if p.meta.critical() {
                let due = Instant::now() + wait(self.ack_timeout, self.max_interval, 1);
                self.inflight.insert(
                    p.meta.seq,
                    Inflight {
                        meta: p.meta,
                        attempts: 1,
                        due,
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes again every in-flight notification whose wait is over and that is
    /// still open (not acknowledged, not expired).
    pub async fn resend_due<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut ws::Writer<W>,
        meters: &RoleMeters,
    ) -> Result<(), ws::Error> {
        let now = Instant::now();
        let due: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.due <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            if !self.notifier.is_open(&self.device, seq) {
                self.inflight.remove(&seq);
                continue;
            }
            let Some(meta) = self.inflight.get(&seq).map(|i| i.meta.clone()) else {
                continue;
            };
            write(writer, &meta.again, meters).await?;
            self.notifier.sent(&self.device, &meta).await;
            let (ack_timeout, max_interval) = (self.ack_timeout, self.max_interval);
            if let Some(i) = self.inflight.get_mut(&seq) {
                i.attempts += 1;
                i.due = Instant::now() + wait(ack_timeout, max_interval, i.attempts);
            }
        }
        Ok(())
    }

    /// The device acknowledged `id`.
    pub async fn ack(&mut self, id: &str) -> AckOutcome {
        let outcome = self.notifier.ack(&self.device, id).await;
        if let AckOutcome::Accepted(seq) | AckOutcome::Duplicate(seq) = outcome {
            self.inflight.remove(&seq);
        }
        outcome
    }
}

/// The wait before write number `attempts + 1`.
fn wait(ack_timeout: Duration, max_interval: Duration, attempts: u32) -> Duration {
    let doubled = ack_timeout.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled
        .min(max_interval)
        .mul_f64(rand::random_range(0.9..1.1))
}

async fn write<W: AsyncWrite + Unpin>(
    writer: &mut ws::Writer<W>,
    msg: &ws::SharedMessage,
    meters: &RoleMeters,
) -> Result<(), ws::Error> {
    timed(writer.send_shared(std::slice::from_ref(msg))).await?;
    meters.frames_out.inc();
    meters.payload_out.inc_by(msg.payload().len() as u64);
    Ok(())
}
