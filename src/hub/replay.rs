//! Replaying a new subscription's `History`: what this node kept before the
//! subscription, merged with what the other nodes of a cluster keep of the
//! devices they hold (see `Bus::history`), into the place reserved for it in the
//! dashboard's queue (see `Hub::subscribe`).

use std::sync::Arc;

use super::{bus, history, outbox, DashboardHandle, Filter, Hub, Pattern, WireFormat};

/// A subscription's `History`, still to be gathered (see `Hub::subscribe`).
/// Gathering a large replay takes milliseconds of CPU, so sessions run it off the
/// async workers (`spawn_blocking`). Dropped without running, it releases the
/// reserved place empty: the dashboard then simply gets no history.
#[must_use = "until it runs or is dropped, the dashboard's later messages are held back"]
pub struct HistoryJob {
    pub(super) hub: Arc<Hub>,
    pub(super) handle: Arc<DashboardHandle>,
    pub(super) reservation: Option<outbox::Reservation>,
    /// Messages kept from here on arrive live (see [`history::History::cut`]).
    pub(super) cut: u64,
    pub(super) patterns: Vec<Pattern>,
    pub(super) filter: Filter,
}

impl HistoryJob {
    /// What the other nodes keep for this subscription (nothing for a hub
    /// alone); await it before [`HistoryJob::run`].
    pub fn remote(&self) -> bus::BoxFuture<'static, Vec<history::Kept>> {
        self.hub.bus.history(&self.patterns, &self.filter)
    }

    /// Gathers the history, with what `remote` brought, into the reserved place,
    /// encoded for `format` here so that the dashboard's session only writes it.
    pub fn run(mut self, format: WireFormat, remote: Vec<history::Kept>) {
        let devices = self.hub.directory.remembered();
        let local = self.hub.history.windows(
            devices.iter().map(|d| (&*d.info, &d.activity.series)),
            &self.patterns,
            &self.filter,
            self.cut,
        );
        let history = self.hub.history.assemble(history::merge(local, remote));
        for m in &history {
            m.message(format);
        }
        if let Some(r) = self.reservation.take() {
            self.handle.outbox.fill(r, history);
        }
    }
}

impl Drop for HistoryJob {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.handle.outbox.fill(r, Vec::new());
        }
    }
}
