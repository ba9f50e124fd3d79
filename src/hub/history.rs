//! The recent window of each series (device, category) that a `Subscribe` replays
//! as `History`, so charts fill at once.
//!
//! Memory is bounded in bytes. A window keeps the telemetry's protobuf encoding only
//! (a `Bytes` handle on the buffer the fan-out already made, not a copy, and not the
//! fan-out's other cached forms), at most `history_len` messages, within an equal
//! share of `history_max_bytes` among all series: a series that grows past its share
//! drops its oldest messages at once, and every window is trimmed to the current share
//! at each statistics tick, so the total exceeds the budget only by what arrives
//! within one tick. A device keeps at most `history_series_per_device` series
//! (further categories are neither kept nor listed), for the devices the directory
//! remembers (seen within `forget_after`).
//!
//! A device's windows sit behind its own mutex ([`Series`]), which only that
//! device's publications and subscribing dashboards take, each for a few pointer
//! copies: keeping never contends with other devices, and no lock is held across
//! `.await`. History is not durable: it starts empty when the hub starts.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::{Bytes, BytesMut};

use super::{DeviceInfo, Encoded, Filter, Pattern, WireFormat};

/// A `History` envelope carries telemetry up to this many protobuf bytes; longer
/// replays go out in several. Under 64 KiB, the message limit of the hub's own
/// client side, so any client that takes the hub's largest telemetry takes these.
pub const HISTORY_CHUNK_BYTES: usize = 60 * 1024;

/// The first byte of an encoded `Envelope{telemetry}` and of a `History.telemetry`
/// element: field 1, length-delimited.
const TELEMETRY_KEY: u8 = 1 << 3 | 2;

/// `Envelope.history`'s field number (telehub.proto).
const HISTORY_FIELD: u32 = 15;

/// What one kept message costs besides its bytes (the `Bytes` handle and the shared
/// buffer's header), so that a budget of tiny messages is still a real bound.
pub(super) const ENTRY_OVERHEAD: usize = 64;

/// `Envelope{history: History{telemetry: <elements>, more}}` as bytes.
fn history_envelope(elements: &[u8], more: bool) -> Arc<Encoded> {
    // `more = true`: field 2, varint 1.
    let more: &[u8] = if more { &[2 << 3, 1] } else { &[] };
    Encoded::assemble(HISTORY_FIELD, &[elements, more], 0, [])
}

/// How much history the hub keeps and replays (from `[dashboard]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Messages kept per series; 0 keeps none.
    pub len: usize,
    /// Messages one Subscribe replays at most.
    pub replay_max: usize,
    /// Series kept per device.
    pub series_per_device: usize,
    /// Bytes kept in all, shared equally by the series.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            len: 120,
            replay_max: 20_000,
            series_per_device: 16,
            max_bytes: 32 << 20,
        }
    }
}

/// One series' recent telemetry: encoded `Envelope{telemetry}`s, oldest first.
#[derive(Default)]
struct Window {
    /// Each with its [`History::cut`] sequence number.
    messages: VecDeque<(u64, Bytes)>,
    /// Accounted size of `messages` (see [`ENTRY_OVERHEAD`]).
    bytes: usize,
    /// When its newest message was accepted.
    last_ms: u64,
}

impl Window {
    /// Drops the oldest messages until at most `len` messages and `share` bytes
    /// remain; returns the bytes freed.
    fn trim(&mut self, len: usize, share: usize) -> usize {
        let mut freed = 0;
        while self.messages.len() > len || (self.bytes > share && !self.messages.is_empty()) {
            if let Some((_, m)) = self.messages.pop_front() {
                let size = m.len() + ENTRY_OVERHEAD;
                self.bytes -= size;
                freed += size;
            }
        }
        freed
    }
}

/// One device's windows, by category.
#[derive(Default)]
pub struct Series(Mutex<Windows>);

#[derive(Default)]
struct Windows {
    by_category: BTreeMap<String, Window>,
    /// Given back to the budget ([`History::release`]): a publication still
    /// holding this device's series keeps nothing more in it.
    released: bool,
}

impl Series {
    fn lock(&self) -> MutexGuard<'_, Windows> {
        // Every update leaves the windows consistent: poisoning is ignored.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's categories with a window (what the fleet view lists).
    pub fn categories(&self) -> Vec<String> {
        self.lock().by_category.keys().cloned().collect()
    }
}

