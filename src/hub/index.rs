//! The subscription index: which dashboards want which categories.
//!
//! Looked up once per published message, changed only when a dashboard
//! (un)subscribes, so it sits behind an `RwLock` that publishers share for the
//! length of one lookup-and-push (no `.await` inside).
//!
//! A lookup for `env.temperature` costs one hash probe for exact subscriptions,
//! one per dotted prefix (`env.temperature`, `env`) for wildcard subscriptions, and
//! a scan of the `*` subscribers: independent of how many patterns exist.
//!
//! Live subscriptions are listed one by one (a publication is pushed to each);
//! batched and conflated ones are grouped per (delivery, filter), so a publication
//! costs one append per group, not per dashboard (see `stream`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, Weak},
};

use super::{
    category::{prefixes, Pattern},
    stream::{filter_id, Delivery},
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

    /// A hash equal filters share (device ids in any order), for interning.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut ids: Vec<&String> = self.device_ids.iter().collect();
        ids.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ids.hash(&mut h);
        self.tags.hash(&mut h);
        h.finish()
    }

    pub fn matches(&self, device_id: &str, tags: &BTreeMap<String, String>) -> bool {
        (self.device_ids.is_empty() || self.device_ids.contains(device_id))
            && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// Every subscription filter in use, by digest, so that equal filters share one
/// `Arc` (and so one stream), with the map's size at which it is next pruned of
/// filters no subscription holds any more.
#[derive(Default)]
pub struct Filters(Mutex<(FilterMap, usize)>);

type FilterMap = HashMap<u64, Vec<Weak<Filter>>>;

impl Filters {
    /// The one shared `Arc` of filters equal to `filter`.
    pub fn intern(&self, filter: Filter) -> Arc<Filter> {
        let mut interned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (filters, prune_at) = &mut *interned;
        // Filters no subscription holds any more are dropped when the map has doubled
        // since the last pruning: amortised O(1) per Subscribe.
        if filters.len() >= *prune_at {
            filters.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
            *prune_at = (2 * filters.len()).max(1024);
        }
        let same = filters.entry(filter.digest()).or_default();
        same.retain(|w| w.strong_count() > 0);
        if let Some(f) = same
            .iter()
            .filter_map(Weak::upgrade)
            .find(|f| **f == filter)
        {
            return f;
        }
        let f = Arc::new(filter);
        same.push(Arc::downgrade(&f));
        f
    }
}

#[derive(Clone)]
pub struct Entry {
    pub dashboard: Arc<DashboardHandle>,
    /// `None` when the subscription has no filter (the common, cheap case).
    pub filter: Option<Arc<Filter>>,
}

/// The dashboards that subscribed to one pattern with the same timed delivery and
/// the same filter (one interned `Arc`, see `Hub::intern`): a publication is
/// appended once per group to its shared stream, whatever the group's size.
pub struct Group {
    pub delivery: Delivery,
    pub filter: Option<Arc<Filter>>,
    pub dashboards: Vec<Arc<DashboardHandle>>,
}

/// Everything subscribed to one pattern.
#[derive(Default)]
pub struct Slot {
    /// Live subscriptions: each message is pushed to each of them.
    live: Vec<Entry>,
    /// Batched and conflated subscriptions, grouped by stream key (delivery, filter
    /// id): a flush finds its stream's group with one lookup, however many
    /// differently filtered groups there are.
    timed: HashMap<(Delivery, usize), Group>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.timed.is_empty()
    }

    /// Removes `dashboard_id` from wherever it is; true if it was here.
    fn remove(&mut self, dashboard_id: u64) -> bool {
        let before = self.live.len();
        self.live.retain(|e| e.dashboard.id() != dashboard_id);
        let mut removed = self.live.len() < before;
        for g in self.timed.values_mut() {
            let before = g.dashboards.len();
            g.dashboards.retain(|d| d.id() != dashboard_id);
            removed |= g.dashboards.len() < before;
        }
        self.timed.retain(|_, g| !g.dashboards.is_empty());
        removed
    }
}

