//! A device publishes telemetry.
//!
//! Rate limiting (one governor token bucket per connection): a telemetry message
//! over the limit is not published and is counted; the device gets at most one
//! `Error{RATE_LIMITED, retry_after_ms}` per second; a device refused during
//! `rate.abuse_seconds` consecutive seconds is closed with 1008. The check comes
//! right after decoding, before validation, encoding and fan-out, so a flood costs
//! the hub one small decode per frame, and a flooding device only ever delays
//! itself: its frames are refused in its own task, never queued anywhere shared.
//!
//! With uplink confirmations (see `confirm`), a resend of an accepted message is
//! dropped after the rate limiter, and every outcome is recorded for the next
//! `TelemetryConfirmed`.
//!
//! An accepted message is stamped (the device id from the token, `received_ms`
//! never earlier than the device's previous message) and handed to the hub as a
//! `Publication`.

use std::time::Duration;

use governor::{clock::Clock, DefaultDirectRateLimiter, RateLimiter};
use tokio::time::Instant;

use super::Device;
use crate::{
    config::RateLimit,
    hub::{
        category, now_ms,
        uplink::{self, Verdict},
        Publication,
    },
    proto::{error::Code, Telemetry as TelemetryMsg},
    session::{
        close, error_envelope,
        reply::{Refusal, Reply},
        Close,
    },
};

/// A device connection's telemetry state.
pub struct Telemetry {
    limiter: DefaultDirectRateLimiter,
    /// The limits in force when the device connected (a reload changes those of
    /// later connections only).
    rate: RateLimit,
    limited: Refusals,
    /// `received_ms` of the previous accepted message.
    last_received_ms: u64,
}

impl Telemetry {
    /// Under the rate limits in force when the device connected.
    pub fn new(rate: &RateLimit) -> Self {
        Self {
            limiter: RateLimiter::direct_with_clock(rate.quota(), crate::session::limiter_clock()),
            rate: rate.clone(),
            limited: Refusals::default(),
            last_received_ms: 0,
        }
    }
}

/// Rate-limit refusals, tracked per wall-clock second of the session.
#[derive(Default)]
struct Refusals {
    /// Start of the current run of consecutive seconds with refusals.
    run_start: Option<Instant>,
    /// Last second (since run start) that saw a refusal.
    last_second: u64,
    /// When the last RATE_LIMITED error was sent.
    last_error: Option<Instant>,
}

impl Refusals {
    /// Records a refusal; returns how many consecutive seconds have seen refusals.
    fn record(&mut self, now: Instant) -> u64 {
        match self.run_start {
            Some(start) => {
                let second = now.duration_since(start).as_secs();
                if second > self.last_second + 1 {
                    // A quiet second broke the run.
                    self.run_start = Some(now);
                    self.last_second = 0;
                } else {
                    self.last_second = second;
                }
            }
            None => {
                self.run_start = Some(now);
                self.last_second = 0;
            }
        }
        self.last_second + 1
    }

    fn should_tell(&mut self, now: Instant) -> bool {
        let tell = self
            .last_error
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if tell {
            self.last_error = Some(now);
        }
        tell
    }
}

impl Device {
    pub(super) fn on_telemetry(&mut self, t: TelemetryMsg) -> Reply {
        let seq = t.seq;
        if let Err(not_until) = self.telemetry.limiter.check() {
            return self.rate_limited(seq, not_until);
        }
        if let Some(confirm) = &mut self.confirm {
            if seq == 0 {
                return Refusal::new(
                    close::POLICY_VIOLATION,
                    Code::Malformed,
                    "with confirmations, telemetry seq must be above 0",
                )
                .into();
            }
            if confirm.judge(seq) == Verdict::Duplicate {
                self.app.metrics.telemetry_duplicates.inc();
                confirm.duplicate();
                return Reply::none();
            }
        }
        let reply = self.accept(t);
        // Accepted, or invalid (never accepted): settled either way.
        if let Some(confirm) = &mut self.confirm {
            confirm.settle(seq);
        }
        reply
    }

    /// Validates a message within the rate limit and publishes it.
    fn accept(&mut self, t: TelemetryMsg) -> Reply {
        if let Err(e) = category::validate(&t.category) {
            return Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                format!("invalid telemetry: {e}"),
            )
            .into();
        }
        if !self.scope.may_publish(&t.category) {
            return Refusal::new(
                close::POLICY_VIOLATION,
                Code::Forbidden,
                format!("this token may not publish to {:?}", t.category),
            )
            .into();
        }
        let max_readings = self.app.config.limits.max_readings;
        if t.readings.len() > max_readings {
            return Refusal::new(
                close::POLICY_VIOLATION,
                Code::Malformed,
                format!(
                    "invalid telemetry: {} readings; at most {max_readings} per message",
                    t.readings.len()
                ),
            )
            .into();
        }
        // Never earlier than this device's previous message, even if the hub's clock
        // steps back: clients order a series by (received_ms, seq).
        let now = now_ms().max(self.telemetry.last_received_ms);
        self.telemetry.last_received_ms = now;
        let publication = Publication::new(self.session.info.clone(), t, now);
        self.app.hub.publish(&self.session, publication);
        Reply::none()
    }

    fn rate_limited(
        &mut self,
        seq: u64,
        not_until: governor::NotUntil<governor::clock::QuantaInstant>,
    ) -> Reply {
        self.app.metrics.rate_limited.inc();
        self.session.rate_limited();
        let wait = not_until.wait_time_from(crate::session::limiter_clock().now());
        let retry_after_ms = wait.as_millis().clamp(1, u32::MAX as u128) as u32;
        if let Some(confirm) = &mut self.confirm {
            if confirm.rate_limited(seq, retry_after_ms) == uplink::Refusal::Full {
                return Reply::Close(Close::new(
                    close::POLICY_VIOLATION,
                    format!(
                        "{} rate-limited messages not sent again: send them before new ones",
                        uplink::MAX_REFUSED
                    ),
                ));
            }
        }
        let now = Instant::now();
        let seconds = self.telemetry.limited.record(now);
        let rate = &self.telemetry.rate;
        if seconds >= u64::from(rate.abuse_seconds) {
            return Reply::Close(Close::new(
                close::POLICY_VIOLATION,
                format!("rate limit exceeded for {seconds} consecutive seconds"),
            ));
        }
        if !self.telemetry.limited.should_tell(now) {
            return Reply::Held(None);
        }
        Reply::Held(Some(error_envelope(
            Code::RateLimited,
            format!(
                "over the rate limit of {}/s (burst {})",
                rate.per_second, rate.burst
            ),
            retry_after_ms,
        )))
    }
}