/// The history's budget and order across all devices.
pub struct History {
    pub limits: HistoryLimits,
    /// Series of every remembered device, for each series' share of `max_bytes`.
    series_total: AtomicUsize,
    /// Accounted bytes of every window.
    kept_bytes: AtomicUsize,
    /// Numbers kept messages in the order they were kept (see [`History::cut`]).
    kept_seq: AtomicU64,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            series_total: AtomicUsize::new(0),
            kept_bytes: AtomicUsize::new(0),
            kept_seq: AtomicU64::new(0),
        }
    }

    /// Bytes the history holds (accounted as the budget counts them).
    pub fn bytes(&self) -> usize {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    fn share(&self) -> usize {
        self.limits.max_bytes / self.series_total.load(Ordering::Relaxed).max(1)
    }

    /// Keeps an accepted telemetry message in its series' window.
    pub fn keep(&self, series: &Series, category: &str, msg: &Encoded, now: u64) {
        let mut windows = series.lock();
        if windows.released {
            return;
        }
        let series = &mut windows.by_category;
        if !series.contains_key(category) {
            if series.len() >= self.limits.series_per_device {
                return;
            }
            series.insert(category.to_owned(), Window::default());
            self.series_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(window) = series.get_mut(category) else {
            return;
        };
        window.last_ms = now;
        if self.limits.len == 0 {
            return;
        }
        let bytes = msg.message(WireFormat::Protobuf).payload().clone();
        let size = bytes.len() + ENTRY_OVERHEAD;
        // Numbered before it is fanned out: see `cut`.
        let seq = self.kept_seq.fetch_add(1, Ordering::SeqCst);
        window.messages.push_back((seq, bytes));
        window.bytes += size;
        let freed = window.trim(self.limits.len, self.share());
        // Add before subtracting: the counter never wraps below zero.
        self.kept_bytes.fetch_add(size, Ordering::Relaxed);
        self.kept_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Gives back what a forgotten device's windows held; nothing is kept in them
    /// afterwards.
    pub fn release(&self, series: &Series) {
        let mut windows = series.lock();
        if std::mem::replace(&mut windows.released, true) {
            return;
        }
        let series = std::mem::take(&mut windows.by_category);
        self.series_total.fetch_sub(series.len(), Ordering::Relaxed);
        let bytes: usize = series.values().map(|w| w.bytes).sum();
        self.kept_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Trims every window to its current share of the budget (each tick).
    pub fn trim<'a>(&self, devices: impl IntoIterator<Item = &'a Series>) {
        let share = self.share();
        for series in devices {
            let freed: usize = series
                .lock()
                .by_category
                .values_mut()
                .map(|w| w.trim(self.limits.len, share))
                .sum();
            self.kept_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// The point that separates a new subscription's history from its live
    /// telemetry. Taken under the index write lock, after the subscription is in the
    /// index: a message kept before it may also have been published live (an
    /// overlap clients drop), a message kept after it is published after the
    /// subscription exists, so it arrives live and is left out of the history. A
    /// client thus never sees history newer than its `Subscribed`.
    pub fn cut(&self) -> u64 {
        self.kept_seq.load(Ordering::SeqCst)
    }

    /// The recent telemetry, kept before `cut`, that a new subscription to
    /// `patterns` with `filter` would have received, as `History` envelopes (see
    /// [`History::windows`] and [`History::assemble`]).
    pub fn gather<'a>(
        &self,
        devices: impl IntoIterator<Item = (&'a DeviceInfo, &'a Series)>,
        patterns: &[Pattern],
        filter: &Filter,
        cut: u64,
    ) -> Vec<Arc<Encoded>> {
        self.assemble(self.windows(devices, patterns, filter, cut))
    }

    /// The kept window, before `cut`, of every series of `devices` that matches
    /// `patterns` and `filter`.
    pub fn windows<'a>(
        &self,
        devices: impl IntoIterator<Item = (&'a DeviceInfo, &'a Series)>,
        patterns: &[Pattern],
        filter: &Filter,
        cut: u64,
    ) -> Vec<Kept> {
        if self.limits.len == 0 || self.limits.replay_max == 0 {
            return Vec::new();
        }
        let mut matched = Vec::new();
        for (info, series) in devices {
            if !filter.matches(&info.id, &info.tags) {
                continue;
            }
            for (category, window) in series.lock().by_category.iter() {
                if !patterns.iter().any(|p| p.matches(category)) {
                    continue;
                }
                let kept: Vec<Bytes> = window
                    .messages
                    .iter()
                    .take_while(|(seq, _)| *seq < cut)
                    .map(|(_, bytes)| bytes.clone())
                    .collect();
                if !kept.is_empty() {
                    matched.push(Kept {
                        device: info.id.clone(),
                        category: category.clone(),
                        last_ms: window.last_ms,
                        messages: kept,
                    });
                }
            }
        }
        matched
    }

    /// `History` envelopes of about [`HISTORY_CHUNK_BYTES`] each from `matched`:
    /// per series oldest first, at most `limits.len` per series and
    /// `limits.replay_max` in all (wide subscriptions get fewer per series; past
    /// `replay_max` series, the latest message of the most recently active ones).
    pub fn assemble(&self, mut matched: Vec<Kept>) -> Vec<Arc<Encoded>> {
        if self.limits.len == 0 || self.limits.replay_max == 0 {
            return Vec::new();
        }
        if matched.len() > self.limits.replay_max {
            matched.sort_by_key(|m| std::cmp::Reverse(m.last_ms));
            matched.truncate(self.limits.replay_max);
        }
        matched.sort_by(|a, b| (&a.device, &a.category).cmp(&(&b.device, &b.category)));
        let per_series = (self.limits.replay_max / matched.len().max(1))
            .max(1)
            .min(self.limits.len);

        // Each kept message is `Envelope{telemetry: T}` = field 1, length, T: the very
        // bytes of one `History.telemetry` element (also field 1). A History is thus
        // the kept bytes back to back, wrapped as Envelope field 15: no decoding,
        // no copies of the telemetry as structs.
        let mut chunks = Vec::new();
        let mut chunk = BytesMut::new();
        for bytes in matched
            .iter()
            .flat_map(|w| &w.messages[w.messages.len().saturating_sub(per_series)..])
        {
            if bytes.first() != Some(&TELEMETRY_KEY) {
                continue;
            }
            if chunk.len() + bytes.len() > HISTORY_CHUNK_BYTES && !chunk.is_empty() {
                chunks.push(history_envelope(&chunk, true));
                chunk.clear();
            }
            chunk.extend_from_slice(bytes);
        }
        if !chunk.is_empty() {
            chunks.push(history_envelope(&chunk, false));
        }
        chunks
    }
}

/// The kept telemetry of one series (device, category), oldest first, each as
/// its `Envelope{telemetry}` encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub device: String,
    pub category: String,
    /// When the series last received a message.
    pub last_ms: u64,
    pub messages: Vec<Bytes>,
}

/// `local` and what other nodes answered, one window per series: a series both
/// hold keeps the window that reaches later, then the longer (the node that
/// holds the device keeps all of its telemetry; this node only what its
/// dashboards received).
pub fn merge(local: Vec<Kept>, remote: Vec<Kept>) -> Vec<Kept> {
    let mut by_series: HashMap<(String, String), Kept> = HashMap::new();
    for w in local.into_iter().chain(remote) {
        match by_series.entry((w.device.clone(), w.category.clone())) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let held = e.get();
                if (w.last_ms, w.messages.len()) > (held.last_ms, held.messages.len()) {
                    e.insert(w);
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(w);
            }
        }
    }
    by_series.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{envelope::Body, Envelope, Telemetry};

    fn telemetry(device: &str, category: &str, seq: u64) -> Arc<Encoded> {
        Encoded::new(Envelope {
            body: Some(Body::Telemetry(Telemetry {
                device_id: device.into(),
                category: category.into(),
                seq,
                ..Default::default()
            })),
        })
    }

    #[test]
    fn merging_keeps_one_window_per_series_the_one_reaching_later() {
        let w = |device: &str, last_ms, n: usize| Kept {
            device: device.into(),
            category: "c".into(),
            last_ms,
            messages: vec![Bytes::from_static(b"x"); n],
        };
        let mut merged = merge(
            vec![w("a", 10, 2), w("b", 20, 5)],
            vec![w("a", 30, 1), w("b", 20, 6), w("c", 5, 1)],
        );
        merged.sort_by(|x, y| x.device.cmp(&y.device));
        assert_eq!(merged, [w("a", 30, 1), w("b", 20, 6), w("c", 5, 1)]);
    }

    #[test]
    fn an_assembled_history_is_exactly_what_prost_would_encode() {
        let kept: Vec<Arc<Encoded>> = (1..=3).map(|seq| telemetry("d", "a", seq)).collect();
        let elements: Vec<u8> = kept
            .iter()
            .flat_map(|m| m.message(WireFormat::Protobuf).payload().to_vec())
            .collect();
        for more in [false, true] {
            let want = Envelope {
                body: Some(Body::History(crate::proto::History {
                    telemetry: kept
                        .iter()
                        .map(|m| match &m.envelope().body {
                            Some(Body::Telemetry(t)) => t.clone(),
                            _ => unreachable!(),
                        })
                        .collect(),
                    more,
                })),
            };
            let got = history_envelope(&elements, more);
            assert_eq!(
                got.message(WireFormat::Protobuf).payload().as_ref(),
                prost::Message::encode_to_vec(&want).as_slice()
            );
            assert_eq!(got.envelope(), &want);
        }
    }
}