#[derive(Default)]
pub struct Index {
    exact: HashMap<String, Slot>,
    prefix: HashMap<String, Slot>,
    all: Slot,
}

impl Index {
    fn slot(&mut self, pattern: &Pattern) -> &mut Slot {
        match pattern {
            Pattern::Exact(c) => self.exact.entry(c.clone()).or_default(),
            Pattern::Prefix(p) => self.prefix.entry(p.clone()).or_default(),
            Pattern::All => &mut self.all,
        }
    }

    /// Adds or replaces `entry.dashboard`'s subscription to `pattern` (its filter
    /// and delivery); true if added.
    pub fn insert(&mut self, pattern: &Pattern, entry: Entry, delivery: Delivery) -> bool {
        let slot = self.slot(pattern);
        let replaced = slot.remove(entry.dashboard.id());
        if delivery == Delivery::Live {
            slot.live.push(entry);
        } else {
            slot.timed
                .entry((delivery, filter_id(&entry.filter)))
                .or_insert_with(|| Group {
                    delivery,
                    filter: entry.filter,
                    dashboards: Vec::new(),
                })
                .dashboards
                .push(entry.dashboard);
        }
        !replaced
    }

    /// Removes `dashboard_id`'s subscription to `pattern`; true if there was one.
    pub fn remove(&mut self, pattern: &Pattern, dashboard_id: u64) -> bool {
        let (removed, emptied) = {
            let slot = self.slot(pattern);
            let removed = slot.remove(dashboard_id);
            (removed, slot.is_empty())
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

    /// How many patterns have subscriptions. Each insert or remove changes the set
    /// of patterns by at most one, so a change of the set shows as a change of
    /// this count.
    pub fn pattern_count(&self) -> usize {
        self.exact.len() + self.prefix.len() + usize::from(!self.all.is_empty())
    }

    /// Every pattern with subscriptions.
    pub fn patterns(&self) -> Vec<Pattern> {
        let mut out: Vec<Pattern> = self
            .exact
            .keys()
            .map(|c| Pattern::Exact(c.clone()))
            .chain(self.prefix.keys().map(|p| Pattern::Prefix(p.clone())))
            .collect();
        if !self.all.is_empty() {
            out.push(Pattern::All);
        }
        out
    }

    /// Calls `f` for every slot whose pattern matches `category`.
    fn for_each_slot(&self, category: &str, mut f: impl FnMut(&Slot)) {
        if let Some(s) = self.exact.get(category) {
            f(s);
        }
        if !self.prefix.is_empty() {
            for p in prefixes(category) {
                if let Some(s) = self.prefix.get(p) {
                    f(s);
                }
            }
        }
        f(&self.all);
    }

    /// Calls `live` for every live subscription and `timed` for every group of
    /// timed subscriptions whose pattern matches `category`, with one lookup per
    /// pattern for both. A dashboard with several matching patterns is visited
    /// once per pattern (and a stream may have a group under several): the caller
    /// de-duplicates.
    pub fn for_each_match(
        &self,
        category: &str,
        mut live: impl FnMut(&Entry),
        mut timed: impl FnMut(&Group),
    ) {
        self.for_each_slot(category, |s| {
            s.live.iter().for_each(&mut live);
            s.timed.values().for_each(&mut timed);
        });
    }

    /// Calls `f` for the group of stream `key` (delivery, filter id) under every
    /// pattern that matches `category`: one lookup per matching pattern.
    pub fn for_each_group_of(
        &self,
        category: &str,
        key: (Delivery, usize),
        mut f: impl FnMut(&Group),
    ) {
        self.for_each_slot(category, |s| {
            if let Some(g) = s.timed.get(&key) {
                f(g);
            }
        });
    }
}
