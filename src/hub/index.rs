//! The subscription index: which dashboards want which categories.
//!
//! Looked up once per published message, changed only when a dashboard
//! (un)subscribes, so it sits behind an `RwLock` that publishers share for the
//! length of one lookup-and-push (no `.await` inside).
//!
//! A lookup for `env.temperature` costs one hash probe for exact subscriptions,
//! one per dotted prefix (`env.temperature`, `env`) for wildcard subscriptions, and
//! a scan of the `*` subscribers: independent of how many patterns exist.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::{
    category::{prefixes, Pattern},
    DashboardHandle,
};

/// Most device ids one Subscribe may filter on.
pub const MAX_FILTER_DEVICE_IDS: usize = 1024;
/// Most tags one Subscribe may filter on.
pub const MAX_FILTER_TAGS: usize = 32;

/// Optional narrowing of one subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these devices (empty: any).
    pub device_ids: HashSet<String>,
    /// Only devices carrying all these tags (empty: any).
    pub tags: BTreeMap<String, String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.device_ids.is_empty() && self.tags.is_empty()
    }

    pub fn matches(&self, device_id: &str, tags: &BTreeMap<String, String>) -> bool {
        (self.device_ids.is_empty() || self.device_ids.contains(device_id))
            && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

#[derive(Clone)]
pub struct Entry {
    pub dashboard: Arc<DashboardHandle>,
    /// `None` when the subscription has no filter (the common, cheap case).
    pub filter: Option<Arc<Filter>>,
}

#[derive(Default)]
pub struct Index {
    exact: HashMap<String, Vec<Entry>>,
    prefix: HashMap<String, Vec<Entry>>,
    all: Vec<Entry>,
}

impl Index {
    fn slot(&mut self, pattern: &Pattern) -> &mut Vec<Entry> {
        match pattern {
            Pattern::Exact(c) => self.exact.entry(c.clone()).or_default(),
            Pattern::Prefix(p) => self.prefix.entry(p.clone()).or_default(),
            Pattern::All => &mut self.all,
        }
    }

    /// Adds or replaces `dashboard`'s subscription to `pattern`; true if added.
    pub fn insert(&mut self, pattern: &Pattern, entry: Entry) -> bool {
        let slot = self.slot(pattern);
        match slot
            .iter_mut()
            .find(|e| e.dashboard.id() == entry.dashboard.id())
        {
            Some(existing) => {
                *existing = entry;
                false
            }
            None => {
                slot.push(entry);
                true
            }
        }
    }

    /// Removes `dashboard_id`'s subscription to `pattern`; true if there was one.
    pub fn remove(&mut self, pattern: &Pattern, dashboard_id: u64) -> bool {
        let (removed, emptied) = {
            let slot = self.slot(pattern);
            let before = slot.len();
            slot.retain(|e| e.dashboard.id() != dashboard_id);
            (slot.len() < before, slot.is_empty())
        };
        if emptied {
            match pattern {
                Pattern::Exact(c) => {
                    self.exact.remove(c);
                }
                Pattern::Prefix(p) => {
                    self.prefix.remove(p);
                }
                Pattern::All => {}
            }
        }
        removed
    }

    /// Calls `f` for every subscription whose pattern matches `category`. A
    /// dashboard with several matching patterns is visited once per pattern; the
    /// caller de-duplicates.
    pub fn for_each_match(&self, category: &str, mut f: impl FnMut(&Entry)) {
        if let Some(v) = self.exact.get(category) {
            v.iter().for_each(&mut f);
        }
        if !self.prefix.is_empty() {
            for p in prefixes(category) {
                if let Some(v) = self.prefix.get(p) {
                    v.iter().for_each(&mut f);
                }
            }
        }
        self.all.iter().for_each(f);
    }
}
