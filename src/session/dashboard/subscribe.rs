//! A dashboard subscribes to categories (optionally narrowed to devices and tags,
//! live, batched or conflated), or unsubscribes.
//!
//! A Subscribe is validated in one place ([`Subscription::parse`]) and applied
//! atomically: every pattern is valid and within the limits, or nothing is
//! added. Subscribes are paced per dashboard (each replays history), so a client
//! looping on them cannot make the hub copy history without end.

use std::num::NonZeroU32;

use governor::{clock::Clock, DefaultDirectRateLimiter, Quota, RateLimiter};

use super::Dashboard;
use crate::{
    hub::{
        index::{MAX_FILTER_DEVICE_IDS, MAX_FILTER_TAGS},
        stream::{MAX_CONFLATE_MS, MAX_DELAY_MS},
        Delivery, Filter, Pattern,
    },
    proto::{envelope::Body, error::Code, Envelope, Subscribe, Subscribed, Unsubscribe},
    session::{
        close, error_envelope,
        reply::{Refusal, Reply},
    },
};

/// Subscribes a dashboard may send per second, and at once: each replays history
/// (up to `dashboard.history_replay_max` messages). The burst covers a page
/// resubscribing everything after a reconnect.
pub const SUBSCRIBES_PER_SECOND: u32 = 5;
pub const SUBSCRIBE_BURST: u32 = 64;

/// The pacing limiter of one dashboard's Subscribes.
pub fn pacer() -> DefaultDirectRateLimiter {
    RateLimiter::direct_with_clock(
        Quota::per_second(NonZeroU32::new(SUBSCRIBES_PER_SECOND).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(SUBSCRIBE_BURST).unwrap_or(NonZeroU32::MIN)),
        crate::session::limiter_clock(),
    )
}

/// A valid Subscribe.
struct Subscription {
    patterns: Vec<Pattern>,
    filter: Filter,
    delivery: Delivery,
}

impl Subscription {
    /// Checks a Subscribe against the grammar and the limits, given how many
    /// subscriptions the dashboard holds (`held` tells which patterns it has).
    fn parse(
        s: Subscribe,
        held: impl Fn(&str) -> bool,
        held_count: usize,
        max: usize,
    ) -> Result<Self, Refusal> {
        let refuse = |message: String| {
            Refusal::new(close::POLICY_VIOLATION, Code::InvalidSubscription, message)
        };
        let patterns = s
            .categories
            .iter()
            .map(|c| Pattern::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(e.to_string()))?;
        let new = patterns.iter().filter(|p| !held(&p.to_string())).count();
        if held_count + new > max {
            return Err(refuse(format!("at most {max} subscriptions per dashboard")));
        }
        if s.device_ids.len() > MAX_FILTER_DEVICE_IDS || s.tags.len() > MAX_FILTER_TAGS {
            return Err(refuse(format!(
                "a filter may name at most {MAX_FILTER_DEVICE_IDS} devices and {MAX_FILTER_TAGS} tags"
            )));
        }
        let delivery =
            match (s.max_delay_ms, s.conflate_ms) {
                (0, 0) => Delivery::Live,
                (ms @ 1..=MAX_DELAY_MS, 0) => Delivery::Batched { max_delay_ms: ms },
                (0, ms @ 1..=MAX_CONFLATE_MS) => Delivery::Conflated { interval_ms: ms },
                (_, 0) => {
                    return Err(refuse(format!(
                        "max_delay_ms must be 1..={MAX_DELAY_MS} (0: live)"
                    )))
                }
                (0, _) => {
                    return Err(refuse(format!(
                        "conflate_ms must be 1..={MAX_CONFLATE_MS} (0: not conflated)"
                    )))
                }
                _ => return Err(refuse(
                    "a subscription is batched (max_delay_ms) or conflated (conflate_ms), not both"
                        .into(),
                )),
            };
        Ok(Self {
            patterns,
            delivery,
            filter: Filter {
                device_ids: s.device_ids.into_iter().collect(),
                tags: s.tags.into_iter().collect(),
            },
        })
    }
}

impl Dashboard {
    /// Answered with `Subscribed` listing every subscription the dashboard now
    /// holds; the matching recent telemetry follows as `History`.
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Reply {
        if let Err(not_until) = self.subscribes.check() {
            let wait = not_until.wait_time_from(crate::session::limiter_clock().now());
            return Reply::Held(Some(error_envelope(
                Code::RateLimited,
                format!(
                    "at most {SUBSCRIBES_PER_SECOND} Subscribes per second (burst {SUBSCRIBE_BURST}); nothing of this one was applied"
                ),
                wait.as_millis().clamp(1, u32::MAX as u128) as u32,
            )));
        }
        let max = self.app.config.dashboard.max_subscriptions;
        let held = |p: &str| self.patterns.contains_key(p);
        let mut sub = match Subscription::parse(s, held, self.patterns.len(), max) {
            Ok(sub) => sub,
            Err(refusal) => return refusal.into(),
        };
        // Within the token's scope, or nothing of it is applied.
        let forbidden = |message: String| {
            Reply::from(Refusal::new(
                close::POLICY_VIOLATION,
                Code::Forbidden,
                message,
            ))
        };
        if let Some(p) = sub.patterns.iter().find(|p| !self.scope.may_subscribe(p)) {
            return forbidden(format!(
                "this token may not subscribe to {p}; nothing of this Subscribe was applied"
            ));
        }
        let scope_tags = self.scope.device_tags.as_ref();
        sub.filter.tags = match crate::auth::narrow(&sub.filter.tags, scope_tags) {
            Ok(tags) => tags,
            Err(k) => {
                return forbidden(format!(
                "this token sees only devices with {k}={}; nothing of this Subscribe was applied",
                scope_tags
                    .and_then(|t| t.get(&k))
                    .map_or("", String::as_str)
            ))
            }
        };
        let history = self
            .app
            .hub
            .subscribe(&self.handle, &sub.patterns, sub.filter, sub.delivery);
        let format = self.format;
        let remote = history.remote();
        tokio::spawn(async move {
            let remote = remote.await;
            let _ = tokio::task::spawn_blocking(move || history.run(format, remote)).await;
        });
        for p in sub.patterns {
            self.patterns.insert(p.to_string(), p);
        }
        Reply::send(self.subscribed())
    }

    /// Removes the named subscriptions (all when none is named); answered with
    /// `Subscribed`. Unknown names are ignored.
    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Reply {
        let names: Vec<String> = if u.categories.is_empty() {
            self.patterns.keys().cloned().collect()
        } else {
            u.categories
        };
        let removed: Vec<Pattern> = names
            .iter()
            .filter_map(|name| self.patterns.remove(name))
            .collect();
        self.app.hub.unsubscribe(&self.handle, &removed);
        Reply::send(self.subscribed())
    }

    fn subscribed(&self) -> Envelope {
        Envelope {
            body: Some(Body::Subscribed(Subscribed {
                categories: self.patterns.keys().cloned().collect(),
            })),
        }
    }
}
