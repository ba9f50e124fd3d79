//! A dashboard starts or stops watching notification progress or fleet
//! statistics. Neither gets a reply; what is watched starts arriving.

use super::Dashboard;
use crate::{
    hub::progress_key,
    proto::{WatchFleet, WatchNotifications},
    session::reply::Reply,
};

impl Dashboard {
    /// Progress of every open notification first (the latest value per
    /// notification), then every change.
    pub(super) fn on_watch_notifications(&mut self, w: WatchNotifications) -> Reply {
        self.app.hub.watch_notifications(&self.handle, w.watch);
        if w.watch {
            for (id, p, selector) in self.app.notifier.progress_all() {
                if self.handle.sees_targets(selector.as_deref()) {
                    self.handle.outbox.push_latest(&progress_key(&id), p);
                }
            }
        }
        Reply::none()
    }

    /// A full `FleetStats` first, then the changes every `fleet_interval`.
    pub(super) fn on_watch_fleet(&mut self, w: WatchFleet) -> Reply {
        self.app.hub.watch_fleet(&self.handle, w.watch);
        Reply::none()
    }
}
