//! A simulated device's side of uplink confirmations: what a send, a
//! `TelemetryConfirmed` and a stop do to its in-flight window (`sim::inflight`).

use std::sync::atomic::Ordering::Relaxed;

use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Duration, Instant},
};

use super::{Device, CLOSE_TIMEOUT, MAX_PAUSE};
use crate::{
    proto::{envelope::Body, Envelope, TelemetryConfirmed},
    sim::FleetStats,
    ws,
};

impl Device {
    /// Stopping: waits (at most [`CLOSE_TIMEOUT`]) for the hub to confirm what is
    /// in flight, as a device that powers down cleanly would.
    pub(super) async fn await_confirmations<R, W>(
        &mut self,
        reader: &mut ws::Reader<R>,
        writer: &mut ws::Writer<W>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while !self.inflight.is_empty() {
            let Ok(incoming) = tokio::time::timeout_at(deadline, reader.next()).await else {
                return;
            };
            match incoming {
                Ok(ws::Incoming::Message(ws::Message::Binary(data))) => {
                    if let Ok(Some(Body::TelemetryConfirmed(c))) =
                        Envelope::decode(data).map(|e| e.body)
                    {
                        if c.boot_id == self.boot_id {
                            self.on_confirmed(&c);
                        }
                    }
                }
                Ok(ws::Incoming::Ping(p)) => {
                    let _ = writer.pong(&p).await;
                }
                Ok(ws::Incoming::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// A message went out: a resend of `resend`, or the backlog's oldest.
    pub(super) fn sent(&mut self, resend: Option<u64>, confirming: bool) {
        let stats = &self.shared.stats;
        if let Some(seq) = resend {
            self.inflight.resent(seq);
            FleetStats::inc(&stats.resent);
            return;
        }
        let Some(t) = self.backlog.pop() else {
            return;
        };
        FleetStats::dec(&stats.buffered);
        FleetStats::inc(&stats.sent);
        if confirming {
            self.inflight.push(t);
            FleetStats::inc(&stats.unconfirmed);
        }
    }

    pub(super) fn on_confirmed(&mut self, c: &TelemetryConfirmed) {
        let stats = &self.shared.stats;
        let n = self.inflight.confirm(c.through_seq) as u64;
        stats.confirmed.fetch_add(n, Relaxed);
        stats.unconfirmed.fetch_sub(n, Relaxed);
        if !c.rate_limited.is_empty() {
            let retry = Duration::from_millis(c.retry_after_ms.into()).min(MAX_PAUSE);
            self.inflight
                .rate_limited(&c.rate_limited, retry, Instant::now());
        }
    }
}
