//! The live device registry: which devices are online, with which tags, and which
//! connection currently speaks for each.
//!
//! One connection per device id: a new connection with the same subject takes the
//! session over and the older one is told to close (as MQTT brokers do), so a
//! device that reconnects before its old TCP connection timed out is never shut
//! out. Presence changes are announced only on real transitions.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use tokio::sync::Notify;

/// A device as the hub knows it from its token.
#[derive(Debug)]
pub struct DeviceInfo {
    pub id: String,
    pub tags: BTreeMap<String, String>,
}

pub(crate) struct Online {
    pub info: Arc<DeviceInfo>,
    /// Identifies the connection that currently owns this device id.
    pub session: u64,
    /// Tells that connection it has been taken over.
    pub kick: Arc<Notify>,
    pub since_ms: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub online: HashMap<String, Online>,
}

/// What [`Registry::connect`] changed.
pub(crate) struct Connected {
    /// The device was offline before (announce it).
    pub came_online: bool,
}

impl Registry {
    pub fn connect(&mut self, entry: Online) -> Connected {
        match self.online.insert(entry.info.id.clone(), entry) {
            Some(old) => {
                old.kick.notify_one();
                Connected { came_online: false }
            }
            None => Connected { came_online: true },
        }
    }

    /// Removes the device if `session` still owns it; returns whether it went offline.
    pub fn disconnect(&mut self, device_id: &str, session: u64) -> Option<Arc<DeviceInfo>> {
        match self.online.get(device_id) {
            Some(o) if o.session == session => self.online.remove(device_id).map(|o| o.info),
            _ => None,
        }
    }
}
