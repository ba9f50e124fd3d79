//! Flushing batched and conflated streams (see `stream`): when each falls due, who
//! receives it now, its `Batch`es built once for all of them, and removing the
//! streams nobody receives any more.
//!
//! Lock order as everywhere in the hub: a stream's own lock is taken and released
//! before the index is read; the index and the streams' map are never held
//! together here.

use std::sync::{atomic::Ordering, Arc};

use super::{read, stream, DashboardHandle, Hub, Published, Pushed};

impl Hub {
    /// Flushes the batched and conflated streams due at `now` (see `stream`);
    /// returns when the next one is due.
    pub fn flush_streams(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let (due, next) = self.streams.due(now);
        for s in due {
            self.flush(&s, now);
        }
        next
    }

    /// Sends one stream's pending telemetry, as `Batch`es built once, to every
    /// dashboard that receives the stream now.
    fn flush(&self, stream: &Arc<stream::Stream>, now: tokio::time::Instant) {
        let taken = stream.take(now);
        if taken.conflated_away > 0 {
            self.metrics.conflated_away.inc_by(taken.conflated_away);
        }
        if taken.messages.is_empty() {
            return;
        }
        let receivers = self.receivers(stream);
        if receivers.is_empty() {
            // Nobody subscribes any more: nothing to build, and the stream can go.
            self.streams.remove_if_idle(stream);
            return;
        }
        let kind = stream.delivery().label();
        let batches = stream.batches(&taken.messages);
        self.metrics.batches(kind).inc_by(batches.len() as u64);
        let (mut out, mut queued) = (Published::default(), 0u64);
        for d in &receivers {
            for b in &batches {
                let pushed = d.outbox.push_telemetry(b.clone());
                queued += u64::from(matches!(pushed, Pushed::Queued { .. }));
                out.add(pushed, b.carries());
            }
        }
        self.metrics.batch_deliveries(kind).inc_by(queued);
        self.count(&out);
    }

    /// The dashboards that receive `stream` now, each once (one may reach it
    /// through two patterns, `env.*` and `*`).
    fn receivers(&self, stream: &stream::Stream) -> Vec<Arc<DashboardHandle>> {
        let key = (stream.delivery(), stream.filter_id());
        let mut receivers: Vec<Arc<DashboardHandle>> = Vec::new();
        read(&self.index).for_each_group_of(stream.category(), key, |group| {
            for d in &group.dashboards {
                if d.patterns.load(Ordering::Relaxed) > 1 && receivers.iter().any(|r| r.id == d.id)
                {
                    continue;
                }
                receivers.push(d.clone());
            }
        });
        receivers
    }

    /// Removes the streams no subscription receives any more. The index and the
    /// streams' map are never locked together (publishers take them in that
    /// order), so a stream found unreceived is removed only if still idle.
    pub(super) fn sweep_streams(&self) {
        let unreceived: Vec<_> = self
            .streams
            .all()
            .into_iter()
            .filter(|s| {
                let key = (s.delivery(), s.filter_id());
                let mut received = false;
                read(&self.index).for_each_group_of(s.category(), key, |_| received = true);
                !received
            })
            .collect();
        for s in &unreceived {
            self.streams.remove_if_idle(s);
        }
    }

    /// Flushes batched and conflated streams as they fall due, until shutdown.
    pub async fn run_streams(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        loop {
            let next = self.flush_streams(tokio::time::Instant::now());
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = sleep => {}
                _ = self.streams.rearmed() => {}
            }
        }
    }

    /// Batched and conflated streams in existence.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}
