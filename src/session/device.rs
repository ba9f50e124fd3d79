//! A device connection: telemetry in (rate-limited, validated, stamped, fanned
//! out), acks in, errors and notifications out (see [`super::delivery`]).
//!
//! Rate limiting (one governor token bucket per connection): a telemetry message
//! over the limit is not fanned out and is counted; the device gets at most one
//! `Error{RATE_LIMITED, retry_after_ms}` per second; a device refused during
//! `rate.abuse_seconds` consecutive seconds is closed with 1008. The check comes
//! right after decoding, before validation, encoding and fan-out, so a flood costs
//! the hub one small decode per frame, and a flooding device only ever delays
//! itself: its frames are refused in its own task, never queued anywhere shared.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use governor::{clock::Clock, DefaultDirectRateLimiter, RateLimiter};
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};

use super::{
    close, delivery::Deliveries, error_envelope, finish, receive, send, Close, KeepAlive, Step,
};
use crate::{
    app::App,
    auth::Claims,
    hub::{category, now_ms, DeviceInfo, Encoded, Record},
    metrics::RoleMeters,
    notify::AckOutcome,
    proto::{envelope::Body, error::Code, Ack, Envelope, Telemetry, Welcome},
    ws,
};

/// Runs one device connection to its end.
pub async fn run<S>(conn: ws::Connection<S>, claims: Claims, app: Arc<App>, meters: RoleMeters)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = conn.split();
    let info = Arc::new(DeviceInfo {
        id: claims.sub,
        tags: claims.tags,
    });
    let welcome = Envelope {
        body: Some(Body::Welcome(Welcome {
            subject: info.id.clone(),
            role: "device".into(),
            max_message_bytes: app.config.limits.max_message_bytes as u32,
            rate_per_second: app.config.rate.per_second,
            burst: app.config.rate.burst,
            server_version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    if send(&mut writer, &binary(&welcome), &meters).await.is_err() {
        return;
    }
    let presence = app.hub.device_online(info.clone());
    let wake = app
        .notifier
        .device_connected(&info.id, &info.tags, presence.id)
        .await;
    let mut device = Device {
        record: presence.record.clone(),
        last_received_ms: 0,
        deliveries: Deliveries::new(app.notifier.clone(), info.id.clone(), &app.config.notify),
        info,
        app: app.clone(),
        meters,
        limiter: RateLimiter::direct(app.config.rate_quota()),
        limited: Refusals::default(),
        strikes: 0,
    };
    let close = device
        .serve(&mut reader, &mut writer, &presence.kick, &wake)
        .await;
    app.notifier
        .device_disconnected(&device.info.id, presence.id);
    app.hub.device_offline(&device.info.id, &presence);
    if let Some(c) = &close {
        tracing::debug!(device = %device.info.id, code = c.code, reason = %c.reason, "device session closing");
    }
    finish(&mut reader, &mut writer, close.as_ref()).await;
}

struct Device {
    info: Arc<DeviceInfo>,
    /// This device's counters and history in the fleet view.
    record: Arc<Record>,
    last_received_ms: u64,
    app: Arc<App>,
    meters: RoleMeters,
    limiter: DefaultDirectRateLimiter,
    limited: Refusals,
    /// Invalid envelopes in a row; reset by every valid one.
    strikes: u32,
    deliveries: Deliveries,
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
    async fn serve<R, W>(
        &mut self,
        reader: &mut ws::Reader<R>,
        writer: &mut ws::Writer<W>,
        kick: &tokio::sync::Notify,
        wake: &tokio::sync::Notify,
    ) -> Option<Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limits = &self.app.config.limits;
        let mut keepalive = KeepAlive::new(limits.ping_interval, limits.idle_timeout);
        let mut shutdown = self.app.shutdown.clone();
        loop {
            let next_due = self.deliveries.next_due();
            tokio::select! {
                _ = wake.notified() => {
                    if self.deliveries.send_new(writer, &self.meters).await.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    if self.deliveries.resend_due(writer, &self.meters).await.is_err() {
                        return None;
                    }
                }
                _ = shutdown.recv() => {
                    return Some(Close::new(close::GOING_AWAY, "server shutting down"));
                }
                _ = kick.notified() => {
                    return Some(Close::new(close::TAKEN_OVER, "a newer connection took this device over"));
                }
                _ = keepalive.ticker.tick() => {
                    if let Err(end) = keepalive.on_tick(writer).await {
                        return end;
                    }
                }
                incoming = reader.next() => {
                    let reply = match receive(incoming, &mut keepalive, writer).await {
                        Step::Message(ws::Message::Binary(data)) => self.on_binary(data),
                        // RFC 6455 §7.4.1: 1003 for a data type the endpoint cannot accept.
                        Step::Message(ws::Message::Text(_)) => {
                            return Some(Close::new(close::UNSUPPORTED_DATA, "the device endpoint takes binary envelopes only"));
                        }
                        Step::Continue => continue,
                        Step::End(close) => return close,
                    };
                    let reply = match reply {
                        Reply::Ack(ack) => self.on_ack(ack).await,
                        other => other,
                    };
                    match reply {
                        Reply::None | Reply::Ack(_) => {}
                        Reply::Send(env) => {
                            if send(writer, &binary(&env), &self.meters).await.is_err() {
                                return None;
                            }
                        }
                        Reply::Close(c) => return Some(c),
                    }
                }
            }
        }
    }

    fn on_binary(&mut self, data: Bytes) -> Reply {
        self.meters.frames_in.inc();
        self.meters.payload_in.inc_by(data.len() as u64);
        let envelope = match Envelope::decode(data) {
            Ok(e) => e,
            Err(e) => {
                self.app.metrics.decode_errors.inc();
                return self.strike(
                    close::INVALID_PAYLOAD,
                    Code::Malformed,
                    format!("not a telehub.v1.Envelope: {e}"),
                );
            }
        };
        match envelope.body {
            Some(Body::Telemetry(t)) => self.on_telemetry(t),
            Some(Body::Ack(ack)) => Reply::Ack(ack),
            Some(_) => self.strike(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "devices may send only Telemetry and Ack".into(),
            ),
            None => self.strike(
                close::POLICY_VIOLATION,
                Code::Malformed,
                "empty Envelope".into(),
            ),
        }
    }

    fn on_telemetry(&mut self, mut t: Telemetry) -> Reply {
        if let Err(not_until) = self.limiter.check() {
            self.app.metrics.rate_limited.inc();
            self.record.rate_limited();
            let now = Instant::now();
            let seconds = self.limited.record(now);
            let abuse = u64::from(self.app.config.rate.abuse_seconds);
            if seconds >= abuse {
                return Reply::Close(Close::new(
                    close::POLICY_VIOLATION,
                    format!("rate limit exceeded for {seconds} consecutive seconds"),
                ));
            }
            if self.limited.should_tell(now) {
                let clock = governor::clock::DefaultClock::default();
                let wait = not_until.wait_time_from(clock.now());
                return Reply::Send(error_envelope(
                    Code::RateLimited,
                    format!(
                        "over the rate limit of {}/s (burst {})",
                        self.app.config.rate.per_second, self.app.config.rate.burst
                    ),
                    wait.as_millis().clamp(1, u32::MAX as u128) as u32,
                ));
            }
            return Reply::None;
        }
        if let Err(e) = category::validate(&t.category) {
            return self.strike(
                close::POLICY_VIOLATION,
                Code::Malformed,
                format!("invalid telemetry: {e}"),
            );
        }
        self.strikes = 0;
        // The device id comes from the token, never from the frame.
        t.device_id.clone_from(&self.info.id);
        // Never earlier than this device's previous message, even if the hub's clock
        // steps back: clients order a series by (received_ms, seq).
        let now = now_ms().max(self.last_received_ms);
        self.last_received_ms = now;
        t.received_ms = now;
        let encoded = Encoded::new(Envelope {
            body: Some(Body::Telemetry(t)),
        });
        let Some(Body::Telemetry(t)) = &encoded.envelope().body else {
            return Reply::None;
        };
        let category = t.category.as_str();
        self.app.metrics.telemetry_accepted.inc();
        // Recorded before it is published: see `Hub::subscribe`.
        self.app
            .hub
            .fleet
            .accepted(&self.record, category, &encoded, now);
        self.app.hub.publish(&self.info, category, &encoded);
        Reply::None
    }

    /// A refused ack is a strike: a device cannot make the hub answer an unbounded
    /// stream of them. Repeated acks are harmless and silent.
    async fn on_ack(&mut self, ack: Ack) -> Reply {
        match self.deliveries.ack(&ack.notification_id).await {
            AckOutcome::Accepted(_) | AckOutcome::Duplicate(_) => {
                self.strikes = 0;
                Reply::None
            }
            AckOutcome::Unknown => self.strike(
                close::POLICY_VIOLATION,
                Code::UnknownNotification,
                format!(
                    "no notification {:?} was sent to this device",
                    truncate(&ack.notification_id)
                ),
            ),
        }
    }

    /// Answers an invalid envelope with an Error, or closes with `code` once
    /// `limits.max_malformed` arrived in a row.
    fn strike(&mut self, code: u16, error: Code, message: String) -> Reply {
        self.strikes += 1;
        if self.strikes >= self.app.config.limits.max_malformed {
            return Reply::Close(Close::new(
                code,
                format!(
                    "{} invalid messages in a row; last: {message}",
                    self.strikes
                ),
            ));
        }
        Reply::Send(error_envelope(error, message, 0))
    }
}

enum Reply {
    None,
    Send(Envelope),
    Close(Close),
    /// Needs the notifier (and maybe the store): handled after decoding.
    Ack(Ack),
}

fn binary(env: &Envelope) -> ws::Message {
    ws::Message::Binary(Bytes::from(env.encode_to_vec()))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
