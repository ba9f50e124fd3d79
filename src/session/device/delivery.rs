//! A device session's side of notification delivery: writing what the notifier
//! has open for the device, oldest first, and writing again the CRITICAL
//! notifications that were not acknowledged in time.
//!
//! When to write again is the notifier's decision (`notify::campaign::Retry`,
//! from the delivery's writes so far, across reconnects and restarts): each write
//! returns the wait, and this session keeps the resulting due times. Only this
//! session's writes are tracked here; a reconnecting device gets everything still
//! open from the notifier again.

use std::{collections::BTreeMap, sync::Arc};

use tokio::{io::AsyncWrite, time::Instant};

use crate::{
    metrics::RoleMeters,
    notify::{AckOutcome, Meta, Notifier},
    session::timed,
    ws,
};

struct Inflight {
    meta: Arc<Meta>,
    /// When to write it again if no ack came.
    due: Instant,
}

pub struct Deliveries {
    notifier: Arc<Notifier>,
    device: String,
    /// CRITICAL notifications written and not yet acknowledged, by sequence number.
    inflight: BTreeMap<i64, Inflight>,
}

impl Deliveries {
    pub fn new(notifier: Arc<Notifier>, device: String) -> Self {
        Deliveries {
            notifier,
            device,
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
            if let Some(wait) = self.notifier.sent(&self.device, &p.meta).await {
                let due = Instant::now() + wait;
                self.inflight
                    .insert(p.meta.seq, Inflight { meta: p.meta, due });
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
            match self.notifier.sent(&self.device, &meta).await {
                Some(wait) => {
                    if let Some(i) = self.inflight.get_mut(&seq) {
                        i.due = Instant::now() + wait;
                    }
                }
                None => {
                    self.inflight.remove(&seq);
                }
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
