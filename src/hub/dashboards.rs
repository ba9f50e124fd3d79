//! Dashboards as the hub holds them: each one's [`DashboardHandle`] (its outbox,
//! and the devices a scoped token lets it hear of), their registration with a
//! presence snapshot, and who watches notification progress and fleet
//! statistics.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use super::{
    now_ms, outbox, presence_key, presence_message, progress_key, read, write, Encoded, Hub,
    Outbox, Pattern, Tags, WireFormat, LINK_KEY,
};

/// The hub's side of one dashboard connection.
pub struct DashboardHandle {
    pub(super) id: u64,
    pub outbox: Outbox,
    /// How many patterns this dashboard holds in the index (changed under the index
    /// write lock). Only dashboards with more than one can match a message twice,
    /// so only they pay for de-duplication in the fan-out.
    pub(super) patterns: AtomicUsize,
    /// A scoped token's device selector: nothing about a device outside it
    /// (presence, fleet statistics, notification progress) is queued here.
    pub(super) sees: Option<Tags>,
}

impl DashboardHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this dashboard may hear of a device with these tags.
    pub fn sees(&self, tags: &Tags) -> bool {
        self.sees
            .as_ref()
            .is_none_or(|want| crate::auth::within(want, tags))
    }

    /// Whether it may hear of a notification whose targets are the devices with
    /// `selector` (`None`: device ids or every device): only when they are all
    /// within its own selector.
    pub fn sees_targets(&self, selector: Option<&Tags>) -> bool {
        match (&self.sees, selector) {
            (None, _) => true,
            (Some(want), Some(targets)) => crate::auth::within(want, targets),
            (Some(_), None) => false,
        }
    }
}

impl Hub {
    /// Registers a dashboard and queues a presence snapshot of every online device.
    ///
    /// Lock order everywhere: the directory, then `dashboards`. Holding the
    /// directory while the dashboard joins means no presence change can fall
    /// between its snapshot and its registration, and announcements reach every
    /// dashboard in the order the changes happened.
    pub fn register_dashboard(&self, queue_len: usize, format: WireFormat) -> Arc<DashboardHandle> {
        self.register_scoped_dashboard(queue_len, format, None)
    }

    /// The same for a dashboard that may hear only of the devices `sees` selects.
    pub fn register_scoped_dashboard(
        &self,
        queue_len: usize,
        format: WireFormat,
        sees: Option<Tags>,
    ) -> Arc<DashboardHandle> {
        let handle = Arc::new(DashboardHandle {
            id: self.next_dashboard.fetch_add(1, Ordering::Relaxed),
            outbox: Outbox::bounded(
                queue_len,
                queue_len.max(1024),
                outbox::ByteLimits {
                    max_bytes: self.queue_bytes,
                    format,
                    budget: self.queued.clone(),
                },
            ),
            patterns: AtomicUsize::new(0),
            sees,
        });
        self.directory.with_online(|online| {
            for (info, since_ms) in online.filter(|(info, _)| handle.sees(&info.tags)) {
                handle.outbox.push_latest(
                    &presence_key(&info.id),
                    presence_message(info, true, since_ms),
                );
            }
            let mut dashboards = write(&self.dashboards);
            if let Some(notice) = &*self.link_notice.lock().unwrap_or_else(|p| p.into_inner()) {
                handle.outbox.push_latest(LINK_KEY, notice.clone());
            }
            dashboards.insert(handle.id, handle.clone());
        });
        handle
    }

    /// Forgets a dashboard and every subscription it held.
    pub fn unregister_dashboard<'a>(
        &self,
        handle: &DashboardHandle,
        patterns: impl IntoIterator<Item = &'a Pattern>,
    ) {
        {
            let mut index = write(&self.index);
            let before = index.pattern_count();
            for p in patterns {
                index.remove(p, handle.id);
            }
            handle.patterns.store(0, Ordering::Relaxed);
            if index.pattern_count() != before {
                self.bus.interest_changed();
            }
        }
        write(&self.dashboards).remove(&handle.id);
        write(&self.watchers).remove(&handle.id);
        self.fleet.unwatch(handle.id);
        handle.outbox.close();
    }

    /// Starts or stops sending notification progress to a dashboard.
    pub fn watch_notifications(&self, handle: &Arc<DashboardHandle>, on: bool) {
        let mut watchers = write(&self.watchers);
        if on {
            watchers.insert(handle.id, handle.clone());
        } else {
            watchers.remove(&handle.id);
        }
    }

    /// Starts (with a full snapshot) or stops sending fleet statistics to a
    /// dashboard.
    pub fn watch_fleet(&self, handle: &Arc<DashboardHandle>, on: bool) {
        self.fleet.watch(handle, on, now_ms());
    }

    /// Queues a notification progress update to every watching dashboard: the
    /// latest value per notification, never dropped (see `outbox`).
    /// `selector`: the tags of the devices it targets (see
    /// [`DashboardHandle::sees_targets`]).
    pub fn announce_progress(
        &self,
        notification_id: &str,
        msg: Arc<Encoded>,
        selector: Option<&Tags>,
    ) {
        let key = progress_key(notification_id);
        for d in read(&self.watchers).values() {
            if d.sees_targets(selector) {
                d.outbox.push_latest(&key, msg.clone());
            }
        }
    }
}
